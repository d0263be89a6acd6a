"""``profile --precision int8-dynamic`` on the edge install (torch blocked): every graph quantized, the
precision in the table's fingerprint, ``--check`` quantizes its shapes the same way, and a table of
another precision is refused with one line naming both."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY_LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2, "hidden_size": 32,
              "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 100}
FAST = ["--rounds", "4", "--warmup", "1", "--ffn-step", "32", "--seq", "8", "--no-progress"]


def cli(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ziplm_deploy", *args], env=env, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny_llama")
    (d / "config.json").write_text(json.dumps(TINY_LLAMA))
    return d


@pytest.fixture(scope="module")
def int8_table(no_torch_env, model_dir, tmp_path_factory) -> Path:
    table = tmp_path_factory.mktemp("int8") / "int8.json"
    r = cli(no_torch_env, "profile", "--model", str(model_dir), "--precision", "int8-dynamic", "--out", str(table),
            "--check", "2", "--check-rounds", "3", *FAST)
    assert r.returncode == 0, r.stderr
    assert "prefill, int8-dynamic)" in r.stdout and "speedup error: median" in r.stdout
    return table


def test_int8_table_records_its_precision_and_the_fp32_dense_model(int8_table):
    from ziplm_deploy.core.table import LatencyTable

    table = LatencyTable.load(int8_table)
    assert table.fingerprint.precision == "int8-dynamic"
    assert {"dense", "removed", "dense_recheck", "dense_fp32"} <= set(table.references)
    assert json.loads(int8_table.read_text())["fingerprint"]["precision"] == "int8-dynamic"


def test_check_of_an_int8_table_quantizes_the_shapes(no_torch_env, model_dir, int8_table, tmp_path):
    out = tmp_path / "check.json"
    r = cli(no_torch_env, "profile", "--model", str(model_dir), "--table", str(int8_table), "--precision",
            "int8-dynamic", "--check", "2", "--check-rounds", "3", "--check-out", str(out), *FAST)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(out.read_text())["shapes"]) == 2


@pytest.mark.parametrize("flags,mine", [([], "fp32"), (["--precision", "int8-dynamic", "--per-channel"],
                                                       "int8-dynamic/per-channel")])
def test_check_refuses_a_table_of_another_precision(no_torch_env, model_dir, int8_table, tmp_path, flags, mine,
                                                   one_line_error):
    out = tmp_path / "check.json"
    r = cli(no_torch_env, "profile", "--model", str(model_dir), "--table", str(int8_table), "--check", "1",
            "--check-out", str(out), *flags, *FAST)
    one_line_error(r, "measured in precision int8-dynamic", f"this check is {mine}", "--precision int8-dynamic")
    assert not out.exists()


@pytest.mark.parametrize("flags,message", [
    (["--per-channel"], "per-channel needs a quantized precision"),
    (["--precision", "fp32/fp32-down"], "unknown precision 'fp32/fp32-down'"),
    (["--precision", "int8-dynamic/fp32-down/fp32-down"], "unknown precision"),
    (["--precision", "int8-dynamic", "--runtime", "ort-cuda"], "runtime ort-cuda does not run it"),
    (["--precision", "int8-dynamic", "--dtype", "float16"], "quantizes float32 graphs, not float16"),
    (["--precision", "int4"], "unknown precision 'int4'"),
    (["--precision", "int8-dynamic/fp32-down=5"], "names layer 5, but"),
])
def test_bad_precision_options_exit_2_before_work(no_torch_env, model_dir, tmp_path, flags, message, one_line_error):
    out = tmp_path / "t.json"
    r = cli(no_torch_env, "profile", "--model", str(model_dir), "--out", str(out), *flags, *FAST)
    one_line_error(r, message)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_recipe_table_records_its_recipe_and_refuses_plain_int8_checks(no_torch_env, model_dir, int8_table,
                                                                         tmp_path, one_line_error):
    """``int8-dynamic/fp32-embed/fp32-down`` (options in any order) profiles torch-free, its fingerprint names the
    recipe, and a check in another recipe (plain int8) is refused, as is checking the plain table in the recipe."""
    from ziplm_deploy.core.table import LatencyTable

    table = tmp_path / "recipe.json"
    r = cli(no_torch_env, "profile", "--model", str(model_dir), "--precision", "int8-dynamic/fp32-down/fp32-embed",
            "--out", str(table), "--check", "1", "--check-rounds", "3", *FAST)
    assert r.returncode == 0, r.stderr
    assert LatencyTable.load(table).fingerprint.precision == "int8-dynamic/fp32-embed/fp32-down"
    r = cli(no_torch_env, "profile", "--model", str(model_dir), "--table", str(table), "--precision", "int8-dynamic",
            "--check", "1", "--check-out", str(tmp_path / "c.json"), *FAST)
    one_line_error(r, "measured in precision int8-dynamic/fp32-embed/fp32-down", "this check is int8-dynamic")
    r = cli(no_torch_env, "profile", "--model", str(model_dir), "--table", str(int8_table), "--precision",
            "int8-dynamic/fp32-embed/fp32-down", "--check", "1", "--check-out", str(tmp_path / "c.json"), *FAST)
    one_line_error(r, "measured in precision int8-dynamic,", "this check is int8-dynamic/fp32-embed/fp32-down")
    assert not (tmp_path / "c.json").exists()


def test_quantize_and_ort_perplexity_without_torch(no_torch_env, tmp_path):
    """The edge install quantizes a graph and measures its perplexity in ORT with torch blocked."""
    code = f"""
import sys
import numpy as np
from ziplm_deploy.core.arch import arch_from_config
from ziplm_deploy.core.shape import ModelShape
from ziplm_deploy.profiling.blocks import Sizes, model_graph
from ziplm_deploy.runtime.quantize import Precision, quantize_graph
from ziplm_deploy.verify.ort_quality import ort_perplexity, read_texts
arch = arch_from_config({TINY_LLAMA!r})
graph = model_graph(arch, ModelShape.dense(arch), Sizes(1, 8))
path = {str(tmp_path / "m.onnx")!r}
open(path, "wb").write(quantize_graph(graph, Precision("int8-dynamic")))
windows = np.random.default_rng(0).integers(0, 100, (2, 12))
ppl = ort_perplexity(path, windows)
open({str(tmp_path / "t.txt")!r}, "w").write("one\\n\\ntwo")
assert read_texts({str(tmp_path / "t.txt")!r}) == ["one", "two"]
assert 1 < ppl < 1e6 and "torch" not in sys.modules, ppl
"""
    r = subprocess.run([sys.executable, "-c", code], env=no_torch_env, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
