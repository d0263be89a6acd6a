"""prune / eval commands end to end on the real SmolLM2 with the stored reference table, and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ziplm_deploy import load_model
from ziplm_deploy.cli import main
from ziplm_deploy.core.table import LatencyTable
from ziplm_deploy.models import adapter_for
from ziplm_deploy.models.assets import smollm2_dir

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "profiles" / "smollm2-135m_ort-cpu_b1_s128_t1.json"


@pytest.mark.slow
def test_ziplm_family_from_the_cli(tmp_path, capsys):
    model = smollm2_dir()
    code = main(["prune", "--model", str(model), "--table", str(TABLE), "--calib", "wikipedia", "--targets", "2", "30",
                 "--windows", "8", "--probe-windows", "1", "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 1  # 30x is out of reach: reported, not faked
    report = json.loads((tmp_path / "run" / "family-ziplm.json").read_text())
    two, thirty = report["members"]
    assert not thirty["reachable"] and 1 < thirty["max_speedup"] < 30 and thirty["path"] is None
    assert two["reachable"] and two["predicted_speedup"] >= 2.0
    table = LatencyTable.load(TABLE)
    pruned = load_model(two["path"])
    shape = adapter_for(pruned).shape_of(pruned)
    assert shape.to_json() == two["shape"]
    assert table.predict(shape) <= table.predict(table.dense_shape()) / 2 * (1 + 1e-9)
    manifest = json.loads((Path(two["path"]) / "manifest.json").read_text())
    assert manifest["method"] == "ziplm" and manifest["metrics"]["predicted_speedup"] == two["predicted_speedup"]
    assert manifest["table_sha256"] == report["table_sha256"] and manifest["fingerprint"]["cpu"]
    # the database is reused by a second run on the same model and data
    capsys.readouterr()
    main(["prune", "--model", str(model), "--table", str(TABLE), "--calib", "wikipedia", "--targets", "1.5",
          "--windows", "8", "--probe-windows", "1", "--out", str(tmp_path / "run"), "--no-progress", "--no-eval"])
    out = capsys.readouterr().out
    assert "reusing OBS database" in out and "reusing sensitivity probes" in out
    assert report["config"]["cost"] == "sensitivity"
    # eval on the produced model
    capsys.readouterr()
    assert main(["eval", "--model", two["path"], "--data", "wikipedia", "--seq-len", "128", "--max-windows", "4",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["metric"] == "perplexity" and result["tokens"] == 512 and result["value"] > 1


def test_prune_input_errors(tmp_path, capsys):
    model = smollm2_dir()
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("Only a few words of calibration text.")

    def fails(argv, message):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err

    base = ["prune", "--model", str(model), "--table", str(TABLE), "--out", str(tmp_path / "run")]
    fails(base + ["--calib", str(tiny), "--windows", "16"], "gives 0 sequences of 128 tokens")
    fails(base + ["--calib", str(tmp_path / "nope.txt")], "calibration data not found")
    fails(base + ["--calib", "wikipedia", "--targets", "0.5"], "a speedup target must be >= 1, got 0.5")
    other = tmp_path / "other.json"
    payload = json.loads(TABLE.read_text())
    payload["arch"]["hidden"] = 768
    other.write_text(json.dumps(payload))
    fails(["prune", "--model", str(model), "--table", str(other), "--calib", "wikipedia", "--out", str(tmp_path / "r")],
          "measured for a llama model with hidden=768")
    assert not (tmp_path / "run").exists() and not (tmp_path / "r").exists()
