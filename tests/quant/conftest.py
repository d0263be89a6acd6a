"""Shared helpers of the quantization tests."""

from __future__ import annotations

import subprocess
from typing import Callable

import pytest


def _one_line_error(r: subprocess.CompletedProcess, *fragments: str) -> None:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for f in fragments:
        assert f in r.stderr, r.stderr


@pytest.fixture
def one_line_error() -> Callable[..., None]:
    """Asserts a CLI run exited 2 with a one-line error (no traceback) containing every fragment."""
    return _one_line_error
