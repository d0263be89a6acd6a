"""Quality of an ONNX decoder measured in ONNX Runtime itself (torch-free: what edge devices run).

``ort_perplexity``: exp(mean next-token cross-entropy) over token windows, each window one forward of
the graph (``input_ids``, ``attention_mask`` of ones, ``position_ids`` 0..L-1; only ``logits`` is fetched,
so prefill graphs with ``present.*`` outputs work too) — the same number ``prune.evaluate.perplexity``
gives in PyTorch. ``top1_agreement``: the fraction of positions whose arg-max next token agrees between
two logits arrays (a quantized graph against the fp32 model). ``text_windows``: token windows from text
with the tokenizer.json of a model directory (``tokenizers``, no transformers), cut exactly as
``prune.data.token_windows`` cuts them. ``ort_accuracy``: accuracy of an encoder classifier graph
(``input_ids, attention_mask`` -> ``logits`` (batch, labels)) on labelled texts, tokenized as
``prune.evaluate.accuracy`` tokenizes them (special tokens, truncation to 128).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core.checks import bos_before, check_text
from ..core.errors import UserError


def ort_session(onnx_path: str | os.PathLike, threads: int = 0) -> Any:
    """A CPU session for quality (not timing): all graph optimisations, ``threads`` intra-op (0: default)."""
    import onnxruntime as ort

    if not Path(onnx_path).is_file():
        raise UserError(f"ONNX file not found: {onnx_path}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(os.fspath(onnx_path), opts, providers=["CPUExecutionProvider"])


def decoder_feeds(session: Any, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Feeds of a no-cache decoder forward over ``ids`` (batch, seq); a graph that needs more is refused."""
    batch, seq = ids.shape
    known = {"input_ids": ids.astype(np.int64), "attention_mask": np.ones((batch, seq), dtype=np.int64),
             "position_ids": np.tile(np.arange(seq, dtype=np.int64), (batch, 1))}
    names = [i.name for i in session.get_inputs()]
    unknown = [n for n in names if n not in known]
    if unknown or "input_ids" not in names:
        raise UserError(f"quality in ONNX Runtime needs a decoder graph taking input_ids (and attention_mask, "
                        f"position_ids); this one takes {', '.join(names)}",
                        "measure quality on the prefill/no-cache graph, not the _with_past one")
    return {n: known[n] for n in names}


def ort_logits(session: Any, ids: np.ndarray) -> np.ndarray:
    outputs = [o.name for o in session.get_outputs()]
    if "logits" not in outputs:
        raise UserError(f"the graph has no logits output (outputs: {', '.join(outputs)})",
                        "perplexity needs a causal LM graph")
    return session.run(["logits"], decoder_feeds(session, ids))[0]


def next_token_nll(logits: np.ndarray, ids: np.ndarray) -> tuple[float, int]:
    """(sum of next-token cross-entropies, number of predicted positions) of one batch."""
    z = logits[:, :-1].astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=-1))
    target = ids[:, 1:]
    picked = np.take_along_axis(z, target[..., None], axis=-1)[..., 0]
    return float((log_norm - picked).sum()), int(target.size)


def ort_perplexity(onnx_path: str | os.PathLike, windows: np.ndarray, threads: int = 0,
                   session: Any = None) -> float:
    """Perplexity of the graph on ``windows`` (n, seq) of token ids, one window per forward."""
    windows = np.asarray(windows, dtype=np.int64)
    if windows.ndim != 2 or windows.shape[1] < 2 or not len(windows):
        raise UserError(f"perplexity needs token windows of shape (n, seq >= 2), got {windows.shape}")
    session = session or ort_session(onnx_path, threads)
    total, count = 0.0, 0
    for window in windows:
        nll, n = next_token_nll(ort_logits(session, window[None]), window[None])
        total, count = total + nll, count + n
    ppl = math.exp(total / count)
    if not math.isfinite(ppl):
        raise UserError(f"perplexity of {onnx_path} is not finite (the graph produces non-finite logits)")
    return ppl


def ort_accuracy(onnx_path: str | os.PathLike, tokenizer_dir: str | os.PathLike, texts: Sequence[str],
                 labels: Sequence[int], max_length: int = 128, threads: int = 0) -> float:
    """Fraction of ``texts`` whose arg-max logit is their label, one text per forward (no padding), tokenized
    with ``tokenizer_dir/tokenizer.json`` (special tokens added, truncated to ``max_length``)."""
    if len(texts) != len(labels) or not len(texts):
        raise UserError(f"accuracy needs as many labels as texts, got {len(texts)} texts and {len(labels)} labels")
    tokenizer = _tokenizer(Path(tokenizer_dir))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    session = ort_session(onnx_path, threads)
    names = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if sorted(names) != ["attention_mask", "input_ids"] or "logits" not in outputs:
        raise UserError(f"accuracy in ONNX Runtime needs a classifier graph (input_ids, attention_mask -> logits); "
                        f"{onnx_path} takes {', '.join(names)} and gives {', '.join(outputs)}",
                        "export the sequence-classification model with ziplm-deploy export")
    correct = 0
    for text, label in zip(texts, labels):
        ids = np.asarray([tokenizer.encode(text).ids], dtype=np.int64)
        logits = session.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
        if logits.ndim != 2 or logits.shape[0] != 1:
            raise UserError(f"{onnx_path}: logits of shape {logits.shape} are not one row of class scores",
                            "accuracy needs a sequence-classification graph")
        if not np.isfinite(logits).all():
            raise UserError(f"{onnx_path} produces non-finite logits: accuracy cannot be measured")
        if label >= logits.shape[1]:
            raise UserError(f"label {label} is beyond the model's {logits.shape[1]} classes",
                            "labels must be 0..num_labels-1")
        correct += int(int(logits[0].argmax()) == label)
    return correct / len(texts)


def top1_agreement(got: np.ndarray, want: np.ndarray) -> float:
    """Fraction of positions where the arg-max over the last axis agrees (shapes must match)."""
    a, b = np.asarray(got), np.asarray(want)
    if a.shape != b.shape or not a.size:
        return 0.0
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return 0.0
    return float((a.argmax(axis=-1) == b.argmax(axis=-1)).mean())


# --- text -> windows without torch -------------------------------------------------------------------
def _eos_id(tokenizer: Any, model_dir: Path) -> int | None:
    cfg_file = model_dir / "tokenizer_config.json"
    eos = None
    if cfg_file.is_file():
        eos = json.loads(cfg_file.read_text()).get("eos_token")
        eos = eos.get("content") if isinstance(eos, dict) else eos
    return tokenizer.token_to_id(eos) if isinstance(eos, str) else None


def _tokenizer(model_dir: Path) -> Any:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise UserError("quality on text needs the tokenizers package", "pip install tokenizers") from None
    if not (model_dir / "tokenizer.json").is_file():
        raise UserError(f"{model_dir} has no tokenizer.json", "quality in ONNX Runtime needs the model's tokenizer.json")
    return Tokenizer.from_file(str(model_dir / "tokenizer.json"))


def text_windows(model_dir: str | os.PathLike, texts: Sequence[str], seq_len: int,
                 count: int | None = None) -> np.ndarray:
    """The first ``count`` windows of ``seq_len`` tokens of ``texts`` (EOS between texts), tokenized with
    ``model_dir/tokenizer.json``; BOS first in each window when the tokenizer starts a text with it (as
    ``prune.data.token_windows`` does, so both give the same windows)."""
    if seq_len < 2:
        raise UserError(f"sequence length {seq_len} is too short", "use at least 2 tokens")
    model_dir = Path(model_dir)
    tokenizer = _tokenizer(model_dir)
    eos = _eos_id(tokenizer, model_dir)
    bos = _leading_bos(tokenizer)
    ids: list[int] = []
    for text in texts:
        ids += tokenizer.encode(text, add_special_tokens=False).ids + ([eos] if eos is not None else [])
    body = seq_len - (bos is not None)
    n = len(ids) // body
    if n < 1:
        raise UserError(f"the text gives no window of {seq_len} tokens ({len(ids)} tokens)",
                        "pass more text or a shorter --eval-seq")
    windows = np.asarray(ids[: n * body], dtype=np.int64).reshape(n, body)
    if bos is not None:
        windows = np.concatenate([np.full((n, 1), bos, dtype=np.int64), windows], axis=1)
    return windows if count is None else windows[:count]


def _leading_bos(tokenizer: Any) -> int | None:
    return bos_before(tokenizer.encode("a", add_special_tokens=False).ids, tokenizer.encode("a").ids)


def read_texts(source: str | os.PathLike) -> list[str]:
    """Evaluation texts: ``prune.data.read_texts`` where torch is installed (every format it reads), else a
    .txt file's paragraphs or a .jsonl file's ``text`` fields."""
    try:
        from ..prune.data import read_texts as read_any
    except ImportError:
        return _plain_texts(Path(source))
    return read_any(source, "evaluation data")


def _plain_texts(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"evaluation data not found: {path}", "pass a .txt or .jsonl file")
    try:
        raw = check_text(path.read_text(encoding="utf-8", errors="replace"), path, "evaluation data")
    except OSError as e:
        raise UserError(f"evaluation data {path} cannot be read: {e.strerror}") from None
    if path.suffix in (".jsonl", ".json"):
        texts = []
        for n, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise UserError(f"{path}:{n} is not a JSON object", "one {\"text\": ...} object per line") from None
                if isinstance(row, dict) and isinstance(row.get("text"), str):
                    texts.append(row["text"])
    else:
        texts = [p.strip() for p in raw.split("\n\n") if p.strip()]
    if not texts:
        raise UserError(f"evaluation data {path} is empty", "pass a file with text in it")
    return texts
