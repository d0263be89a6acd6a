"""The CLI: shrink -> export -> inspect on a model directory, and bad input -> one line, exit 2, no output left."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from families import tiny_model
from ziplm_deploy.cli import main
from ziplm_deploy.core.shape import LayerShape, ModelShape
from ziplm_deploy.models import save_model


@pytest.fixture
def gpt2_dir(tmp_path):
    return save_model(tiny_model("gpt2"), tmp_path / "gpt2")


def _shape_file(path, layers):
    ModelShape(tuple(layers)).save(path)
    return path


def test_shrink_export_inspect(gpt2_dir, tmp_path, capsys):
    shape = _shape_file(tmp_path / "s.json", [LayerShape(0, 64), LayerShape(dropped=True), LayerShape(2, 0), LayerShape(4, 192)])
    assert main(["shrink", "--model", str(gpt2_dir), "--shape", str(shape), "--out", str(tmp_path / "small")]) == 0
    manifest = json.loads((tmp_path / "small" / "manifest.json").read_text())
    assert manifest["format"] == "ziplm-deploy/manifest" and manifest["method"] == "shrink-magnitude"
    assert manifest["shape"] == ModelShape.load(shape).to_json()
    assert main(["export", "--model", str(tmp_path / "small"), "--out", str(tmp_path / "small.onnx"), "--with-past"]) == 0
    assert (tmp_path / "small_with_past.onnx").is_file()
    capsys.readouterr()
    for target in ("small", "small.onnx"):
        assert main(["inspect", str(tmp_path / target), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["shape"] == ModelShape.load(shape).to_json()
        assert report["block_parameters"] < report["dense_block_parameters"]
        assert report["flops"] < report["dense_flops"]
    assert main(["inspect", str(tmp_path / "small")]) == 0
    out = capsys.readouterr().out
    assert "    1  dropped" in out and "3 of 4 layers" in out


def _fails(argv, capsys, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_bad_input_gives_one_line_and_exit_2(gpt2_dir, tmp_path, capsys):
    good = _shape_file(tmp_path / "s.json", [LayerShape(2, 64)] * 4)
    out = tmp_path / "out"
    _fails(["shrink", "--model", str(tmp_path / "missing"), "--shape", str(good), "--out", str(out)], capsys,
           "model directory not found")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "ziplm-deploy/shape", "version": 1, "layers": [{"heads": 9, "ffn": 1}] * 4}))
    _fails(["shrink", "--model", str(gpt2_dir), "--shape", str(bad), "--out", str(out)], capsys,
           "asks for 9 heads; the model has 4")
    bad.write_text("not json")
    _fails(["shrink", "--model", str(gpt2_dir), "--shape", str(bad), "--out", str(out)], capsys, "not valid JSON")
    t5 = tmp_path / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5", "architectures": ["T5Model"]}))
    _fails(["export", "--model", str(t5), "--out", str(tmp_path / "t5.onnx")], capsys,
           "unsupported architecture model_type='t5'")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage\xff\xff")
    _fails(["inspect", str(corrupt)], capsys, "is not a readable ONNX model")
    _fails(["export", "--model", str(gpt2_dir), "--out", str(tmp_path / "x.txt")], capsys, "must end in .onnx")
    assert not out.exists() and not (tmp_path / "t5.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "corrupt.onnx", "gpt2", "s.json", "t5"]


def test_existing_output_is_not_overwritten(gpt2_dir, tmp_path, capsys):
    good = _shape_file(tmp_path / "s.json", [LayerShape(2, 64)] * 4)
    (tmp_path / "taken").mkdir()
    _fails(["shrink", "--model", str(gpt2_dir), "--shape", str(good), "--out", str(tmp_path / "taken")], capsys,
           "already exists")


def test_console_entry_point_runs_in_a_fresh_process(gpt2_dir):
    proc = subprocess.run([sys.executable, "-m", "ziplm_deploy", "inspect", str(gpt2_dir)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "gpt2 GPT2LMHeadModel, 4 of 4 layers" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "ziplm_deploy", "inspect", "/nonexistent"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
