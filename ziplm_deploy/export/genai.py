"""Export a decoder to an ONNX Runtime GenAI model folder that generates token-exact, and check such folders.

The folder (``export --genai OUTDIR``)::

    model.onnx           one graph for prefill and decode: input_ids, attention_mask, position_ids,
                         past_key_values.{i}.key/value -> logits, present.{i}.key/value. ``i`` counts the
                         layers that still have attention (attention-free and dropped layers have no KV);
                         KV heads and head size are literal per layer, so GenAI reads them from the shapes.
                         Prefill is the same graph fed a zero-length past.
    genai_config.json    what ``onnxruntime_genai.Model`` reads (type llama/mistral/qwen2/gpt2).
    ziplm_genai.json     manifest: shape, per-layer KV, source and its content hash, ``precision`` (absent in
                         folders written before int8: fp32), the check's prompts and tokens, every file's
                         sha256; ``output_vocab`` (kept tokens of a trimmed LM head, whose K logits the graph
                         gathers back into vocabulary positions) or null.
    tokenizer files      copied from the source directory (``og.Tokenizer`` needs tokenizer.json and
                         tokenizer_config.json).

``logits`` is the last position only (a literal 1 on axis 1: GenAI's trimmed prefill logits, the LM head
runs on one row); ``full_logits=True`` keeps every position (for scoring).

Every export checks itself before the folder is renamed into place: GenAI's greedy generation of N
tokens from fixed prompts must equal ``transformers`` greedy ``generate`` token for token, else a
``GenaiValidationError`` (a ``UserError``: exit 2, like every export validation failure) names the
prompt and the first differing position and nothing is left behind. The folder checks
(``read_genai_folder``) are torch-free.

``precision=int8-dynamic``: model.onnx is the fp32 graph (first checked token-exact as above) quantized by
``runtime.quantize.quantize_file_to`` (what ``export --precision`` and the profiler use, so an int8 table
predicts it). An int8 graph cannot generate what fp32 PyTorch generates token for token, so it is validated
for what it is (``check_quantized_folder``):

* GenAI's greedy tokens must equal the quantized graph's own greedy loop in ONNX Runtime (``graph_decode``:
  same graph, same kernels) token for token: GenAI adds nothing of its own;
* teacher-forced top-1 agreement with fp32 PyTorch at the generation positions (the last prompt position
  and each position of ``transformers``' fp32 greedy continuation, fed through the graph's own prefill and
  decode path as GenAI runs it) at least ``min_top1`` (default ``DEFAULT_MIN_TOP1``, as ``export
  --precision``: a wiring check);
* greedy agreement with ``transformers`` fp32 (matching prefix and equal tokens per prompt) is reported.

The manifest's ``check`` then also holds ``kind`` "top1-agreement", ``reference_outputs`` (fp32) and those
figures; the graph's metadata gets ``ziplm_quality`` (``inspect`` shows it) next to ``ziplm_precision``.
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

import numpy as np

from .. import __version__
from ..core import checks
from ..core.checks import TEMP_PREFIX
from ..core.errors import UserError
from ..core.jsonio import atomic_write_json, check_header, make_dirs, read_json
from ..runtime.quantize import DEFAULT_MIN_TOP1, FP32, QUALITY_METADATA, TOP1_KIND, Precision, precision_of_metadata

GRAPH_FILE = "model.onnx"
GENAI_CONFIG = "genai_config.json"
MANIFEST_FILE = "ziplm_genai.json"
MANIFEST_FORMAT = "ziplm-deploy/genai"
MANIFEST_VERSION = 1
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "chat_template.jinja", "vocab.json", "merges.txt", "tokenizer.model", "generation_config.json")


def genai_type(model_type: str) -> str | None:
    """The ONNX Runtime GenAI ``model.type`` of a config's ``model_type`` (its family says), None if it has none."""
    from ..families import FAMILIES

    return next((f.genai_types[model_type] for f in FAMILIES if model_type in f.genai_types), None)


def genai_model_types() -> list[str]:
    from ..families import FAMILIES

    return [t for f in FAMILIES for t in f.genai_types]


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


@dataclass(frozen=True)
class QuantizedCheck:
    """How an int8 folder compares with fp32 PyTorch on the check prompts (``check_quantized_folder``)."""

    reference: list[list[int]]  # transformers' fp32 greedy tokens (until EOS)
    greedy: list[dict[str, int]]  # per prompt: {"prefix": equal leading tokens, "equal", "positions"}
    top1_agreement: float  # teacher-forced, at the generation positions
    positions: int
    min_top1: float

    @property
    def greedy_agreement(self) -> float:
        total = sum(g["positions"] for g in self.greedy)
        return sum(g["equal"] for g in self.greedy) / total if total else 1.0

    def quality_json(self, precision: Precision) -> dict[str, Any]:
        """The ``ziplm_quality`` record (the format of ``export.quantize``'s, graph "genai")."""
        return {"kind": TOP1_KIND, "precision": precision.label, "reference": "pytorch-fp32", "graph": "genai",
                "top1_agreement": round(self.top1_agreement, 6), "positions": self.positions,
                "min_top1_agreement": self.min_top1, "positions_are": "teacher-forced generation positions",
                "greedy_agreement": round(self.greedy_agreement, 6)}


@dataclass
class GenaiResult:
    folder: Path
    kv: list[KvLayer]
    prompts: list[list[int]]
    outputs: list[list[int]]
    seconds: float = 0.0
    check_seconds: float = 0.0
    files: dict[str, str] = field(default_factory=dict)
    precision: Precision = FP32
    quantized: QuantizedCheck | None = None  # int8: the check against fp32 PyTorch


@dataclass(frozen=True)
class GenaiFolder:
    """What the torch-free checks read from a folder."""

    path: Path
    config: dict[str, Any]
    graph: Path
    kv: list[KvLayer]
    vocab: int
    last_only: bool
    precision: str = "fp32"  # the graph's ziplm_precision (absent: fp32)


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
    body = {"type": genai_type(cfg.model_type), "vocab_size": vocab, "context_length": int(context),
            "eos_token_id": eos, "pad_token_id": pad if pad is not None else eos if isinstance(eos, int) else eos[0],
            "decoder": decoder}
    if bos is not None:
        body["bos_token_id"] = bos
    search = {"do_sample": False, "max_length": int(context), "min_length": 0, "num_beams": 1,
              "num_return_sequences": 1, "past_present_share_buffer": False, "temperature": 1.0, "top_k": 1,
              "top_p": 1.0, "repetition_penalty": 1.0, "length_penalty": 1.0, "early_stopping": True}
    return {"model": body, "search": search}


# --- reading a folder (torch-free) --------------------------------------------------------------------------
def _graph_kv(graph: Path, where: str) -> tuple[list[KvLayer], int, bool, str]:
    """Per-layer KV (from the ``past_key_values.N.key`` inputs), vocab, whether logits are last-only and the
    precision label its metadata records."""
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
    precision = precision_of_metadata({p.key: p.value for p in proto.metadata_props}, f"{where}: {graph.name}")
    return kv, logits[-1], len(logits) == 3 and logits[1] == 1, precision.label


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
    kv, vocab, last_only, precision = _graph_kv(graph, where)
    expect = {"model.vocab_size": (body.get("vocab_size"), vocab),
              "model.decoder.num_hidden_layers": (decoder.get("num_hidden_layers"), len(kv)),
              "model.decoder.num_key_value_heads": (decoder.get("num_key_value_heads"), kv[0].heads),
              "model.decoder.head_size": (decoder.get("head_size"), kv[0].head_dim)}
    for key, (have, want) in expect.items():
        if have is not None and checks.integer(have, where, key, lo=1) != want:
            raise UserError(f"{where}: {key} is {have}, but {name} has {want} (KV layers: "
                            f"{', '.join(f'{k.heads}x{k.head_dim}' for k in kv)})",
                            "re-export the folder with ziplm-deploy export --genai")
    return GenaiFolder(folder, config, graph, kv, vocab, last_only, precision)


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

    from ..models import generation_cache

    eos = model.config.eos_token_id
    pad = model.config.pad_token_id
    config = GenerationConfig(max_new_tokens=tokens, do_sample=False, num_beams=1, eos_token_id=eos,
                              pad_token_id=pad if pad is not None else eos if isinstance(eos, int) else eos[0])
    outputs = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([list(prompt)], dtype=torch.long)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config,
                                 past_key_values=generation_cache())
            outputs.append(out[0, ids.shape[1]:].tolist())
    return outputs


def _until_eos(tokens: Sequence[int], eos: set[int]) -> list[int]:
    return next((list(tokens[:i]) for i, t in enumerate(tokens) if t in eos), list(tokens))


def _eos_ids(value: Any) -> set[int]:
    return set(value) if isinstance(value, list) else {value}


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
    eos = _eos_ids(model.config.eos_token_id)
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


# --- int8 folders: the graph's own loop in ONNX Runtime, teacher-forced top-1 against fp32 PyTorch ----------
_ORT_INTS = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


def graph_session(graph: str | os.PathLike) -> Any:
    """A CPU ONNX Runtime session of a folder's graph with ORT's defaults (all graph optimisations, default
    threads): the options a GenAI folder's session gets (its genai_config sets none)."""
    from ..verify.ort_quality import ort_session

    return ort_session(graph)


def graph_decode(session: Any, prompt: Sequence[int], steps: int, eos: set[int],
                 forced: Sequence[int] | None = None) -> tuple[list[int], np.ndarray]:
    """The folder graph's generation loop as GenAI runs it (batch 1): a prefill pass over ``prompt`` with a
    zero-length past, then one decode step per token with the presents fed back as the past. Greedy (arg-max,
    EOS stops it without being returned, at most ``steps`` tokens) or, with ``forced``, teacher-forced on those
    tokens (``steps`` is then their number). Returns the tokens and each step's last-position logits
    [steps run, vocab] (torch-free)."""
    inputs = {i.name: i for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    ints = {n: _ORT_INTS.get(inputs[n].type, np.int64) for n in ("input_ids", "attention_mask", "position_ids")
            if n in inputs}
    past = {n: np.zeros((1, i.shape[1], 0, i.shape[3]), dtype=np.float32) for n, i in inputs.items()
            if n.startswith("past_key_values.")}
    runs = len(forced) if forced is not None else steps
    tokens: list[int] = []
    logits: list[np.ndarray] = []
    feed_ids, length = [int(t) for t in prompt], 0
    for step in range(runs):
        length += len(feed_ids)
        feed = {"input_ids": np.array([feed_ids], dtype=ints["input_ids"]),
                "attention_mask": np.ones((1, length), dtype=ints["attention_mask"]), **past}
        if "position_ids" in ints:
            feed["position_ids"] = np.arange(length - len(feed_ids), length, dtype=ints["position_ids"])[None]
        out = dict(zip(names, session.run(names, feed)))
        row = np.asarray(out["logits"])[0, -1]
        logits.append(row)
        token = int(forced[step]) if forced is not None else int(np.argmax(row))
        if forced is None and token in eos:
            break
        tokens.append(token)
        past = {n: out["present." + n[len("past_key_values."):]] for n in past}
        feed_ids = [token]
    return tokens, np.stack(logits) if logits else np.zeros((0, 0), dtype=np.float32)


def torch_forced_logits(model, prompt: Sequence[int], continuation: Sequence[int]) -> np.ndarray:
    """fp32 PyTorch's logits at the positions that predict ``continuation`` after ``prompt`` (one forward)."""
    import torch

    ids = torch.tensor([[*prompt, *continuation]], dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    return out.logits[0, len(prompt) - 1: len(prompt) + len(continuation) - 1].float().numpy()


def greedy_agreement(got: Sequence[int], want: Sequence[int]) -> dict[str, int]:
    """{"prefix": leading tokens equal, "equal": positions equal, "positions": the longer length}."""
    first = first_difference(got, want)
    return {"prefix": len(got) if first is None else first, "equal": sum(a == b for a, b in zip(got, want)),
            "positions": max(len(got), len(want))}


def _prompt_text(n: int, prompt: Sequence[int]) -> str:
    return f"prompt {n} ({len(prompt)} tokens, {list(prompt)[:8]}{'...' if len(prompt) > 8 else ''})"


def check_quantized_folder(folder: str | os.PathLike, model, prompts: Sequence[Sequence[int]], tokens: int,
                           min_top1: float = DEFAULT_MIN_TOP1, reference: Sequence[Sequence[int]] | None = None
                           ) -> tuple[list[list[int]], QuantizedCheck]:
    """A quantized folder checked for what it is (module docstring): GenAI greedy == the graph's own greedy
    loop in ONNX Runtime token for token, then teacher-forced top-1 agreement with fp32 PyTorch (``model``) at
    the generation positions >= ``min_top1``; a ``GenaiValidationError`` otherwise. ``reference``: transformers'
    fp32 greedy tokens (``torch_generate``), computed when not given. Returns GenAI's tokens and the figures."""
    from ..verify.ort_quality import top1_agreement

    info = read_genai_folder(folder)
    eos = _eos_ids(model.config.eos_token_id)
    full = [list(r) for r in reference] if reference is not None else torch_generate(model, prompts, tokens)
    got = [_until_eos(g, eos) for g in genai_generate(folder, prompts, tokens)]
    session = graph_session(info.graph)
    for n, (prompt, g) in enumerate(zip(prompts, got)):
        own, _ = graph_decode(session, prompt, tokens, eos)
        pos = first_difference(g, own)
        if pos is not None:
            shown = lambda seq: str(seq[pos] if pos < len(seq) else "end")  # noqa: E731
            raise GenaiValidationError(
                f"GenAI greedy generation of the {info.precision} folder differs from its own graph's greedy loop "
                f"in ONNX Runtime on {_prompt_text(n, prompt)} at generated position {pos}: GenAI {shown(g)}, "
                f"graph {shown(own)}", "report this as a bug; the folder was not written")
    scored = [(graph_decode(session, p, len(r), eos, forced=r)[1], torch_forced_logits(model, p, r))
              for p, r in zip(prompts, full) if r]
    positions = sum(len(w) for _, w in scored)
    top1 = top1_agreement(np.concatenate([g for g, _ in scored]), np.concatenate([w for _, w in scored])) \
        if scored else 0.0
    check = QuantizedCheck([_until_eos(r, eos) for r in full],
                           [greedy_agreement(g, _until_eos(r, eos)) for g, r in zip(got, full)],
                           top1, positions, min_top1)
    if not top1 >= min_top1:
        raise GenaiValidationError(
            f"the {info.precision} folder's teacher-forced top-1 agreement with fp32 PyTorch is {top1:.1%} of "
            f"{positions} generation positions, below the least allowed {min_top1:.1%} (greedy tokens equal to "
            f"fp32 transformers: {check.greedy_agreement:.1%})",
            "try --per-channel, lower --min-top1, or export fp32 (--precision fp32); the folder was not written")
    return got, check


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


def check_genai_precision(precision: Precision) -> None:
    """Refuse a precision a GenAI folder is not made in (int8-static: its calibration is not written here)."""
    if precision.static:
        raise UserError(f"--genai folders are fp32 or int8-dynamic, not {precision.label}",
                        "export int8-static with --out FILE.onnx --calib TEXT, or use int8-dynamic for --genai")


def check_genai_model(arch) -> None:
    """Refuse a model GenAI cannot run as a decoder (before loading it)."""
    if not arch.is_decoder:
        raise UserError(f"--genai needs a decoder (causal LM); this is a {arch.family} encoder",
                        "export encoders with --out FILE.onnx")
    if genai_type(arch.model_type) is None:
        raise UserError(f"--genai: model_type {arch.model_type!r} has no ONNX Runtime GenAI type here "
                        f"(supported: {', '.join(genai_model_types())})", "export it with --out FILE.onnx --with-past")


def export_genai(model, out: str | os.PathLike, *, tokenizer_dir: str | os.PathLike | None = None,
                 full_logits: bool = False, check_tokens: int = DEFAULT_CHECK_TOKENS, overwrite: bool = False,
                 source: str | os.PathLike | None = None, source_sha256: str | None = None,
                 precision: Precision = FP32, min_top1: float = DEFAULT_MIN_TOP1) -> GenaiResult:
    """Write ``model``'s GenAI folder to ``out`` (a temp folder renamed into place once it generates
    token-exact); the tokenizer files come from ``tokenizer_dir`` (default: ``source``). The model is put in
    eval mode, fp32, on the CPU (in place). A quantized ``precision``: the checked fp32 graph quantized and
    validated against fp32 PyTorch (module docstring; ``min_top1``: least teacher-forced top-1 agreement)."""
    from ..models import adapter_for
    from ..runtime.quantize import quantize_file_to
    from .onnx import _add_metadata, _kv_heads, _source_metadata

    adapter = adapter_for(model)
    check_genai_model(adapter.arch(model))
    check_genai_precision(precision)
    out = check_genai_target(out, overwrite)
    checks.integer(check_tokens, "export_genai", "check_tokens", lo=1)
    checks.number(min_top1, "export_genai", "min_top1", lo=0.0, hi=1.0)
    model = model.eval().float().cpu()
    kv = [KvLayer(h, d) for h, d in _kv_heads(model)]
    if not kv:
        raise UserError("--genai: the model has no attention layer left, and GenAI needs a KV cache",
                        "export it with --out FILE.onnx")
    first_heads = next(s.heads for s in adapter.shape_of(model).layers if not s.dropped and s.heads > 0)
    config = genai_config(model, kv, first_heads)
    tokenizer_dir = tokenizer_dir if tokenizer_dir is not None else source
    prompts = check_prompts(model.config.vocab_size, tokenizer_dir)
    make_dirs(out.parent, out)
    for stale in out.parent.glob(f"{TEMP_PREFIX}{out.name}.*"):  # what a killed export of this folder left
        shutil.rmtree(stale, ignore_errors=True)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{out.name}.", dir=out.parent))
    try:
        fp32_dir = tmp / "fp32" if precision.quantized else tmp  # a quantized folder's graph is made from this one
        fp32_dir.mkdir(exist_ok=True)
        _export_graph(model, fp32_dir / GRAPH_FILE, last_only=not full_logits)
        _add_metadata(fp32_dir / GRAPH_FILE, model, "genai", _source_metadata(source, source_sha256))
        atomic_write_json(fp32_dir / GENAI_CONFIG, config)
        copied = _copy_tokenizer(tokenizer_dir, tmp)
        check_started = time.perf_counter()
        reference = torch_generate(model, prompts, check_tokens)
        outputs = check_genai_folder(fp32_dir, model, prompts, check_tokens, reference=reference)
        quantized = None
        if precision.quantized:  # the same function and settings as export --precision and the profiler
            quantize_file_to(fp32_dir / GRAPH_FILE, tmp / GRAPH_FILE, precision)
            shutil.rmtree(fp32_dir)
            atomic_write_json(tmp / GENAI_CONFIG, config)
            outputs, quantized = check_quantized_folder(tmp, model, prompts, check_tokens, min_top1, reference)
            _add_quality(tmp / GRAPH_FILE, quantized.quality_json(precision))
        check_seconds = time.perf_counter() - check_started
        files = _write_manifest(tmp, model, kv, prompts, outputs, check_tokens, full_logits, source, source_sha256,
                                [GRAPH_FILE, GENAI_CONFIG, *copied], precision, quantized)
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return GenaiResult(out, kv, prompts, outputs, time.perf_counter() - started, check_seconds, files, precision,
                       quantized)


def _add_quality(graph: Path, record: dict[str, Any]) -> None:
    """The graph's ``ziplm_quality`` metadata (metadata only: what was checked runs unchanged)."""
    import onnx

    proto = onnx.load(str(graph))
    proto.metadata_props.add(key=QUALITY_METADATA, value=json.dumps(record))
    onnx.save_model(proto, str(graph))


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
                    source, source_sha256, names: list[str], precision: Precision = FP32,
                    quantized: QuantizedCheck | None = None) -> dict[str, str]:
    import datetime as dt

    from ..core.manifest import file_sha256
    from ..models import adapter_for
    from ..models.vocab import vocab_trim_of
    from .onnx import _source_metadata

    files = {name: file_sha256(folder / name) for name in names}
    origin = _source_metadata(source, source_sha256)
    trim = vocab_trim_of(model)  # a trimmed LM head: K rows scattered over the whole vocabulary
    check: dict[str, Any] = {"tokens": tokens, "prompts": prompts, "outputs": outputs}
    if quantized is not None:  # outputs: GenAI's (== the quantized graph's own greedy loop in ORT)
        check.update({"kind": TOP1_KIND, "reference": "transformers-fp32", "reference_outputs": quantized.reference,
                      "greedy": quantized.greedy, "greedy_agreement": round(quantized.greedy_agreement, 6),
                      "top1_agreement": round(quantized.top1_agreement, 6), "top1_positions": quantized.positions,
                      "min_top1_agreement": quantized.min_top1, "graph_greedy": "token-exact",
                      "fp32_graph": "token-exact"})
    atomic_write_json(folder / MANIFEST_FILE, {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "producer": f"ziplm-deploy {__version__}",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "family": adapter_for(model).arch(model).family, "model_type": model.config.model_type,
        "source": origin.get("ziplm_source"), "source_sha256": origin.get("ziplm_source_sha256"),
        "shape": adapter_for(model).shape_of(model).to_json(), "logits": "full" if full_logits else "last",
        "precision": precision.label,
        "kv_layers": [[k.heads, k.head_dim] for k in kv],
        "output_vocab": None if trim is None else {"kept": len(trim.kept), "vocab_size": trim.vocab_size,
                                                   "fill_margin": trim.fill_margin},
        "check": check, "files": files})
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
    precision = manifest_precision(payload, where)
    if precision != info.precision:
        raise UserError(f"{where}: precision {precision} does not match {info.graph.name}'s {info.precision} "
                        "(metadata ziplm_precision)", "re-export the folder")
    if hashes:
        _check_hashes(folder, checks.mapping(payload.get("files"), where, "files"), where)
    return payload


def manifest_precision(payload: dict[str, Any], where: str = MANIFEST_FILE) -> str:
    """The precision label a manifest records; folders written before int8 GenAI folders have none: fp32."""
    label = payload.get("precision", "fp32")
    checks.typed(label, str, where, "precision", "a precision label")
    return Precision.parse(label, f"{where}: precision").label


def _check_hashes(folder: Path, files: dict[str, Any], where: str) -> None:
    from ..core.manifest import file_sha256

    for name, digest in files.items():
        checks.typed(digest, str, where, f"files.{name}", "a sha256 string")
        if not (folder / name).is_file():
            raise UserError(f"{where}: {name} is missing from {folder}", "re-export the folder")
        if file_sha256(folder / name) != digest:
            raise UserError(f"{where}: {name} changed since the export (sha256 differs)", "re-export the folder")
