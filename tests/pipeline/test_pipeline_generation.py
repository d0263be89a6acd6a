"""``verify.generation`` in pipeline files: verify times the run's workload in ONNX Runtime GenAI and judges each
member's target on the metric it was searched for (``prune.budget``), on a tiny Llama with real workload tables;
a run killed in verify resumes; the option is part of the verify key; bad combinations exit 2 before any work;
and ``verify.generation``'s target-metric selection (ttft / decode / e2e)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from families import tiny_llama_for, tiny_model, word_tokenizer
from killpoint import killed_cli
from ziplm_deploy.cli import main
from ziplm_deploy.core.errors import UserError
from ziplm_deploy.core.workload import Workload
from ziplm_deploy.models import save_model
from ziplm_deploy.verify.generation import Sample, check_inputs, speedup_block, summarise
from ziplm_deploy.verify.measure import VerifyOptions
from ziplm_deploy.verify.report import VerifyReport

pytest.importorskip("onnxruntime_genai")

WORKLOAD = "16x8"
TEXT = "\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog near the river bank, "
                   f"while {i % 7} small birds sing in the old oak tree." for i in range(24))
FAST = ["--rounds", "3", "--warmup", "1", "--ffn-step", "16", "--no-progress"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama (word-level tokenizer), its workload tables (``profile --workload 16x8``), calibration text, a
    policy that judges the generation report, and a tiny encoder."""
    root = tmp_path_factory.mktemp("pipeline-generation")
    words = TEXT.replace(",", " ").replace(".", " ").replace(":", " ").split()
    tokenizer = word_tokenizer(words, 96)
    model = tiny_llama_for(tokenizer, layers=2, seed=0).eval()
    with torch.no_grad():  # greedy decoding wanders over the vocabulary instead of repeating one token
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(6.0)
    save_model(model, root / "dense", tokenizer=tokenizer)
    save_model(tiny_model("bert", layers=2), root / "bert")
    (root / "text.txt").write_text(TEXT)
    assert main(["profile", "--model", str(root / "dense"), "--workload", WORKLOAD, "--out", str(root / "tables"),
                 *FAST]) == 0
    (root / "policy.yaml").write_text(yaml.safe_dump({
        "version": 1, "name": "generation", "budgets": {"min_decode_speedup": 0.01, "min_e2e_speedup": 0.01},
        "require_parity_ok": True}))
    return {"root": root, "dense": root / "dense", "tables": root / "tables", "bert": root / "bert"}


def _spec(setup: dict[str, Path], **overrides) -> dict:
    root = setup["root"]
    spec = {"model": str(setup["dense"]),
            "prune": {"method": "magnitude", "targets": [1.05], "windows": 2, "seq_len": 16, "ffn_step": 16,
                      "calib": str(root / "text.txt"), "workload_tables": str(setup["tables"]), "budget": "decode"},
            "export": False, "verify": {"generation": True, "rounds": 2}, "gate": {"policy": str(root / "policy.yaml")},
            "report": False}
    spec.update(overrides)
    return spec


def _write(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.slow  # ~40 s: a whole pipeline run with GenAI timing (CI runs it with -m slow)
def test_generation_verify_judges_the_decode_target_and_resumes(setup, tmp_path, capsys):
    pipeline = _write(tmp_path / "p.yaml", _spec(setup))
    run = tmp_path / "run"
    # killed right after the member's verify report was written, before the stage was recorded
    argv = ["run", str(pipeline), "--out", str(run), "--no-progress"]
    killed = subprocess.run(killed_cli("ziplm_deploy.verify.report:VerifyReport.save", argv), capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-2000:]
    assert "measured decode speedup" not in killed.stdout  # killed before its log line
    assert "verify" not in json.loads((run / "state.json").read_text())["stages"]
    capsys.readouterr()
    assert main(["run", str(pipeline), "--out", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "stages run: verify; skipped: profile, prune" in out and "gate PASSED" in out
    assert "reusing GenAI export" in out  # the killed run's exports are reused
    assert "verify times the prefill pass only" not in out and "measured decode speedup" in out

    family = json.loads((run / "prune" / "family-magnitude.json").read_text())
    (member,) = family["members"]
    name = Path(member["path"]).name
    r = VerifyReport.load(run / "prune" / "verify" / f"{name}.verify.json")
    w, sp = r.workload, r.speedup.to_json()
    assert r.ok and w["workload"] == {"name": WORKLOAD, "prompt": 16, "generate": 8, "batch": 1}
    assert r.inputs["workload"] == WORKLOAD and r.protocol["rounds"] == 2 and w["baseline"]["ttft_ms"]["n"] == 2
    assert r.baseline["source"] == str(setup["dense"]) and r.candidate["source"] == member["path"]
    # the target is the member's, judged on the decode speedup it was searched for
    assert sp["metric"] == "decode" and sp["target"] == member["target"] == 1.05
    assert sp["measured"] == w["speedup"]["decode"]
    assert sp["baseline_ms"] == w["baseline"]["ms_per_token"]["p25"]
    assert sp["candidate_ms"] == w["candidate"]["ms_per_token"]["p25"]
    assert sp["target_deviation"] == pytest.approx(sp["measured"] / 1.05 - 1, abs=1e-5)
    assert sp["meets_target"] == (sp["measured"] >= 1.05 * (1 - sp["tolerance"]))
    assert r.candidate["latency"] == w["candidate"]["e2e_ms"]  # top level: the end-to-end time
    # predicted from the run's copy of the workload tables, on the same metric
    pred = w["prediction"]
    assert sp["prediction_source"] == "workload-tables"
    assert sp["table"]["path"] == str(run / "workload" / "workload.json")
    assert sp["predicted"] == pred["speedup"]["decode"]
    assert sp["predicted"] == pytest.approx(member["workload_prediction"]["speedup"]["decode"], abs=1e-4)
    assert sp["predicted_ms"] == pytest.approx(pred["candidate"]["ms_per_token"], abs=1e-4)
    assert sp["prediction_error"] == pred["error"]["speedup"]["decode"]
    assert sp["latency_prediction_error"] == pred["error"]["candidate"]["ms_per_token"]
    assert r.parity["reference"] == "pytorch" and r.parity["ok"] is True

    assert main(["run", str(pipeline), "--out", str(run), "--no-progress"]) == 0
    assert "skipped: profile, prune, verify" in capsys.readouterr().out
    # without verify.generation: the workload's prefill table times last-position logits (GenAI's), which one
    # prefill pass of the plain export does not compute: refused before any work, the run's reports untouched
    before = (run / "prune" / "verify" / f"{name}.verify.json").read_bytes()
    pipeline = _write(tmp_path / "p.yaml", _spec(setup, verify={"seq": 16, "rounds": 2}, gate=None))
    assert main(["run", str(pipeline), "--out", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "last position only" in err and "verify.generation: true" in err, err
    assert (run / "prune" / "verify" / f"{name}.verify.json").read_bytes() == before


@pytest.mark.parametrize("case, words", [
    ("no-tables", ("verify.generation times the workload of prune.workload_tables", "add prune.workload_tables")),
    ("engine", ("not TensorRT engines", "drop the engine section")),
    ("seq", ("verify.seq does not go with verify.generation", "drop verify.seq")),
    ("batch", ("verify.batch does not go with verify.generation", "drop verify.batch")),
    ("runtime", ("verify.runtime trt has no generation loop",)),
    ("encoder", ("is a bert encoder", "drop verify.generation")),
    ("too-long", ("verify.generation: workload 16x8 needs 24 tokens", "takes at most 20")),
])
def test_bad_combinations_exit_2_before_any_work(setup, tmp_path, capsys, case, words):
    spec = _spec(setup)
    if case == "no-tables":
        spec["prune"] = {k: v for k, v in spec["prune"].items() if k not in ("workload_tables", "budget")}
    elif case == "engine":
        spec["engine"] = {"precision": "fp16"}
    elif case in ("seq", "batch"):
        spec["verify"] = {**spec["verify"], case: 16 if case == "seq" else 1}
    elif case == "runtime":
        spec["verify"] = {**spec["verify"], "runtime": "trt"}
    elif case == "encoder":
        spec["model"] = str(setup["bert"])
    elif case == "too-long":  # the dense model with a shorter context than the workload's 16 + 8 tokens
        short = tmp_path / "short"
        short.mkdir()
        for f in setup["dense"].iterdir():
            (short / f.name).write_bytes(f.read_bytes())
        config = json.loads((short / "config.json").read_text())
        (short / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 20}))
        spec["model"] = str(short)
    run = tmp_path / "run"
    capsys.readouterr()
    assert main(["run", str(_write(tmp_path / "p.yaml", spec)), "--out", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(word in err for word in words), err
    assert not run.exists()


def test_generation_is_strict_and_off_by_default(tmp_path):
    from ziplm_deploy.pipeline.spec import PipelineSpec, VerifySpec

    with pytest.raises(UserError, match="'verify.generation' must be true or false"):
        PipelineSpec.load(_write(tmp_path / "p.yaml", {"model": "m", "verify": {"generation": "yes"}}))
    assert VerifySpec() == VerifySpec(seq=128, batch=1) and not VerifySpec().generation
    assert PipelineSpec.load(_write(tmp_path / "p.yaml", {"model": "m", "verify": {"seq": 16}})).verify.seq == 16


# --- the target metric ----------------------------------------------------------------------------------------
def _timing(ttft: float, per_token: float, rounds: int = 4):
    w = Workload(16, 8)
    samples = [Sample(ttft + i, per_token * 7 + i, 8, tuple(range(8))) for i in range(rounds)]
    return summarise(samples, w, "p25")


@pytest.mark.parametrize("metric", ["ttft", "decode", "e2e"])
def test_the_target_is_judged_on_its_metric(metric):
    """Baseline 40 ms TTFT + 7 x 10 ms; candidate 10 ms TTFT + 7 x 8 ms: speedups ttft ~4x, decode ~1.25x, e2e ~1.6x.
    A 1.5x target is met on ttft and e2e, missed on decode."""
    base, cand = _timing(40.0, 10.0), _timing(10.0, 8.0)
    st = "p25"
    speedup = {"ttft": round(base.ttft.get(st) / cand.ttft.get(st), 5),
               "decode": round(base.per_token.get(st) / cand.per_token.get(st), 5),
               "e2e": round(base.e2e.get(st) / cand.e2e.get(st), 5)}
    sp = speedup_block(metric, base, cand, speedup, st, 1.5, 0.05).to_json()
    times = {"ttft": "ttft", "decode": "per_token", "e2e": "e2e"}[metric]
    assert sp["metric"] == metric and sp["measured"] == speedup[metric]
    assert sp["baseline_ms"] == getattr(base, times).get(st) and sp["candidate_ms"] == getattr(cand, times).get(st)
    assert sp["meets_target"] is (metric != "decode")
    assert sp["target_deviation"] == round(speedup[metric] / 1.5 - 1, 5)
    assert sp["target"] == 1.5 and sp["tolerance"] == 0.05 and sp["target_source"] == "option"
    none = speedup_block(metric, base, cand, speedup, st, None, 0.05).to_json()
    assert none["meets_target"] is None and none["target_deviation"] is None and none["measured"] == speedup[metric]
    # a metric that was not measured (decode of one generated token) meets no target: the gate fails closed
    missing = speedup_block(metric, base, cand, {**speedup, metric: None}, st, 1.5, 0.05).to_json()
    assert missing["meets_target"] is False and missing["target_deviation"] is None


def test_target_metric_is_checked_before_any_work(tmp_path):
    with pytest.raises(UserError, match="unknown target metric 'fast'"):
        check_inputs(str(tmp_path / "a"), str(tmp_path / "b"), VerifyOptions(workload=WORKLOAD, target_metric="fast"))
    with pytest.raises(UserError, match="workload 16x1 generates one token: no decode step"):
        check_inputs(str(tmp_path / "a"), str(tmp_path / "b"), VerifyOptions(workload="16x1", target_metric="decode"))
    assert VerifyOptions().target_metric == "e2e"
