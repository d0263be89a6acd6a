"""The README's copy-paste commands for server teams, edge teams and release engineers, executed.

Blocks marked ``<!-- tested -->`` run in order, in one folder that holds a small Llama with its own
tokenizer in ``dense/`` and real text (gensim's Wikipedia dump) in ``train.txt``; ``<!-- tested: no torch -->``
blocks run in a subprocess where importing torch or transformers fails (the edge install);
``<!-- file: NAME -->`` writes the next block to NAME. Every command must exit 0.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from ziplm_deploy.cli import main
from ziplm_deploy.models import save_model

README = Path(__file__).resolve().parents[1] / "README.md"
MARKED = re.compile(r"<!-- (tested|tested: no torch|file: [\w./-]+) -->\n```\w*\n(.*?)```", re.S)


def readme_blocks(text: str) -> list[tuple[str, str]]:
    """(marker, body) of every marked block, in README order."""
    return [(m.group(1), m.group(2)) for m in MARKED.finditer(text)]


def commands(body: str) -> list[list[str]]:
    """Shell lines of a block (continuations joined, comments and blanks dropped) as argv lists."""
    joined = re.sub(r"\\\n\s*", " ", body)
    out = []
    for line in joined.splitlines():
        line = line.split(" #")[0].strip()
        if line and not line.startswith("#"):
            argv = shlex.split(line)
            assert argv[0] == "ziplm-deploy", f"README tested blocks hold ziplm-deploy commands only: {line}"
            out.append(argv[1:])
    return out


def test_marked_blocks_parse():
    blocks = readme_blocks(README.read_text())
    kinds = {kind.split(":")[0] for kind, _ in blocks}
    assert {"tested", "file"} <= kinds and any(kind == "tested: no torch" for kind, _ in blocks)
    assert sum(len(commands(body)) for kind, body in blocks if kind.startswith("tested")) >= 8
    assert commands("ziplm-deploy a --x 1 \\\n   --y 'two words'  # note\n# comment\n") == [["a", "--x", "1", "--y", "two words"]]


def _workspace(root: Path) -> None:
    """dense/: a 4-layer Llama (GQA) whose blocks dominate its latency, with a word-level tokenizer
    trained on the text; train.txt: the first ~200 KB of gensim's Wikipedia dump."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from ziplm_deploy.models.assets import wikipedia_text

    texts, size = [], 0
    for t in wikipedia_text():
        texts.append(t)
        size += len(t)
        if size > 200_000:
            break
    (root / "train.txt").write_text("\n\n".join(texts))
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(vocab_size=512, special_tokens=["[UNK]", "<s>", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=4,
                                         num_attention_heads=8, num_key_value_heads=4, intermediate_size=1024,
                                         max_position_embeddings=256, tie_word_embeddings=True,
                                         bos_token_id=1, eos_token_id=2)).eval()
    save_model(model, root / "dense", tokenizer=tokenizer)


def test_readme_user_commands_run(tmp_path, monkeypatch, no_torch_env):
    _workspace(tmp_path)
    monkeypatch.chdir(tmp_path)
    ran = 0
    for kind, body in readme_blocks(README.read_text()):
        if kind.startswith("file: "):
            (tmp_path / kind[len("file: "):]).write_text(body)
            continue
        for argv in commands(body):
            if kind == "tested: no torch":
                r = subprocess.run([sys.executable, "-m", "ziplm_deploy", *argv], env=no_torch_env, cwd=tmp_path,
                                   capture_output=True, text=True, timeout=600)
                assert r.returncode == 0, (argv, r.stdout[-2000:], r.stderr[-2000:])
            else:
                assert main(argv) == 0, argv
            ran += 1
    assert ran >= 8
    for produced in ("table.json", "run/family-ziplm.json", "run/flop-0.5/manifest.json", "engines/ziplm-2x.onnx",
                     "engines/flop-0.5.onnx", "verify.json", "gate.xml"):
        assert (tmp_path / produced).is_file(), produced
