"""Precision labels, fingerprints with and without a precision, and the one quantization function on
real block graphs (torch-free)."""

from __future__ import annotations

from collections import Counter

import onnx
import pytest

from ziplm_deploy.core.arch import arch_from_config
from ziplm_deploy.core.errors import UserError
from ziplm_deploy.core.fingerprint import DeviceFingerprint
from ziplm_deploy.profiling.blocks import Sizes, block_graph
from ziplm_deploy.runtime.quantize import (FP32, PRECISION_METADATA, Precision, precision_of_metadata,
                                           quantize_graph)

LLAMA = dict(model_type="llama", num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=64, vocab_size=100)
FP = {"cpu": "Test CPU", "cores": 2, "gpu": None, "runtime": "onnxruntime", "runtime_version": "0",
      "provider": "CPUExecutionProvider", "opt_level": "all", "threads": 1, "dtype": "float32", "batch": 1, "seq": 16,
      "mode": "prefill", "kv_len": 0, "opset": 18, "platform": "Linux", "producer": "test"}


@pytest.mark.parametrize("label,name,per_channel", [("fp32", "fp32", False), ("int8-dynamic", "int8-dynamic", False),
                                                     ("int8-dynamic/per-channel", "int8-dynamic", True)])
def test_labels_round_trip(label, name, per_channel):
    p = Precision.parse(label)
    assert (p.name, p.per_channel, p.label) == (name, per_channel, label)
    assert p.quantized == (name != "fp32")


@pytest.mark.parametrize("label", ["int8", "fp32/per-channel", "int8-dynamic/pc", "", "FP32"])
def test_unknown_labels_are_refused(label):
    with pytest.raises(UserError, match="unknown precision"):
        Precision.parse(label, "x.onnx")


def test_per_channel_needs_a_quantized_precision():
    with pytest.raises(UserError, match="per-channel needs a quantized precision"):
        Precision("fp32", per_channel=True)


def test_old_fingerprints_without_precision_are_fp32():
    assert DeviceFingerprint.from_json(dict(FP), "old table").precision == "fp32"
    int8 = DeviceFingerprint.from_json({**FP, "precision": "int8-dynamic"}, "new table")
    assert int8.precision == "int8-dynamic" and int8.to_json()["precision"] == "int8-dynamic"
    assert int8.differences(DeviceFingerprint.from_json(FP, "old")) == ["precision: 'int8-dynamic' != 'fp32'"]
    assert int8.precision_mismatch("fp32", "--candidate m.onnx") == (
        "the latency table was measured in precision int8-dynamic, but --candidate m.onnx is fp32")
    assert int8.precision_mismatch("int8-dynamic", "x") is None


@pytest.mark.parametrize("value,message", [("int4", "fingerprint.precision must be a precision label"),
                                           (8, "fingerprint.precision must be a string, got 8")])
def test_bad_fingerprint_precision_is_refused(value, message):
    with pytest.raises(UserError, match=message):
        DeviceFingerprint.from_json({**FP, "precision": value}, "t.json")


def test_old_fingerprints_timed_every_positions_logits_and_bad_logits_are_refused():
    assert DeviceFingerprint.from_json(dict(FP), "old table").logits == "all"
    last = DeviceFingerprint.from_json({**FP, "logits": "last"}, "new table")
    assert last.differences(DeviceFingerprint.from_json(FP, "old")) == ["logits: 'last' != 'all'"]
    for value, message in (("first", "fingerprint.logits must be one of all, last, got 'first'"),
                           (1, "fingerprint.logits must be a string, got 1")):
        with pytest.raises(UserError, match=message):
            DeviceFingerprint.from_json({**FP, "logits": value}, "t.json")


@pytest.mark.parametrize("per_channel", [False, True])
def test_quantize_graph_makes_integer_matmuls(per_channel):
    arch = arch_from_config(LLAMA)
    graph = block_graph(arch, "ffn", 64, Sizes(1, 8))
    assert quantize_graph(graph, FP32) == graph.SerializeToString()
    q = onnx.load_from_string(quantize_graph(graph, Precision("int8-dynamic", per_channel)))
    ops = Counter(n.op_type for n in q.graph.node)
    assert ops["MatMulInteger"] == 3 and ops["MatMul"] == 0 and ops["DynamicQuantizeLinear"] >= 1
    meta = {p.key: p.value for p in q.metadata_props}
    assert meta[PRECISION_METADATA] == Precision("int8-dynamic", per_channel).label
    assert precision_of_metadata(meta, "q").per_channel == per_channel
    assert precision_of_metadata({}, "old.onnx") == FP32
