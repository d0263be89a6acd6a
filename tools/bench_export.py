"""Benchmark: latency of our exported dense SmolLM2-135M vs plain exports of the same model, same process.

* ours: ``ziplm_deploy.export.export_onnx`` (dynamo, opset 18, onnxscript optimiser, validated);
* plain dynamo: ``torch.onnx.export(model, (ids,), dynamo=True)`` with its defaults and dynamic axes;
* legacy: ``torch.onnx.export(..., dynamo=False)`` (TorchScript exporter, deprecated);
* transformers_exporters: transformers' own ONNX exporter,
  ``transformers.exporters.OnnxExporter().export(model, inputs, OnnxConfig(dynamic=True))`` then
  ``.save_pretrained(dir)`` (``model.onnx`` + ``model.onnx.data``). ``dynamic=True`` as in its docstring
  example (every input axis ``Dim.AUTO``); every other option at its default: opset = onnxscript's latest,
  onnxscript optimiser on, no ORT fusions, no quantizer. If it fails, its row says why and the rest still runs.

Each graph is checked against PyTorch's logits on the timed inputs (max abs error and the project's parity
rule, atol 1e-4 + rtol 1e-3 * max|logits|), then all are timed interleaved in ONNX Runtime CPU (1 thread,
B1 S128, p25). Writes tools/results/export_latency.{json,md}.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DIMS = {"batch": 1, "seq": 128}
VOCAB = 49152
ATOL, RTOL = 1e-4, 1e-3  # export_onnx's atol, the rtol this script gives it


def one_line(e: BaseException) -> str:
    """``Type: first line of the message`` (the last exception of a chain, where the cause usually is)."""
    while e.__cause__ is not None:
        e = e.__cause__
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:200]}" if msg else type(e).__name__


def export_transformers(model, ids, mask, out_dir: Path) -> tuple[Path, dict]:
    """transformers' own ONNX exporter with the options a user gets from its docs; returns (model.onnx, record)."""
    import onnx
    import transformers
    from transformers.exporters import OnnxConfig, OnnxExporter

    config = OnnxConfig(dynamic=True)  # the docstring example; opset, optimize, ort_fusions left at their defaults
    # Forward kwargs; ``use_cache`` is an output flag the exporter pops (no KV outputs: logits only, like the others).
    exported = OnnxExporter().export(model, {"input_ids": ids, "attention_mask": mask, "use_cache": False}, config)
    exported.save_pretrained(out_dir)
    path = out_dir / "model.onnx"
    proto = onnx.load(str(path), load_external_data=False)
    meta = exported.components["model"].metadata
    record = {
        "call": "transformers.exporters.OnnxExporter().export(model, {input_ids, attention_mask, use_cache=False}, "
                "OnnxConfig(dynamic=True)).save_pretrained(dir)",
        "transformers_version": transformers.__version__,
        "export_config": meta.export_config,
        "packages": meta.packages,
        "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
        "inputs": [i.name for i in proto.graph.input],
        "outputs": [o.name for o in proto.graph.output],
        "files": sorted(f.name for f in out_dir.glob("model.onnx*")),
    }
    return path, record


def main() -> None:
    import torch

    from ziplm_deploy.core.parity import output_diff
    from ziplm_deploy.export import export_onnx
    from ziplm_deploy.models import load_model
    from ziplm_deploy.models.assets import smollm2_dir
    from ziplm_deploy.runtime import get_backend
    from ziplm_deploy.runtime.feeds import synthetic_feeds
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
    failed: dict[str, str] = {}
    details: dict[str, dict] = {}
    t = time.perf_counter()
    try:
        files["transformers_exporters"], details["transformers_exporters"] = export_transformers(
            model, ids, mask, work / "transformers_exporters")
    except Exception as e:  # a failing third-party exporter is a result, not a crash
        traceback.print_exc()
        failed["transformers_exporters"] = one_line(e)
    seconds["transformers_exporters"] = time.perf_counter() - t

    # Parity on the inputs that get timed: each graph's logits vs PyTorch's, in the timing session's setup.
    backend = get_backend("ort-cpu", threads=1)
    protocol = Protocol(warmup=3, rounds=20)
    errors = {}
    refs: dict[bytes, object] = {}
    for name in list(files):
        try:
            session = backend.load(files[name])
            try:
                feeds = synthetic_feeds(session.inputs, DIMS, VOCAB, seed=protocol.seed)
                got = session.run(feeds)
            finally:
                session.close()
            logits = got["logits"] if "logits" in got else next(iter(got.values()))
            key = feeds["input_ids"].tobytes() + feeds["attention_mask"].tobytes()
            if key not in refs:
                with torch.no_grad():
                    refs[key] = model(input_ids=torch.from_numpy(feeds["input_ids"]).long(),
                                      attention_mask=torch.from_numpy(feeds["attention_mask"]).long(),
                                      use_cache=False).logits.float().numpy()
            errors[name] = output_diff(name, "logits", logits, refs[key], ATOL, RTOL)
        except Exception as e:
            traceback.print_exc()
            failed[name] = f"ORT run failed: {one_line(e)}"
            del files[name]
    stats = time_models(backend, files, DIMS, vocab=VOCAB, protocol=protocol)
    rows = []
    for k in ("ours", "plain_dynamo", "legacy", "transformers_exporters"):
        row = {"exporter": k}
        if k in failed:
            row.update(status=f"failed: {failed[k]}", latency_ms=None, p50_ms=None)
        else:
            d = errors[k]
            row.update(status="ok", latency_ms=stats[k].p25, p50_ms=stats[k].p50, max_abs_err=d.max_abs,
                       parity_ok=d.ok, parity_tolerance=d.tolerance)
        row["export_seconds"] = round(seconds[k], 1)
        if k in details:
            row["exporter_details"] = details[k]
        rows.append(row)
    result = {"benchmark": "export_latency", "date": time.strftime("%Y-%m-%d"), "machine": f"{cpu_name()}, {os.cpu_count()} cpus",
              "model": "SmolLM2-135M dense",
              "runtime": f"onnxruntime CPU, 1 thread, opt level all, B1 S128, p25, {protocol.rounds} rounds",
              "protocol": protocol.to_json(),
              "parity": f"logits vs PyTorch on the timed inputs; ok when max|err| <= {ATOL} + {RTOL} * max|logits|",
              "rows": rows}
    out = ROOT / "tools" / "results" / "export_latency.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    md = ["| exporter | ORT latency p25 (ms) | export time (s) | max abs err vs PyTorch |", "|---|---|---|---|"]
    md += [f"| {r['exporter']} | {r['status']} | {r['export_seconds']} | - |" if r["latency_ms"] is None else
           f"| {r['exporter']} | {r['latency_ms']:.1f} | {r['export_seconds']} | "
           f"{r['max_abs_err']:.1e}{'' if r['parity_ok'] else ' (over tolerance)'} |" for r in rows]
    out.with_suffix(".md").write_text(f"{result['model']}, {result['runtime']}, {result['machine']}, {result['date']}\n\n"
                                      + "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
