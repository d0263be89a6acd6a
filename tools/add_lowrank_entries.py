"""Add FLOP low-rank entries to a stored reference table, keeping its block entries and calibration.

Profiles the model's table again with ``--rank-step`` on this machine (same deployment as the stored
table, checked through the fingerprint) and merges: the stored entries stay, the low-rank entries and
their dense-Linear references come from the new run (they are differences within that run).

    python3 tools/add_lowrank_entries.py profiles/smollm2-135m_ort-cpu_b1_s128_t1.json --rank-step 32
"""

from __future__ import annotations

import argparse
import sys

from ziplm_deploy.core.table import LatencyTable
from ziplm_deploy.profiling.profiler import ProfileOptions, profile
from ziplm_deploy.runtime.timing import Protocol


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("table", help="stored table to extend (rewritten in place)")
    p.add_argument("--rank-step", type=int, default=32)
    p.add_argument("--rounds", type=int, default=None, help="default: the stored table's rounds")
    args = p.parse_args(argv)
    stored = LatencyTable.load(args.table)
    fp, proto = stored.fingerprint, stored.protocol
    protocol = Protocol(warmup=int(proto.get("warmup", 5)), rounds=args.rounds or int(proto.get("rounds", 50)),
                        seed=int(proto.get("seed", 0)))
    runtime = {"CPUExecutionProvider": "ort-cpu", "CUDAExecutionProvider": "ort-cuda"}.get(fp.provider, "ort-cpu")
    opts = ProfileOptions(runtime=runtime, batch=fp.batch, seq=fp.seq, decode_kv_len=fp.kv_len if fp.mode == "decode" else 0,
                          threads=fp.threads, opt_level=fp.opt_level, dtype=fp.dtype,
                          ffn_step=int(proto.get("ffn_step", 32)), rank_step=args.rank_step, protocol=protocol)
    fresh = profile(stored.arch, opts)
    diffs = stored.fingerprint.differences(fresh.fingerprint, ignore=("producer", "cores"))
    if diffs:
        print("this machine is another deployment than the stored table's: " + "; ".join(diffs), file=sys.stderr)
        return 2
    # the stored block entries, references and calibration stay; only the low-rank entries and their own
    # run's dense-Linear references are added (their deltas are differences within that run)
    refs = {**stored.references, **{k: v for k, v in fresh.references.items() if k.startswith("linear:")}}
    merged = LatencyTable.build(stored.fingerprint, stored.arch, {**stored.protocol, "rank_step": args.rank_step},
                                list(stored.attention), list(stored.ffn), refs, fresh.lowrank)
    merged.save(args.table)
    print(f"{args.table}: + {len(merged.lowrank)} low-rank entries; calibration alpha {merged.calibration.alpha:.4f} "
          f"(was {stored.calibration.alpha:.4f}); fresh dense {fresh.references['dense'].p25:.3f} ms vs stored "
          f"{stored.references['dense'].p25:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
