"""Held-out calibration windows (``prune.data.heldout_calibration_windows``): windows of the same tokenisation
and length as a prune run's ``calibration_windows`` that the run did not draw, so verify can measure quality
on text the model was not calibrated on."""

from __future__ import annotations

import pytest
import torch
from families import word_tokenizer

from ziplm_deploy.core.errors import UserError
from ziplm_deploy.prune.data import (calibration_windows, heldout_calibration_windows, read_texts, sampled_indices,
                                     token_windows)

WORDS = [f"t{i}" for i in range(400)]  # every token distinct (not the fillers w0, w1... of word_tokenizer)


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    """400 distinct words in 8 paragraphs (EOS between them): 408 tokens, 25 windows of 16."""
    path = tmp_path_factory.mktemp("heldout") / "calib.txt"
    path.write_text("\n\n".join(" ".join(WORDS[i:i + 50]) for i in range(0, 400, 50)))
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer(WORDS, 420)


def rows(windows: torch.Tensor) -> list[tuple[int, ...]]:
    return [tuple(r.tolist()) for r in windows]


@pytest.mark.parametrize("used, seed", [(4, 0), (4, 7), (20, 3), (1, 0)])
def test_no_heldout_window_is_a_calibration_window(tokenizer, text, used, seed):
    calib = rows(calibration_windows(tokenizer, text, 16, used, seed))
    every = rows(token_windows(tokenizer, read_texts(text), 16))
    held = rows(heldout_calibration_windows(tokenizer, text, 16, used, seed, max_windows=100))
    assert len(every) == 25 and len(calib) == used and len(set(every)) == 25
    assert not set(held) & set(calib)  # none of them was drawn for calibration
    assert sorted(held + calib) == sorted(every)  # with a large max: every window not drawn, each once
    assert held == [w for w in every if w not in calib]  # in text order


def test_at_most_max_windows_spread_over_the_text_and_deterministic(tokenizer, text):
    held = heldout_calibration_windows(tokenizer, text, 16, 4, 0, max_windows=5)
    assert held.shape == (5, 16) and held.dtype == torch.long
    assert torch.equal(held, heldout_calibration_windows(tokenizer, text, 16, 4, 0, max_windows=5))
    every = rows(token_windows(tokenizer, read_texts(text), 16))
    positions = [every.index(r) for r in rows(held)]
    used = set(sampled_indices(25, 4, 0))
    assert positions == sorted(positions) and not used & set(positions)
    assert positions[0] == min(set(range(25)) - used) and positions[-1] >= 15  # from the start to late in the text


def test_sampled_indices_are_the_calibration_sample(tokenizer, text):
    every = token_windows(tokenizer, read_texts(text), 16)
    assert torch.equal(every[sampled_indices(25, 6, 5)], calibration_windows(tokenizer, text, 16, 6, 5))
    assert sampled_indices(25, None) == sampled_indices(25, 25) == sampled_indices(25, 30) == list(range(25))


def test_none_held_out_or_changed_text_is_a_one_line_error(tokenizer, text, tmp_path):
    with pytest.raises(UserError, match=r"all 25 used for calibration: none is held out"):
        heldout_calibration_windows(tokenizer, text, 16, 25, 0)
    with pytest.raises(UserError, match=r"gives 25 windows of 16 tokens, fewer than the 30 calibration windows"):
        heldout_calibration_windows(tokenizer, text, 16, 30, 0)
    with pytest.raises(UserError, match="calibration data not found"):
        heldout_calibration_windows(tokenizer, tmp_path / "gone.txt", 16, 4, 0)
    with pytest.raises(UserError, match="at least 1 held-out window"):
        heldout_calibration_windows(tokenizer, text, 16, 4, 0, max_windows=0)


def test_binary_files_are_refused_by_both_text_readers(tmp_path):
    """A binary file is not calibration or evaluation text: the torch and the torch-free reader refuse it; a few
    stray bytes in a real text pass."""
    from ziplm_deploy.core.errors import UserError
    from ziplm_deploy.verify.ort_quality import _plain_texts

    blob = tmp_path / "model.bin"
    blob.write_bytes(bytes(range(256)) * 8)
    for read in (read_texts, _plain_texts):
        with pytest.raises(UserError, match=r"model.bin is not text \(1024 of 2048 characters are not UTF-8, and it "
                                            r"has NUL bytes: a binary file\?\)"):
            read(blob)
    text = tmp_path / "mostly.txt"
    text.write_bytes(b"A paragraph of plain words. " * 40 + b"\xff\xfe" + b"\n\nA second paragraph.")
    assert read_texts(text)[1] == "A second paragraph." and len(_plain_texts(text)) == 2


def test_windows_start_with_bos_when_the_tokenizer_starts_texts_with_it(tmp_path, text):
    """Gemma's and Llama 3's tokenizers put BOS before every text (Gemma-3-270m: 19.4 perplexity with it, 33.7
    without); SmolLM2's and GPT-2's do not. Windows follow the tokenizer, the same in PyTorch and ONNX Runtime."""
    import numpy as np
    from tokenizers.processors import TemplateProcessing

    from ziplm_deploy.prune.data import leading_bos
    from ziplm_deploy.verify.ort_quality import text_windows

    plain = word_tokenizer(WORDS, 420)
    assert leading_bos(plain) is None and token_windows(plain, read_texts(text), 16)[0, 0] != 1
    with_bos = word_tokenizer(WORDS, 420)
    with_bos.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    assert with_bos("t5")["input_ids"] == [1, with_bos.convert_tokens_to_ids("t5")]
    assert leading_bos(with_bos) == 1
    windows = token_windows(with_bos, read_texts(text), 16)
    assert windows.shape == (408 // 15, 16) and (windows[:, 0] == 1).all()
    body = token_windows(plain, read_texts(text), 15)  # BOS + 15 tokens of text: the same text, one token less each
    assert torch.equal(windows[:, 1:], body[: len(windows)])
    with_bos.save_pretrained(tmp_path / "tok")
    assert np.array_equal(text_windows(tmp_path / "tok", read_texts(text), 16), windows.numpy())
    assert token_windows(with_bos, read_texts(text), 16, add_bos=False)[0, 0] != 1  # an explicit choice wins


def test_bos_is_found_before_the_text_also_when_the_tokenizer_appends_eos(tmp_path, text):
    """``[BOS, a, EOS]`` (add_eos_token tokenizers) still means BOS first; a token 0 BOS is kept; ``[a, EOS]``
    and an empty encoding mean none; the torch-free reader refuses one-token windows like the other."""
    import numpy as np
    from tokenizers.processors import TemplateProcessing

    from ziplm_deploy.core.checks import bos_before
    from ziplm_deploy.verify.ort_quality import text_windows

    assert bos_before([7], [1, 7, 2]) == 1 and bos_before([7, 8], [0, 7, 8]) == 0
    assert bos_before([7], [7, 2]) is None and bos_before([], [1]) is None and bos_before([7], [7]) is None
    tok = word_tokenizer(WORDS, 420)
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A </s>",
                                                              special_tokens=[("<s>", 1), ("</s>", 2)])
    windows = token_windows(tok, read_texts(text), 16)
    assert (windows[:, 0] == 1).all()
    tok.save_pretrained(tmp_path / "tok")
    assert np.array_equal(text_windows(tmp_path / "tok", read_texts(text), 16), windows.numpy())
    with pytest.raises(UserError, match="sequence length 1 is too short"):
        text_windows(tmp_path / "tok", read_texts(text), 1)
