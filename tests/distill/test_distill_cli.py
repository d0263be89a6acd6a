"""distill / gradual commands end to end on tiny Llamas that use SmolLM2's tokenizer, and their input errors."""

from __future__ import annotations

import copy
import json

import pytest

from families import tiny_llama_for
from test_gradual import linear_table
from ziplm_deploy import load_model
from ziplm_deploy.cli import main
from ziplm_deploy.models import LayerPlan, adapter_for, save_model, shrink
from ziplm_deploy.models.assets import smollm2_dir
from ziplm_deploy.models.tokenizer import load_tokenizer

TEXT = ("The river flows past the old mill and the village square. Farmers bring grain to the market every week, "
        "and the miller grinds it into flour for the bakers of the town. ")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill-cli")
    tokenizer = load_tokenizer(smollm2_dir())
    teacher = tiny_llama_for(tokenizer, layers=3)
    save_model(teacher, root / "teacher", tokenizer=tokenizer)
    student = shrink(copy.deepcopy(teacher), [LayerPlan(ffn=tuple(range(32))), LayerPlan(dropped=True), LayerPlan()])
    save_model(student, root / "student", tokenizer=tokenizer)
    data = root / "text.txt"
    data.write_text("\n\n".join(TEXT * (i % 3 + 1) for i in range(12)))
    return root, data


def _fails(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_distill_then_resume_and_errors(dirs, capsys, tmp_path):
    root, data = dirs
    out = tmp_path / "run"
    argv = ["distill", "--student", str(root / "student"), "--teacher", str(root / "teacher"), "--data", str(data),
            "--out", str(out), "--steps", "4", "--save-every", "2", "--seq-len", "16", "--batch-size", "2",
            "--eval-windows", "3", "--lr", "1e-3", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "held-out perplexity" in printed and "saved" in printed
    model = load_model(out / "model")
    assert adapter_for(model).shape_of(model).kept_layers == [0, 2]
    manifest = json.loads((out / "model" / "manifest.json").read_text())
    assert manifest["method"] == "distill" and manifest["metrics"]["steps"] == 4
    assert manifest["options"]["weights"]["kd"] == 1.0 and manifest["metrics"]["heldout_ppl_after"] > 1
    _fails(capsys, argv, "already has training checkpoints")
    assert main(argv + ["--resume"]) == 0  # the run is complete: resuming just re-saves it
    assert "resumed from" in capsys.readouterr().out
    _fails(capsys, argv[:3] + argv[5:] + ["--kd-weight", "1"], "need --teacher")
    _fails(capsys, ["distill", "--student", str(tmp_path / "none"), "--data", str(data), "--out", str(tmp_path / "x")],
           "model directory not found")
    _fails(capsys, argv[:6] + [str(tmp_path / "missing.txt"), "--out", str(tmp_path / "y")], "not found")
    _fails(capsys, argv[:8] + [str(tmp_path / "z"), "--steps", "0"], "--steps: must be >= 1, got 0")


def test_layerchop_pretraining_without_teacher(dirs, capsys, tmp_path):
    root, data = dirs
    assert main(["distill", "--student", str(root / "student"), "--data", str(data), "--out", str(tmp_path / "lm"),
                 "--steps", "3", "--seq-len", "16", "--eval-windows", "2", "--save-every", "0", "--no-progress"]) == 0
    manifest = json.loads((tmp_path / "lm" / "model" / "manifest.json").read_text())
    assert manifest["method"] == "pretrain" and manifest["options"]["weights"]["task"] == 1.0


def test_gradual_command(dirs, capsys, tmp_path):
    root, data = dirs
    table = linear_table(load_model(root / "teacher"))
    table_path = tmp_path / "table.json"
    table.save(table_path)
    argv = ["gradual", "--model", str(root / "teacher"), "--table", str(table_path), "--calib", str(data),
            "--targets", "1.3", "1.8", "--out", str(tmp_path / "g"), "--windows", "4", "--seq-len", "16",
            "--steps", "2", "--save-every", "0", "--eval-windows", "2", "--ffn-step", "8", "--no-progress"]
    assert main(argv) == 0
    family = json.loads((tmp_path / "g" / "family-ziplm-gradual.json").read_text())
    assert [s["reachable"] for s in family["stages"]] == [True, True]
    for s in family["stages"]:
        assert s["predicted_speedup"] >= s["target"] - 1e-9 and load_model(s["path"]) is not None
    capsys.readouterr()
    _fails(capsys, argv[:8] + ["2", "1.5"] + argv[10:], "ascending")


@pytest.mark.slow
def test_two_process_data_parallel_matches_one_process(dirs, tmp_path):
    """torchrun with 2 CPU processes (gloo DDP): each takes half of the same global batches, rank 0 alone
    writes; the step losses equal a 1-process run with twice the batch (up to the per-batch normaliser
    of the hidden-state loss), and a resumed 2-process run ends where the uninterrupted one did."""
    import os
    import shutil
    import subprocess
    import sys

    root, data = dirs
    common = ["--student", str(root / "student"), "--teacher", str(root / "teacher"), "--data", str(data),
              "--steps", "4", "--seq-len", "16", "--grad-accum", "2", "--save-every", "2", "--eval-windows", "2",
              "--no-progress", "--cpu", "--lr", "1e-3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "ziplm_deploy", "distill"]
    ddp = subprocess.run(launch + common + ["--batch-size", "2", "--out", str(tmp_path / "ddp")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("saved") == 1  # rank 0 only
    assert main(["distill", *common, "--batch-size", "4", "--out", str(tmp_path / "one")]) == 0
    two = json.loads((tmp_path / "ddp" / "train.json").read_text())
    one = json.loads((tmp_path / "one" / "train.json").read_text())
    assert [h["kd"] for h in two["history"]] == pytest.approx([h["kd"] for h in one["history"]], rel=1e-2)
    shutil.rmtree(tmp_path / "ddp" / "checkpoints" / "step-00000004")
    again = subprocess.run(launch + common + ["--batch-size", "2", "--out", str(tmp_path / "ddp"), "--resume"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "resumed from" in again.stdout, again.stderr[-3000:]
    resumed = json.loads((tmp_path / "ddp" / "train.json").read_text())
    assert resumed["evals"][-1]["ppl"] == pytest.approx(two["evals"][-1]["ppl"], rel=1e-6)
