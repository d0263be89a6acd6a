"""Benchmark: latency of our exported dense SmolLM2-135M vs plain exports of the same model, same process.

* ours: ``ziplm_deploy.export.export_onnx`` (dynamo, opset 18, onnxscript optimiser, validated);
* plain dynamo: ``torch.onnx.export(model, (ids,), dynamo=True)`` with its defaults and dynamic axes;
* legacy: ``torch.onnx.export(..., dynamo=False)`` (TorchScript exporter, deprecated).

All three timed interleaved in ONNX Runtime CPU (1 thread, B1 S128, p25). Writes
tools/results/export_latency.{json,md}.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    import torch

    from ziplm_deploy.export import export_onnx
    from ziplm_deploy.models import load_model
    from ziplm_deploy.models.assets import smollm2_dir
    from ziplm_deploy.runtime import get_backend
    from ziplm_deploy.runtime.fingerprint import cpu_name
    from ziplm_deploy.runtime.measure import time_models
    from ziplm_deploy.runtime.timing import Protocol

    work = Path(tempfile.mkdtemp(prefix="bench_export."))
    model = load_model(smollm2_dir())
    model.config.use_cache = False

    class LogitsOnly(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    ids = torch.randint(0, 49152, (2, 16))
    mask = torch.ones_like(ids)
    seconds = {}
    t = time.perf_counter()
    export_onnx(model, work / "ours.onnx", rtol=1e-3)
    seconds["ours"] = time.perf_counter() - t
    from torch.export import Dim

    b, s = Dim("batch"), Dim("sequence")
    t = time.perf_counter()
    torch.onnx.export(LogitsOnly(model), (ids, mask), str(work / "plain_dynamo.onnx"), dynamo=True,
                      input_names=["input_ids", "attention_mask"], output_names=["logits"],
                      dynamic_shapes={"input_ids": {0: b, 1: s}, "attention_mask": {0: b, 1: s}}, external_data=False)
    seconds["plain_dynamo"] = time.perf_counter() - t
    t = time.perf_counter()
    torch.onnx.export(LogitsOnly(model), (ids, mask), str(work / "legacy.onnx"), dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask"], output_names=["logits"],
                      dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}})
    seconds["legacy"] = time.perf_counter() - t
    files = {name: work / f"{name}.onnx" for name in ("ours", "plain_dynamo", "legacy")}
    stats = time_models(get_backend("ort-cpu", threads=1), files, {"batch": 1, "seq": 128}, vocab=49152,
                        protocol=Protocol(warmup=3, rounds=20))
    result = {"benchmark": "export_latency", "date": time.strftime("%Y-%m-%d"), "machine": f"{cpu_name()}, {os.cpu_count()} cpus",
              "model": "SmolLM2-135M dense", "runtime": "onnxruntime CPU, 1 thread, opt level all, B1 S128, p25, 20 rounds",
              "rows": [{"exporter": k, "latency_ms": stats[k].p25, "p50_ms": stats[k].p50,
                        "export_seconds": round(seconds[k], 1)} for k in files]}
    out = ROOT / "tools" / "results" / "export_latency.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    md = ["| exporter | ORT latency p25 (ms) | export time (s) |", "|---|---|---|"]
    md += [f"| {r['exporter']} | {r['latency_ms']:.1f} | {r['export_seconds']} |" for r in result["rows"]]
    out.with_suffix(".md").write_text(f"{result['model']}, {result['runtime']}, {result['machine']}, {result['date']}\n\n"
                                      + "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
