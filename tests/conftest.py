"""Shared fixtures: tiny randomly initialised models of each family (built from configs, no downloads)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

FAMILIES = ("bert", "gpt2", "llama")


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
    raise ValueError(family)


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param
