"""verify's parity of an ONNX candidate against an independent reference, never against the file itself:
the export reference stored beside the file (torch-free), PyTorch on the recorded source directory, or
none (parity not checkable: the gate fails closed)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from conftest import cli, copy_onnx
from onnx import numpy_helper

from ziplm_deploy.cli import main
from ziplm_deploy.core.manifest import file_sha256
from ziplm_deploy.core.parity import reference_path, save_reference

FAST = ["--seq", "8", "--rounds", "2", "--warmup", "0", "--retries", "0"]
PARITY_POLICY = "version: 1\nname: parity\nbudgets: {}\nrequire_parity_ok: true\n"


def _verify(baseline, candidate, report, *extra) -> int:
    return main(["verify", "--baseline", str(baseline), "--candidate", str(candidate), "--report", str(report),
                 *FAST, *extra])


def _gate(report, tmp_path) -> int:
    policy = tmp_path / "parity.yaml"
    policy.write_text(PARITY_POLICY)
    return main(["gate", "--policy", str(policy), "--report", str(report)])


def _scale_largest_initializer(src, dst, factor: float) -> str:
    """A copy of ``src`` with its largest weight scaled: the weights altered after export."""
    proto = onnx.load(str(src))
    init = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), init.name))
    onnx.save(proto, str(dst))
    return init.name


def test_export_reference_passes_for_the_exported_file(exported_onnx, tmp_path, capsys):
    report = tmp_path / "v.json"
    assert _verify(exported_onnx, exported_onnx, report) == 0
    assert "parity vs export-reference: logits" in capsys.readouterr().out
    par = json.loads(report.read_text())["parity"]
    ref = reference_path(exported_onnx)
    assert par["reference"] == "export-reference" and par["ok"] is True
    assert par["reference_path"] == str(ref) and par["reference_sha256"] == file_sha256(ref)
    assert par["file_matches_export"] is True and "no source model directory" in par["note"]
    assert [r["name"] for r in par["outputs"]] == ["logits"] and par["outputs"][0]["max_abs"] < 1e-4
    assert _gate(report, tmp_path) == 0


def test_weights_altered_after_export_fail_parity_and_the_gate(exported_onnx, tmp_path, capsys):
    """The defect: an ONNX candidate with one initializer scaled used to pass (it was compared with itself)."""
    tampered = tmp_path / "tampered.onnx"
    _scale_largest_initializer(exported_onnx, tampered, 1.5)
    shutil.copy(reference_path(exported_onnx), reference_path(tampered))
    report = tmp_path / "v.json"
    assert _verify(exported_onnx, tampered, report) == 1
    out = capsys.readouterr().out
    assert "FAILED: output parity vs export-reference out of tolerance" in out
    par = json.loads(report.read_text())["parity"]
    assert par["reference"] == "export-reference" and par["ok"] is False and par["file_matches_export"] is False
    (logits,) = par["outputs"]
    assert logits["max_abs"] > 0.1 > logits["tolerance"] and logits["ok"] is False
    assert _gate(report, tmp_path) == 1


def test_without_any_reference_parity_is_not_checkable_and_fails(exported_onnx, tmp_path, capsys):
    bare = copy_onnx(exported_onnx, tmp_path / "bare.onnx", reference=False)
    report = tmp_path / "v.json"
    assert _verify(exported_onnx, bare, report) == 1
    out = capsys.readouterr().out
    assert "warning: parity cannot be checked" in out and "FAILED: output parity not checkable" in out
    par = json.loads(report.read_text())["parity"]
    assert par["reference"] == "none" and par["ok"] is False and par["outputs"] == []
    assert "bare.onnx.reference.npz" in par["note"] and par["reference_sha256"] is None
    assert _gate(report, tmp_path) == 1


def _refused(argv, capsys, message, report):
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err, err
    assert "timing" not in captured.out and not report.exists()


def test_a_corrupted_reference_is_refused_before_timing(exported_onnx, tmp_path, capsys):
    """A reference that fails its own hash, is not an npz or is truncated: exit 2, no report, nothing timed."""
    cand = copy_onnx(exported_onnx, tmp_path / "c.onnx")
    ref = reference_path(cand)
    report = tmp_path / "v.json"
    argv = ["verify", "--baseline", str(exported_onnx), "--candidate", str(cand), "--report", str(report),
            *FAST]
    with np.load(ref) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["out:logits"] = arrays["out:logits"] + 1.0  # edited outputs, meta (and its hash) kept
    with open(ref, "wb") as f:
        np.savez(f, **arrays)
    _refused(argv, capsys, "does not match its recorded sha256 (the file was corrupted or edited)", report)
    ref.write_bytes(b"not a zip file")
    _refused(argv, capsys, f"export reference {ref} is unreadable", report)
    ref.write_bytes(reference_path(exported_onnx).read_bytes()[:200])  # truncated
    _refused(argv, capsys, "is unreadable", report)


def test_a_reference_of_another_graph_is_refused(exported_onnx, tmp_path, capsys):
    """A decode graph's reference (it feeds past_key_values.*) beside a graph that takes none: exit 2."""
    cand = copy_onnx(exported_onnx, tmp_path / "c.onnx", reference=False)
    ids = np.zeros((1, 1), dtype=np.int64)
    save_reference(reference_path(cand), "decode", {"input_ids": ids, "past_key_values.0.key": np.zeros((1, 2, 3, 4))},
                   {"logits": np.zeros((1, 1, 120))}, file_sha256(cand), "test")
    report = tmp_path / "v.json"
    _refused(["verify", "--baseline", str(cand), "--candidate", str(cand), "--report", str(report), *FAST], capsys,
             "was written for inputs ['input_ids', 'past_key_values.0.key']", report)


@pytest.fixture(scope="module")
def cli_exported(tiny_pair, tmp_path_factory):
    """The pruned tiny GPT-2 exported with `ziplm-deploy export` from a copy of its directory: the source
    directory and its content hash are recorded in the ONNX metadata."""
    root = tmp_path_factory.mktemp("cli_exported")
    src = shutil.copytree(tiny_pair["pruned"], root / "pruned")
    assert main(["export", "--model", str(src), "--out", str(root / "pruned.onnx")]) == 0
    assert reference_path(root / "pruned.onnx").is_file()
    return root


def test_recorded_source_directory_gives_pytorch_parity(cli_exported, tmp_path, capsys):
    from ziplm_deploy.verify.inputs import dir_digest, onnx_metadata

    cand = cli_exported / "pruned.onnx"
    meta = onnx_metadata(cand)
    assert meta["ziplm_source"] == str((cli_exported / "pruned").resolve())
    assert meta["ziplm_source_sha256"] == dir_digest(cli_exported / "pruned")
    report = tmp_path / "v.json"
    assert _verify(cli_exported / "pruned.onnx", cand, report) == 0
    par = json.loads(report.read_text())["parity"]
    assert par["reference"] == "pytorch" and par["ok"] is True
    assert par["reference_path"] == meta["ziplm_source"] and par["reference_sha256"] == meta["ziplm_source_sha256"]
    tampered = tmp_path / "tampered.onnx"  # same metadata (source recorded), altered weights
    _scale_largest_initializer(cand, tampered, 1.5)
    assert _verify(cli_exported / "pruned.onnx", tampered, report) == 1
    par = json.loads(report.read_text())["parity"]
    assert par["reference"] == "pytorch" and par["ok"] is False
    capsys.readouterr()


def test_changed_source_directory_falls_back_to_the_export_reference(cli_exported, tmp_path):
    """A recorded source whose content hash differs is not provably the file's source: the stored reference."""
    proto = onnx.load(str(cli_exported / "pruned.onnx"))
    for prop in proto.metadata_props:
        if prop.key == "ziplm_source_sha256":
            prop.value = "0" * 64
    cand = tmp_path / "m.onnx"
    onnx.save(proto, str(cand))
    shutil.copy(reference_path(cli_exported / "pruned.onnx"), reference_path(cand))
    report = tmp_path / "v.json"
    assert _verify(cand, cand, report) == 0
    par = json.loads(report.read_text())["parity"]
    assert par["reference"] == "export-reference" and par["ok"] is True and par["file_matches_export"] is False
    assert f"its source directory {(cli_exported / 'pruned').resolve()} changed since export" in par["note"]


def test_export_reference_without_torch(cli_exported, no_torch_env, tmp_path):
    """The edge install: the recorded source exists but torch does not; the stored reference is used."""
    report = tmp_path / "edge.json"
    r = cli(no_torch_env, "verify", "--baseline", str(cli_exported / "pruned.onnx"), "--candidate",
            str(cli_exported / "pruned.onnx"), "--report", str(report), *FAST)
    assert r.returncode == 0, r.stderr
    par = json.loads(report.read_text())["parity"]
    assert par["reference"] == "export-reference" and par["ok"] is True and par["note"] == "torch is not installed"
