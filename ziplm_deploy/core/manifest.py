"""``manifest.json`` beside a produced model: how it was made, from what, and what was predicted."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .checks import mapping, number, typed
from .errors import UserError
from .fingerprint import DeviceFingerprint
from .jsonio import atomic_write_json, check_header, read_json
from .shape import ModelShape

MANIFEST_FORMAT = "ziplm-deploy/manifest"
MANIFEST_VERSION = 1
MANIFEST_FILE = "manifest.json"
_OPTIONAL = ("table_sha256", "fingerprint")  # written only by the methods that have them


@dataclass(frozen=True)
class ModelManifest:
    method: str  # "shrink-magnitude", "ziplm", "layerchop", ...
    parent: str  # the source model directory
    parent_config_sha256: str
    shape: dict[str, Any]  # ModelShape JSON
    options: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float | None] = field(default_factory=dict)  # predicted latency, params, losses...
    producer: str = ""
    created: str = ""
    table_sha256: str | None = None  # prune: the latency table that judged the model
    fingerprint: dict[str, Any] | None = None  # prune: that table's device fingerprint

    def to_json(self) -> dict[str, Any]:
        body = {k: v for k, v in asdict(self).items() if k not in _OPTIONAL or v is not None}
        return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, **body}

    @staticmethod
    def from_json(payload: Any, source: str = "manifest") -> "ModelManifest":
        """Every field checked (names the file and key): strings, the shape and fingerprint by their own
        readers, metrics finite numbers (or null); unknown keys are refused."""
        check_header(payload, MANIFEST_FORMAT, (MANIFEST_VERSION,), source)
        names = {f.name for f in fields(ModelManifest)}
        unknown = sorted(set(payload) - names - {"format", "version"})
        missing = sorted(f.name for f in fields(ModelManifest)
                         if f.default is MISSING and f.default_factory is MISSING and f.name not in payload)
        if unknown or missing:
            raise UserError(f"{source}: manifest has unknown keys {unknown} / missing keys {missing}",
                            "regenerate the model directory with ziplm-deploy")
        values = {k: v for k, v in payload.items() if k in names}
        for key in ("method", "parent", "parent_config_sha256", "producer", "created"):
            if key in values:
                typed(values[key], str, source, key, "a string")
        if values.get("table_sha256") is not None:
            typed(values["table_sha256"], str, source, "table_sha256", "a string")
        ModelShape.from_json(values["shape"], source=f"{source}: shape")
        mapping(values.get("options", {}), source, "options")
        metrics = mapping(values.get("metrics", {}), source, "metrics")
        for key, value in metrics.items():
            if value is not None:
                number(value, source, f"metrics.{key}")
        if values.get("fingerprint") is not None:
            DeviceFingerprint.from_json(values["fingerprint"], source)
        return ModelManifest(**values)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.to_json())

    @staticmethod
    def load(path: str | os.PathLike) -> "ModelManifest":
        return ModelManifest.from_json(read_json(path, "manifest"), source=str(path))


def pruned_precision(model_dir: str | os.PathLike) -> str:
    """The precision label a model directory was pruned for: its manifest's table fingerprint (a member
    searched on an int8 table is deployed int8); ``fp32`` without a manifest. A bad manifest is refused."""
    path = Path(model_dir) / MANIFEST_FILE
    if not path.is_file():
        return "fp32"
    return str((ModelManifest.load(path).fingerprint or {}).get("precision", "fp32"))


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
