"""Export a decoder to an ONNX Runtime GenAI model folder that generates token-exact, and check such folders.

The folder (``export --genai OUTDIR``)::

    model.onnx           one graph for prefill and decode: input_ids, attention_mask, position_ids,
                         past_key_values.{i}.key/value -> logits, present.{i}.key/value. ``i`` counts the
                         layers that still have attention (attention-free and dropped layers have no KV);
                         KV heads and head size are literal per layer, so GenAI reads them from the shapes.
                         Prefill is the same graph fed a zero-length past.
    genai_config.json    what ``onnxruntime_genai.Model`` reads (type llama/mistral/qwen2/gpt2).
    ziplm_genai.json     manifest: shape, per-layer KV, source and its content hash, the check's prompts
                         and tokens, every file's sha256; ``output_vocab`` (kept tokens of a trimmed LM head,
                         whose K logits the graph gathers back into vocabulary positions) or null.
    tokenizer files      copied from the source directory (``og.Tokenizer`` needs tokenizer.json and
                         tokenizer_config.json).

``logits`` is the last position only (a literal 1 on axis 1: GenAI's trimmed prefill logits, the LM head
runs on one row); ``full_logits=True`` keeps every position (for scoring).

Every export checks itself before the folder is renamed into place: GenAI's greedy generation of N
tokens from fixed prompts must equal ``transformers`` greedy ``generate`` token for token, else a
``GenaiValidationError`` (a ``UserError``: exit 2, like every export validation failure) names the
prompt and the first differing position and nothing is left behind. The folder checks
(``read_genai_folder``) are torch-free.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .. import __version__
from ..core import checks
from ..core.checks import TEMP_PREFIX
from ..core.errors import UserError
from ..core.jsonio import atomic_write_json, check_header, read_json

GRAPH_FILE = "model.onnx"
GENAI_CONFIG = "genai_config.json"
MANIFEST_FILE = "ziplm_genai.json"
MANIFEST_FORMAT = "ziplm-deploy/genai"
MANIFEST_VERSION = 1
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "chat_template.jinja", "vocab.json", "merges.txt", "tokenizer.model", "generation_config.json")
# model_type -> GenAI model.type (GenAI 0.18's own "gpt2" type does not load this graph: GPT-2 runs as "decoder")
GENAI_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "gpt2": "decoder"}
CHECK_PROMPTS = ("The capital of France is", "Once upon a time, there was a little",
                 "def add(a, b):\n    return")
SYNTHETIC_PROMPT_LENGTHS = (1, 23)  # always checked too: a one-token prompt and a longer one
DEFAULT_CHECK_TOKENS = 16
PAST = "past_key_values.{}.{}"
PRESENT = "present.{}.{}"


class GenaiValidationError(UserError):
    """The folder does not generate what PyTorch generates (or GenAI cannot load it)."""


@dataclass(frozen=True)
class KvLayer:
    heads: int  # KV heads
    head_dim: int


@dataclass
class GenaiResult:
    folder: Path
    kv: list[KvLayer]
    prompts: list[list[int]]
    outputs: list[list[int]]
    seconds: float = 0.0
    check_seconds: float = 0.0
    files: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GenaiFolder:
    """What the torch-free checks read from a folder."""

    path: Path
    config: dict[str, Any]
    graph: Path
    kv: list[KvLayer]
    vocab: int
    last_only: bool


# --- the graph --------------------------------------------------------------------------------------------
def _wrapper(model, last_only: bool):
    from torch import nn

    class _GenaiDecoder(nn.Module):
        """input_ids, attention_mask, position_ids, past (per KV layer (key, value)) -> logits, presents."""

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, past):
            from transformers import DynamicCache

            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=DynamicCache(ddp_cache_data=list(past)), use_cache=True,
                             logits_to_keep=1 if last_only else 0)
            return (out.logits, *[t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)])

    return _GenaiDecoder()


def _export_graph(model, path: Path, last_only: bool) -> None:
    import torch
    from torch.export import Dim

    from .onnx import SAMPLE_BATCH, SAMPLE_PAST, _decoder_inputs, _export, _io_names, _kv_heads

    n_kv = len(_kv_heads(model))
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    sample = _decoder_inputs(model, SAMPLE_BATCH, 2, SAMPLE_PAST, vocab, gen)  # seq >= 2 keeps the axis dynamic
    batch, seq, total, past = Dim("batch"), Dim("sequence"), Dim("total_sequence"), Dim("past_sequence")
    dyn = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: total},
           "position_ids": {0: batch, 1: seq}, "past": tuple(({0: batch, 2: past}, {0: batch, 2: past})
                                                             for _ in range(n_kv))}
    inputs = ["input_ids", "attention_mask", "position_ids", *_io_names(n_kv, "past_key_values")]
    _export(_wrapper(model, last_only), sample, path, inputs, ["logits", *_io_names(n_kv, "present")], dyn)


# --- genai_config.json ------------------------------------------------------------------------------------
def _token_id(value: Any, vocab: int, key: str) -> int | list[int] | None:
    if value is None:
        return None
    ids = value if isinstance(value, list) else [value]
    if not ids or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab for i in ids):
        raise UserError(f"config.json: {key} {value!r} is not a token id below vocab_size {vocab}", "fix config.json")
    return value


def genai_config(model, kv: list[KvLayer], first_heads: int) -> dict[str, Any]:
    """The ``genai_config.json`` of ``model``'s graph; the heads / head size entries are those of the first KV
    layer (GenAI reads each layer's own from the graph's shapes)."""
    cfg = model.config
    vocab = cfg.vocab_size
    eos = _token_id(cfg.eos_token_id, vocab, "eos_token_id")
    if eos is None:
        raise UserError("config.json has no eos_token_id, which GenAI needs", "set eos_token_id in config.json")
    pad = _token_id(cfg.pad_token_id, vocab, "pad_token_id")
    bos = _token_id(cfg.bos_token_id, vocab, "bos_token_id")
    context = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    decoder = {
        "filename": GRAPH_FILE, "session_options": {"log_id": "ziplm-deploy", "provider_options": []},
        "head_size": kv[0].head_dim, "hidden_size": getattr(cfg, "hidden_size", None) or cfg.n_embd,
        "num_attention_heads": first_heads, "num_key_value_heads": kv[0].heads, "num_hidden_layers": len(kv),
        "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                   "past_key_names": PAST.format("%d", "key"), "past_value_names": PAST.format("%d", "value")},
        "outputs": {"logits": "logits", "present_key_names": PRESENT.format("%d", "key"),
                    "present_value_names": PRESENT.format("%d", "value")},
    }
    body = {"type": GENAI_TYPES[cfg.model_type], "vocab_size": vocab, "context_length": int(context),
            "eos_token_id": eos, "pad_token_id": pad if pad is not None else eos if isinstance(eos, int) else eos[0],
            "decoder": decoder}
    if bos is not None:
        body["bos_token_id"] = bos
    search = {"do_sample": False, "max_length": int(context), "min_length": 0, "num_beams": 1,
              "num_return_sequences": 1, "past_present_share_buffer": False, "temperature": 1.0, "top_k": 1,
              "top_p": 1.0, "repetition_penalty": 1.0, "length_penalty": 1.0, "early_stopping": True}
    return {"model": body, "search": search}


# --- reading a folder (torch-free) --------------------------------------------------------------------------
def _graph_kv(graph: Path, where: str) -> tuple[list[KvLayer], int, bool]:
    """Per-layer KV (from the ``past_key_values.N.key`` inputs), vocab and whether logits are last-only."""
    import onnx

    try:
        proto = onnx.load(str(graph), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends: an unreadable file is the user's problem
        raise UserError(f"{where}: {graph.name} is not a readable ONNX file ({type(e).__name__})",
                        "re-export the folder") from None
    dims = {v.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
            for v in [*proto.graph.input, *proto.graph.output]}
    for name in ("input_ids", "attention_mask", "logits"):
        if name not in dims:
            raise UserError(f"{where}: {graph.name} has no {name!r}", "re-export with ziplm-deploy export --genai")
    kv, i = [], 0
    while PAST.format(i, "key") in dims:
        shapes = [dims.get(n) for n in (PAST.format(i, "key"), PAST.format(i, "value"), PRESENT.format(i, "key"),
                                        PRESENT.format(i, "value"))]
        if any(s is None or len(s) != 4 or not isinstance(s[1], int) or not isinstance(s[3], int) or s[1] < 1
               or (s[1], s[3]) != (shapes[0][1], shapes[0][3]) for s in shapes):
            raise UserError(f"{where}: KV layer {i} of {graph.name} lacks a past/present pair with literal, equal "
                            f"heads and head size ({shapes})", "re-export with ziplm-deploy export --genai")
        kv.append(KvLayer(shapes[0][1], shapes[0][3]))
        i += 1
    stray = sorted(n for n in dims if n.startswith("past_key_values.") and n.split(".")[1] not in map(str, range(i)))
    if not kv or stray:
        problem = f"KV inputs out of sequence: {stray}" if kv else "no past_key_values.0.key input"
        raise UserError(f"{where}: {graph.name} has {problem}", "re-export with ziplm-deploy export --genai")
    logits = dims["logits"]
    return kv, logits[-1], len(logits) == 3 and logits[1] == 1


def read_genai_folder(folder: str | os.PathLike) -> GenaiFolder:
    """Check a GenAI folder's config against its graph: the file it names exists, the KV layers and the
    config's head counts / head size / layer count / vocab agree with the graph's shapes."""
    folder = Path(folder)
    where = str(folder / GENAI_CONFIG)
    config = checks.mapping(read_json(folder / GENAI_CONFIG, "GenAI config"), where)
    body = checks.mapping(config.get("model"), where, "model")
    decoder = checks.mapping(body.get("decoder"), where, "model.decoder")
    name = checks.typed(decoder.get("filename"), str, where, "model.decoder.filename", "a file name")
    graph = folder / name
    if not graph.is_file():
        raise UserError(f"{where}: model.decoder.filename names {name}, which is missing from {folder}",
                        "re-export the folder with ziplm-deploy export --genai")
    kv, vocab, last_only = _graph_kv(graph, where)
    expect = {"model.vocab_size": (body.get("vocab_size"), vocab),
              "model.decoder.num_hidden_layers": (decoder.get("num_hidden_layers"), len(kv)),
              "model.decoder.num_key_value_heads": (decoder.get("num_key_value_heads"), kv[0].heads),
              "model.decoder.head_size": (decoder.get("head_size"), kv[0].head_dim)}
    for key, (have, want) in expect.items():
        if have is not None and checks.integer(have, where, key, lo=1) != want:
            raise UserError(f"{where}: {key} is {have}, but {name} has {want} (KV layers: "
                            f"{', '.join(f'{k.heads}x{k.head_dim}' for k in kv)})",
                            "re-export the folder with ziplm-deploy export --genai")
    return GenaiFolder(folder, config, graph, kv, vocab, last_only)


# --- generation: GenAI vs transformers ----------------------------------------------------------------------
def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__


def genai_generate(folder: str | os.PathLike, prompts: Sequence[Sequence[int]], tokens: int) -> list[list[int]]:
    """GenAI's greedy loop on the folder: each prompt followed by up to ``tokens`` new tokens (EOS stops)."""
    try:
        import onnxruntime_genai as og
    except ImportError:
        raise UserError("a GenAI folder needs onnxruntime-genai", "pip install 'ziplm-deploy[genai]'") from None
    try:
        model = og.Model(str(folder))
        outputs = []
        for prompt in prompts:
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=len(prompt) + tokens, do_sample=False)
            generator = og.Generator(model, params)
            generator.append_tokens(list(prompt))
            while not generator.is_done():
                generator.generate_next_token()
            outputs.append([int(t) for t in generator.get_sequence(0)][len(prompt):])
    except RuntimeError as e:  # onnxruntime-genai reports bad folders and failed runs as RuntimeError
        raise GenaiValidationError(f"ONNX Runtime GenAI cannot run {folder}: {_one_line(e)}",
                                   "re-export the folder with ziplm-deploy export --genai") from None
    return outputs


def torch_generate(model, prompts: Sequence[Sequence[int]], tokens: int) -> list[list[int]]:
    """``transformers`` greedy ``generate`` (fp32, one prompt at a time): the new tokens of each prompt."""
    import torch
    from transformers import GenerationConfig

    eos = model.config.eos_token_id
    pad = model.config.pad_token_id
    config = GenerationConfig(max_new_tokens=tokens, do_sample=False, num_beams=1, eos_token_id=eos,
                              pad_token_id=pad if pad is not None else eos if isinstance(eos, int) else eos[0])
    outputs = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([list(prompt)], dtype=torch.long)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
            outputs.append(out[0, ids.shape[1]:].tolist())
    return outputs


def _until_eos(tokens: Sequence[int], eos: set[int]) -> list[int]:
    return next((list(tokens[:i]) for i, t in enumerate(tokens) if t in eos), list(tokens))


def first_difference(got: Sequence[int], want: Sequence[int]) -> int | None:
    """The first position where two token sequences differ (a missing token counts), else None."""
    for i in range(max(len(got), len(want))):
        if i >= len(got) or i >= len(want) or got[i] != want[i]:
            return i
    return None


def check_genai_folder(folder: str | os.PathLike, model, prompts: Sequence[Sequence[int]], tokens: int,
                       reference: Sequence[Sequence[int]] | None = None) -> list[list[int]]:
    """The folder's checks (``read_genai_folder``), then GenAI greedy == ``transformers`` greedy on every
    prompt, token for token; a ``GenaiValidationError`` names the prompt and the first differing position."""
    read_genai_folder(folder)
    want = [list(r) for r in reference] if reference is not None else torch_generate(model, prompts, tokens)
    eos = model.config.eos_token_id
    eos = set(eos) if isinstance(eos, list) else {eos}
    want = [_until_eos(w, eos) for w in want]  # GenAI stops on EOS without returning it
    got = [_until_eos(g, eos) for g in genai_generate(folder, prompts, tokens)]
    for n, (prompt, g, w) in enumerate(zip(prompts, got, want)):
        pos = first_difference(g, w)
        if pos is not None:
            shown = lambda seq: str(seq[pos] if pos < len(seq) else "end")  # noqa: E731
            raise GenaiValidationError(
                f"GenAI greedy generation differs from transformers on prompt {n} ({len(prompt)} tokens, "
                f"{list(prompt)[:8]}{'...' if len(prompt) > 8 else ''}) at generated position {pos}: "
                f"GenAI {shown(g)}, transformers {shown(w)}",
                "report this as a bug; the folder was not written")
    return got


def check_prompts(vocab: int, tokenizer_dir: str | os.PathLike | None) -> list[list[int]]:
    """The fixed check prompts: ``CHECK_PROMPTS`` through the source's tokenizer (when it has one), then a
    one-token and a longer synthetic prompt."""
    prompts: list[list[int]] = []
    if tokenizer_dir is not None and (Path(tokenizer_dir) / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise UserError(f"the tokenizer in {tokenizer_dir} does not load ({type(e).__name__}: {_one_line(e)})",
                            "fix or remove its tokenizer files") from None
        prompts = [ids for ids in (tokenizer(text)["input_ids"] for text in CHECK_PROMPTS) if ids]
    prompts += [[(7 * i + 3) % vocab for i in range(n)] for n in SYNTHETIC_PROMPT_LENGTHS]
    return prompts


# --- the export ---------------------------------------------------------------------------------------------
def check_genai_target(out: str | os.PathLike, overwrite: bool, option: str = "--genai") -> Path:
    """Refuse an output folder before any work: a file there, an unwritable parent, or a non-empty folder
    without ``overwrite``."""
    out = checks.check_output_path(out, option, directory=True)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{option} {out} exists and is not empty", "choose another folder or pass --overwrite")
    return out


def check_genai_model(arch) -> None:
    """Refuse a model GenAI cannot run as a decoder (before loading it)."""
    if not arch.is_decoder:
        raise UserError(f"--genai needs a decoder (causal LM); this is a {arch.family} encoder",
                        "export encoders with --out FILE.onnx")
    if arch.model_type not in GENAI_TYPES:
        raise UserError(f"--genai: model_type {arch.model_type!r} has no ONNX Runtime GenAI type here "
                        f"(supported: {', '.join(GENAI_TYPES)})", "export it with --out FILE.onnx --with-past")


def export_genai(model, out: str | os.PathLike, *, tokenizer_dir: str | os.PathLike | None = None,
                 full_logits: bool = False, check_tokens: int = DEFAULT_CHECK_TOKENS, overwrite: bool = False,
                 source: str | os.PathLike | None = None, source_sha256: str | None = None) -> GenaiResult:
    """Write ``model``'s GenAI folder to ``out`` (a temp folder renamed into place once it generates
    token-exact); the tokenizer files come from ``tokenizer_dir`` (default: ``source``). The model is put in
    eval mode, fp32, on the CPU (in place)."""
    from ..models import adapter_for
    from .onnx import _add_metadata, _kv_heads, _source_metadata

    adapter = adapter_for(model)
    check_genai_model(adapter.arch(model))
    out = check_genai_target(out, overwrite)
    checks.integer(check_tokens, "export_genai", "check_tokens", lo=1)
    model = model.eval().float().cpu()
    kv = [KvLayer(h, d) for h, d in _kv_heads(model)]
    if not kv:
        raise UserError("--genai: the model has no attention layer left, and GenAI needs a KV cache",
                        "export it with --out FILE.onnx")
    first_heads = next(s.heads for s in adapter.shape_of(model).layers if not s.dropped and s.heads > 0)
    config = genai_config(model, kv, first_heads)
    tokenizer_dir = tokenizer_dir if tokenizer_dir is not None else source
    prompts = check_prompts(model.config.vocab_size, tokenizer_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f"{TEMP_PREFIX}{out.name}.*"):  # what a killed export of this folder left
        shutil.rmtree(stale, ignore_errors=True)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{out.name}.", dir=out.parent))
    try:
        _export_graph(model, tmp / GRAPH_FILE, last_only=not full_logits)
        _add_metadata(tmp / GRAPH_FILE, model, "genai", _source_metadata(source, source_sha256))
        atomic_write_json(tmp / GENAI_CONFIG, config)
        copied = _copy_tokenizer(tokenizer_dir, tmp)
        check_started = time.perf_counter()
        outputs = check_genai_folder(tmp, model, prompts, check_tokens)
        check_seconds = time.perf_counter() - check_started
        files = _write_manifest(tmp, model, kv, prompts, outputs, check_tokens, full_logits, source, source_sha256,
                                [GRAPH_FILE, GENAI_CONFIG, *copied])
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return GenaiResult(out, kv, prompts, outputs, time.perf_counter() - started, check_seconds, files)


def _copy_tokenizer(tokenizer_dir: str | os.PathLike | None, folder: Path) -> list[str]:
    if tokenizer_dir is None:
        return []
    copied = []
    for name in TOKENIZER_FILES:
        src = Path(tokenizer_dir) / name
        if src.is_file():
            shutil.copyfile(src, folder / name)
            copied.append(name)
    return copied


def _write_manifest(folder: Path, model, kv: list[KvLayer], prompts, outputs, tokens: int, full_logits: bool,
                    source, source_sha256, names: list[str]) -> dict[str, str]:
    import datetime as dt

    from ..core.manifest import file_sha256
    from ..models import adapter_for
    from ..models.vocab import vocab_trim_of
    from .onnx import _source_metadata

    files = {name: file_sha256(folder / name) for name in names}
    origin = _source_metadata(source, source_sha256)
    trim = vocab_trim_of(model)  # a trimmed LM head: K rows scattered over the whole vocabulary
    atomic_write_json(folder / MANIFEST_FILE, {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "producer": f"ziplm-deploy {__version__}",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "family": adapter_for(model).arch(model).family, "model_type": model.config.model_type,
        "source": origin.get("ziplm_source"), "source_sha256": origin.get("ziplm_source_sha256"),
        "shape": adapter_for(model).shape_of(model).to_json(), "logits": "full" if full_logits else "last",
        "kv_layers": [[k.heads, k.head_dim] for k in kv],
        "output_vocab": None if trim is None else {"kept": len(trim.kept), "vocab_size": trim.vocab_size,
                                                   "fill_margin": trim.fill_margin},
        "check": {"tokens": tokens, "prompts": prompts, "outputs": outputs}, "files": files})
    return files


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished folder into place; an existing (checked) folder is moved aside first and removed."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{out.name}.old.", dir=out.parent))
    os.replace(out, old / out.name)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def read_genai_manifest(folder: str | os.PathLike, hashes: bool = True) -> dict[str, Any]:
    """The folder's manifest, its header and per-layer KV checked against the graph, and (``hashes``) every
    file it lists against its sha256: a folder of another model, or a file swapped in, is refused."""
    folder = Path(folder)
    where = str(folder / MANIFEST_FILE)
    payload = read_json(folder / MANIFEST_FILE, "GenAI manifest")
    check_header(payload, MANIFEST_FORMAT, (MANIFEST_VERSION,), where)
    info = read_genai_folder(folder)
    recorded = payload.get("kv_layers")
    if recorded != [[k.heads, k.head_dim] for k in info.kv]:
        raise UserError(f"{where}: kv_layers {recorded} do not match {info.graph.name}'s "
                        f"{[[k.heads, k.head_dim] for k in info.kv]}", "re-export the folder")
    if hashes:
        _check_hashes(folder, checks.mapping(payload.get("files"), where, "files"), where)
    return payload


def _check_hashes(folder: Path, files: dict[str, Any], where: str) -> None:
    from ..core.manifest import file_sha256

    for name, digest in files.items():
        checks.typed(digest, str, where, f"files.{name}", "a sha256 string")
        if not (folder / name).is_file():
            raise UserError(f"{where}: {name} is missing from {folder}", "re-export the folder")
        if file_sha256(folder / name) != digest:
            raise UserError(f"{where}: {name} changed since the export (sha256 differs)", "re-export the folder")
