"""ziplm-deploy: make transformer language models measurably faster on the hardware they ship to.

The top level imports nothing heavy: ``load_model`` pulls in torch only when called, so the
torch-free layers (core, runtime, profiling, verify on ONNX files) work on an edge install.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load_model(path: Any, dtype: Any = None) -> Any:
    """Load a dense or pruned model directory into its real transformers class."""
    from .models import load_model as _load

    return _load(path, dtype=dtype)
