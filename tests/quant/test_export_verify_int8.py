"""``export --precision int8-dynamic`` validated against fp32 PyTorch by top-1 agreement (and perplexity),
``inspect`` shows it, ``verify`` judges a quantized candidate by top-1 agreement (never 1e-3 parity vs fp32,
never silently), measures its perplexity in ONNX Runtime itself, and refuses a table of another precision."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

ROOT = Path(__file__).resolve().parents[2]
TEXT = "\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog near the river bank, "
                   f"while {i} small birds sing in the old oak tree." for i in range(12))
FAST = ["--rounds", "3", "--warmup", "1", "--seq", "16"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ziplm_deploy", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama with SmolLM2's tokenizer, its fp32 export, its int8 export (CLI, with --eval-data) and text."""
    from families import tiny_llama_for

    from ziplm_deploy.export import export_onnx
    from ziplm_deploy.models import save_model
    from ziplm_deploy.models.assets import smollm2_dir
    from ziplm_deploy.models.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("quant")
    tokenizer = load_tokenizer(smollm2_dir())
    model = tiny_llama_for(tokenizer, layers=2).eval()
    save_model(model, root / "llama", tokenizer=tokenizer)
    (root / "text.txt").write_text(TEXT)
    export_onnx(model, root / "fp32.onnx")
    out = root / "int8" / "llama.onnx"
    r = cli("export", "--model", root / "llama", "--out", out, "--precision", "int8-dynamic", "--eval-data",
            root / "text.txt", "--eval-windows", "2", "--eval-seq", "32")
    assert r.returncode == 0, r.stderr
    assert "top-1 agreement with fp32 PyTorch" in r.stdout and "perplexity" in r.stdout
    return {"root": root, "dir": root / "llama", "fp32": root / "fp32.onnx", "int8": out, "text": root / "text.txt",
            "model": model}


def meta_of(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def test_export_writes_the_quantized_graph_with_its_validation(tiny):
    from ziplm_deploy.core.parity import load_reference, reference_path
    from ziplm_deploy.core.manifest import file_sha256

    proto = onnx.load(str(tiny["int8"]))
    assert Counter(n.op_type for n in proto.graph.node)["MatMulInteger"] > 0
    meta = meta_of(tiny["int8"])
    assert meta["ziplm_precision"] == "int8-dynamic" and "ziplm_shape" in meta
    quality = json.loads(meta["ziplm_quality"])
    assert quality["kind"] == "top1-agreement" and quality["reference"] == "pytorch-fp32"
    from ziplm_deploy.runtime.quantize import DEFAULT_MIN_TOP1

    assert quality["min_top1_agreement"] == DEFAULT_MIN_TOP1 == 0.1 and quality["positions"] == 39
    assert quality["top1_agreement"] >= 0.9  # a tiny random model quantizes almost losslessly
    assert quality["perplexity"] > 0 and quality["perplexity_fp32"] > 0
    ref = load_reference(reference_path(tiny["int8"]))
    assert ref.onnx_sha256 == file_sha256(tiny["int8"])  # the reference belongs to the quantized file
    assert sorted(p.name for p in tiny["int8"].parent.iterdir()) == ["llama.onnx", "llama.onnx.reference.npz"]


def test_inspect_shows_the_precision(tiny):
    r = cli("inspect", tiny["int8"])
    assert r.returncode == 0, r.stderr
    assert "precision: int8-dynamic (validated against fp32 PyTorch: top-1 agreement" in r.stdout
    assert json.loads(cli("inspect", tiny["int8"], "--json").stdout)["precision"] == "int8-dynamic"
    assert json.loads(cli("inspect", tiny["fp32"], "--json").stdout)["precision"] == "fp32"


def test_ort_perplexity_equals_pytorch_and_tokenization_matches(tiny):
    import torch

    from ziplm_deploy.models.tokenizer import load_tokenizer
    from ziplm_deploy.prune.data import eval_windows
    from ziplm_deploy.prune.evaluate import perplexity
    from ziplm_deploy.verify.ort_quality import ort_perplexity, read_texts, text_windows

    windows = eval_windows(load_tokenizer(tiny["dir"]), tiny["text"], 32, 3).numpy()
    assert np.array_equal(text_windows(tiny["dir"], read_texts(tiny["text"]), 32, 3), windows)
    want = perplexity(tiny["model"], torch.as_tensor(windows), progress=False)
    assert ort_perplexity(tiny["fp32"], windows) == pytest.approx(want, rel=1e-4)


def test_verify_judges_a_quantized_candidate_by_top1_and_measures_it_in_ort(tiny, tmp_path):
    report = tmp_path / "verify.json"
    r = cli("verify", "--baseline", tiny["fp32"], "--candidate", tiny["int8"], "--report", report, "--eval-data",
            tiny["text"], "--eval-windows", "2", "--eval-seq", "32", *FAST)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "top-1 agreement" in r.stdout and "PASSED" in r.stdout
    v = json.loads(report.read_text())
    parity = v["parity"]
    assert parity["tolerance"]["kind"] == "top1-agreement" and parity["tolerance"]["candidate"] == "int8-dynamic"
    assert parity["tolerance"]["source"] == "the tolerance it was exported with"
    assert parity["reference"] == "pytorch" and parity["ok"] is True
    assert [row["name"] for row in parity["outputs"]] == ["logits"] and parity["outputs"][0]["top1_agreement"] >= 0.9
    assert v["candidate"]["precision"] == "int8-dynamic" and v["fingerprint"]["precision"] == "int8-dynamic"
    q = v["quality"]
    assert q["source"] == "onnxruntime" and q["metric"] == "perplexity"
    # the same windows the exporter measured: verify's torch-free perplexity equals the export's
    assert q["candidate"] == pytest.approx(json.loads(meta_of(tiny["int8"])["ziplm_quality"])["perplexity"], rel=1e-4)

    from ziplm_deploy.verify.policy import Policy, judge
    from ziplm_deploy.verify.report import VerifyReport

    increase = q["candidate"] / q["baseline"] - 1
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\nbudgets:\n  max_perplexity_increase: {abs(increase) + 0.5}\n")
    assert VerifyReport.from_json(v).to_json() == v  # the typed report writes back what it read
    verdict = judge(Policy.load(policy), VerifyReport.load(report))
    [check] = [c for c in verdict.checks if c.name == "max_perplexity_increase"]
    assert check.passed and check.measured == pytest.approx(increase)  # the budget reads the ORT perplexities


def test_a_quantized_file_against_another_models_reference_fails(tiny, tmp_path):
    """The export-reference path (no source recorded): wrong logits give a low top-1 agreement: exit 1."""
    from families import tiny_llama_for

    from ziplm_deploy.core.parity import reference_path
    from ziplm_deploy.export.quantize import export_quantized
    from ziplm_deploy.models.tokenizer import load_tokenizer
    from ziplm_deploy.runtime.quantize import Precision

    import torch

    other = tiny_llama_for(load_tokenizer(tiny["dir"]), layers=2, seed=1).eval()
    # an untied random head: tiny tied models both "predict" their input token, so they would agree by copying
    other.config.tie_word_embeddings = False
    other.lm_head.weight = torch.nn.Parameter(torch.randn_like(other.lm_head.weight))
    export_quantized(other, tmp_path / "other.onnx", Precision("int8-dynamic"), min_top1=0.0)
    shutil.copy(reference_path(tmp_path / "other.onnx"), reference_path(tmp_path / "swapped.onnx"))
    shutil.copy(tiny["int8"], tmp_path / "swapped.onnx")
    meta = meta_of(tmp_path / "swapped.onnx")
    assert "ziplm_source" in meta  # recorded: hide the source so the export reference is the reference
    proto = onnx.load(str(tmp_path / "swapped.onnx"))
    for p in list(proto.metadata_props):
        if p.key.startswith("ziplm_source"):
            proto.metadata_props.remove(p)
    onnx.save_model(proto, str(tmp_path / "swapped.onnx"))
    report = tmp_path / "verify.json"
    r = cli("verify", "--baseline", tiny["fp32"], "--candidate", tmp_path / "swapped.onnx", "--report", report, *FAST)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "output parity vs export-reference out of tolerance" in r.stdout
    parity = json.loads(report.read_text())["parity"]
    assert parity["reference"] == "export-reference" and parity["tolerance"]["kind"] == "top1-agreement"
    assert parity["ok"] is False and parity["outputs"][0]["top1_agreement"] < 0.1  # below the default floor


def test_verify_refuses_a_table_of_another_precision(tiny, tmp_path, one_line_error):
    from ziplm_deploy.core.arch import arch_from_dir
    from ziplm_deploy.profiling.profiler import ProfileOptions, profile
    from ziplm_deploy.runtime.timing import Protocol

    table = tmp_path / "fp32-table.json"
    opts = ProfileOptions(seq=8, ffn_step=32, protocol=Protocol(warmup=1, rounds=3, recheck=2))
    profile(arch_from_dir(tiny["dir"]), opts, progress=False).save(table)
    report = tmp_path / "verify.json"
    r = cli("verify", "--baseline", tiny["fp32"], "--candidate", tiny["int8"], "--report", report, "--table", table,
            *FAST)
    one_line_error(r, "the latency table was measured in precision fp32, but --candidate", "is int8-dynamic",
                   "profile --precision int8-dynamic")
    assert not report.exists()


@pytest.mark.parametrize("flags,message", [
    (["--per-channel"], "per-channel needs a quantized precision"),
    (["--precision", "int8-dynamic/fp32-down=5"], "names layer 5, but"),
    (["--min-top1", "0.5"], "--min-top1 validate a quantized export"),
    (["--precision", "int8-dynamic", "--max-ppl-increase", "0.1"], "--max-ppl-increase needs --eval-data"),
    (["--precision", "int8-dynamic", "--min-top1", "1.5"], "--min-top1"),
    (["--precision", "int8-dynamic", "--eval-data", "missing.txt"], "evaluation data not found"),
])
def test_bad_export_options_exit_2_before_work(tiny, tmp_path, flags, message, one_line_error):
    r = cli("export", "--model", tiny["dir"], "--out", tmp_path / "m.onnx", *flags)
    one_line_error(r, message)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_quantized_validation_leaves_nothing(tiny, tmp_path):
    from ziplm_deploy.export.quantize import QuantizedValidationError, quantize_exported
    from ziplm_deploy.runtime.quantize import Precision

    windows = np.random.default_rng(0).integers(0, 1000, (1, 16))
    int8 = Precision("int8-dynamic")
    with pytest.raises(QuantizedValidationError, match="perplexity .* > \\+50.0%"):
        quantize_exported([tiny["fp32"]], tmp_path, int8, windows=windows, ppl_fp32=1e-3, max_ppl_increase=0.5)
    with pytest.raises(QuantizedValidationError, match="top-1 agreement with fp32 PyTorch .* < 100.1%"):
        quantize_exported([tiny["fp32"]], tmp_path, int8, min_top1=1.001)
    assert list(tmp_path.iterdir()) == []


def head_ops(proto) -> tuple[str, list[str]]:
    """The op producing ``logits`` (through Identity) and the op types feeding it."""
    prod = {o: n for n in proto.graph.node for o in n.output}
    node = prod["logits"]
    while node.op_type == "Identity":
        node = prod[node.input[0]]
    return node.op_type, sorted(prod[i].op_type if i in prod else "initializer" for i in node.input)


def test_block_model_quantizes_the_tied_head_like_the_export(tiny):
    """The table's reference models carry the LM head the way the quantized export does (tied embeddings:
    a transposed int8 table dequantized per call into an fp32 MatMul), so an int8 table predicts it."""
    from ziplm_deploy.core.arch import arch_from_dir
    from ziplm_deploy.core.shape import ModelShape
    from ziplm_deploy.profiling.blocks import Sizes, model_graph
    from ziplm_deploy.runtime.quantize import Precision, quantize_graph

    arch = arch_from_dir(tiny["dir"])
    assert arch.tie_word_embeddings
    blocks = onnx.load_from_string(quantize_graph(model_graph(arch, ModelShape.dense(arch), Sizes(1, 8)),
                                                  Precision("int8-dynamic")))
    exported = onnx.load(str(tiny["int8"]))
    assert head_ops(blocks) == head_ops(exported)
    assert head_ops(exported)[0] == "MatMul" and "DequantizeLinear" in head_ops(exported)[1]


def test_export_of_a_recipe_keeps_the_named_nodes_fp32_and_records_the_recipe(tiny, tmp_path):
    """``--precision int8-dynamic/fp32-embed/fp32-down``: the exported graph's two FFN output projections stay
    fp32 MatMuls, the (tied) embedding table stays a float initializer, and the label is in the metadata."""
    from collections import Counter

    out = tmp_path / "recipe.onnx"
    r = cli("export", "--model", tiny["dir"], "--out", out, "--precision", "int8-dynamic/fp32-embed/fp32-down")
    assert r.returncode == 0, r.stderr
    assert meta_of(out)["ziplm_precision"] == "int8-dynamic/fp32-embed/fp32-down"
    q, plain = onnx.load(str(out)), onnx.load(str(tiny["int8"]))
    ops, plain_ops = Counter(n.op_type for n in q.graph.node), Counter(n.op_type for n in plain.graph.node)
    assert ops["MatMulInteger"] == plain_ops["MatMulInteger"] - 2  # one down projection per layer
    gathers = [n for n in q.graph.node if n.op_type == "Gather" and n.input[0] in {i.name for i in q.graph.initializer}]
    tables = {i.name: i for i in q.graph.initializer}
    assert gathers and all(tables[g.input[0]].data_type == onnx.TensorProto.FLOAT for g in gathers)
