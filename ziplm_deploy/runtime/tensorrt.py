"""Native TensorRT backend: build an engine from ONNX (optimisation profile at the timed shapes, timing
cache on disk) or load a serialized ``.plan``; run with ``execute_async_v3`` on a CUDA stream and
synchronise that stream. ``tensorrt`` is imported lazily; device memory goes through libcudart (ctypes),
so neither torch nor pycuda is needed. ``build_serialized`` is the one place a TensorRT builder is
configured (the profiler's block engines here, engine files in ``export.tensorrt``).

Engines are only valid for the GPU model / compute capability and TensorRT version that built them.
``export.tensorrt.build_engine`` writes a metadata sidecar (``FILE.plan.json``, format ``ziplm-deploy/engine``)
and loading a ``.plan`` checks it first (``check_engine_metadata``): another GPU, compute capability or
TensorRT version, a missing sidecar or an engine file that is not the one described is refused.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..core.errors import UserError
from .base import Backend, Session, TensorInfo

NEEDS = "runtime trt needs the tensorrt package and an NVIDIA GPU"
_H2D, _D2H = 1, 2


def _import_trt() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise UserError(NEEDS, "pip install 'ziplm-deploy[tensorrt]' on a machine with an NVIDIA driver") from None
    return tensorrt


class CudaRuntime:
    """The few libcudart calls the backend needs."""

    def __init__(self) -> None:
        names = [ctypes.util.find_library("cudart"), "libcudart.so", "libcudart.so.13", "libcudart.so.12",
                 "libcudart.so.11.0"]
        self.lib = None
        for name in filter(None, names):
            try:
                self.lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        if self.lib is None:
            raise UserError(NEEDS, "libcudart was not found: install the CUDA runtime")
        count = ctypes.c_int(0)
        if self.lib.cudaGetDeviceCount(ctypes.byref(count)) != 0 or count.value == 0:
            raise UserError(NEEDS, "no CUDA device is visible")

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise UserError(f"CUDA call {what} failed with error {status}")

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self._check(self.lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(max(nbytes, 1))), "cudaMalloc")
        return int(ptr.value)

    def free(self, ptr: int) -> None:
        self.lib.cudaFree(ctypes.c_void_p(ptr))

    def to_device(self, ptr: int, array: np.ndarray) -> None:
        a = np.ascontiguousarray(array)
        self._check(self.lib.cudaMemcpy(ctypes.c_void_p(ptr), a.ctypes.data_as(ctypes.c_void_p),
                                        ctypes.c_size_t(a.nbytes), _H2D), "cudaMemcpy")

    def to_host(self, ptr: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        out = np.empty(shape, dtype)
        self._check(self.lib.cudaMemcpy(out.ctypes.data_as(ctypes.c_void_p), ctypes.c_void_p(ptr),
                                        ctypes.c_size_t(out.nbytes), _D2H), "cudaMemcpy")
        return out

    def stream(self) -> int:
        s = ctypes.c_void_p()
        self._check(self.lib.cudaStreamCreate(ctypes.byref(s)), "cudaStreamCreate")
        return int(s.value or 0)

    def sync(self, stream: int) -> None:
        self._check(self.lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")

    def destroy_stream(self, stream: int) -> None:
        self.lib.cudaStreamDestroy(ctypes.c_void_p(stream))

    def compute_capability(self, device: int = 0) -> str:
        """``"major.minor"`` of a device (cudaDevAttrComputeCapabilityMajor/Minor = 75/76)."""
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        self._check(self.lib.cudaDeviceGetAttribute(ctypes.byref(major), 75, device), "cudaDeviceGetAttribute")
        self._check(self.lib.cudaDeviceGetAttribute(ctypes.byref(minor), 76, device), "cudaDeviceGetAttribute")
        return f"{major.value}.{minor.value}"


class TensorRTBackend(Backend):
    name = "trt"

    def __init__(self, fp16: bool = False, workspace_mb: int = 2048, timing_cache: str | None = None,
                 opt_level: str = "3", threads: int = 0, dtype: str = "float32", **unused: Any):
        opt_level = "3" if opt_level == "all" else str(opt_level)  # "all": TensorRT's default builder level
        if opt_level not in "012345" or len(opt_level) != 1:
            raise UserError(f"TensorRT builder optimisation level must be 0..5, got {opt_level!r}")
        self.trt = _import_trt()
        self.cuda = CudaRuntime()
        self.fp16 = fp16 or dtype == "float16"
        self.workspace_mb = workspace_mb
        self.timing_cache = timing_cache
        self.opt_level = opt_level
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)

    def describe(self) -> dict[str, Any]:
        from .fingerprint import gpu_name

        return {"runtime": "tensorrt", "runtime_version": self.trt.__version__, "provider": "tensorrt",
                "opt_level": f"builder-{self.opt_level}", "threads": 0, "gpu": gpu_name()}

    def load(self, model: Any) -> "TensorRTSession":
        """``model``: an ONNX path/bytes (engine built at the first bound shapes) or a ``.plan`` engine."""
        if isinstance(model, (str, os.PathLike)):
            path = Path(model)
            if not path.is_file():
                raise UserError(f"model file not found: {path}")
            if path.suffix in (".plan", ".engine"):
                check_engine_metadata(load_engine_metadata(path), self.trt.__version__, _gpu(),
                                      self.cuda.compute_capability(), engine=path)
                return TensorRTSession(self, engine=self.deserialize(path.read_bytes()))
            return TensorRTSession(self, onnx_bytes=path.read_bytes())
        return TensorRTSession(self, onnx_bytes=bytes(model))

    def deserialize(self, data: bytes) -> Any:
        engine = self.trt.Runtime(self.logger).deserialize_cuda_engine(data)
        if engine is None:
            raise UserError("TensorRT could not deserialize the engine", "rebuild it for this GPU and TensorRT version")
        return engine

    def build(self, onnx_bytes: bytes, shapes: Mapping[str, tuple[int, ...]]) -> bytes:
        """A serialized engine with one optimisation profile at exactly ``shapes``."""
        precision = "fp16" if self.fp16 else "fp32"
        return build_serialized(self, onnx_bytes, {name: (dims, dims, dims) for name, dims in shapes.items()},
                                precision, self.timing_cache)


class TensorRTSession(Session):
    def __init__(self, backend: TensorRTBackend, engine: Any = None, onnx_bytes: bytes | None = None):
        self.backend = backend
        self.engine = engine
        self.onnx_bytes = onnx_bytes
        self.context: Any = None
        self.stream = backend.cuda.stream()
        self._buffers: dict[str, tuple[int, tuple[int, ...], np.dtype]] = {}
        if engine is not None:
            self._describe()

    def _describe(self) -> None:
        trt, e = self.backend.trt, self.engine
        ins, outs = [], []
        for i in range(e.num_io_tensors):
            name = e.get_tensor_name(i)
            info = TensorInfo(name, np.dtype(trt.nptype(e.get_tensor_dtype(name))), tuple(e.get_tensor_shape(name)))
            (ins if e.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outs).append(info)
        self.inputs, self.outputs = tuple(ins), tuple(outs)
        self.context = e.create_execution_context()

    def bind(self, feeds: Mapping[str, np.ndarray]) -> None:
        if self.engine is None:
            shapes = {k: tuple(v.shape) for k, v in feeds.items()}
            self.engine = self.backend.deserialize(self.backend.build(self.onnx_bytes, shapes))
            self._describe()
        self._free()
        cuda = self.backend.cuda
        for info in self.inputs:
            if info.name not in feeds:
                raise UserError(f"missing input {info.name!r}")
            a = np.ascontiguousarray(feeds[info.name], dtype=info.dtype)
            ptr = cuda.malloc(a.nbytes)
            cuda.to_device(ptr, a)
            self.context.set_input_shape(info.name, a.shape)
            self.context.set_tensor_address(info.name, ptr)
            self._buffers[info.name] = (ptr, a.shape, info.dtype)
        for info in self.outputs:
            shape = tuple(self.context.get_tensor_shape(info.name))
            ptr = cuda.malloc(int(np.prod(shape)) * info.dtype.itemsize)
            self.context.set_tensor_address(info.name, ptr)
            self._buffers[info.name] = (ptr, shape, info.dtype)

    def run_bound(self) -> None:
        if not self.context.execute_async_v3(self.stream):
            raise UserError("TensorRT execution failed")
        self.backend.cuda.sync(self.stream)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.bind(feeds)
        self.run_bound()
        return {o.name: self.backend.cuda.to_host(*self._buffers[o.name]) for o in self.outputs}

    def _free(self) -> None:
        for ptr, _, _ in self._buffers.values():
            self.backend.cuda.free(ptr)
        self._buffers = {}

    def close(self) -> None:
        self._free()
        if self.stream:
            self.backend.cuda.destroy_stream(self.stream)
            self.stream = 0
        self.context = None
        self.engine = None


# --- engines with a metadata sidecar ---------------------------------------------------------------
ENGINE_FORMAT = "ziplm-deploy/engine"
ENGINE_VERSION = 1
PRECISIONS = ("fp32", "fp16", "bf16")


def _gpu() -> str | None:
    from .fingerprint import gpu_name

    return gpu_name()


def sidecar_path(engine: str | os.PathLike) -> Path:
    """``model.plan`` -> ``model.plan.json``."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def load_engine_metadata(engine: str | os.PathLike) -> dict[str, Any]:
    """The sidecar of ``engine``, header-checked; a missing sidecar is refused (the engine is unverifiable)."""
    from ..core.jsonio import check_header, read_json

    path = sidecar_path(engine)
    if not path.is_file():
        raise UserError(f"engine {engine} has no metadata sidecar {path.name}",
                        "build engines with `ziplm-deploy build-engine`, which records the GPU and TensorRT version")
    meta = read_json(path, "engine metadata")
    check_header(meta, ENGINE_FORMAT, (ENGINE_VERSION,), str(path))
    missing = {"tensorrt_version", "gpu", "compute_capability", "precision", "profiles", "source_onnx_sha256",
               "engine_sha256"} - set(meta)
    if missing:
        raise UserError(f"{path}: missing keys {sorted(missing)}", "rebuild the engine with `ziplm-deploy build-engine`")
    return meta


def check_engine_metadata(meta: dict[str, Any], tensorrt_version: str, gpu: str | None, compute_capability: str,
                          engine: str | os.PathLike | None = None) -> None:
    """Refuse an engine built for another GPU model, compute capability or TensorRT version.

    With ``engine``, also refuse an engine file whose hash is not the one the sidecar describes.
    """
    problems = []
    if meta["tensorrt_version"] != tensorrt_version:
        problems.append(f"TensorRT {meta['tensorrt_version']} built it, this is TensorRT {tensorrt_version}")
    if meta["gpu"] != gpu:
        problems.append(f"built on GPU {meta['gpu']!r}, this is {gpu!r}")
    if str(meta["compute_capability"]) != str(compute_capability):
        problems.append(f"built for compute capability {meta['compute_capability']}, this GPU has {compute_capability}")
    if engine is not None:
        from ..core.manifest import file_sha256

        if file_sha256(engine) != meta["engine_sha256"]:
            problems.append("the engine file is not the one its sidecar describes (sha256 differs)")
    if problems:
        raise UserError(f"refusing engine {engine or ''}: " + "; ".join(problems),
                        "rebuild it on this machine with `ziplm-deploy build-engine`")


def build_serialized(backend: TensorRTBackend, onnx: bytes | str | os.PathLike, profiles: Mapping[str, tuple[tuple[int, ...], ...]],
                     precision: str, timing_cache: str | os.PathLike | None) -> bytes:
    """The one place a TensorRT builder is configured: parse ``onnx`` (bytes, or a file whose external data sits
    beside it), one optimisation profile ``{input: (min, opt, max)}``, ``precision`` kernels allowed, the timing
    cache read if present and updated; the serialized engine. The profiler's block engines and
    ``export.tensorrt.build_engine`` both come through here."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}", f"choose one of {', '.join(PRECISIONS)}")
    trt = backend.trt
    builder = trt.Builder(backend.logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, backend.logger)
    from_file = isinstance(onnx, (str, os.PathLike))
    if not (parser.parse_from_file(str(onnx)) if from_file else parser.parse(onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT could not parse {onnx if from_file else 'the ONNX model'}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, backend.workspace_mb << 20)
    config.builder_optimization_level = int(backend.opt_level)
    if precision in ("fp16", "bf16"):
        config.set_flag(trt.BuilderFlag.FP16 if precision == "fp16" else trt.BuilderFlag.BF16)
    cache_path = Path(timing_cache) if timing_cache else None
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    config.add_optimization_profile(_profile(builder, network, profiles))
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError("TensorRT failed to build the engine", "see the TensorRT log above")
    if cache_path:
        from ..core.jsonio import atomic_write_bytes

        atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def _profile(builder: Any, network: Any, profiles: Mapping[str, tuple[tuple[int, ...], ...]]) -> Any:
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    missing = [n for n in names if n not in profiles]
    if missing:
        raise UserError(f"no shape for TensorRT input(s) {missing}", f"the model's inputs: {', '.join(names)}")
    profile = builder.create_optimization_profile()
    for name in names:
        lo, opt, hi = profiles[name]
        if not (len(lo) == len(opt) == len(hi)) or any(a > b or b > c for a, b, c in zip(lo, opt, hi)):
            raise UserError(f"profile of {name!r} needs min <= opt <= max with equal ranks, got {lo} / {opt} / {hi}")
        profile.set_shape(name, lo, opt, hi)
    return profile
