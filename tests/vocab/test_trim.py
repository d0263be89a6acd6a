"""A trimmed LM head: K rows, logits over the whole vocabulary (the rest max - 128), rebuilt by load_model in
the real transformers class, untied from the embeddings, combined with pruned shapes; token selection."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from tinyvocab import VOCAB, tiny_gpt2, tiny_llama
from ziplm_deploy.core.errors import UserError
from ziplm_deploy.core.shape import VOCAB_CONFIG_KEY, LayerShape, ModelShape, VocabTrim
from ziplm_deploy.models import adapter_for, apply_shape, load_model, save_model
from ziplm_deploy.models.vocab import TrimmedHead, count_tokens, select_tokens, trim_model, vocab_trim_of

KEPT = [0, 1, 2, 5, 8, 13, 21, 34, 55, 89]
BUILD = {"llama": tiny_llama, "gpt2": tiny_gpt2}


@pytest.mark.parametrize("family", BUILD)
def test_kept_logits_are_the_untrimmed_ones_and_the_rest_can_never_be_generated(family):
    reference = BUILD[family]()
    model = trim_model(copy.deepcopy(reference), KEPT)
    ids = torch.randint(0, VOCAB, (3, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = model(input_ids=ids).logits, reference(input_ids=ids).logits
    assert got.shape == want.shape == (3, 11, VOCAB)
    torch.testing.assert_close(got[..., KEPT], want[..., KEPT], rtol=1e-5, atol=1e-5)
    dropped = [i for i in range(VOCAB) if i not in KEPT]
    fill = got[..., KEPT].amax(-1, keepdim=True) - 128
    torch.testing.assert_close(got[..., dropped], fill.expand(-1, -1, len(dropped)))
    assert torch.isfinite(got).all()
    assert torch.softmax(got, -1)[..., dropped].max() == 0  # exactly: exp(-128) underflows in fp32
    assert torch.softmax(got.half(), -1)[..., dropped].max() == 0
    sampled = model.generate(ids[:1, :4], do_sample=True, top_k=0, temperature=1.0, max_new_tokens=30,
                             pad_token_id=2, eos_token_id=None)[0, 4:]
    assert set(sampled.tolist()) <= set(KEPT)
    assert vocab_trim_of(model) == VocabTrim(VOCAB, tuple(KEPT)) and vocab_trim_of(reference) is None


@pytest.mark.parametrize("family", BUILD)
def test_round_trip_rebuilds_the_real_class_with_an_untied_head(family, tmp_path):
    reference = BUILD[family]()
    assert reference.config.tie_word_embeddings
    model = trim_model(copy.deepcopy(reference), KEPT)
    save_model(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config[VOCAB_CONFIG_KEY]["kept"] == KEPT and config["tie_word_embeddings"] is False
    assert "ziplm_deploy.load_model" in config["ziplm_note"]
    with pytest.raises(OSError):  # the stock loader finds no weights rather than a K-row head in a V-row Linear
        type(reference).from_pretrained(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is type(reference) and isinstance(loaded.get_output_embeddings(), TrimmedHead)
    head, embed = loaded.get_output_embeddings().weight, loaded.get_input_embeddings().weight
    assert head.shape == (len(KEPT), embed.shape[1]) and embed.shape[0] == VOCAB  # input embeddings stay whole
    assert head.data_ptr() != embed.data_ptr()
    torch.testing.assert_close(head, embed[KEPT])  # the untied head is a copy of the embedding rows
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    a = model.generate(ids[:, :3], max_new_tokens=8, do_sample=False, pad_token_id=2)
    assert torch.equal(loaded.generate(ids[:, :3], max_new_tokens=8, do_sample=False, pad_token_id=2), a)
    assert set(a[:, 3:].flatten().tolist()) <= set(KEPT)
    save_model(loaded, tmp_path / "again")  # re-saving a loaded trimmed model keeps the head
    assert torch.equal(load_model(tmp_path / "again").get_output_embeddings().weight, head)


def test_a_pruned_model_keeps_its_shape_and_gets_the_trimmed_head(tmp_path):
    shape = ModelShape((LayerShape(2, 48, 1), LayerShape(dropped=True), LayerShape(4, 0, 2)))
    pruned = apply_shape(tiny_llama(), shape)
    model = trim_model(copy.deepcopy(pruned), KEPT)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert adapter_for(loaded).shape_of(loaded) == ModelShape(shape.layers, vocab=len(KEPT))  # layers kept, K tokens
    ids = torch.randint(0, VOCAB, (2, 7))
    with torch.no_grad():
        got, want = loaded(input_ids=ids).logits, pruned(input_ids=ids).logits
    torch.testing.assert_close(got[..., KEPT], want[..., KEPT], rtol=1e-5, atol=1e-5)


def test_trimming_refuses_an_encoder_and_a_trimmed_head():
    from families import tiny_model

    with pytest.raises(UserError, match="encoder"):
        trim_model(tiny_model("bert"), KEPT)
    with pytest.raises(UserError, match="already trimmed"):
        trim_model(trim_model(tiny_llama(), KEPT), KEPT)
    with pytest.raises(UserError, match=r"must be in \[0, 96\) .* got \[3, 200\]"):
        trim_model(tiny_llama(), [3, 200])


@pytest.mark.parametrize("edit, message", [
    (lambda c: c[VOCAB_CONFIG_KEY].update(kept=[0, 5, 5]), r"ziplm_vocab: kept\[2\] = 5 is not above kept\[1\]"),
    (lambda c: c[VOCAB_CONFIG_KEY].update(kept=[0, "5"]), r"ziplm_vocab: kept\[1\] must be an integer"),
    (lambda c: c[VOCAB_CONFIG_KEY].update(vocab_size=100), r"ziplm_vocab: vocab_size 100 differs from the model's 96"),
    (lambda c: c[VOCAB_CONFIG_KEY].update(fill_margin=float("nan")), r"ziplm_vocab: fill_margin must be a finite"),
    (lambda c: c[VOCAB_CONFIG_KEY].update(extra=1), r"ziplm_vocab: unknown key\(s\) \['extra'\]"),
    (lambda c: c.update(tie_word_embeddings=True), r"tie_word_embeddings is true but the LM head is trimmed"),
    (lambda c: c[VOCAB_CONFIG_KEY].update(kept=KEPT[:-1]), r"weights do not match the recorded shape"),
], ids=["duplicate", "string", "vocab", "nan-margin", "unknown", "tied", "rows"])
def test_a_tampered_record_names_the_file_and_key(tmp_path, edit, message):
    save_model(trim_model(tiny_llama(), KEPT), tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    with pytest.raises(UserError, match=message) as info:
        load_model(tmp_path / "m")
    assert "\n" not in str(info.value)
    if "ziplm_vocab:" in message:
        assert str(path) in str(info.value)


# --- selection ---------------------------------------------------------------------------------------------
def test_count_tokens_counts_every_occurrence():
    from tinyvocab import tokenizer

    counts = count_tokens(tokenizer(), ["w0 w1 w0", "w0 zzz"], VOCAB)
    assert counts[3] == 3 and counts[4] == 1 and counts[0] == 1 and counts.sum() == 5  # zzz -> [UNK] (0)


def test_select_by_count_keeps_specials_then_the_most_frequent_ties_by_id():
    counts = np.array([0, 0, 0, 50, 10, 10, 30, 0, 5, 0])
    sel = select_tokens(counts, specials=[0, 2], keep=5)
    assert sel.kept == (0, 2, 3, 4, 6) and sel.coverage == pytest.approx(90 / 105)  # 4 beats 5 on the tie
    assert sel.counted == 105 and sel.distinct == 5 and sel.specials == 2
    assert select_tokens(counts, specials=[0, 2], keep=10).kept == tuple(range(10))


@pytest.mark.parametrize("coverage, kept", [(0.4, (1, 3)), (50 / 105, (1, 3)), (0.5, (1, 3, 6)),
                                            (0.96, (1, 3, 4, 5, 6, 8)), (1.0, (1, 3, 4, 5, 6, 8))])
def test_select_by_coverage_takes_the_fewest_tokens_that_reach_it(coverage, kept):
    counts = np.array([0, 0, 0, 50, 10, 10, 30, 0, 5, 0])
    sel = select_tokens(counts, specials=[1], coverage=coverage)
    assert sel.kept == kept and sel.coverage >= coverage - 1e-12


@pytest.mark.parametrize("kwargs, message", [
    ({"keep": 1}, r"--keep 1 is fewer than the 2 special tokens"),
    ({"keep": 11}, r"--keep 11 is more than the model's 10"),
    ({"keep": 3, "coverage": 0.5}, "exactly one"), ({}, "exactly one"),
])
def test_selection_refuses_impossible_sizes(kwargs, message):
    with pytest.raises(UserError, match=message):
        select_tokens(np.arange(10), specials=[0, 2], **kwargs)


def test_apply_shape_does_not_trim_the_vocabulary():
    """A shape's ``vocab`` is a record of what trim-vocab did; applying it to an untrimmed model is refused, and
    to a model trimmed to as many tokens it is a no-op on the head."""
    from ziplm_deploy.core.errors import UserError

    dense = tiny_llama()
    layers = adapter_for(dense).shape_of(dense).layers
    with pytest.raises(UserError, match=f"keeps {len(KEPT)} output tokens; the model has its whole vocabulary"):
        apply_shape(copy.deepcopy(dense), ModelShape(layers, vocab=len(KEPT)))
    trimmed = trim_model(copy.deepcopy(dense), KEPT)
    again = apply_shape(trimmed, ModelShape(layers, vocab=len(KEPT)))
    assert adapter_for(again).shape_of(again).vocab == len(KEPT)
    with pytest.raises(UserError, match=f"keeps 3 output tokens; the model has {len(KEPT)} kept tokens"):
        apply_shape(trimmed, ModelShape(layers, vocab=3))


def test_always_kept_tokens_are_the_specials_and_chat_markers_not_reserved_placeholders():
    """Gemma declares 6,242 ``<unusedN>`` tokens; kept, they would be most of a trimmed head's rows."""
    from tinyvocab import tokenizer

    from ziplm_deploy.models.vocab import special_ids

    tok = tokenizer()
    tok.add_tokens(["<start_of_turn>", "<end_of_turn>", "<unused0>", "<unused17>", "[unused3]",
                    "<|reserved_special_token_4|>"], special_tokens=True)
    kept = tok.convert_ids_to_tokens(special_ids(tok, len(tok), {"eos_token_id": 2}))
    assert kept == ["[UNK]", "<s>", "</s>", "<start_of_turn>", "<end_of_turn>"]
