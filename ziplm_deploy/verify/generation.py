"""``verify --workload W``: generation latency of a baseline and a candidate in ONNX Runtime GenAI.

What is measured, per model, for a workload of P prompt tokens, G generated tokens and batch B
(``core.workload.Workload``: ``chat`` = 512x128, or ``PxG``):

- **TTFT** (time to first token): ``append_tokens`` (the prefill pass over the P prompt tokens) plus the
  first ``generate_next_token`` (which selects the first token from the prefill's logits);
- **decode**: the other G - 1 ``generate_next_token`` calls, each one decode step with a KV cache of
  P .. P + G - 2 tokens (the steps ``WorkloadTables.predict`` models); **ms/token** is their mean,
  **tokens/s** = B * 1000 / ms-per-token (decode throughput, as ``WorkloadPrediction``);
- **end to end**: TTFT + decode, the time of one whole generation of G tokens.

Engine: **ONNX Runtime GenAI**, driving the folders ``export --genai`` writes (a model directory is
exported into the cache folder first, in the precision it was pruned for (its manifest.json: a member of an
int8 search is timed int8, as ``verify`` without ``--workload`` times it), validated token-exact against
``transformers``, or, int8, as ``export.genai`` validates quantized folders). Why GenAI and not
ONNX Runtime sessions on ``export --with-past`` graphs with a KV-cache loop written here: GenAI is what
users ship (its C++ generator owns the KV cache, the attention mask / position ids, trimmed prefill logits
and greedy selection), so its numbers are the deployment's; a Python loop over plain sessions would copy
the growing KV cache through numpy at every step, an IO cost that distorts the decode time and that no
deployment pays. GenAI is forced to generate exactly G tokens: ``min_length = max_length = P + G``
(EOS is masked until then), greedy, a fixed prompt of P token ids (seeded, special tokens excluded;
every row of a batch the same prompt). Session options follow the profiler's: ``intra_op_num_threads``
= ``--threads`` (0: GenAI's default), one inter-op thread, the ``--opt-level``; GenAI 0.18 has no session
config entries, so ``allow_spinning`` cannot be turned off with several threads.

Protocol (``runtime.timing``'s, one visit = one whole generation): ``warmup`` generations per model, then
``rounds`` rounds in shuffled order over baseline and candidate, every raw sample kept; each metric
summarised by p25 / p50 / p90 and the sample count; the baseline re-timed at the end (``recheck``
generations, at most ``rounds``) and its end-to-end drift recorded, measured again (``retries``) when it
moved more than ``max_drift``. Generator set-up (``og.Generator``) is outside the timer.

``verify.json`` gets a ``workload`` block::

    {"workload": {"name": "chat", "prompt": 512, "generate": 128, "batch": 1},
     "engine": {"name": "onnxruntime-genai", "version", "onnxruntime", "provider", "threads", "opt_level",
                "prompt_seed", "min_length", "max_length"},
     "statistic": "p25",
     "baseline" | "candidate": {"folder", "precision", "ttft_ms": STATS, "ms_per_token": STATS | null,
                                "e2e_ms": STATS, "tokens_per_s": float | null, "generated_tokens": G, "tokens": [...]},
     "speedup": {"ttft", "decode", "e2e"},     # baseline / candidate at the statistic (decode: ms/token)
     "token_agreement": 0.9,                   # share of the G greedy tokens equal to the baseline's (reported)
     "timing": {"baseline_recheck": STATS (e2e), "drift", "max_drift", "interference", "attempts"},
     "prediction": null | {"tables": {"path", "sha256", "fingerprint_differences"}, "baseline_shape",
                           "baseline" | "candidate": WorkloadPrediction JSON, "speedup": {"ttft", "decode", "e2e"},
                           "error": {"baseline" | "candidate": {"ttft_ms", "ms_per_token", "e2e_ms"},
                                     "speedup": {"ttft", "decode", "e2e"}}}}   # measured / predicted - 1

STATS = {"p25", "p50", "p90", "n"} (ms). The report's top-level ``baseline/candidate.latency`` is the end-to-end
time (what ``max_latency_ms`` gates); its ``speedup`` block is of the metric the ``target`` is judged on,
``target_metric`` (``speedup.metric``: ``e2e`` by default, ``ttft`` or ``decode`` for a member searched for that
budget): its ``baseline_ms`` / ``candidate_ms`` (TTFT, ms per token or end to end), ``measured``, ``target_deviation``
and, with tables, ``predicted``, ``predicted_ms`` and both prediction errors are that metric's, so ``min_speedup``,
``max_target_shortfall`` and ``max_prediction_error`` judge the number the member was searched for;
``parity`` is token parity of the candidate's GenAI greedy tokens: against ``transformers`` greedy
``generate`` (``min_new_tokens = G``) on its source directory when it and torch are here ("pytorch"),
else the folder's own export check re-run in GenAI against the tokens recorded at export, all its files'
hashes checked ("genai-export-check"), else not checkable ("none": the gate fails closed). A quantized
candidate against "pytorch" cannot be token-exact with fp32: its greedy agreement is reported and it is
judged by the teacher-forced top-1 agreement of its graph (its own prefill + decode path in ONNX Runtime)
with fp32 PyTorch at the G generation positions (``tolerance.kind`` "top1-agreement", at least the
tolerance it was exported with); its "genai-export-check" stays token-exact (GenAI now vs GenAI at export,
the same quantized graph). The precision timed is in ``baseline``/``candidate.precision``, in each role of
the ``workload`` block and in the fingerprint.

Refused before any export or timing (``UserError``, exit 2): an encoder, an ONNX file or a TensorRT engine
(``--workload`` times GenAI folders or model directories), a runtime other than ``ort-cpu`` /
``ort-cuda`` (int8 folders: ``ort-cpu`` only), a workload without generated tokens, P + G beyond the
model's context length, a ``target_metric`` other than ``e2e`` / ``ttft`` / ``decode`` (``decode`` needs G >= 2),
models of different vocabularies, workload tables of another workload, model or
precision (the candidate's; a baseline of another precision than the tables cannot be predicted from
them), ``--table``, and ``--eval-data`` unless both models are directories.
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import __version__
from ..core.errors import UserError
from ..runtime import RUNTIMES
from ..core.manifest import MANIFEST_FILE, file_sha256, now_utc
from .report import Speedup, Timing, VerifyReport

# verify runtime -> GenAI provider to append (None: GenAI's CPU default), from the runtime registry
GENAI_PROVIDERS = {name: None if r.genai == "cpu" else r.genai for name, r in RUNTIMES.items() if r.genai}
OPT_LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}
METRICS = ("ttft_ms", "ms_per_token", "e2e_ms")
# speedup metric -> its time: a ``RoleTiming`` attribute and a ``WorkloadPrediction`` / report key (``target_metric``)
TARGET_METRICS = {"e2e": ("e2e", "e2e_ms"), "ttft": ("ttft", "ttft_ms"), "decode": ("per_token", "ms_per_token")}
ENGINE_SUFFIXES = (".plan", ".engine")
_INPUT_HINT = "pass a model directory or its `ziplm-deploy export --genai` folder"


# --- what the checks before any work decide -------------------------------------------------------------
@dataclass(frozen=True)
class Input:
    """One model as given: a model directory (exported into the cache) or a GenAI folder."""

    role: str
    source: str
    kind: str  # "directory" | "genai"
    vocab: int
    context: int | None  # the longest sequence it takes (P + G must fit)
    arch: Any  # ArchSpec of its dense model, or None (a GenAI folder without ziplm metadata)
    shape: Any  # its ModelShape, or None (a directory: read after export)
    precision: str = "fp32"  # label: a folder's graph's, or what a directory is exported as (pruned for)


@dataclass(frozen=True)
class Plan:
    workload: Any  # core.workload.Workload
    inputs: dict[str, Input]
    tables: Any  # WorkloadTables | None


def check_inputs(baseline: str, candidate: str, opts: Any) -> Plan:
    """Every refusal of ``verify --workload`` before anything is exported or timed."""
    from ..core.workload import Workload

    if opts.runtime not in GENAI_PROVIDERS:
        raise UserError(f"--workload times generation in ONNX Runtime GenAI; runtime {opts.runtime} has no "
                        "generation loop here", f"use --runtime {' or '.join(GENAI_PROVIDERS)}, or drop --workload")
    if opts.opt_level not in OPT_LEVELS:
        raise UserError(f"unknown optimisation level {opts.opt_level!r}", f"choose one of {', '.join(OPT_LEVELS)}")
    if opts.table:
        raise UserError("--table is a prefill latency table; with --workload the prediction comes from "
                        "--workload-tables", "pass the workload manifest of `ziplm-deploy profile --workload`")
    workload = Workload.parse(opts.workload, batch=opts.batch)
    if workload.generate < 1:
        raise UserError(f"workload {workload.name} generates no token", "time one prefill pass with verify --seq "
                        f"{workload.prompt} (no --workload), or pass a generation workload such as chat or 128x32")
    metric = target_metric(opts)
    if metric not in TARGET_METRICS:
        raise UserError(f"unknown target metric {metric!r}", f"choose one of: {', '.join(TARGET_METRICS)}")
    if metric == "decode" and workload.generate < 2:
        raise UserError(f"workload {workload.name} generates one token: no decode step to judge a decode target on",
                        "generate at least 2 tokens, or judge the target on e2e or ttft")
    inputs = {role: _check_input(path, role) for role, path in (("baseline", baseline), ("candidate", candidate))}
    if inputs["baseline"].vocab != inputs["candidate"].vocab:
        raise UserError(f"--baseline has a vocabulary of {inputs['baseline'].vocab} tokens, --candidate "
                        f"{inputs['candidate'].vocab}: they generate from different token ids",
                        "compare a pruned model with the dense model it came from")
    total = workload.prompt + workload.generate
    for r in inputs.values():
        if r.context is not None and total > r.context:
            raise UserError(f"workload {workload.name} needs {total} tokens, but --{r.role} {r.source} takes at "
                            f"most {r.context}", "use a shorter prompt or fewer generated tokens")
    if opts.eval_data and any(r.kind != "directory" for r in inputs.values()):
        raise UserError("--eval-data with --workload measures quality in PyTorch and needs both models as "
                        "directories", "pass the model directories, or drop --eval-data")
    _check_engine(opts)
    quantized = [r for r in inputs.values() if r.precision != "fp32"]
    if quantized and GENAI_PROVIDERS[opts.runtime] is not None:
        r = quantized[0]
        raise UserError(f"--{r.role} {r.source} is {r.precision}: ONNX Runtime's dynamic int8 graphs are timed on the "
                        f"CPU, not --runtime {opts.runtime}", "use --runtime ort-cpu")
    tables = _check_tables(opts.workload_tables, workload, inputs) if opts.workload_tables else None
    return Plan(workload, inputs, tables)


def target_metric(opts: Any) -> str:
    """The speedup the target is judged on (``VerifyOptions.target_metric``; e2e for options without one)."""
    return getattr(opts, "target_metric", "e2e")


def _check_input(path: str, role: str) -> Input:
    from ..export.genai import GENAI_CONFIG, check_genai_model, check_genai_precision

    p = Path(path)
    if p.is_file():
        if p.suffix in ENGINE_SUFFIXES:
            raise UserError(f"--{role} {p} is a TensorRT engine: --workload times generation in ONNX Runtime "
                            "GenAI, which does not run engines", _INPUT_HINT)
        if p.suffix == ".onnx":
            raise UserError(f"--{role} {p} is a single ONNX graph: --workload needs a generation folder (graph "
                            "with past KV, genai_config.json)", _INPUT_HINT)
        raise UserError(f"--{role} {p}: unknown kind of file", _INPUT_HINT)
    if not p.is_dir():
        raise UserError(f"--{role} not found: {p}", _INPUT_HINT)
    if (p / GENAI_CONFIG).is_file():
        return _check_genai_input(p, role)
    if not (p / "config.json").is_file():
        raise UserError(f"--{role} {p} is a folder without config.json or {GENAI_CONFIG}", _INPUT_HINT)
    from ..core.arch import arch_from_dir

    arch = arch_from_dir(p)
    if not arch.is_decoder:
        raise UserError(f"--{role} {p} is a {arch.family} encoder: --workload generates tokens and needs a decoder "
                        "(causal LM)", "verify encoders without --workload")
    check_genai_model(arch)
    from ..runtime.quantize import deployed_precision

    deployed = deployed_precision(p)
    check_genai_precision(deployed)
    precision = deployed.label
    if importlib.util.find_spec("torch") is None:  # a directory is exported to a GenAI folder first
        raise UserError(f"--{role} {p} is a model directory: exporting it to a GenAI folder needs torch",
                        "export it with `ziplm-deploy export --genai` where torch is, and pass the folder")
    config = json.loads((p / "config.json").read_text())
    context = config.get("max_position_embeddings") or config.get("n_positions")
    return Input(role, str(p), "directory", arch.vocab, context if isinstance(context, int) else None, arch, None,
                 precision)


def _check_genai_input(folder: Path, role: str) -> Input:
    """A GenAI folder: its config against its graph; with a ziplm manifest, every file against its hash."""
    from ..core.checks import integer
    from ..export.genai import MANIFEST_FILE as GENAI_MANIFEST
    from ..export.genai import read_genai_folder, read_genai_manifest
    from .inputs import _metadata_arch_and_shape, onnx_metadata

    if (folder / GENAI_MANIFEST).is_file():
        read_genai_manifest(folder, hashes=True)
    info = read_genai_folder(folder)
    arch, shape = _metadata_arch_and_shape(onnx_metadata(info.graph), str(info.graph))
    context = info.config["model"].get("context_length")
    context = None if context is None else integer(context, str(folder / "genai_config.json"),
                                                   "model.context_length", lo=1)
    return Input(role, str(folder), "genai", info.vocab, context, arch, shape, info.precision)


def _check_engine(opts: Any) -> None:
    if importlib.util.find_spec("onnxruntime_genai") is None:
        raise UserError("--workload times generation in ONNX Runtime GenAI, which is not installed",
                        "pip install 'ziplm-deploy[genai]'")
    if GENAI_PROVIDERS[opts.runtime] == "cuda":
        import onnxruntime_genai as og

        if not og.is_cuda_available():
            raise UserError("--runtime ort-cuda: this onnxruntime-genai build has no CUDA",
                            "pip install onnxruntime-genai-cuda on a GPU machine, or use --runtime ort-cpu")


def _check_tables(path: str, workload: Any, inputs: dict[str, Input]) -> Any:
    """Workload tables of exactly this workload, of the candidate's (and baseline's) model, in the candidate's
    precision (and the baseline's: tables of one precision do not predict a model timed in another)."""
    from ..core.workload import WorkloadTables

    tables = WorkloadTables.load(path)
    if tables.workload != workload:
        raise UserError(f"--workload-tables {path} are for workload {tables.workload.describe()}, but verify runs "
                        f"{workload.describe()}", f"profile with --workload {workload.name} --batch {workload.batch}")
    for r in inputs.values():
        if r.arch is None:
            if r.role == "baseline":
                continue  # predicted as the tables' dense model
            raise UserError(f"--candidate {r.source} carries no ziplm_config/ziplm_shape metadata: its shape is "
                            "unknown", "export it with `ziplm-deploy export --genai`, or drop --workload-tables")
        tables.prefill.check_arch(r.arch, f"--{r.role} {r.source}")
        if r.shape is not None:
            r.shape.validate(tables.arch, source=f"{r.source} metadata")
    from ..runtime.quantize import Precision

    for r in (inputs["candidate"], inputs["baseline"]):
        mismatch = tables.prefill.fingerprint.precision_mismatch(r.precision, f"--{r.role} {r.source}")
        if mismatch:
            fix = (f"profile the workload with {Precision.parse(r.precision).cli_flags}" if r.role == "candidate" else
                   f"pass a baseline in {tables.prefill.fingerprint.precision} (e.g. the dense model's `export --genai "
                   f"{Precision.parse(tables.prefill.fingerprint.precision).cli_flags}` folder), or drop "
                   "--workload-tables")
            raise UserError(f"--workload-tables {path}: {mismatch}", fix)
    return tables


# --- the GenAI folders ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Folder:
    """A resolved model: the GenAI folder that is timed."""

    input: Input
    folder: Path
    graph: Path
    metadata: dict[str, str]
    genai_manifest: dict[str, Any] | None
    manifest: dict[str, Any] | None  # manifest.json of a model directory
    config: dict[str, Any]  # genai_config.json
    last_only: bool  # the graph computes the last position's logits only (GenAI's trimmed prefill logits)

    @property
    def precision(self) -> str:
        """The timed graph's precision label (its ziplm_precision metadata; absent: fp32)."""
        from ..runtime.quantize import precision_of_metadata

        return precision_of_metadata(self.metadata, str(self.graph)).label

    def shape(self) -> Any:
        from .inputs import _metadata_arch_and_shape

        return _metadata_arch_and_shape(self.metadata, str(self.graph))[1]

    def describe(self) -> dict[str, Any]:
        from .inputs import onnx_params

        shape = self.metadata.get("ziplm_shape")
        gm = self.genai_manifest or {}
        out: dict[str, Any] = {
            "source": self.input.source, "kind": self.input.kind, "folder": str(self.folder), "file": str(self.graph),
            "sha256": file_sha256(self.graph), "bytes": self.graph.stat().st_size, "params": onnx_params(self.graph),
            "shape": json.loads(shape) if shape else None, "latency": None, "manifest": None,
            "precision": self.precision,
            "genai": {"logits": gm.get("logits"), "kv_layers": gm.get("kv_layers"), "source": gm.get("source"),
                      "source_sha256": gm.get("source_sha256")} if gm else None}
        if self.manifest:
            out["manifest"] = {k: self.manifest.get(k) for k in ("method", "parent", "metrics", "table_sha256")
                               if k in self.manifest}
        return out


def resolve(r: Input, cache: Path, log: Callable[[str], None]) -> Folder:
    """The GenAI folder of an input: itself, or a directory's validated export into ``cache`` (reused while the
    directory's content is unchanged)."""
    from ..export.genai import GENAI_CONFIG
    from ..export.genai import MANIFEST_FILE as GENAI_MANIFEST
    from ..export.genai import read_genai_folder, read_genai_manifest
    from .inputs import onnx_metadata

    manifest = None
    if r.kind == "directory":
        folder = export_dir(Path(r.source), cache, log, r.precision)
        if (Path(r.source) / MANIFEST_FILE).is_file():
            manifest = json.loads((Path(r.source) / MANIFEST_FILE).read_text())
    else:
        folder = Path(r.source)
    info = read_genai_folder(folder)
    if info.precision != r.precision:  # a folder changed between the checks and now, or an export bug
        raise UserError(f"{folder} is {info.precision}, but {r.source} was to be timed {r.precision}",
                        "run verify again")
    genai_manifest = read_genai_manifest(folder, hashes=False) if (folder / GENAI_MANIFEST).is_file() else None
    config = json.loads((folder / GENAI_CONFIG).read_text())
    return Folder(r, folder, info.graph, onnx_metadata(info.graph), genai_manifest, manifest, config, info.last_only)


def export_dir(model_dir: Path, cache: Path, log: Callable[[str], None], precision: str = "fp32") -> Path:
    """``export --genai`` of a model directory into ``cache`` in ``precision`` (the label it was pruned for),
    keyed by the directory's content hash and the precision."""
    from ..export.genai import export_genai, manifest_precision, read_genai_manifest
    from ..runtime.quantize import DEFAULT_MIN_TOP1, Precision
    from .inputs import dir_digest

    p = Precision.parse(precision, f"{model_dir}/{MANIFEST_FILE}: fingerprint.precision")
    digest = dir_digest(model_dir)
    tag = "" if not p.quantized else "-" + p.label.replace("/", "-")
    out = cache / f"{model_dir.name}-{digest[:16]}{tag}-genai"
    if out.is_dir():
        try:
            payload = read_genai_manifest(out)
            if payload.get("source_sha256") == digest and manifest_precision(payload) == p.label:
                log(f"reusing GenAI export {out}")
                return out
        except UserError as e:
            log(f"re-exporting {out}: {e}")
    from ..models import load_model  # torch: only for directories

    how = ("checked token-exact" if not p.quantized else
           f"{p.label}: the precision it was pruned for; checked against fp32 by top-1 agreement")
    log(f"exporting {model_dir} to the GenAI folder {out} (PyTorch, {how})")
    export_genai(load_model(model_dir), out, overwrite=True, source=model_dir, source_sha256=digest, precision=p,
                 min_top1=DEFAULT_MIN_TOP1)
    return out


def _load(folder: Folder, opts: Any) -> Any:
    """``og.Model`` of the folder with the deployment's session options and provider."""
    import onnxruntime_genai as og

    session: dict[str, Any] = {"inter_op_num_threads": 1, "graph_optimization_level": OPT_LEVELS[opts.opt_level]}
    if opts.threads:
        session["intra_op_num_threads"] = opts.threads
    try:
        config = og.Config(str(folder.folder))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": session}}}))
        config.clear_providers()
        if GENAI_PROVIDERS[opts.runtime]:
            config.append_provider(GENAI_PROVIDERS[opts.runtime])
        return og.Model(config)
    except RuntimeError as e:  # GenAI reports a folder it cannot load as RuntimeError
        raise UserError(f"ONNX Runtime GenAI cannot load {folder.folder}: {_one_line(e)}",
                        "re-export it with `ziplm-deploy export --genai`") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__


def prompt_ids(config: dict[str, Any], vocab: int, workload: Any, seed: int) -> np.ndarray:
    """The fixed prompt: [batch, P] int32 token ids drawn with ``seed``, special tokens (EOS, BOS, pad) excluded."""
    model = config.get("model") or {}
    special: set[int] = set()
    for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
        value = model.get(key)
        special.update(v for v in (value if isinstance(value, list) else [value]) if isinstance(v, int))
    allowed = np.array([i for i in range(vocab) if i not in special], dtype=np.int32)
    row = np.random.default_rng(seed).choice(allowed, size=workload.prompt)
    return np.ascontiguousarray(np.tile(row, (workload.batch, 1)).astype(np.int32))


# --- timing -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """One timed generation."""

    ttft_ms: float
    decode_ms: float
    generated: int  # new tokens in sequence 0
    tokens: tuple[int, ...]


def generate_once(model: Any, prompt: np.ndarray, workload: Any) -> Sample:
    """One generation of exactly G tokens; only ``append_tokens`` and ``generate_next_token`` are timed."""
    import onnxruntime_genai as og

    total = workload.prompt + workload.generate
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=total, min_length=total, do_sample=False, num_beams=1,
                              batch_size=workload.batch)
    generator = og.Generator(model, params)
    t0 = time.perf_counter_ns()
    generator.append_tokens(prompt)  # the prefill pass
    generator.generate_next_token()  # the first token, from the prefill's logits
    t1 = time.perf_counter_ns()
    for _ in range(workload.generate - 1):  # one decode step each
        generator.generate_next_token()
    t2 = time.perf_counter_ns()
    sequence = [int(t) for t in generator.get_sequence(0)]
    return Sample((t1 - t0) / 1e6, (t2 - t1) / 1e6, len(sequence) - workload.prompt,
                  tuple(sequence[workload.prompt:]))


@dataclass(frozen=True)
class RoleTiming:
    ttft: Any  # Stats
    per_token: Any  # Stats | None (G = 1: no decode step)
    e2e: Any  # Stats
    tokens_per_s: float | None
    generated: int
    tokens: tuple[int, ...]

    def to_json(self, folder: Path) -> dict[str, Any]:
        return {"folder": str(folder), "ttft_ms": self.ttft.to_json(),
                "ms_per_token": self.per_token.to_json() if self.per_token else None, "e2e_ms": self.e2e.to_json(),
                "tokens_per_s": self.tokens_per_s, "generated_tokens": self.generated, "tokens": list(self.tokens)}


def summarise(samples: list[Sample], workload: Any, statistic: str) -> RoleTiming:
    from ..runtime.timing import stats_of

    steps = workload.generate - 1
    ttft = stats_of(np.array([s.ttft_ms for s in samples]))
    per_token = stats_of(np.array([s.decode_ms / steps for s in samples])) if steps else None
    e2e = stats_of(np.array([s.ttft_ms + s.decode_ms for s in samples]))
    tps = round(workload.batch * 1000.0 / per_token.get(statistic), 4) if per_token and per_token.get(statistic) > 0 \
        else None
    return RoleTiming(ttft, per_token, e2e, tps, samples[0].generated, samples[0].tokens)


def time_generation(models: dict[str, Any], prompt: np.ndarray, workload: Any,
                    protocol: Any) -> tuple[dict[str, list[Sample]], list[Sample]]:
    """Warm-up, shuffled rounds over the roles (one generation per visit), the baseline re-timed at the end.
    A run that does not generate exactly G tokens is an error."""
    names = list(models)

    def run(name: str) -> Sample:
        s = generate_once(models[name], prompt, workload)
        if s.generated != workload.generate:
            raise UserError(f"the {name} generated {s.generated} tokens in GenAI, expected exactly "
                            f"{workload.generate} (min_length = max_length = {workload.prompt + workload.generate})",
                            "report this as a bug")
        return s

    for name in names:
        for _ in range(protocol.warmup):
            run(name)
    rng = np.random.default_rng(protocol.seed)
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    for r in range(protocol.rounds):
        for j in rng.permutation(len(names)):
            samples[names[j]].append(run(names[j]))
    recheck = [run("baseline") for _ in range(max(1, min(protocol.recheck, protocol.rounds)))]
    return samples, recheck


# --- the whole check ---------------------------------------------------------------------------------------
def verify_workload(baseline: str, candidate: str, opts: Any, cache: Path,
                    log: Callable[[str], None] = print) -> VerifyReport:
    """``verify --workload``: bad input raises ``UserError`` before any work; a failure after that is recorded
    in the report (``status: error``)."""
    from ..runtime.timing import Protocol

    plan = check_inputs(baseline, candidate, opts)
    w = plan.workload
    protocol = Protocol(warmup=opts.warmup, rounds=opts.rounds, seed=opts.seed)
    report = VerifyReport(
        producer=f"ziplm-deploy {__version__}", created=now_utc(),
        runtime={"name": opts.runtime, "threads": opts.threads, "opt_level": opts.opt_level,
                 "engine": "onnxruntime-genai"},
        inputs={"batch": w.batch, "seq": w.prompt, "workload": w.name, "prompt": w.prompt, "generate": w.generate},
        protocol={**protocol.to_json(), "visit": "one whole generation (prefill + G - 1 decode steps)"},
        baseline={"source": baseline, "kind": plan.inputs["baseline"].kind, "latency": None},
        candidate={"source": candidate, "kind": plan.inputs["candidate"].kind, "latency": None},
    )
    try:
        folders = {role: resolve(r, cache, log) for role, r in plan.inputs.items()}
        for role, f in folders.items():
            setattr(report, role, f.describe())
        block = _measure(report, folders, plan, opts, protocol, log)
        if plan.tables is not None:
            block["prediction"] = _predict(report, block, folders, plan, opts)
        report.workload = block
        report.parity = token_parity(folders["candidate"], block["candidate"]["tokens"],
                                     prompt_ids(folders["candidate"].config, plan.inputs["candidate"].vocab, w,
                                                opts.seed)[0], w, log, getattr(opts, "min_top1", None))
        if opts.eval_data:
            from .inputs import Resolved
            from .quality import _quality

            report.quality = _quality({role: Resolved(role, r.source, "directory") for role, r in plan.inputs.items()},
                                      opts, log)
    except UserError as e:
        log(f"error: {e}")
        report.fail(str(e))
    return report


def _measure(report: VerifyReport, folders: dict[str, Folder], plan: Plan, opts: Any, protocol: Any,
             log: Callable[[str], None]) -> dict[str, Any]:
    import onnxruntime_genai as og

    from ..runtime.timing import drift

    w, st = plan.workload, protocol.statistic
    prompt = prompt_ids(folders["candidate"].config, plan.inputs["candidate"].vocab, w, opts.seed)
    models = {role: _load(f, opts) for role, f in folders.items()}
    log(f"timing generation of baseline and candidate in ONNX Runtime GenAI {og.__version__} ({opts.runtime}, "
        f"workload {w.describe()}, {opts.threads} thread(s), {protocol.rounds} interleaved rounds)")
    for attempt in range(1, opts.retries + 2):
        try:
            samples, recheck = time_generation(models, prompt, w, protocol)
        except RuntimeError as e:  # GenAI's failures during a run
            raise UserError(f"ONNX Runtime GenAI failed while generating: {_one_line(e)}") from None
        timings = {role: summarise(s, w, st) for role, s in samples.items()}
        rechecked = summarise(recheck, w, st).e2e
        moved = drift(timings["baseline"].e2e, rechecked, st)
        if abs(moved) <= protocol.max_drift or attempt > opts.retries:
            break
        log(f"the baseline moved by {moved:+.1%} during timing (machine busy): measuring again")
    base, cand = timings["baseline"], timings["candidate"]
    for role, t in timings.items():
        getattr(report, role)["latency"] = t.e2e.to_json()

    def ratio(a: Any, b: Any) -> float | None:
        return None if a is None or b is None or b.get(st) <= 0 else round(a.get(st) / b.get(st), 5)

    speedup = {"ttft": ratio(base.ttft, cand.ttft), "decode": ratio(base.per_token, cand.per_token),
               "e2e": ratio(base.e2e, cand.e2e)}
    agree = sum(a == b for a, b in zip(base.tokens, cand.tokens)) / w.generate
    timing = Timing(statistic=st, baseline_recheck=rechecked.to_json(), drift=round(moved, 5),
                    max_drift=protocol.max_drift, interference=abs(moved) > protocol.max_drift, attempts=attempt,
                    metric="e2e")
    report.timing = timing
    report.fingerprint = _fingerprint(opts, w, folders["candidate"]).to_json()
    report.speedup = speedup_block(target_metric(opts), base, cand, speedup, st, opts.target, opts.tolerance)
    total = w.prompt + w.generate
    return {"workload": {"name": w.name, **w.to_json()},
            "engine": {"name": "onnxruntime-genai", "version": og.__version__, "onnxruntime": _ort_version(),
                       "provider": GENAI_PROVIDERS[opts.runtime] or "cpu", "threads": opts.threads,
                       "opt_level": opts.opt_level, "prompt_seed": opts.seed, "min_length": total,
                       "max_length": total},
            "statistic": st,
            "baseline": {**base.to_json(folders["baseline"].folder), "precision": folders["baseline"].precision},
            "candidate": {**cand.to_json(folders["candidate"].folder), "precision": folders["candidate"].precision},
            "speedup": speedup, "token_agreement": round(agree, 5),
            "timing": {k: getattr(timing, k) for k in ("baseline_recheck", "drift", "max_drift", "interference",
                                                       "attempts")},
            "prediction": None}


def speedup_block(metric: str, base: RoleTiming, cand: RoleTiming, speedup: dict[str, float | None], statistic: str,
                  target: float | None, tolerance: float) -> Speedup:
    """The report's ``speedup`` block: ``target`` judged on the measured speedup of ``metric`` (e2e, ttft or decode,
    the times being that metric's: end to end, TTFT or ms per token); a metric not measured (decode of G = 1) meets
    no target."""
    attr = TARGET_METRICS[metric][0]
    b, c = getattr(base, attr), getattr(cand, attr)
    measured = speedup[metric]
    judged = target is not None and measured is not None
    return Speedup(statistic=statistic, metric=metric, baseline_ms=b.get(statistic) if b else None,
                   candidate_ms=c.get(statistic) if c else None, measured=measured, target=target, tolerance=tolerance,
                   target_source="option" if target is not None else None,
                   meets_target=None if target is None else judged and bool(measured >= target * (1 - tolerance)),
                   target_deviation=round(measured / target - 1, 5) if judged else None)


def _ort_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


def _fingerprint(opts: Any, w: Any, folder: Folder) -> Any:
    """The measurement's device fingerprint (mode "generate": prefill at P then G - 1 decode steps)."""
    import platform

    from ..core.fingerprint import DeviceFingerprint
    from ..runtime.fingerprint import cpu_count, cpu_name, gpu_name
    from .inputs import onnx_info

    provider = "CUDAExecutionProvider" if GENAI_PROVIDERS[opts.runtime] == "cuda" else "CPUExecutionProvider"
    return DeviceFingerprint(
        cpu=cpu_name(), cores=cpu_count(), gpu=gpu_name() if GENAI_PROVIDERS[opts.runtime] else None,
        runtime="onnxruntime", runtime_version=_ort_version() or "unknown", provider=provider,
        opt_level=opts.opt_level, threads=opts.threads, dtype="float32", batch=w.batch, seq=w.prompt,
        mode="generate", kv_len=0, opset=onnx_info(folder.graph).opset,
        platform=f"{platform.system()} {platform.machine()}", producer=f"ziplm-deploy {__version__}",
        precision=folder.precision, logits="last" if folder.last_only else "all")


def _predict(report: VerifyReport, block: dict[str, Any], folders: dict[str, Folder], plan: Plan,
             opts: Any) -> dict[str, Any]:
    """The workload tables' prediction for both shapes, and measured / predicted - 1 per metric; the ``speedup``
    block gets the prediction of its own metric (``target_metric``)."""
    from ..core.fingerprint import DeviceFingerprint
    from ..core.workload import speedups

    tables = plan.tables
    shapes = {role: f.shape() for role, f in folders.items()}
    if shapes["candidate"] is None:
        raise UserError(f"{folders['candidate'].graph} carries no ziplm_shape metadata", "drop --workload-tables")
    baseline_shape = "own"
    if shapes["baseline"] is None:
        shapes["baseline"], baseline_shape = tables.dense_shape(), "the tables' dense model"
    pred = {role: tables.predict(s, f"--{role} shape") for role, s in shapes.items()}
    psp = speedups(pred["candidate"], pred["baseline"])
    st = block["statistic"]

    def err(measured: float | None, predicted: float | None) -> float | None:
        if measured is None or predicted is None or predicted <= 0:
            return None
        return round(measured / predicted - 1, 5)

    errors: dict[str, Any] = {}
    for role in ("baseline", "candidate"):
        m, p = block[role], pred[role].to_json()
        errors[role] = {k: err(m[k][st] if m[k] else None, p[k]) for k in METRICS}
    errors["speedup"] = {k: err(block["speedup"][k], psp[k]) for k in ("ttft", "decode", "e2e")}
    mine = DeviceFingerprint.from_json(report.fingerprint, "measurement")
    diffs = tables.prefill.fingerprint.differences(mine, ignore=("producer", "seq", "mode", "kv_len"))
    path = Path(opts.workload_tables)
    manifest = path / "workload.json" if path.is_dir() else path
    sp = report.speedup
    key = TARGET_METRICS[sp.metric][1]

    def ms(p: Any) -> float | None:
        value = getattr(p, key)
        return None if value is None else round(value, 5)

    sp.predicted = None if psp[sp.metric] is None else round(psp[sp.metric], 5)
    sp.predicted_ms, sp.predicted_baseline_ms = ms(pred["candidate"]), ms(pred["baseline"])
    sp.prediction_source = "workload-tables"
    sp.prediction_error, sp.latency_prediction_error = errors["speedup"][sp.metric], errors["candidate"][key]
    sp.table = {"path": str(manifest), "sha256": file_sha256(manifest), "fingerprint_differences": diffs}
    return {"tables": {"path": str(manifest), "sha256": file_sha256(manifest), "kv_lens": list(tables.kv_lens),
                       "fingerprint_differences": diffs},
            "baseline_shape": baseline_shape,
            "baseline": pred["baseline"].to_json(), "candidate": pred["candidate"].to_json(),
            "speedup": {k: None if v is None else round(v, 5) for k, v in psp.items()}, "error": errors}


# --- token parity -------------------------------------------------------------------------------------------
def token_parity(cand: Folder, tokens: list[int], prompt: np.ndarray, w: Any, log: Callable[[str], None],
                 min_top1: float | None = None) -> dict[str, Any]:
    """The candidate's GenAI greedy tokens against an independent reference (never against itself); a quantized
    candidate against fp32 PyTorch is judged by teacher-forced top-1 agreement (``min_top1``: the tolerance;
    None: the one it was exported with)."""
    source, why_not = _torch_source(cand)
    if source is not None:
        from ..models import load_model
        from .inputs import dir_digest

        log(f"parity: the candidate's {w.generate} GenAI tokens vs transformers greedy generate on {source}")
        model = load_model(source).eval().float().cpu()
        ids = [int(t) for t in prompt]
        want = _greedy_tokens(model, ids, w.generate)
        rows = [_token_row("tokens", tokens, want)]
        note = f"transformers greedy generate (min_new_tokens {w.generate}) on the timed prompt"
        if cand.precision == "fp32":
            return _parity_block("pytorch", str(source), dir_digest(source), note, rows)
        tolerance = _top1_row(cand, model, ids, want, rows[0], min_top1, log)
        block = _parity_block("pytorch", str(source), dir_digest(source),
                              f"{note} (fp32); the {cand.precision} candidate is judged by teacher-forced top-1 "
                              "agreement, its greedy tokens' agreement is reported", rows)
        return {**block, "tolerance": tolerance}
    gm = cand.genai_manifest
    if gm is None:
        return _parity_block("none", None, None, f"{why_not}, and {cand.folder} has no ziplm_genai.json export "
                             "check", [])
    from ..export.genai import MANIFEST_FILE as GENAI_MANIFEST
    from ..export.genai import genai_generate, read_genai_manifest

    log(f"parity: {why_not}; re-running the folder's export check in GenAI against the tokens recorded at export")
    read_genai_manifest(cand.folder, hashes=True)  # every file as exported
    check = gm.get("check") if isinstance(gm.get("check"), dict) else {}
    prompts, outputs, n = check.get("prompts"), check.get("outputs"), check.get("tokens")
    if not (isinstance(prompts, list) and isinstance(outputs, list) and isinstance(n, int) and prompts
            and len(prompts) == len(outputs)):
        raise UserError(f"{cand.folder / GENAI_MANIFEST}: check.prompts / check.outputs / check.tokens are missing "
                        "or malformed", "re-export the folder with `ziplm-deploy export --genai`")
    eos = cand.config["model"].get("eos_token_id")
    eos = set(eos) if isinstance(eos, list) else {eos}
    got = genai_generate(cand.folder, prompts, n)
    rows = [_token_row(f"prompt {i}", _until(g, eos), list(o)) for i, (g, o) in enumerate(zip(got, outputs))]
    note = "GenAI greedy tokens now vs transformers' recorded at export (files hash-checked)"
    if cand.precision != "fp32":
        top1 = check.get("top1_agreement")
        note = (f"GenAI greedy tokens of the {cand.precision} graph now vs its own recorded at export (files "
                f"hash-checked); at export it agreed with fp32 PyTorch on "
                f"{top1 if isinstance(top1, (int, float)) else '?'} of its teacher-forced top-1 positions")
    return _parity_block("genai-export-check", str(cand.folder / GENAI_MANIFEST),
                         file_sha256(cand.folder / GENAI_MANIFEST), note, rows)


def _top1_row(cand: Folder, model: Any, prompt: list[int], want: list[int], row: dict[str, Any],
              min_top1: float | None, log: Callable[[str], None]) -> dict[str, Any]:
    """A quantized candidate's verdict (in ``row``, in place): teacher-forced top-1 agreement of its graph (its own
    prefill + decode path in ONNX Runtime, fed the fp32 greedy tokens ``want``) with fp32 PyTorch's logits at
    the generation positions, at least the tolerance. Returns the parity block's ``tolerance``."""
    from ..export.genai import graph_decode, graph_session, torch_forced_logits
    from .ort_quality import top1_agreement

    least, source = _min_top1(cand, min_top1)
    log(f"parity: the candidate is {cand.precision}: judged by teacher-forced top-1 agreement of its graph with fp32 "
        f"PyTorch at the {len(want)} generation positions (at least {least:.0%}, {source}); its greedy tokens' "
        "agreement with fp32 is reported, not token-exact")
    got = graph_decode(graph_session(cand.graph), prompt, len(want), set(), forced=want)[1]
    agreement = top1_agreement(got, torch_forced_logits(model, prompt, want))
    row.update(top1_agreement=round(agreement, 6), min_top1_agreement=least, top1_positions=len(want),
               ok=bool(agreement >= least))
    return {"kind": "top1-agreement", "min_top1_agreement": least, "source": source, "candidate": cand.precision,
            "reference_precision": "fp32", "judged": [row["name"]],
            "positions": "teacher-forced: the timed prompt's last position, then each fp32 greedy token's",
            "greedy_tokens": "agreement reported, not gated"}


def _min_top1(cand: Folder, option: float | None) -> tuple[float, str]:
    """The top-1 tolerance of a quantized candidate and where it comes from."""
    from ..core.checks import number
    from ..runtime.quantize import DEFAULT_MIN_TOP1, quality_of_metadata

    if option is not None:
        return option, "option"
    check = (cand.genai_manifest or {}).get("check")
    recorded = check.get("min_top1_agreement") if isinstance(check, dict) else None
    where = str(cand.folder / "ziplm_genai.json")
    if recorded is None:
        record = quality_of_metadata(cand.metadata, str(cand.graph)) or {}
        recorded, where = record.get("min_top1_agreement"), f"{cand.graph}: metadata ziplm_quality"
    if recorded is None:
        return DEFAULT_MIN_TOP1, "default"
    return number(recorded, where, "min_top1_agreement", lo=0.0, hi=1.0), "the tolerance it was exported with"


def _until(tokens: list[int], eos: set[Any]) -> list[int]:
    return next((list(tokens[:i]) for i, t in enumerate(tokens) if t in eos), list(tokens))


def _torch_source(cand: Folder) -> tuple[Path | None, str]:
    from .inputs import dir_digest

    if cand.input.kind == "directory":
        src, digest = Path(cand.input.source), None
    else:
        gm = cand.genai_manifest or {}
        if not gm.get("source"):
            return None, "no source model directory recorded"
        src, digest = Path(gm["source"]), gm.get("source_sha256")
        if not (src / "config.json").is_file():
            return None, f"its source directory {src} is not here"
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        return None, "torch is not installed"
    try:
        import torch  # noqa: F401
    except ImportError:
        return None, "torch is not installed"
    if digest is not None and dir_digest(src) != digest:
        return None, f"its source directory {src} changed since export"
    return src, ""


def torch_tokens(model_dir: Path, prompt: list[int], tokens: int) -> list[int]:
    """``transformers`` greedy ``generate`` of exactly ``tokens`` new tokens (EOS masked, like GenAI's min_length)."""
    from ..models import load_model

    return _greedy_tokens(load_model(model_dir).eval().float().cpu(), prompt, tokens)


def _greedy_tokens(model: Any, prompt: list[int], tokens: int) -> list[int]:
    import torch
    from transformers import GenerationConfig

    from ..models import generation_cache

    eos, pad = model.config.eos_token_id, model.config.pad_token_id
    config = GenerationConfig(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, num_beams=1,
                              eos_token_id=eos,
                              pad_token_id=pad if pad is not None else eos if isinstance(eos, int) else eos[0])
    with torch.no_grad():
        ids = torch.tensor([prompt], dtype=torch.long)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config,
                             past_key_values=generation_cache())
    return out[0, len(prompt):].tolist()


def _token_row(name: str, got: list[int], want: list[int]) -> dict[str, Any]:
    from ..export.genai import first_difference

    first = first_difference(got, want)
    n = max(len(got), len(want))
    same = sum(a == b for a, b in zip(got, want))
    return {"name": name, "positions": n, "agreement": round(same / n, 5) if n else 1.0, "first_difference": first,
            "ok": first is None}


def _parity_block(reference: str, path: str | None, sha256: str | None, note: str,
                  rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"reference": reference, "reference_path": path, "reference_sha256": sha256, "note": note,
            "tolerance": {"kind": "token-exact"}, "ok": bool(rows) and all(r["ok"] for r in rows), "outputs": rows}
