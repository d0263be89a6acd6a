"""PyTorch backend (eager or CUDA graphs) for GPUs without TensorRT or the ORT CUDA provider.

torch is imported inside the functions only: this module is importable on an edge install.
Loads a ``torch.export`` program (``.pt2``), a TorchScript file (``.pt``/``.ts``) or a live module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..core.errors import UserError
from .base import Backend, Session, TensorInfo

MODES = ("eager", "cuda-graph")


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise UserError("runtime torch needs the torch package", "pip install 'ziplm-deploy[torch]'") from None
    return torch


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, device: str | None = None, mode: str = "eager", dtype: str = "float32", threads: int = 0,
                 **unused: Any):
        if mode not in MODES:
            raise UserError(f"unknown torch mode {mode!r}", f"choose one of {', '.join(MODES)}")
        self.torch = _import_torch()
        self.device = device or ("cuda" if self.torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not self.torch.cuda.is_available():
            raise UserError("runtime torch on cuda needs an NVIDIA GPU and a CUDA build of torch")
        if mode == "cuda-graph" and not self.device.startswith("cuda"):
            raise UserError("runtime torch with mode cuda-graph needs an NVIDIA GPU", "use mode eager on CPU")
        self.mode = mode
        self.dtype = dtype
        self.threads = threads
        if threads:
            self.torch.set_num_threads(threads)

    def describe(self) -> dict[str, Any]:
        gpu = self.torch.cuda.get_device_name() if self.device.startswith("cuda") else None
        return {"runtime": "torch", "runtime_version": self.torch.__version__, "provider": self.mode,
                "opt_level": self.mode, "threads": self.threads, "gpu": gpu}

    def load(self, model: Any) -> "TorchSession":
        torch = self.torch
        if isinstance(model, torch.nn.Module):
            module = model
        elif isinstance(model, (str, os.PathLike)):
            path = Path(model)
            if not path.is_file():
                raise UserError(f"model file not found: {path}")
            if path.suffix == ".pt2":
                module = torch.export.load(str(path)).module()
            elif path.suffix in (".pt", ".ts"):
                module = torch.jit.load(str(path), map_location=self.device)
            else:
                raise UserError(f"runtime torch cannot load {path.name}",
                                "it loads .pt2 (torch.export) or .pt (TorchScript); use --runtime ort-cpu for ONNX")
        else:
            raise UserError("runtime torch loads a .pt2/.pt file or a torch.nn.Module")
        if isinstance(module, torch.nn.Module):
            module = module.to(self.device)
            if hasattr(module, "eval") and not isinstance(module, torch.fx.GraphModule):
                module.eval()
        return TorchSession(self, module)


class TorchSession(Session):
    def __init__(self, backend: TorchBackend, module: Any):
        self.backend = backend
        self.module = module
        self._static: dict[str, Any] = {}
        self._graph: Any = None
        self._out: Any = None

    def _to_device(self, feeds: Mapping[str, np.ndarray]) -> dict[str, Any]:
        torch = self.backend.torch
        return {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.backend.device) for k, v in feeds.items()}

    def _call(self) -> Any:
        with self.backend.torch.inference_mode():
            return self.module(**self._static)

    def _sync(self) -> None:
        if self.backend.device.startswith("cuda"):
            self.backend.torch.cuda.synchronize()

    def bind(self, feeds: Mapping[str, np.ndarray]) -> None:
        torch = self.backend.torch
        self._static = self._to_device(feeds)
        self.inputs = tuple(TensorInfo(k, np.asarray(v).dtype, tuple(np.shape(v))) for k, v in feeds.items())
        self._graph = None
        if self.backend.mode == "cuda-graph":
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):  # warm up allocations outside the capture
                    self._call()
            torch.cuda.current_stream().wait_stream(side)
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph), torch.inference_mode():
                self._out = self.module(**self._static)
        self._sync()

    def run_bound(self) -> None:
        if self._graph is not None:
            self._graph.replay()
        else:
            self._out = self._call()
        self._sync()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._static = self._to_device(feeds)
        out = self._call()
        self._sync()
        if isinstance(out, dict):
            items = out.items()
        elif isinstance(out, (tuple, list)):
            items = ((f"output_{i}", v) for i, v in enumerate(out))
        else:
            items = [("output_0", out)]
        return {k: v.detach().float().cpu().numpy() for k, v in items if hasattr(v, "detach")}

    def close(self) -> None:
        self._graph = None
        self._static = {}
        self._out = None
