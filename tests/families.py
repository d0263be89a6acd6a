"""Tiny randomly initialised models of each family (built from configs, no downloads) and reference helpers."""

from __future__ import annotations

import copy

import numpy as np
import torch

from ziplm_deploy.models import LayerPlan, adapter_for
from ziplm_deploy.models.surgery import head_columns

FAMILIES = ("bert", "gemma3", "gpt2", "llama", "qwen3")
GQA = ("gemma3", "llama", "qwen3")  # tiny models with 6 query heads in 3 KV groups


def tiny_model(family: str, seed: int = 0, layers: int = 4):
    """A small model of ``family`` with random weights; eval mode, fp32, eager-compatible."""
    import torch
    from transformers import (BertConfig, BertForSequenceClassification, BertModel, GPT2Config, GPT2LMHeadModel,
                              LlamaConfig, LlamaForCausalLM)

    torch.manual_seed(seed)
    if family == "bert":
        return BertModel(BertConfig(vocab_size=120, hidden_size=48, num_hidden_layers=layers, num_attention_heads=4,
                                    intermediate_size=96, max_position_embeddings=64)).eval()
    if family == "bert-cls":
        return BertForSequenceClassification(BertConfig(
            vocab_size=120, hidden_size=48, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=96,
            max_position_embeddings=64, num_labels=3)).eval()
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=120, n_embd=48, n_layer=layers, n_head=4, n_positions=64,
                                          bos_token_id=0, eos_token_id=0)).eval()
    if family == "llama":  # GQA: 6 query heads in 3 KV groups of 2
        return LlamaForCausalLM(LlamaConfig(vocab_size=120, hidden_size=48, num_hidden_layers=layers,
                                            num_attention_heads=6, num_key_value_heads=3, head_dim=8,
                                            intermediate_size=80, max_position_embeddings=64,
                                            bos_token_id=0, eos_token_id=0, pad_token_id=0)).eval()
    if family in ("qwen2", "mistral", "qwen3"):  # Llama layout; Qwen2 adds q/k/v biases, Qwen3 q/k head norms
        from transformers import (MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                                  Qwen3ForCausalLM)

        cfg_cls, cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "mistral": (MistralConfig, MistralForCausalLM),
                        "qwen3": (Qwen3Config, Qwen3ForCausalLM)}[family]
        return cls(cfg_cls(vocab_size=120, hidden_size=48, num_hidden_layers=layers, num_attention_heads=6,
                           num_key_value_heads=3, head_dim=8, intermediate_size=80, max_position_embeddings=64,
                           bos_token_id=0, eos_token_id=0, pad_token_id=0)).eval()
    if family == "gemma3":  # a 4-token sliding window on layers 0, 1 and 3; query scalar 12 (not head_dim)
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        return Gemma3ForCausalLM(Gemma3TextConfig(
            vocab_size=120, hidden_size=48, num_hidden_layers=layers, num_attention_heads=6, num_key_value_heads=3,
            head_dim=8, intermediate_size=80, max_position_embeddings=64, query_pre_attn_scalar=12, sliding_window=4,
            layer_types=["full_attention" if i % 3 == 2 else "sliding_attention" for i in range(layers)],
            bos_token_id=0, eos_token_id=0, pad_token_id=0)).eval()
    raise ValueError(family)


def word_tokenizer(words, size: int):
    """A word-level tokenizer over ``words`` (plus [UNK], <s>, </s>) padded with fillers to ``size`` ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_words = ["[UNK]", "<s>", "</s>", *dict.fromkeys(words)]
    vocab = {w: i for i, w in enumerate(vocab_words + [f"w{i}" for i in range(size - len(vocab_words))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>", eos_token="</s>")


def tiny_llama_for(tokenizer, layers: int, seed: int = 0):
    """A tiny random Llama (hidden 32, 4 query heads in 2 KV groups, FFN 64, tied embeddings) over the
    vocabulary of a real tokenizer, for commands that read text."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=layers,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                        intermediate_size=64, max_position_embeddings=64, tie_word_embeddings=True,
                                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))


# Non-uniform plans (indices into each layer): layer 0 loses all attention, one layer loses its FFN.
PLANS = {
    "bert": [LayerPlan(heads=(), ffn=(1, 5, 90)), LayerPlan(heads=(0, 3), ffn=()), LayerPlan(heads=(2,)),
             LayerPlan(ffn=tuple(range(0, 96, 3)))],
    "gpt2": [LayerPlan(heads=(), ffn=(1, 5, 190)), LayerPlan(heads=(0, 3), ffn=()), LayerPlan(heads=(2,)),
             LayerPlan(ffn=tuple(range(0, 192, 3)))],
    # GQA groups {0,1} {2,3} {4,5}: keep whole groups, or the same count per kept group
    "llama": [LayerPlan(heads=(), ffn=(1, 5, 70)), LayerPlan(heads=(0, 3, 4), ffn=()), LayerPlan(heads=(2, 3)),
              LayerPlan(heads=(0, 1, 4, 5), ffn=tuple(range(0, 80, 3)))],
    "gemma3": [LayerPlan(heads=(), ffn=(1, 5, 70)), LayerPlan(heads=(0, 3, 4), ffn=()), LayerPlan(heads=(2, 3)),
               LayerPlan(heads=(0, 1, 4, 5), ffn=tuple(range(0, 80, 3)))],
    "qwen3": [LayerPlan(heads=(), ffn=(1, 5, 70)), LayerPlan(heads=(0, 3, 4), ffn=()), LayerPlan(heads=(2, 3)),
              LayerPlan(heads=(0, 1, 4, 5), ffn=tuple(range(0, 80, 3)))],
}


def model_output(model, ids):
    with torch.no_grad():
        out = model(input_ids=ids)
    return out["logits"] if "logits" in out else out["last_hidden_state"]


def masked_reference(model, plan):
    """Same weights, removed heads' output-projection columns and removed neurons' down columns zeroed."""
    ref = copy.deepcopy(model)
    adapter = adapter_for(ref)
    arch = adapter.arch(ref)
    with torch.no_grad():
        for layer, p in zip(adapter.layers(ref), plan):
            if p.heads is not None:
                wo = adapter.attn_out_weight(layer)
                removed = [h for h in range(wo.shape[1] // arch.head_dim) if h not in p.heads]
                wo[:, head_columns(removed, arch.head_dim)] = 0
            if p.ffn is not None:
                wd = adapter.ffn_out_weight(layer)
                wd[:, [j for j in range(wd.shape[1]) if j not in p.ffn]] = 0
    return ref


def ort_session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def greedy_ort(prefill, decode, ids, steps, n_attn):
    """Greedy decoding with an exported prefill graph and decode (with-past) graph in ONNX Runtime."""
    batch, seq = ids.shape
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.tile(np.arange(seq), (batch, 1))}
    outs = prefill.run(None, feeds)
    tokens = ids
    for _ in range(steps):
        nxt = outs[0][:, -1].argmax(-1)[:, None].astype(np.int64)
        tokens = np.concatenate([tokens, nxt], axis=1)
        total = tokens.shape[1]
        feeds = {"input_ids": nxt, "attention_mask": np.ones((batch, total), dtype=np.int64),
                 "position_ids": np.full((batch, 1), total - 1, dtype=np.int64)}
        for i in range(n_attn):
            feeds[f"past_key_values.{i}.key"] = outs[1 + 2 * i]
            feeds[f"past_key_values.{i}.value"] = outs[2 + 2 * i]
        outs = decode.run(None, feeds)
    return tokens


def linear_table(model_dir, out) -> None:
    """A synthetic latency table with linear costs for the model at ``model_dir`` (no profiling), saved to ``out``."""
    from ziplm_deploy.core.arch import arch_from_dir
    from ziplm_deploy.core.fingerprint import DeviceFingerprint
    from ziplm_deploy.core.table import AttentionEntry, FfnEntry, LatencyTable, Stats
    from ziplm_deploy.profiling.grid import attention_grid, ffn_grid

    arch = arch_from_dir(model_dir)

    def st(ms: float) -> Stats:
        return Stats(ms, ms * 1.1, ms * 1.3, 10)

    fp = DeviceFingerprint(cpu="Test CPU", cores=2, gpu=None, runtime="onnxruntime", runtime_version="0",
                           provider="CPUExecutionProvider", opt_level="all", threads=1, dtype="float32", batch=1,
                           seq=16, mode="prefill", kv_len=0, opset=18, platform="Linux", producer="test")
    att = [AttentionEntry(h, kv, st(0.01 + 0.05 * h)) for h, kv in attention_grid(arch)]
    ffn = [FfnEntry(w, st(0.01 + 0.002 * w)) for w in ffn_grid(arch.ffn, 8)]
    dense = arch.num_layers * (0.01 + 0.05 * arch.heads + 0.01 + 0.002 * arch.ffn)
    refs = {"dense": st(dense + 0.02), "removed": st(arch.num_layers * 0.02 + 0.02)}
    LatencyTable.build(fp, arch, {"statistic": "p25"}, att, ffn, refs).save(out)
