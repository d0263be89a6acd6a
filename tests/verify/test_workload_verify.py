"""``verify --workload``: TTFT / ms-per-token / tokens/s / end-to-end of a dense and a pruned tiny Llama in ONNX
Runtime GenAI (typed report block, exactly G tokens, token parity, workload-table predictions, torch-free on
GenAI folders), bad input refused before any work, and the generation budgets of ``gate`` (fail closed).

Timing claims (a pruned model is faster) belong to ``tools/bench_workload_verify.py``, not here."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

from families import tiny_llama_for, tiny_model
from conftest import assert_round_trips, cli
from tests.verify.test_gate import REPORT
from tests.verify.test_gate_adversarial import BAD_VALUES, dotted, edited, failures, only
from ziplm_deploy.cli import main
from ziplm_deploy.core.errors import UserError
from ziplm_deploy.core.shape import LayerShape, ModelShape
from ziplm_deploy.models import apply_shape, save_model
from ziplm_deploy.verify.policy import Policy, judge
from ziplm_deploy.verify.report import VerifyReport

pytest.importorskip("onnxruntime_genai")

ROOT = Path(__file__).resolve().parents[2]
WORKLOAD, P, G, ROUNDS = "16x8", 16, 8, 3
FAST = ["--rounds", str(ROUNDS), "--warmup", "1", "--retries", "0"]
WORDS = ("the capital of france is paris once upon a time there was little girl who lived in village near forest "
         "she liked to walk and sing every morning with her dog").split()
# 3-layer tiny Llama (4 query heads in 2 KV groups, head_dim 8, FFN 64): one KV group removed, a layer without
# attention, a dense layer
PRUNED = ModelShape((LayerShape(2, 48, 1), LayerShape(0, 32, 0), LayerShape(4, 64, 2)))


def _tokenizer():
    from families import word_tokenizer

    return word_tokenizer(WORDS, 96)


def _model_dir(out: Path, shape: ModelShape | None = None) -> Path:
    """A tiny Llama with a word-level tokenizer, weights scaled up so that greedy decoding wanders over the
    vocabulary (and sometimes reaches EOS) instead of repeating one token."""
    tokenizer = _tokenizer()
    model = tiny_llama_for(tokenizer, layers=3, seed=0).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(6.0)
    if shape is not None:
        apply_shape(model, shape)
    return save_model(model, out, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("workload_verify")
    return {"root": root, "dense": _model_dir(root / "dense"), "pruned": _model_dir(root / "pruned", PRUNED)}


@pytest.fixture(scope="module")
def verified(pair) -> dict:
    """verify --workload 16x8 of the two directories (both exported to GenAI folders in the cache)."""
    root = pair["root"]
    rc = main(["verify", "--baseline", str(pair["dense"]), "--candidate", str(pair["pruned"]), "--workload", WORKLOAD,
               "--report", str(root / "verify.json"), "--cache", str(root / "cache"), *FAST])
    return {"rc": rc, "path": root / "verify.json", "report": assert_round_trips(root / "verify.json"),
            "folders": sorted((root / "cache").glob("*-genai"))}


@pytest.fixture(scope="module")
def tables(pair) -> Path:
    out = pair["root"] / "tables"
    assert main(["profile", "--model", str(pair["dense"]), "--workload", WORKLOAD, "--rounds", "3", "--warmup", "1",
                 "--ffn-step", "32", "--no-progress", "--out", str(out)]) == 0
    return out


def _stats(d) -> None:
    assert set(d) == {"p25", "p50", "p90", "n"} and d["n"] == ROUNDS
    assert all(isinstance(d[k], float) and 0 < d[k] for k in ("p25", "p50", "p90")) and d["p25"] <= d["p50"] <= d["p90"]


def _check_block(w: dict) -> None:
    assert w["workload"] == {"name": WORKLOAD, "prompt": P, "generate": G, "batch": 1}
    assert w["statistic"] == "p25" and w["engine"]["name"] == "onnxruntime-genai"
    assert w["engine"]["min_length"] == w["engine"]["max_length"] == P + G
    for role in ("baseline", "candidate"):
        m = w[role]
        for key in ("ttft_ms", "ms_per_token", "e2e_ms"):
            _stats(m[key])
        assert m["e2e_ms"]["p25"] >= m["ttft_ms"]["p25"]  # each sample's e2e = its TTFT + its decode time
        assert m["tokens_per_s"] == pytest.approx(1000.0 / m["ms_per_token"]["p25"], rel=1e-3)
        assert m["generated_tokens"] == G and len(m["tokens"]) == G and all(isinstance(t, int) for t in m["tokens"])
    for key in ("ttft", "decode", "e2e"):
        assert isinstance(w["speedup"][key], float) and w["speedup"][key] > 0
    assert w["speedup"]["e2e"] == pytest.approx(w["baseline"]["e2e_ms"]["p25"] / w["candidate"]["e2e_ms"]["p25"],
                                                rel=1e-3)
    assert 0 <= w["token_agreement"] <= 1
    assert set(w["timing"]) == {"baseline_recheck", "drift", "max_drift", "interference", "attempts"}


def test_directories_are_exported_timed_and_checked_token_exact(verified, pair):
    assert verified["rc"] == 0
    r = verified["report"]
    assert r.ok and r.inputs["workload"] == WORKLOAD
    _check_block(r.workload)
    assert r.workload["prediction"] is None
    assert len(verified["folders"]) == 2  # one GenAI export per directory, in the cache
    assert r.baseline["kind"] == r.candidate["kind"] == "directory"
    assert r.candidate["shape"]["layers"] == [s.to_json() for s in PRUNED.layers]
    assert r.candidate["latency"] == r.workload["candidate"]["e2e_ms"]  # top level: the end-to-end time
    assert r.speedup.metric == "e2e" and r.speedup.measured == r.workload["speedup"]["e2e"]
    assert r.fingerprint["mode"] == "generate" and r.fingerprint["seq"] == P
    # the candidate's G greedy tokens from GenAI equal transformers' greedy generate on the timed prompt
    assert r.parity["reference"] == "pytorch" and r.parity["ok"] is True
    [row] = r.parity["outputs"]
    assert row["positions"] == G and row["first_difference"] is None and row["ok"] is True
    # the report survives its strict loader as written
    assert VerifyReport.load(verified["path"]).to_json() == r.to_json()


def test_exactly_g_tokens_even_where_greedy_would_stop_at_eos(verified):
    """A prompt on which GenAI's greedy loop stops at EOS before G tokens still yields G timed tokens."""
    import numpy as np
    import onnxruntime_genai as og

    from ziplm_deploy.core.workload import Workload
    from ziplm_deploy.verify.generation import generate_once

    model = og.Model(str(_folders(verified)[0]))
    rng, g = np.random.default_rng(0), 30

    def stops_early(prompt: list[int]) -> bool:  # plain greedy, EOS allowed
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=P + g, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(prompt)
        while not generator.is_done():
            generator.generate_next_token()
        return len(generator.get_sequence(0)) < P + g

    early = next((p for p in ([int(x) for x in rng.integers(3, 96, P)] for _ in range(300)) if stops_early(p)), None)
    assert early is not None, "no prompt reaches EOS: the test model no longer exercises the forcing"
    sample = generate_once(model, np.array([early], dtype=np.int32), Workload(P, g))
    assert sample.generated == g and len(sample.tokens) == g and sample.ttft_ms > 0 and sample.decode_ms > 0


def _folders(verified) -> tuple[Path, Path]:
    return tuple(next(f for f in verified["folders"] if f.name.startswith(n)) for n in ("dense", "pruned"))


def test_genai_folders_with_workload_tables(verified, tables, pair, tmp_path, capsys):
    """GenAI folders as given: timed, predicted from the tables (the tables' own prediction for each shape), and,
    the candidate's source directory being gone, its parity is the folder's export check re-run in GenAI."""
    import shutil

    from ziplm_deploy.core.workload import WorkloadTables

    dense, pruned = _folders(verified)
    moved = tmp_path / "pruned-genai"
    shutil.copytree(pruned, moved)
    manifest = json.loads((moved / "ziplm_genai.json").read_text())
    manifest["source"] = str(tmp_path / "gone")  # the source directory is not on this machine
    (moved / "ziplm_genai.json").write_text(json.dumps(manifest))
    out = tmp_path / "verify.json"
    capsys.readouterr()
    assert main(["verify", "--baseline", str(dense), "--candidate", str(moved), "--workload", WORKLOAD,
                 "--workload-tables", str(tables), "--report", str(out), *FAST]) == 0
    stdout = capsys.readouterr().out
    r = assert_round_trips(out)
    _check_block(r.workload)
    assert r.baseline["kind"] == r.candidate["kind"] == "genai"
    assert r.parity["reference"] == "genai-export-check" and r.parity["ok"] is True and len(r.parity["outputs"]) == 5
    pred = r.workload["prediction"]
    t = WorkloadTables.load(tables)
    want = {"baseline": t.predict(t.dense_shape()).to_json(), "candidate": t.predict(PRUNED).to_json()}
    for role in ("baseline", "candidate"):
        assert pred[role] == want[role] and pred[role]["decode_steps"] == G - 1
        for key in ("ttft_ms", "ms_per_token", "e2e_ms"):
            measured = r.workload[role][key]["p25"]
            assert pred["error"][role][key] == pytest.approx(measured / pred[role][key] - 1, abs=1e-4)
    for key in ("ttft", "decode", "e2e"):
        assert pred["speedup"][key] > 0
        assert pred["error"]["speedup"][key] == pytest.approx(r.workload["speedup"][key] / pred["speedup"][key] - 1,
                                                              abs=1e-4)
    assert pred["tables"]["fingerprint_differences"] == []  # profiled and verified in one deployment
    assert r.speedup.prediction_source == "workload-tables" and r.speedup.predicted == pred["speedup"]["e2e"]
    assert "TTFT ms" in stdout and "tokens/s" in stdout and "pred. speedup" in stdout


def test_target_metric_judges_the_named_speedup(verified, tmp_path):
    """``--target-metric decode``: the report's speedup block is the decode speedup, judged against --target."""
    dense, pruned = _folders(verified)
    out = tmp_path / "verify.json"
    main(["verify", "--baseline", str(dense), "--candidate", str(pruned), "--workload", WORKLOAD, "--target", "1.01",
          "--target-metric", "decode", "--report", str(out), *FAST])
    r = assert_round_trips(out)
    assert r.speedup.metric == "decode" and r.speedup.measured == r.workload["speedup"]["decode"]
    assert r.speedup.target == 1.01 and r.speedup.meets_target == (r.speedup.measured >= 1.01 * 0.95)


def test_genai_folders_verify_without_torch(verified, pair, no_torch_env):
    dense, pruned = _folders(verified)
    out = pair["root"] / "verify-no-torch.json"
    res = cli(no_torch_env, "verify", "--baseline", str(dense), "--candidate", str(pruned), "--workload", WORKLOAD,
              "--report", str(out), *FAST)
    assert res.returncode == 0, res.stdout + res.stderr
    r = VerifyReport.load(out)
    _check_block(r.workload)
    assert r.parity["reference"] == "genai-export-check" and r.parity["ok"] is True


# --- bad input: exit 2, one line, before any export or timing --------------------------------------------------
@pytest.fixture(scope="module")
def others(pair, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("others")
    bert = save_model(tiny_model("bert"), root / "bert")
    llama = save_model(tiny_model("llama"), root / "llama")  # another model: vocab 120, hidden 48
    assert main(["profile", "--model", str(llama), "--workload", WORKLOAD, "--rounds", "2", "--warmup", "0",
                 "--ffn-step", "40", "--no-progress", "--out", str(root / "llama-tables")]) == 0
    (root / "engine.plan").write_bytes(b"not an engine")
    return {"bert": bert, "llama-tables": root / "llama-tables", "engine": root / "engine.plan"}


@pytest.mark.parametrize("case,message", [
    ("encoder", "encoder"),
    ("unknown-workload", "unknown workload 'chatty'"),
    ("prefill-workload", "generates no token"),
    ("too-long", "needs 72 tokens"),
    ("tables-of-another-model", "latency table was measured for"),
    ("tables-of-another-workload", "are for workload 16x8"),
    ("tables-without-workload", "--workload-tables needs --workload"),
    ("engine", "is a TensorRT engine"),
    ("onnx-file", "single ONNX graph"),
    ("runtime-trt", "runtime trt has no generation loop"),
    ("prefill-table", "--table is a prefill latency table"),
    ("seq", "--seq does not go with --workload"),
    ("eval-data-on-folders", "--eval-data with --workload"),
    ("target-metric-without-workload", "--target-metric needs --workload"),
])
def test_bad_input_exits_2_before_any_work(case, message, pair, tables, others, verified, tmp_path, capsys):
    dense, pruned = str(pair["dense"]), str(pair["pruned"])
    folder = str(verified["folders"][0])
    args = {"baseline": dense, "candidate": pruned, "workload": WORKLOAD}
    extra: list[str] = []
    if case == "encoder":
        args["candidate"] = str(others["bert"])
    elif case == "unknown-workload":
        args["workload"] = "chatty"
    elif case == "prefill-workload":
        args["workload"] = "prefill-16"
    elif case == "too-long":
        args["workload"] = "64x8"  # the tiny Llama takes 64 positions
    elif case == "tables-of-another-model":
        extra = ["--workload-tables", str(others["llama-tables"])]
    elif case == "tables-of-another-workload":
        args["workload"], extra = "16x6", ["--workload-tables", str(tables)]
    elif case == "tables-without-workload":
        args.pop("workload")
        extra = ["--workload-tables", str(tables)]
    elif case == "engine":
        args["candidate"] = str(others["engine"])
    elif case == "onnx-file":
        args["candidate"] = str(next(Path(folder).glob("*.onnx")))
    elif case == "runtime-trt":
        extra = ["--runtime", "trt"]
    elif case == "prefill-table":
        extra = ["--table", str(tables / "prefill_b1_s16.json")]
    elif case == "seq":
        extra = ["--seq", "16"]
    elif case == "eval-data-on-folders":
        args["baseline"], extra = folder, ["--eval-data", "wikipedia"]
    elif case == "target-metric-without-workload":
        args.pop("workload")
        extra = ["--target-metric", "decode"]
    argv = ["verify", *[x for k, v in args.items() for x in (f"--{k}", v)], "--report", str(tmp_path / "v.json"),
            "--cache", str(tmp_path / "cache"), *extra]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "v.json").exists() and not (tmp_path / "cache").exists()


# --- gate: generation budgets --------------------------------------------------------------------------------
WORKLOAD_BLOCK = {
    "workload": {"name": "chat", "prompt": 512, "generate": 128, "batch": 1}, "statistic": "p25",
    "engine": {"name": "onnxruntime-genai", "version": "0.18.0"},
    "baseline": {"ttft_ms": {"p25": 400.0, "p50": 410.0, "p90": 450.0, "n": 20},
                 "ms_per_token": {"p25": 30.0, "p50": 31.0, "p90": 35.0, "n": 20},
                 "e2e_ms": {"p25": 4210.0, "p50": 4300.0, "p90": 4500.0, "n": 20}, "tokens_per_s": 33.3333,
                 "generated_tokens": 128, "tokens": []},
    "candidate": {"ttft_ms": {"p25": 200.0, "p50": 210.0, "p90": 250.0, "n": 20},
                  "ms_per_token": {"p25": 16.0, "p50": 17.0, "p90": 19.0, "n": 20},
                  "e2e_ms": {"p25": 2232.0, "p50": 2300.0, "p90": 2400.0, "n": 20}, "tokens_per_s": 62.5,
                  "generated_tokens": 128, "tokens": []},
    "speedup": {"ttft": 2.0, "decode": 1.875, "e2e": 1.886}, "token_agreement": 0.5, "timing": {}, "prediction": None,
}
WORKLOAD_REPORT = {**copy.deepcopy(REPORT), "workload": WORKLOAD_BLOCK}
# budget -> (path of its measurement, limit, a passing value, a failing value, the report to edit): the format of
# test_gate_adversarial.BUDGETS
WORKLOAD_BUDGETS = {
    "min_ttft_speedup": (("workload", "speedup", "ttft"), 1.5, 2.0, 1.2, WORKLOAD_REPORT),
    "min_decode_speedup": (("workload", "speedup", "decode"), 1.5, 1.875, 1.4, WORKLOAD_REPORT),
    "min_e2e_speedup": (("workload", "speedup", "e2e"), 1.5, 1.886, 1.1, WORKLOAD_REPORT),
    "min_tokens_per_s": (("workload", "candidate", "tokens_per_s"), 50, 62.5, 40.0, WORKLOAD_REPORT),
    "max_ttft_ms": (("workload", "candidate", "ttft_ms", "p25"), 250, 200.0, 300.0, WORKLOAD_REPORT),
}


def test_every_generation_budget_is_a_policy_budget():
    from dataclasses import fields

    from ziplm_deploy.verify.policy import Budgets

    assert set(WORKLOAD_BUDGETS) <= {f.name for f in fields(Budgets)}


@pytest.mark.parametrize("name", WORKLOAD_BUDGETS)
def test_generation_budget_passes_and_fails(name):
    path, limit, good, bad, base = WORKLOAD_BUDGETS[name]
    assert failures(only(name, limit), edited(path, good, base)) == {}
    failed = failures(only(name, limit), edited(path, bad, base))
    assert list(failed) == [name] and ": measured " in failed[name] and ", allowed " in failed[name], failed


@pytest.mark.parametrize("value,message", BAD_VALUES, ids=[repr(v)[:12] for v, _ in BAD_VALUES])
@pytest.mark.parametrize("name", WORKLOAD_BUDGETS)
def test_generation_budget_fails_closed_on_a_bad_measurement(name, value, message):
    path, limit, _, _, base = WORKLOAD_BUDGETS[name]
    failed = failures(only(name, limit), edited(path, value, base))
    assert list(failed) == [name] and message in failed[name], failed
    if "not measured" not in message:
        assert f"{dotted(path)} " in failed[name], failed


@pytest.mark.parametrize("name", WORKLOAD_BUDGETS)
def test_generation_budget_on_a_report_without_workload_block_fails(name):
    """A prefill-only report (no workload block, or a null one) never passes a generation budget."""
    limit = WORKLOAD_BUDGETS[name][1]
    for report in (copy.deepcopy(REPORT), {**copy.deepcopy(REPORT), "workload": None}):
        failed = failures(only(name, limit), json.loads(json.dumps(report)))
        assert list(failed) == [name] and "not measured (the gate fails closed)" in failed[name], failed


@pytest.mark.parametrize("path,value,message", [
    (("workload", "speedup"), [2.0], "workload.speedup must be an object, got [2.0]"),
    (("workload", "candidate", "ttft_ms", "p25"), -1.0, "workload.candidate.ttft_ms.p25 must be >= 0, got -1.0"),
    (("workload", "statistic"), ["p25"], "workload.statistic must be a string"),
    (("workload", "speedup", "decode"), 0.0, "workload.speedup.decode must be > 0, got 0.0"),
])
def test_generation_budgets_reject_malformed_blocks(path, value, message):
    policy = only(None, budgets={"min_decode_speedup": 1.0, "max_ttft_ms": 300})
    failed = failures(policy, edited(path, value, WORKLOAD_REPORT))
    assert any(message in m for m in failed.values()), failed


def test_a_g1_workload_fails_decode_budgets():
    """One generated token: no decode step, ms/token and tokens/s are null: decode budgets fail, TTFT ones judge."""
    report = edited(("workload", "speedup", "decode"), None, WORKLOAD_REPORT)
    report["workload"]["candidate"]["tokens_per_s"] = None
    policy = only(None, budgets={"min_decode_speedup": 1.0, "min_tokens_per_s": 1.0, "min_ttft_speedup": 1.0})
    assert set(failures(policy, report)) == {"min_decode_speedup", "min_tokens_per_s"}


def test_workload_block_must_be_an_object():
    with pytest.raises(UserError, match="workload"):
        VerifyReport.from_json({**copy.deepcopy(REPORT), "workload": [1, 2]}, "v.json")


def test_chat_example_policy(verified, tmp_path, capsys):
    """The shipped example loads with every generation budget; gate judges a real workload report by them."""
    policy = Policy.load(ROOT / "policies" / "chat-example.yaml")
    assert all(getattr(policy.budgets, name) is not None for name in WORKLOAD_BUDGETS)
    data = yaml.safe_load((ROOT / "policies" / "chat-example.yaml").read_text())
    lenient = {**data, "budgets": {"min_ttft_speedup": 0.01, "min_decode_speedup": 0.01, "min_e2e_speedup": 0.01,
                                   "min_tokens_per_s": 1, "max_ttft_ms": 60000}}
    (tmp_path / "lenient.yaml").write_text(yaml.safe_dump(lenient))
    capsys.readouterr()
    assert main(["gate", "--policy", str(tmp_path / "lenient.yaml"), "--report", str(verified["path"])]) == 0
    impossible = {**lenient, "budgets": {**lenient["budgets"], "min_e2e_speedup": 1000}}
    (tmp_path / "impossible.yaml").write_text(yaml.safe_dump(impossible))
    assert main(["gate", "--policy", str(tmp_path / "impossible.yaml"), "--report", str(verified["path"])]) == 1
    assert "FAIL  min_e2e_speedup" in capsys.readouterr().out
    # the same policy on a prefill-only report: every generation budget fails, none passes vacuously
    verdict = judge(Policy.from_dict(lenient, "lenient.yaml"), VerifyReport.from_json(copy.deepcopy(REPORT)))
    assert {c.name for c in verdict.failures} >= set(WORKLOAD_BUDGETS)


def test_run_report_shows_the_generation_block(verified, tables, pair, tmp_path):
    """`report` of a run with a generation verify report: a generation table with each figure measured / predicted
    (the report's own values), in HTML and Markdown; an invalid figure is a warning and shown as missing."""
    from ziplm_deploy.verify.runreport import collect, generation_rows, render_html, render_markdown

    run = tmp_path / "run"
    run.mkdir()
    assert main(["verify", "--baseline", str(pair["dense"]), "--candidate", str(pair["pruned"]), "--workload", WORKLOAD,
                 "--workload-tables", str(tables), "--report", str(run / "pruned.verify.json"),
                 "--cache", str(pair["root"] / "cache"), *FAST]) == 0
    w = json.loads((run / "pruned.verify.json").read_text())["workload"]
    data = collect(run)
    (row,) = [r for r in data.rows if r.generation]
    g = row.generation
    assert g.workload == WORKLOAD and g.token_agreement == w["token_agreement"]
    for key in ("ttft_ms", "ms_per_token", "e2e_ms"):
        assert g.measured[key] == w["candidate"][key]["p25"] and g.baseline[key] == w["baseline"][key]["p25"]
        assert g.predicted[key] == w["prediction"]["candidate"][key]
    assert g.measured["tokens_per_s"] == w["candidate"]["tokens_per_s"]
    assert g.speedup == w["speedup"] and g.speedup_predicted == w["prediction"]["speedup"]
    rows = generation_rows(data)
    assert rows[0][:3] == ["model", "workload", "TTFT ms"] and rows[2][0] == row.name
    assert rows[2][8] == f"{w['speedup']['e2e']:.2f}x / {w['prediction']['speedup']['e2e']:.2f}x"
    md, page = render_markdown(data), render_html(data)
    assert "Generation in ONNX Runtime GenAI (measured / predicted):" in md and rows[2][8] in md
    assert "<h2>Generation in ONNX Runtime GenAI (measured / predicted)</h2>" in page

    bad = json.loads((run / "pruned.verify.json").read_text())
    bad["workload"]["candidate"]["ttft_ms"]["p25"] = "fast"
    (run / "pruned.verify.json").write_text(json.dumps(bad))
    data = collect(run)
    (row,) = [r for r in data.rows if r.generation]
    assert row.generation.measured["ttft_ms"] is None
    assert any("ttft_ms.p25" in warning for warning in data.warnings)
    assert generation_rows(data)[2][2].startswith("– / ")

    bad["workload"]["statistic"] = "p99"  # a statistic the timings do not have: said, not silently blank
    (run / "pruned.verify.json").write_text(json.dumps(bad))
    data = collect(run)
    assert any("workload.statistic 'p99' has no timed figures (they have n, p25, p50, p90)" in w for w in data.warnings)


def test_a_batch_of_two_is_timed_and_predicted_for_two_sequences(pair, tmp_path, capsys):
    """``--batch 2``: GenAI generates two sequences (the same prompt) per visit; the block, the fingerprint and
    tokens/s (two tokens per step) say so, the candidate's greedy tokens are checked token-exact, and tables
    profiled at batch 2 predict it (tables of batch 1 are refused before any work)."""
    tables = tmp_path / "tables-b2"
    assert main(["profile", "--model", str(pair["dense"]), "--workload", WORKLOAD, "--batch", "2", "--rounds", "3",
                 "--warmup", "1", "--ffn-step", "32", "--no-progress", "--out", str(tables)]) == 0
    out = tmp_path / "verify-b2.json"
    assert main(["verify", "--baseline", str(pair["dense"]), "--candidate", str(pair["pruned"]), "--workload", WORKLOAD,
                 "--batch", "2", "--workload-tables", str(tables), "--report", str(out),
                 "--cache", str(pair["root"] / "cache"), *FAST]) == 0
    r = VerifyReport.load(out)
    w = r.workload
    assert w["workload"]["batch"] == 2 and r.fingerprint["batch"] == 2 and r.inputs["batch"] == 2
    for role in ("baseline", "candidate"):
        assert w[role]["tokens_per_s"] == pytest.approx(2000.0 / w[role]["ms_per_token"]["p25"], rel=1e-3)
        assert w[role]["generated_tokens"] == G
    assert r.parity["ok"] is True and w["prediction"]["tables"]["fingerprint_differences"] == []
    assert w["prediction"]["candidate"]["tokens_per_s"] == pytest.approx(
        2000.0 / w["prediction"]["candidate"]["ms_per_token"], rel=1e-3)
    batch_one = tmp_path / "tables-b1"
    assert main(["profile", "--model", str(pair["dense"]), "--workload", WORKLOAD, "--rounds", "3", "--warmup", "1",
                 "--ffn-step", "32", "--no-progress", "--out", str(batch_one)]) == 0
    capsys.readouterr()
    assert main(["verify", "--baseline", str(pair["dense"]), "--candidate", str(pair["pruned"]), "--workload", WORKLOAD,
                 "--batch", "2", "--workload-tables", str(batch_one), "--report", str(tmp_path / "no.json"),
                 "--cache", str(pair["root"] / "cache"), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "batch" in err and not (tmp_path / "no.json").exists()
