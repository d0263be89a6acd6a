"""The accelerate trainer on tiny models: loss goes down, resume == uninterrupted, LayerChop continued
pretraining, checkpoints are atomic, the trained student saves and reloads."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from families import tiny_model
from ziplm_deploy.core.errors import UserError
from ziplm_deploy.distill.losses import LossWeights
from ziplm_deploy.distill.trainer import (TrainConfig, latest_checkpoint, lr_lambda, micro_batch_indices,
                                          save_student, train)
from ziplm_deploy.models import LayerPlan, adapter_for, load_model, shrink


def _windows(n=16, seq=16, seed=0):
    return torch.randint(1, 120, (n, seq), generator=torch.Generator().manual_seed(seed))


def _pruned(family="llama"):
    teacher = tiny_model(family)
    student = shrink(copy.deepcopy(teacher), [LayerPlan(), LayerPlan(dropped=True), LayerPlan(heads=(0, 1, 2, 3)),
                                              LayerPlan(ffn=tuple(range(0, 80 if family == "llama" else 192, 2)))])
    return teacher, student


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_schedule_and_batch_order():
    f = lr_lambda(2, 10)
    assert [round(f(s), 3) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    seen = torch.cat([micro_batch_indices(10, 2, 1, 0, c, seed=3) for c in range(5)])
    assert sorted(seen.tolist()) == list(range(10))  # one epoch covers every window once
    two = [micro_batch_indices(10, 2, 2, r, 1, seed=3) for r in (0, 1)]  # 2 processes share a global batch
    assert torch.equal(torch.cat(two), seen[4:8])


def test_distillation_reduces_the_loss(tmp_path):
    teacher, student = _pruned("llama")
    windows = _windows()
    config = TrainConfig(steps=12, lr=1e-3, batch_size=4, grad_accum=2, eval_every=6, seed=0)
    res = train(student, windows, tmp_path, config, LossWeights(kd=1.0, hidden=1.0, task=0.01), teacher=teacher,
                eval_windows=windows[:4], progress=False, log=lambda m: None)
    first, final = res.history[0], res.history[-1]
    assert set(first) >= {"loss", "kd", "hidden", "task", "tokens_per_s", "lr"}
    assert final["loss"] < 0.8 * first["loss"]
    assert [e["step"] for e in res.evals] == [0, 6, 12]
    assert final["hidden"] < 0.8 * first["hidden"]
    saved = json.loads((tmp_path / "train.json").read_text())
    assert saved["steps"] == 12 and len(saved["history"]) == 12


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_resume_equals_uninterrupted(tmp_path, family):
    teacher, student = _pruned(family)
    windows = _windows()
    config = TrainConfig(steps=6, lr=2e-3, batch_size=2, grad_accum=2, warmup=2, save_every=3, seed=1)
    weights = LossWeights(kd=1.0, hidden=0.5, task=0.2)  # GPT-2 has dropout: the RNG state must be restored
    quiet = {"progress": False, "log": lambda m: None}

    full = copy.deepcopy(student)
    train(full, windows, tmp_path / "full", config, weights, teacher=teacher, **quiet)
    part = copy.deepcopy(student)
    res = train(part, windows, tmp_path / "cut", config, weights, teacher=teacher, stop_at=3, **quiet)
    assert res.steps == 3 and latest_checkpoint(tmp_path / "cut").name == "step-00000003"
    resumed = copy.deepcopy(student)  # a fresh process would reload the starting weights, then the checkpoint
    res = train(resumed, windows, tmp_path / "cut", config, weights, teacher=teacher, **quiet)
    assert res.resumed_from == 3 and res.steps == 6 and len(res.history) == 6
    a, b = _state(full), _state(resumed)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    changed = max((a[k] - _state(student)[k]).abs().max().item() for k in a)
    assert changed > 1e-4  # training did move the weights


def test_resume_refuses_other_options(tmp_path):
    teacher, student = _pruned("llama")
    windows = _windows(8)
    quiet = {"progress": False, "log": lambda m: None}
    train(student, windows, tmp_path, TrainConfig(steps=2, save_every=1), LossWeights(), teacher=teacher, **quiet)
    (tmp_path / "checkpoints" / ".tmp-step-00000009").mkdir()  # a save killed half-way is ignored
    assert latest_checkpoint(tmp_path).name == "step-00000002"
    with pytest.raises(UserError, match="other training options"):
        train(student, windows, tmp_path, TrainConfig(steps=2, lr=1.0, save_every=1), LossWeights(), teacher=teacher,
              **quiet)


def test_layerchop_continued_pretraining_saves_and_reloads(tmp_path):
    model = tiny_model("gpt2")
    shrink(model, [LayerPlan(), LayerPlan(dropped=True), LayerPlan(dropped=True), LayerPlan()])
    windows = _windows(12)
    res = train(model, windows, tmp_path / "run", TrainConfig(steps=8, lr=3e-3, batch_size=4),
                LossWeights(kd=0, hidden=0, task=1.0), eval_windows=windows[:4], progress=False, log=lambda m: None)
    assert set(res.history[0]) >= {"task"} and "kd" not in res.history[0]
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    path = save_student(model, tmp_path / "model", parent=tmp_path, method="layerchop+pretrain",
                        options={"steps": 8}, metrics={"ppl": res.evals[-1]["ppl"]})
    again = load_model(path)
    assert adapter_for(again).shape_of(again).kept_layers == [0, 3]
    ids = windows[:2]
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, again(input_ids=ids).logits, atol=1e-5)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["method"] == "layerchop+pretrain" and manifest["shape"]["layers"][1] == {"dropped": True}


def test_teacher_required_and_mismatch(tmp_path):
    _, student = _pruned("llama")
    with pytest.raises(UserError, match="need a teacher"):
        train(student, _windows(4), tmp_path, TrainConfig(steps=1), LossWeights(), progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="fp16 mixed precision needs a GPU"):
            train(student, _windows(4), tmp_path, TrainConfig(steps=1, mixed_precision="fp16"),
                  LossWeights(kd=0, hidden=0, task=1), progress=False)
    with pytest.raises(UserError, match="the student has family=llama, the teacher family=gpt2"):
        train(student, _windows(4), tmp_path, TrainConfig(steps=1), LossWeights(), teacher=tiny_model("gpt2"),
              progress=False)
    with pytest.raises(UserError, match="teacher has"):
        train(student, _windows(4), tmp_path, TrainConfig(steps=1), LossWeights(), teacher=tiny_model("llama", layers=2),
              progress=False)
