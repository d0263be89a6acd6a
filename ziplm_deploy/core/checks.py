"""Fail-closed checks shared by every stage (torch-free): JSON field types, output paths, stale temporaries.

Every reader of a project artifact validates what it uses through these helpers, so a wrong type, a
non-finite number or a bool where an int belongs is a ``UserError`` naming the file and key path
(``table.json: entries.attn.3.p25 must be a finite number, got nan``), never a traceback or a pass.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from .errors import UserError

# Every temporary this project creates starts with this, so a later run can sweep its own (and only its own).
TEMP_PREFIX = ".ziplm-tmp-"


def _where(source: str, key: str) -> str:
    return f"{source}: {key}" if key else source


def _shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut short: a whole mistyped file must not flood the one-line error."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def number(value: Any, source: str, key: str, *, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, integer: bool = False) -> float:
    """A finite real (never a bool, a string or null), optionally an integer and within [lo, hi]."""
    kind = "an integer" if integer else "a finite number"
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or (integer and value != int(value))):
        raise UserError(f"{_where(source, key)} must be {kind}, got {_shown(value)}", "regenerate or fix the file")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise UserError(f"{_where(source, key)} must be {'>' if lo_open else '>='} {lo:g}, got {_shown(value)}",
                        "regenerate or fix the file")
    if hi is not None and value > hi:
        raise UserError(f"{_where(source, key)} must be <= {hi:g}, got {_shown(value)}", "regenerate or fix the file")
    return int(value) if integer else float(value)


def integer(value: Any, source: str, key: str, *, lo: int | None = None, hi: int | None = None) -> int:
    return int(number(value, source, key, lo=lo, hi=hi, integer=True))


def typed(value: Any, types: type | tuple[type, ...], source: str, key: str, what: str) -> Any:
    """``value`` if it is one of ``types`` (a bool is never accepted as a number), else a UserError."""
    bad_bool = isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,))
    if bad_bool or not isinstance(value, types):
        raise UserError(f"{_where(source, key)} must be {what}, got {_shown(value)}", "regenerate or fix the file")
    return value


def mapping(value: Any, source: str, key: str = "") -> dict[str, Any]:
    return typed(value, dict, source, key, "a JSON object")


def check_text(raw: str, path: str | os.PathLike, what: str) -> str:
    """``raw`` (a file decoded as UTF-8 with replacement characters) if it reads as text: a NUL character, or
    more than 1% of undecodable bytes, means a binary or non-UTF-8 file, refused before anything trains or
    calibrates on mojibake. A few stray bytes in a large text pass."""
    bad = raw.count("\ufffd")
    if "\x00" in raw or bad > max(8, len(raw) // 100):
        raise UserError(f"{what} {path} is not text ({bad} of {len(raw)} characters are not UTF-8"
                        f"{', and it has NUL bytes' if chr(0) in raw else ''}: a binary file?)",
                        "pass a UTF-8 .txt or .jsonl file")
    return raw


def check_output_path(path: str | os.PathLike, what: str, *, directory: bool = False,
                      overwrite: bool | None = None) -> Path:
    """Refuse an output path before any work: missing or unwritable parent, a file where a folder goes
    (or the reverse). ``directory=True``: the output is a folder (it may exist, unless ``overwrite`` is
    False: then an existing one is refused, naming --overwrite)."""
    path = Path(path)
    if str(path) == "":
        raise UserError(f"{what}: empty output path", "pass a file or folder name")
    if path.exists():
        if directory and not path.is_dir():
            raise UserError(f"{what} {path} exists and is not a folder", "remove it or choose another --out")
        if not directory and path.is_dir():
            raise UserError(f"{what} {path} is a folder, expected a file path", "pass a file name inside it")
        if overwrite is False:
            raise UserError(f"{what} {path} already exists", "choose another --out or pass --overwrite")
        target = path if directory else path.parent
    else:
        target = path.parent if str(path.parent) else Path(".")
        probe = target
        while not probe.exists():  # a folder output may create missing parents; a file's parent must be creatable
            if probe.parent == probe:
                break
            probe = probe.parent
        if probe.exists() and not probe.is_dir():
            raise UserError(f"{what} {path}: {probe} is a file, not a folder", "choose another output path")
        target = probe
    if not os.access(target, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: {target} is not writable", "choose a writable output location")
    _probe_write(target, what, path)
    return path


def _probe_write(folder: Path, what: str, path: Path) -> None:
    """Create and remove a file in ``folder``: what permission bits cannot tell (a read-only mount, a
    pseudo-filesystem such as /proc, root's bypassed permissions) is refused before the work, not after."""
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}probe.", dir=folder)
    except OSError as e:
        raise UserError(f"{what}: cannot write {path} ({folder}: {e.strerror or e})",
                        "choose a writable output location") from None
    os.close(fd)
    os.unlink(probe)


def sweep_temporaries(folder: str | os.PathLike, older_than_s: float = 0.0) -> list[Path]:
    """Remove this project's stale temporaries (``TEMP_PREFIX``*) directly inside ``folder``.

    Only names with the project's prefix are touched; ``older_than_s`` keeps ones a concurrent run may
    still be writing. Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed: list[Path] = []
    now = time.time()
    for p in folder.iterdir():
        if not p.name.startswith(TEMP_PREFIX):
            continue
        try:
            if now - p.lstat().st_mtime < older_than_s:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
        except OSError:
            continue
    return removed


# Bytes per element of the safetensors dtypes (others are accepted without a size check).
_SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
                      "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def _corrupt(path: Path, why: str) -> UserError:
    return UserError(f"{path.name} in {path.parent} is corrupt or truncated: {why}", "re-save or re-download the model")


def safetensors_header(path: str | os.PathLike) -> dict[str, Any]:
    """The tensor entries of a ``.safetensors`` file (torch-free), after checking the file is whole: a
    header that parses, tensor sizes that match their shapes, and data that ends exactly at the file's end."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise _corrupt(path, f"{size} bytes, shorter than the 8-byte header length")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            raise _corrupt(path, f"header of {n} bytes, but the file has {size} bytes")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _corrupt(path, "its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "its header is not a JSON object")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    end = max((_tensor_end(path, name, info) for name, info in tensors.items()), default=0)
    if end != size - 8 - n:
        raise _corrupt(path, f"tensor data needs {end} bytes, the file holds {size - 8 - n}")
    return tensors


def _tensor_end(path: Path, name: str, info: Any) -> int:
    """Where one tensor's data ends, after checking its entry (dtype, shape, offsets) is consistent."""
    ok = isinstance(info, dict) and isinstance(info.get("dtype"), str) and isinstance(info.get("shape"), list)
    offsets = info.get("data_offsets") if ok else None
    ok = ok and isinstance(offsets, list) and len(offsets) == 2
    if not ok or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in info["shape"] + offsets):
        raise _corrupt(path, f"bad header entry for {name}")
    start, end = offsets
    count = math.prod(info["shape"])
    width = _SAFETENSORS_BYTES.get(info["dtype"])
    if end < start or (width is not None and end - start != count * width):
        raise _corrupt(path, f"{name} has {end - start} bytes for shape {info['shape']} of {info['dtype']}")
    return end


def bos_before(plain: list[int], full: list[int]) -> int | None:
    """The token ``full`` (a text encoded with special tokens) has before ``plain`` (the same text without
    them), or None: ``[BOS, a]`` and ``[BOS, a, EOS]`` give BOS; ``[a]`` and ``[a, EOS]`` give None. Both
    tokenizer kinds (transformers in ``prune.data``, torch-free ``tokenizers`` in ``verify``) ask this."""
    plain, full = list(plain), list(full)
    return full[0] if plain and len(full) > len(plain) and full[1:1 + len(plain)] == plain else None
