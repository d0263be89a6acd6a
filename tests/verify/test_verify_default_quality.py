"""``verify`` measures quality whenever it can: without ``--eval-data``, a pruned member is measured on held-out
windows of its calibration text (the windows of the prune run's tokenisation and length it did not draw), in
PyTorch when deployed fp32 and on its int8 graph in ONNX Runtime when deployed int8; the report and the summary
say where the figures came from, or why quality was not measured (``--no-eval``, the data gone, no window
held out), and a gate quality budget then fails closed. ``--eval-data`` still wins."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from ziplm_deploy.cli import main

WORDS = [f"t{i}" for i in range(60)]  # not the fillers (w0, w1...) of word_tokenizer
# 30 paragraphs of 12 words (+ EOS each): 390 tokens, 24 windows of 16; the prune run draws 4 of them
TEXT = "\n\n".join(" ".join(WORDS[(7 * p + k) % 60] for k in range(12)) for p in range(30))
FAST = ["--seq", "16", "--rounds", "3", "--warmup", "1", "--target", "1.0", "--tolerance", "0.9"]
SEQ, USED, SEED = 16, 4, 3


def set_manifest(member: Path, options: dict | None = None, precision: str | None = None) -> None:
    """Rewrite a member's manifest (validated on load and save): options updated, the table precision set."""
    from ziplm_deploy.core.manifest import MANIFEST_FILE, ModelManifest

    m = ModelManifest.load(member / MANIFEST_FILE)
    if options is not None:
        m = replace(m, options={**m.options, **options})
    if precision is not None:
        m = replace(m, fingerprint={**m.fingerprint, "precision": precision})
    m.save(member / MANIFEST_FILE)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    """A tiny random Llama (word tokenizer), a member pruned from it by the real prune code path (magnitude,
    4 calibration windows of 16 tokens, seed 3) on a small text file, and a shared export cache."""
    from families import linear_table, tiny_llama_for, word_tokenizer

    from ziplm_deploy.core.manifest import MANIFEST_FILE, ModelManifest
    from ziplm_deploy.core.table import LatencyTable
    from ziplm_deploy.models import save_model
    from ziplm_deploy.prune.family import PruneConfig, prune_family

    root = tmp_path_factory.mktemp("default_quality")
    tokenizer = word_tokenizer(WORDS, 96)
    save_model(tiny_llama_for(tokenizer, layers=2).eval(), root / "dense", tokenizer=tokenizer)
    linear_table(root / "dense", root / "table.json")
    (root / "calib.txt").write_text(TEXT)
    config = PruneConfig(method="magnitude", targets=(1.2,), seq_len=SEQ, windows=USED, seed=SEED, evaluate=False)
    family = prune_family(root / "dense", LatencyTable.load(root / "table.json"), root / "table.json",
                          root / "calib.txt", config, root / "run", log=lambda s: None, progress=False)
    member = Path(family.members[0].path)
    recorded = ModelManifest.load(member / MANIFEST_FILE).options.get("data")
    return {"root": root, "dense": root / "dense", "member": member, "calib": root / "calib.txt",
            "cache": root / "onnx-cache", "recorded": recorded}


def copy_member(run: dict, dst: Path, **edits) -> Path:
    """The member copied under the same folder name (the export cache is keyed by name and content)."""
    out = dst / run["member"].name
    shutil.copytree(run["member"], out)
    if edits:
        set_manifest(out, **edits)
    return out


def verify(run: dict, candidate: Path, report: Path, capsys, *extra: str) -> tuple[int, dict, str]:
    capsys.readouterr()
    code = main(["verify", "--baseline", str(run["dense"]), "--candidate", str(candidate), "--report", str(report),
                 "--cache", str(run["cache"]), *FAST, *extra])
    out = capsys.readouterr().out
    return code, json.loads(report.read_text()), out


def heldout(run: dict, max_windows: int = 8):
    from ziplm_deploy.models.tokenizer import load_tokenizer
    from ziplm_deploy.prune.data import heldout_calibration_windows

    return heldout_calibration_windows(load_tokenizer(run["member"]), run["calib"], SEQ, USED, SEED, max_windows)


def gate(tmp_path: Path, report: Path, capsys, budget: float) -> tuple[int, str]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"version": 1, "budgets": {"max_perplexity_increase": budget},
                                      "require_parity_ok": False}))
    capsys.readouterr()
    code = main(["gate", "--policy", str(policy), "--report", str(report)])
    return code, capsys.readouterr().out


def test_prune_records_its_calibration_data(run):
    assert run["recorded"] == str(run["calib"].resolve())


def test_default_quality_is_measured_on_heldout_calibration_windows(run, tmp_path, capsys):
    import torch

    from ziplm_deploy.models import load_model
    from ziplm_deploy.prune.evaluate import perplexity

    code, rep, out = verify(run, run["member"], tmp_path / "v.json", capsys, "--eval-windows", "5")
    assert code == 0 and "PASSED" in out, out
    q = rep["quality"]
    source = f"held-out calibration text {run['calib']} (5 windows of 16 tokens not used for calibration)"
    assert q["metric"] == "perplexity" and q["source"] == "eval" and q["data"] == str(run["calib"])
    assert q["data_kind"] == "heldout-calibration" and q["data_source"] == source
    assert q["windows"] == 5 and q["seq"] == SEQ and q["calibration"] == {"windows": USED, "seed": SEED}
    windows = heldout(run, 5)
    for role, model_dir in (("baseline", run["dense"]), ("candidate", run["member"])):
        with torch.no_grad():
            assert q[role] == pytest.approx(perplexity(load_model(model_dir), windows, progress=False), rel=1e-5)
    assert f"perplexity: baseline {q['baseline']:.4f}, candidate {q['candidate']:.4f}, on {source}" in out
    # the gate judges these figures: a generous budget passes, a tight one fails on them
    increase = q["candidate"] / q["baseline"] - 1
    assert gate(tmp_path, tmp_path / "v.json", capsys, abs(increase) + 1)[0] == 0
    if increase > 0:
        assert gate(tmp_path, tmp_path / "v.json", capsys, increase / 2)[0] == 1


def test_an_int8_member_is_measured_on_its_int8_graph_in_ort(run, tmp_path, capsys):
    from ziplm_deploy.verify.ort_quality import ort_perplexity

    member = copy_member(run, tmp_path, precision="int8-dynamic")
    code, rep, out = verify(run, member, tmp_path / "v.json", capsys, "--eval-windows", "3")
    assert rep["status"] == "ok" and rep["candidate"]["precision"] == "int8-dynamic", out
    q = rep["quality"]
    assert q["source"] == "onnxruntime" and q["precision"] == {"baseline": "fp32", "candidate": "int8-dynamic"}
    assert q["data_kind"] == "heldout-calibration" and q["windows"] == 3
    windows = heldout(run, 3).numpy()
    assert q["candidate"] == pytest.approx(ort_perplexity(rep["candidate"]["file"], windows), rel=1e-5)
    assert q["baseline"] == pytest.approx(ort_perplexity(rep["baseline"]["file"], windows), rel=1e-5)
    assert ", on held-out calibration text" in out


@pytest.mark.parametrize("case", ["deleted", "all-used"])
def test_no_heldout_text_leaves_quality_not_measured_and_the_gate_fails_closed(run, tmp_path, capsys, case):
    calib = tmp_path / "calib.txt"
    shutil.copy(run["calib"], calib)
    if case == "deleted":
        member = copy_member(run, tmp_path, options={"data": str(calib)})
        calib.unlink()
        why = f"quality not measured: the calibration data {calib} recorded in {member / 'manifest.json'} is gone"
    else:  # a prune run that drew every window of its text: none is held out
        member = copy_member(run, tmp_path, options={"data": str(calib), "windows": 24})
        why = f"quality not measured: calibration data {calib} gives 24 windows of 16 tokens, all 24 used"
    code, rep, out = verify(run, member, tmp_path / "v.json", capsys)
    assert code == 0 and rep["status"] == "ok" and out.strip().splitlines()[-1] == "PASSED", out  # not an error
    q = rep["quality"]
    assert q["metric"] is None and q["baseline"] is None and q["candidate"] is None
    assert q["note"].startswith(why), q["note"]
    assert q["note"] in out.splitlines()  # one line of the summary
    code, text = gate(tmp_path, tmp_path / "v.json", capsys, 10.0)
    assert code == 1 and "max_perplexity_increase" in text.strip().splitlines()[-1], text
    assert "not measured (the gate fails closed)" in text


def test_no_eval_skips_quality_and_says_so(run, tmp_path, capsys):
    code, rep, out = verify(run, run["member"], tmp_path / "v.json", capsys, "--no-eval")
    assert code == 0 and rep["quality"] == {"metric": None, "baseline": None, "candidate": None,
                                            "note": "quality not measured: --no-eval"}
    assert "quality not measured: --no-eval" in out.splitlines()
    assert gate(tmp_path, tmp_path / "v.json", capsys, 10.0)[0] == 1
    capsys.readouterr()
    assert main(["verify", "--baseline", str(run["dense"]), "--candidate", str(run["member"]), "--report",
                 str(tmp_path / "x.json"), "--no-eval", "--eval-data", str(run["calib"]), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "--no-eval and --eval-data contradict each other" in err
    assert not (tmp_path / "x.json").exists()


def test_eval_data_wins_over_the_calibration_text(run, tmp_path, capsys):
    other = tmp_path / "other.txt"
    other.write_text("\n\n".join(" ".join(reversed(WORDS[i:i + 20])) for i in range(0, 60, 5)))
    code, rep, out = verify(run, run["member"], tmp_path / "v.json", capsys, "--eval-data", str(other),
                            "--eval-seq", "16", "--eval-windows", "2")
    assert code == 0, out
    q = rep["quality"]
    assert q["data"] == str(other) and q["data_kind"] == "eval-data" and q["data_source"] == f"--eval-data {other}"
    assert f", on --eval-data {other}" in out and "calibration" not in json.dumps(q)
