"""The pipeline file: a strict schema (unknown keys and wrong types are rejected with their path).

    model: path/to/dense-model            # Hugging Face directory
    profile: {table: profiles/x.json}     # or measure: {runtime: ort-cpu, seq: 128, threads: 1, ...}
    prune: {method: ziplm, targets: [1.5, 2, 3], calib: wikipedia, windows: 32}
    # method: magnitude | uniform | layerchop | flop (FFN ranks by FLOP, flop_steps: 200; needs a table with low-rank
    # entries: profile.rank_step: 32, or a profile.table measured with --rank-step)
    # or budget a generation workload instead of the profile stage's table (no profile section then):
    # prune: {workload_tables: tables/workload.json, budget: e2e, targets: [1.5, 2]}   # budget: e2e | ttft | decode
    distill: {data: wikipedia, steps: 200}   # optional: train every pruned model (KD from the dense one)
    export: {with_past: false}
    engine: {precision: fp16, opt: 1x128}   # optional: TensorRT engines (GPU); verify then times them
    verify: {runtime: ort-cpu, threads: 1, rounds: 20}
    # with prune.workload_tables, time generation of the workload in ONNX Runtime GenAI instead of one prefill pass
    # (TTFT, ms/token, tokens/s, end to end; the target judged on prune.budget's metric; no seq/batch: the workload's)
    # verify: {generation: true, rounds: 20}
    gate: {policy: policies/demo-pass.yaml}
    report: true
"""

from __future__ import annotations

import math
import os
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from ..core.errors import UserError


@dataclass(frozen=True)
class ProfileSpec:
    table: str | None = None  # use this table instead of measuring one
    runtime: str = "ort-cpu"
    batch: int = 1
    seq: int = 128
    threads: int = 1
    opt_level: str = "all"
    ffn_step: int = 32
    rounds: int = 50
    rank_step: int | None = None  # also time FLOP-factorised FFN Linears on this rank grid (prune.method: flop)
    # the deployment precision (fp32, int8-dynamic[/recipe options]): the table is measured so, prune
    # then searches total speedups over the fp32 dense model, and members are exported and verified so
    precision: str = "fp32"

    def __post_init__(self) -> None:
        from ..core.fingerprint import is_precision_label

        if not isinstance(self.precision, str) or not is_precision_label(self.precision):
            raise UserError(f"profile.precision {self.precision!r} is not a precision label",
                            "use fp32, or int8-dynamic or int8-static with recipe options (e.g. int8-dynamic/fp32-embed)")


@dataclass(frozen=True)
class PruneSpec:
    method: str = "ziplm"
    targets: tuple[float, ...] = (1.5, 2.0, 3.0)
    calib: str = "wikipedia"
    windows: int = 32
    seq_len: int = 128
    seed: int = 0
    ffn_step: int | None = None
    damp: float = 0.01
    loss: str = "relative"
    uniform: bool = False
    spdy_samples: int = 0
    device: str = "cpu"
    cost: str = "sensitivity"  # ziplm: measured end-to-end sensitivity per module level, or "obs" (layer loss)
    probe_windows: int = 2
    attention_levels: str = "heads-in-groups"  # ziplm, GQA: query heads within kept KV groups, or "whole-groups"
    # a workload manifest (or its folder) from `profile --workload`: the search budgets its ``budget`` metric
    # (default e2e) instead of the profile stage's one-pass table
    workload_tables: str | None = None
    budget: str | None = None  # e2e | ttft | decode (with workload_tables only)
    flop_steps: int | None = None  # method flop: training steps per target (None: 200)

    def __post_init__(self) -> None:
        from ..prune.family import ATTENTION_LEVELS, COSTS, METHOD_REGISTRY, METHODS
        from ..prune.search import BUDGETS

        if self.method not in METHODS:
            raise UserError(f"prune.method {self.method!r} is unknown", f"choose one of: {', '.join(METHODS)}")
        if self.cost not in COSTS:
            raise UserError(f"prune.cost {self.cost!r} is unknown", f"choose one of: {', '.join(COSTS)}")
        if self.attention_levels not in ATTENTION_LEVELS:
            raise UserError(f"prune.attention_levels {self.attention_levels!r} is unknown",
                            f"choose one of: {', '.join(ATTENTION_LEVELS)}")
        if self.budget is not None and self.budget not in BUDGETS:
            raise UserError(f"prune.budget {self.budget!r} is unknown", f"choose one of: {', '.join(BUDGETS)}")
        if self.flop_steps is not None and not METHOD_REGISTRY[self.method].factorises:
            raise UserError(f"prune.flop_steps is for method flop, not {self.method}", "drop prune.flop_steps")
        if self.budget is not None and self.workload_tables is None:
            raise UserError("prune.budget needs prune.workload_tables (the profile stage's table has one latency)",
                            "add prune.workload_tables, or drop prune.budget")


@dataclass(frozen=True)
class DistillSpec:
    """Recovery training of every pruned model before export: KD from the dense model (logits + hidden
    states) with ``teacher: true``, plain LM continued pretraining (LayerChop's recipe) with ``false``."""

    data: str = "wikipedia"
    teacher: bool = True
    steps: int = 200
    lr: float = 5e-5
    warmup: int | None = None
    batch_size: int = 4
    grad_accum: int = 1
    seq_len: int = 128
    temperature: float = 2.0
    kd_weight: float | None = None
    hidden_weight: float | None = None
    task_weight: float | None = None
    eval_windows: int = 16
    save_every: int = 50
    mixed_precision: str = "no"
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.teacher and (self.kd_weight or self.hidden_weight):
            raise UserError("distill.kd_weight and distill.hidden_weight need distill.teacher: true",
                            "set teacher: true, or drop the KD weights")
        if self.steps < 1 or self.batch_size < 1 or self.seq_len < 2:
            raise UserError("distill needs steps >= 1, batch_size >= 1 and seq_len >= 2")


@dataclass(frozen=True)
class ExportSpec:
    with_past: bool = False
    atol: float = 1e-4
    rtol: float = 1e-3


@dataclass(frozen=True)
class EngineSpec:
    """TensorRT engines of the exported models (the tensorrt package and an NVIDIA GPU); with this
    section, verify times the engines (``verify.runtime: trt``). Shapes as for ``build-engine``."""

    precision: str = "fp16"
    opt: str = "1x128"
    min: str | None = None
    max: str | None = None
    timing_cache: str | None = None
    workspace_mb: int = 4096
    opt_level: str = "3"

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "fp16", "bf16"):
            raise UserError(f"engine.precision {self.precision!r} is not one of fp32, fp16, bf16")


@dataclass(frozen=True)
class VerifySpec:
    """``seq`` / ``batch`` of the prefill pass verify times (default 128 / 1); with ``generation`` (and
    ``prune.workload_tables``) verify times the workload's generation in ONNX Runtime GenAI instead, and the
    workload sets them (they stay None)."""

    runtime: str = "ort-cpu"
    threads: int = 1
    batch: int | None = None
    seq: int | None = None
    rounds: int = 20
    tolerance: float = 0.05
    eval_data: str | None = None
    generation: bool = False

    def __post_init__(self) -> None:
        if not self.generation:
            object.__setattr__(self, "batch", 1 if self.batch is None else self.batch)
            object.__setattr__(self, "seq", 128 if self.seq is None else self.seq)
            return
        from ..verify.generation import GENAI_PROVIDERS

        given = [k for k in ("seq", "batch") if getattr(self, k) is not None]
        if given:
            raise UserError(f"verify.{given[0]} does not go with verify.generation: the workload of "
                            "prune.workload_tables sets the prompt length and batch", f"drop verify.{given[0]}")
        if self.runtime not in GENAI_PROVIDERS:
            raise UserError(f"verify.generation times generation in ONNX Runtime GenAI; verify.runtime {self.runtime} "
                            "has no generation loop here",
                            f"set verify.runtime: {' or '.join(GENAI_PROVIDERS)}, or drop verify.generation")


@dataclass(frozen=True)
class GateSpec:
    policy: str


@dataclass(frozen=True)
class PipelineSpec:
    model: str
    prune: PruneSpec = field(default_factory=PruneSpec)
    profile: ProfileSpec = field(default_factory=ProfileSpec)
    distill: DistillSpec | None = None
    export: ExportSpec | None = field(default_factory=ExportSpec)
    engine: EngineSpec | None = None
    verify: VerifySpec | None = field(default_factory=VerifySpec)
    gate: GateSpec | None = None
    report: bool = True

    def __post_init__(self) -> None:
        if self.prune.workload_tables is not None and self.profile != ProfileSpec():
            raise UserError("prune.workload_tables replaces the profile stage's table, and this pipeline also has a "
                            "profile section", "drop the profile section, or prune.workload_tables")
        from ..prune.family import METHOD_REGISTRY

        if (METHOD_REGISTRY[self.prune.method].factorises and self.prune.workload_tables is None
                and self.profile.table is None and not self.profile.rank_step):
            raise UserError(f"prune.method {self.prune.method} factorises FFN Linears, and the profile stage measures "
                            "no low-rank entries to predict them", "set profile.rank_step: 32")
        if self.gate is not None and self.verify is None:
            raise UserError("the gate judges verify reports, and this pipeline has no verify section",
                            "add a verify section (e.g. 'verify: {}') or drop the gate")
        if self.verify is not None and self.verify.generation:
            if self.prune.workload_tables is None:
                raise UserError("verify.generation times the workload of prune.workload_tables, and this pipeline "
                                "has none", "add prune.workload_tables (from `ziplm-deploy profile --workload`), or "
                                "drop verify.generation")
            if self.engine is not None:
                raise UserError("verify.generation times generation in ONNX Runtime GenAI, not TensorRT engines",
                                "drop the engine section, or verify.generation")
        if self.engine is None:
            return
        if self.export is None:
            raise UserError("the engine section needs the export stage", "add 'export: {}' to the pipeline file")
        if self.verify is not None and self.verify.runtime != "trt":
            raise UserError(f"with engines, verify times them: 'verify.runtime' is {self.verify.runtime!r}",
                            "set verify.runtime: trt, or drop the engine section")
        if self.verify is not None and self.verify.eval_data:
            raise UserError("'verify.eval_data' measures quality of model directories, not engines",
                            "drop verify.eval_data, or the engine section")

    @staticmethod
    def load(path: str | os.PathLike) -> "PipelineSpec":
        import yaml

        path = Path(path)
        if not path.is_file():
            raise UserError(f"pipeline file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise UserError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
        spec = parse(PipelineSpec, data, str(path))
        base = path.parent  # relative paths in the file are relative to the file
        return _resolve_paths(spec, base)


def _resolve_paths(spec: PipelineSpec, base: Path) -> PipelineSpec:
    from dataclasses import replace

    def rel(p: str | None) -> str | None:
        if p is None or p in ("wikipedia",) or Path(p).is_absolute():
            return p
        return str((base / p).resolve())

    return replace(
        spec, model=rel(spec.model),
        profile=replace(spec.profile, table=rel(spec.profile.table)),
        prune=replace(spec.prune, calib=rel(spec.prune.calib), workload_tables=rel(spec.prune.workload_tables)),
        distill=replace(spec.distill, data=rel(spec.distill.data)) if spec.distill else None,
        verify=replace(spec.verify, eval_data=rel(spec.verify.eval_data)) if spec.verify else None,
        gate=replace(spec.gate, policy=rel(spec.gate.policy)) if spec.gate else None,
        engine=replace(spec.engine, timing_cache=rel(spec.engine.timing_cache)) if spec.engine else None,
    )


def parse(cls: type, data: Any, source: str, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types with their path."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: '{prefix.rstrip('.') or 'the file'}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise UserError(f"{source}: unknown key '{prefix}{unknown[0]}'", f"allowed here: {', '.join(known)}")
    values = {}
    for name, f in known.items():
        if name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise UserError(f"{source}: missing required key '{prefix}{name}'")
            continue
        values[name] = _value(hints[name], data[name], f"{prefix}{name}", source)
    return cls(**values)


def _value(tp: Any, value: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _value(args[0], value, key, source)
    if is_dataclass(tp):
        if value is False or value is None:
            return None
        return parse(tp, value, source, prefix=f"{key}.")
    if origin is tuple:
        if not isinstance(value, list) or not value:
            raise UserError(f"{source}: '{key}' must be a non-empty list, got {value!r}")
        inner = typing.get_args(tp)[0]
        return tuple(_value(inner, v, f"{key}[{i}]", source) for i, v in enumerate(value))
    checks = {float: ((int, float), "a number"), int: ((int,), "an integer"), bool: ((bool,), "true or false"),
              str: ((str,), "a string")}
    if tp not in checks:
        raise UserError(f"{source}: '{key}': unsupported type {tp}")
    allowed, words = checks[tp]
    if (isinstance(value, bool) and tp is not bool) or not isinstance(value, allowed):
        raise UserError(f"{source}: '{key}' must be {words}, got {value!r}")
    if tp in (int, float):
        _check_range(value, key, source)
    return float(value) if tp is float else value


# Lower bounds of numeric options, by key path (list indices dropped): (bound, strictly above it).
_LOWER = {
    "profile.batch": (1, False), "profile.seq": (1, False), "profile.threads": (0, False),
    "profile.ffn_step": (1, False), "profile.rounds": (1, False), "profile.rank_step": (1, False),
    "prune.targets": (1, False), "prune.windows": (1, False), "prune.seq_len": (8, False), "prune.seed": (0, False),
    "prune.ffn_step": (1, False), "prune.damp": (0, False), "prune.spdy_samples": (0, False),
    "prune.probe_windows": (1, False), "prune.flop_steps": (1, False),
    "distill.lr": (0, True), "distill.warmup": (0, False), "distill.grad_accum": (1, False),
    "distill.temperature": (0, True), "distill.kd_weight": (0, False), "distill.hidden_weight": (0, False),
    "distill.task_weight": (0, False), "distill.eval_windows": (1, False), "distill.save_every": (0, False),
    "distill.seed": (0, False),
    "export.atol": (0, False), "export.rtol": (0, False), "engine.workspace_mb": (1, False),
    "verify.threads": (0, False), "verify.batch": (1, False), "verify.seq": (1, False), "verify.rounds": (1, False),
    "verify.tolerance": (0, False),
}


def _check_range(value: float, key: str, source: str) -> None:
    """Finite, and above the option's lower bound: NaN, inf and negative counts never reach a stage."""
    if not math.isfinite(value):
        raise UserError(f"{source}: '{key}' must be a finite number, got {value!r}")
    lo, strict = _LOWER.get(key.split("[")[0], (None, False))
    if lo is not None and (value <= lo if strict else value < lo):
        raise UserError(f"{source}: '{key}' must be {'>' if strict else '>='} {lo}, got {value!r}")
