"""Export to ONNX with ``torch.onnx.export(dynamo=True)`` and check ONNX Runtime against PyTorch.

Graphs and their I/O names:

* encoder (BERT family): ``input_ids, attention_mask`` -> ``last_hidden_state`` (base model) or ``logits``.
* decoder, no cache: ``input_ids, attention_mask, position_ids`` -> ``logits``.
* decoder ``with_past``: two files. The prefill graph (``FILE``) also returns ``present.{i}.key/value``;
  the decode graph (``FILE`` with suffix ``_with_past``) takes ``past_key_values.{i}.key/value`` as
  well. ``i`` counts the layers that still have attention (their KV heads may differ per layer).

Every export is validated on inputs of another batch size and length than the export sample; the
per-output max/mean abs diffs are returned, and an ``ExportValidationError`` lists every output over
tolerance. The model's per-layer shape and dense architecture are stored in the ONNX metadata
(``ziplm_shape``, ``ziplm_config``) so ONNX files can be inspected and verified without the weights;
with a known source directory also ``ziplm_source`` and its content hash ``ziplm_source_sha256``.
Beside each graph goes ``FILE.onnx.reference.npz`` (``core.parity``): the validation inputs, PyTorch's
outputs for them and the hashes of the file and the data, so ``verify`` has an independent reference
without torch. Both files are renamed into place together, the reference first.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..core.checks import TEMP_PREFIX
from ..core.errors import UserError
from ..core.jsonio import make_dirs
from ..core.manifest import file_sha256
from ..core.parity import OutputDiff, output_diff, reference_path, save_reference
from ..models import adapter_for

OPSET = 18
SAMPLE_BATCH, SAMPLE_SEQ, SAMPLE_PAST = 2, 8, 5  # export sample (batch >= 2 keeps the batch axis dynamic)
CHECK_BATCH, CHECK_SEQ, CHECK_PAST = 3, 13, 11  # validation inputs: deliberately different


class ExportValidationError(UserError):
    def __init__(self, failures: list[OutputDiff]):
        self.failures = failures
        lines = ", ".join(f"{d.graph}:{d.name} max|diff|={d.max_abs:.3g} (mean {d.mean_abs:.3g}, "
                          f"max|ref| {d.ref_max:.3g}) > tolerance {d.tolerance:.3g}" for d in failures)
        super().__init__(f"ONNX Runtime does not match PyTorch in {len(failures)} output(s): {lines}",
                         "report this as a bug, or raise --atol/--rtol for reduced-precision models")


@dataclass
class ExportResult:
    paths: list[Path]
    diffs: list[OutputDiff] = field(default_factory=list)
    seconds: float = 0.0
    references: list[Path] = field(default_factory=list)  # FILE.onnx.reference.npz beside each path

    @property
    def max_abs(self) -> float:
        return max((d.max_abs for d in self.diffs), default=0.0)


# --- wrappers: plain tensor-in, tuple-out modules the exporter can trace ---------------------------
class _Encoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return out["logits"] if "logits" in out else out["last_hidden_state"]


class _Decoder(nn.Module):
    def __init__(self, model: nn.Module, with_cache: bool):
        super().__init__()
        self.model = model
        self.with_cache = with_cache

    def forward(self, input_ids, attention_mask, position_ids, past=None):
        from transformers import DynamicCache

        cache = None
        if self.with_cache:
            cache = DynamicCache(ddp_cache_data=list(past)) if past else DynamicCache()
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=self.with_cache)
        if not self.with_cache:
            return out.logits
        flat = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
        return (out.logits, *flat)


def _kv_heads(model: nn.Module) -> list[tuple[int, int]]:
    """(kv_heads, head_dim) of each layer that has attention, in cache order."""
    adapter = adapter_for(model)
    arch = adapter.arch(model)
    shape = adapter.shape_of(model)
    return [(s.kv, arch.head_dim) for s in shape.layers if not s.dropped and s.heads > 0]


def _decoder_inputs(model, batch, seq, past_len, vocab, gen):
    ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    mask = torch.ones(batch, past_len + seq, dtype=torch.long)
    pos = torch.arange(past_len, past_len + seq).unsqueeze(0).expand(batch, -1).contiguous()
    dtype = next(model.parameters()).dtype
    past = tuple((torch.randn(batch, kv, past_len, d, generator=gen).to(dtype),
                  torch.randn(batch, kv, past_len, d, generator=gen).to(dtype)) for kv, d in _kv_heads(model))
    return ids, mask, pos, past


def _io_names(n_attn: int, prefix: str) -> list[str]:
    return [f"{prefix}.{i}.{kind}" for i in range(n_attn) for kind in ("key", "value")]


def _export(module, args, path: Path, input_names, output_names, dynamic_shapes) -> None:
    import logging
    import warnings

    import onnx

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, args, dynamo=True, opset_version=OPSET, input_names=input_names,
                                    output_names=output_names, dynamic_shapes=dynamic_shapes, optimize=True,
                                    verbose=False)
    proto = program.model_proto
    onnx.save_model(proto, str(path))


def _add_metadata(path: Path, model: nn.Module, graph: str, origin: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(str(path))
    adapter = adapter_for(model)
    meta = {
        "ziplm_producer": f"ziplm-deploy {__version__}",
        "ziplm_graph": graph,
        "ziplm_config": json.dumps(_dense_config(model)),
        "ziplm_shape": json.dumps(adapter.shape_of(model).to_json()),
        **origin,
    }
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save_model(proto, str(path))


def _dense_config(model: nn.Module) -> dict[str, Any]:
    """The config dict the torch-free side reads (arch_from_config) — the dense dims, not the pruned ones."""
    cfg = model.config.to_dict()
    keep = {k: v for k, v in cfg.items() if isinstance(v, (int, float, str, bool, list, dict, type(None)))}
    return keep


def _ort_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # validation, not timing
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def compare_outputs(graph: str, names: list[str], got: list[np.ndarray], want: list[np.ndarray], atol: float,
                    rtol: float) -> list[OutputDiff]:
    """Per-output error statistics; an output passes when max|diff| <= atol + rtol * max|reference|."""
    return [output_diff(graph, name, a, b, atol, rtol) for name, a, b in zip(names, got, want)]


def export_onnx(model: nn.Module, out: str | os.PathLike, with_past: bool = False, atol: float = 1e-4,
                rtol: float = 1e-3, validate: bool = True, source: str | os.PathLike | None = None,
                source_sha256: str | None = None) -> ExportResult:
    """Export ``model`` (eval mode, CPU) to ``out``; with ``with_past`` also the decode graph. Atomic.

    Beside every graph goes its export reference (``FILE.onnx.reference.npz``: the validation inputs and
    PyTorch's outputs for them, hashed). ``source``: the model directory the weights came from, recorded
    with its content hash in the metadata so ``verify`` can compare the file with PyTorch on it later."""
    out = Path(out)
    if out.suffix != ".onnx":
        raise UserError(f"output file {out} must end in .onnx")
    adapter = adapter_for(model)
    arch = adapter.arch(model)
    if with_past and not arch.is_decoder:
        raise UserError(f"--with-past needs a decoder model; {arch.family} is an encoder")
    model = model.eval()
    if next(model.parameters()).device.type != "cpu":
        model = model.cpu()
    origin = _source_metadata(source, source_sha256)
    tmpdir = fresh_tempdir(out)
    started = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    try:
        written, diffs = [], []
        for job in _plan_graphs(model, arch, out, with_past, gen):
            onnx_tmp, ref_tmp, job_diffs = _export_graph(job, model, tmpdir, origin, validate, atol, rtol)
            diffs += job_diffs
            written.append((onnx_tmp, ref_tmp, job[1]))
        failures = [d for d in diffs if not d.ok]
        if failures:
            raise ExportValidationError(failures)
        finals = move_into_place(written)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return ExportResult(finals, diffs, time.perf_counter() - started, [reference_path(f) for f in finals])


def fresh_tempdir(out: Path) -> Path:
    """A temporary folder beside ``out``, after removing what a killed export of the same file left."""
    make_dirs(out.parent, out)
    for stale in out.parent.glob(f"{TEMP_PREFIX}{out.stem}.*"):
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{out.stem}.", dir=out.parent))


def move_into_place(staged: list[tuple[Path, Path, Path]]) -> list[Path]:
    """Rename each staged (graph, reference, final) into place, the reference first: a file never lacks
    its reference. Returns the final paths."""
    for onnx_tmp, ref_tmp, final in staged:
        os.replace(ref_tmp, reference_path(final))
        os.replace(onnx_tmp, final)
    return [final for _, _, final in staged]


def _source_metadata(source: str | os.PathLike | None, source_sha256: str | None) -> dict[str, str]:
    if source is None:
        return {}
    from ..verify.inputs import dir_digest  # torch-free; the same content hash verify checks against

    src = Path(source).resolve()
    return {"ziplm_source": str(src), "ziplm_source_sha256": source_sha256 or dir_digest(src)}


def _export_graph(job, model: nn.Module, tmpdir: Path, origin: dict[str, str], validate: bool, atol: float,
                  rtol: float) -> tuple[Path, Path, list[OutputDiff]]:
    """One graph into ``tmpdir`` with its metadata and export reference; its diffs vs PyTorch when validated."""
    name, final, module, args, in_names, out_names, dyn, check_args = job
    tmp = tmpdir / final.name
    _export(module, args, tmp, in_names, out_names, dyn)
    _add_metadata(tmp, model, name, origin)
    feeds = {n: t.numpy() for n, t in zip(in_names, _flatten(check_args))}
    with torch.no_grad():
        ref = module(*check_args)
    want = [r.detach().float().numpy() for r in (list(ref) if isinstance(ref, tuple) else [ref])]
    ref_tmp = reference_path(tmp)
    save_reference(ref_tmp, name, feeds, dict(zip(out_names, want)), file_sha256(tmp), f"ziplm-deploy {__version__}")
    diffs = []
    if validate:
        got = _ort_session(tmp).run(out_names, feeds)
        diffs = _kept_scale(model, compare_outputs(name, out_names, got, want, atol, rtol), want, atol, rtol)
    return tmp, ref_tmp, diffs


def _kept_scale(model: nn.Module, diffs: list[OutputDiff], want: list[np.ndarray], atol: float,
                rtol: float) -> list[OutputDiff]:
    """A trimmed LM head (``models.vocab``): its logits are judged at the scale of the kept tokens' logits,
    not of the fill (``max - 128``) that would loosen ``rtol`` several-fold; the error still covers every column."""
    from ..models.vocab import vocab_trim_of

    trim = vocab_trim_of(model)
    if trim is None:
        return diffs
    kept = np.asarray(trim.kept)
    out = []
    for d, ref in zip(diffs, want):
        if d.name == "logits" and ref.size:
            scale = float(np.abs(ref[..., kept]).max())
            d = OutputDiff(d.graph, d.name, d.max_abs, d.mean_abs, scale, atol + rtol * scale)
        out.append(d)
    return out


def _flatten(args) -> list[torch.Tensor]:
    flat = []
    for a in args:
        if isinstance(a, (tuple, list)):
            flat += _flatten(a)
        else:
            flat.append(a)
    return flat


def _plan_graphs(model, arch, out: Path, with_past: bool, gen):
    from torch.export import Dim

    batch, seq = Dim("batch"), Dim("sequence")
    if not arch.is_decoder:
        ids = torch.randint(0, arch.vocab, (SAMPLE_BATCH, SAMPLE_SEQ), generator=gen)
        check = torch.randint(0, arch.vocab, (CHECK_BATCH, CHECK_SEQ), generator=gen)
        dyn = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
        probe = _Encoder(model)
        with torch.no_grad():
            head = "logits" if "logits" in model(input_ids=ids[:1, :2]) else "last_hidden_state"
        return [("encoder", out, probe, (ids, torch.ones_like(ids)), ["input_ids", "attention_mask"], [head], dyn,
                 (check, torch.ones_like(check)))]

    n_attn = len(_kv_heads(model))
    in_names = ["input_ids", "attention_mask", "position_ids"]
    total = Dim("total_sequence")
    sample = _decoder_inputs(model, SAMPLE_BATCH, SAMPLE_SEQ, 0, arch.vocab, gen)[:3]
    check = _decoder_inputs(model, CHECK_BATCH, CHECK_SEQ, 0, arch.vocab, gen)[:3]
    dyn = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}, "position_ids": {0: batch, 1: seq}}
    if not with_past:
        return [("decoder", out, _Decoder(model, with_cache=False), sample, in_names, ["logits"], dyn, check)]
    prefill_out = ["logits", *_io_names(n_attn, "present")]
    jobs = [("prefill", out, _Decoder(model, with_cache=True), sample, in_names, prefill_out, dyn, check)]
    past_len = Dim("past_sequence")
    step = Dim("step")
    sample = _decoder_inputs(model, SAMPLE_BATCH, 2, SAMPLE_PAST, arch.vocab, gen)
    check = _decoder_inputs(model, CHECK_BATCH, 1, CHECK_PAST, arch.vocab, gen)
    kv_dyn = tuple(({0: batch, 2: past_len}, {0: batch, 2: past_len}) for _ in range(n_attn))
    dyn = {"input_ids": {0: batch, 1: step}, "attention_mask": {0: batch, 1: total},
           "position_ids": {0: batch, 1: step}, "past": kv_dyn}
    decode = out.with_name(out.stem + "_with_past.onnx")
    jobs.append(("decode", decode, _Decoder(model, with_cache=True), sample,
                 in_names + _io_names(n_attn, "past_key_values"), prefill_out, dyn, check))
    return jobs
