"""Measure the tables of a workload: one prefill table at the prompt length, decode tables at a few KV lengths.

Each table has its own references, calibration and drift re-check, with the same options, so the set is one
deployment by construction (``WorkloadTables`` checks it again). The decode tables are timed in one interleaved
run (``profile_together``), so they share one machine state: the decode steps' prediction interpolates between
them, and tables timed minutes apart on a shared machine differ by several percent. The prefill table is timed
on its own: interleaving its graphs (a prompt's worth of activations each) with one-token decode graphs slows
the decode graphs by several percent against the back-to-back steps of a real generation loop.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from ..core.arch import ArchSpec
from ..core.errors import UserError
from ..core.table import LatencyTable
from ..core.workload import Workload, WorkloadTables
from .profiler import ProfileOptions, profile, profile_together


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
    step) with ``opts`` (its seq / decode_kv_len / batch / logits are the workload's: a generating workload's
    prefill table computes the last position's logits). ``on_table(label, table)`` is called after each table."""
    if workload.generate > 1 and not arch.is_decoder:
        raise UserError(f"workload {workload.name} generates tokens, but a {arch.family} model has no decode mode",
                        "use a prefill-S workload")
    lens = workload_kv_lens(workload, kv_lens)
    # a generation's prefill yields one token: its graph computes the last position's logits only (as GenAI
    # folders do); a prefill-S workload (scoring) keeps every position's
    logits = "last" if workload.generate >= 1 and arch.is_decoder else "all"
    runs = [("prefill", replace(opts, batch=workload.batch, seq=workload.prompt, decode_kv_len=0, logits=logits))]
    runs += [(f"decode KV {k}", replace(opts, batch=workload.batch, decode_kv_len=k, logits="all")) for k in lens]
    tables = [profile(arch, runs[0][1], progress=progress)]
    if on_table:
        on_table(f"prefill (1/{len(runs)})", tables[0])
    if len(runs) > 1:
        tables += profile_together(arch, [o for _, o in runs[1:]], progress=progress)
    for i, ((label, _), table) in enumerate(zip(runs[1:], tables[1:]), start=2):
        if on_table:
            on_table(f"{label} ({i}/{len(runs)})", table)
    return WorkloadTables(workload, tables[0], tuple(tables[1:]))
