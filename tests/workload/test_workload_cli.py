"""``profile --workload`` and ``predict --workload-tables`` end to end on a tiny Llama config (fast options):
files written, options passed through, output fields, bad input -> one line and exit 2 before any work."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from workload_helpers import TINY_LLAMA

from ziplm_deploy.cli import main
from ziplm_deploy.core.shape import ModelShape
from ziplm_deploy.core.table import LatencyTable
from ziplm_deploy.core.workload import Workload, WorkloadTables, speedups

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--rounds", "3", "--warmup", "1", "--ffn-step", "32", "--no-progress"]


def refused(capsys, argv: list[str], *words: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for word in words:
        assert word in err, (word, err)
    return err


@pytest.fixture(scope="module")
def profiled(tmp_path_factory, tiny_model_dir) -> Path:
    out = tmp_path_factory.mktemp("wl") / "tables"
    assert main(["profile", "--model", str(tiny_model_dir), "--workload", "8x4", "--out", str(out), *FAST]) == 0
    return out / "workload.json"


def test_profile_workload_writes_the_set(profiled, capsys):
    tables = WorkloadTables.load(profiled)
    assert tables.workload == Workload(8, 4) and tables.kv_lens == (8, 9, 10)  # default: first, middle, last step
    for t in (tables.prefill, *tables.decode):  # the profile options passed through to every table
        assert t.protocol["rounds"] == 3 and t.protocol["warmup"] == 1 and t.protocol["ffn_step"] == 32
        assert [e.ffn for e in t.ffn] == [0, 32, 64] and t.fingerprint.threads == 1
    assert (tables.prefill.fingerprint.mode, tables.prefill.fingerprint.seq) == ("prefill", 8)
    # a generation's prefill yields one token: its table times the LM head on the last position, as GenAI runs it
    assert tables.prefill.fingerprint.logits == "last" and {t.fingerprint.logits for t in tables.decode} == {"all"}
    assert sorted(p.name for p in profiled.parent.iterdir()) == [
        "decode_b1_kv10.json", "decode_b1_kv8.json", "decode_b1_kv9.json", "prefill_b1_s8.json", "workload.json"]


def test_profile_workload_to_a_manifest_file_with_kv_lens(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "chatty.json"
    assert main(["profile", "--model", str(tiny_model_dir), "--workload", "6x6", "--kv-lens", "10", "4",
                 "--batch", "2", "--out", str(out), *FAST]) == 0
    text = capsys.readouterr().out
    assert "workload 6x6 (prompt 6, generate 6, batch 2): prefill table at seq 6, decode tables at KV 4, 10" in text
    assert "latency table: decode KV 10 (3/3)" in text and f"workload tables: {out} (3 tables)" in text
    tables = WorkloadTables.load(out)
    assert tables.kv_lens == (4, 10) and tables.prefill.fingerprint.batch == 2
    assert (tmp_path / "chatty_decode_b2_kv4.json").is_file()


def test_predict_workload_text_and_json(profiled, tmp_path, capsys):
    shape_path = tmp_path / "shape.json"
    shape = ModelShape.from_json({"format": "ziplm-deploy/shape", "version": 1,
                                  "layers": [{"heads": 2, "kv_heads": 1, "ffn": 40}, {"heads": 0, "ffn": 10}]})
    shape.save(shape_path)
    assert main(["predict", "--workload-tables", str(profiled), "--shape", str(shape_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("workload 8x4 (prompt 8, generate 4, batch 1)  [onnxruntime")
    assert lines[1].split() == ["predicted", "dense", "speedup"]
    assert [line.split()[0] for line in lines[2:6]] == ["TTFT", "ms/token", "tokens/s", "end-to-end"]
    assert lines[6] == "3 decode steps at KV 8..10, interpolated between decode tables at KV 8, 9, 10"

    assert main(["predict", "--workload-tables", str(profiled.parent), "--shape", str(shape_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    tables = WorkloadTables.load(profiled)
    mine, dense = tables.predict(shape), tables.predict(tables.dense_shape())
    assert out["workload"] == {"name": "8x4", "prompt": 8, "generate": 4, "batch": 1}
    assert out["decode_kv_lens"] == [8, 9, 10] and out["fingerprint"]["mode"] == "prefill"
    for key, value in mine.to_json().items():
        assert out["predicted"][key] == pytest.approx(value, abs=1e-4)
    assert out["dense"]["e2e_ms"] == pytest.approx(dense.e2e_ms, abs=1e-4)
    assert out["speedup"] == pytest.approx(speedups(mine, dense), abs=1e-4)
    # text rows carry the same numbers
    assert f"{mine.ttft_ms:.3f}" in lines[2] and f"{dense.e2e_ms:.3f}" in lines[5] and lines[3].endswith("x")


def test_predict_a_prefill_table_as_the_prefill_workload(profiled, capsys):
    assert main(["predict", "--workload-tables", str(profiled.parent / "prefill_b1_s8.json"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["workload"]["name"] == "prefill-8" and out["predicted"]["ms_per_token"] is None
    assert out["predicted"]["e2e_ms"] == out["predicted"]["ttft_ms"] and out["speedup"]["decode"] is None
    assert main(["predict", "--workload-tables", str(profiled.parent / "prefill_b1_s8.json")]) == 0
    text = capsys.readouterr().out
    assert "ms/token                   -           -         -" in text and "no decode step" in text


def test_predict_refuses_mixed_tables(profiled, tmp_path, capsys, tiny_model_dir):
    """A decode table of another model (another FFN width) and one of another thread count: exit 2, one line."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps(dict(TINY_LLAMA, intermediate_size=96)))
    foreign = tmp_path / "foreign_kv9.json"
    assert main(["profile", "--model", str(other), "--decode-kv-len", "9", "--out", str(foreign), *FAST]) == 0
    threads2 = tmp_path / "threads2_kv9.json"
    payload = json.loads((profiled.parent / "decode_b1_kv9.json").read_text())
    payload["fingerprint"]["threads"] = 2
    threads2.write_text(json.dumps(payload))
    capsys.readouterr()
    for table, words in ((foreign, "arch ffn: 64 != 96"), (threads2, "threads: 1 != 2")):
        manifest = json.loads(profiled.read_text())
        for entry in manifest["prefill"], *manifest["decode"]:
            entry["table"] = str(profiled.parent / entry["table"])
        manifest["decode"][1].update(table=str(table), sha256=hashlib.sha256(table.read_bytes()).hexdigest())
        path = tmp_path / f"mixed_{table.stem}.json"
        path.write_text(json.dumps(manifest))
        refused(capsys, ["predict", "--workload-tables", str(path)], "ziplm-deploy predict: error:", words,
                f"decode[1] ({table})")


def test_predict_refuses_bad_manifests(profiled, tmp_path, capsys, tiny_model_dir):
    manifest = json.loads(profiled.read_text())
    manifest["workload"]["generate"] = "4"
    bad = profiled.parent / "bad.json"
    bad.write_text(json.dumps(manifest))
    refused(capsys, ["predict", "--workload-tables", str(bad)], f"{bad}: workload.generate must be an integer, got '4'")
    bad.unlink()
    refused(capsys, ["predict", "--workload-tables", str(profiled.parent / "decode_b1_kv8.json")],
            "a decode table (KV 8) alone has no time to first token")
    refused(capsys, ["predict", "--workload-tables", str(tmp_path / "missing.json")], "workload tables not found")
    refused(capsys, ["predict", "--workload-tables", str(profiled), "--table", str(profiled)], "exactly one of")
    refused(capsys, ["predict"], "exactly one of --table")
    (other := tmp_path / "m").mkdir()
    (other / "config.json").write_text(json.dumps(dict(TINY_LLAMA, num_hidden_layers=3)))
    refused(capsys, ["predict", "--workload-tables", str(profiled), "--model", str(other)], "num_layers=2")


@pytest.mark.parametrize("extra,words", [
    (["--workload", "chat!"], ["unknown workload 'chat!'"]),
    (["--workload", "0x4"], ["prompt must be between 1"]),
    (["--workload", "chat", "--seq", "64"], ["--seq does not go with --workload"]),
    (["--workload", "chat", "--decode-kv-len", "64"], ["--decode-kv-len does not go with --workload"]),
    (["--workload", "chat", "--check", "2"], ["--check checks one table"]),
    (["--workload", "chat", "--logits", "last"], ["--logits does not go with --workload"]),
    (["--decode-kv-len", "4", "--logits", "last"], ["--logits last: a decode step has one position"]),
    (["--logits", "first"], ["argument --logits: invalid choice"]),
    (["--workload", "chat", "--kv-lens", "512", "600"], ["--kv-lens at KV lengths [512, 600] do not cover", "638"]),
    (["--workload", "prefill-64", "--kv-lens", "64"], ["no decode step"]),
    (["--kv-lens", "8"], ["--kv-lens needs --workload"]),
    (["--workload", "chat", "--kv-lens", "0"], ["argument --kv-lens: must be >= 1, got 0"]),
])
def test_profile_workload_refusals(extra, words, tiny_model_dir, tmp_path, capsys):
    refused(capsys, ["profile", "--model", str(tiny_model_dir), "--out", str(tmp_path / "o"), *extra], *words)
    assert not (tmp_path / "o").exists()


def test_profile_workload_refuses_bert_generation(tmp_path, capsys):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps(dict(
        model_type="bert", num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
        vocab_size=100)))
    refused(capsys, ["profile", "--model", str(tmp_path / "bert"), "--workload", "8x4", "--out", str(tmp_path / "o")],
            "a bert model has no decode mode")
    assert main(["profile", "--model", str(tmp_path / "bert"), "--workload", "prefill-8", "--out",
                 str(tmp_path / "o"), *FAST]) == 0  # prefill-only is fine for an encoder
    assert WorkloadTables.load(tmp_path / "o").workload.name == "prefill-8"
    assert WorkloadTables.load(tmp_path / "o").prefill.fingerprint.logits == "all"  # scoring: every position
    # one generated token (a classifier's single pass) keeps every position's logits and loads
    assert main(["profile", "--model", str(tmp_path / "bert"), "--workload", "8x1", "--out",
                 str(tmp_path / "g"), *FAST]) == 0
    assert WorkloadTables.load(tmp_path / "g").prefill.fingerprint.logits == "all"


def test_profile_defaults_unchanged_without_workload(tiny_model_dir, tmp_path, capsys):
    """--seq / --decode-kv-len default to 128 / 0 as before (they are None in argparse only to detect them)."""
    assert main(["profile", "--model", str(tiny_model_dir), "--out", str(tmp_path / "p.json"), *FAST]) == 0
    fp = LatencyTable.load(tmp_path / "p.json").fingerprint
    assert (fp.mode, fp.seq, fp.kv_len) == ("prefill", 128, 0)
    assert main(["profile", "--model", str(tiny_model_dir), "--out", str(tmp_path / "d.json"), "--decode-kv-len", "5",
                 *FAST]) == 0
    fp = LatencyTable.load(tmp_path / "d.json").fingerprint
    assert (fp.mode, fp.seq, fp.kv_len) == ("decode", 1, 5)
    assert main(["profile", "--model", str(tiny_model_dir), "--out", str(tmp_path / "l.json"), "--logits", "last",
                 "--seq", "6", *FAST]) == 0
    assert LatencyTable.load(tmp_path / "l.json").fingerprint.logits == "last"


def test_workload_commands_without_torch(no_torch_env, profiled, tiny_model_dir, tmp_path):
    code = ("import sys, ziplm_deploy.core.workload, ziplm_deploy.profiling.workload; "
            "assert 'torch' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], env=no_torch_env, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "ziplm_deploy", "predict", "--workload-tables", str(profiled),
                        "--model", str(tiny_model_dir)], env=no_torch_env, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "end-to-end ms" in r.stdout, r.stderr
