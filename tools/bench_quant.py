"""Benchmark: pruning stacked on ONNX Runtime dynamic int8 quantization, SmolLM2-135M, measured in one run.

Points: dense fp32, dense int8 (``export --precision int8-dynamic``'s quantization), ZipLM one-shot at
each target (pruned with the stored fp32 table) in fp32 and + int8, and ("joint") ZipLM pruned with the
int8 table for total speedups over fp32 dense, + int8. Every model is an ONNX file: perplexity on held-out
news text (gensim lee_background.cor, windows of 512) computed on the ONNX file itself in ONNX Runtime
(``verify.ort_quality``), latency in ORT CPU, 1 thread, B1 S128, all models interleaved in one
``time_models`` run (p25). The int8 latency table (profiled here unless ``--int8-table`` is given)
predicts the int8 members' speedups over int8 dense and, with its fp32 dense reference, over fp32 dense.

    python tools/bench_quant.py [--targets 1.5 2] [--joint-targets 2.5 3] [--int8-table T.json]
        [--precision int8-dynamic/fp32-embed/fp32-down] [--dense-recipes int8-dynamic/fp32-embed ...]

``--precision`` is the int8 recipe of the table, the joint family and every "int8" point (default plain
``int8-dynamic``); ``--dense-recipes`` adds the dense model quantized with other recipes, for comparison.

Writes tools/results/quant_smollm2.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

FP32_TABLE = ROOT / "profiles" / "smollm2-135m_ort-cpu_b1_s128_t1.json"
INT8 = "int8-dynamic"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def int8_table(args, work: Path):
    from ziplm_deploy.core.arch import arch_from_dir
    from ziplm_deploy.core.table import LatencyTable
    from ziplm_deploy.models.assets import smollm2_dir
    from ziplm_deploy.profiling.profiler import ProfileOptions, profile
    from ziplm_deploy.runtime.quantize import Precision
    from ziplm_deploy.runtime.timing import Protocol

    path = Path(args.int8_table) if args.int8_table else work / "smollm2-135m_ort-cpu-int8_b1_s128_t1.json"
    info_file = path.with_suffix(".profile.json")  # how long it took and the load around it
    if path.is_file():
        return LatencyTable.load(path), path, json.loads(info_file.read_text()) if info_file.is_file() else None
    log(f"profiling the int8 table into {path} (load {load_average()})")
    before, t0 = load_average(), time.perf_counter()
    opts = ProfileOptions(seq=128, threads=1, precision=Precision.parse(args.precision),
                          protocol=Protocol(rounds=args.profile_rounds))
    table = profile(arch_from_dir(smollm2_dir()), opts, progress=False)
    table.save(path)
    info = {"seconds": round(time.perf_counter() - t0, 1), "load_before": before, "load_after": load_average(),
            "drift": round(table.calibration.drift, 4)}
    info_file.write_text(json.dumps(info))
    log(f"int8 table: {info}")
    return table, path, info


def prune(model_dir, table, table_path, targets, work: Path, name: str, windows: int):
    from ziplm_deploy.prune.family import PruneConfig, prune_family

    t0 = time.perf_counter()
    report = prune_family(model_dir, table, table_path, "wikipedia",
                          PruneConfig(method="ziplm", targets=tuple(targets), windows=windows, evaluate=False),
                          work / name, log=lambda s: log(s), progress=False)
    log(f"{name}: pruned in {time.perf_counter() - t0:.0f}s")
    return report.members


def export_point(model_dir: str, stem: str, work: Path) -> Path:
    """fp32 ONNX of ``model_dir`` (kept, with its export reference)."""
    from ziplm_deploy.export import export_onnx
    from ziplm_deploy.models import load_model

    fp32 = work / "fp32" / f"{stem}.onnx"
    if not fp32.is_file():
        export_onnx(load_model(model_dir), fp32, source=model_dir)
    return fp32


def quantized_point(fp32: Path, work: Path, label: str, per_channel: bool = False) -> Path:
    """The quantized twin of an fp32 export, as ``export --precision LABEL`` writes it (top-1 recorded)."""
    from ziplm_deploy.export.quantize import quantize_exported
    from ziplm_deploy.runtime.quantize import precision_from_args

    precision = precision_from_args(label, per_channel)
    folder = "int8pc" if precision.label == "int8-dynamic/per-channel" else precision.label.replace("int8-dynamic", "int8").replace("/", "-")
    q = work / folder / fp32.name
    q.parent.mkdir(parents=True, exist_ok=True)
    if not q.is_file():
        result = quantize_exported([fp32], q.parent, precision, min_top1=0.0)
        log(f"{q}: {result.quality[0].to_json(result.precision)}")
    return q


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0], help="fp32 table targets")
    p.add_argument("--joint-targets", type=float, nargs="*", default=[2.0, 2.5, 3.0],
                   help="total speedups over fp32 dense, pruned with the int8 table")
    p.add_argument("--windows", type=int, default=32, help="calibration windows of 128 tokens")
    p.add_argument("--eval-windows", type=int, default=8, help="held-out windows of 512 tokens")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--profile-rounds", type=int, default=50)
    p.add_argument("--int8-table")
    p.add_argument("--precision", default=INT8, help="int8 recipe of the table, the joint family and the int8 points")
    p.add_argument("--dense-recipes", nargs="*", default=[], help="the dense model also quantized with these recipes")
    p.add_argument("--per-channel-points", nargs="*", default=["dense", "ziplm-2x"],
                   help="points also quantized with per-channel weight scales (not predicted: the table is per-tensor)")
    p.add_argument("--work", help="working folder (default: a new temp folder)")
    p.add_argument("--tag", default="", help="suffix of the result files (quant_smollm2<tag>.json/.md)")
    args = p.parse_args()
    run(args)


def cached_points(args, work: Path, table8, table8_path) -> dict:
    """The models of the benchmark; a rerun in the same --work reuses the fp32-table members, and the joint
    members of the same int8 table (exports and perplexities are cached by file too)."""
    from ziplm_deploy.core.manifest import file_sha256

    fp32_file = work / "points_fp32.json"
    if not fp32_file.is_file():
        fp32_file.write_text(json.dumps(fp32_points(args, work), indent=1))
    tag = file_sha256(table8_path)[:10]
    joint_file = work / f"points_joint_{tag}.json"
    if not joint_file.is_file():
        joint_file.write_text(json.dumps(joint_points(args, work, table8, table8_path, tag), indent=1))
    return {**json.loads(fp32_file.read_text()), **json.loads(joint_file.read_text())}


def fp32_points(args, work: Path) -> dict:
    """Dense and the members pruned with the stored fp32 table (targets over fp32 dense)."""
    from ziplm_deploy.core.table import LatencyTable
    from ziplm_deploy.models.assets import smollm2_dir

    model_dir = str(smollm2_dir())
    points: dict[str, dict] = {"dense": {"dir": model_dir, "shape": None}}
    table32 = LatencyTable.load(FP32_TABLE)
    for m in prune(model_dir, table32, FP32_TABLE, args.targets, work, "ziplm-fp32table", args.windows):
        if m.reachable:
            points[f"ziplm-{m.target:g}x"] = {"dir": m.path, "shape": m.shape, "table_predicted": m.predicted_speedup}
    return points


def joint_points(args, work: Path, table8, table8_path, tag: str) -> dict:
    """Members pruned with the int8 table: ``prune`` takes their targets as total speedups over the fp32 dense
    model (``references["dense_fp32"]`` of the int8 table's run) and prunes only what int8 does not give."""
    from ziplm_deploy.models.assets import smollm2_dir

    points = {}
    if args.joint_targets:
        for m in prune(str(smollm2_dir()), table8, table8_path, args.joint_targets, work, f"ziplm-int8table-{tag}",
                       args.windows):
            if m.reachable:
                points[f"joint-{m.target:g}x"] = {"dir": m.path, "shape": m.shape, "int8_only": True,
                                                  "table_predicted": m.predicted_speedup}
    return points


def run(args) -> None:
    import torch

    from bench_prune import cpu_name, heldout_windows
    from ziplm_deploy.models.assets import smollm2_dir
    from ziplm_deploy.models.tokenizer import load_tokenizer
    from ziplm_deploy.core.table import FP32_DENSE

    started = time.perf_counter()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_quant."))
    work.mkdir(parents=True, exist_ok=True)
    log(f"working folder {work}")
    evalw = heldout_windows(load_tokenizer(str(smollm2_dir())), 512, args.eval_windows).numpy()
    table8, table8_path, profile_info = int8_table(args, work)
    points = cached_points(args, work, table8, table8_path)
    files = {}
    for name, pt in points.items():
        log(f"exporting {name}")
        # exports are cached by file name: a joint member's name carries its table's tag (runs of several tables)
        fp32 = export_point(pt["dir"], f"{name}-{Path(pt['dir']).parent.name}" if pt.get("int8_only") else name, work)
        if not pt.get("int8_only"):
            files[f"{name}/fp32"] = fp32
        files[f"{name}/int8"] = quantized_point(fp32, work, args.precision)
        if name in args.per_channel_points:
            files[f"{name}/int8-per-channel"] = quantized_point(fp32, work, args.precision, per_channel=True)
        if name == "dense":
            for label in args.dense_recipes:
                files[f"dense/{label}"] = quantized_point(fp32, work, label)
    ppls = perplexities(work, files, evalw)
    rows = [predicted_row(key, path, points, table8, ppls[key]) for key, path in files.items()]
    load_before, stats = measure(args, files, rows, table8.arch.vocab)
    st = table8.statistic
    result = {
        "benchmark": "quant_smollm2", "date": time.strftime("%Y-%m-%d"), "machine": f"{cpu_name()}, {os.cpu_count()} cpus",
        "python": platform.python_version(), "torch": torch.__version__, "fp32_table": str(FP32_TABLE.relative_to(ROOT)),
        "int8_table": str(table8_path), "int8_table_profile": profile_info,
        "int8_table_refs_ms": {"int8_dense": round(table8.predict(table8.dense_shape()), 3),
                               "fp32_dense": round(table8.references[FP32_DENSE].get(st), 3)},
        "settings": {"runtime": "onnxruntime CPU, 1 thread, opt level all", "batch": 1, "seq": 128, "statistic": "p25",
                     "rounds": args.rounds, "quantization": f"quantize_dynamic, QInt8 weights, recipe {args.precision} "
                                                            "(the int8 rows; per-tensor unless noted)",
                     "calibration": f"{args.windows} x 128 Wikipedia tokens",
                     "quality": f"perplexity in ONNX Runtime on {evalw.size} held-out tokens (lee_background.cor), windows of 512",
                     "recovery": "none (one-shot)", "load_at_timing": load_before,
                     "drift": round(stats["dense/fp32:recheck"].p25 / stats["dense/fp32"].p25 - 1, 4)},
        "rows": rows, "timings": {k: v.to_json() for k, v in stats.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    out = ROOT / "tools" / "results" / f"quant_smollm2{args.tag}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def perplexities(work: Path, files: dict, evalw) -> dict:
    """Held-out perplexity of every ONNX file in ONNX Runtime (cached in the working folder)."""
    from ziplm_deploy.verify.ort_quality import ort_perplexity

    ppl_file = work / "perplexities.json"
    ppls = json.loads(ppl_file.read_text()) if ppl_file.is_file() else {}
    for key, path in files.items():  # cached by file: the same point in another recipe is another file
        if str(path) not in ppls:
            log(f"perplexity of {key} in ONNX Runtime")
            ppls[str(path)] = ort_perplexity(path, evalw, threads=1)
            ppl_file.write_text(json.dumps(ppls, indent=1))
    return {key: ppls[str(path)] for key, path in files.items()}


def time_files(files: dict, rounds: int, seq: int = 128, vocab: int = 49152) -> dict:
    """Every file timed in one interleaved ORT CPU run (1 thread, B1, ``seq`` tokens): ``time_models``'s stats."""
    from ziplm_deploy.runtime import get_backend
    from ziplm_deploy.runtime.measure import time_models
    from ziplm_deploy.runtime.timing import Protocol

    return time_models(get_backend("ort-cpu", threads=1), {k: str(v) for k, v in files.items()},
                       {"batch": 1, "seq": seq, "past": 0, "total": seq}, vocab=vocab,
                       protocol=Protocol(warmup=3, rounds=rounds))


def measured_rows(work: Path, files: dict, evalw, rounds: int, base: str) -> tuple[dict, list[float], dict]:
    """Every file's held-out ORT perplexity (cached) and p25 latency from one interleaved timing run, with its
    speedup over the file ``base``: ({key: {"ms", "speedup", "perplexity"}}, load average before timing, the
    run's stats)."""
    ppls = perplexities(work, files, evalw)
    load = load_average()
    stats = time_files(files, rounds)
    base_ms = stats[base].p25
    return {k: {"ms": round(stats[k].p25, 2), "speedup": round(base_ms / stats[k].p25, 3),
                "perplexity": round(ppls[k], 2)} for k in files}, load, stats


def predicted_row(key: str, path: Path, points: dict, table8, ppl: float) -> dict:
    """A model's row: perplexity, size and the prediction of the table of its precision."""
    from ziplm_deploy.core.shape import ModelShape
    from ziplm_deploy.core.table import LatencyTable
    from ziplm_deploy.core.table import FP32_DENSE

    name, precision = key.split("/", 1)
    shape = points[name]["shape"]
    shape = ModelShape.from_json(shape, "member") if shape else table8.dense_shape()
    row = {"model": key, "point": name, "precision": precision, "perplexity": round(ppl, 3),
           "onnx_mb": round(path.stat().st_size / 1e6, 1)}
    if precision == "int8":
        pred_ms = table8.predict(shape)
        row.update(int8_table_predicted_ms=round(pred_ms, 3),
                   int8_table_predicted_vs_int8_dense=round(table8.predict(table8.dense_shape()) / pred_ms, 4),
                   int8_table_predicted_total=round(table8.references[FP32_DENSE].get(table8.statistic) / pred_ms, 4))
    elif precision == "fp32":
        row.update(fp32_table_predicted=round(LatencyTable.load(FP32_TABLE).speedup(shape), 4))
    return row


def measure(args, files: dict, rows: list, vocab: int):
    """Every model timed in one interleaved run; measured speedups and the int8 table's errors into ``rows``."""
    from ziplm_deploy.runtime import get_backend
    from ziplm_deploy.runtime.measure import time_models
    from ziplm_deploy.runtime.timing import Protocol

    log(f"timing {len(files)} models interleaved (load {load_average()})")
    load_before = load_average()
    stats = time_models(get_backend("ort-cpu", threads=1), {k: str(v) for k, v in files.items()},
                        {"batch": 1, "seq": 128, "past": 0, "total": 128}, vocab=vocab,
                        protocol=Protocol(warmup=3, rounds=args.rounds))
    base, base8 = stats["dense/fp32"].p25, stats["dense/int8"].p25
    for row in rows:
        ms = stats[row["model"]].p25
        row.update(measured_ms=round(ms, 3), measured_total=round(base / ms, 4))
        if row["precision"] == "int8":
            row["measured_vs_int8_dense"] = round(base8 / ms, 4)
            row["int8_table_error"] = round(row["int8_table_predicted_vs_int8_dense"] / row["measured_vs_int8_dense"] - 1, 4)
            row["int8_table_total_error"] = round(row["int8_table_predicted_total"] / row["measured_total"] - 1, 4)
    return load_before, stats


def markdown(result) -> str:
    s = result["settings"]
    lines = [f"SmolLM2-135M, one-shot, {s['runtime']}, B1 S128, p25 of {s['rounds']} interleaved rounds, "
             f"{result['machine']}, {result['date']}; {s['quality']}", "",
             "| model | precision | latency | speedup vs fp32 dense | perplexity | ONNX size | int8 table predicted (vs int8 dense / total) | measured vs int8 dense | prediction error |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(result["rows"], key=lambda r: r["measured_total"]):
        pred = meas = err = "–"
        if r["precision"] == "int8":
            pred = f"{r['int8_table_predicted_vs_int8_dense']:.2f}x / {r['int8_table_predicted_total']:.2f}x"
            meas = f"{r['measured_vs_int8_dense']:.2f}x"
            err = f"{r['int8_table_error']:+.1%} / {r['int8_table_total_error']:+.1%}"
        lines.append(f"| {r['point']} | {r['precision']} | {r['measured_ms']:.1f} ms | {r['measured_total']:.2f}x | "
                     f"{r['perplexity']:,.1f} | {r['onnx_mb']:.0f} MB | {pred} | {meas} | {err} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
