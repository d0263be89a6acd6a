"""int8 recipe options (``/fp32-embed``, ``/fp32-down``): labels, and exactly which nodes stay fp32 in the
profiler's block and model graphs and in graphs exported from PyTorch (Llama, GPT-2, BERT), run in ONNX Runtime."""

from __future__ import annotations

import json
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


# --- fp32-down=L,...: some layers only ---------------------------------------------------------------------------
@pytest.mark.parametrize("given,canonical", [
    ("int8-dynamic/fp32-down=9,1,2", "int8-dynamic/fp32-down=1,2,9"),
    ("int8-dynamic/fp32-down=0/fp32-embed", "int8-dynamic/fp32-embed/fp32-down=0"),
    ("int8-dynamic/per-channel/fp32-down=3", "int8-dynamic/per-channel/fp32-down=3"),
])
def test_layer_lists_parse_to_a_canonical_label(given, canonical):
    p = Precision.parse(given)
    assert p.label == canonical and Precision.parse(canonical) == p
    assert p.keeps_down(p.fp32_down_layers[0]) and not p.keeps_down(1000)
    from test_precision import FP

    assert DeviceFingerprint.from_json({**FP, "precision": canonical}, "t").precision == canonical
    if given != canonical:  # machine-written labels are canonical
        with pytest.raises(UserError, match="must be a precision label"):
            DeviceFingerprint.from_json({**FP, "precision": given}, "t")


@pytest.mark.parametrize("label", ["int8-dynamic/fp32-down=1,1", "int8-dynamic/fp32-down/fp32-down=1",
                                   "int8-dynamic/fp32-down=", "int8-dynamic/fp32-down=-1", "int8-dynamic/fp32-down=01",
                                   "int8-dynamic/fp32-down=1/fp32-down=2", "fp32/fp32-down=1", "int8-dynamic/fp32-down=a"])
def test_bad_layer_lists_are_refused(label):
    with pytest.raises(UserError, match="unknown precision"):
        Precision.parse(label)


def test_model_graph_keeps_only_the_listed_layers_down_projections():
    arch = arch_from_config(LLAMA)
    graph = model_graph(arch, ModelShape.dense(arch), Sizes(1, 8))
    kept = fp32_nodes(graph, Precision.parse("int8-dynamic/fp32-down=0,2"))
    weights = {n.name: [i for i in n.input if i.endswith("ffn.down.weight")] for n in graph.graph.node}
    assert sorted(w for n in kept for w in weights[n]) == ["layers.0.ffn.down.weight", "layers.2.ffn.down.weight"]
    assert fp32_nodes(block_graph(arch, "ffn", 64, Sizes(1, 8)), Precision.parse("int8-dynamic/fp32-down=0")) == \
        fp32_nodes(block_graph(arch, "ffn", 64, Sizes(1, 8)), DOWN)  # the block graph is layer 0
    assert fp32_nodes(linear_graph(arch, "out", None, Sizes(1, 8)), Precision.parse("int8-dynamic/fp32-down=0")) == []


def test_an_export_with_a_dropped_layer_maps_graph_layers_to_dense_indices(tmp_path):
    """Dense layer 0 dropped: the export's graph layer 0 is dense layer 1, so ``fp32-down=1`` keeps graph layer 0's
    projection (read from the export's ``ziplm_shape`` metadata) and ``fp32-down=0`` keeps none."""
    import torch
    from families import tiny_model

    from ziplm_deploy.export.onnx import export_onnx
    from ziplm_deploy.models import apply_shape

    torch.manual_seed(0)
    model = tiny_model("llama", layers=3).eval()
    a = model.config
    kv = a.num_key_value_heads
    shape = ModelShape((LayerShape(dropped=True),
                        LayerShape(heads=a.num_attention_heads, kv_heads=kv, ffn=a.intermediate_size),
                        LayerShape(heads=a.num_attention_heads, kv_heads=kv, ffn=a.intermediate_size // 2)))
    apply_shape(model, shape)
    export_onnx(model, tmp_path / "m.onnx")
    proto = onnx.load(str(tmp_path / "m.onnx"))
    scopes = {n.name: next(p.value for p in n.metadata_props if p.key == "pkg.torch.onnx.name_scopes")
              for n in proto.graph.node if any(p.key == "pkg.torch.onnx.name_scopes" for p in n.metadata_props)}
    kept = fp32_nodes(proto, Precision.parse("int8-dynamic/fp32-down=1"))
    assert len(kept) == 1 and "layers.0.mlp.down_proj" in scopes[kept[0]]
    assert fp32_nodes(proto, Precision.parse("int8-dynamic/fp32-down=0")) == []
    [last] = fp32_nodes(proto, Precision.parse("int8-dynamic/fp32-down=2"))
    assert "layers.1.mlp.down_proj" in scopes[last]
    q = onnx.load_from_string(quantize_graph(proto, Precision.parse("int8-dynamic/fp32-down=1")))
    assert {p.key: p.value for p in q.metadata_props}["ziplm_precision"] == "int8-dynamic/fp32-down=1"
    with pytest.raises(UserError, match="names layer 3, but the model has 3 layers"):  # not silently all-int8
        fp32_nodes(proto, Precision.parse("int8-dynamic/fp32-down=0,3"))


@pytest.fixture(scope="module")
def layer_table():
    """A tiny Llama profiled in ``int8-dynamic/fp32-embed/fp32-down=1`` (few rounds: entries, not timings, are
    checked here)."""
    from ziplm_deploy.profiling.profiler import ProfileOptions, profile
    from ziplm_deploy.runtime.timing import Protocol

    arch = arch_from_config(LLAMA)
    opts = ProfileOptions(seq=8, ffn_step=32, protocol=Protocol(warmup=1, rounds=3, recheck=2),
                          precision=Precision.parse("int8-dynamic/fp32-embed/fp32-down=1"))
    return profile(arch, opts, progress=False)


def test_a_layer_list_table_has_both_ffn_variants_and_uses_them_per_layer(layer_table, tmp_path):
    from ziplm_deploy.core.table import LatencyTable

    t = layer_table
    assert t.fingerprint.precision == "int8-dynamic/fp32-embed/fp32-down=1" and t.fp32_down_layers == (1,)
    assert [e.ffn for e in t.ffn_fp32_down] == [e.ffn for e in t.ffn]
    st = t.statistic
    down = {e.ffn: e.stats.get(st) for e in t.ffn_fp32_down}
    plain = {e.ffn: e.stats.get(st) for e in t.ffn}
    assert t.ffn_ms(64, layer=1) == down[64] and t.ffn_ms(64, layer=0) == plain[64] and t.ffn_ms(64) == plain[64]
    shape = ModelShape.dense(t.arch)
    assert t.raw_sum(shape) == pytest.approx(sum(t.attention_ms(l.heads, l.kv) for l in shape.layers)
                                             + 2 * plain[64] + down[64])
    t.save(tmp_path / "t.json")
    assert LatencyTable.load(tmp_path / "t.json").ffn_fp32_down == t.ffn_fp32_down
    payload = json.loads((tmp_path / "t.json").read_text())
    no_down = {k: v for k, v in payload.items() if k != "ffn_fp32_down"}
    with pytest.raises(UserError, match="needs 'ffn_fp32_down' entries"):
        LatencyTable.from_json(no_down, "t.json")
    plain_fp = {**payload, "fingerprint": {**payload["fingerprint"], "precision": "int8-dynamic/fp32-embed"}}
    with pytest.raises(UserError, match="needs no 'ffn_fp32_down' entries"):
        LatencyTable.from_json(plain_fp, "t.json")
    beyond = {**payload, "fingerprint": {**payload["fingerprint"], "precision": "int8-dynamic/fp32-down=7"}}
    with pytest.raises(UserError, match="names layer 7 of a 3-layer model"):
        LatencyTable.from_json(beyond, "t.json")


def test_the_search_times_each_layers_ffn_in_its_own_precision(layer_table):
    from ziplm_deploy.prune.search import as_latency_model

    model = as_latency_model(layer_table)
    a = layer_table.calibration.alpha
    assert model.ffn_ms(64, 1) == pytest.approx(a * layer_table.ffn_ms(64, 1))
    assert model.ffn_ms(64, 0) == pytest.approx(a * layer_table.ffn_ms(64, 0))


def test_profiling_a_layer_beyond_the_model_is_refused():
    from ziplm_deploy.profiling.profiler import ProfileOptions, profile

    opts = ProfileOptions(seq=8, precision=Precision.parse("int8-dynamic/fp32-down=3"))
    with pytest.raises(UserError, match="names layer 3 of a 3-layer model"):
        profile(arch_from_config(LLAMA), opts, progress=False)
