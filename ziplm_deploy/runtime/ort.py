"""ONNX Runtime backend: CPU, CUDA and TensorRT execution providers.

Session options follow ``latency-protocol.md``: ``ORT_SEQUENTIAL``, one inter-op thread, explicit
intra-op threads, the deployment's graph optimisation level. With several threads, spinning is
disabled (``session.intra_op.allow_spinning=0``): many sessions with spinning pools fight over the cores.
ORT's alternative, one global pool, is fixed for the life of the process and then forces every
session onto it, so one process could not profile two thread counts; it is not used.
Timed calls use io_binding with pre-bound inputs and pre-allocated outputs.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from ..core.errors import UserError
from .base import Backend, Session, TensorInfo

OPT_LEVELS = ("disabled", "basic", "extended", "all")
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "trt": "TensorrtExecutionProvider"}

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(int8)": np.int8,
}


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise UserError("runtime ort-* needs the onnxruntime package", "pip install onnxruntime") from None
    return onnxruntime


class OrtBackend(Backend):
    def __init__(self, provider: str = "cpu", threads: int = 1, opt_level: str = "all", device_id: int = 0,
                 trt_fp16: bool = False, trt_cache_dir: str | None = None, **unused: Any):
        if provider not in PROVIDERS:
            raise UserError(f"unknown ONNX Runtime provider {provider!r}", f"choose one of {sorted(PROVIDERS)}")
        if opt_level not in OPT_LEVELS:
            raise UserError(f"unknown optimisation level {opt_level!r}", f"choose one of {', '.join(OPT_LEVELS)}")
        if threads < 0:
            raise UserError(f"threads must be >= 0, got {threads}")
        self.ort = _import_ort()
        self.provider = provider
        self.name = f"ort-{provider}"
        self.threads = threads
        self.opt_level = opt_level
        self.device_id = device_id
        self.trt_fp16 = trt_fp16
        self.trt_cache_dir = trt_cache_dir
        available = self.ort.get_available_providers()
        if PROVIDERS[provider] not in available:
            need = {"cuda": "onnxruntime-gpu and an NVIDIA GPU", "trt": "onnxruntime-gpu with TensorRT and an NVIDIA GPU"}
            raise UserError(
                f"runtime {self.name} needs {need.get(provider, provider)} "
                f"(this onnxruntime {self.ort.__version__} offers {', '.join(available)})",
                "pick another --runtime or install the provider",
            )

    def session_options(self) -> Any:
        so = self.ort.SessionOptions()
        so.graph_optimization_level = {
            "disabled": self.ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": self.ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": self.ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.opt_level]
        so.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.intra_op_num_threads = self.threads
        so.add_session_config_entry("session.intra_op.allow_spinning", "0" if self.threads != 1 else "1")
        return so

    def providers(self) -> list[Any]:
        if self.provider == "cpu":
            return ["CPUExecutionProvider"]
        cuda = ("CUDAExecutionProvider", {"device_id": self.device_id})
        if self.provider == "cuda":
            return [cuda, "CPUExecutionProvider"]
        trt_opts: dict[str, Any] = {"device_id": self.device_id, "trt_fp16_enable": self.trt_fp16}
        if self.trt_cache_dir:
            trt_opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=self.trt_cache_dir,
                            trt_timing_cache_enable=True, trt_timing_cache_path=self.trt_cache_dir)
        return [("TensorrtExecutionProvider", trt_opts), cuda, "CPUExecutionProvider"]

    def load(self, model: Any) -> "OrtSession":
        if isinstance(model, (str, os.PathLike)) and not os.path.isfile(model):
            raise UserError(f"ONNX file not found: {model}")
        try:
            sess = self.ort.InferenceSession(
                model if isinstance(model, bytes) else os.fspath(model),
                sess_options=self.session_options(), providers=self.providers(),
            )
        except Exception as e:  # ORT raises its own exception types for invalid graphs
            raise UserError(f"onnxruntime could not load the model: {str(e).splitlines()[0]}") from None
        return OrtSession(self, sess)

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": "onnxruntime", "runtime_version": self.ort.__version__, "provider": PROVIDERS[self.provider],
            "opt_level": self.opt_level, "threads": self.threads, "gpu": _gpu_name() if self.provider != "cpu" else None,
        }


class OrtSession(Session):
    def __init__(self, backend: OrtBackend, sess: Any):
        self.backend = backend
        self.sess = sess
        self.inputs = tuple(TensorInfo(i.name, np.dtype(_ORT_TYPES.get(i.type, np.float32)), tuple(i.shape))
                            for i in sess.get_inputs())
        self.outputs = tuple(TensorInfo(o.name, np.dtype(_ORT_TYPES.get(o.type, np.float32)), tuple(o.shape))
                             for o in sess.get_outputs())
        self._binding: Any = None
        self._device = "cpu" if backend.provider == "cpu" else "cuda"
        self._keep: list[Any] = []  # OrtValues referenced by the binding

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.sess.run(None, dict(feeds))
        return {o.name: v for o, v in zip(self.outputs, outs)}

    def bind(self, feeds: Mapping[str, np.ndarray]) -> None:
        ort = self.backend.ort
        names = {i.name for i in self.inputs}
        if set(feeds) != names:
            raise UserError(f"inputs {sorted(feeds)} do not match the model's inputs {sorted(names)}")
        dev = self.backend.device_id
        values = {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v), self._device, dev) for k, v in feeds.items()}
        binding = self.sess.io_binding()
        for k, v in values.items():
            binding.bind_ortvalue_input(k, v)
        for o in self.outputs:  # first run lets ORT allocate, to learn the output shapes
            binding.bind_output(o.name, self._device, dev)
        self.sess.run_with_iobinding(binding)
        shapes = [v.shape() for v in binding.get_outputs()]
        binding.clear_binding_outputs()
        outs = []
        for o, shape in zip(self.outputs, shapes):
            val = ort.OrtValue.ortvalue_from_shape_and_type(shape, o.dtype, self._device, dev)
            binding.bind_ortvalue_output(o.name, val)
            outs.append(val)
        self._binding = binding
        self._keep = [*values.values(), *outs]

    def run_bound(self) -> None:
        self.sess.run_with_iobinding(self._binding)  # synchronous for CPU; ORT syncs the GPU stream too

    def close(self) -> None:
        self._binding = None
        self._keep = []
        self.sess = None


def _gpu_name() -> str | None:
    from .fingerprint import gpu_name

    return gpu_name()
