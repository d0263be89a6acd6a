"""Workload tables of a tiny Llama (GQA), measured by the real profiler with fast options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from workload_helpers import OPTS, TINY_LLAMA, WORKLOAD

from ziplm_deploy.core.arch import arch_from_config
from ziplm_deploy.profiling.workload import profile_workload


@pytest.fixture(scope="session")
def tiny_arch():
    return arch_from_config(TINY_LLAMA)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny_llama_config")
    (d / "config.json").write_text(json.dumps(TINY_LLAMA))
    return d


@pytest.fixture(scope="session")
def tiny_tables(tiny_arch):
    """P 8 / G 5 with decode tables at KV 8, 9 and 11 (KV 10 is interpolated)."""
    return profile_workload(tiny_arch, WORKLOAD, OPTS, kv_lens=(8, 9, 11), progress=False)
