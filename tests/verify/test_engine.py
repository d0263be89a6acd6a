"""TensorRT engines: the metadata sidecar refuses another GPU / compute capability / TensorRT version / engine
file (checked without TensorRT on crafted sidecars); building and verifying engines needs a GPU with TensorRT."""

from __future__ import annotations

import json

import pytest

from ziplm_deploy.cli import main
from ziplm_deploy.core.errors import UserError
from ziplm_deploy.core.manifest import file_sha256
from ziplm_deploy.export.tensorrt import parse_shapes, profiles_from_args
from ziplm_deploy.runtime.tensorrt import ENGINE_FORMAT, check_engine_metadata, load_engine_metadata, sidecar_path


@pytest.fixture
def engine(tmp_path):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"serialized engine bytes")
    meta = {"format": ENGINE_FORMAT, "version": 1, "tensorrt_version": "10.9.0", "gpu": "NVIDIA H100 80GB HBM3",
            "compute_capability": "9.0", "precision": "fp16",
            "profiles": [{"input_ids": {"min": [1, 1], "opt": [1, 128], "max": [4, 512]}}],
            "source_onnx": "model.onnx", "source_onnx_sha256": "0" * 64, "engine_sha256": file_sha256(plan)}
    sidecar_path(plan).write_text(json.dumps(meta))
    return plan


def test_sidecar_path():
    assert sidecar_path("a/model.plan").name == "model.plan.json"


def test_matching_sidecar_is_accepted(engine):
    meta = load_engine_metadata(engine)
    check_engine_metadata(meta, "10.9.0", "NVIDIA H100 80GB HBM3", "9.0", engine=engine)


@pytest.mark.parametrize("trt,gpu,cc,message", [
    ("10.3.0", "NVIDIA H100 80GB HBM3", "9.0", "TensorRT 10.9.0 built it, this is TensorRT 10.3.0"),
    ("10.9.0", "NVIDIA A100-SXM4-80GB", "9.0", "built on GPU 'NVIDIA H100 80GB HBM3', this is 'NVIDIA A100-SXM4-80GB'"),
    ("10.9.0", "NVIDIA H100 80GB HBM3", "8.0", "built for compute capability 9.0, this GPU has 8.0"),
    ("10.9.0", None, "9.0", "this is None"),
])
def test_mismatched_sidecar_is_refused(engine, trt, gpu, cc, message):
    with pytest.raises(UserError) as e:
        check_engine_metadata(load_engine_metadata(engine), trt, gpu, cc, engine=engine)
    assert message in str(e.value) and "refusing engine" in str(e.value) and "build-engine" in str(e.value)


def test_engine_swapped_under_its_sidecar_is_refused(engine):
    engine.write_bytes(b"another engine")
    with pytest.raises(UserError, match="not the one its sidecar describes"):
        check_engine_metadata(load_engine_metadata(engine), "10.9.0", "NVIDIA H100 80GB HBM3", "9.0", engine=engine)


def test_missing_or_broken_sidecar_is_refused(engine):
    meta = json.loads(sidecar_path(engine).read_text())
    del meta["gpu"]
    sidecar_path(engine).write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"missing keys \['gpu'\]"):
        load_engine_metadata(engine)
    sidecar_path(engine).write_text(json.dumps({**meta, "format": "something"}))
    with pytest.raises(UserError, match="expected 'ziplm-deploy/engine'"):
        load_engine_metadata(engine)
    sidecar_path(engine).unlink()
    with pytest.raises(UserError, match="has no metadata sidecar model.plan.json"):
        load_engine_metadata(engine)


def test_shapes_and_profiles():
    assert parse_shapes("input_ids:1x128, attention_mask:1x128") == {"input_ids": (1, 128), "attention_mask": (1, 128)}
    for bad in ("input_ids:1xa", "1x128", "x:0x3", "x:"):
        with pytest.raises(UserError, match="bad shape"):
            parse_shapes(bad)
    inputs = {"input_ids": 2, "attention_mask": 2}
    prof = profiles_from_args(inputs, "1x1", "1x128", "4x512")
    assert prof["input_ids"] == ((1, 1), (1, 128), (4, 512)) and set(prof) == set(inputs)
    assert profiles_from_args(inputs, None, "2x16", None)["attention_mask"] == ((2, 16),) * 3
    with pytest.raises(UserError, match="min <= opt <= max"):
        profiles_from_args(inputs, "1x256", "1x128", None)
    with pytest.raises(UserError, match=r"no shape for input\(s\) \['attention_mask'\]"):
        profiles_from_args(inputs, None, "input_ids:1x128", None)
    with pytest.raises(UserError, match=r"has no input\(s\) \['ids'\]"):
        profiles_from_args(inputs, None, "ids:1x1,input_ids:1x1,attention_mask:1x1", None)


def test_build_engine_without_tensorrt_is_a_clear_error(tmp_path, capsys):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    (tmp_path / "m.onnx").write_bytes(b"x")
    assert main(["build-engine", "--onnx", str(tmp_path / "m.onnx"), "--out", str(tmp_path / "m.plan")]) == 2
    assert "needs the tensorrt package and an NVIDIA GPU" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_build_engine_and_verify_on_gpu(tiny_pair, tmp_path, capsys):
    pytest.importorskip("tensorrt")
    from ziplm_deploy.runtime.fingerprint import gpu_name

    if gpu_name() is None:
        pytest.skip("no NVIDIA GPU")
    out = tmp_path / "run"
    assert main(["verify", "--baseline", str(tiny_pair["dense"]), "--candidate", str(tiny_pair["pruned"]),
                 "--report", str(out / "cpu.json"), "--seq", "16", "--rounds", "3"]) in (0, 1)
    cpu = json.loads((out / "cpu.json").read_text())
    plans = {}
    for role in ("baseline", "candidate"):
        plans[role] = tmp_path / f"{role}.plan"
        assert main(["build-engine", "--onnx", cpu[role]["file"], "--out", str(plans[role]), "--opt", "1x16"]) == 0
        meta = load_engine_metadata(plans[role])
        assert meta["gpu"] == gpu_name() and meta["source_onnx_sha256"] == cpu[role]["sha256"]
    assert main(["verify", "--baseline", str(plans["baseline"]), "--candidate", str(plans["candidate"]),
                 "--runtime", "trt", "--report", str(out / "trt.json"), "--seq", "16", "--rounds", "20"]) in (0, 1)
    trt = json.loads((out / "trt.json").read_text())
    assert trt["status"] == "ok" and trt["fingerprint"]["runtime"] == "tensorrt" and trt["speedup"]["measured"] > 0
    assert trt["parity"]["reference"] == "onnxruntime-cpu-unoptimised"
    meta = json.loads(sidecar_path(plans["candidate"]).read_text())
    sidecar_path(plans["candidate"]).write_text(json.dumps({**meta, "tensorrt_version": "0.0.1"}))
    assert main(["verify", "--baseline", str(plans["baseline"]), "--candidate", str(plans["candidate"]),
                 "--runtime", "trt", "--report", str(out / "bad.json"), "--seq", "16", "--rounds", "3"]) == 1
    assert "TensorRT 0.0.1 built it" in json.loads((out / "bad.json").read_text())["error"]
