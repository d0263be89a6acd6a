"""The refit experiment (tools/refit.py, not a product option: it hurts held-out quality) is exact least squares."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

from families import model_output, tiny_model
from ziplm_deploy.models import adapter_for
from ziplm_deploy.models.base import out_in_weight
from ziplm_deploy.prune.database import build_database
from ziplm_deploy.prune.hessian import collect_hessians
from ziplm_deploy.prune.obs import reconstruct
from ziplm_deploy.prune.stitch import stitch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.refit import refit_sequential  # noqa: E402


def _setup(family, seed=0, tokens=(16, 16)):
    model = tiny_model(family).eval()
    adapter = adapter_for(model)
    windows = torch.randint(1, 120, tokens, generator=torch.Generator().manual_seed(seed))
    hessians = collect_hessians(model, windows, progress=False)
    weights = [(adapter.attn_out_weight(l), adapter.ffn_out_weight(l)) for l in adapter.layers(model)]
    db = build_database(weights, hessians, adapter.arch(model), ffn_step=8, damp=0.01, calibration={}, progress=False)
    return model, windows, hessians, db


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_first_pruned_block_refits_to_the_obs_reconstruction(family):
    """Nothing upstream is pruned, so the pruned block sees the dense inputs: the re-fit is exactly the
    least-squares (OBS) reconstruction from the dense Hessian."""
    model, windows, hessians, db = _setup(family)
    mod = db.module(0, "ffn")
    level = mod.levels[len(mod.levels) // 2]
    pruned = stitch(copy.deepcopy(model), db, hessians, {(0, "ffn"): level})
    refit_sequential(model, pruned, windows, damp=0.0, progress=False)
    adapter = adapter_for(model)
    want = reconstruct(out_in_weight(adapter.ffn_out_proj(adapter.layers(model)[0])).detach().float(), hessians[0].ffn,
                       list(level.kept), damp=0.0)
    got = out_in_weight(adapter.ffn_out_proj(adapter.layers(pruned)[0])).detach()
    assert torch.allclose(got, want, rtol=1e-3, atol=1e-4 * float(want.abs().max()))


def test_an_unpruned_model_is_its_own_refit():
    model, windows, _, _ = _setup("llama")
    copy_ = refit_sequential(model, copy.deepcopy(model), windows, damp=0.0, scope="all", progress=False)
    for a, b in zip(model.state_dict().values(), copy_.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4 * float(a.abs().max() + 1e-12))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("scope", ["pruned", "all"])
def test_refit_brings_the_pruned_model_closer_to_the_dense_one(family, scope):
    """Every block pruned: after the re-fit the outputs on the calibration windows are closer to the dense
    model's, the shape is unchanged and only output projections moved."""
    model, windows, hessians, db = _setup(family, tokens=(24, 16))
    levels = {(m.layer, m.kind): m.levels[len(m.levels) // 2] for m in db.modules}
    pruned = stitch(copy.deepcopy(model), db, hessians, levels)
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    shape = adapter_for(pruned).shape_of(pruned)
    dense_out = model_output(model, windows)
    err_before = float((model_output(pruned, windows) - dense_out).pow(2).mean())
    refit_sequential(model, pruned, windows, scope=scope, progress=False)
    err_after = float((model_output(pruned, windows) - dense_out).pow(2).mean())
    assert err_after < err_before, (err_before, err_after)  # llama: -10% or more; gpt2: -2%
    assert adapter_for(pruned).shape_of(pruned) == shape
    adapter = adapter_for(pruned)
    projections = {id(p.weight) for layer in adapter.layers(pruned)
                   for p in (adapter.attn_out_proj(layer), adapter.ffn_out_proj(layer)) if p is not None}
    for name, value in pruned.named_parameters():
        if id(value) not in projections:
            assert torch.equal(value, before[name]), name


def test_refit_refuses_models_with_other_layers():
    from ziplm_deploy.core.errors import InternalError
    from ziplm_deploy.models import LayerPlan, shrink

    model, windows, _, _ = _setup("llama")
    chopped = shrink(copy.deepcopy(model), [LayerPlan(dropped=True), LayerPlan(), LayerPlan(), LayerPlan()])
    with pytest.raises(InternalError, match="same layers"):
        refit_sequential(model, chopped, windows, progress=False)

