"""Edge install: ``profile``, ``predict`` and ORT timing run where ``import torch`` fails.

A shim directory first on PYTHONPATH holds ``torch.py`` and ``transformers.py`` that raise ImportError,
so any torch import on these paths breaks the command.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_GPT2 = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": 2, "n_embd": 32, "n_head": 4,
             "vocab_size": 100}
FAST = ["--rounds", "4", "--warmup", "1", "--ffn-step", "32", "--seq", "8", "--no-progress"]


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ziplm_deploy", *args], env=env, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny_gpt2")
    (d / "config.json").write_text(json.dumps(TINY_GPT2))
    return d


def test_torch_is_really_blocked(no_torch_env):
    r = subprocess.run([sys.executable, "-c", "import torch"], env=no_torch_env, capture_output=True, text=True)
    assert r.returncode != 0 and "not installed on this edge device" in r.stderr


def test_torch_free_layers_import(no_torch_env):
    code = ("import sys, ziplm_deploy.core.table, ziplm_deploy.runtime, ziplm_deploy.runtime.ort, "
            "ziplm_deploy.runtime.tensorrt, ziplm_deploy.runtime.torch_backend, ziplm_deploy.profiling.profiler, "
            "ziplm_deploy.cli.profile, ziplm_deploy.cli.predict; assert 'torch' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], env=no_torch_env, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_profile_check_predict_without_torch(no_torch_env, model_dir, tmp_path):
    table = tmp_path / "table.json"
    r = cli(no_torch_env, "profile", "--model", str(model_dir), "--runtime", "ort-cpu", "--out", str(table),
            "--check", "2", "--check-rounds", "3", "--check-out", str(tmp_path / "check.json"), *FAST)
    assert r.returncode == 0, r.stderr
    assert "latency table:" in r.stdout and "speedup error: median" in r.stdout
    assert json.loads((tmp_path / "check.json").read_text())["format"] == "ziplm-deploy/table-check"

    shape = tmp_path / "shape.json"
    shape.write_text(json.dumps({"format": "ziplm-deploy/shape", "version": 1,
                                 "layers": [{"heads": 2, "ffn": 50}, {"heads": 0, "ffn": 0}]}))
    r = cli(no_torch_env, "predict", "--table", str(table), "--shape", str(shape), "--model", str(model_dir))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("predicted latency: ") and "ms (dense " in r.stdout and "x  [onnxruntime" in r.stdout
    r = cli(no_torch_env, "predict", "--table", str(table), "--shape", str(shape), "--json")
    out = json.loads(r.stdout)
    assert out["speedup"] > 1 and out["predicted_ms"] > 0

    # check an existing table, with a gate
    r = cli(no_torch_env, "profile", "--model", str(model_dir), "--table", str(table), "--check", "1",
            "--check-rounds", "3", "--max-speedup-error", "100", *FAST)
    assert r.returncode == 0 and "PASSED" in r.stdout, r.stderr


def test_time_onnx_files_without_torch(no_torch_env, tmp_path):
    code = f"""
import sys
from ziplm_deploy.core.arch import arch_from_config
from ziplm_deploy.core.shape import ModelShape
from ziplm_deploy.profiling.blocks import Sizes, model_graph
from ziplm_deploy.runtime import get_backend
from ziplm_deploy.runtime.measure import time_models
from ziplm_deploy.runtime.timing import Protocol
arch = arch_from_config({TINY_GPT2!r})
path = {str(tmp_path / "m.onnx")!r}
open(path, "wb").write(model_graph(arch, ModelShape.dense(arch), Sizes(1, 8)).SerializeToString())
stats = time_models(get_backend("ort-cpu"), {{"m": path}}, Sizes(1, 8).dims, 100, Protocol(warmup=1, rounds=3, recheck=2))
assert stats["m"].n == 3 and stats["m:recheck"].n == 2 and stats["m"].p25 > 0
assert "torch" not in sys.modules
"""
    r = subprocess.run([sys.executable, "-c", code], env=no_torch_env, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_user_errors_are_one_line(no_torch_env, model_dir, tmp_path):
    r = cli(no_torch_env, "profile", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "t.json"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "model directory not found" in r.stderr
    r = cli(no_torch_env, "profile", "--model", str(model_dir), "--runtime", "trt", "--out", str(tmp_path / "t.json"))
    assert r.returncode == 2 and "runtime trt needs the tensorrt package and an NVIDIA GPU" in r.stderr
    r = cli(no_torch_env, "profile", "--model", str(model_dir), "--runtime", "torch", "--out", str(tmp_path / "t.json"))
    assert r.returncode == 2 and "runtime torch runs torch programs only" in r.stderr
    r = cli(no_torch_env, "profile", "--model", str(model_dir))
    assert r.returncode == 2 and "nothing to do" in r.stderr
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    r = cli(no_torch_env, "profile", "--model", str(model_dir), "--vocab-step", str(vocab), "--out", str(tmp_path / "v.json"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "leaves no trimmed head below the vocabulary" in r.stderr
    assert not (tmp_path / "v.json").exists()


def test_predict_refuses_a_table_of_another_model(no_torch_env, model_dir, tmp_path):
    table = ROOT / "profiles" / "smollm2-135m_ort-cpu_b1_s128_t1.json"
    if not table.exists():
        pytest.skip("reference table not generated yet")
    r = cli(no_torch_env, "predict", "--table", str(table), "--model", str(model_dir))
    assert r.returncode == 2 and "latency table was measured for a llama model" in r.stderr


def test_trimmed_heads_profile_and_predict_without_torch(no_torch_env, model_dir, tmp_path):
    """``profile --vocab-step``: trimmed LM heads in the table; ``predict`` of a shape keeping K output tokens
    counts its trimmed head and says the head's share (torch-free, the edge install)."""
    table = tmp_path / "table.json"
    r = cli(no_torch_env, "profile", "--model", str(model_dir), "--vocab-step", "30", "--out", str(table), *FAST)
    assert r.returncode == 0, r.stderr
    assert [e["rows"] for e in json.loads(table.read_text())["head"]] == [30, 60, 90]
    shape = tmp_path / "shape.json"
    layers = [{"heads": 4, "ffn": 128}, {"heads": 4, "ffn": 128}]
    shape.write_text(json.dumps({"format": "ziplm-deploy/shape", "version": 1, "layers": layers, "vocab": 40}))
    r = cli(no_torch_env, "predict", "--table", str(table), "--shape", str(shape))
    assert r.returncode == 0, r.stderr
    assert "LM head (40 of 100 output tokens): " in r.stdout and "% of it" in r.stdout
    trimmed = json.loads(cli(no_torch_env, "predict", "--table", str(table), "--shape", str(shape), "--json").stdout)
    dense = json.loads(cli(no_torch_env, "predict", "--table", str(table), "--json").stdout)
    assert trimmed["lm_head_rows"] == 40 and dense["lm_head_rows"] == 100
    assert trimmed["predicted_ms"] - dense["predicted_ms"] == pytest.approx(trimmed["lm_head_ms"] - dense["lm_head_ms"],
                                                                            abs=2e-4)
