"""Benchmark: does budgeting a workload's decode time vs its prefill (TTFT) vs end-to-end pick different shapes?
(SmolLM2-135M, search only)

The workload (default P 128 / G 64) is profiled as ``profile --workload`` does (torch-free: SmolLM2's
config.json only, block graphs with random weights), with a coarse FFN grid (``--ffn-step 96``) and few
rounds to keep it short. Then the search alone runs (no weights are pruned, nothing is exported): one
database of magnitude-ranked levels of the real SmolLM2 weights (``prune/family.py``'s
``_magnitude_database``, on the same FFN grid; OBS-free), and the DP picks one level per module for each
target under each budget (``e2e``, ``ttft``, ``decode``; ``search.LatencyModel.of_workload``), with two
costs: ``magnitude`` (each module's fraction of weight magnitude removed: every module's full removal
costs about 1, whatever its size) and ``params`` (the fraction of all block parameters removed: the
search keeps as many parameters as the budget allows). The costs are the same for every budget, so any
difference between the chosen shapes comes from the latency model alone. For each shape: heads / KV groups / FFN neurons kept, layers whose attention or FFN is
removed entirely, and its predicted TTFT, decode (ms per token) and end-to-end speedups; and for the
dense model, how its prefill and decode time split between attention, FFN and the rest (embedding,
LM head, norms: the calibration's constant), which is what makes the budgets differ.

    python tools/bench_workload_search.py [--workload 128x64] [--ffn-step 96] [--rounds 10] [--targets 1.5 2]
                                          [--tables DIR]  (reuse workload tables written by an earlier run)

Writes tools/results/workload_search_smollm2.{json,md}; the tables go to ``--tables`` (default: the
ziplm-deploy cache folder) and are reused when they are there and match the options.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ziplm_deploy.core.jsonio import atomic_write_bytes, atomic_write_json  # noqa: E402
from ziplm_deploy.core.shape import ModelShape  # noqa: E402
from ziplm_deploy.core.workload import Workload, WorkloadTables  # noqa: E402
from ziplm_deploy.prune.search import BUDGETS, LatencyModel, search  # noqa: E402

OUT = ROOT / "tools" / "results" / "workload_search_smollm2"


def _tables(arch, workload: Workload, ffn_step: int, rounds: int, folder: Path,
            log) -> tuple[WorkloadTables, float | None]:
    """The workload tables in ``folder`` when they match the options, else profiled now (and saved there)."""
    from ziplm_deploy.profiling.profiler import ProfileOptions
    from ziplm_deploy.profiling.workload import profile_workload
    from ziplm_deploy.runtime.timing import Protocol

    manifest = folder / "workload.json"
    if manifest.is_file() and tables_load(manifest):
        tables = WorkloadTables.load(manifest)
        p = tables.prefill.protocol
        if (tables.workload == workload and tables.arch == arch and p.get("ffn_step") == ffn_step
                and p.get("rounds") == rounds):
            log(f"reusing workload tables {manifest}")
            return tables, None
    log(f"profiling workload {workload.describe()} (FFN step {ffn_step}, {rounds} rounds)")
    t0 = time.perf_counter()
    opts = ProfileOptions(ffn_step=ffn_step, protocol=Protocol(rounds=rounds))
    tables = profile_workload(arch, workload, opts, progress=False,
                              on_table=lambda label, t: log(f"  {label}: drift {t.calibration.drift:+.1%}"))
    tables.save(folder)
    return tables, time.perf_counter() - t0


def _split(table, arch) -> dict[str, float]:
    """Dense prediction split into attention, FFN and the rest (the calibration constant), as fractions."""
    dense = table.predict(table.dense_shape())
    attn = table.calibration.alpha * arch.num_layers * table.attention_ms(arch.heads, arch.kv_heads)
    ffn = table.calibration.alpha * arch.num_layers * table.ffn_ms(arch.ffn)
    return {"dense_ms": round(dense, 3), "attention": round(attn / dense, 4), "ffn": round(ffn / dense, 4),
            "rest": round(1 - (attn + ffn) / dense, 4)}


def _describe(shape: ModelShape, arch) -> dict:
    layers = shape.validate(arch).layers
    return {"heads_kept": sum(s.heads for s in layers), "heads_dense": arch.heads * arch.num_layers,
            "kv_groups_kept": sum((s.kv if s.kv is not None else s.heads) for s in layers),
            "kv_groups_dense": arch.kv_heads * arch.num_layers,
            "ffn_kept": sum(s.ffn for s in layers), "ffn_dense": arch.ffn * arch.num_layers,
            "attention_removed_layers": [i for i, s in enumerate(layers) if s.heads == 0],
            "ffn_removed_layers": [i for i, s in enumerate(layers) if s.ffn == 0],
            "per_layer": [[s.kv if s.kv is not None else s.heads, s.ffn] for s in layers]}


def params_costs(db, arch) -> dict[tuple[int, str], list[float]]:
    """Cost of each level: the parameters it removes, as a fraction of all attention + FFN block parameters."""
    gqa = arch.kv_heads != arch.heads
    per_attn = ((2 * arch.group_size + 2) if gqa else 4) * arch.head_dim * arch.hidden  # q, k, v, o of one unit
    per_ffn = (3 if arch.gated_ffn else 2) * arch.hidden  # gate, up, down of one neuron
    units_attn = arch.kv_heads if gqa else arch.heads
    total = arch.num_layers * (units_attn * per_attn + arch.ffn * per_ffn)
    out = {}
    for m in db.modules:
        per, dense = (per_attn, units_attn) if m.kind == "attn" else (per_ffn, arch.ffn)
        out[(m.layer, m.kind)] = [(dense - lv.units) * per / total for lv in m.levels]
    return out


def run(args) -> dict:
    import torch

    from ziplm_deploy.core.arch import arch_from_dir
    from ziplm_deploy.models import load_model
    from ziplm_deploy.models.assets import smollm2_dir
    from ziplm_deploy.prune.family import PruneConfig, _magnitude_database, workload_record

    started = time.perf_counter()
    model_dir = smollm2_dir()
    arch = arch_from_dir(model_dir)
    workload = Workload.parse(args.workload)
    folder = Path(args.tables) if args.tables else model_dir.parent / f"bench-workload-search-{workload.name}"
    tables, profile_s = _tables(arch, workload, args.ffn_step, args.rounds, folder, print)
    print("magnitude database of the SmolLM2 weights")
    torch.set_num_threads(1)
    db = _magnitude_database(load_model(model_dir), PruneConfig(ffn_step=args.ffn_step))
    dense = tables.dense_shape()
    result = {
        "model": "SmolLM2-135M-Instruct", "workload": {"name": workload.name, **workload.to_json()},
        "machine": {"cpu": tables.prefill.fingerprint.cpu, "cores": tables.prefill.fingerprint.cores,
                    "runtime": f"{tables.prefill.fingerprint.runtime} {tables.prefill.fingerprint.runtime_version}",
                    "threads": tables.prefill.fingerprint.threads, "platform": platform.platform()},
        "options": {"ffn_step": args.ffn_step, "rounds": args.rounds, "targets": args.targets,
                    "costs": {"magnitude": "fraction of each module's weight magnitude removed",
                              "params": "fraction of all attention + FFN block parameters removed"}},
        "decode_kv_lens": list(tables.kv_lens), "decode_weights": [round(w, 3) for w in tables.decode_weights()],
        "dense": {"prediction": workload_record(LatencyModel.of_workload(tables), dense),
                  "prefill_split": _split(tables.prefill, arch),
                  "decode_split": {f"kv{t.fingerprint.kv_len}": _split(t, arch) for t in tables.decode}},
        "profile_seconds": None if profile_s is None else round(profile_s, 1), "searches": [],
    }
    for cost, costs in (("magnitude", None), ("params", params_costs(db, arch))):
        for budget in BUDGETS:
            model = LatencyModel.of_workload(tables, budget)
            t0 = time.perf_counter()
            for r in search(db, model, args.targets, costs=costs):
                row = {"cost": cost, "budget": budget, "target": r.target, "reachable": r.reachable,
                       "max_speedup": round(r.max_speedup, 3)}
                if r.reachable:
                    row.update(predicted_speedup=round(r.predicted_speedup, 4), loss=round(r.loss, 4),
                               prediction=workload_record(model, r.shape), shape=_describe(r.shape, arch))
                result["searches"].append(row)
            print(f"cost {cost}, budget {budget}: searched {len(args.targets)} targets in "
                  f"{time.perf_counter() - t0:.1f}s")
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _pct(kept: int, dense: int) -> str:
    return f"{kept} / {dense} ({kept / dense:.0%})"


def markdown(res: dict) -> str:
    m, w, d = res["machine"], res["workload"], res["dense"]
    lines = [
        "# Workload-budgeted search: which shapes do e2e, TTFT and decode budgets pick? (SmolLM2-135M)", "",
        f"Machine: {m['cpu']}, {m['cores']} logical CPUs (shared), {m['runtime']}, {m['threads']} thread(s), fp32, "
        f"batch {w['batch']}. Workload {w['name']} (prompt {w['prompt']}, generate {w['generate']}: "
        f"{max(w['generate'] - 1, 0)} decode steps, decode tables at KV {', '.join(map(str, res['decode_kv_lens']))}, "
        f"weights {', '.join(map(str, res['decode_weights']))}); tables profiled with FFN step "
        f"{res['options']['ffn_step']} and {res['options']['rounds']} rounds ("
        + (f"{res['profile_seconds']} s). " if res["profile_seconds"] is not None else "reused from an earlier run). ")
        +
        "Search only: magnitude-ranked levels of the real weights, no weights pruned; costs `magnitude` (each "
        "module's fraction of weight magnitude removed) and `params` (fraction of all block parameters removed), "
        f"the same for every budget. Produced by `python tools/bench_workload_search.py`; total {res['seconds']} s.", "",
        "Dense model: where the predicted time goes (attention / FFN blocks, and the rest: embedding, LM head, "
        "norms, i.e. the calibration constant).", "",
        "| pass | dense ms | attention | FFN | rest |", "|---|---|---|---|---|",
    ]
    for name, s in [("prefill", d["prefill_split"]), *[(f"decode {k}", v) for k, v in d["decode_split"].items()]]:
        lines.append(f"| {name} | {s['dense_ms']:.2f} | {s['attention']:.0%} | {s['ffn']:.0%} | {s['rest']:.0%} |")
    p = d["prediction"]
    lines += ["", f"Dense prediction: TTFT {p['ttft_ms']:.1f} ms, {p['ms_per_token']:.2f} ms/token, "
                  f"end-to-end {p['e2e_ms']:.0f} ms.", "",
              "| cost | budget | target | KV groups kept | heads kept | FFN kept | attn-free layers | FFN-free layers | "
              "TTFT speedup | decode speedup | e2e speedup |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["searches"]:
        if not r["reachable"]:
            lines.append(f"| {r['cost']} | {r['budget']} | {r['target']:g}x | unreachable (max "
                         f"{r['max_speedup']:.2f}x) | | | | | | | |")
            continue
        s, sp = r["shape"], r["prediction"]["speedup"]
        lines.append(f"| {r['cost']} | {r['budget']} | {r['target']:g}x | "
                     f"{_pct(s['kv_groups_kept'], s['kv_groups_dense'])} | "
                     f"{_pct(s['heads_kept'], s['heads_dense'])} | {_pct(s['ffn_kept'], s['ffn_dense'])} | "
                     f"{len(s['attention_removed_layers'])} | {len(s['ffn_removed_layers'])} | "
                     f"{sp['ttft']:.2f}x | {sp['decode']:.2f}x | {sp['e2e']:.2f}x |")
    lines += ["", "Per-layer shapes (KV groups kept / FFN neurons kept, layer 0 first):", ""]
    for r in res["searches"]:
        if r["reachable"]:
            per = " ".join(f"{a}/{f}" for a, f in r["shape"]["per_layer"])
            lines.append(f"- {r['cost']}, {r['budget']} {r['target']:g}x: {per}")
    lines += ["", "Each budget's shape meets its own target (its column); the other columns are what that shape "
                  "gives on the metrics it was not searched for."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="128x64")
    ap.add_argument("--ffn-step", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0])
    ap.add_argument("--tables", help="folder of the workload tables (reused when they match)")
    args = ap.parse_args()
    res = run(args)
    atomic_write_json(OUT.with_suffix(".json"), {"format": "ziplm-deploy/bench-workload-search", "version": 1, **res})
    atomic_write_bytes(OUT.with_suffix(".md"), markdown(res).encode())
    print(markdown(res))
    print(f"wrote {OUT.with_suffix('.json')} and {OUT.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def tables_load(manifest: Path) -> bool:
    """Whether cached tables still load (tables written before ``logits`` existed are refused for generation)."""
    from ziplm_deploy.core.errors import UserError

    try:
        WorkloadTables.load(manifest)
    except UserError:
        return False
    return True
