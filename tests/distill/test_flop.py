"""FLOP pieces: hard-concrete gate statistics, SVD initialisation, export to two thin Linears, the Lagrangian."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from families import tiny_model
from ziplm_deploy.core.errors import UserError
from ziplm_deploy.distill.flop import (BETA, LIMIT_L, LIMIT_R, FactorizedLinear, HardConcreteGates, Lagrangian,
                                       default_rank, expected_sparsity, factorize, factorized_layers, target_at)


def test_expected_l0_matches_the_formula_and_sampling():
    torch.manual_seed(0)
    gates = HardConcreteGates(6)
    with torch.no_grad():
        gates.log_alpha.copy_(torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.5, 4.0]))
    formula = torch.sigmoid(gates.log_alpha - BETA * math.log(-LIMIT_L / LIMIT_R))
    assert torch.allclose(gates.prob_nonzero(), formula)
    assert gates.expected_l0().item() == pytest.approx(formula.sum().item())
    g = torch.Generator().manual_seed(1)
    draws = gates.sample(g, draws=20000).detach()
    assert draws.min() >= 0 and draws.max() <= 1 and (draws == 0).any() and (draws == 1).any()
    assert torch.allclose((draws > 0).float().mean(0), formula.detach(), atol=0.015)


def test_init_and_deterministic_eval_mask():
    torch.manual_seed(0)
    gates = HardConcreteGates(200, init_mean=0.5)
    assert abs(gates.log_alpha.mean().item()) < 0.01  # log(1-m) - log(m) = 0 at m = 0.5
    with torch.no_grad():
        gates.log_alpha.copy_(torch.linspace(-6, 6, 200))
    gates.eval()
    a, b = gates(), gates()
    assert torch.equal(a, b)  # deterministic
    zeros = round(200 - gates.expected_l0().item())
    assert int((a == 0).sum()) == zeros
    kept = a[a > 0]
    assert torch.allclose(kept, torch.sigmoid(0.8 * gates.log_alpha.detach()[a > 0]))
    assert (a[:zeros] == 0).all()  # the smallest log_alpha are the closed ones
    gates.train()
    assert not torch.equal(gates(), gates())


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_svd_init_with_every_rank_equals_dense(family):
    model = tiny_model(family)
    if family == "llama":
        name, module = "model.layers.0.mlp.down_proj", model.model.layers[0].mlp.down_proj
    else:
        name, module = "transformer.h.0.mlp.c_fc", model.transformer.h[0].mlp.c_fc  # Conv1D, weight transposed
    x = torch.randn(2, 5, module.weight.shape[0] if family == "gpt2" else module.in_features)
    with torch.no_grad():
        ref = module(x)
    full = min(module.weight.shape)
    layer = FactorizedLinear.from_module(module, rank=full, gates=False)
    with torch.no_grad():
        assert (layer(x) - ref).abs().max().item() < 1e-5
    ids = torch.randint(0, 120, (2, 8))
    with torch.no_grad():
        dense_logits = model(input_ids=ids).logits
    factorize(model, [name], rank=full, gates=False)
    assert len(factorized_layers(model)) == 1
    with torch.no_grad():
        assert (model(input_ids=ids).logits - dense_logits).abs().max().item() < 1e-5
    with pytest.raises(UserError, match="not a Linear"):
        factorize(model, ["model.norm" if family == "llama" else "transformer.ln_f"])


def test_default_rank_is_the_best_low_rank_approximation():
    torch.manual_seed(0)
    w = torch.randn(24, 40, dtype=torch.float64)
    r = default_rank(40, 24)
    assert r == 40 * 24 // 64 and (40 + 24) * r <= 40 * 24
    layer = FactorizedLinear(w, None, gates=False)
    approx = (layer.P @ layer.Q).T  # (out, in)
    s = torch.linalg.svdvals(w)
    assert torch.linalg.norm(w - approx).item() == pytest.approx(s[r:].pow(2).sum().sqrt().item(), rel=1e-8)


def test_export_to_two_thin_linears_matches_the_gated_layer():
    torch.manual_seed(0)
    lin = nn.Linear(32, 20)
    layer = FactorizedLinear.from_module(lin, rank=16)
    with torch.no_grad():
        layer.gates.log_alpha.copy_(torch.linspace(-5, 5, 16))
    layer.eval()
    kept = layer.kept_ranks()
    assert 0 < len(kept) < 16
    thin = layer.to_linears()
    assert thin.first.weight.shape == (len(kept), 32) and thin.second.weight.shape == (20, len(kept))
    x = torch.randn(3, 32)
    with torch.no_grad():
        assert (thin(x) - layer(x)).abs().max().item() < 1e-5
    with torch.no_grad():
        layer.gates.log_alpha.fill_(-20.0)
    with pytest.raises(UserError, match="every rank"):
        layer.to_linears()


def test_lagrangian_drives_expected_sparsity_to_the_target():
    torch.manual_seed(0)
    layers = [FactorizedLinear(torch.randn(16, 24), None, rank=12) for _ in range(2)]
    lag = Lagrangian()
    gate_params = [m.gates.log_alpha for m in layers]
    opt = torch.optim.Adam(gate_params, lr=0.1)
    opt_lambda = torch.optim.Adam(lag.parameters(), lr=0.01)
    target, warmup = 0.7, 50
    assert target_at(0, target, warmup) == 0 and target_at(25, target, warmup) == 0.35 and target_at(99, target, warmup) == target
    start = expected_sparsity(layers).item()
    for step in range(250):
        loss = lag(expected_sparsity(layers), target_at(step, target, warmup))
        opt.zero_grad(), opt_lambda.zero_grad()
        loss.backward()
        lag.ascend()
        opt.step(), opt_lambda.step()
    end = expected_sparsity(layers).item()
    dense_rank_sparsity = 1 - (16 + 24) * 12 / (16 * 24)
    assert start == pytest.approx(1 - (16 + 24) * 12 * torch.sigmoid(torch.tensor(-math.log(0.1 / 1.1))).item()
                                  / (16 * 24), abs=0.02)
    assert abs(end - target) < 0.02, (start, end, dense_rank_sparsity)


def test_flop_training_reaches_the_target_and_finalizes_to_thin_linears():
    torch.set_num_threads(1)
    model = tiny_model("llama")
    names = [f"model.layers.{i}.mlp.{p}" for i in range(4) for p in ("gate_proj", "up_proj", "down_proj")]
    factorize(model, names)
    from ziplm_deploy.distill.flop import finalize, train_flop

    windows = torch.randint(1, 120, (16, 16), generator=torch.Generator().manual_seed(0))
    history = train_flop(model, windows, target=0.6, steps=120, warmup=40, lr=1e-3)
    assert history[0]["expected_sparsity"] < 0.3 and abs(history[-1]["expected_sparsity"] - 0.6) < 0.05
    ids = windows[:2]
    with torch.no_grad():
        gated = model(input_ids=ids).logits
    ranks = finalize(model)
    assert set(ranks) == set(names) and not factorized_layers(model)
    full = default_rank(48, 80)
    assert sum(ranks.values()) < 0.8 * full * len(names)  # ranks were closed
    with torch.no_grad():
        assert (model(input_ids=ids).logits - gated).abs().max().item() < 1e-4
    with pytest.raises(UserError, match="no factorised layers"):
        train_flop(model, windows, target=0.5, steps=1)
