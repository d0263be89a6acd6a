"""Bad input to every model command (prune, eval, shrink, inspect, profile, predict, distill, flop, gradual,
report, build-engine) is one line on stderr naming the problem and the fix, exit 2, before any work
(no model is loaded), and nothing is left behind: numeric options, corrupt weights, mistyped config.json,
unwritable outputs, CUDA on a CPU build, encoders where a causal LM is needed, unusable data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ziplm_deploy.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
OWN_COMMANDS = ("prune", "profile", "predict", "eval", "shrink", "inspect", "distill", "flop", "gradual", "report",
                "build-engine")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama (SmolLM2's tokenizer), a tiny GPT-2 (64 positions) and BERTs with that tokenizer, a
    latency table for the Llama, text, and copies of the Llama with a truncated / garbage weights file."""
    from families import linear_table, tiny_llama_for, tiny_model

    from ziplm_deploy.core.shape import ModelShape
    from ziplm_deploy.models import save_model
    from ziplm_deploy.models.assets import smollm2_dir
    from ziplm_deploy.models.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("bad-inputs")
    tokenizer = load_tokenizer(smollm2_dir())
    save_model(tiny_llama_for(tokenizer, layers=2).eval(), root / "llama", tokenizer=tokenizer)
    for name in ("gpt2", "bert", "bert-cls"):
        save_model(tiny_model(name, layers=2), root / name, tokenizer=tokenizer)
    linear_table(root / "llama", root / "table.json")
    ModelShape.dense(_arch(root / "llama")).save(root / "shape.json")
    (root / "text.txt").write_text((ROOT / "README.md").read_text())
    weights = (root / "llama" / "model.safetensors").read_bytes()
    for name, data in (("truncated", weights[: len(weights) // 2]), ("stub", weights[:5]),
                       ("garbage", b"\xff" * 64 + weights[64:])):
        shutil.copytree(root / "llama", root / name)
        (root / name / "model.safetensors").write_bytes(data)
    (root / "a-file").write_text("not a folder\n")
    (root / "a-folder").mkdir()
    _import_stages()
    return {p.name: p for p in root.iterdir()} | {"root": root}


def _import_stages() -> None:
    """Import what the commands import, so that the one-second bound times the command, not its imports."""
    import importlib

    for module in ("ziplm_deploy.prune.family", "ziplm_deploy.distill.trainer", "ziplm_deploy.distill.flop",
                   "ziplm_deploy.distill.gradual", "ziplm_deploy.profiling.profiler", "ziplm_deploy.verify.runreport",
                   "ziplm_deploy.verify.measure", "ziplm_deploy.prune.evaluate"):
        importlib.import_module(module)


def _arch(path):
    from ziplm_deploy.core.arch import arch_from_dir

    return arch_from_dir(path)


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any model load fails the test: every refusal here must come before the work starts."""
    import ziplm_deploy.models
    import ziplm_deploy.models.io

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was refused")

    monkeypatch.setattr(ziplm_deploy.models, "load_model", forbidden)
    monkeypatch.setattr(ziplm_deploy.models.io, "load_model", forbidden)


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def refused(capsys, argv: list[str], *words: str, root: Path | None = None, limit_s: float = 20.0) -> str:
    """``main(argv)`` exits 2, one stderr line holding ``words``; nothing new under ``root``.

    ``limit_s`` is a ceiling far above any refusal on a busy CI machine (a refusal takes milliseconds): it only
    catches a command that did its work (loaded a model, calibrated) before refusing. It is not a speed test; at
    1 s it failed once on a loaded 2-core machine."""
    before = _listing(root) if root else None
    capsys.readouterr()
    started = time.perf_counter()
    code = main(argv)
    elapsed = time.perf_counter() - started
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (code, err, captured.out)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)
    assert elapsed < limit_s, f"refused after {elapsed:.2f}s: {err}"
    if root:
        assert _listing(root) == before, "the refused command left something behind"
    return err


# ---- 1. numeric options refused at parse time ------------------------------------------------------------


def _base(command: str) -> list[str]:
    """Required arguments of ``command`` (dummy paths: parse-time errors come first)."""
    return {
        "prune": ["prune", "--model", "m", "--table", "t", "--calib", "c", "--out", "o"],
        "eval": ["eval", "--model", "m", "--data", "d"],
        "profile": ["profile", "--model", "m", "--out", "t.json"],
        "inspect": ["inspect", "m"],
        "distill": ["distill", "--student", "s", "--data", "d", "--out", "o"],
        "flop": ["flop", "--model", "m", "--data", "d", "--out", "o", "--target-sparsity", "0.5"],
        "gradual": ["gradual", "--model", "m", "--table", "t", "--calib", "c", "--out", "o"],
        "build-engine": ["build-engine", "--onnx", "m.onnx", "--out", "e.plan"],
    }[command]


NUMERIC = [
    ("prune", "--ffn-step", "-5"), ("prune", "--ffn-step", "0"), ("prune", "--damp", "-1"), ("prune", "--damp", "nan"),
    ("prune", "--damp", "0"), ("prune", "--spdy-samples", "-3"), ("prune", "--targets", "inf"),
    ("prune", "--targets", "nan"), ("prune", "--targets", "0.5"), ("prune", "--targets", "2", "-2"),
    ("prune", "--windows", "0"), ("prune", "--seq-len", "0"), ("prune", "--seq-len", "4"), ("prune", "--seed", "-1"),
    ("prune", "--layers", "-1"), ("prune", "--windows", "1.5"),
    ("eval", "--max-windows", "0"), ("eval", "--max-windows", "-2"), ("eval", "--seq-len", "1"),
    ("profile", "--seq", "0"), ("profile", "--threads", "-1"), ("profile", "--rank-step", "-32"),
    ("profile", "--check", "-1"), ("profile", "--batch", "0"), ("profile", "--decode-kv-len", "-1"),
    ("profile", "--ffn-step", "0"), ("profile", "--warmup", "-1"), ("profile", "--rounds", "0"),
    ("profile", "--check-rounds", "0"), ("profile", "--seed", "-1"), ("profile", "--max-speedup-error", "nan"),
    ("profile", "--max-speedup-error", "-0.1"),
    ("inspect", "--seq", "0"), ("inspect", "--seq", "abc"),
    ("distill", "--steps", "0"), ("distill", "--steps", "-1"), ("distill", "--lr", "0"), ("distill", "--lr", "nan"),
    ("distill", "--lr", "inf"), ("distill", "--weight-decay", "-1"), ("distill", "--warmup", "-1"),
    ("distill", "--batch-size", "0"), ("distill", "--grad-accum", "0"), ("distill", "--seq-len", "1"),
    ("distill", "--temperature", "0"), ("distill", "--kd-weight", "-1"), ("distill", "--hidden-weight", "nan"),
    ("distill", "--task-weight", "inf"), ("distill", "--max-grad-norm", "-1"), ("distill", "--eval-every", "-1"),
    ("distill", "--save-every", "-1"), ("distill", "--eval-windows", "0"), ("distill", "--seed", "-1"),
    ("flop", "--target-sparsity", "0"), ("flop", "--target-sparsity", "1"), ("flop", "--target-sparsity", "nan"),
    ("flop", "--target-sparsity", "-0.5"), ("flop", "--steps", "0"), ("flop", "--warmup", "-1"),
    ("flop", "--rank", "0"), ("flop", "--init-drop", "0"), ("flop", "--init-drop", "1"), ("flop", "--lr", "-1"),
    ("flop", "--gate-lr", "0"), ("flop", "--lambda-lr", "nan"), ("flop", "--batch-size", "0"),
    ("flop", "--seq-len", "0"), ("flop", "--eval-windows", "0"), ("flop", "--seed", "-1"),
    ("gradual", "--targets", "inf"), ("gradual", "--targets", "0.9"), ("gradual", "--windows", "0"),
    ("gradual", "--ffn-step", "-5"), ("gradual", "--damp", "nan"), ("gradual", "--steps", "0"),
    ("gradual", "--lr", "-1"), ("gradual", "--kd-weight", "inf"),
    ("build-engine", "--workspace-mb", "0"), ("build-engine", "--opt-level", "7"),
]


@pytest.mark.parametrize("case", NUMERIC, ids=lambda c: "-".join(c))
def test_a_bad_number_is_refused_at_parse_time(case, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the dummy output paths would land here
    command, option, *values = case
    refused(capsys, _base(command) + [option, *values], f"argument {option}:", f"ziplm-deploy {command} --help",
            root=tmp_path)


def test_every_numeric_option_is_validated():
    """No option of these commands takes a bare int or float (which accept -5, nan and inf)."""
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    bare = [f"{name} {action.option_strings[0]}" for name in OWN_COMMANDS
            for action in commands[name]._actions if action.type in (int, float)]
    assert not bare, f"options without a range check: {bare}"


def test_a_valid_number_still_parses():
    args = build_parser().parse_args(_base("prune") + ["--targets", "1", "2.5", "--damp", "0.01", "--ffn-step", "8",
                                                       "--spdy-samples", "0", "--device", "cpu"])
    assert args.targets == [1.0, 2.5] and args.damp == 0.01 and args.ffn_step == 8 and args.device == "cpu"
    args = build_parser().parse_args(_base("profile") + ["--threads", "0", "--check", "0", "--rank-step", "0"])
    assert (args.threads, args.check, args.rank_step) == (0, 0, 0)


# ---- 2. corrupt or truncated weights ------------------------------------------------------------------------


def _weights_argv(command: str, model: Path, tiny: dict[str, Path], out: Path) -> list[str]:
    text, table = str(tiny["text.txt"]), str(tiny["table.json"])
    return {
        "prune": ["prune", "--model", str(model), "--table", table, "--calib", text, "--out", str(out)],
        "eval": ["eval", "--model", str(model), "--data", text],
        "shrink": ["shrink", "--model", str(model), "--shape", str(tiny["shape.json"]), "--out", str(out)],
        "distill": ["distill", "--student", str(model), "--data", text, "--out", str(out)],
        "distill-teacher": ["distill", "--student", str(tiny["llama"]), "--teacher", str(model), "--data", text,
                            "--out", str(out)],
        "flop": ["flop", "--model", str(model), "--data", text, "--target-sparsity", "0.5", "--out", str(out)],
        "gradual": ["gradual", "--model", str(model), "--table", table, "--calib", text, "--out", str(out)],
        "inspect": ["inspect", str(model)],
    }[command]


@pytest.mark.parametrize("damage", ["truncated", "stub", "garbage"])
@pytest.mark.parametrize("command", ["prune", "eval", "shrink", "distill", "distill-teacher", "flop", "gradual",
                                     "inspect"])
def test_corrupt_weights_name_the_file(command, damage, tiny, capsys, tmp_path, no_model_loading):
    model = tiny[damage]
    refused(capsys, _weights_argv(command, model, tiny, tmp_path / "out"),
            f"model.safetensors in {model} is corrupt or truncated", "re-save or re-download the model", root=tmp_path)


def test_load_model_refuses_a_truncated_file(tiny):
    from ziplm_deploy.core.errors import UserError
    from ziplm_deploy.models import load_model

    with pytest.raises(UserError, match="model.safetensors in .* is corrupt or truncated"):
        load_model(tiny["truncated"])
    assert load_model(tiny["llama"]) is not None  # the intact original loads


# ---- 3. config.json of the right syntax and wrong types -------------------------------------------------------


BAD_CONFIGS = {
    "list": (lambda c: [c], "config.json must be a JSON object"),
    "string-size": (lambda c: {**c, "hidden_size": "64"}, "config.json: hidden_size must be an integer, got '64'"),
    "bool-layers": (lambda c: {**c, "num_hidden_layers": True}, "config.json: num_hidden_layers must be an integer"),
    "missing": (lambda c: {k: v for k, v in c.items() if k != "vocab_size"}, "missing required key 'vocab_size'"),
    "negative": (lambda c: {**c, "intermediate_size": -64}, "config.json: intermediate_size must be >= 1"),
    "float-size": (lambda c: {**c, "num_attention_heads": 4.5}, "config.json: num_attention_heads must be an integer"),
    "nan-eps": (lambda c: {**c, "rms_norm_eps": float("nan")}, "config.json: rms_norm_eps must be a finite number"),
    "string-flag": (lambda c: {**c, "tie_word_embeddings": "yes"}, "config.json: tie_word_embeddings must be true"),
    "kv-split": (lambda c: {**c, "num_key_value_heads": 3}, "do not split into 3 key/value heads"),
    "model-type": (lambda c: {**c, "model_type": ["llama"]}, "unsupported architecture model_type=['llama']"),
}


@pytest.fixture(scope="module")
def bad_configs(tiny, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-configs")
    config = json.loads((tiny["llama"] / "config.json").read_text())
    dirs = {}
    for name, (edit, _) in BAD_CONFIGS.items():
        shutil.copytree(tiny["llama"], root / name)
        (root / name / "config.json").write_text(json.dumps(edit(config)))
        dirs[name] = root / name
    return dirs


def _config_argv(command: str, model: Path, tiny: dict[str, Path], out: Path) -> list[str]:
    if command == "profile":
        return ["profile", "--model", str(model), "--out", str(out / "t.json")]
    if command == "predict":
        return ["predict", "--table", str(tiny["table.json"]), "--model", str(model)]
    return _weights_argv(command, model, tiny, out / "o")


@pytest.mark.parametrize("bad", list(BAD_CONFIGS))
@pytest.mark.parametrize("command", ["profile", "inspect", "predict", "prune", "eval", "shrink", "distill", "flop",
                                     "gradual"])
def test_mistyped_config_names_the_file_and_key(command, bad, tiny, bad_configs, capsys, tmp_path, no_model_loading):
    err = refused(capsys, _config_argv(command, bad_configs[bad], tiny, tmp_path), BAD_CONFIGS[bad][1], root=tmp_path)
    assert str(bad_configs[bad]) in err


@pytest.mark.parametrize("bad", ["string-size", "list", "missing"])
def test_load_model_gives_the_same_error_before_transformers(bad, bad_configs):
    from ziplm_deploy.core.errors import UserError
    from ziplm_deploy.models import load_model

    with pytest.raises(UserError) as e:
        load_model(bad_configs[bad])
    assert BAD_CONFIGS[bad][1] in str(e.value)


# ---- 4. output paths checked before work -------------------------------------------------------------------------


def _output_cases(tiny: dict[str, Path]) -> list[tuple[list[str], str]]:
    file, folder = tiny["a-file"], tiny["a-folder"]
    under_file = file / "x"
    cases = []
    for command in ("prune", "shrink", "distill", "flop", "gradual"):
        cases.append((_weights_argv(command, tiny["llama"], tiny, file), f"{file} exists and is not a folder"))
        cases.append((_weights_argv(command, tiny["llama"], tiny, under_file), f"{file} is a file, not a folder"))
    profile = ["profile", "--model", str(tiny["llama"])]
    cases += [
        (profile + ["--out", str(folder)], f"{folder} is a folder, expected a file path"),
        (profile + ["--out", str(file / "t.json")], f"{file} is a file, not a folder"),
        (profile + ["--out", str(folder / "t.json"), "--check", "1", "--check-out", str(folder)], "--check-out"),
        (["report", str(tiny["root"]), "--out", str(folder)], f"{folder} is a folder, expected a file path"),
        (["report", str(tiny["root"]), "--out", str(folder / "r.html"), "--markdown", str(file / "r.md")],
         f"{file} is a file, not a folder"),
        (["build-engine", "--onnx", str(file), "--out", str(folder)], f"{folder} is a folder, expected a file path"),
        (["build-engine", "--onnx", str(file), "--out", str(file / "e.plan")], f"{file} is a file, not a folder"),
    ]
    return cases


@pytest.mark.parametrize("index", range(17))
def test_an_unusable_output_path_is_refused_first(index, tiny, capsys, no_model_loading):
    cases = _output_cases(tiny)
    assert len(cases) == 17
    argv, message = cases[index]
    refused(capsys, argv, message, "(", root=tiny["root"])
    assert tiny["a-file"].read_text() == "not a folder\n" and not any(tiny["a-folder"].iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder: chmod cannot refuse it")
@pytest.mark.parametrize("command", ["prune", "shrink", "flop"])
def test_a_read_only_folder_is_refused(command, tiny, capsys, tmp_path, no_model_loading):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        refused(capsys, _weights_argv(command, tiny["llama"], tiny, locked / "out"), "is not writable", root=tmp_path)
    finally:
        locked.chmod(0o755)


def test_missing_parents_of_an_output_are_created(tiny, capsys, tmp_path):
    """A nested output under folders that do not exist yet is fine (they are created), as before."""
    out = tmp_path / "a" / "b" / "shrunk"
    assert main(["shrink", "--model", str(tiny["llama"]), "--shape", str(tiny["shape.json"]), "--out", str(out)]) == 0
    assert (out / "config.json").is_file()


# ---- 5. CUDA requested on a CPU-only build --------------------------------------------------------------------


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_cuda_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_on_a_cpu_build_is_refused(device, tiny, capsys, tmp_path):
    argv = _weights_argv("prune", tiny["llama"], tiny, tmp_path / "out") + ["--device", device]
    refused(capsys, argv, "CUDA is not available in this torch build", "--device cpu", root=tmp_path)


def test_an_unknown_device_is_refused(tiny, capsys, tmp_path):
    argv = _weights_argv("prune", tiny["llama"], tiny, tmp_path / "out") + ["--device", "gpu0"]
    refused(capsys, argv, "device must be cpu, cuda or cuda:N, got 'gpu0'", root=tmp_path)


@pytest.mark.skipif(_cuda_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", ["distill", "gradual"])
def test_fp16_training_on_a_cpu_build_is_refused(command, tiny, capsys, tmp_path, no_model_loading):
    argv = _weights_argv(command, tiny["llama"], tiny, tmp_path / "out") + ["--mixed-precision", "fp16"]
    refused(capsys, argv, "fp16 mixed precision needs a CUDA GPU", "--mixed-precision no", root=tmp_path)


# ---- 6. an encoder where a causal LM is needed ------------------------------------------------------------------


@pytest.mark.parametrize("command", ["flop", "distill", "distill-teacher", "gradual"])
def test_training_commands_refuse_an_encoder(command, tiny, capsys, tmp_path, no_model_loading):
    argv = _weights_argv(command, tiny["bert"], tiny, tmp_path / "out")
    refused(capsys, argv, "trains causal LMs on text", "is a bert encoder", "GPT-2 or Llama", root=tmp_path)


def test_eval_refuses_an_encoder_without_a_classifier(tiny, capsys, tmp_path, no_model_loading):
    data = tmp_path / "labelled.jsonl"
    data.write_text('{"text": "a", "label": 1}\n')
    refused(capsys, ["eval", "--model", str(tiny["bert"]), "--data", str(data)], "without a classification head")


# ---- 7. data that is missing, empty or gives no windows ----------------------------------------------------------


def _data_files(root: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the error says)"""
    files = {
        "missing": (root / "nope.txt", None, "not found: "),
        "empty": (root / "empty.txt", b"", "is empty"),
        "blank": (root / "blank.txt", b"\n\n   \n\n", "is empty"),
        "short": (root / "short.txt", b"Only a few words.", "gives 0 sequences of"),
        "bad-jsonl": (root / "bad.jsonl", b'{"text": "a"}\nnot json\n', "bad.jsonl:2 is not a JSON object"),
        "no-text": (root / "notext.jsonl", b'{"body": "a"}\n', 'notext.jsonl:1 has no "text" string field'),
        "binary": (root / "binary.jsonl", b"\xff\xfe\x00garbage", "is not UTF-8 text"),
        "binary-txt": (root / "binary.txt", bytes(range(1, 256)) * 64, "binary.txt is not text (8192 of 16320 "
                                                                          "characters are not UTF-8: a binary file?)"),
    }
    for path, payload, _ in files.values():
        if payload is not None:
            path.write_bytes(payload)
    return {name: (path, message) for name, (path, payload, message) in files.items()}


def _data_argv(command: str, data: Path, tiny: dict[str, Path], out: Path) -> list[str]:
    llama, table = str(tiny["llama"]), str(tiny["table.json"])
    return {
        "prune": ["prune", "--model", llama, "--table", table, "--calib", str(data), "--windows", "2",
                  "--out", str(out)],
        "eval": ["eval", "--model", llama, "--data", str(data), "--seq-len", "16"],
        "distill": ["distill", "--student", llama, "--data", str(data), "--seq-len", "16", "--out", str(out)],
        "distill-eval": ["distill", "--student", llama, "--data", str(tiny["text.txt"]), "--eval-data", str(data),
                         "--seq-len", "16", "--out", str(out)],
        "flop": ["flop", "--model", llama, "--data", str(data), "--target-sparsity", "0.5", "--seq-len", "16",
                 "--out", str(out)],
        "gradual": ["gradual", "--model", llama, "--table", table, "--calib", str(data), "--seq-len", "16",
                    "--out", str(out)],
    }[command]


@pytest.mark.parametrize("kind", ["missing", "empty", "blank", "short", "bad-jsonl", "no-text", "binary", "binary-txt"])
@pytest.mark.parametrize("command", ["prune", "eval", "distill", "distill-eval", "flop", "gradual"])
def test_unusable_data_is_refused_before_loading(command, kind, tiny, capsys, tmp_path, no_model_loading):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    path, message = _data_files(data_dir)[kind]
    # the tokenizer is read before the data (~0.5 s for SmolLM2's): a looser bound, still before any model
    refused(capsys, _data_argv(command, path, tiny, tmp_path / "out"), message, str(path), root=tmp_path)


@pytest.mark.parametrize("line, message", [
    ("not json", "labelled.jsonl:1 needs a 'text' string"), ('["a", 1]', "labelled.jsonl:1 needs a 'text' string"),
    ('{"text": "a", "label": true}', "non-negative integer 'label'"), ('{"text": "a", "label": "1"}', "'label'"),
    ('{"text": "a", "label": -1}', "non-negative integer 'label'"), ("", "has no examples"),
])
def test_eval_refuses_bad_labelled_data(line, message, tiny, capsys, tmp_path, no_model_loading):
    data = tmp_path / "labelled.jsonl"
    data.write_text(line + "\n")
    refused(capsys, ["eval", "--model", str(tiny["bert-cls"]), "--data", str(data)], message, root=tmp_path)


def test_eval_refuses_windows_longer_than_the_positions(tiny, capsys, no_model_loading):
    refused(capsys, ["eval", "--model", str(tiny["gpt2"]), "--data", str(tiny["text.txt"]), "--seq-len", "128"],
            "--seq-len 128 is longer than the 64 positions", "pass --seq-len 64 or less")


# ---- end to end in a fresh process: one line, exit 2, no traceback -------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["prune", "--model", "m", "--table", "t", "--calib", "c", "--out", "o", "--ffn-step", "-5"],
     "argument --ffn-step: must be >= 1, got -5"),
    (["eval", "--model", "{truncated}", "--data", "wikipedia"], "is corrupt or truncated"),
])
def test_a_fresh_process_prints_one_line(argv, message, tiny, tmp_path):
    argv = [a.format(truncated=tiny["truncated"]) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "ziplm_deploy", *argv], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr
    assert not any(tmp_path.iterdir())
