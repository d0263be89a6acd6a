"""`ziplm-deploy run`: strict schema, the whole chain on a tiny model, and resume after SIGKILL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from killpoint import killed_cli
from ziplm_deploy.cli import main
from ziplm_deploy.core.errors import UserError
from ziplm_deploy.pipeline.spec import PipelineSpec

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A tiny random Llama with the real SmolLM2 tokenizer (so calibration reads real text), and a
    latency table measured for it in ONNX Runtime."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ziplm_deploy.core.arch import arch_from_dir
    from ziplm_deploy.models import save_model
    from ziplm_deploy.models.assets import smollm2_dir
    from ziplm_deploy.models.tokenizer import load_tokenizer
    from ziplm_deploy.profiling.profiler import ProfileOptions, profile
    from ziplm_deploy.runtime.timing import Protocol

    root = tmp_path_factory.mktemp("tiny_lm")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=48, num_hidden_layers=3, num_attention_heads=6,
                                         num_key_value_heads=3, head_dim=8, intermediate_size=96,
                                         max_position_embeddings=128, tie_word_embeddings=True)).eval()
    save_model(model, root / "model", tokenizer=load_tokenizer(smollm2_dir()))
    table = profile(arch_from_dir(root / "model"), ProfileOptions(seq=16, ffn_step=16,
                                                                  protocol=Protocol(warmup=1, rounds=5)), progress=False)
    table.save(root / "table.json")
    from ziplm_deploy.models.assets import wikipedia_text

    (root / "calib.txt").write_text("\n\n".join(wikipedia_text(max_articles=3)))  # real text, small
    return root


def _write(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def _spec(root: Path, **overrides) -> dict:
    # The passing gate checks parity and the device, not timing: a tiny model's milliseconds on a shared
    # 2-core machine are too noisy for a test to depend on them (timing budgets belong to benchmarks).
    policy = root / "parity-policy.yaml"
    if not policy.exists():
        policy.write_text(yaml.safe_dump({"version": 1, "name": "parity", "device": {"runtime": "onnxruntime"},
                                          "budgets": {"max_parity_abs_error": 1e-2}, "require_parity_ok": True}))
    spec = {"model": str(root / "model"), "profile": {"table": str(root / "table.json")},
            "prune": {"targets": [1.05, 1.1], "windows": 4, "seq_len": 16, "calib": str(root / "calib.txt")},
            "export": {},
            "verify": {"seq": 16, "rounds": 5}, "gate": {"policy": str(policy)}}
    spec.update(overrides)
    return spec


@pytest.mark.parametrize("bad, message", [
    ({"model": "m", "prune": {"targts": [2]}}, "unknown key 'prune.targts'"),
    ({"model": "m", "prune": {"windows": "many"}}, "'prune.windows' must be an integer"),
    ({"model": "m", "verify": {"rounds": 2.5}}, "'verify.rounds' must be an integer"),
    ({"prune": {}}, "missing required key 'model'"),
    ({"model": "m", "gate": {}}, "missing required key 'gate.policy'"),
    ({"model": "m", "prune": {"targets": [1.5, "fast"]}}, "'prune.targets[1]' must be a number"),
    ({"model": "m", "distill": {"teacher": False, "kd_weight": 1.0}}, "need distill.teacher: true"),
    ({"model": "m", "distill": {"stpes": 3}}, "unknown key 'distill.stpes'"),
    ({"model": "m", "profile": {"precision": "int4"}}, "profile.precision 'int4' is not a precision label"),
    ({"model": "m", "prune": {"attention_levels": True}}, "'prune.attention_levels' must be a string"),
    ({"model": "m", "prune": {"attention_levels": "groups"}}, "prune.attention_levels 'groups' is unknown"),
])
def test_schema_errors_name_the_bad_key(tmp_path, bad, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        PipelineSpec.load(_write(tmp_path / "p.yaml", bad))


def test_run_skips_unchanged_stages_and_gates(tiny_lm, tmp_path, capsys):
    pipeline = _write(tmp_path / "p.yaml", _spec(tiny_lm))
    assert main(["run", str(pipeline), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "gate PASSED" in out and "stages run: profile, prune, export, verify" in out
    run = tmp_path / "run"
    for name in ("ziplm-1.05x", "ziplm-1.1x"):
        rep = json.loads((run / "prune" / "verify" / f"{name}.verify.json").read_text())
        assert rep["speedup"]["measured"] > 0 and rep["parity"]["ok"]
        assert ET_parses(run / "gate" / f"{name}.xml")
    assert "data:image/svg+xml;base64," in (run / "report.html").read_text()
    # second run: nothing to redo
    assert main(["run", str(pipeline), "--out", str(run), "--no-progress"]) == 0
    assert "skipped: profile, prune, export, verify" in capsys.readouterr().out
    # a changed option reruns prune and what follows it, not profile
    pipeline = _write(tmp_path / "p.yaml", _spec(tiny_lm, prune={"targets": [1.08], "windows": 4, "seq_len": 16,
                                                                "calib": str(tiny_lm / "calib.txt")}))
    assert main(["run", str(pipeline), "--out", str(run), "--no-progress"]) == 0
    assert "stages run: prune, export, verify; skipped: profile" in capsys.readouterr().out
    # an impossible policy fails the run with exit code 1
    pipeline = _write(tmp_path / "p.yaml", _spec(tiny_lm, prune={"targets": [1.08], "windows": 4, "seq_len": 16,
                                                                "calib": str(tiny_lm / "calib.txt")},
                                                 gate={"policy": str(ROOT / "policies" / "demo-impossible.yaml")}))
    assert main(["run", str(pipeline), "--out", str(run), "--no-progress"]) == 1
    assert "gate FAILED for ziplm-1.08x" in capsys.readouterr().out


def test_an_unreachable_target_fails_its_gate_and_the_reachable_one_is_still_verified(tiny_lm, tmp_path, capsys):
    prune = {"targets": [1.05, 50], "windows": 4, "seq_len": 16, "calib": str(tiny_lm / "calib.txt")}
    pipeline = _write(tmp_path / "p.yaml", _spec(tiny_lm, prune=prune, report=False))
    run = tmp_path / "run"
    assert main(["run", str(pipeline), "--out", str(run), "--no-progress"]) == 1
    out, err = capsys.readouterr()
    assert "add a verify section" not in out + err and "Traceback" not in err
    assert "[gate] ziplm-1.05x: PASSED" in out and "gate FAILED for ziplm-50x" in out
    assert "[gate] ziplm-50x: FAILED (target 50x is unreachable with ziplm: the table predicts at most" in out
    assert (run / "prune" / "verify" / "ziplm-1.05x.verify.json").is_file()  # the reachable member was verified
    assert ET_parses(run / "gate" / "ziplm-50x.xml") and "target_reachable" in (run / "gate" / "ziplm-50x.md").read_text()
    # every target unreachable: nothing to verify, and still a gate failure (exit 1), not a spec error (exit 2)
    prune["targets"] = [50]
    pipeline = _write(tmp_path / "p.yaml", _spec(tiny_lm, prune=prune))
    assert main(["run", str(pipeline), "--out", str(tmp_path / "none"), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "gate FAILED for ziplm-50x" in out and "[report] skipped" in out


def ET_parses(path: Path) -> bool:
    import xml.etree.ElementTree as ET

    return ET.parse(path).getroot().tag in ("testsuite", "testsuites")


def test_killed_run_resumes_to_the_same_artifacts(tiny_lm, tmp_path):
    spec = _spec(tiny_lm, export=None, verify=None, gate=None, report=False)
    pipeline = _write(tmp_path / "p.yaml", spec)
    cmd = [sys.executable, "-m", "ziplm_deploy", "run", str(pipeline), "--no-progress"]
    argv = cmd[3:] + ["--out", str(tmp_path / "resumed")]
    killed = subprocess.run(killed_cli("ziplm_deploy.models:save_model", argv), capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILL right after the first model was saved
    assert (tmp_path / "resumed" / "prune" / "ziplm-1.05x" / "manifest.json").is_file()
    assert not (tmp_path / "resumed" / "prune" / "ziplm-1.1x").exists()
    resumed = subprocess.run(cmd + ["--out", str(tmp_path / "resumed")], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "reusing OBS database" in resumed.stdout and "reusing" in resumed.stdout
    clean = subprocess.run(cmd + ["--out", str(tmp_path / "clean")], capture_output=True, text=True, timeout=600)
    assert clean.returncode == 0, clean.stderr[-2000:]
    for name in ("ziplm-1.05x", "ziplm-1.1x"):
        a = (tmp_path / "resumed" / "prune" / name / "pruned-model.safetensors").read_bytes()
        b = (tmp_path / "clean" / "prune" / name / "pruned-model.safetensors").read_bytes()
        assert a == b
    fa = json.loads((tmp_path / "resumed" / "prune" / "family-ziplm.json").read_text())
    fb = json.loads((tmp_path / "clean" / "prune" / "family-ziplm.json").read_text())
    strip = lambda f: [{k: v for k, v in m.items() if k != "path"} for m in f["members"]]  # noqa: E731
    assert strip(fa) == strip(fb)


@pytest.mark.slow  # ~35 s quiet: trains every member (CI runs -m slow too)
def test_distill_stage_trains_each_member_and_later_stages_use_it(tiny_lm, tmp_path, capsys):
    distill = {"data": str(tiny_lm / "calib.txt"), "steps": 3, "batch_size": 2, "seq_len": 16, "eval_windows": 2,
               "lr": 1e-3, "save_every": 0}
    pipeline = _write(tmp_path / "p.yaml", _spec(tiny_lm, distill=distill, report=False))
    run = tmp_path / "run"
    assert main(["run", str(pipeline), "--out", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "stages run: profile, prune, distill, export, verify" in out and "gate PASSED" in out
    for name in ("ziplm-1.05x", "ziplm-1.1x"):
        manifest = json.loads((run / "distill" / name / "manifest.json").read_text())
        assert manifest["method"] == "distill" and manifest["metrics"]["steps"] == 3
        assert manifest["parent"] == str(run / "prune" / name)
        pruned = (run / "prune" / name / "pruned-model.safetensors").read_bytes()
        assert (run / "distill" / name / "pruned-model.safetensors").read_bytes() != pruned  # trained
        rep = json.loads((run / "prune" / "verify" / f"{name}.verify.json").read_text())
        assert rep["candidate"]["source"] == str(run / "distill" / name)
    assert main(["run", str(pipeline), "--out", str(run), "--no-progress"]) == 0
    assert "skipped: profile, prune, distill, export, verify" in capsys.readouterr().out
    # other training options: the earlier trained models are not reused, and export / verify follow
    pipeline = _write(tmp_path / "p.yaml", _spec(tiny_lm, distill={**distill, "steps": 4}, report=False))
    assert main(["run", str(pipeline), "--out", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "stages run: distill, export, verify" in out and "trained earlier" not in out
    assert json.loads((run / "distill" / "ziplm-1.1x" / "manifest.json").read_text())["metrics"]["steps"] == 4


def test_engine_section_is_checked_before_any_work(tiny_lm, tmp_path, capsys):
    bad = _write(tmp_path / "e.yaml", _spec(tiny_lm, engine={"precision": "fp16"}))  # verify.runtime is ort-cpu
    with pytest.raises(UserError, match="verify.runtime: trt"):
        PipelineSpec.load(bad)
    with pytest.raises(UserError, match="engine.precision 'int3'"):
        PipelineSpec.load(_write(tmp_path / "p.yaml", _spec(tiny_lm, engine={"precision": "int3"})))
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    spec = _spec(tiny_lm, engine={"precision": "fp16"}, verify={"runtime": "trt", "seq": 16, "rounds": 5})
    run = tmp_path / "run"
    assert main(["run", str(_write(tmp_path / "t.yaml", spec)), "--out", str(run), "--no-progress"]) == 2
    assert "needs the tensorrt package" in capsys.readouterr().err
    assert not run.exists()  # refused before profiling or pruning anything


def test_a_table_of_another_precision_than_profile_precision_is_refused(tiny_lm, tmp_path, capsys):
    """profile.precision int8-dynamic with an fp32 table: exit 2 naming both, nothing pruned."""
    spec = _spec(tiny_lm, profile={"table": str(tiny_lm / "table.json"), "precision": "int8-dynamic"})
    run = tmp_path / "run"
    assert main(["run", str(_write(tmp_path / "p.yaml", spec)), "--out", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "measured in precision fp32" in err and "profile.precision" in err
    assert not (run / "prune").exists()
