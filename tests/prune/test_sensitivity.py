"""Measured end-to-end sensitivities: real stitched tiny models scored against the dense one."""

from __future__ import annotations

import pytest
import torch

from families import tiny_model
from ziplm_deploy.models import adapter_for
from ziplm_deploy.prune.database import Level, ModuleDb, build_database
from ziplm_deploy.prune.hessian import collect_hessians
from ziplm_deploy.prune.sensitivity import Probe, level_costs, measure_probes, probe_levels, sensitivity_costs


def _database(model, size, seed):
    """Calibration windows, Hessians and the OBS database of a tiny model."""
    adapter = adapter_for(model)
    windows = torch.randint(0, 120, size, generator=torch.Generator().manual_seed(seed))
    hessians = collect_hessians(model, windows, progress=False)
    weights = [(adapter.attn_out_weight(l), adapter.ffn_out_weight(l)) for l in adapter.layers(model)]
    db = build_database(weights, hessians, adapter.arch(model), ffn_step=8, damp=0.01, calibration={}, progress=False)
    return windows, hessians, db


def _module(units):
    levels = tuple(Level(u, tuple(range(u)), 0.0, (units[0] - u) / units[0]) for u in units)
    return ModuleDb(0, "ffn", "neuron", 1, 1.0, levels)


def test_probe_levels_pick_distinct_levels_near_the_fractions():
    assert [lv.units for lv in probe_levels(_module([4, 3, 2, 1, 0]))] == [3, 2, 1, 0]  # few: every non-dense one
    picked = probe_levels(_module(list(range(64, -1, -8))))
    assert [lv.units for lv in picked] == [48, 32, 16, 0]


def test_level_costs_of_a_lattice_never_decrease_in_obs_loss():
    """GQA head levels are not nested: the cost is monotone in OBS loss, not in list order; a probe of one of
    two levels with as many heads leaves the other interpolated."""
    levels = (Level(6, (0, 1, 2, 3, 4, 5), 0.0, 0.0, 3), Level(4, (0, 1, 2, 3), 0.0, 0.4, 2),
              Level(3, (0, 2, 4), 0.0, 0.2, 3), Level(2, (0, 1), 0.0, 0.7, 1), Level(2, (0, 2), 0.0, 0.5, 2),
              Level(0, (), 0.0, 1.0, 0))
    m = ModuleDb(0, "attn", "gqa_head", 8, 1.0, levels, 2)
    costs = level_costs(m, [Probe(3, 0.2, 0.3, 3), Probe(2, 0.7, 0.2, 1), Probe(0, 1.0, 2.0, 0)])
    assert costs[0] == 0.0 and costs[2] == pytest.approx(0.3)
    assert costs[1] == pytest.approx(0.3)  # interpolated below the 0.3 measured at a lower loss: raised to it
    assert costs[4] == pytest.approx(0.3) and costs[3] == pytest.approx(0.3)  # measured 0.2: never below
    assert costs[5] == pytest.approx(2.0)
    by_loss = [c for _, c in sorted(zip([lv.rel_loss for lv in levels], costs))]
    assert by_loss == sorted(by_loss)


def test_level_costs_interpolate_measured_damage_and_never_decrease():
    m = _module(list(range(64, -1, -8)))
    probes = [Probe(48, 0.25, 0.2), Probe(32, 0.5, 0.1), Probe(16, 0.75, 0.9), Probe(0, 1.0, 3.0)]
    costs = level_costs(m, probes)
    assert costs[0] == 0.0  # dense
    assert costs[1] == pytest.approx(0.1)  # 56 units: halfway to the 48-unit probe (0.2)
    assert costs[2] == pytest.approx(0.2)  # measured
    assert costs[4] == pytest.approx(0.2)  # measured 0.1 but removing more never costs less
    assert costs[-1] == pytest.approx(3.0)
    assert costs == sorted(costs)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_measured_probes_are_zero_for_dense_and_grow_with_removal(family):
    model = tiny_model(family).eval()
    windows, hessians, db = _database(model, (4, 16), seed=0)
    probes = measure_probes(model, db, hessians, windows, progress=False)
    assert set(probes) == {(m.layer, m.kind) for m in db.modules}
    for m in db.modules:
        ps = probes[(m.layer, m.kind)]
        assert ps and all(p.damage >= 0 for p in ps)
        removed = [p for p in ps if p.units == 0]
        assert removed and removed[0].damage > 0  # removing a whole module of a random model changes its output
    costs = sensitivity_costs(db, probes)
    for m in db.modules:
        assert len(costs[(m.layer, m.kind)]) == len(m.levels) and costs[(m.layer, m.kind)][0] == 0.0


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_in_place_probe_equals_the_physically_stitched_model(family):
    """The fast decoder path (output projection swapped, restored after) measures what stitching measures."""
    import copy

    from ziplm_deploy.prune.sensitivity import _stitched, _swapped, _outputs, damage

    model = tiny_model(family).eval()
    windows, hessians, db = _database(model, (3, 12), seed=1)
    before = copy.deepcopy(model.state_dict())
    reference = _outputs(model, windows, 4)
    for m in [m for m in db.modules if m.layer in (0, max(x.layer for x in db.modules))]:
        for level in probe_levels(m):
            with _swapped(model, db, hessians, m, level) as swapped:
                fast = damage(reference, _outputs(swapped, windows, 4), True)
            with _stitched(model, db, hessians, m, level) as stitched:
                slow = damage(reference, _outputs(stitched, windows, 4), True)
            assert fast == pytest.approx(slow, rel=1e-4, abs=1e-7), (m.layer, m.kind, level.units, level.kv)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # restored exactly


def test_probe_cache_round_trips_and_refuses_what_does_not_fit(tmp_path):
    from ziplm_deploy.prune.sensitivity import load_probes, save_probes

    model = tiny_model("llama").eval()
    windows, hessians, db = _database(model, (2, 8), seed=0)
    probes = {(m.layer, m.kind): [Probe(lv.units, 0.5, 0.1 * lv.units, lv.kv) for lv in probe_levels(m)]
              for m in db.modules}
    path = tmp_path / "probes.json"
    save_probes(path, probes)
    assert load_probes(path, db) == probes
    import json

    payload = json.loads(path.read_text())
    first = next(iter(payload["modules"]))
    kv = 0 if first.endswith("attn") else None  # llama: attention levels carry their KV groups
    for bad in ([[999, 0.5, 0.1, kv]], [[0, 0.5, float("nan"), kv]], [[0, 0.5, -1.0, kv]], "x", [[True, 0.5, 0.1, kv]],
                [[0, 0.5, 0.1]], [[0, 0.5, 0.1, 7 if kv is None else None]], [[0, 0.5, 0.1, True]]):
        payload["modules"][first] = bad
        path.write_text(json.dumps(payload))
        assert load_probes(path, db) is None  # re-measured, never trusted
    path.write_text("{trunc")
    assert load_probes(path, db) is None
