"""Shared fixtures: tiny randomly initialised models of each family (built from configs, no downloads)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from families import FAMILIES


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param
