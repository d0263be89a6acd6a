"""tools/gpu_check.sh skips cleanly (exit 0, a JSON saying why) on a machine without an NVIDIA GPU."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_skips_without_a_gpu(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: run tools/gpu_check.sh itself")
    out = tmp_path / "gpu.json"
    r = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), str(out)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    payload = json.loads(out.read_text())
    assert "no NVIDIA GPU" in payload["skipped"] and payload["env"]["cuda"] is False
    assert "skipped" in r.stdout
