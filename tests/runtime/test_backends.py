"""Runtime backends: ORT CPU for real; the others fail with one clear line where they cannot run."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from ziplm_deploy.core.errors import UserError
from ziplm_deploy.runtime import get_backend
from ziplm_deploy.runtime.feeds import synthetic_feeds
from ziplm_deploy.runtime.fingerprint import cpu_name, fingerprint


def matmul_model(k: int = 4, n: int = 3) -> tuple[bytes, np.ndarray]:
    w = np.arange(k * n, dtype=np.float32).reshape(k, n) / 10
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", n])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model.SerializeToString(), w


@pytest.mark.parametrize("threads,opt", [(1, "all"), (2, "basic"), (1, "disabled")])
def test_ort_cpu_runs_and_binds(threads, opt, tmp_path):
    data, w = matmul_model()
    path = tmp_path / "mm.onnx"
    path.write_bytes(data)
    backend = get_backend("ort-cpu", threads=threads, opt_level=opt)
    with backend.load(path) as session:
        assert [i.name for i in session.inputs] == ["x"] and session.inputs[0].shape == ("batch", 4)
        x = np.ones((2, 4), np.float32)
        np.testing.assert_allclose(session.run({"x": x})["y"], x @ w, rtol=1e-6)
        session.bind({"x": x})
        session.run_bound()
    d = backend.describe()
    assert d["runtime"] == "onnxruntime" and d["provider"] == "CPUExecutionProvider" and d["threads"] == threads


def test_ort_errors_are_one_line():
    with pytest.raises(UserError, match="unknown runtime 'onnx'.*ort-cpu"):
        get_backend("onnx")
    with pytest.raises(UserError, match="unknown optimisation level 'max'"):
        get_backend("ort-cpu", opt_level="max")
    with pytest.raises(UserError, match="ONNX file not found"):
        get_backend("ort-cpu").load("/nonexistent/model.onnx")
    with pytest.raises(UserError, match="could not load the model"):
        get_backend("ort-cpu").load(b"not an onnx model")
    session = get_backend("ort-cpu").load(matmul_model()[0])
    with pytest.raises(UserError, match="do not match the model's inputs"):
        session.bind({"y": np.ones((1, 4), np.float32)})


def test_ort_gpu_providers_report_what_they_need():
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    with pytest.raises(UserError, match="runtime ort-cuda needs onnxruntime-gpu and an NVIDIA GPU"):
        get_backend("ort-cuda")
    with pytest.raises(UserError, match="runtime ort-trt needs onnxruntime-gpu with TensorRT"):
        get_backend("ort-trt")


def test_native_tensorrt_reports_what_it_needs():
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed")
    with pytest.raises(UserError, match="runtime trt needs the tensorrt package and an NVIDIA GPU"):
        get_backend("trt")


def test_torch_backend_refuses_what_it_cannot_run(tmp_path):
    if importlib.util.find_spec("torch") is None:
        with pytest.raises(UserError, match="runtime torch needs the torch package"):
            get_backend("torch")
        return
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="cuda-graph needs an NVIDIA GPU"):
            get_backend("torch", mode="cuda-graph")
    path = tmp_path / "m.onnx"
    path.write_bytes(matmul_model()[0])
    with pytest.raises(UserError, match="cannot load m.onnx"):
        get_backend("torch", device="cpu").load(path)
    session = get_backend("torch", device="cpu").load(torch.nn.Linear(4, 3))
    session.bind({"input": np.ones((2, 4), np.float32)})
    session.run_bound()


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_native_tensorrt_runs_matmul():
    pytest.importorskip("tensorrt")
    data, w = matmul_model()
    with get_backend("trt").load(data) as session:
        x = np.ones((2, 4), np.float32)
        np.testing.assert_allclose(session.run({"x": x})["y"], x @ w, rtol=1e-3)


def test_synthetic_feeds_for_a_decoder_signature():
    from ziplm_deploy.runtime.base import TensorInfo

    inputs = (
        TensorInfo("input_ids", np.dtype(np.int64), ("batch", "seq")),
        TensorInfo("attention_mask", np.dtype(np.int64), ("batch", "total")),
        TensorInfo("position_ids", np.dtype(np.int64), ("batch", "seq")),
        TensorInfo("past_key_values.0.key", np.dtype(np.float32), ("batch", 3, "past_sequence_length", 8)),
    )
    f = synthetic_feeds(inputs, {"batch": 2, "seq": 1, "past": 5, "total": 6}, vocab=10)
    assert f["input_ids"].shape == (2, 1) and f["input_ids"].max() < 10
    assert f["attention_mask"].shape == (2, 6)
    assert f["position_ids"].tolist() == [[5], [5]]
    assert f["past_key_values.0.key"].shape == (2, 3, 5, 8)


def test_fingerprint_of_this_machine():
    fp = fingerprint(get_backend("ort-cpu", threads=1), dtype="float32", batch=1, seq=8, mode="prefill", kv_len=0,
                     opset=18)
    assert fp.cpu == cpu_name() and fp.cpu and fp.cores >= 1 and fp.gpu is None
    assert fp.runtime == "onnxruntime" and fp.threads == 1 and fp.producer.startswith("ziplm-deploy ")


def test_every_runtime_is_one_registry_entry():
    """Runtimes live in one registry: each backend imports lazily and either loads here or says in one line what
    it needs; verify's runtimes and the GenAI providers are read from it."""
    from ziplm_deploy.runtime import RUNTIMES
    from ziplm_deploy.verify.generation import GENAI_PROVIDERS
    from ziplm_deploy.verify.measure import VERIFY_RUNTIMES

    assert tuple(RUNTIMES) == ("ort-cpu", "ort-cuda", "ort-trt", "trt", "torch")
    assert VERIFY_RUNTIMES == ("ort-cpu", "ort-cuda", "ort-trt", "trt")
    assert GENAI_PROVIDERS == {"ort-cpu": None, "ort-cuda": "cuda"}
    for name in RUNTIMES:
        try:
            backend = get_backend(name)
        except UserError as e:
            assert "\n" not in str(e) and str(e), name  # cannot run here: one line saying why
        else:
            assert backend is not None
    assert type(get_backend("ort-cpu")).__name__ == "OrtBackend"
