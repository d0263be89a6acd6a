"""Tiny decoders over a small word-level tokenizer, and domain / held-out text drawn from part of its words."""

from __future__ import annotations

import random

import torch

# 0-2 specials, then words: the domain uses the first 40 words (Zipf-like), the held-out text also a few others
SPECIALS = ["[UNK]", "<s>", "</s>"]
WORDS = [f"w{i}" for i in range(93)]  # 96 tokens with the specials (the GenAI check prompts map to [UNK])
VOCAB = len(SPECIALS) + len(WORDS)


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>", eos_token="</s>")


def text(seed: int, paragraphs: int, words: int, extra: int = 0) -> str:
    """Paragraphs of Zipf-distributed words from the first 40 (and ``extra`` further words, rarely)."""
    rng = random.Random(seed)
    pool = WORDS[:40]
    weights = [1.0 / (i + 1) for i in range(len(pool))]
    out = []
    for _ in range(paragraphs):
        ws = rng.choices(pool, weights, k=words)
        for _ in range(extra):
            ws[rng.randrange(words)] = rng.choice(WORDS[40:60])
        out.append(" ".join(ws))
    return "\n\n".join(out) + "\n"


def scaled(model, factor: float):
    """Weights scaled up so that greedy decoding wanders over the vocabulary instead of repeating one token."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(factor)
    return model.eval()


def tiny_llama(seed: int = 0, layers: int = 3):
    """Tied Llama (GQA: 4 query heads in 2 KV groups, head_dim 8, FFN 64) over the word-level vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return scaled(LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, intermediate_size=64, max_position_embeddings=128, tie_word_embeddings=True, bos_token_id=1,
        eos_token_id=2, pad_token_id=2)), 6.0)


def tiny_gpt2(seed: int = 0, layers: int = 3):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return scaled(GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=layers, n_head=4, n_positions=128,
                                             bos_token_id=1, eos_token_id=2)), 4.0)
