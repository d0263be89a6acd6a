"""Shared fixtures: tiny randomly initialised models of each family (built from configs, no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from families import FAMILIES


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def no_torch_env(tmp_path_factory) -> dict[str, str]:
    """Environment of a subprocess in which importing torch or transformers fails: the edge install."""
    shim = tmp_path_factory.mktemp("no_torch")
    for name in ("torch", "transformers"):
        (shim / f"{name}.py").write_text(f"raise ImportError('{name} is not installed on this edge device')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(shim), str(ROOT), env.get("PYTHONPATH", "")])
    return env
