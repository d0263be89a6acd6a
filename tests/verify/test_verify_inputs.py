"""verify refuses bad input before any timing: exit 2, one line on stderr naming the problem, no report.

Timing is replaced by a function that fails the test if it is ever reached."""

from __future__ import annotations

import json
import os

import pytest
from conftest import cli, copy_onnx, synthetic_table

from ziplm_deploy.cli import main

FAST = ["--seq", "8", "--rounds", "2", "--warmup", "0", "--retries", "0"]


@pytest.fixture
def no_timing(monkeypatch):
    def timed(*args, **kwargs):
        raise AssertionError("bad input reached the timing")

    monkeypatch.setattr("ziplm_deploy.runtime.measure.time_models", timed)


def _refused(capsys, report, message, *argv):
    code = main(["verify", "--report", str(report), *FAST, *argv])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (captured.out, err)
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err, err
    assert "timing" not in captured.out and not report.is_file()
    assert not (report.parent / "onnx-cache").exists()


def _bad_files(good, tmp_path) -> dict[str, tuple]:
    data = good.read_bytes()
    files = {"empty": (b"", "is not a complete ONNX model (no an IR version"),
             "garbage": (b"this is not a protobuf", "is not a readable ONNX file"),
             "truncated": (data[: len(data) // 2], "is not a readable ONNX file")}
    out = {}
    for name, (content, message) in files.items():
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(content)
        out[name] = (path, message)
    return out


@pytest.mark.parametrize("role", ["baseline", "candidate"])
def test_unreadable_onnx_is_refused_before_timing(exported_onnx, tmp_path, capsys, no_timing, role):
    report = tmp_path / "v.json"
    for path, message in _bad_files(exported_onnx, tmp_path).values():
        models = {"baseline": exported_onnx, "candidate": exported_onnx, role: path}
        _refused(capsys, report, f"{path} {message}", "--baseline", str(models["baseline"]),
                 "--candidate", str(models["candidate"]))


def test_missing_files_are_refused_and_directories_not_exported_first(exported_onnx, tiny_pair, tmp_path, capsys, no_timing):
    report = tmp_path / "v.json"
    missing = tmp_path / "nope.onnx"
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07garbage\xff\xff")
    _refused(capsys, report, f"{garbage} is not a readable ONNX file", "--baseline", str(tiny_pair["dense"]),
             "--candidate", str(garbage))  # checked before the baseline directory is exported
    _refused(capsys, report, f"--candidate not found: {missing}", "--baseline", str(exported_onnx),
             "--candidate", str(missing))
    _refused(capsys, report, f"latency table not found: {missing}", "--baseline", str(exported_onnx),
             "--candidate", str(exported_onnx), "--table", str(missing))


def test_table_of_another_model_is_refused_before_timing(exported_onnx, tiny_pair, tmp_path, capsys, no_timing):
    """The candidate has 2 layers; the table was measured for the 4-layer model (and, in a second table,
    for a model with another vocabulary)."""
    report = tmp_path / "v.json"
    table = tmp_path / "table.json"
    synthetic_table(tiny_pair["dense"]).save(table)
    args = ("--baseline", str(exported_onnx), "--candidate", str(exported_onnx), "--table", str(table))
    _refused(capsys, report, "latency table was measured for a gpt2 model with num_layers=4, but", *args)
    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((tiny_pair["dense"] / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "n_layer": 2, "vocab_size": 500}))
    synthetic_table(other).save(table)
    _refused(capsys, report, "with vocab=500, but", *args)


def test_table_without_model_metadata_is_refused(exported_onnx, tiny_pair, tmp_path, capsys, no_timing):
    import onnx

    proto = onnx.load(str(exported_onnx))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    table = tmp_path / "table.json"
    synthetic_table(tiny_pair["dense"]).save(table)
    _refused(capsys, tmp_path / "v.json", "carries no ziplm_shape/ziplm_config metadata", "--baseline",
             str(exported_onnx), "--candidate", str(bare), "--table", str(table))


def test_unwritable_report_path_is_refused(exported_onnx, tmp_path, capsys, no_timing):
    args = ("--baseline", str(exported_onnx), "--candidate", str(exported_onnx))
    folder = tmp_path / "taken"
    folder.mkdir()
    _refused(capsys, folder, f"--report {folder} is a folder, expected a file path", *args)
    assert folder.is_dir() and list(folder.iterdir()) == []
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    _refused(capsys, blocker / "v.json", f"{blocker} is a file, not a folder", *args)
    _refused(capsys, tmp_path / "v.json", f"--cache {blocker} exists and is not a folder", *args, "--cache", str(blocker))


def test_read_only_report_folder_is_refused(exported_onnx, tmp_path, capsys, no_timing):
    args = ("--baseline", str(exported_onnx), "--candidate", str(exported_onnx))
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    os.chmod(readonly, 0o500)
    try:
        if os.access(readonly, os.W_OK):
            pytest.skip("running as root: permissions are not enforced")
        _refused(capsys, readonly / "v.json", "is not writable", *args)
    finally:
        os.chmod(readonly, 0o700)


@pytest.mark.parametrize("option, value, message", [
    ("--rounds", "0", "must be >= 1"), ("--warmup", "-1", "must be >= 0"), ("--seq", "0", "must be >= 1"),
    ("--batch", "0", "must be >= 1"), ("--threads", "-2", "must be >= 0"), ("--retries", "-1", "must be >= 0"),
    ("--seed", "-1", "must be >= 0"), ("--rounds", "2.5", "an integer"),
    ("--tolerance", "1", "must be < 1"), ("--tolerance", "-0.1", "must be >= 0"), ("--tolerance", "nan", "finite"),
    ("--atol", "-1e-4", "must be >= 0"), ("--atol", "inf", "finite"), ("--rtol", "nan", "finite"),
    ("--target", "0", "must be > 0"), ("--target", "inf", "finite"), ("--target", "nan", "finite"),
    ("--eval-windows", "0", "must be >= 1"),
])
def test_numeric_options_are_refused_at_parse_time(exported_onnx, tmp_path, capsys, no_timing, option, value,
                                                    message):
    report = tmp_path / "v.json"
    code = main(["verify", "--baseline", str(exported_onnx), "--candidate", str(exported_onnx), "--report", str(report),
                 f"{option}={value}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"argument {option}" in err and message in err and not report.exists()


def test_a_fresh_process_prints_one_line_and_leaves_nothing(exported_onnx, tmp_path):
    """The real command line: exit 2, no traceback, no report, for a truncated candidate and a bad option."""
    env = dict(os.environ)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(exported_onnx.read_bytes()[:1000])
    report = tmp_path / "v.json"
    for extra in (["--candidate", str(truncated)], ["--candidate", str(exported_onnx), "--tolerance", "1.5"]):
        r = cli(env, "verify", "--baseline", str(exported_onnx), "--report", str(report), *FAST, *extra)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
        assert "timing" not in r.stdout and not report.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["truncated.onnx"]


def test_valid_input_still_verifies(exported_onnx, tmp_path, capsys):
    """The checks refuse only bad input: the same files and options, valid, pass."""
    cand = copy_onnx(exported_onnx, tmp_path / "c.onnx")
    assert main(["verify", "--baseline", str(exported_onnx), "--candidate", str(cand), "--report",
                 str(tmp_path / "v.json"), "--tolerance", "0", "--target", "0.01", *FAST]) == 0
    assert "PASSED" in capsys.readouterr().out


@pytest.mark.parametrize("options, predicted", [
    ({}, 2.0),                                                      # a prefill-table member: its manifest predicts this
    ({"workload": {"prompt": 16, "generate": 8, "batch": 1}, "budget": "ttft"}, 2.0),  # TTFT is a prefill pass
    ({"workload": {"prompt": 16, "generate": 8, "batch": 1}, "budget": "e2e"}, None),  # not what one pass measures
    ({"workload": {"prompt": 16, "generate": 8, "batch": 1}, "budget": "decode"}, None),
])
def test_a_workload_members_manifest_prediction_is_not_compared_with_a_prefill_pass(options, predicted):
    from types import SimpleNamespace

    from ziplm_deploy.verify.inputs import Resolved
    from ziplm_deploy.verify.measure import VerifyOptions
    from ziplm_deploy.verify.predict import _predict
    from ziplm_deploy.verify.report import Speedup

    manifest = {"options": options, "metrics": {"predicted_speedup": 2.0, "predicted_ms": 10.0}}
    report = SimpleNamespace(speedup=Speedup(measured=1.9, candidate_ms=10.5))
    models = {"baseline": Resolved("baseline", "dense", "directory"),
              "candidate": Resolved("candidate", "member", "directory", manifest=manifest)}
    _predict(report, models, VerifyOptions())
    assert report.speedup.predicted == predicted
    assert (report.speedup.prediction_error is None) == (predicted is None)


@pytest.mark.parametrize("metric,message", [("ttft", "target metric ttft needs a workload"),
                                            ("tokens", "unknown target metric 'tokens'")])
def test_api_options_refuse_a_target_metric_without_a_workload(metric, message):
    """The CLI refuses --target-metric without --workload; the typed options refuse it for API callers too."""
    from ziplm_deploy.core.errors import UserError
    from ziplm_deploy.verify.measure import VerifyOptions

    with pytest.raises(UserError, match=message):
        VerifyOptions(target_metric=metric).validate()
    assert VerifyOptions(target_metric="decode", workload="chat").validate().target_metric == "decode"
