"""``int8-plan``: the per-layer error of int8's per-tensor dynamic quantization of the FFN output projection's
input (checked against ONNX Runtime's own DynamicQuantizeLinear), dense layer indices on pruned models, and the
label it prints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ziplm_deploy.cli import main
from ziplm_deploy.core.shape import LayerShape, ModelShape
from ziplm_deploy.prune.outliers import DownInputError, down_input_errors, pick_layers, uint8_dynamic_error
from ziplm_deploy.runtime.quantize import Precision

WORDS = [f"t{i}" for i in range(60)]


def ort_dynamic_uint8(x: np.ndarray) -> np.ndarray:
    """x quantized and dequantized by ONNX Runtime's DynamicQuantizeLinear + DequantizeLinear."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "dq", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, list(x.shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("outlier", [1.0, 1e3, 1e5])
def test_the_error_is_the_one_onnx_runtime_makes(outlier):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 16, 32)).astype(np.float32)
    x[0, 0, 3] = outlier  # one massive activation on the first token
    per_token = np.linalg.norm(ort_dynamic_uint8(x) - x, axis=-1) / np.linalg.norm(x, axis=-1)
    want = float(per_token.mean())
    assert uint8_dynamic_error(torch.from_numpy(x)) == pytest.approx(want, rel=1e-3, abs=1e-6)
    assert uint8_dynamic_error(torch.zeros(2, 3)) == 0.0


def test_a_massive_activation_ruins_the_other_tokens():
    x = torch.randn(1, 64, 32)
    calm = uint8_dynamic_error(x)
    x[0, 0, 0] = 1e4
    assert uint8_dynamic_error(x) > 10 * calm


def test_pick_layers_takes_the_worst_in_layer_order():
    errors = [DownInputError(0, 0.1), DownInputError(3, 0.5), DownInputError(5, 0.3), DownInputError(7, 0.5)]
    assert pick_layers(errors, 2) == (3, 7) and pick_layers(errors, 3) == (3, 5, 7) and pick_layers(errors, 0) == ()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from families import tiny_llama_for, word_tokenizer

    from ziplm_deploy.models import save_model

    root = tmp_path_factory.mktemp("plan")
    tok = word_tokenizer(WORDS, 96)
    model = tiny_llama_for(tok, layers=3).eval()
    save_model(model, root / "dense", tokenizer=tok)
    (root / "calib.txt").write_text(" ".join(WORDS * 30))
    return {"root": root, "tok": tok, "model": model}


def test_errors_on_a_pruned_model_carry_dense_layer_indices(tiny):
    import copy

    from ziplm_deploy.models import apply_shape

    model = copy.deepcopy(tiny["model"])
    c = model.config
    shape = ModelShape((LayerShape(dropped=True),
                        LayerShape(heads=c.num_attention_heads, kv_heads=c.num_key_value_heads, ffn=0),
                        LayerShape(heads=c.num_attention_heads, kv_heads=c.num_key_value_heads, ffn=32)))
    apply_shape(model, shape)
    windows = torch.randint(0, 96, (2, 16))
    assert [e.layer for e in down_input_errors(model, windows)] == [2]  # 0 dropped, 1 has no FFN
    assert [e.layer for e in down_input_errors(tiny["model"], windows)] == [0, 1, 2]


def test_the_command_prints_a_label_that_parses_and_writes_its_plan(tiny, tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["int8-plan", "--model", str(tiny["root"] / "dense"), "--calib", str(tiny["root"] / "calib.txt"),
                 "--windows", "2", "--seq-len", "16", "--layers", "2", "--out", str(out)]) == 0
    label = capsys.readouterr().out.strip().splitlines()[-1]
    p = Precision.parse(label)
    assert p.fp32_embed and len(p.fp32_down_layers) == 2 and label.startswith("int8-dynamic/fp32-embed/fp32-down=")
    plan = json.loads(out.read_text())
    assert plan["precision"] == label and set(plan["errors"]) == {"0", "1", "2"}
    worst = sorted(plan["errors"], key=lambda k: -plan["errors"][k])[:2]
    assert sorted(int(k) for k in worst) == list(p.fp32_down_layers)


@pytest.mark.parametrize("extra,message", [
    (["--base", "int8-dynamic/fp32-down"], "must be an int8 recipe without fp32-down"),
    (["--base", "fp32"], "must be an int8 recipe"),
    (["--base", "int9"], "unknown precision 'int9'"),
    (["--layers", "4"], "--layers 4 is more than the model's 3 layers"),
])
def test_bad_plans_exit_2_before_work(tiny, tmp_path, capsys, extra, message):
    capsys.readouterr()
    assert main(["int8-plan", "--model", str(tiny["root"] / "dense"), "--out", str(tmp_path / "p.json"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "p.json").exists()
