"""Labelled classification data (``{"text": ..., "label": int}`` per line of a .jsonl file), torch-free: read
the same way by PyTorch evaluation (``prune.evaluate``) and by ONNX Runtime evaluation (``verify.ort_quality``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import UserError

_FORMAT = "one {\"text\": ..., \"label\": 0} object per line"


def read_labelled(path: str | os.PathLike) -> tuple[list[str], list[int]]:
    """(texts, labels) of a .jsonl file; anything else is the user's error naming the file or line."""
    path = Path(path)
    if not path.is_file() or path.suffix != ".jsonl":
        raise UserError(f"classification data must be a .jsonl file with 'text' and 'label': {path}", _FORMAT)
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"classification data {path} is not UTF-8 text", _FORMAT) from None
    except OSError as e:
        raise UserError(f"classification data {path} cannot be read: {e.strerror}",
                        "check the path and its permissions") from None
    texts, labels = [], []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        label = row.get("label") if isinstance(row, dict) else None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or isinstance(label, bool) \
                or not isinstance(label, int) or label < 0:
            raise UserError(f"{path}:{n} needs a 'text' string and a non-negative integer 'label'", _FORMAT)
        texts.append(row["text"])
        labels.append(label)
    if not texts:
        raise UserError(f"{path} has no examples", _FORMAT)
    return texts, labels
