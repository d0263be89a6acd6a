"""Collect the device fingerprint of this machine and a backend (torch-free)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

from .. import __version__
from ..core.fingerprint import DeviceFingerprint
from .base import Backend


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def gpu_name() -> str | None:
    """Name of GPU 0 from nvidia-smi, or None when there is none."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    names = [n.strip() for n in out.splitlines() if n.strip()]
    return names[0] if names else None


def fingerprint(backend: Backend, *, dtype: str, batch: int, seq: int, mode: str, kv_len: int,
                opset: int, precision: str = "fp32", logits: str = "all") -> DeviceFingerprint:
    d = backend.describe()
    return DeviceFingerprint(
        cpu=cpu_name(), cores=cpu_count(), gpu=d.get("gpu"), runtime=d["runtime"],
        runtime_version=d["runtime_version"], provider=d["provider"], opt_level=d["opt_level"],
        threads=int(d["threads"]), dtype=dtype, batch=batch, seq=seq, mode=mode, kv_len=kv_len, opset=opset,
        platform=f"{platform.system()} {platform.machine()}", producer=f"ziplm-deploy {__version__}",
        precision=precision, logits=logits,
    )
