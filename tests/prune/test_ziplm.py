"""ZipLM on tiny models: Hessians -> database -> search -> stitched models within budget, with OBS weights."""

from __future__ import annotations

import pytest
import torch

from families import FAMILIES, model_output, tiny_model
from ziplm_deploy.models import adapter_for
from ziplm_deploy.profiling.profiler import ProfileOptions, profile
from ziplm_deploy.prune.database import build_database, load_database, save_database
from ziplm_deploy.prune.hessian import collect_hessians
from ziplm_deploy.prune.search import search
from ziplm_deploy.prune.stitch import stitch
from ziplm_deploy.runtime.timing import Protocol


@pytest.fixture(scope="module")
def tables():
    """Real (tiny) latency tables measured in ONNX Runtime for the tiny models' architectures."""
    out = {}
    for fam in FAMILIES:
        model = tiny_model(fam)
        arch = adapter_for(model).arch(model)
        out[fam] = profile(arch, ProfileOptions(seq=16, ffn_step=8, protocol=Protocol(warmup=1, rounds=5)),
                           progress=False)
    return out


def _db(model, damp=0.01, windows=None, attention="heads-in-groups"):
    adapter = adapter_for(model)
    windows = windows if windows is not None else torch.randint(0, 120, (8, 16), generator=torch.Generator().manual_seed(0))
    hessians = collect_hessians(model, windows, progress=False)
    weights = [(adapter.attn_out_weight(l), adapter.ffn_out_weight(l)) for l in adapter.layers(model)]
    return build_database(weights, hessians, adapter.arch(model), ffn_step=8, damp=damp, calibration={},
                          progress=False, attention=attention), hessians


def test_family_meets_every_budget_and_stitches(family, tables):
    import copy

    model = tiny_model(family)
    db, hessians = _db(model)
    table = tables[family]
    dense_ms = table.predict(table.dense_shape())
    results = search(db, table, [1.2, 1.6, 2.0, 1000.0])
    assert not results[-1].reachable and results[-1].max_speedup < 1000
    reached = [r for r in results if r.reachable]
    assert reached, "tiny tables should allow at least 1.2x"
    losses = [r.loss for r in reached]
    assert losses == sorted(losses)  # tighter budgets cost more
    for r in reached:
        assert r.predicted_ms <= dense_ms / r.target * (1 + 1e-9)
        pruned = stitch(copy.deepcopy(model), db, hessians, r.levels)
        got = adapter_for(pruned).shape_of(pruned)
        assert got == r.shape.validate(table.arch)
        assert table.predict(got) <= dense_ms / r.target * (1 + 1e-9)
        assert model_output(pruned, torch.randint(0, 120, (2, 7))).isfinite().all()


def test_stitched_projection_has_the_database_loss(tables):
    """Damping 0: the stitched down-projection's error on the calibration Hessian equals the level's loss."""
    import copy

    model = tiny_model("gpt2")
    db, hessians = _db(model, damp=0.0, windows=torch.randint(0, 120, (16, 32), generator=torch.Generator().manual_seed(1)))
    adapter = adapter_for(model)
    mod = db.module(1, "ffn")
    level = mod.levels[len(mod.levels) // 2]
    pruned = stitch(copy.deepcopy(model), db, hessians, {(1, "ffn"): level})
    w = adapter.ffn_out_weight(adapter.layers(model)[1]).detach().double()
    w_hat = torch.zeros_like(w)
    w_hat[:, list(level.kept)] = adapter.ffn_out_weight(adapter.layers(pruned)[1]).detach().double()
    d = w - w_hat
    h = hessians[1].ffn.double()
    assert 0.5 * float(torch.einsum("ri,ij,rj->", d, h, d)) == pytest.approx(level.loss, rel=1e-3)
    # reconstruction beats simply deleting the same neurons
    d0 = w.clone()
    d0[:, list(level.kept)] = 0
    assert level.loss < 0.5 * float(torch.einsum("ri,ij,rj->", d0, h, d0))


def test_uniform_mode_gives_the_same_shape_in_every_layer(tables):
    model = tiny_model("llama")
    db, _ = _db(model)
    (r,) = search(db, tables["llama"], [1.4], uniform=True)
    assert r.reachable and len({(s.heads, s.kv, s.ffn) for s in r.shape.layers}) == 1


def test_database_round_trips_through_disk(tmp_path):
    model = tiny_model("bert")
    db, hessians = _db(model)
    save_database(db, hessians, tmp_path / "db")
    db2, h2 = load_database(tmp_path / "db")
    assert db2 == db
    assert all(torch.equal(a.ffn, b.ffn) and torch.equal(a.attn, b.attn) for a, b in zip(hessians, h2))


def test_gqa_database_whole_kv_groups():
    model = tiny_model("llama")  # 6 heads in 3 KV groups
    db, _ = _db(model, attention="whole-groups")
    attn = db.module(0, "attn")
    assert attn.unit == "kv_group" and attn.group == 2 and [lv.units for lv in attn.levels] == [3, 2, 1, 0]
    assert [attn.attention_shape(lv) for lv in attn.levels] == [(6, 3), (4, 2), (2, 1), (0, 0)]
    assert attn.levels[-1].rel_loss == pytest.approx(1.0, abs=0.05)


def test_gqa_database_heads_within_kv_groups():
    model = tiny_model("llama")  # 6 heads in 3 KV groups of 2
    db, _ = _db(model)
    attn = db.module(0, "attn")
    assert attn.unit == "gqa_head" and attn.group == 2
    assert [(lv.units, lv.kv) for lv in attn.levels] == [(6, 3), (4, 2), (3, 3), (2, 2), (2, 1), (1, 1), (0, 0)]
    assert attn.levels[0].rel_loss == 0.0 and attn.levels[-1].rel_loss == pytest.approx(1.0, abs=0.05)
    for lv in attn.levels:  # kept heads spread evenly over lv.kv groups
        groups = [h // 2 for h in lv.kept]
        assert len(set(groups)) == lv.kv and all(groups.count(g) == lv.units // max(lv.kv, 1) for g in groups)


@pytest.mark.parametrize("attention", ["heads-in-groups", "whole-groups"])
def test_gqa_levels_stitch_to_their_shape_and_loss(attention):
    """Each attention level, stitched alone, gives the level's (heads, kv_heads) and the o_proj the OBS loss."""
    import copy

    model = tiny_model("llama")
    db, hessians = _db(model, damp=0.0, windows=torch.randint(0, 120, (16, 32), generator=torch.Generator().manual_seed(1)),
                       attention=attention)
    adapter = adapter_for(model)
    mod = db.module(2, "attn")
    w = adapter.attn_out_weight(adapter.layers(model)[2]).detach().double()
    h = hessians[2].attn.double()
    for level in mod.levels[1:-1]:
        pruned = stitch(copy.deepcopy(model), db, hessians, {(2, "attn"): level})
        heads, kv = mod.attention_shape(level)
        got = adapter_for(pruned).shape_of(pruned).layers[2]
        assert (got.heads, got.kv) == (heads, kv)
        kept = [c for u in level.kept for c in range(u * mod.unit_cols, (u + 1) * mod.unit_cols)]
        w_hat = torch.zeros_like(w)
        w_hat[:, kept] = adapter.attn_out_weight(adapter.layers(pruned)[2]).detach().double()
        d = w - w_hat
        assert 0.5 * float(torch.einsum("ri,ij,rj->", d, h, d)) == pytest.approx(level.loss, rel=1e-2,
                                                                                abs=1e-4 * mod.energy)
        assert model_output(pruned, torch.randint(0, 120, (2, 7))).isfinite().all()


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_block_by_block_hessians_equal_whole_model_hessians(family):
    from ziplm_deploy.models import LayerPlan, shrink
    from ziplm_deploy.prune.hessian import collect_hessians_sequential

    model = tiny_model(family)
    shrink(model, [LayerPlan(heads=()), LayerPlan(), LayerPlan(ffn=()), LayerPlan()])  # blocks may be missing
    windows = torch.randint(0, 120, (6, 12), generator=torch.Generator().manual_seed(2))
    whole = collect_hessians(model, windows, batch_size=4, progress=False)
    blocks = collect_hessians_sequential(model, windows, batch_size=4, progress=False)
    for a, b in zip(whole, blocks):
        assert (a.attn is None) == (b.attn is None) and (a.ffn is None) == (b.ffn is None)
        for x, y in ((a.attn, b.attn), (a.ffn, b.ffn)):
            if x is not None:
                assert torch.allclose(x, y, rtol=1e-5, atol=1e-6 * float(x.abs().max()))
        assert a.tokens == b.tokens == 72


def test_spdy_never_does_worse_than_the_plain_dp(tables):
    from ziplm_deploy.prune.family import PruneConfig
    from ziplm_deploy.prune.spdy import calibration_score, spdy_search

    model = tiny_model("llama")
    db, hessians = _db(model)
    windows = torch.randint(0, 120, (8, 16), generator=torch.Generator().manual_seed(3))
    (plain,) = search(db, tables["llama"], [1.5])
    best = spdy_search(model, db, hessians, tables["llama"], plain, windows,
                       PruneConfig(spdy_samples=6, seed=1), log=lambda s: None)
    import copy

    def score(r):
        return calibration_score(stitch(copy.deepcopy(model), db, hessians, r.levels), windows[:8])

    assert best.reachable and best.predicted_ms <= tables["llama"].predict(tables["llama"].dense_shape()) / 1.5 * (1 + 1e-9)
    assert score(best) <= score(plain) + 1e-9
