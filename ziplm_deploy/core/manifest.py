"""``manifest.json`` beside a produced model: how it was made, from what, and what was predicted."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .jsonio import atomic_write_json, check_header, read_json

MANIFEST_FORMAT = "ziplm-deploy/manifest"
MANIFEST_VERSION = 1
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class ModelManifest:
    method: str  # "shrink-magnitude", "ziplm", "layerchop", ...
    parent: str  # the source model directory
    parent_config_sha256: str
    shape: dict[str, Any]  # ModelShape JSON
    options: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # predicted latency, params, losses...
    producer: str = ""
    created: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, **asdict(self)}

    @staticmethod
    def from_json(payload: Any, source: str = "manifest") -> "ModelManifest":
        check_header(payload, MANIFEST_FORMAT, (MANIFEST_VERSION,), source)
        fields = {k: v for k, v in payload.items() if k not in ("format", "version")}
        return ModelManifest(**fields)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.to_json())

    @staticmethod
    def load(path: str | os.PathLike) -> "ModelManifest":
        return ModelManifest.from_json(read_json(path, "manifest"), source=str(path))


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def new_manifest(method: str, parent: str | os.PathLike, shape: dict[str, Any], **kwargs: Any) -> ModelManifest:
    from .. import __version__

    config = Path(parent) / "config.json"
    digest = file_sha256(config) if config.is_file() else ""
    return ModelManifest(method=method, parent=str(parent), parent_config_sha256=digest, shape=shape,
                         producer=f"ziplm-deploy {__version__}", created=now_utc(), **kwargs)
