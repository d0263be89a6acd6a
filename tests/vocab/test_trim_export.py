"""Trimmed models export: the graph computes K logits and gathers them into vocabulary positions; ONNX Runtime
matches PyTorch (judged at the kept logits' scale), greedy decoding with past KV equals transformers, and the
GenAI folder generates token-exact and never samples a dropped token."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from families import ort_session
from tinyvocab import VOCAB, tiny_gpt2
from ziplm_deploy.cli import main
from ziplm_deploy.core.shape import VOCAB_CONFIG_KEY
from ziplm_deploy.export import export_onnx
from ziplm_deploy.models import load_model, save_model
from ziplm_deploy.models.vocab import trim_model

KEPT = [0, 1, 2, 4, 6, 9, 12, 17, 23, 30, 41, 55, 70, 88]


def test_onnx_graph_gathers_k_logits_into_the_vocabulary(tmp_path):
    """One graph (no past: GenAI's export below covers prefill + decode with past KV)."""
    save_model(trim_model(tiny_gpt2(), KEPT), tmp_path / "m")
    model = load_model(tmp_path / "m")
    result = export_onnx(model, tmp_path / "m.onnx", source=tmp_path / "m")
    (logits,) = result.diffs
    assert logits.ok and logits.tolerance < 1e-4 + 1e-3 * 100  # judged at the kept logits' scale, not the fill's
    proto = onnx.load(str(tmp_path / "m.onnx"))
    shapes = {t.name: list(t.dims) for t in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    gather = producer["logits"]  # logits = Gather(Concat(MatMul(hidden, K-row head), max - 128), vocabulary index)
    concat = producer[gather.input[0]]
    matmul = producer[concat.input[0]]
    assert (gather.op_type, concat.op_type, matmul.op_type) == ("Gather", "Concat", "MatMul")
    assert sorted(shapes[matmul.input[1]]) == [len(KEPT), 32] and shapes[gather.input[1]] == [VOCAB]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["ziplm_config"])[VOCAB_CONFIG_KEY]["kept"] == KEPT
    ids = np.array([[5, 9, 14, 3, 30], [7, 7, 2, 60, 1]], dtype=np.int64)
    out = ort_session(tmp_path / "m.onnx").run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids),
                                                            "position_ids": np.tile(np.arange(5), (2, 1))})[0]
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(out, want, atol=1e-4, rtol=0)
    dropped = [i for i in range(VOCAB) if i not in KEPT]
    np.testing.assert_allclose(out[..., dropped], np.broadcast_to(out[..., KEPT].max(-1, keepdims=True) - 128,
                                                                  out[..., dropped].shape), atol=1e-4)
    assert np.isin(out.argmax(-1), KEPT).all()


def test_genai_folder_of_a_pruned_trimmed_model_is_token_exact_and_samples_only_kept_tokens(trimmed, tmp_path,
                                                                                          capsys):
    og = pytest.importorskip("onnxruntime_genai")
    from ziplm_deploy.export import genai

    assert main(["export", "--model", str(trimmed), "--genai", str(tmp_path / "g")]) == 0
    assert "equals transformers on 5 prompts" in capsys.readouterr().out
    kept = json.loads((trimmed / "config.json").read_text())[VOCAB_CONFIG_KEY]["kept"]
    manifest = genai.read_genai_manifest(tmp_path / "g")
    assert manifest["output_vocab"] == {"kept": len(kept), "vocab_size": VOCAB, "fill_margin": 128.0}
    assert manifest["kv_layers"] == [[1, 8], [2, 8]]  # the pruned shape: layer 1 has no attention
    model = load_model(trimmed)
    prompt = [[5, 9, 14, 3, 30, 31, 7]]
    want = genai.torch_generate(model, prompt, 10)[0]
    assert genai.genai_generate(tmp_path / "g", prompt, 10) == [want[: want.index(2)] if 2 in want else want]
    og_model = og.Model(str(tmp_path / "g"))
    sampled = []
    for seed in range(3):
        params = og.GeneratorParams(og_model)
        params.set_search_options(max_length=len(prompt[0]) + 40, do_sample=True, top_k=VOCAB, top_p=1.0,
                                  temperature=1.0, random_seed=seed)
        generator = og.Generator(og_model, params)
        generator.append_tokens(prompt[0])
        while not generator.is_done():
            generator.generate_next_token()
        sampled += [int(t) for t in generator.get_sequence(0)][len(prompt[0]):]
    assert len(sampled) > 10 and set(sampled) <= set(kept)
