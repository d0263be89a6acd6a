"""Measure the tables of a workload: one prefill table at the prompt length, decode tables at a few KV lengths.

Each table is a whole ``profile`` run (its own references, calibration and drift re-check) with the
same options, so the set is one deployment by construction (``WorkloadTables`` checks it again).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from ..core.arch import ArchSpec
from ..core.errors import UserError
from ..core.table import LatencyTable
from ..core.workload import Workload, WorkloadTables
from .profiler import ProfileOptions, profile


def workload_kv_lens(workload: Workload, kv_lens: list[int] | tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The decode KV lengths to measure: ``kv_lens`` (sorted, checked to cover the steps) or the default."""
    if kv_lens is None:
        return workload.default_kv_lens()
    if workload.generate <= 1:
        raise UserError(f"workload {workload.name} has no decode step: decode KV lengths are not used",
                        "drop --kv-lens, or generate 2 or more tokens")
    out = tuple(sorted(set(kv_lens)))
    if any(k < 1 for k in out):
        raise UserError(f"decode KV lengths must be >= 1, got {sorted(kv_lens)}")
    workload.check_kv_lens(out, "--kv-lens")
    return out


def profile_workload(arch: ArchSpec, workload: Workload, opts: ProfileOptions,
                     kv_lens: list[int] | tuple[int, ...] | None = None, progress: bool = True,
                     on_table: Callable[[str, LatencyTable], None] | None = None) -> WorkloadTables:
    """The prefill table at P and decode tables at ``kv_lens`` (default: first, middle and last decode
    step) with ``opts`` (its seq / decode_kv_len / batch are the workload's). ``on_table(label, table)``
    is called after each table."""
    if workload.generate > 1 and not arch.is_decoder:
        raise UserError(f"workload {workload.name} generates tokens, but a {arch.family} model has no decode mode",
                        "use a prefill-S workload")
    lens = workload_kv_lens(workload, kv_lens)
    runs = [("prefill", replace(opts, batch=workload.batch, seq=workload.prompt, decode_kv_len=0))]
    runs += [(f"decode KV {k}", replace(opts, batch=workload.batch, decode_kv_len=k)) for k in lens]
    tables = []
    for i, (label, o) in enumerate(runs):
        table = profile(arch, o, progress=progress)
        tables.append(table)
        if on_table:
            on_table(f"{label} ({i + 1}/{len(runs)})", table)
    return WorkloadTables(workload, tables[0], tuple(tables[1:]))
