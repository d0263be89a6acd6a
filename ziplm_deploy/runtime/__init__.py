"""Layer 1: runtime backends, the one timing protocol and the device fingerprint. Never imports torch.

Backends by name (``get_backend``): ``ort-cpu``, ``ort-cuda``, ``ort-trt`` (ONNX Runtime execution
providers), ``trt`` (native TensorRT engines) and ``torch`` (PyTorch eager / CUDA graphs, imported
lazily). A backend that cannot run here raises a one-line ``UserError`` saying what it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

from ..core.errors import UserError
from .base import Backend, Session, TensorInfo


@dataclass(frozen=True)
class Runtime:
    """One deployment runtime: its backend (imported only when asked for) and what it can run."""

    name: str
    backend: str  # "module:Class" under ziplm_deploy.runtime
    options: dict[str, Any] = field(default_factory=dict)  # fixed backend options (the ORT execution provider)
    deploys: str = "onnx"  # what verify deploys on it: "onnx" files, TensorRT "engine"s, or "torch" programs
    int8: bool = False  # runs the ONNX Runtime int8 graphs `export --precision int8-*` writes
    genai: str | None = None  # ONNX Runtime GenAI provider of its generation loop ("cpu", "cuda"); None: none


RUNTIMES: dict[str, Runtime] = {r.name: r for r in (
    Runtime("ort-cpu", "ort:OrtBackend", {"provider": "cpu"}, int8=True, genai="cpu"),
    Runtime("ort-cuda", "ort:OrtBackend", {"provider": "cuda"}, genai="cuda"),
    Runtime("ort-trt", "ort:OrtBackend", {"provider": "trt"}),
    Runtime("trt", "tensorrt:TensorRTBackend", deploys="engine"),
    Runtime("torch", "torch_backend:TorchBackend", deploys="torch"),
)}


def runtime(name: str) -> Runtime:
    """The runtime called ``name``; an unknown name lists those there are."""
    if name not in RUNTIMES:
        raise UserError(f"unknown runtime {name!r}", f"choose one of: {', '.join(RUNTIMES)}")
    return RUNTIMES[name]


def get_backend(name: str, **options: Any) -> Backend:
    """A backend by runtime name. ``options``: threads, opt_level, dtype, device... (see each backend)."""
    r = runtime(name)
    module, cls = r.backend.split(":")
    return getattr(import_module(f"{__name__}.{module}"), cls)(**r.options, **options)


__all__ = ["Backend", "Session", "TensorInfo", "RUNTIMES", "Runtime", "get_backend", "runtime"]
