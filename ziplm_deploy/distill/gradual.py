"""Gradual ZipLM: for ascending speedup targets, prune the current model to the target (OBS database
rebuilt from the *current* model's Hessians, DP search against the dense model's latency table,
OBS stitching), distill it from the dense teacher, save it with its manifest, continue from it.

One run yields the whole family; every intermediate model is a loadable directory. A rerun with the
same output folder skips finished stages (and the trainer resumes an interrupted one).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..core.errors import UserError
from ..core.jsonio import atomic_write_json
from ..core.manifest import MANIFEST_FILE
from ..core.table import LatencyTable
from ..prune.family import ATTENTION_LEVELS, MemberRecord
from .losses import LossWeights
from .trainer import TrainConfig, save_student, train

GRADUAL_FORMAT = "ziplm-deploy/gradual"


@dataclass(frozen=True)
class GradualConfig:
    targets: tuple[float, ...] = (1.5, 2.0, 3.0)
    ffn_step: int | None = None  # FFN level grid step; default: dense width // 32
    damp: float = 0.01
    loss: str = "relative"
    buckets: int = 10000
    attention_levels: str = "heads-in-groups"  # GQA: query heads within kept KV groups, or "whole-groups"

    def __post_init__(self) -> None:
        if not self.targets or any(t < 1.0 for t in self.targets):
            raise UserError(f"speedup targets must be >= 1, got {list(self.targets)}")
        if self.attention_levels not in ATTENTION_LEVELS:
            raise UserError(f"unknown attention levels {self.attention_levels!r}",
                            f"choose one of: {', '.join(ATTENTION_LEVELS)}")
        if list(self.targets) != sorted(set(self.targets)):
            raise UserError(f"gradual targets must be distinct and ascending, got {list(self.targets)}",
                            "e.g. --targets 1.5 2 3")


@dataclass
class Stage(MemberRecord):
    oneshot_ppl: float | None = None  # held-out perplexity right after pruning
    distilled_ppl: float | None = None  # after distillation
    train_seconds: float = 0.0
    prune_seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


def stage_dir(out: str | os.PathLike, target: float) -> Path:
    return Path(out) / f"ziplm-gradual-{target:g}x"


def prune_step(model: nn.Module, table: LatencyTable, calib: torch.Tensor, target: float, config: GradualConfig,
               progress: bool = False):
    """Prune ``model`` (dense or already pruned) in place to ``target`` (speedup over the dense model
    in ``table``); returns the search result (``model`` unchanged when unreachable)."""
    from ..models import adapter_for
    from ..prune.database import build_database, live_kv_heads, token_hash
    from ..prune.hessian import collect_hessians
    from ..prune.search import search
    from ..prune.stitch import stitch

    adapter = adapter_for(model)
    arch = adapter.arch(model)
    hessians = collect_hessians(model, calib, progress=progress)
    weights = [(adapter.attn_out_weight(layer), adapter.ffn_out_weight(layer)) for layer in adapter.layers(model)]
    ffn_step = config.ffn_step or max(1, arch.ffn // 32)
    db = build_database(weights, hessians, arch, ffn_step, config.damp,
                        {"windows": len(calib), "tokens_sha256": token_hash(calib)}, progress=progress,
                        kv_heads=live_kv_heads(adapter, model, arch), attention=config.attention_levels)
    (result,) = search(db, table, [target], loss=config.loss, buckets=config.buckets)
    if result.reachable:
        stitch(model, db, hessians, result.levels)
    return result


def gradual_ziplm(dense: nn.Module, table: LatencyTable, calib: torch.Tensor, train_windows: torch.Tensor,
                  out: str | os.PathLike, config: GradualConfig, train_config: TrainConfig, weights: LossWeights,
                  eval_windows: torch.Tensor | None = None, parent: str | os.PathLike = "", tokenizer: Any = None,
                  progress: bool = True, log: Callable[[str], None] = print) -> list[Stage]:
    """Run every stage; ``dense`` is the teacher (left unchanged). Returns one ``Stage`` per target."""
    import copy

    from ..models import load_model

    _check_dense(dense, table)
    out = Path(out)
    dense.eval()
    current = copy.deepcopy(dense)
    dense_ms = table.predict(table.dense_shape())
    stages: list[Stage] = []
    for target in config.targets:
        path = stage_dir(out, target)
        if (path / MANIFEST_FILE).is_file() and (path / "stage.json").is_file():
            stage = Stage(**json.loads((path / "stage.json").read_text()))
            log(f"target {target:g}x: done earlier, continuing from {path}")
            current = load_model(path)
            stages.append(stage)
            continue
        stage = _prune_stage(current, table, calib, target, path, config, dense_ms, eval_windows, progress, log)
        if not stage.reachable:
            stages.append(stage)
            break
        res = train(current, train_windows, out / "train" / f"{target:g}x", train_config, weights, teacher=dense,
                    eval_windows=eval_windows, progress=progress, log=log)
        stage.train_seconds, stage.history = res.seconds, res.history
        if res.evals:
            stage.distilled_ppl = res.evals[-1]["ppl"]
        options = {"gradual": asdict(config), "train": asdict(train_config), "weights": asdict(weights),
                   "stage": len(stages)}
        _save_stage(current, stage, path, dense_ms, options, parent, tokenizer, log)
        stages.append(stage)
    if not _is_main():
        return stages
    atomic_write_json(out / "family-ziplm-gradual.json", {
        "format": GRADUAL_FORMAT, "version": 1, "model": str(parent), "dense_predicted_ms": round(dense_ms, 4),
        "config": asdict(config), "train": asdict(train_config), "weights": asdict(weights),
        "stages": [{k: v for k, v in asdict(s).items() if k != "history"} for s in stages]})
    return stages


def _check_dense(dense: nn.Module, table: LatencyTable) -> None:
    """``dense`` must be the untrimmed dense model that ``table`` was measured on."""
    from ..models import adapter_for

    table.check_arch(adapter_for(dense).arch(dense), source="the dense model")
    shape = adapter_for(dense).shape_of(dense)
    if shape.vocab is not None:
        raise UserError("gradual pruning of a vocabulary-trimmed model is not supported",
                        "run gradual on the untrimmed model and trim-vocab its members, or `prune` the trimmed one")
    if shape != table.dense_shape().validate(table.arch):
        raise UserError("gradual pruning starts from the dense model", "pass the unpruned model directory")


def _prune_stage(current: nn.Module, table: LatencyTable, calib: torch.Tensor, target: float, path: Path,
                 config: GradualConfig, dense_ms: float, eval_windows: torch.Tensor | None, progress: bool,
                 log: Callable[[str], None]) -> Stage:
    """Prune ``current`` in place to ``target``; its stage record (not reachable: ``current`` unchanged)."""
    from ..prune.evaluate import perplexity

    started = time.perf_counter()
    log(f"target {target:g}x: OBS database of the current model, search, stitch")
    result = prune_step(current, table, calib, target, config, progress)
    if not result.reachable:
        log(f"target {target:g}x: unreachable (max predicted speedup {result.max_speedup:.2f}x); stopping")
        return Stage(target, False, round(result.max_speedup, 4))
    stage = Stage(target, True, round(result.max_speedup, 4), str(path), round(result.predicted_ms, 4),
                  round(dense_ms / result.predicted_ms, 4), result.loss, shape=result.shape.to_json(),
                  prune_seconds=round(time.perf_counter() - started, 1))
    if eval_windows is not None:
        stage.oneshot_ppl = round(perplexity(current, eval_windows, progress=False), 4)
    log(f"target {target:g}x: predicted {stage.predicted_speedup:.2f}x"
        + (f", one-shot held-out ppl {stage.oneshot_ppl:.3f}" if stage.oneshot_ppl is not None else "")
        + "; distilling")
    return stage


def _save_stage(current: nn.Module, stage: Stage, path: Path, dense_ms: float, options: dict[str, Any],
                parent: str | os.PathLike, tokenizer: Any, log: Callable[[str], None]) -> None:
    """Save the distilled model of ``stage`` with its manifest, and ``stage.json`` (which marks it done)."""
    target = stage.target
    metrics = {"target_speedup": target, "predicted_ms": stage.predicted_ms,
               "predicted_speedup": stage.predicted_speedup, "dense_predicted_ms": round(dense_ms, 4),
               "search_loss": stage.search_loss}
    for key in ("oneshot_ppl", "distilled_ppl"):
        if getattr(stage, key) is not None:
            metrics[f"heldout_{key}"] = getattr(stage, key)
    save_student(current, path, parent=parent, method="ziplm-gradual", tokenizer=tokenizer, options=options,
                 metrics=metrics)
    if _is_main():
        atomic_write_json(path / "stage.json", asdict(stage))
    log(f"target {target:g}x: saved {path}"
        + (f" (held-out ppl {stage.oneshot_ppl:.3f} -> {stage.distilled_ppl:.3f})"
           if stage.oneshot_ppl is not None and stage.distilled_ppl is not None else ""))


def _is_main() -> bool:
    from .trainer import is_main_process

    return is_main_process()
