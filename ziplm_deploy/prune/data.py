"""Text -> fixed-length token windows, for calibration and perplexity."""

from __future__ import annotations

import random
from typing import Any, Sequence

import torch

from ..core.errors import UserError


def token_windows(tokenizer: Any, texts: Sequence[str], seq_len: int, count: int | None = None,
                  seed: int = 0, min_count: int = 1, add_bos: bool = False) -> torch.Tensor:
    """Concatenate ``texts`` (separated by EOS when the tokenizer has one), cut into ``seq_len`` windows.

    Returns ``(n, seq_len)`` token ids: all windows in order when ``count`` is None, else ``count``
    windows drawn without replacement with ``seed``. ``add_bos`` puts BOS first in every window (the
    last position is dropped to keep the length).
    """
    if seq_len < 2:
        raise UserError(f"sequence length {seq_len} is too short", "use at least 2 tokens")
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + sep
    body = seq_len - 1 if add_bos else seq_len
    n = len(ids) // body
    if n < max(min_count, 1):
        raise UserError(f"the text gives {n} sequences of {seq_len} tokens ({len(ids)} tokens), need at least "
                        f"{max(min_count, 1)}", "pass more text or a shorter sequence length")
    windows = torch.tensor(ids[: n * body], dtype=torch.long).view(n, body)
    if add_bos:
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else sep[0]
        windows = torch.cat([torch.full((n, 1), bos, dtype=torch.long), windows], dim=1)
    if count is not None and count < n:
        pick = sorted(random.Random(seed).sample(range(n), count))
        windows = windows[pick]
    return windows
