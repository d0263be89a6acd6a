"""Fixtures of the vocabulary-trimming tests: text files and saved tiny models (``tinyvocab``)."""

from __future__ import annotations

import pytest

from tinyvocab import text, tiny_gpt2, tiny_llama, tokenizer


@pytest.fixture(scope="session")
def texts(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab-text")
    (root / "domain.txt").write_text(text(0, 40, 60))
    (root / "heldout.txt").write_text(text(1, 8, 80, extra=3))
    return root


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    """Saved tiny models with the tokenizer: a tied Llama, a GPT-2, a non-uniformly pruned Llama, a BERT."""
    from families import tiny_model

    from ziplm_deploy.core.shape import LayerShape, ModelShape
    from ziplm_deploy.models import apply_shape, save_model

    root = tmp_path_factory.mktemp("vocab-models")
    tok = tokenizer()
    save_model(tiny_llama(), root / "llama", tokenizer=tok)
    save_model(tiny_gpt2(), root / "gpt2", tokenizer=tok)
    full = LayerShape(4, 64, 2)
    pruned = apply_shape(tiny_llama(), ModelShape((LayerShape(2, 48, 1), LayerShape(0, 64, 0), full)))
    save_model(pruned, root / "pruned", tokenizer=tok)
    save_model(tiny_model("bert", layers=2), root / "bert", tokenizer=tok)
    return {p.name: p for p in root.iterdir()}


@pytest.fixture(scope="session")
def trimmed(model_dirs, texts, tmp_path_factory):
    """The pruned tiny Llama trimmed to 99% of the domain's tokens, through the command."""
    from ziplm_deploy.cli import main

    out = tmp_path_factory.mktemp("trimmed") / "pruned-trim"
    assert main(["trim-vocab", "--model", str(model_dirs["pruned"]), "--out", str(out), "--data",
                 str(texts / "domain.txt"), "--coverage", "0.99", "--eval-data", str(texts / "heldout.txt"),
                 "--greedy-tokens", "12"]) == 0
    return out
