"""``int8-static`` (QDQ, activation scales calibrated once): the label's grammar, the profiler's tables on the
edge install (synthetic calibration: timing does not depend on the scales), an export calibrated on text
(``--calib``, or the text the member was pruned on) validated like int8-dynamic, and what is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from ziplm_deploy.cli import main
from ziplm_deploy.core.errors import UserError
from ziplm_deploy.runtime.quantize import Precision, calibration_feeds, quantize_graph

ROOT = Path(__file__).resolve().parents[2]
TEXT = "\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog near the river bank, "
                   f"while {i} small birds sing in the old oak tree." for i in range(90))
TINY_LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2, "hidden_size": 32,
              "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 100}
FAST = ["--rounds", "4", "--warmup", "1", "--ffn-step", "32", "--seq", "8", "--no-progress"]


def cli(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ziplm_deploy", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=env)


@pytest.mark.parametrize("label", ["int8-static", "int8-static/per-channel/fp32-embed",
                                   "int8-static/fp32-embed/fp32-down=1,2"])
def test_static_labels_parse_and_round_trip(label):
    p = Precision.parse(label)
    assert p.static and p.quantized and p.label == label


@pytest.mark.parametrize("label", ["int8-static/bogus", "int8-statics", "int8-static/fp32-down/fp32-down=1"])
def test_bad_static_labels_are_refused(label):
    with pytest.raises(UserError, match="unknown precision"):
        Precision.parse(label)


def _graph():
    from ziplm_deploy.core.arch import arch_from_config
    from ziplm_deploy.core.shape import ModelShape
    from ziplm_deploy.profiling.blocks import Sizes, model_graph

    arch = arch_from_config({**TINY_LLAMA, "intermediate_size": 96})
    return model_graph(arch, ModelShape.dense(arch), Sizes(1, 8))


def test_static_quantizes_only_weight_matmuls_and_keeps_the_recipe_fp32():
    """Q/K/V/O, gate/up/down and the head are quantized (QDQ around a constant weight); the attention's
    activation x activation MatMuls stay fp32; /fp32-down keeps the output projections' weights fp32."""
    proto = _graph()
    q = onnx.load_from_string(quantize_graph(proto, Precision.parse("int8-static")))
    dq_weights = {n.input[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
    weights = {i.name for i in proto.graph.initializer if i.name.endswith(".weight") and len(i.dims) == 2}
    quantized = {w for w in weights if any(d.startswith(w) for d in dq_weights)}
    assert {"layers.0.ffn.down.weight", "layers.1.attn.q.weight", "layers.1.ffn.gate.weight"} <= quantized
    plain = Counter(n.op_type for n in proto.graph.node)["MatMul"]
    assert Counter(n.op_type for n in q.graph.node)["MatMul"] == plain  # QDQ: MatMuls stay, fed by DequantizeLinear
    activations = [n for n in q.graph.node if n.op_type == "MatMul" and not any("weight" in i for i in n.input)]
    assert activations and not any(i.endswith("_DequantizeLinear_Output") for n in activations for i in n.input)
    keep = onnx.load_from_string(quantize_graph(proto, Precision.parse("int8-static/fp32-down")))
    dq_keep = {n.input[0] for n in keep.graph.node if n.op_type == "DequantizeLinear"}
    assert not any(d.startswith("layers.0.ffn.down.weight") for d in dq_keep)
    assert any(d.startswith("layers.0.ffn.up.weight") for d in dq_keep)


def test_calibration_feeds_of_token_windows_and_refusals():
    proto = _graph()
    windows = np.arange(24).reshape(3, 8) % 100
    feeds = calibration_feeds(proto, windows)
    assert len(feeds) == 3 and np.array_equal(feeds[1]["input_ids"], windows[1:2])
    assert feeds[0]["attention_mask"].shape == (1, 8) and np.array_equal(feeds[2]["position_ids"][0], np.arange(8))
    assert len(calibration_feeds(proto)) == 4  # synthetic, below the graph's 100-token vocabulary
    assert all(int(f["input_ids"].max()) < 100 for f in calibration_feeds(proto))
    with pytest.raises(UserError, match="beyond the graph's vocabulary of 100"):
        calibration_feeds(proto, windows + 100)


def test_static_table_on_the_edge_install(no_torch_env, tmp_path):
    """The profiler quantizes its block graphs int8-static without torch and records the precision."""
    from ziplm_deploy.core.table import LatencyTable

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(TINY_LLAMA))
    table = tmp_path / "static.json"
    r = cli("profile", "--model", tmp_path / "m", "--precision", "int8-static/fp32-down", "--out", table, *FAST,
            env=no_torch_env)
    assert r.returncode == 0, r.stderr
    assert LatencyTable.load(table).fingerprint.precision == "int8-static/fp32-down"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama with SmolLM2's tokenizer and text to calibrate on."""
    from families import tiny_llama_for

    from ziplm_deploy.models import save_model
    from ziplm_deploy.models.assets import smollm2_dir
    from ziplm_deploy.models.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("static")
    tokenizer = load_tokenizer(smollm2_dir())
    save_model(tiny_llama_for(tokenizer, layers=2).eval(), root / "llama", tokenizer=tokenizer)
    (root / "text.txt").write_text(TEXT)
    return {"root": root, "dir": root / "llama", "text": root / "text.txt"}


def test_export_calibrated_on_text_is_validated_and_recorded(tiny, tmp_path, capsys):
    out = tmp_path / "static" / "llama.onnx"
    assert main(["export", "--model", str(tiny["dir"]), "--out", str(out), "--precision", "int8-static/fp32-embed",
                 "--calib", str(tiny["text"]), "--eval-data", str(tiny["text"]), "--eval-windows", "2",
                 "--eval-seq", "32"]) == 0
    printed = capsys.readouterr().out
    assert "top-1 agreement with fp32 PyTorch" in printed and "perplexity" in printed
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["ziplm_precision"] == "int8-static/fp32-embed"
    quality = json.loads(meta["ziplm_quality"])
    assert quality["top1_agreement"] >= 0.9 and quality["perplexity"] > 0
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"] and not ops["MatMulInteger"]
    assert main(["inspect", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["precision"] == "int8-static/fp32-embed"


def _refused(capsys, argv: list[str], message: str) -> None:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, (code, err)


@pytest.mark.parametrize("flags,message", [
    (["--precision", "int8-static"], "int8-static needs calibration text"),  # no --calib, no prune manifest
    (["--precision", "int8-dynamic", "--calib", "x.txt"], "--calib calibrates int8-static"),
    (["--precision", "fp32", "--calib", "x.txt"], "validate a quantized export"),
])
def test_static_export_refusals_exit_2_before_work(tiny, tmp_path, flags, message, capsys):
    out = tmp_path / "o" / "m.onnx"
    _refused(capsys, ["export", "--model", str(tiny["dir"]), "--out", str(out), *flags], message)
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_genai_refuses_static(tiny, tmp_path, capsys):
    _refused(capsys, ["export", "--model", str(tiny["dir"]), "--genai", str(tmp_path / "g"), "--precision",
                      "int8-static"], "--genai folders are fp32 or int8-dynamic, not int8-static")
    assert not (tmp_path / "g").exists()


def test_a_member_is_calibrated_on_the_text_it_was_pruned_on(tiny, tmp_path):
    """Without --calib, the text a prune run recorded (manifest options.data) calibrates it: `export` of a
    member and `verify`'s export of it get the same windows; a member whose text is gone is refused."""
    import shutil

    from ziplm_deploy.core.manifest import MANIFEST_FILE, new_manifest
    from ziplm_deploy.export.quantize import static_calibration_windows
    from ziplm_deploy.models.tokenizer import load_tokenizer
    from ziplm_deploy.prune.data import calibration_windows

    from ziplm_deploy.models import adapter_for, load_model

    member = tmp_path / "member"
    shutil.copytree(tiny["dir"], member)
    model = load_model(member)
    shape = adapter_for(model).shape_of(model).to_json()
    new_manifest("ziplm", tiny["dir"], shape, options={"data": str(tiny["text"])}).save(member / MANIFEST_FILE)
    want = calibration_windows(load_tokenizer(member), tiny["text"], 128, 16).numpy()
    assert np.array_equal(static_calibration_windows(member), want)
    gone = tmp_path / "gone.txt"
    new_manifest("ziplm", tiny["dir"], shape, options={"data": str(gone)}).save(member / MANIFEST_FILE)
    with pytest.raises(UserError, match="gone.txt"):
        static_calibration_windows(member)
