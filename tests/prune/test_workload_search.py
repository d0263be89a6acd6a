"""The search budgets a workload's end-to-end time, TTFT or decode time per token (``LatencyModel``), on real
workload tables of a tiny Llama (profiled with fast options): each budget meets its target as
``WorkloadTables.predict`` says, the DP agrees with brute force on the workload metric, plain-table results are
what the one-table search gave before latency models, ``prune --workload-tables`` records the workload in the
family and manifests, bad input exits 2 in one line before any work, and the pipeline keys are strict."""

from __future__ import annotations

import json
from dataclasses import replace
from itertools import product
from pathlib import Path

import pytest
import yaml

from families import tiny_model
from ziplm_deploy.cli import main
from ziplm_deploy.core.errors import UserError
from ziplm_deploy.core.shape import LayerShape, ModelShape
from ziplm_deploy.core.workload import Workload, WorkloadTables, speedups
from ziplm_deploy.prune.search import BUDGETS, LatencyModel, Option, dp_select, module_options, search

WORKLOAD = Workload(16, 8)  # decode steps at KV 16 .. 22; tables at KV 16, 19, 22 (17, 18, 20, 21 interpolated)
FAST = ["--rounds", "3", "--warmup", "1", "--ffn-step", "16", "--no-progress"]
METRIC = {"e2e": "e2e", "ttft": "ttft", "decode": "decode"}  # budget -> key of core.workload.speedups
TEXT = "\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog near the river bank, "
                   f"while {i % 7} small birds sing in the old oak tree." for i in range(24))


def _tiny_llama():
    return tiny_model("llama", layers=2)  # 6 heads in 3 KV groups, FFN 80, vocabulary 120


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """A tiny Llama directory (word-level tokenizer), its workload tables (``profile --workload 16x8``), the
    tables of another architecture, calibration text, and the magnitude database of the model."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from ziplm_deploy.models import save_model
    from ziplm_deploy.prune.family import PruneConfig, _magnitude_database

    root = tmp_path_factory.mktemp("workload-search")
    words = ["[UNK]", "<s>", "</s>", *dict.fromkeys(TEXT.replace(",", " ").replace(".", " ").replace(":", " ").split())]
    vocab = {w: i for i, w in enumerate(words + [f"w{i}" for i in range(120 - len(words))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>", eos_token="</s>")
    model = _tiny_llama()
    save_model(model, root / "dense", tokenizer=tokenizer)
    (root / "text.txt").write_text(TEXT)
    assert main(["profile", "--model", str(root / "dense"), "--workload", "16x8", "--out", str(root / "tables"),
                 *FAST]) == 0
    other = root / "other"
    other.mkdir()
    config = json.loads((root / "dense" / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "intermediate_size": 64}))
    assert main(["profile", "--model", str(other), "--workload", "16x8", "--out", str(root / "other-tables"),
                 *FAST]) == 0
    assert main(["profile", "--model", str(root / "dense"), "--workload", "prefill-16", "--out",
                 str(root / "prefill-tables"), *FAST]) == 0
    tables = WorkloadTables.load(root / "tables")
    db = _magnitude_database(model, PruneConfig(ffn_step=16))
    return {"root": root, "tables": tables, "db": db, "manifest": root / "tables" / "workload.json"}


def _metric(tables: WorkloadTables, budget: str, shape: ModelShape) -> float:
    """The budget's metric straight from WorkloadTables.predict (not through the latency model)."""
    pred = tables.predict(shape)
    return {"e2e": pred.e2e_ms, "ttft": pred.ttft_ms, "decode": pred.ms_per_token}[budget]


def _shape(arch, units: dict[tuple[int, str], int]) -> ModelShape:
    return ModelShape(tuple(LayerShape(units[(i, "attn")] * arch.group_size, units[(i, "ffn")], units[(i, "attn")])
                            for i in range(arch.num_layers)))


def _targets(db, model: LatencyModel) -> list[float]:
    (far,) = search(db, model, [1000.0])
    assert not far.reachable and far.max_speedup > 1.2, far.max_speedup
    return [1.0, 1 + 0.3 * (far.max_speedup - 1), 1 + 0.7 * (far.max_speedup - 1), far.max_speedup * 1.01]


# --- the latency model -------------------------------------------------------------------------------
@pytest.mark.parametrize("budget", BUDGETS)
def test_option_times_and_constant_add_up_to_the_workload_metric(setup, budget):
    """Σ option_ms + constant_ms == WorkloadTables' TTFT / ms per token / end-to-end, for every combination."""
    tables, db = setup["tables"], setup["db"]
    model = LatencyModel.of_workload(tables, budget)
    modules = module_options(db, model)
    combos = list(product(*[range(len(opts)) for _, _, opts in modules]))
    for combo in combos[:: max(1, len(combos) // 60)]:
        units = {(layer, kind): opts[j].units for (layer, kind, opts), j in zip(modules, combo)}
        shape = _shape(tables.arch, units)
        total = sum(opts[j].time for (_, _, opts), j in zip(modules, combo)) + model.constant_ms
        assert total == pytest.approx(_metric(tables, budget, shape), rel=1e-9)
        assert model.predict(shape) == pytest.approx(_metric(tables, budget, shape), rel=1e-12)


def test_the_decode_budget_needs_decode_steps_and_budgets_are_known(setup):
    prefill_only = WorkloadTables.load(setup["root"] / "prefill-tables")
    with pytest.raises(UserError, match="has no decode step"):
        LatencyModel.of_workload(prefill_only, "decode")
    with pytest.raises(UserError, match="unknown budget 'fast'"):
        LatencyModel.of_workload(setup["tables"], "fast")
    # a prefill-only workload's e2e is its TTFT is the prefill table's latency
    shape = _shape(prefill_only.arch, {(i, k): 1 for i in range(2) for k in ("attn", "ffn")})
    for budget in ("e2e", "ttft"):
        assert LatencyModel.of_workload(prefill_only, budget).predict(shape) == pytest.approx(
            prefill_only.prefill.predict(shape), rel=1e-12)


def test_quantized_workload_speedups_are_over_the_fp32_dense_model(setup):
    """int8 workload tables: each metric's baseline is the fp32 dense model timed in each table's own run."""
    from ziplm_deploy.core.table import FP32_DENSE
    from ziplm_deploy.profiling.profiler import ProfileOptions
    from ziplm_deploy.profiling.workload import profile_workload
    from ziplm_deploy.runtime.quantize import Precision
    from ziplm_deploy.runtime.timing import Protocol

    fp32 = setup["tables"]
    opts = ProfileOptions(ffn_step=16, protocol=Protocol(warmup=1, rounds=3, recheck=2), precision=Precision("int8-dynamic"))
    tables = profile_workload(fp32.arch, WORKLOAD, opts, progress=False)

    def ref(t):
        return t.references[FP32_DENSE].get(t.statistic)

    weights = tables.decode_weights()
    decode = sum(w * ref(t) for w, t in zip(weights, tables.decode))
    want = {"ttft": ref(tables.prefill), "decode": decode / 7, "e2e": ref(tables.prefill) + decode}
    for budget in BUDGETS:
        model = LatencyModel.of_workload(tables, budget)
        assert model.precision == "int8-dynamic"
        assert model.baseline_ms() == pytest.approx(want[budget], rel=1e-12)
        assert LatencyModel.of_workload(fp32, budget).baseline_ms() == pytest.approx(
            LatencyModel.of_workload(fp32, budget).dense_ms(), rel=1e-12)  # fp32: the dense prediction


# --- the search under each budget ---------------------------------------------------------------------
@pytest.mark.parametrize("budget", BUDGETS)
def test_each_budget_meets_its_target_as_the_workload_tables_predict(setup, budget):
    tables, db = setup["tables"], setup["db"]
    model = LatencyModel.of_workload(tables, budget)
    dense = tables.predict(tables.dense_shape())
    targets = _targets(db, model)
    results = search(db, model, targets)
    assert [r.reachable for r in results] == [True, True, True, False]
    assert results[0].shape == tables.dense_shape().validate(tables.arch)
    for r in results[:3]:
        got = speedups(tables.predict(r.shape), dense)[METRIC[budget]]
        assert got >= r.target * (1 - 1e-9), (budget, r.target, got)
        assert r.predicted_speedup == pytest.approx(got, rel=1e-9)
        assert r.predicted_ms == pytest.approx(_metric(tables, budget, r.shape), rel=1e-9)
    assert results[1].loss <= results[2].loss  # a tighter budget never costs less


def test_the_ttft_budget_is_the_prefill_tables_search(setup):
    tables, db = setup["tables"], setup["db"]
    model = LatencyModel.of_workload(tables, "ttft")
    targets = _targets(db, model)[:3]
    for a, b in zip(search(db, model, targets), search(db, tables.prefill, targets)):
        assert a.units == b.units and a.predicted_ms == pytest.approx(b.predicted_ms, rel=1e-12)


@pytest.mark.parametrize("budget", BUDGETS)
def test_the_dp_agrees_with_brute_force_on_the_workload_metric(setup, budget):
    """Brute force over every shape of the database, feasibility judged by WorkloadTables.predict."""
    tables, db = setup["tables"], setup["db"]
    model = LatencyModel.of_workload(tables, budget)
    modules = module_options(db, model)
    dense = _metric(tables, budget, tables.dense_shape())
    rows = []
    for combo in product(*[range(len(opts)) for _, _, opts in modules]):
        units = {(layer, kind): opts[j].units for (layer, kind, opts), j in zip(modules, combo)}
        rows.append((sum(opts[j].cost for (_, _, opts), j in zip(modules, combo)),
                     _metric(tables, budget, _shape(tables.arch, units)), units))
    buckets = 2000
    for target in _targets(db, model)[1:3]:
        (r,) = search(db, model, [target], buckets=buckets)
        best = min((c, u) for c, t, u in rows if t <= dense / target)
        assert r.reachable and r.loss >= best[0] - 1e-12  # feasible, so never better than the optimum
        # times round up to buckets: at least as good as any shape with one bucket of slack per module
        step = (dense / target - model.constant_ms) / buckets
        slack = [c for c, t, _ in rows if t <= dense / target - len(modules) * step]
        assert not slack or r.loss <= min(slack) + 1e-12


# --- plain tables: the refactor moved no result -----------------------------------------------------------
def _old_search(db, table, targets, uniform=False, buckets=10000):
    """The one-table search as it was before latency models: raw table times, ``(T/target - beta)/alpha``."""
    from ziplm_deploy.prune.search import _uniform_select

    arch = table.arch
    gqa = arch.kv_heads != arch.heads
    modules = []
    for m in db.modules:
        opts = [Option(lv.units, table.attention_ms(lv.units * (arch.group_size if gqa else 1), lv.units if gqa else None)
                       if m.kind == "attn" else table.ffn_ms(lv.units), lv.rel_loss) for lv in m.levels]
        modules.append((m.layer, m.kind, opts))
    fixed = sum(table.attention_ms(0) for i in range(arch.num_layers) if db.module(i, "attn") is None)
    fixed += sum(table.ffn_ms(0) for i in range(arch.num_layers) if db.module(i, "ffn") is None)
    alpha, beta = table.calibration.alpha, table.calibration.beta
    dense_ms = table.predict(table.dense_shape())
    min_raw = sum(min(o.time for o in opts) for _, _, opts in modules)
    out = []
    for target in targets:
        raw_budget = (dense_ms / target - beta) / alpha - fixed
        if raw_budget < min_raw:
            out.append((False, dense_ms / (alpha * (min_raw + fixed) + beta), None))
            continue
        if target <= 1.0:
            picked = [max(range(len(opts)), key=lambda j: opts[j].units) for _, _, opts in modules]
        elif uniform:
            picked = _uniform_select([o for _, _, o in modules], [k for _, k, _ in modules], raw_budget)
        else:
            picked = dp_select([o for _, _, o in modules], raw_budget, buckets)
        units = None if picked is None else {(l, k): o[j].units for (l, k, o), j in zip(modules, picked)}
        out.append((picked is not None, dense_ms / (alpha * (min_raw + fixed) + beta), units))
    return out


@pytest.mark.parametrize("uniform", [False, True])
@pytest.mark.parametrize("absent", [False, True])
def test_plain_table_results_are_unchanged(setup, uniform, absent):
    """Every table of the set (prefill and decode), dense and gradual (blocks absent from the database)."""
    tables, db = setup["tables"], setup["db"]
    if absent:  # an earlier stage removed layer 0's attention and layer 1's FFN
        db = replace(db, modules=tuple(m for m in db.modules if (m.layer, m.kind) not in ((0, "attn"), (1, "ffn"))))
    for table in (tables.prefill, *tables.decode):
        (far,) = search(db, table, [1000.0])
        targets = [1.0, *(1 + f * (far.max_speedup - 1) for f in (0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 0.97)), 1000.0]
        new = search(db, table, targets, uniform=uniform)
        old = _old_search(db, table, targets, uniform=uniform)
        assert [r.reachable for r in new] == [ok for ok, _, _ in old]
        for r, (ok, max_speedup, units) in zip(new, old):
            assert r.max_speedup == pytest.approx(max_speedup, rel=1e-12)
            if ok:
                assert r.units == units, (table.fingerprint.mode, r.target)
                assert r.predicted_ms == table.predict(r.shape)


# --- the CLI ------------------------------------------------------------------------------------------------
def _prune_args(setup, out: Path, *extra: str) -> list[str]:
    root = setup["root"]
    return ["prune", "--model", str(root / "dense"), "--calib", str(root / "text.txt"), "--method", "magnitude",
            "--windows", "2", "--seq-len", "16", "--ffn-step", "16", "--no-eval", "--no-progress", "--out", str(out),
            *extra]


@pytest.mark.parametrize("budget", [None, "decode"])
def test_prune_workload_tables_records_the_workload(setup, tmp_path, capsys, budget):
    from ziplm_deploy.core.manifest import ModelManifest, file_sha256
    from ziplm_deploy.prune.family import FamilyReport

    tables = setup["tables"]
    model = LatencyModel.of_workload(tables, budget or "e2e")
    mid = round(_targets(setup["db"], model)[1], 3)
    out = tmp_path / "run"
    argv = _prune_args(setup, out, "--workload-tables", str(setup["root"] / "tables"), "--targets", "1", str(mid),
                       "1000", *(["--budget", budget] if budget else []))
    assert main(argv) == 1  # 1000x is unreachable
    text = capsys.readouterr().out
    words = {"e2e": "end-to-end time", "decode": "decode time per token"}[budget or "e2e"]
    assert f"workload 16x8 (prompt 16, generate 8, batch 1): targets are speedups of the {words}" in text
    family = FamilyReport.load(out / "family-magnitude.json")
    assert family.budget == (budget or "e2e") and family.workload == {"prompt": 16, "generate": 8, "batch": 1}
    assert family.table_sha256 == file_sha256(setup["manifest"])
    assert family.fingerprint == tables.prefill.fingerprint.to_json()
    dense = tables.predict(tables.dense_shape())
    assert family.dense_predicted_ms == pytest.approx(_metric(tables, budget or "e2e", tables.dense_shape()))
    assert family.dense_workload_prediction["speedup"] == {"ttft": 1.0, "decode": 1.0, "e2e": 1.0}
    assert [m.reachable for m in family.members] == [True, True, False]
    for member in family.members[:2]:
        shape = ModelShape.from_json(member.shape)
        pred, sp = tables.predict(shape), speedups(tables.predict(shape), dense)
        rec = member.workload_prediction
        assert rec["ttft_ms"] == pytest.approx(pred.ttft_ms, abs=1e-4)
        assert rec["ms_per_token"] == pytest.approx(pred.ms_per_token, abs=1e-4)
        assert rec["e2e_ms"] == pytest.approx(pred.e2e_ms, abs=1e-4) and rec["decode_steps"] == 7
        assert rec["speedup"] == pytest.approx({k: round(v, 4) for k, v in sp.items()})
        key = METRIC[budget or "e2e"]
        assert member.predicted_speedup == pytest.approx(sp[key], abs=1e-4)
        assert sp[key] >= member.target * (1 - 1e-9)
        manifest = ModelManifest.load(Path(member.path) / "manifest.json")
        assert manifest.options["budget"] == (budget or "e2e") and manifest.options["workload"]["generate"] == 8
        assert manifest.metrics["predicted_decode_speedup"] == rec["speedup"]["decode"]
        assert manifest.metrics["predicted_ttft_ms"] == rec["ttft_ms"]
        assert manifest.table_sha256 == family.table_sha256


@pytest.mark.parametrize("method", ["uniform", "layerchop"])
def test_every_method_budgets_the_workload(setup, tmp_path, capsys, method):
    tables = setup["tables"]
    dense = tables.predict(tables.dense_shape())
    out = tmp_path / "run"
    argv = _prune_args(setup, out, "--workload-tables", str(setup["manifest"]), "--budget", "decode",
                       "--targets", "1.05")
    argv[argv.index("magnitude")] = method
    assert main(argv) == 0, capsys.readouterr()
    family = json.loads((out / f"family-{method}.json").read_text())
    (member,) = family["members"]
    got = speedups(tables.predict(ModelShape.from_json(member["shape"])), dense)["decode"]
    assert family["budget"] == "decode" and got >= 1.05 and member["predicted_speedup"] == pytest.approx(got, abs=1e-4)


def refused(capsys, argv: list[str], *words: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for word in words:
        assert word in err, (word, err)
    return err


def test_prune_bad_workload_input_exits_2_before_any_work(setup, tmp_path, capsys):
    root, out = setup["root"], tmp_path / "run"
    tables = ["--workload-tables", str(root / "tables")]
    refused(capsys, _prune_args(setup, out, "--targets", "1.5"), "exactly one of --table", "--workload-tables")
    table = str(root / "tables" / "prefill_b1_s16.json")
    refused(capsys, _prune_args(setup, out, "--targets", "1.5", "--table", table, *tables), "exactly one of --table")
    refused(capsys, _prune_args(setup, out, "--targets", "1.5", *tables, "--budget", "fast"),
            "argument --budget: invalid choice: 'fast'")
    refused(capsys, _prune_args(setup, out, "--targets", "1.5", "--table", table, "--budget", "ttft"),
            "--budget needs --workload-tables")
    refused(capsys, _prune_args(setup, out, "--targets", "1.5", "--workload-tables", str(root / "other-tables")),
            "other-tables", "prefill table (seq 16)", "ffn=64", "ffn=80")
    refused(capsys, _prune_args(setup, out, "--targets", "1.5", "--workload-tables", str(root / "prefill-tables"),
                                "--budget", "decode"), "workload prefill-16 has no decode step")
    assert not out.exists()


def test_cli_budget_choices_are_the_searchs():
    from ziplm_deploy.cli import prune as cli_prune

    assert cli_prune.BUDGETS == BUDGETS


# --- family file strictness -----------------------------------------------------------------------------------
def test_family_workload_fields_are_strict_and_old_files_load(setup, tmp_path, capsys):
    from ziplm_deploy.prune.family import FamilyReport

    out = tmp_path / "run"
    model = LatencyModel.of_workload(setup["tables"], "ttft")
    mid = round(_targets(setup["db"], model)[1], 3)
    assert main(_prune_args(setup, out, "--workload-tables", str(setup["manifest"]), "--budget", "ttft",
                            "--targets", str(mid))) == 0
    capsys.readouterr()
    good = json.loads((out / "family-magnitude.json").read_text())
    assert FamilyReport.from_json(good, "f").budget == "ttft"
    old = {k: v for k, v in good.items() if k not in ("workload", "budget", "dense_workload_prediction")}
    old["members"] = [{k: v for k, v in m.items() if k != "workload_prediction"} for m in good["members"]]
    loaded = FamilyReport.from_json(old, "f")  # written before workload searches
    assert loaded.workload is None and loaded.budget is None and loaded.members[0].workload_prediction is None

    def bad(edit, *words):
        payload = json.loads(json.dumps(good))
        edit(payload)
        with pytest.raises(UserError) as e:
            FamilyReport.from_json(payload, "fam.json")
        for word in ("fam.json", *words):
            assert word in str(e.value), (word, str(e.value))

    bad(lambda p: p.update(budget="fast"), "budget is 'fast'")
    bad(lambda p: p.update(budget=None), "workload and budget go together")
    bad(lambda p: p.update(workload={"prompt": 16, "generate": "8", "batch": 1}), "workload.generate")
    bad(lambda p: p["members"][0]["workload_prediction"]["speedup"].update(decode="fast"),
        "members[0].workload_prediction.speedup.decode")
    bad(lambda p: p["members"][0]["workload_prediction"].update(ms_per_token=None),
        "members[0].workload_prediction.ms_per_token")
    bad(lambda p: p["members"][0]["workload_prediction"].update(extra=1), "members[0].workload_prediction.extra")
    bad(lambda p: p["dense_workload_prediction"].update(ttft_ms=True), "dense_workload_prediction.ttft_ms")
    bad(lambda p: p["dense_workload_prediction"]["speedup"].pop("e2e"), "dense_workload_prediction.speedup.e2e")


# --- pipeline files -------------------------------------------------------------------------------------------
def _pipeline(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("bad, message", [
    ({"prune": {"budget": "decode"}}, "prune.budget needs prune.workload_tables"),
    ({"prune": {"workload_tables": "t", "budget": "fast"}}, "prune.budget 'fast' is unknown"),
    ({"prune": {"workload_tables": 5}}, "'prune.workload_tables' must be a string"),
    ({"prune": {"workload_tables": "t", "budget": 2}}, "'prune.budget' must be a string"),
    ({"prune": {"workload_table": "t"}}, "unknown key 'prune.workload_table'"),
    ({"prune": {"workload_tables": "t"}, "profile": {"table": "x.json"}}, "replaces the profile stage"),
    ({"prune": {"workload_tables": "t"}, "profile": {"seq": 64}}, "replaces the profile stage"),
])
def test_pipeline_workload_keys_are_strict(tmp_path, bad, message):
    from ziplm_deploy.pipeline.spec import PipelineSpec

    with pytest.raises(UserError, match=message):
        PipelineSpec.load(_pipeline(tmp_path, {"model": "m", **bad}))


def test_pipeline_workload_paths_are_relative_to_the_file(tmp_path):
    from ziplm_deploy.pipeline.spec import PipelineSpec

    spec = PipelineSpec.load(_pipeline(tmp_path, {"model": "m", "prune": {"workload_tables": "t/workload.json"}}))
    assert spec.prune.workload_tables == str((tmp_path / "t" / "workload.json").resolve())
    assert spec.prune.budget is None


def test_pipeline_prunes_on_the_workload_and_refuses_bad_tables_before_work(setup, tmp_path, capsys):
    root = setup["root"]
    model = LatencyModel.of_workload(setup["tables"], "decode")
    mid = round(_targets(setup["db"], model)[1], 3)
    prune = {"method": "magnitude", "targets": [mid], "windows": 2, "seq_len": 16, "ffn_step": 16,
             "calib": str(root / "text.txt"), "workload_tables": str(root / "tables"), "budget": "decode"}
    spec = {"model": str(root / "dense"), "prune": prune, "export": False, "verify": False, "report": False}
    run = tmp_path / "run"
    for edit, words in (({"workload_tables": str(root / "other-tables")}, ("prefill table (seq 16)", "ffn=64")),
                        ({"workload_tables": str(root / "prefill-tables")}, ("has no decode step",))):
        assert main(["run", str(_pipeline(tmp_path, {**spec, "prune": {**prune, **edit}})), "--out", str(run),
                     "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and all(w in err for w in words), err
        assert not run.exists()
    verify = {**spec, "verify": {"seq": 128}}
    assert main(["run", str(_pipeline(tmp_path, verify)), "--out", str(run), "--no-progress"]) == 2
    assert "set verify.seq: 16 and verify.batch: 1" in capsys.readouterr().err

    # a generating workload's prefill table times the LM head on the last position (GenAI's first token): a plain
    # prefill pass of the exported graph (every position's logits) is not what it predicts: refused before any work
    spec.update(export={}, verify={"seq": 16, "rounds": 3})
    assert main(["run", str(_pipeline(tmp_path, spec)), "--out", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "last position only" in err and "verify.generation: true" in err, err
    assert not run.exists()
    spec.update(verify=False)
    assert main(["run", str(_pipeline(tmp_path, spec)), "--out", str(run), "--no-progress"]) == 0
    assert "stages run: profile, prune, export" in capsys.readouterr().out
    family = json.loads((run / "prune" / "family-magnitude.json").read_text())
    assert family["budget"] == "decode" and family["workload"]["prompt"] == 16
    member = family["members"][0]
    assert member["reachable"] and member["workload_prediction"]["speedup"]["decode"] >= mid * (1 - 1e-9)
    copied = WorkloadTables.load(run / "workload")
    assert copied == setup["tables"] and (run / "table.json").is_file()
    assert main(["run", str(_pipeline(tmp_path, spec)), "--out", str(run), "--no-progress"]) == 0
    assert "skipped: profile, prune, export" in capsys.readouterr().out
    # another budget prunes again, from the same tables
    spec.update(prune={**prune, "budget": "e2e"}, export=False, verify=False)
    assert main(["run", str(_pipeline(tmp_path, spec)), "--out", str(run), "--no-progress"]) == 0
    assert "stages run: prune; skipped: profile" in capsys.readouterr().out
    assert json.loads((run / "prune" / "family-magnitude.json").read_text())["budget"] == "e2e"
