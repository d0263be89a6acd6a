"""FLOP models through the deployment path: kept ranks in the shape, save/load, ONNX export, the latency
table's low-rank entries measured in ONNX Runtime, and the ``flop`` command."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from families import PLANS, model_output, ort_session, tiny_llama_for, tiny_model
from ziplm_deploy.core.errors import UserError
from ziplm_deploy.core.shape import LayerShape, ModelShape
from ziplm_deploy.distill.flop import FlopConfig, flop_prune
from ziplm_deploy.export import export_onnx
from ziplm_deploy.models import LayerPlan, adapter_for, apply_ranks, load_model, save_model, shrink
from ziplm_deploy.models.surgery import LowRankLinear


def _with_ranks(shape: ModelShape, ranks: dict[int, tuple[tuple[str, int], ...]]) -> ModelShape:
    return ModelShape(tuple(LayerShape(s.heads, s.ffn, s.kv_heads, s.dropped, ranks.get(i, s.ranks))
                            for i, s in enumerate(shape.layers)))


def test_full_rank_factorisation_equals_the_dense_model_and_low_ranks_reload(family, tmp_path):
    model = tiny_model(family)
    ids = torch.randint(1, 120, (2, 9))
    dense = model_output(model, ids)
    adapter = adapter_for(model)
    roles = sorted(adapter.ffn_linear_paths)
    shape = ModelShape.from_model(model)
    full = min(48, shape.layers[0].ffn)
    apply_ranks(model, _with_ranks(shape, {i: tuple((r, full) for r in roles) for i in range(4)}))
    assert (model_output(model, ids) - dense).abs().max().item() < 1e-5
    # a pruned model with some Linears at low rank: the shape says so, and the directory loads back
    low = tiny_model(family)
    shrink(low, PLANS[family])
    pruned = ModelShape.from_model(low)
    with_ffn = [i for i, s in enumerate(pruned.layers) if s.ffn]
    apply_ranks(low, _with_ranks(pruned, {with_ffn[0]: (("down", 2),), with_ffn[1]: ((roles[-1], 5), ("down", 3))}))
    got = ModelShape.from_model(low)
    assert got.layers[with_ffn[0]].rank_of == {"down": 2} and got.has_ranks
    assert isinstance(adapter.ffn_out_proj(adapter.layers(low)[with_ffn[0]]), LowRankLinear)
    save_model(low, tmp_path / "low")
    again = load_model(tmp_path / "low")
    assert ModelShape.from_model(again) == got
    assert torch.equal(model_output(again, ids), model_output(low, ids))


def test_apply_shape_factorises_the_ranks_of_a_shape_file():
    from ziplm_deploy.models import apply_shape

    model = tiny_model("gpt2")
    ids = torch.randint(1, 120, (2, 7))
    want = ModelShape((LayerShape(2, 192, ranks=(("up", 48),)), LayerShape(dropped=True), LayerShape(4, 100),
                       LayerShape(4, 192, ranks=(("down", 6), ("up", 9)))))
    apply_shape(model, want)
    assert ModelShape.from_model(model) == want.validate(adapter_for(model).arch(model))
    assert torch.isfinite(model_output(model, ids)).all()


def test_factorised_ffn_neurons_cannot_be_pruned():
    model = tiny_model("llama")
    shape = ModelShape.from_model(model)
    apply_ranks(model, _with_ranks(shape, {1: (("up", 4),)}))
    with pytest.raises(UserError, match="neurons of a factorised FFN cannot be removed"):
        shrink(model, [LayerPlan(), LayerPlan(ffn=tuple(range(40))), LayerPlan(), LayerPlan()])
    with pytest.raises(UserError, match="already factorised at rank 4, not 6"):
        apply_ranks(model, _with_ranks(shape, {1: (("up", 6),)}))
    # whole blocks and layers still go
    shrink(model, [LayerPlan(), LayerPlan(heads=()), LayerPlan(dropped=True), LayerPlan()])
    assert ModelShape.from_model(model).layers[1].rank_of == {"up": 4}


@pytest.mark.slow  # ~15 s each quiet: FLOP training + export (CI runs -m slow too)
@pytest.mark.parametrize("fam", ["gpt2", "llama"])
def test_flop_pruned_model_exports_to_onnx_and_matches(fam, tmp_path):
    torch.manual_seed(0)
    model = tiny_model(fam)
    shrink(model, [LayerPlan(), LayerPlan(dropped=True), LayerPlan(heads=()), LayerPlan()])
    windows = torch.randint(1, 120, (8, 12), generator=torch.Generator().manual_seed(0))
    result = flop_prune(model, windows, FlopConfig(target=0.6, steps=80, warmup=20, lr=1e-3, gate_lr=0.2))
    shape = ModelShape.from_model(model)
    assert shape.has_ranks and sorted(dict(shape.layers[0].ranks)) == sorted(adapter_for(model).ffn_linear_paths)
    assert result.sparsity(model) > 0.2  # ranks were closed (the parameter-neutral start is ~0)
    export = export_onnx(model, tmp_path / "flop.onnx", with_past=True)
    assert all(d.ok for d in export.diffs)
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "flop.onnx")).metadata_props}
    assert ModelShape.from_json(json.loads(meta["ziplm_shape"])) == shape
    sess = ort_session(tmp_path / "flop.onnx")
    ids = torch.randint(1, 120, (3, 11))
    feeds = {"input_ids": ids.numpy(), "attention_mask": np.ones((3, 11), dtype=np.int64),
             "position_ids": np.tile(np.arange(11), (3, 1))}
    assert np.abs(sess.run(None, feeds)[0] - model_output(model, ids).numpy()).max() < 1e-4


def test_profiler_times_low_rank_linears_and_predicts_flop_shapes():
    """Real ORT sessions on a small Llama: a rank grid per direction, the dense-Linear references, and
    end-to-end checks of shapes with factorised Linears (timing values are not asserted)."""
    from ziplm_deploy.core.arch import arch_from_config
    from ziplm_deploy.profiling.profiler import ProfileOptions, check, profile, random_shapes
    from ziplm_deploy.runtime.timing import Protocol

    arch = arch_from_config({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
                             "num_key_value_heads": 2, "intermediate_size": 96, "vocab_size": 200})
    opts = ProfileOptions(seq=16, ffn_step=32, rank_step=24, protocol=Protocol(warmup=1, rounds=5, recheck=2))
    table = profile(arch, opts, progress=False)
    assert [(e.linear, e.rank) for e in table.lowrank] == [(k, r) for k in ("in", "out") for r in (24, 48, 64)]
    assert {"linear:in", "linear:out"} <= set(table.references)
    shapes = [s for s in random_shapes(arch, 6, seed=3, p_rank=0.6) if s.has_ranks]
    assert shapes
    report = check(table, shapes, opts, progress=False, protocol=Protocol(warmup=1, rounds=2, recheck=1))
    assert all(np.isfinite(r.predicted_ms) and r.measured.n == 2 for r in report.results)
    without = profile(arch, ProfileOptions(seq=16, ffn_step=32, protocol=Protocol(warmup=1, rounds=5, recheck=1)),
                      progress=False)
    assert not without.lowrank and "linear:in" not in without.references


@pytest.fixture(scope="module")
def flop_dirs(tmp_path_factory):
    from ziplm_deploy.core.table import LatencyTable
    from ziplm_deploy.models.assets import smollm2_dir
    from ziplm_deploy.models.tokenizer import load_tokenizer
    from ziplm_deploy.profiling.profiler import ProfileOptions, profile
    from ziplm_deploy.runtime.timing import Protocol

    root = tmp_path_factory.mktemp("flop-cli")
    tokenizer = load_tokenizer(smollm2_dir())
    model = tiny_llama_for(tokenizer, layers=2)
    save_model(model, root / "dense", tokenizer=tokenizer)
    arch = adapter_for(model).arch(model)
    table = profile(arch, ProfileOptions(seq=16, rank_step=16, protocol=Protocol(warmup=1, rounds=5, recheck=2)),
                    progress=False)
    table.save(root / "table.json")
    LatencyTable.build(table.fingerprint, arch, table.protocol, list(table.attention), list(table.ffn),
                       {k: v for k, v in table.references.items() if not k.startswith("linear:")}).save(root / "plain.json")
    shrunk = shrink(copy.deepcopy(model), [LayerPlan(ffn=tuple(range(32))), LayerPlan()])
    save_model(shrunk, root / "pruned", tokenizer=tokenizer)
    (root / "text.txt").write_text("\n\n".join("The miller grinds grain into flour for the town. " * (i % 4 + 2)
                                              for i in range(20)))
    return root


def _fails(capsys, argv, message):
    from ziplm_deploy.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow  # ~18 s quiet (CI runs -m slow too)
def test_flop_command_end_to_end_and_its_input_errors(flop_dirs, capsys, tmp_path):
    from ziplm_deploy.cli import main

    root = flop_dirs
    base = ["flop", "--model", str(root / "dense"), "--data", str(root / "text.txt"), "--seq-len", "16",
            "--steps", "12", "--warmup", "4", "--batch-size", "2", "--eval-windows", "2", "--gate-lr", "0.2",
            "--no-progress"]
    out = tmp_path / "flop"
    assert main(base + ["--target-sparsity", "0.5", "--out", str(out), "--table", str(root / "table.json")]) == 0
    printed = capsys.readouterr().out
    assert "Linears factorised" in printed and "predicted speedup" in printed
    model = load_model(out)
    shape = ModelShape.from_model(model)
    assert all(s.rank_of.keys() == {"gate", "up", "down"} for s in shape.layers)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "flop" and manifest["shape"] == shape.to_json()
    assert manifest["metrics"]["predicted_speedup"] > 0 and manifest["metrics"]["heldout_ppl_after"] > 1
    assert len(json.loads((out / "flop.json").read_text())["history"]) == 12
    assert main(["inspect", str(out)]) == 0
    listing = capsys.readouterr().out
    assert "FLOP ranks" in listing and f"down={shape.layers[0].rank_of['down']}" in listing
    # verify: the exported FLOP model beside the dense one, with the table's low-rank prediction
    report = tmp_path / "verify.json"
    assert main(["verify", "--baseline", str(root / "dense"), "--candidate", str(out), "--table",
                 str(root / "table.json"), "--seq", "16", "--rounds", "3", "--warmup", "1", "--report", str(report)]) in (0, 1)
    capsys.readouterr()
    sp = json.loads(report.read_text())["speedup"]
    assert sp["prediction_source"] == "table"
    assert sp["predicted"] == pytest.approx(manifest["metrics"]["predicted_speedup"], rel=1e-4)
    assert json.loads(report.read_text())["parity"]["ok"]
    # FLOP then KD from the dense model: the factorised student trains and keeps its ranks
    kd = tmp_path / "kd"
    assert main(["distill", "--student", str(out), "--teacher", str(root / "dense"), "--data", str(root / "text.txt"),
                 "--out", str(kd), "--steps", "2", "--seq-len", "16", "--batch-size", "2", "--eval-windows", "2",
                 "--save-every", "0", "--no-progress"]) == 0
    capsys.readouterr()
    assert ModelShape.from_model(load_model(kd / "model")) == shape
    _fails(capsys, base + ["--target-sparsity", "0.5", "--out", str(out)], "already exists")
    _fails(capsys, base + ["--target-sparsity", "1.5", "--out", str(tmp_path / "x")], "target sparsity must be < 1, got 1.5")
    _fails(capsys, base + ["--target-sparsity", "0.5", "--out", str(tmp_path / "x"), "--table", str(root / "plain.json")],
           "has no low-rank entries")
    pruned = ["--model", str(root / "pruned")]
    _fails(capsys, base[:1] + pruned + base[3:] + ["--target-sparsity", "0.5", "--out", str(tmp_path / "x"),
                                                   "--table", str(root / "table.json")], "dense FFN width only")
    _fails(capsys, base[:1] + ["--model", str(out)] + base[3:] + ["--target-sparsity", "0.5", "--out", str(tmp_path / "y")],
           "already factorised")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def _synthetic_low_rank_table(model_dir, out):
    """A synthetic table (``linear_table``'s linear costs) with low-rank entries that cost ``rank / 32`` of the
    dense Linear: deterministic predictions (on the tiny model the *measured* factorised pair is never faster than
    the dense Linear, and its blocks are a sliver of the time, so no target would be reachable)."""
    from families import linear_table
    from ziplm_deploy.core.table import LatencyTable, RankEntry, Stats

    linear_table(model_dir, out)
    table = LatencyTable.load(out)
    dense_linear = Stats(0.045, 0.05, 0.06, 10)
    refs = {**table.references, "linear:in": dense_linear, "linear:out": dense_linear}
    low = [RankEntry(kind, r, Stats(0.045 * r / 32, 0.05 * r / 32, 0.06 * r / 32, 10))
           for kind in ("in", "out") for r in (8, 16, 24, 32)]
    LatencyTable.build(table.fingerprint, table.arch, table.protocol, list(table.attention), list(table.ffn), refs,
                       low).save(out)
    return LatencyTable.load(out)


@pytest.fixture(scope="module")
def flop_method_dirs(tmp_path_factory):
    """A tiny Llama with SmolLM2's tokenizer, calibration text, and synthetic tables (deterministic predictions):
    ``table.json`` with low-rank entries, ``plain.json`` without."""
    from families import linear_table
    from ziplm_deploy.models.assets import smollm2_dir
    from ziplm_deploy.models.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("flop-method")
    tokenizer = load_tokenizer(smollm2_dir())
    save_model(tiny_llama_for(tokenizer, layers=2), root / "dense", tokenizer=tokenizer)
    (root / "text.txt").write_text("\n\n".join("The miller grinds grain into flour for the town. " * (i % 4 + 2)
                                              for i in range(20)))
    linear_table(root / "dense", root / "plain.json")
    _synthetic_low_rank_table(root / "dense", root / "table.json")
    return root


def test_flop_is_a_pruning_method_with_speedup_targets(flop_method_dirs, capsys, tmp_path):
    """`prune --method flop`: for each speedup target, FLOP trained towards the FFN sparsity the table predicts for
    it; the member's prediction is its own ranks', its manifest records the calibration (verify measures quality on
    the windows it did not train on); an unreachable target is reported; a table without low-rank entries, or a
    pipeline that would profile none, is refused before any work."""
    from ziplm_deploy.cli import main
    from ziplm_deploy.core.table import LatencyTable
    from ziplm_deploy.distill.flop import sparsity_for_speedup
    from ziplm_deploy.pipeline.run import run_pipeline
    from ziplm_deploy.pipeline.spec import PipelineSpec, ProfileSpec, PruneSpec

    root = flop_method_dirs
    table = LatencyTable.load(root / "table.json")
    sparsity, most = sparsity_for_speedup(table, ("down", "gate", "up"), 1.2)
    assert 0.1 < sparsity < 1 and most > 1.2 and sparsity_for_speedup(table, ("down", "gate", "up"), most * 2)[0] is None
    base = ["prune", "--model", str(root / "dense"), "--calib", str(root / "text.txt"), "--method", "flop",
            "--seq-len", "16", "--windows", "8", "--flop-steps", "6", "--no-progress"]
    out = tmp_path / "run"  # 6 steps: FLOP lands short of the sparsity it aims at (deterministic on the tiny model)
    assert main(base + ["--table", str(root / "table.json"), "--targets", "1.2", f"{most * 2:.1f}", "--out",
                        str(out)]) == 1
    printed = capsys.readouterr().out
    assert "FLOP towards 20.3% FFN parameter sparsity (6 steps)" in printed
    assert "of the 20.3% it aimed at, predicted 1.1" in printed and "not saved (train longer: --flop-steps)" in printed
    assert "unreachable with flop" in printed
    short, unreached = json.loads((out / "family-flop.json").read_text())["members"]
    assert not short["reachable"] and short["path"] is None and not list(out.glob("flop-1.2x*"))
    assert not unreached["reachable"] and unreached["max_speedup"] == pytest.approx(most, rel=1e-3)

    _fails(capsys, base + ["--table", str(root / "plain.json"), "--targets", "1.1", "--out", str(tmp_path / "x")],
           "has no low-rank entries")
    assert not (tmp_path / "x").exists()
    with pytest.raises(UserError, match="prune.method flop factorises FFN Linears.*profile.rank_step: 32"):
        PipelineSpec(model=str(root / "dense"), prune=PruneSpec(method="flop"))
    spec = PipelineSpec(model=str(root / "dense"), prune=PruneSpec(method="flop", calib=str(root / "text.txt")),
                        profile=ProfileSpec(table=str(root / "plain.json")))
    with pytest.raises(UserError, match="has no low-rank entries"):
        run_pipeline(spec, tmp_path / "p", log=lambda s: None, progress=False)
    assert not (tmp_path / "p").exists()
    # the same method from a pipeline file, trained long enough to reach the target: the member is predicted from
    # the ranks it ended with, its manifest records the calibration (verify's held-out windows) and the steps
    ok = PipelineSpec(model=str(root / "dense"), profile=ProfileSpec(table=str(root / "table.json")),
                      prune=PruneSpec(method="flop", targets=(1.2,), calib=str(root / "text.txt"), windows=8,
                                      seq_len=16, flop_steps=100), export=None, verify=None, report=False)
    (member,) = run_pipeline(ok, tmp_path / "q", log=lambda s: None, progress=False).members
    shape = ModelShape.from_model(load_model(member["path"]))
    assert member["reachable"] and shape.has_ranks and shape.to_json() == member["shape"]
    assert member["predicted_speedup"] == pytest.approx(table.speedup(shape), rel=1e-3) and table.speedup(shape) >= 1.19
    manifest = json.loads((Path(member["path"]) / "manifest.json").read_text())
    assert manifest["method"] == "flop" and manifest["options"]["windows"] == 8 and manifest["options"]["flop_steps"] == 100
    # flop's steps belong to flop
    capsys.readouterr()
    _fails(capsys, ["prune", "--model", str(root / "dense"), "--calib", str(root / "text.txt"), "--table",
                    str(root / "table.json"), "--flop-steps", "5", "--out", str(tmp_path / "z")],
           "flop_steps is for --method flop, not ziplm")
    with pytest.raises(UserError, match="prune.flop_steps is for method flop, not ziplm"):
        PruneSpec(flop_steps=5)


def test_flop_refuses_an_encoder(tmp_path):
    from families import linear_table
    from ziplm_deploy.core.table import LatencyTable
    from ziplm_deploy.prune.family import METHOD_REGISTRY
    from ziplm_deploy.prune.search import LatencyModel

    save_model(tiny_model("bert"), tmp_path / "bert")
    linear_table(tmp_path / "bert", tmp_path / "t.json")
    with pytest.raises(UserError, match="flop trains with the causal LM loss, and a bert model is not a decoder"):
        METHOD_REGISTRY["flop"].check(LatencyModel.of_table(LatencyTable.load(tmp_path / "t.json")))
