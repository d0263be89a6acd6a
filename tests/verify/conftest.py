"""Fixtures of the verify tests: a tiny GPT-2 saved dense and pruned (with a manifest), a synthetic
latency table for it, and crafted verify reports / policies."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory) -> dict[str, Path]:
    """{"dense": DIR, "pruned": DIR} of a 4-layer random GPT-2; the pruned one has a manifest with a target."""
    from families import PLANS, tiny_model

    from ziplm_deploy.core.manifest import MANIFEST_FILE, new_manifest
    from ziplm_deploy.models import adapter_for, save_model, shrink

    root = tmp_path_factory.mktemp("tiny_pair")
    dense = tiny_model("gpt2")
    save_model(dense, root / "dense")
    pruned = shrink(copy.deepcopy(dense), PLANS["gpt2"])
    shape = adapter_for(pruned).shape_of(pruned)
    manifest = new_manifest("shrink-magnitude", root / "dense", shape.to_json(),
                            metrics={"target_speedup": 1.3, "predicted_speedup": 1.4, "predicted_ms": 0.1})
    save_model(pruned, root / "pruned", extra_files={MANIFEST_FILE: json.dumps(manifest.to_json())})
    return {"dense": root / "dense", "pruned": root / "pruned", "root": root}


def synthetic_table(model_dir: Path, fingerprint: dict | None = None):
    """A latency table for the model's dense architecture with made-up linear costs (for prediction tests)."""
    from ziplm_deploy.core.arch import arch_from_dir
    from ziplm_deploy.core.fingerprint import DeviceFingerprint
    from ziplm_deploy.core.table import AttentionEntry, FfnEntry, LatencyTable, Stats

    arch = arch_from_dir(model_dir)

    def st(ms: float) -> Stats:
        return Stats(ms, ms * 1.1, ms * 1.3, 10)

    fp = DeviceFingerprint(**(fingerprint or {
        "cpu": "Test CPU", "cores": 2, "gpu": None, "runtime": "onnxruntime", "runtime_version": "0",
        "provider": "CPUExecutionProvider", "opt_level": "all", "threads": 1, "dtype": "float32", "batch": 1,
        "seq": 16, "mode": "prefill", "kv_len": 0, "opset": 18, "platform": "Linux", "producer": "test"}))
    att = [AttentionEntry(h, h, st(0.005 + 0.01 * h)) for h in range(arch.heads + 1)]
    ffn = [FfnEntry(w, st(0.004 + 0.0001 * w)) for w in range(0, arch.ffn + 1, 32)]
    if ffn[-1].ffn != arch.ffn:
        ffn.append(FfnEntry(arch.ffn, st(0.004 + 0.0001 * arch.ffn)))
    dense_sum = arch.num_layers * (0.005 + 0.01 * arch.heads + 0.004 + 0.0001 * arch.ffn)
    refs = {"dense": st(dense_sum + 0.05), "removed": st(arch.num_layers * 0.009 + 0.05)}
    return LatencyTable.build(fp, arch, {"statistic": "p25"}, att, ffn, refs)


def cli(env: dict[str, str], *args: str):
    import subprocess

    return subprocess.run([sys.executable, "-m", "ziplm_deploy", *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


@pytest.fixture(scope="session")
def exported_onnx(tmp_path_factory) -> Path:
    """FILE.onnx of a pruned 2-layer random GPT-2 exported without a source directory (so verify's parity
    reference is the export reference beside it). Tests use it as baseline and candidate alike."""
    from families import PLANS, tiny_model

    from ziplm_deploy.export import export_onnx
    from ziplm_deploy.models import shrink

    out = tmp_path_factory.mktemp("exported") / "pruned.onnx"
    export_onnx(shrink(tiny_model("gpt2", layers=2), PLANS["gpt2"][:2]), out)
    return out


def copy_onnx(src: Path, dst: Path, reference: bool = True) -> Path:
    """Copy an exported ONNX file (and its export reference) under another name."""
    import shutil

    from ziplm_deploy.core.parity import reference_path

    shutil.copy(src, dst)
    if reference:
        shutil.copy(reference_path(src), reference_path(dst))
    return dst


def assert_round_trips(path: Path):
    """The report at ``path`` loads and ``to_json`` writes back exactly its JSON (keys, values and their order)."""
    from ziplm_deploy.verify.report import VerifyReport

    payload = json.loads(Path(path).read_text())
    report = VerifyReport.from_json(payload, str(path))
    assert json.dumps(report.to_json()) == json.dumps(payload)
    return report
