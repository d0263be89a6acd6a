"""The distillation / continued-pretraining trainer, on ``accelerate``: one CPU, one GPU or many
(``accelerate launch``), mixed precision on GPU, gradient accumulation, AdamW with linear warmup and
decay, atomic checkpoints with resume, a progress bar with loss and tokens/s, held-out perplexity.

Data are fixed-length token windows ``(n, seq_len)``. The order of micro-batches is a pure function of
``(seed, micro-batch counter)``, so a resumed run needs no data-loader state: resuming from a
checkpoint (model, optimizer, scheduler, step, RNG states) gives the same result as not stopping.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from ..core.checks import TEMP_PREFIX, sweep_temporaries
from ..core.errors import UserError
from ..core.jsonio import atomic_write_json
from .losses import LossWeights, distill_loss

if TYPE_CHECKING:
    from accelerate import Accelerator

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
PRECISIONS = ("no", "fp16", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 100  # optimizer steps
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup: int = 0  # steps of linear warmup; then linear decay to 0 at ``steps``
    batch_size: int = 4  # windows per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    max_grad_norm: float = 1.0  # 0: no clipping
    mixed_precision: str = "no"
    seed: int = 0
    eval_every: int = 0  # steps; 0: only before and after
    eval_batch_size: int = 4
    save_every: int = 0  # steps; 0: no checkpoints
    keep_checkpoints: int = 2
    cpu: bool = False  # force CPU even with a GPU

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise UserError(f"--steps {self.steps} must be >= 1")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise UserError("batch size and gradient accumulation must be >= 1")
        if self.lr <= 0:
            raise UserError(f"learning rate {self.lr} must be > 0")
        if not 0 <= self.warmup <= self.steps:
            raise UserError(f"warmup {self.warmup} must be between 0 and --steps {self.steps}")
        if self.mixed_precision not in PRECISIONS:
            raise UserError(f"unknown mixed precision {self.mixed_precision!r}", f"choose one of: {', '.join(PRECISIONS)}")
        if self.eval_every < 0 or self.save_every < 0 or self.keep_checkpoints < 1:
            raise UserError("--eval-every and --save-every must be >= 0, keep at least 1 checkpoint")

    def resume_key(self) -> str:
        """What must match for a checkpoint to be resumed (not the eval/save cadence)."""
        fields = {k: v for k, v in asdict(self).items()
                  if k not in ("eval_every", "eval_batch_size", "save_every", "keep_checkpoints", "cpu")}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class TrainResult:
    steps: int
    seconds: float
    resumed_from: int | None
    history: list[dict[str, float]] = field(default_factory=list)  # one row per optimizer step
    evals: list[dict[str, float]] = field(default_factory=list)  # {"step", "ppl"}
    tokens: int = 0
    device: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def warmup_steps(steps: int, warmup: int | None) -> int:
    """The warmup to use: ``warmup`` (default 5% of ``steps``), never more than ``steps``."""
    return min(warmup if warmup is not None else steps // 20, steps)


def lr_lambda(warmup: int, steps: int) -> Callable[[int], float]:
    """Linear warmup to 1 over ``warmup`` steps, then linear decay to 0 at ``steps``."""

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (steps - step) / max(1, steps - warmup))

    return f


def micro_batch_indices(n: int, batch: int, world: int, rank: int, counter: int, seed: int,
                        cache: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Window indices of micro-batch ``counter`` on process ``rank``: consecutive slices of a stream
    of per-epoch permutations seeded by ``seed + epoch`` (epochs wrap around the data)."""
    cache = {} if cache is None else cache
    start = (counter * world + rank) * batch
    out = []
    for p in range(start, start + batch):
        epoch = p // n
        if epoch not in cache:
            cache.clear()
            cache[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        out.append(int(cache[epoch][p % n]))
    return torch.tensor(out, dtype=torch.long)


class _LayerOutputs:
    """Forward hooks that keep each live layer's output (with its graph, for the hidden-state loss)."""

    def __init__(self, model: nn.Module):
        from ..models import adapter_for

        self.outputs: list[torch.Tensor | None] = []
        self.handles = []
        for i, layer in enumerate(adapter_for(model).layers(model)):
            self.outputs.append(None)
            self.handles.append(layer.register_forward_hook(self._hook(i)))

    def _hook(self, i: int):
        def fn(module, args, output):
            self.outputs[i] = output[0] if isinstance(output, (tuple, list)) else output

        return fn

    def take(self) -> list[torch.Tensor]:
        out = [o for o in self.outputs if o is not None]
        self.outputs = [None] * len(self.outputs)
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def latest_checkpoint(out: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step under ``out/checkpoints`` (temp folders ignored)."""
    folder = Path(out) / CHECKPOINTS
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("step-*") if (p / STATE_FILE).is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def _kept_layers(student: nn.Module, teacher: nn.Module | None) -> list[int]:
    from ..models import adapter_for

    shape = adapter_for(student).shape_of(student)
    if teacher is not None:
        mine, theirs = adapter_for(student).arch(student), adapter_for(teacher).arch(teacher)
        for key in ("family", "hidden", "vocab"):
            if getattr(mine, key) != getattr(theirs, key):
                raise UserError(f"the student has {key}={getattr(mine, key)}, the teacher {key}={getattr(theirs, key)}",
                                "distill from the dense model the student was pruned from")
        teacher_layers = len(adapter_for(teacher).layers(teacher))
        if teacher_layers != len(shape.layers):
            raise UserError(f"the student descends from a {len(shape.layers)}-layer model, the teacher has "
                            f"{teacher_layers} layers", "distill from the dense model the student was pruned from")
    return shape.kept_layers


@dataclass
class _Run:
    """The fixed parts of one training run, as its helpers need them (set up by ``_prepare``)."""

    config: TrainConfig
    weights: LossWeights
    windows: torch.Tensor
    teacher: nn.Module | None
    eval_windows: torch.Tensor | None
    kept: list[int]
    log: Callable[[str], None]
    accelerator: Accelerator
    model: nn.Module  # the student, as prepared by accelerate
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    student_hooks: _LayerOutputs | None
    teacher_hooks: _LayerOutputs | None
    main: bool
    world: int
    rank: int
    tokens_per_step: int
    perm_cache: dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass
class _TrainState:
    """Where a run is: the optimizer steps done, their history and evaluations (saved in checkpoints)."""

    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int | None = None


def train(student: nn.Module, windows: torch.Tensor, out: str | os.PathLike, config: TrainConfig,
          weights: LossWeights, teacher: nn.Module | None = None, eval_windows: torch.Tensor | None = None,
          resume: bool = True, stop_at: int | None = None, progress: bool = True,
          log: Callable[[str], None] = print) -> TrainResult:
    """Train ``student`` in place on ``windows`` (n, seq_len) and return the history.

    ``teacher`` is needed when ``weights.kd`` or ``weights.hidden`` > 0 (plain LM loss otherwise:
    LayerChop continued pretraining). With ``resume``, training continues from the last checkpoint in
    ``out/checkpoints``. ``stop_at`` ends the run after that step (as an interruption would).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    if weights.needs_teacher and teacher is None:
        raise UserError("KD and hidden-state losses need a teacher", "pass --teacher, or use --task-weight only")
    if windows.ndim != 2 or len(windows) < 1:
        raise UserError("training data must be a non-empty (n, seq_len) tensor of token ids")
    out = Path(out)
    kept = _kept_layers(student, teacher)
    if config.mixed_precision == "fp16" and (config.cpu or not torch.cuda.is_available()):
        raise UserError("fp16 mixed precision needs a GPU", "use --mixed-precision no (or bf16) on CPU")
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=config.cpu)
    set_seed(config.seed)
    run = _prepare(accelerator, student, teacher, windows, eval_windows, kept, config, weights, log)
    state = _resume(run, out, resume)
    if state.step == 0 and not state.evals:
        _evaluate(run, state)
    started = time.perf_counter()
    last = min(config.steps, stop_at) if stop_at is not None else config.steps
    bar = tqdm(total=config.steps, initial=state.step, desc="distill" if weights.needs_teacher else "train",
               disable=not (progress and run.main), dynamic_ncols=True)
    try:
        _run_steps(run, state, out, last, bar)
    finally:
        bar.close()
        for hooks in (run.student_hooks, run.teacher_hooks):
            if hooks is not None:
                hooks.close()
    return _finish(run, state, out, started)


def _prepare(accelerator: Accelerator, student: nn.Module, teacher: nn.Module | None, windows: torch.Tensor,
             eval_windows: torch.Tensor | None, kept: list[int], config: TrainConfig, weights: LossWeights,
             log: Callable[[str], None]) -> _Run:
    """The optimizer, the scheduler and the layer-output hooks; the student and optimizer prepared by
    ``accelerator``."""
    decay = [p for p in student.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in student.parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    # The scheduler is stepped by hand once per optimizer step (accelerate would step it once per process).
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config.warmup, config.steps))
    student.train()
    student_hooks = _LayerOutputs(student) if weights.hidden > 0 else None
    teacher_hooks = None
    if teacher is not None and weights.needs_teacher:
        teacher.eval().requires_grad_(False)
        teacher.to(accelerator.device)
        teacher_hooks = _LayerOutputs(teacher) if weights.hidden > 0 else None
    model, optimizer = accelerator.prepare(student, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    world = accelerator.num_processes
    return _Run(config=config, weights=weights, windows=windows, teacher=teacher, eval_windows=eval_windows,
                kept=kept, log=log, accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler,
                student_hooks=student_hooks, teacher_hooks=teacher_hooks, main=accelerator.is_main_process,
                world=world, rank=accelerator.process_index,
                tokens_per_step=config.batch_size * config.grad_accum * world * windows.shape[1])


def _resume(run: _Run, out: Path, resume: bool) -> _TrainState:
    """The progress of the last checkpoint under ``out`` (its model, optimizer, scheduler and RNG states
    loaded), or a fresh start."""
    ckpt = latest_checkpoint(out) if resume else None
    if ckpt is None:
        return _TrainState()
    saved = json.loads((ckpt / STATE_FILE).read_text())
    if saved.get("config_key") != run.config.resume_key():
        raise UserError(f"checkpoint {ckpt} was made with other training options",
                        "resume with the same options, or pass a new --out")
    run.accelerator.load_state(str(ckpt))
    state = _TrainState(saved["step"], saved["history"], saved["evals"], resumed_from=saved["step"])
    if run.main:
        run.log(f"resumed from {ckpt} (step {state.step})")
    return state


def _evaluate(run: _Run, state: _TrainState) -> None:
    """Held-out perplexity at the current step (none without ``eval_windows``)."""
    if run.eval_windows is None:
        return
    from ..prune.evaluate import perplexity

    with run.accelerator.autocast():
        ppl = perplexity(run.accelerator.unwrap_model(run.model), run.eval_windows,
                         batch_size=run.config.eval_batch_size, progress=False)
    run.model.train()
    state.evals.append({"step": state.step, "ppl": round(ppl, 4)})
    if run.main:
        run.log(f"step {state.step}: held-out perplexity {ppl:.3f}")


def _run_steps(run: _Run, state: _TrainState, out: Path, last: int, bar: Any) -> None:
    """Optimizer steps until step ``last``, with the evaluations and checkpoints due after each."""
    config = run.config
    while state.step < last:
        t0 = time.perf_counter()
        total, parts_sum = _accumulate_gradients(run, state.step)
        lr = _optimizer_step(run)
        state.step += 1
        if run.world > 1:  # log the loss of the global batch, not of this process's share
            total, parts_sum = _global_mean(run.accelerator, total, parts_sum)
        dt = time.perf_counter() - t0
        _record_step(run, state, bar, total, parts_sum, lr, dt)
        if config.eval_every and state.step % config.eval_every == 0 and state.step < config.steps:
            _evaluate(run, state)
        if state.step == config.steps:
            _evaluate(run, state)
        if config.save_every and (state.step % config.save_every == 0 or state.step == last):
            _save_checkpoint(run.accelerator, out, state.step, config, state.history, state.evals)


def _accumulate_gradients(run: _Run, step: int) -> tuple[float, dict[str, float]]:
    """Forward and backward passes over the micro-batches of optimizer step ``step``; the loss and its
    parts, averaged over the micro-batches (of this process)."""
    config, accelerator, teacher, teacher_hooks = run.config, run.accelerator, run.teacher, run.teacher_hooks
    extra = {"use_cache": False}
    total, parts_sum = 0.0, {}
    for micro in range(config.grad_accum):
        idx = micro_batch_indices(len(run.windows), config.batch_size, run.world, run.rank,
                                  step * config.grad_accum + micro, config.seed, run.perm_cache)
        ids = run.windows[idx].to(accelerator.device)
        teacher_logits, teacher_hidden = None, []
        if teacher_hooks is not None or (teacher is not None and run.weights.kd > 0):
            with torch.no_grad(), accelerator.autocast():
                teacher_logits = _logits(teacher(input_ids=ids, **extra))
            teacher_hidden = teacher_hooks.take() if teacher_hooks else []
        sync = micro == config.grad_accum - 1
        ctx = accelerator.no_sync(run.model) if not sync and run.world > 1 else contextlib.nullcontext()
        with ctx:
            with accelerator.autocast():
                student_logits = _logits(run.model(input_ids=ids, **extra))
            loss, parts = distill_loss(run.weights, ids, student_logits,
                                       run.student_hooks.take() if run.student_hooks else [], teacher_logits,
                                       teacher_hidden, run.kept)
            accelerator.backward(loss / config.grad_accum)
        total += float(loss.detach()) / config.grad_accum
        for k, v in parts.items():
            parts_sum[k] = parts_sum.get(k, 0.0) + v / config.grad_accum
    return total, parts_sum


def _optimizer_step(run: _Run) -> float:
    """Clip the gradients, step the optimizer and the scheduler; the learning rate of this step."""
    if run.config.max_grad_norm > 0:
        run.accelerator.clip_grad_norm_(run.model.parameters(), run.config.max_grad_norm)
    lr = run.scheduler.get_last_lr()[0]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return lr


def _global_mean(accelerator: Accelerator, total: float,
                 parts_sum: dict[str, float]) -> tuple[float, dict[str, float]]:
    """The loss and its parts averaged over the processes."""
    keys = sorted(parts_sum)
    mean = accelerator.reduce(torch.tensor([total] + [parts_sum[k] for k in keys],
                                           device=accelerator.device), "mean").tolist()
    return mean[0], dict(zip(keys, mean[1:]))


def _record_step(run: _Run, state: _TrainState, bar: Any, total: float, parts_sum: dict[str, float], lr: float,
                 dt: float) -> None:
    """The history row of the step just done, and the progress bar."""
    if not math.isfinite(total):
        raise UserError(f"the loss became {total} at step {state.step}", "lower --lr or use --mixed-precision no")
    row = {"step": state.step, "loss": round(total, 6), "lr": lr,
           "tokens_per_s": round(run.tokens_per_step / dt, 1), **{k: round(v, 6) for k, v in parts_sum.items()}}
    state.history.append(row)
    bar.update(1)
    bar.set_postfix(loss=f"{total:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")


def _finish(run: _Run, state: _TrainState, out: Path, started: float) -> TrainResult:
    """Unwrap the student (left in eval mode), write ``train.json`` and free accelerate's memory."""
    accelerator = run.accelerator
    accelerator.wait_for_everyone()
    student = accelerator.unwrap_model(run.model)
    student.eval()
    result = TrainResult(state.step, round(time.perf_counter() - started, 2), state.resumed_from, state.history,
                         state.evals, tokens=state.step * run.tokens_per_step, device=str(accelerator.device))
    if run.main:
        atomic_write_json(out / "train.json", {"format": "ziplm-deploy/train", "version": 1,
                                               "config": asdict(run.config), "weights": asdict(run.weights),
                                               **result.to_json()})
    accelerator.free_memory()
    return result


def _logits(output: Any) -> torch.Tensor:
    logits = getattr(output, "logits", None)
    if logits is None:
        raise UserError("the model has no language-model head (no logits)", "distill a causal LM (…ForCausalLM)")
    return logits


def _save_checkpoint(accelerator, out: Path, step: int, config: TrainConfig, history, evals) -> None:
    """model + optimizer + scheduler + RNG states (accelerate) and the step, written to a temp folder
    and renamed, so an interruption never leaves a half-written checkpoint that looks complete."""
    folder = out / CHECKPOINTS
    tmp, final = folder / f"{TEMP_PREFIX}step-{step:08d}", folder / f"step-{step:08d}"
    if accelerator.is_main_process:
        sweep_temporaries(folder)  # this step's and any other half-written checkpoint of a killed run
        folder.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=False)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / STATE_FILE, {"step": step, "config_key": config.resume_key(), "history": history,
                                             "evals": evals})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        done = sorted((p for p in folder.glob("step-*") if (p / STATE_FILE).is_file()),
                      key=lambda p: int(p.name.split("-")[1]))
        for old in done[: -config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def save_student(model: nn.Module, out: str | os.PathLike, parent: str | os.PathLike, method: str,
                 tokenizer: Any = None, options: dict[str, Any] | None = None,
                 metrics: dict[str, float] | None = None, extra_manifest: dict[str, Any] | None = None) -> Path:
    """Save the trained model with its manifest, so ``ziplm_deploy.load_model`` reloads it. Under
    ``accelerate launch`` only the main process writes; the others wait for it."""
    from ..core.manifest import MANIFEST_FILE, new_manifest
    from ..models import adapter_for, save_model

    if is_main_process():
        shape = adapter_for(model).shape_of(model)
        manifest = new_manifest(method, parent, shape.to_json(), options=options or {}, metrics=metrics or {})
        payload = {**manifest.to_json(), **(extra_manifest or {})}
        save_model(model, out, tokenizer=tokenizer, overwrite=True,
                   extra_files={MANIFEST_FILE: json.dumps(payload, indent=2, default=str) + "\n"})
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()
    return Path(out)


def is_main_process() -> bool:
    """Global rank 0 (``torchrun`` / ``accelerate launch`` set RANK), without initialising accelerate's
    state (which must first be created by the trainer's ``Accelerator``, with its CPU/GPU choice)."""
    return os.environ.get("RANK", "0") == "0"
