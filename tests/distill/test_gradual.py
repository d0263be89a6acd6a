"""Gradual ZipLM on a tiny Llama with a synthetic (linear, deterministic) latency table: prune -> distill ->
rebuild the database from the pruned model -> next target; plus search on an already pruned model."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from families import tiny_model
from ziplm_deploy.core.errors import UserError
from ziplm_deploy.core.fingerprint import DeviceFingerprint
from ziplm_deploy.core.table import AttentionEntry, Calibration, FfnEntry, LatencyTable, Stats
from ziplm_deploy.distill.gradual import GradualConfig, gradual_ziplm, prune_step
from ziplm_deploy.distill.losses import LossWeights
from ziplm_deploy.distill.trainer import TrainConfig
from ziplm_deploy.models import LayerPlan, adapter_for, load_model, shrink


def _stats(ms: float) -> Stats:
    return Stats(ms, ms, ms, 5)


def linear_table(model) -> LatencyTable:
    """Attention 0.02 + 0.01/head + 0.004/KV head ms, FFN 0.02 + 0.001/neuron ms (0.005 when removed), alpha 1,
    beta 0; every (heads, kv_heads) pair the profiler's grid has."""
    from ziplm_deploy.profiling.grid import attention_grid

    arch = adapter_for(model).arch(model)
    fp = DeviceFingerprint(cpu="synthetic", cores=1, gpu=None, runtime="onnxruntime", runtime_version="0",
                           provider="CPUExecutionProvider", opt_level="all", threads=1, dtype="float32", batch=1,
                           seq=16, mode="prefill", kv_len=0, opset=17, platform="test", producer="test")
    attention = [AttentionEntry(h, kv, _stats(0.005 if h == 0 else 0.02 + 0.01 * h + 0.004 * kv))
                 for h, kv in attention_grid(arch)]
    ffn = [FfnEntry(w, _stats(0.005 if w == 0 else 0.02 + 0.001 * w)) for w in range(0, arch.ffn + 1, 8)]
    table = LatencyTable(fp, arch, {"statistic": "p50"}, tuple(attention), tuple(ffn), {}, Calibration(1.0, 0.0, 0.0))
    references = {"dense": _stats(table.raw_sum(table.dense_shape())), "removed": _stats(table.raw_sum(table.removed_shape()))}
    return LatencyTable(fp, arch, {"statistic": "p50"}, tuple(attention), tuple(ffn), references,
                        Calibration(1.0, 0.0, 0.0))


def _windows(n, seed):
    return torch.randint(1, 120, (n, 16), generator=torch.Generator().manual_seed(seed))


def test_prune_step_on_an_already_pruned_model():
    dense = tiny_model("llama")
    table = linear_table(dense)
    dense_ms = table.predict(table.dense_shape())
    model = shrink(copy.deepcopy(dense), [LayerPlan(heads=()), LayerPlan(ffn=()), LayerPlan(), LayerPlan()])
    before = table.predict(adapter_for(model).shape_of(model))
    target = dense_ms / (0.7 * before)  # 30% faster than the current model
    res = prune_step(model, table, _windows(8, 0), target, GradualConfig(targets=(target,), ffn_step=8))
    assert res.reachable
    got = adapter_for(model).shape_of(model)
    assert table.predict(got) == pytest.approx(res.predicted_ms)  # removed blocks counted at their size-0 time
    assert res.predicted_ms <= dense_ms / target * (1 + 1e-9)
    assert got.layers[0].heads == 0 and got.layers[1].ffn == 0  # what was removed stays removed
    with torch.no_grad():
        assert model(input_ids=_windows(2, 1)).logits.isfinite().all()
    assert not prune_step(model, table, _windows(8, 0), 1000.0, GradualConfig(targets=(1000.0,), ffn_step=8)).reachable


def test_gradual_family(tmp_path):
    dense = tiny_model("llama")
    table = linear_table(dense)
    reference = copy.deepcopy(dense.state_dict())
    config = GradualConfig(targets=(1.4, 2.0), ffn_step=8)
    train_config = TrainConfig(steps=3, lr=1e-3, batch_size=4)
    logs: list[str] = []
    stages = gradual_ziplm(dense, table, _windows(8, 0), _windows(16, 1), tmp_path, config, train_config,
                           LossWeights(kd=1.0, hidden=1.0), eval_windows=_windows(4, 2), progress=False,
                           log=logs.append)
    assert [s.reachable for s in stages] == [True, True]
    assert all(torch.equal(v, dense.state_dict()[k]) for k, v in reference.items())  # the teacher is untouched
    shapes = []
    for s in stages:
        assert s.predicted_speedup >= s.target * (1 - 1e-9)
        assert s.oneshot_ppl is not None and s.distilled_ppl is not None and len(s.history) == 3
        model = load_model(s.path)
        shape = adapter_for(model).shape_of(model)
        assert shape.to_json() == s.shape
        manifest = json.loads((tmp_path / f"ziplm-gradual-{s.target:g}x" / "manifest.json").read_text())
        assert manifest["method"] == "ziplm-gradual" and manifest["metrics"]["target_speedup"] == s.target
        shapes.append(shape)
    for a, b in zip(shapes[0].layers, shapes[1].layers):  # the second model was pruned from the first
        assert b.heads <= a.heads and b.ffn <= a.ffn
    family = json.loads((tmp_path / "family-ziplm-gradual.json").read_text())
    assert [s["target"] for s in family["stages"]] == [1.4, 2.0]

    logs.clear()  # a rerun continues from the saved stages instead of recomputing them
    again = gradual_ziplm(dense, table, _windows(8, 0), _windows(16, 1), tmp_path, config, train_config,
                          LossWeights(kd=1.0, hidden=1.0), progress=False, log=logs.append)
    assert [s.path for s in again] == [s.path for s in stages]
    assert sum("done earlier" in m for m in logs) == 2


def test_gradual_options_are_checked():
    with pytest.raises(UserError, match="ascending"):
        GradualConfig(targets=(2.0, 1.5))
    dense = tiny_model("llama")
    pruned = shrink(copy.deepcopy(dense), [LayerPlan(ffn=()), LayerPlan(), LayerPlan(), LayerPlan()])
    with pytest.raises(UserError, match="starts from the dense model"):
        gradual_ziplm(pruned, linear_table(dense), _windows(4, 0), _windows(4, 1), "unused", GradualConfig(),
                      TrainConfig(steps=1), LossWeights(), progress=False)
    from ziplm_deploy.models.vocab import trim_model

    trimmed = trim_model(copy.deepcopy(dense), list(range(0, 120, 2)))
    with pytest.raises(UserError, match="vocabulary-trimmed model is not supported"):
        gradual_ziplm(trimmed, linear_table(dense), _windows(4, 0), _windows(4, 1), "unused", GradualConfig(),
                      TrainConfig(steps=1), LossWeights(), progress=False)


@pytest.mark.parametrize("attention", ["heads-in-groups", "whole-groups"])
def test_prune_step_follows_the_attention_levels(attention):
    dense = tiny_model("llama")  # 6 query heads in 3 KV groups
    table = linear_table(dense)
    res = prune_step(copy.deepcopy(dense), table, _windows(8, 0), 1.3,
                     GradualConfig(targets=(1.3,), ffn_step=8, attention_levels=attention))
    assert res.reachable
    attn = [lv for (_, kind), lv in res.levels.items() if kind == "attn"]
    assert attn and all((lv.kv is not None) == (attention == "heads-in-groups") for lv in attn)
    with pytest.raises(UserError, match="unknown attention levels 'groups'"):
        GradualConfig(attention_levels="groups")
