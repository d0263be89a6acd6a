"""KD losses: zero for identical student and teacher, positive otherwise; layer mapping with dropped layers."""

from __future__ import annotations

import copy

import pytest
import torch

from families import tiny_model
from ziplm_deploy.core.errors import UserError
from ziplm_deploy.distill.losses import (LossWeights, distill_loss, hidden_state_loss, layer_map, lm_loss, logit_kd,
                                         normalised_mse)
from ziplm_deploy.distill.trainer import _LayerOutputs
from ziplm_deploy.models import LayerPlan, adapter_for, shrink


def test_logit_kd_zero_for_identical_positive_otherwise():
    torch.manual_seed(0)
    t = torch.randn(2, 5, 11)
    assert logit_kd(t.clone(), t, temperature=2.0).item() == pytest.approx(0.0, abs=1e-6)
    s = t + 0.5 * torch.randn_like(t)
    assert logit_kd(s, t, temperature=2.0).item() > 1e-3


def test_logit_kd_matches_kl_definition_and_t_squared_scaling():
    torch.manual_seed(1)
    s, t = torch.randn(3, 4, 7), torch.randn(3, 4, 7)
    for T in (1.0, 3.0):
        p = torch.softmax(t / T, -1)
        kl = (p * (p.log() - torch.log_softmax(s / T, -1))).sum(-1).mean() * T * T
        assert logit_kd(s, t, T).item() == pytest.approx(kl.item(), rel=1e-5)
    mask = torch.zeros(3, 4)
    mask[0, 0] = 1
    p = torch.softmax(t[0, 0], -1)
    one = (p * (p.log() - torch.log_softmax(s[0, 0], -1))).sum()
    assert logit_kd(s, t, 1.0, mask).item() == pytest.approx(one.item(), rel=1e-5)


def test_normalised_mse_is_scale_free():
    torch.manual_seed(2)
    t = torch.randn(2, 3, 8)
    s = t + 0.1 * torch.randn_like(t)
    assert normalised_mse(t, t).item() == 0.0
    assert normalised_mse(s, t).item() > 0
    assert normalised_mse(100 * s, 100 * t).item() == pytest.approx(normalised_mse(s, t).item(), rel=1e-4)


def test_hidden_state_loss_maps_to_original_layers():
    torch.manual_seed(3)
    teacher = [torch.randn(2, 3, 8) * (i + 1) for i in range(4)]
    student = [teacher[0].clone(), teacher[2].clone(), teacher[3].clone()]  # layer 1 dropped
    assert hidden_state_loss(student, teacher, [0, 2, 3]).item() == 0.0
    assert hidden_state_loss(student, teacher, [0, 1, 2]).item() > 0.1  # the wrong mapping
    assert layer_map([0, 2, 3], 4) == [(0, 0), (1, 2), (2, 3)]
    with pytest.raises(UserError, match="increasing original indices"):
        layer_map([2, 1], 4)
    with pytest.raises(UserError, match="increasing original indices"):
        layer_map([0, 4], 4)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_model_losses_identical_zero_pruned_positive(family):
    teacher = tiny_model(family)
    ids = torch.randint(0, 120, (2, 12), generator=torch.Generator().manual_seed(0))
    weights = LossWeights(kd=1.0, hidden=1.0, task=0.0, temperature=2.0)

    def losses(student):
        sh, th = _LayerOutputs(student), _LayerOutputs(teacher)
        with torch.no_grad():
            s_logits, t_logits = student(input_ids=ids).logits, teacher(input_ids=ids).logits
        kept = adapter_for(student).shape_of(student).kept_layers
        total, parts = distill_loss(weights, ids, s_logits, sh.take(), t_logits, th.take(), kept)
        sh.close(), th.close()
        return total.item(), parts

    total, parts = losses(copy.deepcopy(teacher))
    assert total == pytest.approx(0.0, abs=1e-6) and parts["kd"] == pytest.approx(0.0, abs=1e-6)
    # drop layer 1 only: layer 0's output is unchanged, so the hidden loss comes from later layers only
    chopped = shrink(copy.deepcopy(teacher), [LayerPlan(), LayerPlan(dropped=True), LayerPlan(), LayerPlan()])
    assert adapter_for(chopped).shape_of(chopped).kept_layers == [0, 2, 3]
    total, parts = losses(chopped)
    assert parts["kd"] > 0 and parts["hidden"] > 0
    # dropping the last layer: the remaining layers' outputs equal the teacher's at the same indices
    top = shrink(copy.deepcopy(teacher), [LayerPlan(), LayerPlan(), LayerPlan(), LayerPlan(dropped=True)])
    _, parts = losses(top)
    assert parts["hidden"] == pytest.approx(0.0, abs=1e-6) and parts["kd"] > 0


def test_lm_loss_and_weights():
    logits = torch.full((1, 3, 5), -1e4)
    ids = torch.tensor([[1, 2, 3]])
    logits[0, 0, 2] = logits[0, 1, 3] = 0.0
    assert lm_loss(logits, ids).item() == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(UserError, match="every loss weight is 0"):
        LossWeights(kd=0, hidden=0, task=0)
    with pytest.raises(UserError, match="negative"):
        LossWeights(kd=-1)
    assert not LossWeights(kd=0, hidden=0, task=1).needs_teacher
    with pytest.raises(UserError, match="needs a teacher"):
        distill_loss(LossWeights(kd=1, hidden=0), ids, logits)
