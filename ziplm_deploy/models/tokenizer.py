"""Tokenizer files travel with the model directory; a directory without them is fine (None)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model")


def load_tokenizer(model_dir: str | os.PathLike) -> Any:
    if not any((Path(model_dir) / f).is_file() for f in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))
