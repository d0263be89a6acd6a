"""ONNX export of dense and pruned models: ORT matches PyTorch; the with-past graphs decode like generate();
every graph has its export reference beside it."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from families import FAMILIES, PLANS, greedy_ort, model_output as _out, ort_session, tiny_model
from ziplm_deploy.core.checks import TEMP_PREFIX
from ziplm_deploy.core.errors import UserError
from ziplm_deploy.core.manifest import file_sha256
from ziplm_deploy.core.parity import load_reference, reference_path
from ziplm_deploy.export import ExportValidationError, export_onnx
from ziplm_deploy.export.onnx import compare_outputs
from ziplm_deploy.models import LayerPlan, adapter_for, generation_cache, shrink


@pytest.mark.parametrize("family, pruned", [
    pytest.param(f, p, id=f"{f}-{'pruned' if p else 'dense'}",
                 marks=[pytest.mark.slow] if not p and f != "llama" else [])  # the pruned form covers more
    for f in FAMILIES for p in (False, True)])
def test_export_matches_pytorch_on_new_batch_and_length(family, pruned, tmp_path):
    model = tiny_model(family)
    if pruned:
        shrink(model, PLANS[family])
    result = export_onnx(model, tmp_path / "m.onnx")
    assert result.paths == [tmp_path / "m.onnx"] and all(d.ok for d in result.diffs)
    sess = ort_session(tmp_path / "m.onnx")
    names = [i.name for i in sess.get_inputs()]
    assert names[:2] == ["input_ids", "attention_mask"]
    ids = torch.randint(0, 120, (5, 17))  # neither the export sample nor the validation shape
    feeds = {"input_ids": ids.numpy(), "attention_mask": np.ones((5, 17), dtype=np.int64)}
    if "position_ids" in names:
        feeds["position_ids"] = np.tile(np.arange(17), (5, 1))
    got = sess.run(None, feeds)[0]
    assert np.abs(got - _out(model, ids).numpy()).max() < 1e-4
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(meta["ziplm_shape"]) == adapter_for(model).shape_of(model).to_json()
    assert "ziplm_source" not in meta  # no source directory given
    _check_references(result, [sess], ["decoder" if "position_ids" in names else "encoder"])
    axes = [d for d in onnx.load(str(tmp_path / "m.onnx")).graph.input[0].type.tensor_type.shape.dim]
    assert [a.dim_param for a in axes] == ["batch", "sequence"]


def test_sequence_classification_export(tmp_path):
    model = tiny_model("bert-cls")
    shrink(model, PLANS["bert"])
    result = export_onnx(model, tmp_path / "cls.onnx")
    assert [d.name for d in result.diffs] == ["logits"] and result.diffs[0].ok


@pytest.mark.parametrize("family", ["gpt2", "llama", pytest.param("gemma3", marks=pytest.mark.slow)])
def test_with_past_graphs_decode_like_generate(family, tmp_path):
    """Layer 0 without attention, a dropped layer and per-layer KV widths: the ORT greedy loop == generate().
    Gemma 3's 4-token sliding window is passed after the 6-token prompt, on renumbered cache slots."""
    model = tiny_model(family, layers=5)
    shrink(model, [LayerPlan(heads=()), LayerPlan(dropped=True)] + PLANS[family][1:])
    result = export_onnx(model, tmp_path / "lm.onnx", with_past=True)
    assert [p.name for p in result.paths] == ["lm.onnx", "lm_with_past.onnx"]
    assert {d.graph for d in result.diffs} == {"prefill", "decode"}
    prefill, decode = ort_session(result.paths[0]), ort_session(result.paths[1])
    n_attn = sum(1 for i in decode.get_inputs() if i.name.endswith(".key"))
    assert n_attn == 3  # layers 2, 3, 4 keep attention
    kv_widths = [decode.get_inputs()[3 + 2 * i].shape[1] for i in range(n_attn)]
    assert kv_widths == [s.kv for s in adapter_for(model).shape_of(model).layers if not s.dropped and s.heads]
    ids = torch.randint(1, 120, (2, 6))
    want = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0,
                          past_key_values=generation_cache()).numpy()
    got = greedy_ort(prefill, decode, ids.numpy(), 8, n_attn)
    assert np.array_equal(got, want)
    _check_references(result, [prefill, decode], ["prefill", "decode"])


def _check_references(result, sessions, graphs):
    """Beside each graph: its export reference (inputs, PyTorch outputs, the file's hash), nothing else."""
    assert result.references == [reference_path(p) for p in result.paths]
    assert sorted(result.paths[0].parent.iterdir()) == sorted(result.paths + result.references)  # no temporaries
    for path, sess, graph in zip(result.paths, sessions, graphs):
        ref = load_reference(reference_path(path))
        assert ref.graph == graph and ref.onnx_sha256 == file_sha256(path)
        assert list(ref.inputs) == [i.name for i in sess.get_inputs()]
        assert list(ref.outputs) == [o.name for o in sess.get_outputs()]
        for got, (name, want) in zip(sess.run(None, ref.inputs), ref.outputs.items()):
            assert np.abs(got - want).max() <= 1e-4 + 1e-3 * np.abs(want).max(), name


def test_with_past_on_an_encoder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="needs a decoder"):
        export_onnx(tiny_model("bert"), tmp_path / "x.onnx", with_past=True)
    assert list(tmp_path.iterdir()) == []


def test_compare_outputs_flags_every_failing_output():
    ref = [np.ones((2, 3)), np.zeros((2, 2)), np.ones(4)]
    got = [ref[0] + 1e-6, ref[1] + 0.5, np.ones(5)]
    diffs = compare_outputs("g", ["a", "b", "c"], got, ref, atol=1e-4, rtol=0)
    assert [d.ok for d in diffs] == [True, False, False]
    err = ExportValidationError([d for d in diffs if not d.ok])
    assert "g:b max|diff|=0.5" in str(err) and "g:c" in str(err) and "2 output(s)" in str(err)


def test_failed_validation_leaves_no_file(tmp_path, monkeypatch):
    """A graph that disagrees with PyTorch is never written (here: the tolerance is made impossible); the
    temporary folder a killed export of the same file left is swept."""
    stale = tmp_path / f"{TEMP_PREFIX}m.k1ll3d"
    stale.mkdir()
    (stale / "m.onnx").write_bytes(b"half")
    with pytest.raises(ExportValidationError):
        export_onnx(tiny_model("gpt2"), tmp_path / "m.onnx", atol=-1.0, rtol=0.0)
    assert list(tmp_path.iterdir()) == []
