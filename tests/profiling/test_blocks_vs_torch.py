"""A block graph computes what the transformers block computes, for the same weights.

Pruned heads are checked against the dense PyTorch block with the removed heads masked (their
output-projection columns zeroed), which is what physical pruning must reproduce.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ziplm_deploy.core.arch import arch_from_config  # noqa: E402
from ziplm_deploy.profiling.blocks import Sizes, block_graph  # noqa: E402
from ziplm_deploy.runtime import get_backend  # noqa: E402

B, S, ATOL = 2, 7, 2e-5


def _np(t) -> np.ndarray:
    return t.detach().numpy().astype(np.float32)


def _run(arch, kind, width, kv, weights, feeds, sizes=Sizes(B, S)):
    model = block_graph(arch, kind, width, sizes, kv, weights=weights)
    with get_backend("ort-cpu", threads=1).load(model.SerializeToString()) as s:
        return s.run({k: v for k, v in feeds.items() if k in {i.name for i in s.inputs}})


def _causal(n: int) -> np.ndarray:
    return np.triu(np.full((n, n), -1e9, np.float32), 1)[None, None].repeat(B, 0)


@pytest.mark.parametrize("heads", [4, 2, 0])
def test_bert_attention_and_ffn(heads):
    cfg = dict(model_type="bert", hidden_size=32, num_attention_heads=4, intermediate_size=48, num_hidden_layers=1,
               vocab_size=50, attn_implementation="eager", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    config = transformers.BertConfig(**cfg)
    layer = transformers.models.bert.modeling_bert.BertLayer(config).eval()
    arch = arch_from_config(config.to_dict())
    d, kd = arch.head_dim, heads * arch.head_dim
    att = layer.attention
    with torch.no_grad():
        att.output.dense.weight[:, kd:] = 0  # mask the removed heads
        for p in (att.output.LayerNorm.weight, att.output.LayerNorm.bias, att.output.dense.bias):
            p.add_(torch.randn_like(p) * 0.1)
    sa = att.self
    w = {
        "layers.0.attn.q.weight": _np(sa.query.weight[:kd].T), "layers.0.attn.q.bias": _np(sa.query.bias[:kd]),
        "layers.0.attn.k.weight": _np(sa.key.weight[:kd].T), "layers.0.attn.k.bias": _np(sa.key.bias[:kd]),
        "layers.0.attn.v.weight": _np(sa.value.weight[:kd].T), "layers.0.attn.v.bias": _np(sa.value.bias[:kd]),
        "layers.0.attn.o.weight": _np(att.output.dense.weight[:, :kd].T), "layers.0.attn.o.bias": _np(att.output.dense.bias),
        "layers.0.attn.ln.weight": _np(att.output.LayerNorm.weight), "layers.0.attn.ln.bias": _np(att.output.LayerNorm.bias),
    }
    x = torch.randn(B, S, arch.hidden)
    mask = np.zeros((B, 1, 1, S), np.float32)
    mask[1, ..., -2:] = -1e9  # padding in the second row
    with torch.no_grad():
        ref = att(x, attention_mask=torch.from_numpy(mask))[0]
    out = _run(arch, "attention", heads, None, w, {"hidden": _np(x), "mask": mask})["out"]
    np.testing.assert_allclose(out, _np(ref), atol=ATOL)

    width = 20
    inter, output = layer.intermediate, layer.output
    w = {
        "layers.0.ffn.up.weight": _np(inter.dense.weight[:width].T), "layers.0.ffn.up.bias": _np(inter.dense.bias[:width]),
        "layers.0.ffn.down.weight": _np(output.dense.weight[:, :width].T), "layers.0.ffn.down.bias": _np(output.dense.bias),
        "layers.0.ffn.ln.weight": _np(output.LayerNorm.weight), "layers.0.ffn.ln.bias": _np(output.LayerNorm.bias),
    }
    with torch.no_grad():
        output.dense.weight[:, width:] = 0
        ref = output(inter(x), x)
    out = _run(arch, "ffn", width, None, w, {"hidden": _np(x)})["out"]
    np.testing.assert_allclose(out, _np(ref), atol=ATOL)


@pytest.mark.parametrize("heads", [4, 3])
def test_gpt2_attention_and_ffn(heads):
    torch.manual_seed(1)
    config = transformers.GPT2Config(n_embd=32, n_head=4, n_layer=1, vocab_size=50, attn_implementation="eager",
                                     resid_pdrop=0.0, attn_pdrop=0.0, embd_pdrop=0.0)
    block = transformers.models.gpt2.modeling_gpt2.GPT2Block(config, layer_idx=0).eval()
    arch = arch_from_config(config.to_dict())
    e, kd = arch.hidden, heads * arch.head_dim
    attn = block.attn
    with torch.no_grad():
        attn.c_proj.weight[kd:] = 0
    cols = np.r_[0:kd, e:e + kd, 2 * e:2 * e + kd]
    w = {
        "layers.0.attn.norm.weight": _np(block.ln_1.weight), "layers.0.attn.norm.bias": _np(block.ln_1.bias),
        "layers.0.attn.qkv.weight": _np(attn.c_attn.weight)[:, cols], "layers.0.attn.qkv.bias": _np(attn.c_attn.bias)[cols],
        "layers.0.attn.o.weight": _np(attn.c_proj.weight[:kd]), "layers.0.attn.o.bias": _np(attn.c_proj.bias),
    }
    x = torch.randn(B, S, e)
    mask = _causal(S)
    with torch.no_grad():
        ref = x + attn(block.ln_1(x), attention_mask=torch.from_numpy(mask))[0]
    out = _run(arch, "attention", heads, None, w, {"hidden": _np(x), "mask": mask})["out"]
    np.testing.assert_allclose(out, _np(ref), atol=ATOL)

    width, mlp = 40, block.mlp
    w = {
        "layers.0.ffn.norm.weight": _np(block.ln_2.weight), "layers.0.ffn.norm.bias": _np(block.ln_2.bias),
        "layers.0.ffn.up.weight": _np(mlp.c_fc.weight[:, :width]), "layers.0.ffn.up.bias": _np(mlp.c_fc.bias[:width]),
        "layers.0.ffn.down.weight": _np(mlp.c_proj.weight[:width]), "layers.0.ffn.down.bias": _np(mlp.c_proj.bias),
    }
    with torch.no_grad():
        mlp.c_proj.weight[width:] = 0
        ref = x + mlp(block.ln_2(x))
    out = _run(arch, "ffn", width, None, w, {"hidden": _np(x)})["out"]
    np.testing.assert_allclose(out, _np(ref), atol=ATOL)


def _llama(seed: int):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                      intermediate_size=48, num_hidden_layers=1, vocab_size=50,
                                      attn_implementation="eager", rms_norm_eps=1e-5)
    layer = transformers.models.llama.modeling_llama.LlamaDecoderLayer(config, layer_idx=0).eval()
    with torch.no_grad():
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            norm.weight.add_(torch.randn_like(norm.weight) * 0.1)
    rope = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config)
    return config, layer, rope, arch_from_config(config.to_dict())


def _llama_attention_weights(layer, heads: int, kv: int, d: int) -> dict[str, np.ndarray]:
    a = layer.self_attn
    return {
        "layers.0.attn.norm.weight": _np(layer.input_layernorm.weight),
        "layers.0.attn.q.weight": _np(a.q_proj.weight[:heads * d].T),
        "layers.0.attn.k.weight": _np(a.k_proj.weight[:kv * d].T),
        "layers.0.attn.v.weight": _np(a.v_proj.weight[:kv * d].T),
        "layers.0.attn.o.weight": _np(a.o_proj.weight[:, :heads * d].T),
    }


@pytest.mark.parametrize("heads,kv", [(4, 2), (2, 1)])
def test_llama_gqa_attention_and_swiglu(heads, kv):
    config, layer, rope, arch = _llama(2)
    d = arch.head_dim
    with torch.no_grad():
        layer.self_attn.o_proj.weight[:, heads * d:] = 0  # drop the last KV group and its query heads
    x = torch.randn(B, S, arch.hidden)
    cos, sin = rope(x, torch.arange(S).repeat(B, 1))
    mask = _causal(S)
    with torch.no_grad():
        ref = x + layer.self_attn(layer.input_layernorm(x), position_embeddings=(cos, sin),
                                  attention_mask=torch.from_numpy(mask))[0]
    feeds = {"hidden": _np(x), "mask": mask, "cos": _np(cos), "sin": _np(sin)}
    out = _run(arch, "attention", heads, kv, _llama_attention_weights(layer, heads, kv, d), feeds)["out"]
    np.testing.assert_allclose(out, _np(ref), atol=ATOL)

    width, mlp = 30, layer.mlp
    w = {
        "layers.0.ffn.norm.weight": _np(layer.post_attention_layernorm.weight),
        "layers.0.ffn.gate.weight": _np(mlp.gate_proj.weight[:width].T),
        "layers.0.ffn.up.weight": _np(mlp.up_proj.weight[:width].T),
        "layers.0.ffn.down.weight": _np(mlp.down_proj.weight[:, :width].T),
    }
    with torch.no_grad():
        mlp.down_proj.weight[:, width:] = 0
        ref = x + mlp(layer.post_attention_layernorm(x))
    out = _run(arch, "ffn", width, None, w, {"hidden": _np(x)})["out"]
    np.testing.assert_allclose(out, _np(ref), atol=ATOL)


def test_llama_decode_block_matches_last_prefill_position():
    """Decoding one token with the KV cache of the first S tokens equals the prefill's last position."""
    config, layer, rope, arch = _llama(3)
    d, heads, kv = arch.head_dim, 4, 2
    a = layer.self_attn
    x = torch.randn(B, S + 1, arch.hidden)
    cos, sin = rope(x, torch.arange(S + 1).repeat(B, 1))
    with torch.no_grad():
        ref = x + a(layer.input_layernorm(x), position_embeddings=(cos, sin),
                    attention_mask=torch.from_numpy(_causal(S + 1)))[0]
        h = layer.input_layernorm(x[:, :S])
        k = a.k_proj(h).view(B, S, kv, d).transpose(1, 2)
        v = a.v_proj(h).view(B, S, kv, d).transpose(1, 2)
        c, s_ = cos[:, :S, None].transpose(1, 2), sin[:, :S, None].transpose(1, 2)
        k = k * c + torch.cat([-k[..., d // 2:], k[..., :d // 2]], -1) * s_
    feeds = {"hidden": _np(x[:, S:]), "mask": np.zeros((B, 1, 1, S + 1), np.float32), "cos": _np(cos[:, S:]),
             "sin": _np(sin[:, S:]), "past_key": _np(k), "past_value": _np(v)}
    out = _run(arch, "attention", heads, kv, _llama_attention_weights(layer, heads, kv, d), feeds,
               Sizes(B, 1, "decode", S))
    np.testing.assert_allclose(out["out"], _np(ref[:, S:]), atol=ATOL)
    assert out["present_key"].shape == (B, kv, S + 1, d)


def test_qwen2_attention_has_qkv_biases_and_no_output_bias():
    """Qwen2 = Llama layout with q/k/v biases; its o_proj has none (the block graph used to add one). The graph
    takes exactly the real module's weights by name (an extra ``o.bias`` would be a random initializer)."""
    torch.manual_seed(4)
    config = transformers.Qwen2Config(hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                                      intermediate_size=48, num_hidden_layers=1, vocab_size=50,
                                      attn_implementation="eager", rms_norm_eps=1e-5)
    layer = transformers.models.qwen2.modeling_qwen2.Qwen2DecoderLayer(config, layer_idx=0).eval()
    assert layer.self_attn.o_proj.bias is None and layer.self_attn.q_proj.bias is not None
    rope = transformers.models.qwen2.modeling_qwen2.Qwen2RotaryEmbedding(config)
    arch = arch_from_config(config.to_dict())
    heads, kv, d = 4, 2, arch.head_dim
    a = layer.self_attn
    w = {**_llama_attention_weights(layer, heads, kv, d),
         "layers.0.attn.q.bias": _np(a.q_proj.bias), "layers.0.attn.k.bias": _np(a.k_proj.bias),
         "layers.0.attn.v.bias": _np(a.v_proj.bias)}
    graph = block_graph(arch, "attention", heads, Sizes(B, S), kv, weights=w)
    assert not any(i.name == "layers.0.attn.o.bias" for i in graph.graph.initializer)
    x = torch.randn(B, S, arch.hidden)
    cos, sin = rope(x, torch.arange(S).repeat(B, 1))
    mask = _causal(S)
    with torch.no_grad():
        ref = x + a(layer.input_layernorm(x), position_embeddings=(cos, sin), attention_mask=torch.from_numpy(mask))[0]
    out = _run(arch, "attention", heads, kv, w, {"hidden": _np(x), "mask": mask, "cos": _np(cos), "sin": _np(sin)})
    np.testing.assert_allclose(out["out"], _np(ref), atol=ATOL)


@pytest.mark.parametrize("heads,kv", [(4, 2), (2, 1)])
def test_qwen3_attention_normalises_each_query_and_key_head(heads, kv):
    """Qwen3 = Llama layout + an RMSNorm over every query and key head (one head_dim weight each) before RoPE;
    the block graph computes what Qwen3DecoderLayer computes, dense and with heads kept by the family adapter."""
    import copy

    from ziplm_deploy.families import family_for

    torch.manual_seed(6)
    config = transformers.Qwen3Config(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                      intermediate_size=48, num_hidden_layers=1, vocab_size=50,
                                      attn_implementation="eager", rms_norm_eps=1e-5)
    layer = transformers.models.qwen3.modeling_qwen3.Qwen3DecoderLayer(config, layer_idx=0).eval()
    with torch.no_grad():  # non-trivial norm weights (they initialise to ones)
        layer.self_attn.q_norm.weight.uniform_(0.5, 1.5)
        layer.self_attn.k_norm.weight.uniform_(0.5, 1.5)
    arch = arch_from_config(config.to_dict())
    assert arch.family == "qwen3" and not arch.attention_bias
    a = layer.self_attn
    w = {**_llama_attention_weights(layer, heads, kv, arch.head_dim),
         "layers.0.attn.q_norm.weight": _np(a.q_norm.weight), "layers.0.attn.k_norm.weight": _np(a.k_norm.weight)}
    kept = copy.deepcopy(layer)
    family_for("qwen3").adapter().keep_heads(kept, list(range(heads)), list(range(kv)), arch)
    rope = transformers.models.qwen3.modeling_qwen3.Qwen3RotaryEmbedding(config)
    x = torch.randn(B, S, arch.hidden)
    cos, sin = rope(x, torch.arange(S).repeat(B, 1))
    mask = _causal(S)
    with torch.no_grad():
        ref = x + kept.self_attn(kept.input_layernorm(x), position_embeddings=(cos, sin),
                                 attention_mask=torch.from_numpy(mask))[0]
    out = _run(arch, "attention", heads, kv, w, {"hidden": _np(x), "mask": mask, "cos": _np(cos), "sin": _np(sin)})
    np.testing.assert_allclose(out["out"], _np(ref), atol=ATOL)


@pytest.mark.parametrize("heads,kv", [(4, 1), (2, 1)])
def test_gemma3_blocks_norm_after_each_sublayer_and_scale_queries_by_their_scalar(heads, kv):
    """Gemma 3: (1 + w) RMSNorms before and after each sublayer, per-head q/k norms, scores scaled by
    query_pre_attn_scalar**-0.5 (here 12, not head_dim 8), one KV head shared by 4 query heads (Gemma-3-270m's
    layout) with heads removed within it by the family adapter, and a GELU-tanh gated FFN."""
    import copy

    from ziplm_deploy.families import family_for

    torch.manual_seed(7)
    config = transformers.Gemma3TextConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=1, head_dim=8,
                                           intermediate_size=48, num_hidden_layers=1, vocab_size=50,
                                           query_pre_attn_scalar=12, attn_implementation="eager")
    layer = transformers.models.gemma3.modeling_gemma3.Gemma3DecoderLayer(config, layer_idx=0).eval()
    with torch.no_grad():  # non-trivial norm weights (they initialise to zeros: a scale of 1)
        for name, p in layer.named_parameters():
            if "norm" in name:
                p.uniform_(-0.5, 0.5)
    arch = arch_from_config(config.to_dict())
    assert arch.family == "gemma3" and arch.query_scale == 12 and arch.activation == "gelu_pytorch_tanh"
    a = layer.self_attn
    w = {**_llama_attention_weights(layer, heads, kv, arch.head_dim),
         "layers.0.attn.q_norm.weight": _np(a.q_norm.weight), "layers.0.attn.k_norm.weight": _np(a.k_norm.weight),
         "layers.0.attn.post_norm.weight": _np(layer.post_attention_layernorm.weight)}
    kept = copy.deepcopy(layer)
    family_for("gemma3_text").adapter().keep_heads(kept, list(range(heads)), list(range(kv)), arch)
    rope = transformers.models.gemma3.modeling_gemma3.Gemma3RotaryEmbedding(config)
    x = torch.randn(B, S, arch.hidden)
    cos, sin = rope(x, torch.arange(S).repeat(B, 1), "sliding_attention")
    mask = _causal(S)
    with torch.no_grad():
        attn = kept.self_attn(kept.input_layernorm(x), position_embeddings=(cos, sin),
                              attention_mask=torch.from_numpy(mask))[0]
        ref = x + kept.post_attention_layernorm(attn)
    out = _run(arch, "attention", heads, kv, w, {"hidden": _np(x), "mask": mask, "cos": _np(cos), "sin": _np(sin)})
    np.testing.assert_allclose(out["out"], _np(ref), atol=ATOL)

    width, mlp = 30, layer.mlp
    w = {"layers.0.ffn.norm.weight": _np(layer.pre_feedforward_layernorm.weight),
         "layers.0.ffn.post_norm.weight": _np(layer.post_feedforward_layernorm.weight),
         "layers.0.ffn.gate.weight": _np(mlp.gate_proj.weight[:width].T),
         "layers.0.ffn.up.weight": _np(mlp.up_proj.weight[:width].T),
         "layers.0.ffn.down.weight": _np(mlp.down_proj.weight[:, :width].T)}
    with torch.no_grad():
        mlp.down_proj.weight[:, width:] = 0
        ref = x + layer.post_feedforward_layernorm(mlp(layer.pre_feedforward_layernorm(x)))
    np.testing.assert_allclose(_run(arch, "ffn", width, None, w, {"hidden": _np(x)})["out"], _np(ref), atol=ATOL)
