"""int8 GenAI folders (``export --genai --precision int8-dynamic``, and members pruned on an int8 table by
default): model.onnx is the quantized graph, GenAI generates exactly what that graph's own greedy loop in ONNX
Runtime generates, the folder is validated against fp32 PyTorch by teacher-forced top-1 agreement (a failure
leaves nothing behind), the manifest records the precision (old folders without it read as fp32), and
``verify --workload`` times an int8 member int8 and says so.

Three exports of tiny Llama members (torch.onnx's export is most of this file's time): a 1-layer one in fp32
through the CLI (``--precision fp32`` overriding the member's int8) and again by its failing int8 export, and a
2-layer one int8 by ``verify --workload`` into its cache."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from families import tiny_llama_for, word_tokenizer
from ziplm_deploy.cli import main
from ziplm_deploy.core.checks import TEMP_PREFIX
from ziplm_deploy.core.errors import UserError
from ziplm_deploy.core.fingerprint import DeviceFingerprint
from ziplm_deploy.core.manifest import MANIFEST_FILE, new_manifest
from ziplm_deploy.models import adapter_for, save_model
from ziplm_deploy.verify.report import VerifyReport

og = pytest.importorskip("onnxruntime_genai")
genai = pytest.importorskip("ziplm_deploy.export.genai")

WORDS = ("the capital of france is paris once upon a time there was little girl who lived in village near forest "
         "def add ( a , b ) : return + she liked to walk and sing every morning with her dog").split()
INT8 = "int8-dynamic"
WORKLOAD, G = "16x8", 8
FAST = ["--rounds", "2", "--warmup", "1", "--retries", "0"]


def _member(out: Path, layers: int, precision: str = INT8) -> Path:
    """A tiny Llama saved as a member pruned on a ``precision`` latency table (its manifest); weights scaled up
    so that greedy decoding wanders over the vocabulary."""
    tokenizer = word_tokenizer(WORDS, 96)
    model = tiny_llama_for(tokenizer, layers=layers, seed=0).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(6.0)
    fingerprint = DeviceFingerprint(
        cpu="Test CPU", cores=2, gpu=None, runtime="onnxruntime", runtime_version="0",
        provider="CPUExecutionProvider", opt_level="all", threads=1, dtype="float32", batch=1, seq=16,
        mode="prefill", kv_len=0, opset=18, platform="Linux", producer="test", precision=precision)
    manifest = new_manifest("ziplm", out.parent / "dense", adapter_for(model).shape_of(model).to_json(),
                            fingerprint=fingerprint.to_json())
    return save_model(model, out, tokenizer=tokenizer, extra_files={MANIFEST_FILE: json.dumps(manifest.to_json())})


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX)]


def _ops(folder: Path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(folder / genai.GRAPH_FILE)).graph.node)


def _manifest(folder: Path) -> dict:
    return json.loads((folder / genai.MANIFEST_FILE).read_text())


@pytest.fixture(scope="module")
def member(tmp_path_factory) -> dict[str, Path]:
    """Two int8 members (2 layers: "dir", 1 layer: "small"), the small one's fp32 GenAI folder (``--precision
    fp32``) and that folder as written before GenAI folders had a precision (the field removed)."""
    root = tmp_path_factory.mktemp("genai_int8")
    small = _member(root / "small", layers=1)
    assert main(["export", "--model", str(small), "--genai", str(root / "fp32"), "--precision", "fp32"]) == 0
    old = root / "old-fp32"
    shutil.copytree(root / "fp32", old)
    manifest = _manifest(old)
    assert manifest.pop("precision") == "fp32"
    (old / genai.MANIFEST_FILE).write_text(json.dumps(manifest))
    return {"root": root, "dir": _member(root / "member", layers=2), "small": small, "fp32": root / "fp32", "old": old}


@pytest.fixture(scope="module")
def verified(member) -> dict:
    """verify --workload of the old fp32 folder against the int8 member directory (exported int8 into the cache)."""
    root = member["root"]
    rc = main(["verify", "--baseline", str(member["old"]), "--candidate", str(member["dir"]), "--workload", WORKLOAD,
               "--report", str(root / "verify.json"), "--cache", str(root / "cache"), *FAST])
    [folder] = (root / "cache").glob("*-genai")
    return {"rc": rc, "report": VerifyReport.load(root / "verify.json"), "folder": folder}


def test_int8_folder_is_the_quantized_graph_and_generates_like_it_in_genai(verified, member):
    folder = verified["folder"]
    assert folder.name.endswith(f"-{INT8}-genai")  # the cache keys the precision
    ops, fp32_ops = _ops(folder), _ops(member["fp32"])
    assert ops["DynamicQuantizeLinear"] > 0 and ops["MatMulInteger"] > 0
    assert fp32_ops["DynamicQuantizeLinear"] == fp32_ops["MatMulInteger"] == 0
    meta = {p.key: p.value for p in onnx.load(str(folder / genai.GRAPH_FILE), load_external_data=False).metadata_props}
    assert meta["ziplm_precision"] == INT8
    quality = json.loads(meta["ziplm_quality"])
    assert quality["kind"] == "top1-agreement" and quality["graph"] == "genai" and quality["min_top1_agreement"] == 0.1
    # the manifest records the precision and the check for what it is
    manifest = genai.read_genai_manifest(folder)
    assert manifest["precision"] == INT8 and genai.read_genai_folder(folder).precision == INT8
    check = manifest["check"]
    assert check["kind"] == "top1-agreement" and check["graph_greedy"] == check["fp32_graph"] == "token-exact"
    assert check["top1_agreement"] == quality["top1_agreement"] and 0.5 < check["top1_agreement"] <= 1
    generated = sum(len(r) for r in check["reference_outputs"])  # fp32 greedy tokens before EOS (scored too, if any)
    assert check["top1_positions"] == quality["positions"] and generated <= check["top1_positions"] <= generated + 5
    assert len(check["greedy"]) == len(check["prompts"]) == 5
    assert all(0 <= g["prefix"] <= g["equal"] <= g["positions"] <= 16 for g in check["greedy"])
    # an independent prompt: GenAI loads the folder and generates exactly what the quantized graph generates
    prompt = [5, 9, 14, 3, 30, 31, 7]
    got = genai.genai_generate(folder, [prompt], 10)[0]
    own, _ = genai.graph_decode(genai.graph_session(folder / genai.GRAPH_FILE), prompt, 10, {2})  # EOS: id 2
    assert genai._until_eos(got, {2}) == own and len(own) > 0


def test_verify_workload_times_an_int8_member_int8(verified):
    assert verified["rc"] == 0
    r = verified["report"]
    assert r.ok and r.candidate["kind"] == "directory" and r.baseline["kind"] == "genai"
    assert r.candidate["precision"] == INT8 and r.baseline["precision"] == "fp32"  # the old folder: fp32
    assert r.workload["candidate"]["precision"] == INT8 and r.workload["baseline"]["precision"] == "fp32"
    assert r.fingerprint["precision"] == INT8 and r.workload["candidate"]["generated_tokens"] == G
    # the int8 candidate against fp32 PyTorch: agreement reported, judged by teacher-forced top-1
    parity = r.parity
    assert parity["reference"] == "pytorch" and parity["ok"] is True
    tolerance = parity["tolerance"]
    assert tolerance["kind"] == "top1-agreement" and tolerance["candidate"] == INT8
    assert tolerance["source"] == "the tolerance it was exported with" and tolerance["min_top1_agreement"] == 0.1
    [row] = parity["outputs"]
    assert row["positions"] == row["top1_positions"] == G and 0 <= row["agreement"] <= 1
    assert 0.1 <= row["top1_agreement"] <= 1 and row["ok"] is True


def test_a_failed_int8_validation_leaves_nothing_behind(member, capsys):
    """The member's own default precision (int8) and a top-1 tolerance the folder cannot meet: exit 2."""
    out = member["root"] / "failed"
    capsys.readouterr()
    assert main(["export", "--model", str(member["small"]), "--genai", str(out), "--min-top1", "1"]) == 2
    captured = capsys.readouterr()
    assert f"exporting it {INT8}" in captured.out
    err = "\n".join(line for line in captured.err.splitlines() if "it/s]" not in line).strip()  # tqdm bars
    assert "teacher-forced top-1 agreement with fp32 PyTorch is " in err and "below the least allowed 100.0%" in err
    assert "is 100.0%" not in err  # the measured agreement really is below 1 (the tolerance is impossible)
    assert len(err.splitlines()) == 1, err
    assert not out.exists() and not _leftovers(member["root"])


def test_old_folder_without_precision_reads_as_fp32_and_a_wrong_one_is_refused(member, tmp_path):
    old = genai.read_genai_manifest(member["old"])
    assert "precision" not in old and genai.manifest_precision(old) == "fp32"
    assert genai.read_genai_folder(member["old"]).precision == "fp32"
    assert genai.read_genai_manifest(member["fp32"])["precision"] == "fp32"
    for label, message in ((INT8, "does not match model.onnx's fp32"), ("int4", "unknown precision 'int4'"),
                           (8, "precision must be a precision label")):
        folder = tmp_path / f"claims-{label}"
        shutil.copytree(member["fp32"], folder)
        (folder / genai.MANIFEST_FILE).write_text(json.dumps({**_manifest(folder), "precision": label}))
        with pytest.raises(UserError, match=message):
            genai.read_genai_manifest(folder)


@pytest.mark.parametrize("extra,message", [
    (["--precision", "fp32", "--min-top1", "0.5"], "--min-top1 validates a quantized export"),
    (["--precision", "fp32", "--per-channel"], "per-channel needs a quantized precision"),
    (["--precision", INT8, "--eval-data", "wikipedia"], "--eval-data apply to a quantized --out export"),
])
def test_int8_genai_options_are_checked_before_any_work(member, tmp_path, capsys, extra, message):
    capsys.readouterr()
    assert main(["export", "--model", str(member["dir"]), "--genai", str(tmp_path / "g"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "g").exists()


def test_graph_decode_teacher_forced_matches_its_greedy_run(verified):
    """Fed its own greedy tokens, the teacher-forced loop sees the same logits (one code path for both)."""
    session = genai.graph_session(verified["folder"] / genai.GRAPH_FILE)
    prompt = [4, 5, 6, 7]
    tokens, greedy = genai.graph_decode(session, prompt, 6, set())
    forced_tokens, forced = genai.graph_decode(session, prompt, 6, set(), forced=tokens)
    assert forced_tokens == tokens and np.array_equal(forced, greedy[: len(tokens)])
