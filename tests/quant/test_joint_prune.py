"""Pruning on top of quantization: ``prune --table INT8_TABLE`` searches the joint space. Targets are total
speedups over the fp32 dense model (timed in the int8 table's own run); a target that quantization alone
meets is the dense model, quantized; members record the precision they were searched for, and ``export``
and ``verify`` deploy them in it (``--precision fp32`` still gives the fp32 graph)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

ROOT = Path(__file__).resolve().parents[2]
TEXT = "\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog near the river bank, "
                   f"while {i} small birds sing in the old oak tree." for i in range(24))
FAST = ["--rounds", "8", "--warmup", "2", "--seq", "64", "--ffn-step", "128", "--no-progress"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ziplm_deploy", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


@pytest.fixture(scope="module")
def joint(tmp_path_factory) -> dict:
    """A tiny Llama with SmolLM2's tokenizer, its int8 table, and a ziplm family searched on that table."""
    import torch
    from families import word_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    from ziplm_deploy.core.table import LatencyTable
    from ziplm_deploy.models import save_model

    root = tmp_path_factory.mktemp("joint")
    tokenizer = word_tokenizer(TEXT.replace(",", " ").replace(".", " ").split(), 512)
    # blocks wide enough that int8 MatMuls beat fp32 (on a hidden-32 toy they do not) and a small vocabulary,
    # so that the blocks, not the LM head, dominate the timings
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, num_hidden_layers=3,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                         intermediate_size=1024, max_position_embeddings=128, tie_word_embeddings=True,
                                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    save_model(model.eval(), root / "dense", tokenizer=tokenizer)
    (root / "text.txt").write_text(TEXT)
    r = cli("profile", "--model", root / "dense", "--precision", "int8-dynamic", "--out", root / "int8.json", *FAST)
    assert r.returncode == 0, r.stderr
    table = LatencyTable.load(root / "int8.json")
    quant_only = table.speedup_baseline_ms() / table.predict(table.dense_shape())
    targets = (1.0, round(max(1.0, quant_only) * 1.05, 3))  # one met by quantization alone (int8 faster), one not
    r = cli("prune", "--model", root / "dense", "--table", root / "int8.json", "--calib", root / "text.txt",
            "--targets", *targets, "--windows", "4", "--seq-len", "16", "--cost", "obs", "--out", root / "run",
            "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "int8-dynamic table: targets are total speedups over the fp32 dense model" in r.stdout
    return {"root": root, "table": table, "quant_only": quant_only, "targets": targets, "stdout": r.stdout,
            "family": json.loads((root / "run" / "family-ziplm.json").read_text())}


def test_targets_are_total_speedups_over_the_fp32_dense_model(joint):
    table, family = joint["table"], joint["family"]
    assert family["precision"] == "int8-dynamic"
    assert family["baseline_ms"] == pytest.approx(table.speedup_baseline_ms(), rel=1e-4)
    assert family["dense_predicted_ms"] == pytest.approx(table.predict(table.dense_shape()), rel=1e-4)
    for target, member in zip(joint["targets"], family["members"]):
        assert member["target"] == target and member["reachable"], member
        assert member["predicted_speedup"] == pytest.approx(family["baseline_ms"] / member["predicted_ms"], rel=1e-3)
        assert member["predicted_speedup"] >= target * (1 - 1e-6)
        pruned = any(layer.get("heads", 0) < 4 or layer.get("ffn", 0) < 1024 or layer.get("dropped")
                     for layer in member["shape"]["layers"])
        # quantization alone meets a target at or below the int8 dense model's speedup: nothing is pruned
        assert pruned == (target > joint["quant_only"] * (1 + 1e-9)), (target, joint["quant_only"], member["shape"])
    manifest = json.loads((Path(family["members"][1]["path"]) / "manifest.json").read_text())
    assert manifest["fingerprint"]["precision"] == "int8-dynamic"
    assert manifest["metrics"]["baseline_ms"] == pytest.approx(family["baseline_ms"])


def test_the_family_file_round_trips_and_refuses_a_bad_precision(joint, tmp_path):
    from ziplm_deploy.core.errors import UserError
    from ziplm_deploy.prune.family import FamilyReport

    family = joint["family"]
    loaded = FamilyReport.from_json(family, "family")
    assert loaded.precision == "int8-dynamic" and loaded.baseline_ms == family["baseline_ms"]
    with pytest.raises(UserError, match="precision is 'int4'"):
        FamilyReport.from_json({**family, "precision": "int4"}, "family")
    old = {k: v for k, v in family.items() if k not in ("precision", "baseline_ms")}  # written before joint search
    assert FamilyReport.from_json(old, "family").precision == "fp32"


def test_export_deploys_a_member_in_the_precision_it_was_searched_for(joint):
    member = Path(joint["family"]["members"][1]["path"])
    out = joint["root"] / "member.onnx"
    r = cli("export", "--model", member, "--out", out, "--min-top1", "0")
    assert r.returncode == 0, r.stderr
    assert "was pruned on a int8-dynamic latency table (manifest.json): exporting it int8-dynamic" in r.stdout
    meta = {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}
    assert meta["ziplm_precision"] == "int8-dynamic"
    r = cli("export", "--model", member, "--out", joint["root"] / "member-fp32.onnx", "--precision", "fp32")
    assert r.returncode == 0, r.stderr
    meta = {p.key: p.value for p in onnx.load(str(joint["root"] / "member-fp32.onnx"),
                                              load_external_data=False).metadata_props}
    assert meta.get("ziplm_precision", "fp32") == "fp32"


def test_verify_times_the_member_int8_against_the_fp32_dense_model(joint, tmp_path):
    root, member = joint["root"], Path(joint["family"]["members"][1]["path"])
    r = cli("verify", "--baseline", root / "dense", "--candidate", member, "--table", root / "int8.json",
            "--rounds", "5", "--warmup", "1", "--seq", "16", "--report", tmp_path / "v.json",
            "--eval-data", root / "text.txt", "--eval-windows", "2", "--eval-seq", "32")
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["candidate"]["precision"] == "int8-dynamic", r.stderr
    # quality of the member as deployed (its int8 graph in ONNX Runtime), not of its fp32 directory in PyTorch
    quality = report["quality"]
    assert quality["source"] == "onnxruntime", quality
    assert quality["precision"] == {"baseline": "fp32", "candidate": "int8-dynamic"}
    assert report["baseline"]["precision"] == "fp32"
    sp = report["speedup"]
    assert sp["predicted_baseline_ms"] == pytest.approx(joint["table"].speedup_baseline_ms(), rel=1e-4)
    assert sp["predicted"] == pytest.approx(joint["family"]["members"][1]["predicted_speedup"], rel=1e-3)


def test_a_bad_member_manifest_stops_export_before_work(joint, tmp_path, one_line_error):
    import shutil

    member = tmp_path / "member"
    shutil.copytree(joint["family"]["members"][1]["path"], member)
    manifest = json.loads((member / "manifest.json").read_text())
    manifest["fingerprint"]["precision"] = "int3"
    (member / "manifest.json").write_text(json.dumps(manifest))
    r = cli("export", "--model", member, "--out", tmp_path / "m.onnx")
    one_line_error(r, "int3")
    assert not (tmp_path / "m.onnx").exists()
