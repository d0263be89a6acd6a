"""Layer 3: ONNX export of dense and pruned models, validated against PyTorch on every run."""

from .onnx import ExportResult, ExportValidationError, OutputDiff, export_onnx

__all__ = ["ExportResult", "ExportValidationError", "OutputDiff", "export_onnx"]
