"""CI demo gate on the embedded default: SmolLM2-135M cut to its last 4 layers (baseline) and the same model
pruned further (candidate), verified in ONNX Runtime CPU against the stored latency table, then gated with
``policies/speed-parity-only.yaml`` (must pass: generous bounds), ``policies/demo-pass.yaml`` (must fail: the
candidate lost its quality, and the demo policy budgets perplexity) and ``policies/demo-impossible.yaml`` (must
fail, exit 1).

Both models keep SmolLM2's 30-layer shape (26 layers dropped), so the stored table predicts them. The bounds
are far from the measurement on purpose: timing noise must not decide a test.
"""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ziplm_deploy.cli import main

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "profiles" / "smollm2-135m_ort-cpu_b1_s128_t1.json"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from ziplm_deploy import load_model
    from ziplm_deploy.core.manifest import MANIFEST_FILE, new_manifest
    from ziplm_deploy.core.shape import LayerShape, ModelShape
    from ziplm_deploy.core.table import LatencyTable
    from ziplm_deploy.models import apply_shape, save_model
    from ziplm_deploy.models.assets import smollm2_dir
    from ziplm_deploy.models.tokenizer import load_tokenizer

    run = tmp_path_factory.mktemp("demo_run")
    source = smollm2_dir()
    dense = load_model(source)
    tokenizer = load_tokenizer(source)
    gone = [LayerShape(dropped=True)] * 26
    base_shape = ModelShape(tuple(gone + [LayerShape(9, 1536, 3)] * 4))
    cand_shape = ModelShape(tuple(gone + [LayerShape(dropped=True)] * 2 + [LayerShape(3, 512, 1)] * 2))
    table = LatencyTable.load(TABLE)
    predicted = table.predict(base_shape) / table.predict(cand_shape)
    for name, shape in (("baseline", base_shape), ("candidate", cand_shape)):
        model = apply_shape(copy.deepcopy(dense), shape)
        manifest = new_manifest("shrink-magnitude", source, shape.to_json(), metrics={
            "target_speedup": 1.4, "predicted_speedup": round(predicted, 4), "predicted_ms": table.predict(shape)})
        save_model(model, run / name, tokenizer=tokenizer,
                   extra_files={MANIFEST_FILE: json.dumps(manifest.to_json())})
    code = main(["verify", "--baseline", str(run / "baseline"), "--candidate", str(run / "candidate"),
                 "--table", str(TABLE), "--report", str(run / "candidate.verify.json"), "--seq", "128",
                 "--rounds", "10", "--warmup", "2", "--rtol", "1e-3",
                 "--eval-data", "wikipedia", "--eval-windows", "2", "--eval-seq", "64"])
    return run, code


@pytest.mark.slow
def test_speed_parity_policy_passes(demo_run, tmp_path, capsys):
    run, _ = demo_run
    report = json.loads((run / "candidate.verify.json").read_text())
    assert report["status"] == "ok", report["error"]
    assert report["speedup"]["prediction_source"] == "table" and report["speedup"]["predicted"] > 1.3
    assert report["parity"]["reference"] == "pytorch" and report["parity"]["ok"]
    quality = report["quality"]
    assert quality["metric"] == "perplexity" and quality["baseline"] > 1 and quality["candidate"] > 1
    capsys.readouterr()
    assert main(["gate", "--policy", str(ROOT / "policies" / "speed-parity-only.yaml"), "--report",
                 str(run / "candidate.verify.json"), "--junit", str(tmp_path / "pass.xml")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("PASSED")
    assert ET.parse(tmp_path / "pass.xml").getroot().get("failures") == "0"


@pytest.mark.slow
def test_demo_policy_fails_a_fast_model_that_lost_its_quality(demo_run, tmp_path, capsys):
    run, _ = demo_run
    quality = json.loads((run / "candidate.verify.json").read_text())["quality"]
    assert quality["candidate"] / quality["baseline"] > 3  # two more layers dropped: far past the 3x budget
    capsys.readouterr()
    assert main(["gate", "--policy", str(ROOT / "policies" / "demo-pass.yaml"), "--report",
                 str(run / "candidate.verify.json"), "--junit", str(tmp_path / "fail.xml")]) == 1
    out = capsys.readouterr().out
    assert "FAIL  max_perplexity_increase" in out
    assert "PASS  min_speedup" in out and "PASS  parity" in out  # fast and faithful: only quality fails it
    assert out.strip().splitlines()[-1].endswith("max_perplexity_increase")


@pytest.mark.slow
def test_demo_impossible_policy_fails_with_exit_1(demo_run, tmp_path, capsys):
    run, _ = demo_run
    capsys.readouterr()
    assert main(["gate", "--policy", str(ROOT / "policies" / "demo-impossible.yaml"), "--report",
                 str(run / "candidate.verify.json"), "--junit", str(tmp_path / "fail.xml")]) == 1
    out = capsys.readouterr().out
    assert "FAIL  min_speedup: measured speedup: measured " in out and "allowed >= 1000x" in out
    assert out.strip().splitlines()[-1].endswith("max_latency_ms, min_speedup")
    root = ET.parse(tmp_path / "fail.xml").getroot()
    assert root.get("failures") == "2"


@pytest.mark.slow
def test_demo_run_report(demo_run, tmp_path):
    run, _ = demo_run
    assert main(["report", str(run), "--out", str(tmp_path / "report.html")]) == 0
    assert (tmp_path / "report.html").read_text().count("data:image/svg+xml;base64,") == 4
