"""Benchmark: how far is the workload model's KV-length interpolation from direct measurement? (SmolLM2-135M)

The workload (default P 128 / G 64: 63 decode steps at KV 128..190) is profiled as ``profile --workload``
does: a prefill table at 128 and decode tables at the first, middle and last step's KV length. Then, at
KV lengths that are NOT in the set (default 143 and 175), a decode table is profiled directly and the
dense model and random non-uniform pruned shapes are timed end to end (``profile --check``'s code). For
each shape the interpolated step time is compared with (a) the direct table's prediction (the
interpolation error alone) and (b) the measured model (interpolation + table error). Separately
profiled tables also differ by the machine's load at the time, so the models are then timed at every
KV length (the set's and the ones between) in ONE shuffled round-robin window: the decode step's
linearity in L and the workload model's interpolated speedups, free of that drift. A second profile
of one KV length of the set (the middle one) gives the run-to-run noise floor of a table on this
machine. With ``--wide`` the same check runs on decode tables spread over KV 128 .. 1024 (a long
generation), where linearity in L is tested over a much longer range.

Torch-free: only SmolLM2's config.json is read (the embedded default, converted once by
``ziplm_deploy.models.assets.smollm2_dir``); the models are the profiler's block graphs with random weights.

    python tools/bench_workload.py [--rounds 30] [--ffn-step 128] [--shapes 3] [--wide]

Writes tools/results/workload_smollm2.{json,md} after every stage (an interrupted run keeps what it measured).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ziplm_deploy.core.arch import arch_from_dir  # noqa: E402
from ziplm_deploy.core.jsonio import atomic_write_bytes, atomic_write_json  # noqa: E402
from ziplm_deploy.core.shape import ModelShape  # noqa: E402
from ziplm_deploy.core.workload import Workload, WorkloadTables, speedups  # noqa: E402
from ziplm_deploy.profiling.profiler import ProfileOptions, check, profile, random_shapes  # noqa: E402
from ziplm_deploy.profiling.workload import profile_workload  # noqa: E402
from ziplm_deploy.runtime.timing import Protocol  # noqa: E402

OUT = ROOT / "tools" / "results" / "workload_smollm2"


def bench_shapes(arch, n: int, seed: int) -> list[ModelShape]:
    """``n`` random non-uniform shapes (``profile --check``'s; about 2x each), one with half its blocks removed
    (about 3x) and a light uniform one (every layer: one KV group fewer, 3/4 of its FFN)."""
    import numpy as np

    from ziplm_deploy.core.shape import LayerShape
    from ziplm_deploy.profiling.grid import random_shape

    shapes = random_shapes(arch, n, seed=seed)
    shapes.append(random_shape(arch, np.random.default_rng(seed + 100), p_zero=0.5))
    kv = max(arch.kv_heads - 1, 1) if arch.kv_heads != arch.heads else None
    heads = kv * arch.group_size if kv else max(arch.heads * 3 // 4, 1)
    shapes.append(ModelShape(tuple(LayerShape(heads, arch.ffn * 3 // 4, kv) for _ in range(arch.num_layers))))
    return [s.validate(arch) for s in shapes]


def _r(x: float | None, n: int = 4) -> float | None:
    return None if x is None else round(x, n)


def compare_at(tables: WorkloadTables, arch, shapes: list[ModelShape], kv_len: int, opts: ProfileOptions,
               check_rounds: int, seed: int) -> dict:
    """Direct decode table at ``kv_len`` and end-to-end timing of dense + ``shapes`` there, vs the interpolation."""
    o = replace(opts, decode_kv_len=kv_len)
    t0 = time.perf_counter()
    direct = profile(arch, o, progress=False)
    report = check(direct, shapes, o, progress=False, protocol=Protocol(warmup=3, rounds=check_rounds, seed=seed))
    st = direct.statistic
    dense = tables.dense_shape()
    rows = []
    for name, shape, measured in [("dense", dense, report.dense.get(st))] + [
            (f"shape {i}", r.shape, r.measured_ms(st)) for i, r in enumerate(report.results)]:
        interp, pred = tables.step_ms(shape, kv_len), direct.predict(shape)
        row = {"shape": name, "interpolated_ms": _r(interp), "direct_table_ms": _r(pred), "measured_ms": _r(measured),
               "interp_vs_direct_table": _r(interp / pred - 1, 5), "interp_vs_measured": _r(interp / measured - 1, 5),
               "direct_table_vs_measured": _r(pred / measured - 1, 5)}
        if name != "dense":
            i_sp = tables.step_ms(dense, kv_len) / interp
            d_sp = direct.predict(dense) / pred
            m_sp = report.dense.get(st) / measured
            row.update({"interpolated_speedup": _r(i_sp), "direct_table_speedup": _r(d_sp), "measured_speedup": _r(m_sp),
                        "speedup_interp_vs_direct_table": _r(i_sp / d_sp - 1, 5),
                        "speedup_interp_vs_measured": _r(i_sp / m_sp - 1, 5)})
        rows.append(row)
    return {"kv_len": kv_len, "seconds": round(time.perf_counter() - t0, 1),
            "direct_table": {"dense": direct.references["dense"].to_json(), "calibration": direct.calibration.to_json()},
            "check_drift": _r(report.drift, 5), "rows": rows}


def noise_floor(tables: WorkloadTables, arch, shapes: list[ModelShape], kv_len: int, opts: ProfileOptions) -> dict:
    """A second profile at a KV length of the set: how much two tables of the same point disagree."""
    t0 = time.perf_counter()
    again = profile(arch, replace(opts, decode_kv_len=kv_len), progress=False)
    first = tables.decode[tables.kv_lens.index(kv_len)]
    dense = tables.dense_shape()
    rows = []
    for name, shape in [("dense", dense)] + [(f"shape {i}", s) for i, s in enumerate(shapes)]:
        a, b = first.predict(shape), again.predict(shape)
        row = {"shape": name, "first_ms": _r(a), "again_ms": _r(b), "difference": _r(b / a - 1, 5)}
        if name != "dense":
            row["speedup_difference"] = _r((again.predict(dense) / b) / (first.predict(dense) / a) - 1, 5)
        rows.append(row)
    return {"kv_len": kv_len, "seconds": round(time.perf_counter() - t0, 1), "rows": rows}


def _bound_call(session, feeds: dict):
    """A timed call with inputs and outputs pre-bound (io_binding, as the profiler times), for one KV length of a
    session whose graph is symbolic in the cache length."""
    ort = session.backend.ort
    binding = session.sess.io_binding()
    keep = [ort.OrtValue.ortvalue_from_numpy(v) for v in feeds.values()]
    for name, v in zip(feeds, keep):
        binding.bind_ortvalue_input(name, v)
    for o in session.outputs:
        binding.bind_output(o.name, "cpu")
    session.sess.run_with_iobinding(binding)  # learn the output shapes, then pre-allocate them
    shapes = [v.shape() for v in binding.get_outputs()]
    binding.clear_binding_outputs()
    for o, shape in zip(session.outputs, shapes):
        v = ort.OrtValue.ortvalue_from_shape_and_type(shape, o.dtype)
        binding.bind_ortvalue_output(o.name, v)
        keep.append(v)
    return lambda: (session.sess.run_with_iobinding(binding), keep)


def one_window(tables: WorkloadTables, arch, shapes: list[ModelShape], between: list[int], opts: ProfileOptions,
               rounds: int, seed: int) -> dict:
    """Dense and ``shapes`` timed at every KV length (the set's and ``between``) in ONE shuffled round-robin window:
    is a decode step linear in L between the set's points, free of the drift between separately profiled tables?
    Also the workload model's interpolated speedups vs the speedups measured in this window."""
    from ziplm_deploy.profiling.blocks import Sizes, model_graph
    from ziplm_deploy.runtime.feeds import synthetic_feeds
    from ziplm_deploy.runtime.timing import round_robin, stats_of

    t0 = time.perf_counter()
    lens = sorted(set(tables.kv_lens) | set(between))
    backend = opts.backend()
    named = [("dense", tables.dense_shape())] + [(f"shape {i}", s) for i, s in enumerate(shapes)]
    sessions, calls = [], {}
    try:
        for name, shape in named:
            session = backend.load(model_graph(arch, shape, Sizes(1, 1, "decode", lens[-1]), opts.dtype).SerializeToString())
            sessions.append(session)
            for kv in lens:
                calls[(name, kv)] = _bound_call(session, synthetic_feeds(session.inputs, Sizes(1, 1, "decode", kv).dims,
                                                                         arch.vocab))
        keys = list(calls)
        samples = round_robin({str(i): calls[k] for i, k in enumerate(keys)}, Protocol(warmup=2, rounds=rounds, seed=seed))
    finally:
        for session in sessions:
            session.close()
    st = tables.decode[0].statistic
    m = {k: stats_of(samples[str(i)]).get(st) for i, k in enumerate(keys)}
    set_lens = tables.kv_lens
    rows = []
    for name, shape in named:
        growth = m[(name, set_lens[-1])] / m[(name, set_lens[0])] - 1
        for kv in between:
            j = max(i for i, k in enumerate(set_lens) if k <= kv)
            k0, k1 = set_lens[j], set_lens[min(j + 1, len(set_lens) - 1)]
            w = 0.0 if k1 == k0 else (kv - k0) / (k1 - k0)
            lin = (1 - w) * m[(name, k0)] + w * m[(name, k1)]
            row = {"shape": name, "kv_len": kv, "measured_ms": _r(m[(name, kv)]), "linear_from_measured_ms": _r(lin),
                   "linearity_error": _r(lin / m[(name, kv)] - 1, 5), "growth_over_set": _r(growth, 5)}
            if name != "dense":
                measured_sp = m[("dense", kv)] / m[(name, kv)]
                model_sp = tables.step_ms(tables.dense_shape(), kv) / tables.step_ms(shape, kv)
                row.update({"measured_speedup": _r(measured_sp), "model_speedup": _r(model_sp),
                            "model_speedup_error": _r(model_sp / measured_sp - 1, 5)})
            rows.append(row)
    return {"kv_lens": lens, "rounds": rounds, "seconds": round(time.perf_counter() - t0, 1), "rows": rows}


def summarise(comparisons: list[dict]) -> dict:
    def stat(key: str) -> dict | None:
        vals = [abs(r[key]) for c in comparisons for r in c["rows"] if r.get(key) is not None]
        return {"median_abs": _r(statistics.median(vals), 5), "max_abs": _r(max(vals), 5)} if vals else None

    keys = ("interp_vs_direct_table", "interp_vs_measured", "direct_table_vs_measured",
            "speedup_interp_vs_direct_table", "speedup_interp_vs_measured", "linearity_error", "model_speedup_error")
    return {k: stat(k) for k in keys}


def workload_rows(tables: WorkloadTables, shapes: list[ModelShape]) -> list[dict]:
    dense = tables.predict(tables.dense_shape())
    rows = []
    for name, shape in [("dense", tables.dense_shape())] + [(f"shape {i}", s) for i, s in enumerate(shapes)]:
        p = tables.predict(shape)
        rows.append({"shape": name, **p.to_json(), "speedup": {k: _r(v) for k, v in speedups(p, dense).items()}})
    return rows


def conclusion(result: dict) -> str:
    out = []
    for case in result["cases"]:
        sm = case.get("summary") or {}

        def f(key: str) -> str:
            v = sm.get(key)
            return f"median {v['median_abs']:.1%}, max {v['max_abs']:.1%}" if v else "not measured"

        text = (f"{case['name']} (decode tables at KV {', '.join(map(str, case['kv_lens']))}): in one timing window the "
                f"decode step is linear in L between the tables' points within {f('linearity_error')} (|error|), and the "
                f"workload model's interpolated decode speedup matches the measured one within "
                f"{f('model_speedup_error')}. Against tables and models measured separately at the intermediate KV "
                f"lengths: interpolated vs direct table {f('interp_vs_direct_table')} in ms and "
                f"{f('speedup_interp_vs_direct_table')} in speedup; vs the measured models {f('interp_vs_measured')} "
                f"in ms and {f('speedup_interp_vs_measured')} in speedup.")
        if case.get("noise"):
            worst = max(abs(r["difference"]) for r in case["noise"]["rows"])
            sworst = max(abs(r["speedup_difference"]) for r in case["noise"]["rows"] if "speedup_difference" in r)
            text += (f" Two profiles of the same table (KV {case['noise']['kv_len']}) differed by up to {worst:.1%} in "
                     f"ms but {sworst:.1%} in speedup: absolute milliseconds across separately profiled tables carry "
                     "the machine's load at the time; speedups do not.")
        out.append(text)
    return "\n\n".join(out)


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


def markdown(result: dict) -> str:
    s = result["setup"]
    lines = [f"# Workload latency model: KV-length interpolation vs direct measurement (SmolLM2-135M)", "",
             f"Machine: {s['cpu']}, {s['cores']} logical CPUs (shared, busy), ONNX Runtime {s['ort']} CPU, "
             f"{s['threads']} thread, fp32, batch 1, {s['rounds']} timing rounds per table, FFN grid step "
             f"{s['ffn_step']}; block-graph models (random weights), {s['shapes']} random non-uniform shapes "
             f"(seed {s['seed']}; shapes 0..{s['shapes'] - 1}), a random one with half its blocks removed and a "
             f"light uniform one (one KV group fewer, 3/4 FFN in every layer). Produced by `python tools/bench_workload.py` on {s['date']}; "
             f"total {result.get('seconds', '?')} s.", ""]
    for case in result["cases"]:
        lines += [f"## {case['name']}: decode tables at KV {', '.join(map(str, case['kv_lens']))}", ""]
        if case.get("workload_rows"):
            lines += [f"Workload {case['workload']}: predicted generation latency.", "",
                      "| shape | TTFT ms | ms/token | tokens/s | end-to-end ms | TTFT speedup | decode speedup | "
                      "e2e speedup |", "|---|---|---|---|---|---|---|---|"]
            for r in case["workload_rows"]:
                sp = r["speedup"]
                lines.append(f"| {r['shape']} | {r['ttft_ms']:.1f} | {r['ms_per_token']:.2f} | {r['tokens_per_s']:.1f} | "
                             f"{r['e2e_ms']:.0f} | {sp['ttft']:.2f}x | {sp['decode']:.2f}x | {sp['e2e']:.2f}x |")
            lines.append("")
        for c in case["comparisons"]:
            lines += [f"Decode step at KV {c['kv_len']} (not in the set): interpolated vs a table profiled at "
                      f"{c['kv_len']} and vs the models timed end to end there (check drift {pct(c['check_drift'])}).", "",
                      "| shape | interpolated ms | direct table ms | measured ms | interp. vs table | interp. vs "
                      "measured | speedup interp. vs table | speedup interp. vs measured |",
                      "|---|---|---|---|---|---|---|---|"]
            for r in c["rows"]:
                lines.append(f"| {r['shape']} | {r['interpolated_ms']:.3f} | {r['direct_table_ms']:.3f} | "
                             f"{r['measured_ms']:.3f} | {pct(r['interp_vs_direct_table'])} | {pct(r['interp_vs_measured'])} "
                             f"| {pct(r.get('speedup_interp_vs_direct_table'))} | {pct(r.get('speedup_interp_vs_measured'))} |")
            lines.append("")
        if case.get("one_window"):
            ow = case["one_window"]
            lines += [f"Same-window check: dense and the shapes timed at KV {', '.join(map(str, ow['kv_lens']))} in one "
                      f"shuffled round-robin window ({ow['rounds']} rounds): the decode step's linearity in L, free of "
                      "the drift between separately profiled tables, and the workload model's interpolated speedup "
                      "against the speedup measured there.", "",
                      "| shape | KV | measured ms | linear from the set's points | linearity error | growth over the "
                      "set's KV range | model speedup | measured speedup | model speedup error |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for r in ow["rows"]:
                msp = f"{r['model_speedup']:.3f}x" if "model_speedup" in r else "-"
                mes = f"{r['measured_speedup']:.3f}x" if "measured_speedup" in r else "-"
                lines.append(f"| {r['shape']} | {r['kv_len']} | {r['measured_ms']:.3f} | {r['linear_from_measured_ms']:.3f} | "
                             f"{pct(r['linearity_error'])} | {pct(r['growth_over_set'])} | {msp} | {mes} | "
                             f"{pct(r.get('model_speedup_error'))} |")
            lines.append("")
        if case.get("noise"):
            n = case["noise"]
            diffs = ", ".join(f"{r['shape']} {pct(r['difference'])}" for r in n["rows"])
            sdiffs = ", ".join(f"{r['shape']} {pct(r['speedup_difference'])}" for r in n["rows"] if "speedup_difference" in r)
            lines += [f"Noise floor: a second table at KV {n['kv_len']} (in the set) predicts {diffs} "
                      f"(speedups: {sdiffs}) relative to the first.", ""]
        if case.get("summary"):
            sm = case["summary"]
            lines += ["| error (over all shapes and KV points) | median abs | max abs |", "|---|---|---|"]
            for k, v in sm.items():
                if v:
                    lines.append(f"| {k.replace('_', ' ')} | {v['median_abs']:.1%} | {v['max_abs']:.1%} |")
            lines.append("")
    if result.get("conclusion"):
        lines += ["## Conclusion", "", result["conclusion"], ""]
    return "\n".join(lines)


def write(result: dict) -> None:
    atomic_write_json(OUT.with_suffix(".json"), {"format": "ziplm-deploy/bench-workload", "version": 1, **result})
    atomic_write_bytes(OUT.with_suffix(".md"), markdown(result).encode())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--generate", type=int, default=64)
    ap.add_argument("--between", type=int, nargs="+", default=[143, 175],
                    help="KV lengths not in the set where the interpolation is checked")
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--check-rounds", type=int, default=40)
    ap.add_argument("--window-rounds", type=int, default=40, help="rounds of the same-window check")
    ap.add_argument("--ffn-step", type=int, default=128)
    ap.add_argument("--shapes", type=int, default=2, help="random shapes (plus a ~3x random and a light uniform one)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--wide", action="store_true", help="also decode tables at KV 128, 576, 1024, checked at 352 and 800")
    args = ap.parse_args()

    import datetime
    import platform

    import onnxruntime

    from ziplm_deploy.models.assets import smollm2_dir

    t_start = time.perf_counter()
    arch = arch_from_dir(smollm2_dir())
    workload = Workload(args.prompt, args.generate)
    opts = ProfileOptions(threads=1, ffn_step=args.ffn_step, protocol=Protocol(warmup=3, rounds=args.rounds, seed=args.seed))
    shapes = bench_shapes(arch, args.shapes, args.seed)
    result: dict = {"setup": {"model": "SmolLM2-135M-Instruct config (embedded default)", "workload": workload.to_json(),
                              "threads": 1, "rounds": args.rounds, "check_rounds": args.check_rounds,
                              "ffn_step": args.ffn_step, "shapes": args.shapes, "seed": args.seed,
                              "ort": onnxruntime.__version__, "cpu": "", "cores": 0, "platform": platform.platform(),
                              "date": datetime.date.today().isoformat(),
                              "decode_steps": "KV P .. P+G-2 (G-1 steps; the prefill yields the first token)"},
                    "shapes": [[layer.to_json() for layer in s.layers] for s in shapes], "cases": []}

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f} s] {msg}", flush=True)

    # 1. the workload's tables, as `profile --workload` measures them
    log(f"profiling workload {workload.describe()} at KV {workload.default_kv_lens()}")
    tables = profile_workload(arch, workload, opts, progress=False,
                              on_table=lambda label, t: log(f"  {label}: dense {t.references['dense'].p25:.2f} ms"))
    fp = tables.prefill.fingerprint
    result["setup"].update(cpu=fp.cpu, cores=fp.cores)
    case = {"name": f"workload {workload.name}", "workload": workload.name, "kv_lens": list(tables.kv_lens),
            "workload_rows": workload_rows(tables, shapes), "comparisons": []}
    result["cases"].append(case)
    write(result)
    for r in case["workload_rows"]:
        log(f"  {r['shape']}: TTFT {r['ttft_ms']:.1f} ms, {r['ms_per_token']:.2f} ms/token, e2e {r['e2e_ms']:.0f} ms, "
            f"speedups {r['speedup']}")
    # 2. direct decode tables and end-to-end timing at KV lengths between the set's
    for kv in args.between:
        c = compare_at(tables, arch, shapes, kv, opts, args.check_rounds, args.seed)
        case["comparisons"].append(c)
        case["summary"] = summarise(case["comparisons"])
        write(result)
        log(f"  KV {kv}: " + "; ".join(f"{r['shape']} interp vs table {pct(r['interp_vs_direct_table'])}, vs measured "
                                       f"{pct(r['interp_vs_measured'])}" for r in c["rows"]))
    case["one_window"] = one_window(tables, arch, shapes, args.between, opts, args.window_rounds, args.seed)
    case["summary"] = summarise(case["comparisons"] + [case["one_window"]])
    write(result)
    log("  one window: " + "; ".join(f"{r['shape']}@{r['kv_len']} linearity {pct(r['linearity_error'])}, model speedup "
                                     f"{pct(r.get('model_speedup_error'))}" for r in case["one_window"]["rows"]))
    # 3. noise floor: the middle table again
    mid = tables.kv_lens[len(tables.kv_lens) // 2]
    case["noise"] = noise_floor(tables, arch, shapes, mid, opts)
    write(result)
    log(f"  noise at KV {mid}: " + ", ".join(f"{r['shape']} {pct(r['difference'])}" for r in case["noise"]["rows"]))
    # 4. optionally a long generation: decode tables far apart
    if args.wide:
        wide_lens, wide_between = (128, 576, 1024), (352, 800)
        wide = Workload(128, 1024 - 128 + 2)  # steps at KV 128 .. 1024
        log(f"wide: decode tables at KV {wide_lens}")
        wt = WorkloadTables(wide, tables.prefill, tuple(
            tables.decode[0] if k == 128 else profile(arch, replace(opts, decode_kv_len=k), progress=False)
            for k in wide_lens))
        wcase = {"name": "long generation", "workload": wide.name, "kv_lens": list(wt.kv_lens), "comparisons": []}
        result["cases"].append(wcase)
        for kv in wide_between:
            c = compare_at(wt, arch, shapes, kv, opts, args.check_rounds, args.seed)
            wcase["comparisons"].append(c)
            wcase["summary"] = summarise(wcase["comparisons"])
            write(result)
            log(f"  KV {kv}: " + "; ".join(f"{r['shape']} interp vs table {pct(r['interp_vs_direct_table'])}, vs "
                                           f"measured {pct(r['interp_vs_measured'])}" for r in c["rows"]))
        wcase["one_window"] = one_window(wt, arch, shapes, list(wide_between), opts, args.window_rounds, args.seed)
        wcase["summary"] = summarise(wcase["comparisons"] + [wcase["one_window"]])
        write(result)
        log("  one window: " + "; ".join(f"{r['shape']}@{r['kv_len']} linearity {pct(r['linearity_error'])}, model "
                                         f"speedup {pct(r.get('model_speedup_error'))}" for r in wcase["one_window"]["rows"]))
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    result["conclusion"] = conclusion(result)
    write(result)
    log(f"wrote {OUT.with_suffix('.json')} and {OUT.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
