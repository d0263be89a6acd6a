"""Layer 3: measured verification in the deployment runtime, release gates and run reports.

``measure``: ``verify()``, the entry point: time a baseline and a candidate end to end with the shared protocol,
check output parity, compare with the target and the table's prediction -> a ``VerifyReport`` (``verify.json``);
its steps live in ``inputs`` (what a path is, ONNX introspection, the export cache), ``predict`` (the table's
prediction), ``parity_run`` (parity against PyTorch or the export's reference) and ``quality`` (perplexity or
accuracy of both models); ``generation`` does the same for a generation workload in ONNX Runtime GenAI.
``policy``: a strict gate policy (YAML) and its verdict (fails closed), JUnit/Markdown output.
``runreport``: HTML/Markdown report of a pruning run with embedded SVG plots.

Torch-free at module level: PyTorch is imported only to export a model *directory* or to compute the
PyTorch side of parity for one, so verifying ONNX files or engines works on an edge install.
"""

from .report import VERIFY_FORMAT, VERIFY_VERSION, VerifyReport

__all__ = ["VERIFY_FORMAT", "VERIFY_VERSION", "VerifyReport"]
