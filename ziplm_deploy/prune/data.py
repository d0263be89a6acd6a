"""Text -> fixed-length token windows, for calibration and perplexity."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Sequence

import torch

from ..core.checks import bos_before, check_text
from ..core.errors import UserError


def token_windows(tokenizer: Any, texts: Sequence[str], seq_len: int, count: int | None = None,
                  seed: int = 0, min_count: int = 1, add_bos: bool | None = None) -> torch.Tensor:
    """Concatenate ``texts`` (separated by EOS when the tokenizer has one), cut into ``seq_len`` windows.

    Returns ``(n, seq_len)`` token ids: all windows in order when ``count`` is None, else ``count``
    windows drawn without replacement with ``seed``. ``add_bos`` puts BOS first in every window (one
    token less of text per window); None (default): when the tokenizer itself starts an encoded text with
    BOS (Gemma, Llama 3: models that are lost without it), not when it does not (SmolLM2, GPT-2).
    """
    if add_bos is None:
        add_bos = leading_bos(tokenizer) is not None
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
        bos = leading_bos(tokenizer)
        bos = bos if bos is not None else tokenizer.bos_token_id if tokenizer.bos_token_id is not None else sep[0]
        windows = torch.cat([torch.full((n, 1), bos, dtype=torch.long), windows], dim=1)
    if count is not None and count < n:
        windows = windows[sampled_indices(n, count, seed)]
    return windows


def leading_bos(tokenizer: Any) -> int | None:
    """The token a ``transformers`` tokenizer puts first when it encodes a text with its special tokens
    (its BOS convention), or None."""
    return bos_before(tokenizer("a", add_special_tokens=False)["input_ids"], tokenizer("a")["input_ids"])



def sampled_indices(n: int, count: int | None, seed: int = 0) -> list[int]:
    """The indices of the windows ``token_windows`` keeps of ``n`` (sorted): all of them when ``count`` is None
    or at least ``n``, else ``count`` drawn without replacement with ``seed``."""
    if count is None or count >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), count))


BUILTIN_TEXTS = {"wikipedia": "gensim's bundled Wikipedia test dump (106 articles)"}


def read_texts(source: str | os.PathLike, what: str = "calibration data") -> list[str]:
    """Texts from a plain-text file (paragraphs split on blank lines), a JSON-lines file (``text``
    field), a local Hugging Face dataset directory (``text`` column), or ``wikipedia`` (built in).
    ``what`` names the data in errors (missing, unreadable, empty)."""
    if str(source) in BUILTIN_TEXTS:
        from ..models.assets import wikipedia_text

        return wikipedia_text()
    path = Path(source)
    if not path.exists():
        raise UserError(f"{what} not found: {path}",
                        f"pass a .txt or .jsonl file, a dataset directory, or one of: {', '.join(BUILTIN_TEXTS)}")
    if path.is_dir():
        texts = _dataset_texts(path)
    elif path.suffix in (".jsonl", ".json"):
        texts = _jsonl_texts(path, what)
    else:
        raw = check_text(_read_text(path, what, errors="replace"), path, what)
        texts = [p.strip() for p in raw.split("\n\n") if p.strip()]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise UserError(f"{what} {path} is empty", "pass a file with text in it")
    return texts


def _read_text(path: Path, what: str, errors: str = "strict") -> str:
    try:
        return path.read_text(encoding="utf-8", errors=errors)
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not UTF-8 text", "pass a UTF-8 .txt or .jsonl file") from None
    except OSError as e:
        raise UserError(f"{what} {path} cannot be read: {e.strerror}", "check the path and its permissions") from None


def _jsonl_texts(path: Path, what: str) -> list[str]:
    texts = []
    for n, line in enumerate(_read_text(path, what).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path}:{n} is not a JSON object", "one {\"text\": ...} object per line") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise UserError(f"{path}:{n} has no \"text\" string field", "one {\"text\": ...} object per line")
        texts.append(row["text"])
    return texts


def _dataset_texts(path: Path) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise UserError("reading a dataset directory needs the datasets package", "pip install datasets") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError / its own errors for non-datasets
        raise UserError(f"{path} is not a saved Hugging Face dataset ({type(e).__name__})",
                        "save it with Dataset.save_to_disk, or pass a .txt/.jsonl file") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    if "text" not in ds.column_names:
        raise UserError(f"dataset {path} has no 'text' column (columns: {', '.join(ds.column_names)})")
    return [t for t in ds["text"] if isinstance(t, str)]


def calibration_windows(tokenizer: Any, source: str | os.PathLike, seq_len: int, count: int,
                        seed: int = 0) -> torch.Tensor:
    """``count`` random windows of ``seq_len`` tokens from ``source`` (needs at least ``count``)."""
    return _named_windows("calibration data", source, tokenizer, seq_len, count=count, seed=seed, min_count=count)


def heldout_calibration_windows(tokenizer: Any, source: str | os.PathLike, seq_len: int, used_count: int,
                                seed: int = 0, max_windows: int = 8) -> torch.Tensor:
    """Up to ``max_windows`` windows of ``source`` that ``calibration_windows(tokenizer, source, seq_len,
    used_count, seed)`` did not draw: the same tokenisation and cut, only windows outside that sample, spread
    evenly over the held-out ones in text order (deterministic). A ``UserError`` when none is held out, or when
    the text gives fewer windows than were drawn (it is not the text the calibration read)."""
    if max_windows < 1:
        raise UserError(f"need at least 1 held-out window, got {max_windows}", "pass --eval-windows 1 or more")
    windows = _named_windows("calibration data", source, tokenizer, seq_len)  # every window, in order
    n = len(windows)
    if n < used_count:
        raise UserError(f"calibration data {source} gives {n} windows of {seq_len} tokens, fewer than the "
                        f"{used_count} calibration windows drawn from it", "it changed since: pass evaluation data")
    used = set(sampled_indices(n, used_count, seed))
    held = [i for i in range(n) if i not in used]
    if not held:
        raise UserError(f"calibration data {source} gives {n} windows of {seq_len} tokens, all {n} used for "
                        f"calibration: none is held out", "pass evaluation data the model was not calibrated on")
    k = min(max_windows, len(held))
    return windows[[held[j * len(held) // k] for j in range(k)]]


def eval_windows(tokenizer: Any, source: str | os.PathLike, seq_len: int, max_windows: int) -> torch.Tensor:
    """The first ``max_windows`` windows of ``seq_len`` tokens of ``source`` (at least one)."""
    if max_windows < 1:
        raise UserError(f"need at least 1 evaluation window, got {max_windows}", "pass --max-windows 1 or more")
    return _named_windows("evaluation data", source, tokenizer, seq_len)[:max_windows]


def train_heldout_windows(tokenizer: Any, data: str | os.PathLike, seq_len: int, eval_windows: int, seed: int = 0,
                          eval_data: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) windows for training: the held-out ones from ``eval_data``, else a seeded
    sample of ``data`` (at most a tenth of it) kept out of the training windows."""
    if eval_windows < 1:
        raise UserError("--eval-windows must be >= 1")
    windows = _named_windows("training data", data, tokenizer, seq_len, min_count=1 if eval_data else 2)
    if eval_data:
        return windows, _named_windows("held-out data", eval_data, tokenizer, seq_len, count=eval_windows, seed=seed)
    n_eval = min(eval_windows, max(1, len(windows) // 10))
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(seed))
    return windows[order[n_eval:].sort().values], windows[order[:n_eval].sort().values]


def _named_windows(what: str, source: str | os.PathLike, tokenizer: Any, seq_len: int, **kw: Any) -> torch.Tensor:
    """``token_windows`` of ``source``, its errors naming the data (``what``) and the source."""
    texts = read_texts(source, what)
    try:
        return token_windows(tokenizer, texts, seq_len, **kw)
    except UserError as e:
        raise UserError(f"{what} {source}: {e.message}", e.hint) from None
