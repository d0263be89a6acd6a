"""Layer 3: ONNX export of dense and pruned models, validated against PyTorch on every run.

The names below load ``export.onnx`` (and torch) on first use only, so the torch-free parts of this
package (``export.genai``'s folder checks, used by ``verify`` on an edge install) import without torch."""

from __future__ import annotations

from typing import Any

__all__ = ["ExportResult", "ExportValidationError", "OutputDiff", "export_onnx"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import onnx

        return getattr(onnx, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
