"""Versioned JSON artifacts, written atomically (temp file in the same folder, then rename)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .checks import TEMP_PREFIX
from .errors import UserError


def make_dirs(folder: str | os.PathLike, what: str | os.PathLike | None = None) -> Path:
    """``mkdir -p`` of an output folder; a folder that cannot be made (what ``check_output_path`` could not
    foresee: a read-only mount, a pseudo-filesystem, root's bypassed permission bits) is a one-line error
    naming ``what`` (default the folder)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write {what or folder}: {e.strerror or e}", "choose a writable output location") from None
    return folder


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write under a temporary name in the same folder, then rename: never a half-written ``path``. A folder
    that cannot be made or written (what ``check_output_path`` could not foresee: a read-only mount, a
    pseudo-filesystem, root's bypassed permission bits) is a one-line error naming the path."""
    path = Path(path)
    make_dirs(path.parent, path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}", "choose a writable output location") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: str | os.PathLike, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}", "check the path")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path} is not valid JSON: {e}", "regenerate or fix the file") from None


def check_header(payload: Any, fmt: str, versions: tuple[int, ...], source: str) -> None:
    """Refuse anything that is not a ``fmt`` artifact of a version this code reads."""
    if not isinstance(payload, dict):
        raise UserError(f"{source}: expected a JSON object with \"format\": \"{fmt}\"")
    if payload.get("format") != fmt:
        raise UserError(
            f"{source}: format is {payload.get('format')!r}, expected {fmt!r}",
            "pass a file written for this purpose",
        )
    version = payload.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version not in versions:  # True == 1.0 == 1
        raise UserError(
            f"{source}: {fmt} version {version!r} is not supported "
            f"(this ziplm-deploy reads version {', '.join(map(str, versions))})",
            "upgrade ziplm-deploy or regenerate the file",
        )
