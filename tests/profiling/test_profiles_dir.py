"""Every reference table shipped under ``profiles/`` loads with the current schema and predicts; every workload
manifest there loads with its tables (sha256-pinned) and predicts its workload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ziplm_deploy.core.arch import arch_from_dir
from ziplm_deploy.core.table import LatencyTable
from ziplm_deploy.core.workload import WORKLOAD_FORMAT, WorkloadTables

ROOT = Path(__file__).resolve().parents[2]
ALL = sorted((ROOT / "profiles").glob("**/*.json"))
MANIFESTS = [p for p in ALL if json.loads(p.read_text()).get("format") == WORKLOAD_FORMAT]
TABLES = [p for p in ALL if p not in MANIFESTS]


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


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_reference_workload_tables_load_and_predict(path):
    tables = WorkloadTables.load(path)
    dense = tables.predict(tables.dense_shape())
    assert dense.ttft_ms > 0 and dense.ms_per_token > 0 and dense.steps == tables.workload.generate - 1
    assert tables.prefill.fingerprint.logits == "last"  # a generating workload's prefill: last position's logits
    tables.prefill.check_arch(arch_from_dir(ROOT / "tests" / "fixtures" / "smollm2-135m"))
    listed = {tables.prefill.fingerprint.seq} | {t.fingerprint.kv_len for t in tables.decode}
    assert listed == {tables.workload.prompt, *tables.kv_lens}


def test_every_reference_file_is_shipped_in_the_package():
    """ziplm_deploy/reference/ links every profiles/ file the demos read (a wheel copies them)."""
    shipped = {p.name for p in (ROOT / "ziplm_deploy" / "reference").glob("*.json")}
    assert {p.name for p in ALL if p.name.startswith("smollm2-135m")} <= shipped
