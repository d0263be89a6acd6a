"""Measure a latency table, and check it against whole models, in one runtime on this device.

``profile``: build every block graph of the grid plus the dense and all-removed reference models, load
them all, time them together with the one protocol (``runtime.timing``), re-time the dense reference
at the end, and fit the two-point calibration. ``check``: build random non-uniform shapes of the
model, time them end to end beside the dense model, and compare with the table's prediction.

With a quantized ``precision`` every graph (blocks, references, checked shapes) goes through
``runtime.quantize.quantize_graph`` before it is loaded: the one function the exporter quantizes the
model with, so the table predicts the quantized model. Such a table also times the fp32 dense model
(``references["dense_fp32"]``): speedups of quantized members over the fp32 model they replace.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator

import numpy as np

from ..core.arch import ArchSpec
from ..core.errors import InternalError, UserError
from ..core.shape import LINEAR_KINDS, ModelShape, kind_dims
from ..core.table import FP32_DENSE, AttentionEntry, FfnEntry, HeadEntry, LatencyTable, RankEntry, Stats
from ..families import family_for
from ..runtime import RUNTIMES, Backend, Session, get_backend
from ..runtime.feeds import synthetic_feeds
from ..runtime.fingerprint import fingerprint
from ..runtime.quantize import FP32, Precision, quantize_graph
from ..runtime.timing import Protocol, drift, recheck, round_robin, stats_of
from .blocks import OPSET, Sizes, block_graph, head_graph, linear_graph, model_graph
from .grid import attention_grid, ffn_grid, random_shape, rank_grid, vocab_grid



@dataclass(frozen=True)
class ProfileOptions:
    runtime: str = "ort-cpu"
    batch: int = 1
    seq: int = 128
    decode_kv_len: int = 0  # > 0: decode one token with a KV cache of this length
    threads: int = 1
    opt_level: str = "all"
    dtype: str = "float32"
    ffn_step: int = 32
    rank_step: int = 0  # > 0: also time FLOP-factorised FFN Linears on this rank grid
    vocab_step: int = 0  # > 0 (causal LMs): also time LM heads trimmed to step, 2*step, ... output tokens
    protocol: Protocol = field(default_factory=Protocol)
    precision: Precision = FP32  # graphs are quantized so before loading
    logits: str = "all"  # prefill of a causal LM: logits of every position, or "last" (generation's first token)

    @property
    def sizes(self) -> Sizes:
        if self.decode_kv_len:
            return Sizes(self.batch, 1, "decode", self.decode_kv_len)
        return Sizes(self.batch, self.seq, "prefill", 0, self.logits)

    def backend(self) -> Backend:
        if self.runtime == "torch":
            raise UserError("profiling times ONNX block graphs; runtime torch runs torch programs only",
                            "profile with --runtime ort-cpu, ort-cuda, ort-trt or trt")
        check_precision(self.precision, self.runtime, self.dtype)
        return get_backend(self.runtime, threads=self.threads, opt_level=self.opt_level, dtype=self.dtype)


def check_precision(precision: Precision, runtime: str, dtype: str) -> None:
    """Refuse a precision the runtime cannot run as quantized (before any graph is built)."""
    if not precision.quantized:
        return
    if runtime not in RUNTIMES or not RUNTIMES[runtime].int8:
        raise UserError(f"precision {precision.label} is ONNX Runtime CPU quantization; runtime {runtime} does not "
                        "run it", "profile int8-dynamic with --runtime ort-cpu, or use --precision fp32")
    if dtype != "float32":
        raise UserError(f"precision {precision.label} quantizes float32 graphs, not {dtype}", "drop --dtype")


def precision_fingerprint(backend: Backend, opts: "ProfileOptions") -> Any:
    sizes = opts.sizes
    return fingerprint(backend, dtype=opts.dtype, batch=sizes.batch, seq=sizes.q_len, mode=sizes.mode,
                       kv_len=sizes.kv_len, opset=OPSET, precision=opts.precision.label, logits=sizes.logits)


@contextlib.contextmanager
def _bar(enabled: bool, total: int, desc: str, unit: str) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda n: None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False) as bar:
        yield bar.update


def _load(backend: Backend, model: Any, sizes: Sizes, vocab: int, precision: Precision = FP32) -> Session:
    session = backend.load(quantize_graph(model, precision))
    session.bind(synthetic_feeds(session.inputs, sizes.dims, vocab))
    return session


def _load_all(backend: Backend, builders: dict[str, Callable[[], Any]], sizes: Sizes, vocab: int,
              progress: bool, precision: Precision = FP32,
              overrides: dict[str, Precision] | None = None) -> dict[str, Session]:
    """Every graph loaded in ``precision`` (or its entry in ``overrides``); names starting ``fp32:`` are loaded
    unquantized."""
    sessions: dict[str, Session] = {}
    try:
        with _bar(progress, len(builders), "building", "graph") as update:
            for name, build in builders.items():
                own = FP32 if name.startswith("fp32:") else (overrides or {}).get(name, precision)
                sessions[name] = _load(backend, build(), sizes, vocab, own)
                update(1)
    except BaseException:
        _close(sessions)
        raise
    return sessions


def _close(sessions: dict[str, Session]) -> None:
    for s in sessions.values():
        s.close()


def _time(sessions: dict[str, Session], protocol: Protocol, progress: bool) -> dict[str, np.ndarray]:
    calls = {name: s.run_bound for name, s in sessions.items()}
    with _bar(progress, protocol.rounds * len(calls), "timing", "call") as update:
        return round_robin(calls, protocol, update)


def profile(arch: ArchSpec, opts: ProfileOptions, progress: bool = True) -> LatencyTable:
    """Measure the latency table of ``arch`` with ``opts`` on this machine."""
    (table,) = profile_together(arch, [opts], progress)
    return table


def profile_together(arch: ArchSpec, runs: list[ProfileOptions], progress: bool = True) -> list[LatencyTable]:
    """The tables of several sizes of one deployment (a workload's prefill and decode tables), every graph of
    every table timed in ONE interleaved round-robin, so that all of them see the same machine state: tables
    timed one after the other on a shared machine differ by several percent, and a workload prediction that
    interpolates between them would inherit it. ``runs`` share the runtime, threads, optimisation level,
    dtype, precision and protocol (the first's); each table has its own dense re-check and fingerprint."""
    for opts in runs:
        _check_options(arch, opts)
        if replace(opts, batch=runs[0].batch, seq=runs[0].seq, decode_kv_len=runs[0].decode_kv_len,
                   logits=runs[0].logits) != runs[0]:
            raise InternalError("profile_together: the tables differ in more than their sizes")
    backend, protocol = runs[0].backend(), runs[0].protocol
    sessions: dict[str, Session] = {}
    try:
        for i, opts in enumerate(runs):
            builders, overrides = _graph_builders(arch, opts)
            loaded = _load_all(backend, builders, opts.sizes, arch.vocab, progress, opts.precision, overrides)
            sessions.update({f"{i}|{name}": s for name, s in loaded.items()})
        samples = _time(sessions, protocol, progress)
        for i in range(len(runs)):
            samples[f"{i}|ref:dense_recheck"] = recheck(sessions[f"{i}|ref:dense"].run_bound, protocol.recheck)
    finally:
        _close(sessions)
    stats = {key: stats_of(s) for key, s in samples.items()}
    return [_table(arch, opts, precision_fingerprint(backend, opts),
                   {key.partition("|")[2]: s for key, s in stats.items() if key.startswith(f"{i}|")})
            for i, opts in enumerate(runs)]


def _check_options(arch: ArchSpec, opts: ProfileOptions) -> None:
    sizes = opts.sizes
    if sizes.decode and not arch.is_decoder:
        label = family_for(arch).label
        raise UserError(f"{label} has no decode mode", f"drop --decode-kv-len for {label} models")
    if opts.logits != "all" and (sizes.decode or not arch.is_decoder):
        what = "a decode step has one position" if sizes.decode else f"a {family_for(arch).label} model has no LM head"
        raise UserError(f"--logits {opts.logits}: {what}", "drop --logits (it applies to causal LMs' prefill tables)")


def _graph_builders(arch: ArchSpec, opts: ProfileOptions) -> tuple[dict[str, Callable[[], Any]], dict[str, Precision]]:
    """Every graph a table times, by entry name (``attn:H/KV``, ``ffn:W``, ``rank:KIND/R``, ``head:K``,
    ``ref:...``), and the entries quantized otherwise than the table's precision. Refuses what the options
    cannot profile before any graph is built."""
    sizes, down_layers = opts.sizes, opts.precision.fp32_down_layers
    if down_layers and max(down_layers) >= arch.num_layers:
        raise UserError(f"precision {opts.precision.label} names layer {max(down_layers)} of a {arch.num_layers}-layer "
                        "model", "list layers 0.." + str(arch.num_layers - 1))
    heads = vocab_grid(arch.vocab, opts.vocab_step) if opts.vocab_step else []
    if heads and not arch.is_decoder:
        raise UserError(f"{family_for(arch).label} has no LM head to trim", "drop --vocab-step")
    builders: dict[str, Callable[[], Any]] = {}
    for h, kv in attention_grid(arch):
        builders[f"attn:{h}/{kv}"] = (lambda h=h, k=kv: block_graph(arch, "attention", h, sizes, k, opts.dtype))
    overrides: dict[str, Precision] = {}
    for width in ffn_grid(arch.ffn, opts.ffn_step):
        builders[f"ffn:{width}"] = (lambda w=width: block_graph(arch, "ffn", w, sizes, None, opts.dtype))
        if down_layers:  # fp32-down=L,...: both variants of every FFN block, whatever layer the graph names
            builders[f"ffn32:{width}"] = builders[f"ffn:{width}"]
            overrides[f"ffn:{width}"] = replace(opts.precision, fp32_down_layers=())
            overrides[f"ffn32:{width}"] = replace(opts.precision, fp32_down=True, fp32_down_layers=())
    ranks = _rank_points(arch, opts.rank_step)
    for kind, rank in ranks:
        builders[f"rank:{kind}/{rank}"] = (lambda k=kind, r=rank: linear_graph(arch, k, r, sizes, opts.dtype))
    for kind in LINEAR_KINDS if ranks else ():
        builders[f"ref:linear:{kind}"] = (lambda k=kind: linear_graph(arch, k, None, sizes, opts.dtype))
    for rows in heads:
        builders[f"head:{rows}"] = (lambda r=rows: head_graph(arch, r, sizes, opts.dtype))
    if heads:
        builders["ref:head"] = lambda: head_graph(arch, None, sizes, opts.dtype)
    dense, removed = ModelShape.dense(arch), LatencyTable.removed_shape_of(arch)
    builders["ref:dense"] = lambda: model_graph(arch, dense, sizes, opts.dtype)
    builders["ref:removed"] = lambda: model_graph(arch, removed, sizes, opts.dtype)
    if opts.precision.quantized:
        builders["fp32:dense"] = lambda: model_graph(arch, dense, sizes, opts.dtype)
    return builders, overrides


def _table(arch: ArchSpec, opts: ProfileOptions, fp: Any, stats: dict[str, Stats]) -> LatencyTable:
    """The table of the timed entries (``_graph_builders``' names)."""
    ranks = _rank_points(arch, opts.rank_step)
    heads = vocab_grid(arch.vocab, opts.vocab_step) if opts.vocab_step else []
    attention = [AttentionEntry(h, kv, stats[f"attn:{h}/{kv}"]) for h, kv in attention_grid(arch)]
    ffn = [FfnEntry(w, stats[f"ffn:{w}"]) for w in ffn_grid(arch.ffn, opts.ffn_step)]
    refs = {"dense": stats["ref:dense"], "removed": stats["ref:removed"], "dense_recheck": stats["ref:dense_recheck"]}
    refs.update({f"linear:{kind}": stats[f"ref:linear:{kind}"] for kind in LINEAR_KINDS if ranks})
    if heads:
        refs["head"] = stats["ref:head"]
    if opts.precision.quantized:
        refs[FP32_DENSE] = stats["fp32:dense"]
    protocol = {**opts.protocol.to_json(), "ffn_step": opts.ffn_step, "graphs": "onnx.helper blocks",
                **({"rank_step": opts.rank_step} if ranks else {}), **({"vocab_step": opts.vocab_step} if heads else {})}
    ffn32 = ([FfnEntry(w, stats[f"ffn32:{w}"]) for w in ffn_grid(arch.ffn, opts.ffn_step)]
             if opts.precision.fp32_down_layers else [])
    return LatencyTable.build(fp, arch, protocol, attention, ffn, refs,
                              [RankEntry(kind, rank, stats[f"rank:{kind}/{rank}"]) for kind, rank in ranks], ffn32,
                              [HeadEntry(rows, stats[f"head:{rows}"]) for rows in heads])


def _rank_points(arch: ArchSpec, step: int) -> list[tuple[str, int]]:
    if step <= 0:
        return []
    points = []
    for kind in LINEAR_KINDS:
        n_in, n_out = kind_dims(arch, kind)
        points += [(kind, r) for r in rank_grid(n_in, n_out, step)]
    return points


@dataclass(frozen=True)
class CheckResult:
    shape: ModelShape
    predicted_ms: float
    measured: Stats
    predicted_speedup: float
    measured_speedup: float

    def measured_ms(self, statistic: str = "p25") -> float:
        return self.measured.get(statistic)

    def latency_error(self, statistic: str = "p25") -> float:
        return self.predicted_ms / self.measured_ms(statistic) - 1.0

    @property
    def speedup_error(self) -> float:
        return self.predicted_speedup / self.measured_speedup - 1.0

    def to_json(self, statistic: str = "p25") -> dict[str, Any]:
        return {
            "layers": [layer.to_json() for layer in self.shape.layers],
            "predicted_ms": round(self.predicted_ms, 4), "measured_ms": round(self.measured_ms(statistic), 4),
            "measured": self.measured.to_json(), "latency_error": round(self.latency_error(statistic), 5),
            "predicted_speedup": round(self.predicted_speedup, 4), "measured_speedup": round(self.measured_speedup, 4),
            "speedup_error": round(self.speedup_error, 5),
        }


@dataclass(frozen=True)
class CheckReport:
    results: tuple[CheckResult, ...]
    dense: Stats
    dense_recheck: Stats
    statistic: str

    @property
    def drift(self) -> float:
        return drift(self.dense, self.dense_recheck, self.statistic)

    def summary(self) -> dict[str, float]:
        lat = np.abs([r.latency_error(self.statistic) for r in self.results])
        spd = np.abs([r.speedup_error for r in self.results])
        return {"median_abs_latency_error": float(np.median(lat)), "max_abs_latency_error": float(lat.max()),
                "median_abs_speedup_error": float(np.median(spd)), "max_abs_speedup_error": float(spd.max())}

    def to_json(self) -> dict[str, Any]:
        return {"statistic": self.statistic, "dense": self.dense.to_json(), "dense_recheck": self.dense_recheck.to_json(),
                "drift": round(self.drift, 5), "summary": {k: round(v, 5) for k, v in self.summary().items()},
                "shapes": [r.to_json(self.statistic) for r in self.results]}


def check(table: LatencyTable, shapes: list[ModelShape], opts: ProfileOptions, progress: bool = True,
          protocol: Protocol | None = None) -> CheckReport:
    """Time ``shapes`` end to end beside the dense model; compare with ``table.predict``."""
    arch = table.arch
    _check_options(arch, opts)
    sizes = opts.sizes
    protocol = protocol or Protocol(warmup=3, rounds=20, recheck=10)
    backend = opts.backend()
    mismatch = table.fingerprint.precision_mismatch(opts.precision.label, "this check")
    if mismatch:
        raise UserError(mismatch, f"check with {Precision.parse(table.fingerprint.precision).cli_flags}")
    fp = precision_fingerprint(backend, opts)
    diffs = table.fingerprint.differences(fp, ignore=("producer", "cores"))
    if diffs:
        raise UserError("the table was measured for another deployment: " + "; ".join(diffs),
                        "check with the same --runtime/--threads/--opt-level/--batch/--seq/--decode-kv-len/--logits")
    shapes = [s.validate(arch) for s in shapes]
    builders: dict[str, Callable[[], Any]] = {"dense": lambda: model_graph(arch, ModelShape.dense(arch), sizes, opts.dtype)}
    for i, s in enumerate(shapes):
        builders[f"shape:{i}"] = (lambda s=s: model_graph(arch, s, sizes, opts.dtype))
    sessions = _load_all(backend, builders, sizes, arch.vocab, progress, opts.precision)
    try:
        samples = _time(sessions, protocol, progress)
        samples["dense_recheck"] = recheck(sessions["dense"].run_bound, protocol.recheck)
    finally:
        _close(sessions)
    st = table.statistic
    stats = {k: stats_of(v) for k, v in samples.items()}
    dense = stats["dense"]
    results = []
    for i, s in enumerate(shapes):
        m = stats[f"shape:{i}"]
        results.append(CheckResult(s, table.predict(s), m, table.speedup(s), dense.get(st) / m.get(st)))
    return CheckReport(tuple(results), dense, stats["dense_recheck"], st)


def random_shapes(arch: ArchSpec, n: int, seed: int = 0, p_rank: float = 0.0) -> list[ModelShape]:
    rng = np.random.default_rng(seed)
    return [random_shape(arch, rng, p_rank=p_rank) for _ in range(n)]
