"""Layer 2: block graphs (onnx.helper), grids, the profiler and the table check. Never imports torch."""
