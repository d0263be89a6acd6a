"""Distillation losses as pure functions of tensors (no hooks, no models).

- ``logit_kd``: ``T² · KL(teacher_T || student_T)`` averaged over tokens (Hinton et al.; the T² keeps
  gradient magnitudes comparable across temperatures).
- ``hidden_state_loss``: token-level, per kept layer ``MSE(s, t) / (mean(t²) + eps)``, averaged over
  the layers the student still has, each compared with the teacher's output of the *same original
  layer* (a pruned student may have dropped layers: ``kept_layers`` gives their original indices).
- ``lm_loss``: next-token cross-entropy (the optional task loss; LayerChop continued pretraining).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch.nn import functional as F

from ..core.errors import UserError


@dataclass(frozen=True)
class LossWeights:
    """Weights of the three terms; a zero weight skips the term (and the teacher when both KD terms are 0)."""

    kd: float = 1.0
    hidden: float = 1.0
    task: float = 0.0
    temperature: float = 2.0
    eps: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("kd", "hidden", "task"):
            if getattr(self, name) < 0:
                raise UserError(f"loss weight {name}={getattr(self, name)} is negative", "use weights >= 0")
        if self.kd == self.hidden == self.task == 0:
            raise UserError("every loss weight is 0", "set --kd-weight, --hidden-weight or --task-weight above 0")
        if self.temperature <= 0:
            raise UserError(f"temperature {self.temperature} must be > 0")

    @property
    def needs_teacher(self) -> bool:
        return self.kd > 0 or self.hidden > 0

    @staticmethod
    def for_student(has_teacher: bool, kd: float | None = None, hidden: float | None = None,
                    task: float | None = None, temperature: float = 2.0) -> "LossWeights":
        """The weights with unset terms defaulted: KD + hidden states with a teacher, LM loss without."""
        kd = kd if kd is not None else (1.0 if has_teacher else 0.0)
        hidden = hidden if hidden is not None else (1.0 if has_teacher else 0.0)
        task = task if task is not None else (0.0 if has_teacher else 1.0)
        if not has_teacher and (kd > 0 or hidden > 0):
            raise UserError("--kd-weight and --hidden-weight need --teacher", "pass --teacher DIR or set them to 0")
        return LossWeights(kd=kd, hidden=hidden, task=task, temperature=temperature)


def logit_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """``T² · KL(softmax(t/T) || softmax(s/T))`` per token, averaged over tokens (``mask``: 1 = count)."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    per_token = (t.exp() * (t - s)).sum(dim=-1)  # KL(t || s) >= 0
    if mask is None:
        return per_token.mean() * temperature**2
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp_min(1) * temperature**2


def normalised_mse(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``MSE(s, t) / (mean(t²) + eps)``: scale-free, so layers with large activations do not dominate."""
    s, t = student.float(), teacher.float()
    return F.mse_loss(s, t) / (t.pow(2).mean() + eps)


def layer_map(kept_layers: Sequence[int], teacher_layers: int) -> list[tuple[int, int]]:
    """(student live-layer position, teacher original-layer index) pairs: the student's i-th live layer
    is the teacher's layer ``kept_layers[i]``."""
    kept = list(kept_layers)
    if any(b <= a for a, b in zip(kept, kept[1:])) or not kept or kept[0] < 0 or kept[-1] >= teacher_layers:
        raise UserError(f"student layers {kept} are not increasing original indices of the teacher's "
                        f"{teacher_layers} layers", "distill a student pruned from this teacher")
    return list(enumerate(kept))


def hidden_state_loss(student_hidden: Sequence[torch.Tensor], teacher_hidden: Sequence[torch.Tensor],
                      kept_layers: Sequence[int], eps: float = 1e-6) -> torch.Tensor:
    """Mean over the student's live layers of the normalised MSE between its output and the output of
    the teacher's layer it came from. ``student_hidden[i]``: output of the student's i-th live layer;
    ``teacher_hidden[j]``: output of the teacher's layer j (every original layer)."""
    if len(student_hidden) != len(kept_layers):
        raise UserError(f"{len(student_hidden)} student layer outputs for {len(kept_layers)} kept layers")
    pairs = layer_map(kept_layers, len(teacher_hidden))
    losses = [normalised_mse(student_hidden[i], teacher_hidden[j], eps) for i, j in pairs]
    return torch.stack(losses).mean()


def lm_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (position t predicts token t+1)."""
    pred = logits[:, :-1].float()
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), input_ids[:, 1:].reshape(-1))


def distill_loss(weights: LossWeights, input_ids: torch.Tensor, student_logits: torch.Tensor,
                 student_hidden: Sequence[torch.Tensor] = (), teacher_logits: torch.Tensor | None = None,
                 teacher_hidden: Sequence[torch.Tensor] = (), kept_layers: Sequence[int] = ()
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted sum of the enabled terms, and each term's value (for logging)."""
    total = student_logits.new_zeros((), dtype=torch.float32)
    parts: dict[str, float] = {}
    if weights.task > 0:
        v = lm_loss(student_logits, input_ids)
        total = total + weights.task * v
        parts["task"] = float(v.detach())
    if weights.kd > 0:
        if teacher_logits is None:
            raise UserError("logit distillation needs a teacher", "pass --teacher or set --kd-weight 0")
        v = logit_kd(student_logits, teacher_logits, weights.temperature)
        total = total + weights.kd * v
        parts["kd"] = float(v.detach())
    if weights.hidden > 0:
        if not teacher_hidden:
            raise UserError("hidden-state distillation needs a teacher", "pass --teacher or set --hidden-weight 0")
        v = hidden_state_loss(student_hidden, teacher_hidden, kept_layers, weights.eps)
        total = total + weights.hidden * v
        parts["hidden"] = float(v.detach())
    return total, parts
