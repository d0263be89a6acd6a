"""One pruning run -> a family of models, one per speedup target, all judged by the same latency table.

Methods: ``ziplm`` (structured OBS database + DP search + OBS reconstruction), ``magnitude`` (the same
DP over magnitude-ranked levels, no reconstruction), ``uniform`` (the same width in every layer,
magnitude selection), ``layerchop`` (whole layers removed), ``flop`` (every FFN Linear factorised and
pruned to a rank by FLOP's L0 gates, trained on the calibration windows towards the parameter sparsity
the table predicts for the target; needs a table with low-rank entries, ``profile --rank-step``). Every
model's predicted latency comes from the same table, so methods compare at equal predicted speed. A
method is one ``Method`` in ``METHOD_REGISTRY``: what it checks before any work, and how it solves a
``Run`` into one ``Candidate`` per target.

With workload tables (``prune --workload-tables``) the latency is a workload's end-to-end time, time to
first token or decode time per token (``--budget``; ``search.LatencyModel``): targets are speedups of
that metric, and the family file and each member's manifest record the workload, the budget and the
predicted TTFT / ms per token / tokens/s / end-to-end with their speedups.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from ..core.arch import SHAPE_CONFIG_KEY, arch_from_dir, read_model_config
from ..core.checks import check_output_path, integer, mapping, number, sweep_temporaries, typed
from ..core.errors import UserError
from ..core.fingerprint import DeviceFingerprint
from ..core.jsonio import atomic_write_json, check_header, read_json
from ..core.manifest import MANIFEST_FILE, ModelManifest, new_manifest
from ..core.shape import VOCAB_CONFIG_KEY, ModelShape, VocabTrim
from ..core.table import LatencyTable
from ..core.workload import Workload

if TYPE_CHECKING:
    from .search import LatencyModel

METHODS = ("ziplm", "magnitude", "uniform", "layerchop", "flop")  # METHOD_REGISTRY has one entry each
COSTS = ("sensitivity", "obs")  # measured end-to-end KL per module level (prune/sensitivity.py) | OBS layer loss
# how ZipLM prunes GQA attention: query heads within the kept KV groups too, or whole KV groups only
ATTENTION_LEVELS = ("heads-in-groups", "whole-groups")
FAMILY_FORMAT = "ziplm-deploy/family"
FAMILY_FILE = "family.json"


@dataclass(frozen=True)
class PruneConfig:
    method: str = "ziplm"
    targets: tuple[float, ...] = (1.5, 2.0, 3.0)
    seq_len: int = 128
    windows: int = 64
    seed: int = 0
    ffn_step: int | None = None  # FFN level grid step; default: width // 32
    damp: float = 0.01
    loss: str = "relative"  # per-module OBS loss normalised by the module's output energy, or "absolute"
    uniform: bool = False  # ziplm: same level in every layer (runtimes that reject per-layer shapes)
    buckets: int = 10000
    layerchop_rule: str = "influence"
    layerchop_indices: tuple[int, ...] = ()
    evaluate: bool = True  # calibration perplexity of each produced decoder
    device: str = "cpu"  # "cuda": Hessians block by block and the OBS database on the accelerator
    spdy_samples: int = 0  # ziplm: > 0 runs SPDY's randomised per-layer loss coefficients, scored by calibration loss
    cost: str = "sensitivity"  # ziplm: what the search minimises: measured end-to-end sensitivity, or the OBS loss
    probe_windows: int = 2  # ziplm --cost sensitivity: calibration windows each probe is scored on (2, 4, 8 within noise)
    attention_levels: str = "heads-in-groups"  # ziplm, GQA: query heads within kept KV groups, or whole KV groups only
    flop_steps: int | None = None  # flop: training steps per target (default 200; other methods: None)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}", f"choose one of: {', '.join(METHODS)}")
        if not self.targets or any(not _finite(t) or t < 1.0 for t in self.targets):
            raise UserError(f"speedup targets must be finite numbers >= 1, got {list(self.targets)}",
                            "pass targets such as 1.5 2 3")
        if self.ffn_step is not None and (isinstance(self.ffn_step, bool) or self.ffn_step < 1):
            raise UserError(f"the FFN step must be a positive integer, got {self.ffn_step!r}", "omit it for width // 32")
        if not _finite(self.damp) or self.damp < 0 or self.spdy_samples < 0 or self.buckets < 1:
            raise UserError(f"damp must be a finite number >= 0 (got {self.damp!r}), spdy_samples >= 0 "
                            f"(got {self.spdy_samples!r}) and buckets >= 1 (got {self.buckets!r})")
        if self.loss not in ("relative", "absolute"):
            raise UserError(f"unknown loss {self.loss!r}", "choose relative or absolute")
        if self.cost not in COSTS:
            raise UserError(f"unknown search cost {self.cost!r}", f"choose one of: {', '.join(COSTS)}")
        if self.attention_levels not in ATTENTION_LEVELS:
            raise UserError(f"unknown attention levels {self.attention_levels!r}",
                            f"choose one of: {', '.join(ATTENTION_LEVELS)}")
        if isinstance(self.probe_windows, bool) or not isinstance(self.probe_windows, int) or self.probe_windows < 1:
            raise UserError(f"probe_windows must be a positive integer, got {self.probe_windows!r}")
        if self.windows < 1 or self.seq_len < 8:
            raise UserError("need at least 1 calibration window of at least 8 tokens")
        if self.flop_steps is not None and (isinstance(self.flop_steps, bool) or not isinstance(self.flop_steps, int)
                                            or self.flop_steps < 1):
            raise UserError(f"flop_steps must be a positive integer, got {self.flop_steps!r}")
        trains = METHOD_REGISTRY[self.method].factorises
        if self.flop_steps is not None and not trains:
            raise UserError(f"flop_steps is for --method flop, not {self.method}", "drop --flop-steps")
        if trains and self.flop_steps is None:
            object.__setattr__(self, "flop_steps", 200)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class MemberRecord:
    """One target of a family: whether it was reached, the model's path, predicted latency and shape.
    One-shot families (``FamilyMember``) and gradual stages (``distill.gradual.Stage``) extend it."""

    target: float
    reachable: bool
    max_speedup: float
    path: str | None = None
    predicted_ms: float = 0.0
    predicted_speedup: float = 0.0
    search_loss: float = 0.0
    shape: dict[str, Any] | None = None


@dataclass
class FamilyMember(MemberRecord):
    calibration_ppl: float | None = None
    workload_prediction: dict[str, Any] | None = None  # workload searches: ``workload_record`` of the shape


WORKLOAD_SPEEDUPS = ("ttft", "decode", "e2e")
_PREDICTION_MS = ("ttft_ms", "ms_per_token", "tokens_per_s", "e2e_ms")  # ms_per_token, tokens_per_s: null without decode


def workload_record(latency: LatencyModel, shape: ModelShape) -> dict[str, Any] | None:
    """Predicted TTFT, ms/token, tokens/s and end-to-end of ``shape`` under the latency model's workload, with
    their speedups over the baseline (the dense model; for quantized tables the fp32 dense model timed in
    each table's run); None for a plain table."""
    from .search import LatencyModel

    if latency.tables is None:
        return None
    pred = latency.tables.predict(shape)
    speedup = {}
    for metric, value in (("ttft", pred.ttft_ms), ("decode", pred.ms_per_token), ("e2e", pred.e2e_ms)):
        base = LatencyModel.of_workload(latency.tables, metric).baseline_ms() if value is not None else None
        speedup[metric] = None if value is None else round(base / value, 4)
    return {**pred.to_json(), "speedup": speedup}


def _workload_record_from_json(d: Any, source: str, key: str) -> dict[str, Any]:
    d = mapping(d, source, key)
    _known_keys(d, {*_PREDICTION_MS, "decode_steps", "speedup"}, source, key)
    for name in (*_PREDICTION_MS, "decode_steps", "speedup"):
        if name not in d:
            raise UserError(f"{source}: {key}.{name} is missing", "regenerate the family with `ziplm-deploy prune`")
    steps = integer(d["decode_steps"], source, f"{key}.decode_steps", lo=0)
    sp = mapping(d["speedup"], source, f"{key}.speedup")
    _known_keys(sp, set(WORKLOAD_SPEEDUPS), source, f"{key}.speedup")
    values = [(name, d[name], f"{key}.{name}", name in ("ttft_ms", "e2e_ms"), False) for name in _PREDICTION_MS]
    for name in WORKLOAD_SPEEDUPS:
        if name not in sp:
            raise UserError(f"{source}: {key}.speedup.{name} is missing", "regenerate the family with `ziplm-deploy prune`")
        values.append((name, sp[name], f"{key}.speedup.{name}", name != "decode", True))
    for name, value, path, always, ratio in values:
        if always or steps:  # per-token figures exist only with decode steps
            number(value, source, path, lo=0.0, lo_open=ratio)
        elif value is not None:
            raise UserError(f"{source}: {path} must be null: the workload has no decode step",
                            "regenerate the family with `ziplm-deploy prune`")
    return d


def _budget_from_json(value: Any, source: str) -> str | None:
    from .search import BUDGETS

    if value is not None and value not in BUDGETS:
        raise UserError(f"{source}: budget is {value!r}, not one of {', '.join(BUDGETS)} (or null: one latency table)",
                        "regenerate the family with `ziplm-deploy prune`")
    return value


@dataclass
class FamilyReport:
    method: str
    model: str
    table_sha256: str
    fingerprint: dict[str, Any]
    config: dict[str, Any]
    members: list[FamilyMember] = field(default_factory=list)
    dense_predicted_ms: float = 0.0
    seconds: float = 0.0
    precision: str = "fp32"  # the table's: members are deployed so (export reads it from their manifest)
    baseline_ms: float = 0.0  # what targets are speedups over: the fp32 dense model (0: dense_predicted_ms)
    # workload searches (prune --workload-tables); null for a plain table. The *_ms fields above and the members'
    # predicted_ms / predicted_speedup are then the budgeted metric's (e2e ms, TTFT ms or ms per token)
    workload: dict[str, Any] | None = None  # {"prompt", "generate", "batch"}
    budget: str | None = None  # "e2e" | "ttft" | "decode"
    dense_workload_prediction: dict[str, Any] | None = None  # ``workload_record`` of the dense shape

    def to_json(self) -> dict[str, Any]:
        return {"format": FAMILY_FORMAT, "version": 1, **asdict(self)}

    @staticmethod
    def from_json(payload: Any, source: str) -> "FamilyReport":
        """A family file with every field checked; errors name the file and the key path."""
        check_header(payload, FAMILY_FORMAT, (1,), source)
        _known_keys(payload, {f.name for f in fields(FamilyReport)} | {"format", "version"}, source, "")
        for key in ("method", "model", "table_sha256"):
            typed(payload.get(key), str, source, key, "a string")
        members = typed(payload.get("members"), list, source, "members", "a list of member objects")
        workload, budget = payload.get("workload"), _budget_from_json(payload.get("budget"), source)
        if workload is not None:
            Workload.from_json(workload, source)
        dense_pred = payload.get("dense_workload_prediction")
        if dense_pred is not None:
            _workload_record_from_json(dense_pred, source, "dense_workload_prediction")
        if (workload is None) != (budget is None):
            raise UserError(f"{source}: workload and budget go together (one is null, the other is not)",
                            "regenerate the family with `ziplm-deploy prune`")
        return FamilyReport(
            payload["method"], payload["model"], payload["table_sha256"],
            DeviceFingerprint.from_json(payload.get("fingerprint"), source).to_json(),
            mapping(payload.get("config"), source, "config"),
            [member_from_json(m, source, f"members[{i}]") for i, m in enumerate(members)],
            number(payload.get("dense_predicted_ms", 0.0), source, "dense_predicted_ms", lo=0.0),
            number(payload.get("seconds", 0.0), source, "seconds", lo=0.0),
            _precision_label(payload.get("precision", "fp32"), source),
            number(payload.get("baseline_ms", 0.0), source, "baseline_ms", lo=0.0),
            workload, budget, dense_pred)

    @staticmethod
    def load(path: str | os.PathLike) -> "FamilyReport":
        return FamilyReport.from_json(read_json(path, "family file"), str(path))


def _precision_label(value: Any, source: str) -> str:
    from ..core.fingerprint import is_precision_label

    if not is_precision_label(value):
        raise UserError(f"{source}: precision is {value!r}, not a precision label (fp32, int8-dynamic, ...)",
                        "regenerate the family with `ziplm-deploy prune`")
    return value


def _known_keys(d: dict[str, Any], known: set[str], source: str, key: str) -> None:
    unknown = sorted(set(d) - known)
    if unknown:
        raise UserError(f"{source}: {key + '.' if key else ''}{unknown[0]} is not a known key",
                        f"allowed: {', '.join(sorted(known))}")


def member_from_json(d: Any, source: str, key: str) -> FamilyMember:
    d = mapping(d, source, key)
    _known_keys(d, {f.name for f in fields(FamilyMember)}, source, key)
    for name in ("target", "reachable", "max_speedup"):
        if name not in d:
            raise UserError(f"{source}: {key}.{name} is missing", "regenerate the family with `ziplm-deploy prune`")

    def opt_number(name: str, lo: float | None = 0.0) -> float | None:
        v = d.get(name)
        return None if v is None else number(v, source, f"{key}.{name}", lo=lo)

    shape = d.get("shape")
    if shape is not None:
        ModelShape.from_json(shape, f"{source}: {key}.shape")
    path = d.get("path")
    if path is not None:
        typed(path, str, source, f"{key}.path", "a string or null")
    prediction = d.get("workload_prediction")
    if prediction is not None:
        _workload_record_from_json(prediction, source, f"{key}.workload_prediction")
    return FamilyMember(
        number(d["target"], source, f"{key}.target", lo=1.0), typed(d["reachable"], bool, source, f"{key}.reachable",
                                                                    "true or false"),
        number(d["max_speedup"], source, f"{key}.max_speedup", lo=0.0), path,
        opt_number("predicted_ms") or 0.0, opt_number("predicted_speedup") or 0.0,
        opt_number("search_loss", lo=None) or 0.0, shape, opt_number("calibration_ppl"), prediction)


def _member_dir(out: Path, method: str, target: float) -> Path:
    return out / f"{method}-{target:g}x"


def _manifest_options(config: PruneConfig, latency: LatencyModel, calib: str | os.PathLike) -> dict[str, Any]:
    """A member manifest's options: the run configuration with its calibration data (a builtin name, or the
    file's absolute path: ``verify`` measures quality on the windows the run did not calibrate on), and for a
    workload search its workload and budget."""
    from .data import BUILTIN_TEXTS

    options = asdict(config)
    if options["flop_steps"] is None:  # as manifests were before flop was a method (their members are reused)
        del options["flop_steps"]
    options["data"] = str(calib) if str(calib) in BUILTIN_TEXTS else str(Path(calib).resolve())
    if latency.tables is not None:
        options.update(workload=latency.tables.workload.to_json(), budget=latency.metric)
    return options


def _finished_member(path: Path, options: dict[str, Any], table_sha: str,
                     shape: dict[str, Any]) -> dict[str, Any] | None:
    """The metrics of a model this exact run configuration already saved at ``path``, else None (no
    manifest, or one that does not load: the model is built again)."""
    try:
        m = ModelManifest.load(path / MANIFEST_FILE)
    except UserError:
        return None
    same = m.options == json.loads(json.dumps(options)) and m.table_sha256 == table_sha
    return m.metrics if same and m.shape == shape else None


def prune_family(model_dir: str | os.PathLike, table: LatencyTable | LatencyModel, table_path: str | os.PathLike,
                 calib: str | os.PathLike, config: PruneConfig, out: str | os.PathLike,
                 log: Callable[[str], None] = print, progress: bool = True) -> FamilyReport:
    """``table``: a ``LatencyTable`` or a ``search.LatencyModel`` (e.g. a workload's e2e / TTFT / decode time);
    ``table_path``: its file (a table, or a workload manifest or its folder), hashed into the records."""
    import time

    import torch

    from ..core.manifest import file_sha256
    from ..models import load_model
    from .search import as_latency_model

    started = time.perf_counter()
    latency = as_latency_model(table)
    table_path = Path(table_path)
    if table_path.is_dir():  # a workload folder: its manifest pins every table's sha256
        table_path = table_path / "workload.json"
    out = check_output_path(out, "prune output folder", directory=True)
    arch, tokenizer, windows, latency = _check_inputs(model_dir, latency, calib, config, log)
    METHOD_REGISTRY[config.method].check(latency)
    for stale in sweep_temporaries(out):  # what a killed run was writing (a half-saved model, a JSON)
        log(f"removed the temporary {stale} of an interrupted run")
    dense = load_model(model_dir)
    if ModelShape.from_model(dense).has_ranks:
        raise UserError(f"{model_dir} has FLOP-factorised FFN Linears; pruning works on unfactorised models",
                        "prune first, then run flop on the pruned model")
    torch.manual_seed(config.seed)

    baseline_ms, dense_ms = latency.baseline_ms(), latency.dense_ms()
    quant_speedup = baseline_ms / dense_ms  # 1 for an fp32 table
    workload = latency.tables.workload if latency.tables is not None else None
    options = _manifest_options(config, latency, calib)
    report = FamilyReport(config.method, str(model_dir), file_sha256(table_path), latency.fingerprint.to_json(),
                          asdict(config), dense_predicted_ms=dense_ms, precision=latency.precision,
                          baseline_ms=round(baseline_ms, 4), workload=workload.to_json() if workload else None,
                          budget=latency.metric if workload else None,
                          dense_workload_prediction=workload_record(latency, latency.dense_shape()))
    _log_targets(latency, log)
    # the search works in the table's own terms: speedups over its (quantized) dense model
    relative = tuple(max(1.0, t / quant_speedup) for t in config.targets)
    run = Run(config, relative, dense, latency, windows, model_dir, out, log, progress)
    for target, c in zip(config.targets, METHOD_REGISTRY[config.method].solve(run)):
        member = FamilyMember(target, c.reachable, round(c.max_speedup * quant_speedup, 4))
        if c.reachable:
            _produce_member(run, report, member, c, baseline_ms, tokenizer, options, arch.is_decoder)
        else:
            log(f"  target {target:g}x: " + (c.why or f"unreachable with {config.method} (max predicted speedup "
                                                       f"{member.max_speedup:.2f}x)"))
        report.members.append(member)
    report.seconds = round(time.perf_counter() - started, 1)
    atomic_write_json(out / f"family-{config.method}.json", report.to_json())
    return report


def _produce_member(run: Run, report: FamilyReport, member: FamilyMember, c: Candidate, baseline_ms: float,
                    tokenizer: Any, options: dict[str, Any], is_decoder: bool) -> None:
    """Fill ``member``'s prediction and save its model (or reuse the one an interrupted run saved)."""
    latency, config, target = run.latency, run.config, member.target
    shape = c.shape if latency.vocab is None else replace(c.shape, vocab=latency.vocab)
    member.predicted_ms, member.predicted_speedup = round(c.predicted_ms, 4), round(baseline_ms / c.predicted_ms, 4)
    member.search_loss, member.shape = c.loss, shape.to_json()
    member.workload_prediction = workload_record(latency, shape)
    path = _member_dir(run.out, config.method, target)
    done = _finished_member(path, options, report.table_sha256, member.shape)
    if done is not None:  # an earlier, interrupted run already produced this model
        member.path, member.calibration_ppl = str(path), done.get("calibration_ppl")
        run.log(f"  target {target:g}x: reusing {path}")
        return
    model = c.build()
    if config.evaluate and is_decoder:
        from .evaluate import perplexity

        member.calibration_ppl = round(perplexity(model, run.windows, progress=False), 4)
    manifest = _member_manifest(report, member, run.model_dir, options)
    from ..models import save_model

    save_model(model, path, tokenizer=tokenizer, overwrite=True,
               extra_files={MANIFEST_FILE: json.dumps(manifest.to_json(), indent=2) + "\n"})
    member.path = str(path)
    run.log(f"  target {target:g}x: predicted {member.predicted_speedup:.2f}x ({member.predicted_ms:.2f} ms)"
            + _workload_words(member.workload_prediction)
            + (f", {_unpruned_words(report.precision, latency.vocab)} alone (nothing pruned)"
               if shape == latency.dense_shape() else "")
            + (f", calibration ppl {member.calibration_ppl:.2f}" if member.calibration_ppl is not None else "")
            + f" -> {path}")


def _unpruned_words(precision: str, vocab: int | None) -> str:
    """What makes an unpruned member faster than the fp32 dense model: quantization and/or a trimmed head."""
    parts = ([f"quantization ({precision})"] if precision != "fp32" else []) + (
        [f"the LM head trimmed to {vocab:,} tokens"] if vocab is not None else [])
    return " and ".join(parts) or "the dense model"


def _workload_metrics(record: dict[str, Any] | None) -> dict[str, float | None]:
    """A member's workload prediction as manifest metrics (numbers): ``predicted_ttft_ms``, ...,
    ``predicted_e2e_speedup``."""
    if record is None:
        return {}
    return {**{f"predicted_{k}": record[k] for k in _PREDICTION_MS},
            **{f"predicted_{k}_speedup": v for k, v in record["speedup"].items()}}


def _log_targets(latency: LatencyModel, log) -> None:
    """Say what the targets are speedups of: a workload's metric, and over the fp32 dense model for a quantized
    table (quantization alone is then a speedup already)."""
    dense_ms, baseline_ms = latency.dense_ms(), latency.baseline_ms()
    if latency.tables is not None:
        log(f"workload {latency.tables.workload.describe()}: targets are speedups of the {latency.words} "
            f"(dense {dense_ms:.3f} ms{' per token' if latency.metric == 'decode' else ''})")
    if latency.precision != "fp32":
        log(f"{latency.precision} table: targets are total speedups over the fp32 dense model "
            f"({baseline_ms:.2f} ms); quantization alone gives {baseline_ms / dense_ms:.2f}x (predicted), so pruning "
            f"makes up the rest; a target at or below it is the dense model, quantized")


def _member_manifest(report: FamilyReport, member: FamilyMember, model_dir, options: dict[str, Any]) -> ModelManifest:
    """The manifest saved with a member: its shape, the run's options, predictions and calibration perplexity."""
    return new_manifest(report.method, model_dir, member.shape, options=options, metrics={
        "target_speedup": member.target, "predicted_ms": member.predicted_ms,
        "predicted_speedup": member.predicted_speedup, "dense_predicted_ms": report.dense_predicted_ms,
        "baseline_ms": report.baseline_ms, "search_loss": member.search_loss,
        **({"calibration_ppl": member.calibration_ppl} if member.calibration_ppl is not None else {}),
        **_workload_metrics(member.workload_prediction),
    }, table_sha256=report.table_sha256, fingerprint=report.fingerprint)


def _check_inputs(model_dir, latency: LatencyModel, calib, config: PruneConfig,
                  log) -> tuple[Any, Any, Any, LatencyModel]:
    """(arch, tokenizer, calibration windows, latency model) of a dense model the table describes (with its
    trimmed LM head's time when trim-vocab trimmed it); refuses, before any model is loaded, a pruned model,
    another architecture, a trimmed one the table cannot time, missing tokenizer files or unusable data."""
    from ..models.tokenizer import load_tokenizer
    from .data import calibration_windows

    raw = read_model_config(model_dir)
    if raw.get(SHAPE_CONFIG_KEY):
        raise UserError(f"{model_dir} is already pruned", "prune the dense model; the table describes it")
    arch = arch_from_dir(model_dir)
    latency.check_arch(arch, source=str(model_dir))
    if raw.get(VOCAB_CONFIG_KEY) is not None:  # trim-vocab ran first: the search budgets with its head's time
        kept = len(VocabTrim.from_json(raw[VOCAB_CONFIG_KEY], f"{model_dir}/config.json: {VOCAB_CONFIG_KEY}").kept)
        latency = latency.with_vocab(kept)
        log(f"{model_dir}: LM head trimmed to {kept:,} of {arch.vocab:,} output tokens; targets are total "
            f"speedups over the untrimmed dense model (the unpruned trimmed model: "
            f"{latency.baseline_ms() / latency.dense_ms():.2f}x)")
    tokenizer = load_tokenizer(model_dir)
    if tokenizer is None:
        raise UserError(f"{model_dir} has no tokenizer files", "save the tokenizer into the model directory")
    windows = calibration_windows(tokenizer, calib, config.seq_len, config.windows, config.seed)
    log(f"calibration: {len(windows)} windows of {config.seq_len} tokens from {calib}")
    return arch, tokenizer, windows, latency


def _workload_words(record: dict[str, Any] | None) -> str:
    if record is None:
        return ""
    sp = record["speedup"]
    return (f" [TTFT {sp['ttft']:.2f}x" + (f", decode {sp['decode']:.2f}x" if sp["decode"] is not None else "")
            + f", end-to-end {sp['e2e']:.2f}x]")


@dataclass(frozen=True)
class Candidate:
    """One target's search outcome, before its model is built: what a pruning method returns per target
    (speedups and times in the latency model's own terms)."""

    target: float
    reachable: bool
    max_speedup: float
    shape: ModelShape | None = None
    predicted_ms: float = 0.0
    loss: float = 0.0  # what the method minimised (search loss; LayerChop: layers dropped; FLOP: final LM loss)
    build: Callable[[], Any] | None = None  # the pruned model (a fresh copy of the dense one; FLOP: the trained one)
    why: str = ""  # an unreachable target's reason, when it is not the maximum speedup


@dataclass(frozen=True)
class Run:
    """What every pruning method is given."""

    config: PruneConfig
    targets: tuple[float, ...]
    dense: Any  # the dense torch model
    latency: LatencyModel
    windows: Any  # calibration token windows
    model_dir: Path
    out: Path
    log: Callable[[str], None]
    progress: bool


def _solve_layerchop(run: Run) -> list[Candidate]:
    from .layerchop import block_influence, chop_for_target, drop_order

    config, table = run.config, run.latency
    influence = block_influence(run.dense, run.windows) if config.layerchop_rule == "influence" else None
    order = drop_order(config.layerchop_rule, table.arch.num_layers, influence, config.layerchop_indices)
    dense_ms = table.predict(table.dense_shape())
    max_sp = dense_ms / table.predict(_chop_all_but_one(table, order))
    out = []
    for t in run.targets:
        shape = chop_for_target(table, order, t)
        out.append(Candidate(t, False, max_sp) if shape is None else
                   Candidate(t, True, max_sp, shape, table.predict(shape), float(sum(s.dropped for s in shape.layers)),
                             _builder(run.dense, shape)))
    return out


def _solve_ziplm(run: Run) -> list[Candidate]:
    """OBS database, measured-sensitivity (or OBS-loss) costs, the DP (and SPDY), stitched with OBS weights."""
    import copy

    from .search import search
    from .stitch import stitch

    config = run.config
    db, hessians = _database(run.dense, run.windows, config, run.model_dir, run.out, run.log, run.progress)
    costs = None
    if config.cost == "sensitivity":
        costs = _sensitivity_costs(run.dense, db, hessians, run.windows, config, run.out, run.log, run.progress)
    results = search(db, run.latency, run.targets, loss=config.loss, uniform=config.uniform, buckets=config.buckets,
                     costs=costs)
    if config.spdy_samples > 0 and not config.uniform:
        from .spdy import spdy_search

        results = [spdy_search(run.dense, db, hessians, run.latency, r, run.windows, config, run.log, costs=costs)
                   if r.reachable else r for r in results]

    def builder(levels):
        return lambda: stitch(copy.deepcopy(run.dense), db, hessians, levels)

    return [Candidate(r.target, r.reachable, r.max_speedup, r.shape, r.predicted_ms, r.loss, builder(r.levels))
            if r.reachable else Candidate(r.target, False, r.max_speedup) for r in results]


def _solve_magnitude(run: Run) -> list[Candidate]:
    """Magnitude-ranked levels through the same search (``uniform``: the same level in every layer)."""
    from .search import search

    config = run.config
    results = search(_magnitude_database(run.dense, config), run.latency, run.targets, loss=config.loss,
                     uniform=config.uniform or config.method == "uniform", buckets=config.buckets)
    return [Candidate(r.target, True, r.max_speedup, r.shape, r.predicted_ms, r.loss, _builder(run.dense, r.shape))
            if r.reachable else Candidate(r.target, False, r.max_speedup) for r in results]


def _solve_flop(run: Run) -> Iterator[Candidate]:
    """FLOP aimed at each target: the FFN parameter sparsity the table predicts for it (``distill.flop.
    sparsity_for_speedup``), then FLOP trained towards it on the calibration windows. Trained here, not in
    ``build`` (the member's ranks are known only after training), one target at a time (each member is saved
    before the next trains). FLOP's penalty budgets parameters, not time: a member predicted slower than its
    target is reported as not reached, with what it reached."""
    import copy

    from tqdm import tqdm

    from ..distill.flop import FlopConfig, flop_prune, sparsity_for_speedup
    from ..models import adapter_for

    config, latency = run.config, run.latency
    roles = tuple(adapter_for(run.dense).ffn_linear_paths)
    dense_ms = latency.predict(latency.dense_shape())
    for asked, t in zip(config.targets, run.targets):
        sparsity, most = sparsity_for_speedup(latency, roles, t)
        if sparsity is None or t <= 1.0:  # out of reach, or the table's own dense model (quantized) already meets it
            yield (Candidate(t, False, most) if sparsity is None else
                   Candidate(t, True, most, latency.dense_shape(), dense_ms, 0.0, _builder(run.dense, latency.dense_shape())))
            continue
        run.log(f"  target {asked:g}x: FLOP towards {sparsity:.1%} FFN parameter sparsity ({config.flop_steps} steps)")
        model = copy.deepcopy(run.dense)
        with tqdm(total=config.flop_steps, desc=f"flop {asked:g}x", unit="step", leave=False,
                  disable=not run.progress) as bar:
            result = flop_prune(model, run.windows, FlopConfig(target=sparsity, steps=config.flop_steps,
                                                               seed=config.seed), log=lambda row: bar.update(1))
        model.eval().requires_grad_(False)
        model.zero_grad(set_to_none=True)
        shape = adapter_for(model).shape_of(model)
        predicted = latency.predict(shape)
        if dense_ms / predicted < t * 0.995:
            yield Candidate(t, False, most, why=f"FLOP reached {result.sparsity(model):.1%} FFN parameter sparsity of "
                            f"the {sparsity:.1%} it aimed at, predicted {dense_ms / predicted:.3f}x of the table's "
                            f"{t:.3f}x: not saved (train longer: --flop-steps)")
            continue
        recent = [row["task"] for row in result.history[-10:]]
        yield Candidate(t, True, most, shape, predicted, sum(recent) / len(recent), lambda model=model: model)


def _needs_nothing(latency: LatencyModel) -> None:
    """Every table predicts what the block-pruning methods produce."""


def _check_flop(latency: LatencyModel) -> None:
    """FLOP trains a causal LM and its members have factorised FFN Linears: refused before work for an encoder,
    or when a table (every table of a workload: the member's record predicts them all) has no low-rank entries of
    either direction."""
    if not latency.arch.is_decoder:
        raise UserError(f"flop trains with the causal LM loss, and a {latency.arch.family} model is not a decoder",
                        "use another --method")
    tables = [t for _, t in latency.terms] if latency.tables is None else [latency.tables.prefill,
                                                                          *latency.tables.decode]
    for table in tables:
        table.check_predicts_ranks(latency.dense_shape())
        for kind in ("in", "out"):
            table.lowrank_ms(kind, 1)


@dataclass(frozen=True)
class Method:
    """A pruning method as ``prune_family`` runs it: ``check`` refuses, before any model is loaded, a latency model
    it cannot use; ``solve`` turns a ``Run`` into one ``Candidate`` per target."""

    solve: Callable[[Run], Iterable[Candidate]]
    check: Callable[[LatencyModel], None] = _needs_nothing
    factorises: bool = False  # its members have low-rank FFN Linears: a measured table needs --rank-step


# every pruning method, by name: the CLI's --method and pipeline files' prune.method accept exactly these
METHOD_REGISTRY: dict[str, Method] = {
    "ziplm": Method(_solve_ziplm), "magnitude": Method(_solve_magnitude), "uniform": Method(_solve_magnitude),
    "layerchop": Method(_solve_layerchop), "flop": Method(_solve_flop, _check_flop, factorises=True),
}


def _builder(dense, shape: ModelShape):
    import copy

    from ..models import apply_shape

    return lambda: apply_shape(copy.deepcopy(dense), shape)


def _chop_all_but_one(table: LatencyModel, order) -> ModelShape:
    from ..core.shape import LayerShape

    layers = list(table.dense_shape().layers)
    for i in list(order)[: table.arch.num_layers - 1]:
        layers[i] = LayerShape(dropped=True)
    return ModelShape(tuple(layers))


def _ffn_step(config: PruneConfig, width: int) -> int:
    return config.ffn_step or max(1, width // 32)


def _database(dense, windows, config: PruneConfig, model_dir, out: Path, log, progress):
    from ..models import adapter_for
    from .database import build_database, database_key, live_kv_heads, load_database, save_database, token_hash
    from .hessian import collect_hessians

    adapter = adapter_for(dense)
    arch = adapter.arch(dense)
    calibration = {"windows": len(windows), "seq_len": config.seq_len, "seed": config.seed,
                   "tokens_sha256": token_hash(windows)}
    key = database_key(read_model_config(model_dir), calibration, _ffn_step(config, arch.ffn), config.damp,
                       config.attention_levels)
    folder = out / "database" / key
    sweep_temporaries(folder)  # a Hessians file a killed run was writing
    if (folder / "database.json").is_file():
        log(f"reusing OBS database {folder}")
        return load_database(folder)
    log(f"collecting Hessians on calibration data ({config.device})")
    if config.device == "cpu":
        hessians = collect_hessians(dense, windows, progress=progress)
    else:
        from .hessian import collect_hessians_sequential

        hessians = collect_hessians_sequential(dense, windows, device=config.device, progress=progress)

    def on_device(t):
        return None if t is None else t.detach().to(config.device)

    weights = [(on_device(adapter.attn_out_weight(layer)), on_device(adapter.ffn_out_weight(layer)))
               for layer in adapter.layers(dense)]
    dev_hessians = [type(h)(on_device(h.attn), on_device(h.ffn), h.tokens) for h in hessians]
    db = build_database(weights, dev_hessians, arch, _ffn_step(config, arch.ffn), config.damp, calibration,
                        progress=progress, kv_heads=live_kv_heads(adapter, dense, arch),
                        attention=config.attention_levels)
    save_database(db, hessians, folder)
    return db, hessians


def _sensitivity_costs(dense, db, hessians, windows, config: PruneConfig, out: Path, log, progress):
    """Measured end-to-end sensitivity of every module level, cached beside the OBS database it probes."""
    from .sensitivity import load_probes, measure_probes, probes_key, save_probes, sensitivity_costs

    n = min(config.probe_windows, len(windows))
    key = probes_key(db, windows[:n])
    cache = out / "database" / f"probes-{key}.json"  # next to the database folders (keyed by model and data)
    probes = load_probes(cache, db) if cache.is_file() else None
    if probes is None:
        log(f"measuring the end-to-end sensitivity of every module level on {n} calibration windows")
        probes = measure_probes(dense, db, hessians, windows[:n], progress=progress)
        save_probes(cache, probes)
    else:
        log(f"reusing sensitivity probes {cache}")
    return sensitivity_costs(db, probes)


def _magnitude_database(dense, config: PruneConfig):
    """Levels ranked by weight magnitude: keeping the top-k units costs the fraction of magnitude removed."""
    from dataclasses import asdict as _asdict

    import torch

    from ..models import adapter_for
    from ..models.base import magnitude_scores
    from .database import Database, Level, ModuleDb, attention_unit, ffn_levels

    adapter = adapter_for(dense)
    arch = adapter.arch(dense)
    unit, unit_cols = attention_unit(arch)
    modules = []
    for i, layer in enumerate(adapter.layers(dense)):
        attn, ffn = magnitude_scores(adapter, layer, arch)
        for kind, scores, levels, u, cols in (
            ("attn", attn, None, unit, unit_cols),
            ("ffn", ffn, ffn_levels(ffn.numel(), _ffn_step(config, arch.ffn)) if ffn is not None else None, "neuron", 1),
        ):
            if scores is None:
                continue
            levels = levels if levels is not None else list(range(scores.numel(), -1, -1))
            order = torch.argsort(scores, descending=True, stable=True).tolist()
            total = float(scores.sum()) or 1.0
            lv = tuple(Level(k, tuple(sorted(order[:k])), 1 - float(scores[order[:k]].sum()) / total,
                             1 - float(scores[order[:k]].sum()) / total) for k in levels)
            modules.append(ModuleDb(i, kind, u, cols, total, lv, arch.group_size if u == "kv_group" else 1))
    return Database(_asdict(arch), tuple(modules), {"magnitude": True}, 0.0)
