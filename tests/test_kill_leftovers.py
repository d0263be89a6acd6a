"""A run killed with SIGKILL leaves its temporaries (``TEMP_PREFIX``*) behind; the next run sweeps them
and completes: `prune` killed while a member is being saved, the pipeline killed during its export.

Each case is tested twice: deterministically (a stale temporary planted before the run) and with a real
SIGKILL, which skips only when the kill never lands inside the window."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from test_artifacts_strict import tiny_inputs
from ziplm_deploy.core.checks import TEMP_PREFIX

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("1.1", "1.2", "1.3", "1.4")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return tiny_inputs(tmp_path_factory.mktemp("kill"))


def _prune_args(tiny, out: Path) -> list[str]:
    return ["prune", "--model", str(tiny["model"]), "--table", str(tiny["table"]), "--calib", str(tiny["calib"]),
            "--method", "magnitude", "--targets", *TARGETS, "--seq-len", "16", "--windows", "4", "--no-eval",
            "--out", str(out), "--no-progress"]


def _temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX)) if folder.is_dir() else []


def _kill_when(cmd: list[str], folder: Path, caught, timeout: float = 300) -> Path | None:
    """Start ``cmd``, poll ``folder`` until ``caught(entry)`` holds for one of its entries, SIGKILL the
    process there; the entry, or None when the process ended first (window missed)."""
    proc = subprocess.Popen([sys.executable, "-m", "ziplm_deploy", *cmd], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                hits = [e for e in os.scandir(folder) if caught(e)]
            except FileNotFoundError:
                hits = []
            if hits:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return Path(hits[0].path)
            time.sleep(0.0005)
        return None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _assert_complete_family(out: Path) -> None:
    from ziplm_deploy import load_model
    from ziplm_deploy.core.manifest import MANIFEST_FILE, ModelManifest
    from ziplm_deploy.prune.family import FamilyReport

    family = FamilyReport.load(out / "family-magnitude.json")
    assert [f"{m.target:g}" for m in family.members] == list(TARGETS) and all(m.reachable for m in family.members)
    for m in family.members:
        assert ModelManifest.load(Path(m.path) / MANIFEST_FILE).shape == m.shape
    load_model(family.members[-1].path)
    assert _temporaries(out) == []
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # nothing hidden left at all


def _plant_stale_member(out: Path, like: Path) -> Path:
    """A complete-looking (loadable) model directory under a temporary's name, as a kill just before
    the final rename leaves it, and a half-written JSON temporary."""
    stale = out / f"{TEMP_PREFIX}magnitude-1.2x.k1ll3d"
    shutil.copytree(like, stale)
    (out / f"{TEMP_PREFIX}family-magnitude.json.x.tmp").write_text('{"format": ')
    return stale


def test_prune_sweeps_a_stale_member_temporary_and_completes(tiny, tmp_path, capsys):
    from ziplm_deploy import load_model
    from ziplm_deploy.cli import main

    out = tmp_path / "run"
    out.mkdir()
    stale = _plant_stale_member(out, tiny["model"])
    load_model(stale)  # the leftover would load: it must not survive
    assert main(_prune_args(tiny, out)) == 0
    assert f"removed the temporary {stale}" in capsys.readouterr().out
    _assert_complete_family(out)


def test_prune_killed_while_saving_a_member_resumes_without_leftovers(tiny, tmp_path, capsys):
    from ziplm_deploy.cli import main

    out = tmp_path / "run"
    for _ in range(3):  # the save of a tiny member is short: a few tries to land inside it
        shutil.rmtree(out, ignore_errors=True)
        caught = _kill_when(_prune_args(tiny, out), out, lambda e: e.name.startswith(TEMP_PREFIX) and e.is_dir())
        if caught is not None and caught.exists():
            break
    else:
        pytest.skip("the SIGKILL never landed while a member was being saved")
    assert caught.name.startswith(f"{TEMP_PREFIX}magnitude-") and caught.is_dir()
    assert main(_prune_args(tiny, out)) == 0
    assert not caught.exists()
    _assert_complete_family(out)


def _pipeline(tiny, tmp_path: Path) -> Path:
    spec = {"model": str(tiny["model"]), "profile": {"table": str(tiny["table"])},
            "prune": {"method": "magnitude", "targets": [1.2], "windows": 4, "seq_len": 16, "calib": str(tiny["calib"])},
            "export": {}, "verify": None, "report": False}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _assert_complete_run(run: Path) -> None:
    state = json.loads((run / "state.json").read_text())
    exported = state["stages"]["export"]["result"]
    assert set(exported) == {"dense", "magnitude-1.2x"} and all(Path(p).is_file() for p in exported.values())
    for folder in (run, run / "onnx", run / "prune"):
        assert _temporaries(folder) == [], folder


def test_pipeline_killed_during_export_resumes_without_leftovers(tiny, tmp_path, capsys):
    """One real SIGKILL during the export, then stale temporaries planted in the other stage folders the
    run sweeps; the re-run removes them all and completes. Skips at the end only if the kill missed."""
    from ziplm_deploy.cli import main

    run = tmp_path / "run"
    cmd = ["run", str(_pipeline(tiny, tmp_path)), "--out", str(run), "--no-progress"]
    caught = _kill_when(cmd, run / "onnx", lambda e: e.name.startswith(".") and e.is_dir())
    killed_in_export = caught is not None and caught.exists()
    if killed_in_export:
        assert caught.name.startswith(TEMP_PREFIX), f"export/onnx.py names its temporary folder {caught.name}"
    else:  # the window was missed: plant what the kill would have left
        caught = run / "onnx" / f"{TEMP_PREFIX}magnitude-1.2x-0123.abc"
        caught.mkdir(parents=True)
    (run / "prune").mkdir(exist_ok=True)
    stale = [caught, _plant_stale_member(run / "prune", tiny["model"]), run / f"{TEMP_PREFIX}state.json.y.tmp"]
    stale[-1].write_text("{")
    capsys.readouterr()
    assert main(cmd) == 0
    out = capsys.readouterr().out
    assert all(f"removed the temporary {p}" in out and not p.exists() for p in stale), out
    _assert_complete_run(run)
    if not killed_in_export:
        pytest.skip("the SIGKILL never landed during the export (the planted temporaries were swept)")


def test_training_sweeps_half_written_checkpoints_of_a_killed_run(tmp_path):
    import copy

    import torch

    from families import tiny_model
    from ziplm_deploy.distill.losses import LossWeights
    from ziplm_deploy.distill.trainer import CHECKPOINTS, TrainConfig, latest_checkpoint, train
    from ziplm_deploy.models import LayerPlan, shrink

    teacher = tiny_model("llama", layers=2)
    student = shrink(copy.deepcopy(teacher), [LayerPlan(heads=(0, 1, 2, 3)), LayerPlan(ffn=tuple(range(0, 80, 2)))])
    folder = tmp_path / "work" / CHECKPOINTS
    stale = [folder / f"{TEMP_PREFIX}step-00000001", folder / f"{TEMP_PREFIX}step-00000007"]  # other steps too
    for d in stale:
        (d / "pytorch_model").mkdir(parents=True)
    windows = torch.randint(1, 120, (4, 8), generator=torch.Generator().manual_seed(0))
    config = TrainConfig(steps=2, lr=1e-3, batch_size=2, warmup=0, save_every=2, seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(student, windows, tmp_path / "work", config, LossWeights(kd=1.0, hidden=0.0, task=0.0), teacher=teacher,
              progress=False, log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    assert latest_checkpoint(tmp_path / "work").name == "step-00000002"
    assert not any(d.exists() for d in stale) and _temporaries(folder) == []
