"""Every reference table shipped under ``profiles/`` loads with the current schema and predicts."""

from __future__ import annotations

from pathlib import Path

import pytest

from ziplm_deploy.core.arch import arch_from_dir
from ziplm_deploy.core.table import LatencyTable

ROOT = Path(__file__).resolve().parents[2]
TABLES = sorted((ROOT / "profiles").glob("**/*.json"))


def test_profiles_exist():
    assert TABLES, "profiles/ holds no reference latency table"


@pytest.mark.parametrize("path", TABLES, ids=lambda p: p.name)
def test_reference_table_loads_and_predicts(path):
    table = LatencyTable.load(path)
    fp = table.fingerprint
    assert fp.cpu and fp.runtime and fp.runtime_version and fp.provider and fp.threads >= 1
    assert 0.5 < table.calibration.alpha < 2.0
    dense = table.predict(table.dense_shape())
    assert dense == pytest.approx(table.references["dense"].get(table.statistic))
    assert table.speedup(table.removed_shape()) > 1
    if path.name.startswith("smollm2-135m"):
        table.check_arch(arch_from_dir(ROOT / "tests" / "fixtures" / "smollm2-135m"))
