"""int8 recipe options (``/fp32-embed``, ``/fp32-down``): labels, and exactly which nodes stay fp32 in the
profiler's block and model graphs and in graphs exported from PyTorch (Llama, GPT-2, BERT), run in ONNX Runtime."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

from ziplm_deploy.core.arch import arch_from_config
from ziplm_deploy.core.errors import UserError
from ziplm_deploy.core.fingerprint import PRECISION_LABELS, DeviceFingerprint
from ziplm_deploy.core.shape import LayerShape, ModelShape
from ziplm_deploy.profiling.blocks import Sizes, block_graph, linear_graph, model_graph
from ziplm_deploy.runtime.quantize import Precision, fp32_nodes, precision_from_args, quantize_graph

LLAMA = dict(model_type="llama", num_hidden_layers=3, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=64, vocab_size=100, tie_word_embeddings=True)
DOWN = Precision.parse("int8-dynamic/fp32-down")
EMBED = Precision.parse("int8-dynamic/fp32-embed")
BOTH = Precision.parse("int8-dynamic/fp32-embed/fp32-down")


def ops(graph_bytes: bytes) -> Counter:
    return Counter(n.op_type for n in onnx.load_from_string(graph_bytes).graph.node)


@pytest.mark.parametrize("label", PRECISION_LABELS)
def test_every_label_round_trips_and_is_a_valid_fingerprint_precision(label):
    p = Precision.parse(label)
    assert p.label == label and Precision.parse(p.label) == p


def test_options_in_any_order_name_the_same_precision():
    assert Precision.parse("int8-dynamic/fp32-down/per-channel") == Precision("int8-dynamic", True, False, True)
    assert Precision.parse("int8-dynamic/fp32-down/per-channel").label == "int8-dynamic/per-channel/fp32-down"
    assert precision_from_args("int8-dynamic/fp32-embed", per_channel=True).label == "int8-dynamic/per-channel/fp32-embed"


@pytest.mark.parametrize("label", ["fp32/fp32-down", "int8-dynamic/fp32-down/fp32-down", "int8-dynamic/fp16-down",
                                   "int8-dynamic/", "/fp32-down"])
def test_bad_recipes_are_refused(label):
    with pytest.raises(UserError, match="unknown precision"):
        Precision.parse(label)


def test_recipe_options_need_a_quantized_precision():
    with pytest.raises(UserError, match="fp32-embed, fp32-down needs a quantized precision"):
        Precision("fp32", fp32_embed=True, fp32_down=True)
    with pytest.raises(UserError, match="per-channel needs a quantized precision"):
        precision_from_args("fp32", per_channel=True)


def test_ffn_block_keeps_its_output_projection_fp32():
    arch = arch_from_config(LLAMA)
    graph = block_graph(arch, "ffn", 64, Sizes(1, 8))
    assert fp32_nodes(graph, DOWN) == [n.name for n in graph.graph.node if "layers.0.ffn.down.weight" in n.input]
    plain, down = ops(quantize_graph(graph, Precision("int8-dynamic"))), ops(quantize_graph(graph, DOWN))
    assert (plain["MatMulInteger"], plain["MatMul"]) == (3, 0)
    assert (down["MatMulInteger"], down["MatMul"]) == (2, 1)  # gate and up int8, down fp32


def test_attention_blocks_and_the_all_removed_model_have_nothing_to_keep():
    arch = arch_from_config(LLAMA)
    attn = block_graph(arch, "attention", 4, Sizes(1, 8), kv_heads=2)
    assert fp32_nodes(attn, DOWN) == []
    assert ops(quantize_graph(attn, DOWN))["MatMulInteger"] == 4  # q, k, v, o
    removed = ModelShape(tuple(LayerShape(heads=0, kv_heads=0, ffn=0) for _ in range(3)))
    assert fp32_nodes(model_graph(arch, removed, Sizes(1, 8)), DOWN) == []


def test_factorised_output_projection_keeps_both_halves():
    arch = arch_from_config(LLAMA)
    out = linear_graph(arch, "out", 8, Sizes(1, 8))
    assert len(fp32_nodes(out, DOWN)) == 2
    assert fp32_nodes(linear_graph(arch, "in", 8, Sizes(1, 8)), DOWN) == []


def test_model_graph_keeps_one_down_per_layer_with_ffn_and_the_tied_table():
    arch = arch_from_config(LLAMA)
    shape = ModelShape((LayerShape(heads=4, kv_heads=2, ffn=64), LayerShape(heads=2, kv_heads=1, ffn=0),
                        LayerShape(heads=0, kv_heads=0, ffn=32)))
    graph = model_graph(arch, shape, Sizes(1, 8))
    assert len(fp32_nodes(graph, DOWN)) == 2  # layers 0 and 2 have an FFN
    gathers = fp32_nodes(graph, EMBED)
    assert len(gathers) == 1 and all(n.op_type == "Gather" for n in graph.graph.node if n.name in gathers)
    q = onnx.load_from_string(quantize_graph(graph, BOTH))
    inits = {i.name: i for i in q.graph.initializer}
    assert inits["embed.tokens"].data_type == onnx.TensorProto.FLOAT  # not quantized: the tied head reads it as is
    assert "DequantizeLinear" not in Counter(n.op_type for n in q.graph.node) or not any(
        "embed.tokens" in i for n in q.graph.node if n.op_type == "DequantizeLinear" for i in n.input)


def test_a_graph_without_recognisable_names_is_refused_for_fp32_down():
    from onnx import helper

    w = onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "anon",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(UserError, match="cannot tell the FFN output projections in graph 'anon'"):
        fp32_nodes(model, DOWN)
    assert fp32_nodes(model, EMBED) == []


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Tiny Llama, GPT-2 and BERT exported by the product's exporter (fp32 ONNX with the exporter's scopes)."""
    import torch
    from families import tiny_model

    from ziplm_deploy.export.onnx import export_onnx

    root = tmp_path_factory.mktemp("recipes")
    out = {}
    for family in ("llama", "gpt2", "bert"):
        torch.manual_seed(0)
        model = tiny_model(family).eval()
        path = root / f"{family}.onnx"
        export_onnx(model, path)
        out[family] = (model, path)
    return out


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_exported_graphs_keep_exactly_each_layers_ffn_output_projection(exported, family):
    import onnxruntime as ort

    model, path = exported[family]
    proto = onnx.load(str(path))
    layers = model.config.num_hidden_layers
    kept = fp32_nodes(proto, DOWN)
    downs = [n for n in proto.graph.node if n.name in kept]
    assert len(downs) == layers, kept
    q = onnx.load_from_string(quantize_graph(proto, DOWN))
    fp32_matmuls = {n.name for n in q.graph.node if n.op_type in ("MatMul", "Gemm")}
    # kept as they were, or (GPT-2's Gemm) as the MatMul quantize_dynamic rewrote it to, never MatMulInteger
    assert all(n.name in fp32_matmuls or f"{n.name}_MatMul" in fp32_matmuls for n in downs), fp32_matmuls
    plain = Counter(n.op_type for n in onnx.load_from_string(quantize_graph(proto, Precision("int8-dynamic"))).graph.node)
    assert Counter(n.op_type for n in q.graph.node)["MatMulInteger"] == plain["MatMulInteger"] - layers
    sess = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: np.ones([d if isinstance(d, int) else 4 for d in i.shape], np.int64)
             for i in sess.get_inputs()}
    assert all(np.isfinite(o).all() for o in sess.run(None, feeds))


def test_fingerprints_accept_every_recipe():
    from test_precision import FP

    for label in PRECISION_LABELS:
        assert DeviceFingerprint.from_json({**FP, "precision": label}, "t").precision == label
