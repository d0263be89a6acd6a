"""Layer 1: runtime backends, the one timing protocol and the device fingerprint. Never imports torch.

Backends by name (``get_backend``): ``ort-cpu``, ``ort-cuda``, ``ort-trt`` (ONNX Runtime execution
providers), ``trt`` (native TensorRT engines) and ``torch`` (PyTorch eager / CUDA graphs, imported
lazily). A backend that cannot run here raises a one-line ``UserError`` saying what it needs.
"""

from __future__ import annotations

from typing import Any

from ..core.errors import UserError
from .base import Backend, Session, TensorInfo

RUNTIMES = ("ort-cpu", "ort-cuda", "ort-trt", "trt", "torch")


def get_backend(name: str, **options: Any) -> Backend:
    """A backend by name. ``options``: threads, opt_level, dtype, device... (see each backend)."""
    if name in ("ort-cpu", "ort-cuda", "ort-trt"):
        from .ort import OrtBackend

        return OrtBackend(provider=name.split("-", 1)[1], **options)
    if name == "trt":
        from .tensorrt import TensorRTBackend

        return TensorRTBackend(**options)
    if name == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend(**options)
    raise UserError(f"unknown runtime {name!r}", f"choose one of: {', '.join(RUNTIMES)}")


__all__ = ["Backend", "Session", "TensorInfo", "RUNTIMES", "get_backend"]
