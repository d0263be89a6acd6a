"""verify on real exported models: dense vs pruned tiny GPT-2 from directories (PyTorch parity), the same
ONNX files where torch cannot be imported (parity vs the export reference stored beside each file),
errored measurements and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_round_trips, cli, copy_onnx, synthetic_table

from ziplm_deploy.cli import main
from ziplm_deploy.verify.inputs import dir_digest

FAST = ["--seq", "16", "--rounds", "5", "--warmup", "1"]


@pytest.fixture(scope="module")
def verified(tiny_pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("verify")
    table = out / "table.json"
    synthetic_table(tiny_pair["dense"]).save(table)
    code = main(["verify", "--baseline", str(tiny_pair["dense"]), "--candidate", str(tiny_pair["pruned"]),
                 "--report", str(out / "verify.json"), "--table", str(table), "--target", "1.0", "--tolerance", "0.9",
                 *FAST])
    return out, code


def test_verify_directories_report_has_every_field(verified, tiny_pair):
    out, code = verified
    payload = json.loads((out / "verify.json").read_text())
    assert payload["format"] == "ziplm-deploy/verify-report" and payload["version"] == 1
    rep = assert_round_trips(out / "verify.json")
    assert rep.ok and code == 0
    for role, src in (("baseline", "dense"), ("candidate", "pruned")):
        m = payload[role]
        assert m["source"] == str(tiny_pair[src]) and m["kind"] == "directory"
        assert Path(m["file"]).parent == out / "onnx-cache" and len(m["sha256"]) == 64 and m["bytes"] > 0
        lat = m["latency"]
        assert 0 < lat["p25"] <= lat["p50"] <= lat["p90"] and lat["n"] == 5
        assert m["shape"]["format"] == "ziplm-deploy/shape" and len(m["shape"]["layers"]) == 4
    assert payload["candidate"]["params"] < payload["baseline"]["params"]
    assert payload["candidate"]["manifest"]["metrics"]["target_speedup"] == 1.3
    assert payload["candidate"]["shape"]["layers"][0]["heads"] == 0  # the pruned shape travels in the ONNX metadata
    sp = payload["speedup"]
    assert sp["measured"] == pytest.approx(sp["baseline_ms"] / sp["candidate_ms"], rel=1e-3)
    assert sp["target"] == 1.0 and sp["target_source"] == "option" and sp["meets_target"] in (True, False)
    assert sp["target_deviation"] == pytest.approx(sp["measured"] - 1.0, abs=1e-4)
    assert sp["prediction_source"] == "table" and sp["predicted"] > 1 and sp["predicted_ms"] > 0
    assert sp["prediction_error"] == pytest.approx(sp["measured"] / sp["predicted"] - 1, abs=1e-4)
    assert sp["latency_prediction_error"] is not None
    assert "cpu: 'Test CPU'" in " ".join(sp["table"]["fingerprint_differences"])  # table of another machine: flagged
    fp = payload["fingerprint"]
    assert fp["runtime"] == "onnxruntime" and fp["provider"] == "CPUExecutionProvider" and fp["seq"] == 16
    timing = payload["timing"]
    assert timing["statistic"] == "p25" and timing["baseline_recheck"]["n"] == 10
    assert isinstance(timing["interference"], bool) and timing["drift"] is not None
    assert timing["attempts"] in (1, 2) and timing["interference"] == (abs(timing["drift"]) > timing["max_drift"])
    par = payload["parity"]
    assert par["reference"] == "pytorch" and par["ok"]
    assert par["reference_path"] == str(tiny_pair["pruned"]) and par["reference_sha256"] == dir_digest(tiny_pair["pruned"])
    (logits,) = par["outputs"]
    assert logits["name"] == "logits" and 0 <= logits["max_abs"] <= logits["tolerance"]
    assert logits["mean_abs"] <= logits["max_abs"]
    assert logits["tolerance"] == pytest.approx(1e-4 + 1e-3 * logits["ref_max"])
    assert payload["quality"] is None


def test_verify_reuses_exports_and_takes_target_from_manifest(verified, tiny_pair, capsys):
    out, _ = verified
    capsys.readouterr()
    main(["verify", "--baseline", str(tiny_pair["dense"]), "--candidate", str(tiny_pair["pruned"]),
          "--report", str(out / "again.json"), *FAST])
    text = capsys.readouterr().out
    assert text.count("reusing export") == 2
    sp = assert_round_trips(out / "again.json").to_json()["speedup"]
    assert sp["target"] == 1.3 and sp["target_source"] == "manifest"
    assert sp["prediction_source"] == "manifest" and sp["predicted"] == 1.4


def test_verify_onnx_files_without_torch(verified, no_torch_env, tmp_path):
    out, _ = verified
    payload = json.loads((out / "verify.json").read_text())
    base = copy_onnx(Path(payload["baseline"]["file"]), tmp_path / "dense.onnx")
    cand = copy_onnx(Path(payload["candidate"]["file"]), tmp_path / "pruned.onnx")  # with its export reference
    r = cli(no_torch_env, "verify", "--baseline", str(base), "--candidate", str(cand), "--report",
            str(tmp_path / "edge.json"), "--table", str(out / "table.json"), *FAST)
    assert r.returncode == 0, r.stderr
    assert "PASSED" in r.stdout and "parity vs export-reference" in r.stdout
    edge = assert_round_trips(tmp_path / "edge.json").to_json()
    assert edge["status"] == "ok" and edge["baseline"]["kind"] == "onnx"
    assert edge["parity"]["reference"] == "export-reference" and edge["parity"]["ok"]
    assert edge["parity"]["note"] == "torch is not installed"  # the recorded source directory is here, torch is not
    assert edge["speedup"]["predicted"] == payload["speedup"]["predicted"]  # same shapes, same table
    assert not (tmp_path / "onnx-cache").exists()  # nothing exported
    code = ("import sys, ziplm_deploy.verify.measure, ziplm_deploy.verify.policy, ziplm_deploy.verify.runreport, "
            "ziplm_deploy.cli.verify, ziplm_deploy.cli.gate, ziplm_deploy.cli.report, ziplm_deploy.cli.build_engine, "
            "ziplm_deploy.export.tensorrt; "
            "assert 'torch' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], env=no_torch_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _custom_op_onnx(path: Path) -> Path:
    """A well-formed ONNX file whose operator ONNX Runtime does not have: it fails only when loaded for timing."""
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Foo", ["input_ids"], ["logits"], domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)]),
              str(path))
    return path


def test_errored_measurement_is_recorded_and_fails_the_gate(verified, tmp_path, capsys):
    out, _ = verified
    payload = json.loads((out / "verify.json").read_text())
    broken = _custom_op_onnx(tmp_path / "broken.onnx")
    report = tmp_path / "verify.json"
    code = main(["verify", "--baseline", payload["baseline"]["file"], "--candidate", str(broken),
                 "--report", str(report), *FAST])
    assert code == 1
    written = assert_round_trips(report).to_json()
    assert written["status"] == "error" and "onnxruntime could not load the model" in written["error"]
    assert written["candidate"]["latency"] is None and written["speedup"] == {}
    capsys.readouterr()
    root = Path(__file__).resolve().parents[2]
    assert main(["gate", "--policy", str(root / "policies" / "demo-pass.yaml"), "--report", str(report)]) == 1
    text = capsys.readouterr().out
    assert "FAIL  measurement: measurement errored" in text and "min_speedup: measured speedup: not measured" in text


def test_verify_bad_input(tiny_pair, tmp_path, capsys):
    def fails(argv, message):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err

    base = ["verify", "--report", str(tmp_path / "v.json")]
    fails(base + ["--baseline", str(tmp_path / "nope"), "--candidate", str(tiny_pair["pruned"])], "--baseline not found")
    (tmp_path / "m.plan").write_bytes(b"engine")
    fails(base + ["--baseline", str(tiny_pair["dense"]), "--candidate", str(tmp_path / "m.plan")],
          "is a TensorRT engine (use --runtime trt for engines)")
    fails(base + ["--baseline", str(tiny_pair["dense"]), "--candidate", str(tiny_pair["pruned"]), "--runtime", "cuda"],
          "unknown runtime 'cuda' for verify")
    fails(base + ["--baseline", str(tiny_pair["dense"]), "--candidate", str(tiny_pair["pruned"]), "--runtime", "torch"],
          "choose one of: ort-cpu, ort-cuda, ort-trt, trt")
    (tmp_path / "empty").mkdir()
    fails(base + ["--baseline", str(tmp_path / "empty"), "--candidate", str(tiny_pair["pruned"])],
          "is a folder without config.json")
    assert not (tmp_path / "v.json").exists()
