"""Quality metrics of a model on token windows."""

from __future__ import annotations

import math

import torch
from torch import nn
from tqdm.auto import tqdm


@torch.no_grad()
def perplexity(model: nn.Module, windows: torch.Tensor, batch_size: int = 4, progress: bool = True) -> float:
    """exp(mean next-token cross-entropy) over all predicted positions of ``windows`` (n, seq)."""
    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(windows), batch_size), desc="perplexity", disable=not progress, leave=False):
        batch = windows[start : start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        target = batch[:, 1:]
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum")
        total += loss.item()
        count += target.numel()
    return math.exp(total / count)


@torch.no_grad()
def accuracy(model: nn.Module, tokenizer, texts: list[str], labels: list[int], batch_size: int = 32,
             max_length: int = 128) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start : start + batch_size], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        pred = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.argmax(-1)
        correct += int((pred == torch.tensor(labels[start : start + batch_size])).sum())
    return correct / len(texts)
