"""``trim-vocab``: the command end to end (model, manifest, quality report), its refusals before any work, and
the quality measures (coverage, impossible tokens counted, KL, top-1, greedy agreement) on known cases."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from tinyvocab import VOCAB, tiny_llama, tokenizer
from ziplm_deploy.cli import main
from ziplm_deploy.core.errors import UserError
from ziplm_deploy.core.manifest import ModelManifest
from ziplm_deploy.core.shape import VOCAB_CONFIG_KEY
from ziplm_deploy.models import adapter_for, load_model
from ziplm_deploy.models.vocab import QUALITY_FILE, VocabQuality, trim_model, vocab_quality
from ziplm_deploy.prune.data import token_windows


def _trim(model_dir, out, *extra):
    return main(["trim-vocab", "--model", str(model_dir), "--out", str(out), *extra])


def test_the_command_writes_a_loadable_model_its_manifest_and_quality(trimmed, model_dirs, texts):
    config = json.loads((trimmed / "config.json").read_text())
    kept = config[VOCAB_CONFIG_KEY]["kept"]
    assert {0, 1, 2} <= set(kept) and len(kept) < 45  # the specials + (at most) the 40 domain words
    assert set(kept) - {0, 1, 2} <= set(range(3, 43))
    model, parent = load_model(trimmed), load_model(model_dirs["pruned"])
    shape, parent_shape = adapter_for(model).shape_of(model), adapter_for(parent).shape_of(parent)
    assert shape.layers == parent_shape.layers and parent_shape.vocab is None and shape.vocab == len(kept)
    manifest = ModelManifest.load(trimmed / "manifest.json")
    assert manifest.method == "trim-vocab" and manifest.metrics["kept_tokens"] == len(kept)
    assert manifest.metrics["domain_coverage"] >= 0.99 and manifest.options["coverage"] == 0.99
    quality = VocabQuality.load(trimmed / QUALITY_FILE)
    assert quality.kept == len(kept) and quality.eval_data == str(texts / "heldout.txt")
    assert 0 < quality.impossible_tokens < 0.2 * quality.tokens  # the held-out text has unseen words
    assert quality.perplexity is None and quality.perplexity_in_set > 0  # out-of-set tokens are counted, not dropped
    assert quality.greedy_prompts == 4 and quality.greedy_tokens == 12


def test_the_command_prints_the_quality(model_dirs, texts, tmp_path, capsys):
    assert _trim(model_dirs["gpt2"], tmp_path / "g", "--data", str(texts / "domain.txt"), "--keep", "20",
                 "--greedy-prompts", "2", "--greedy-tokens", "8", "--eval-windows", "2", "--eval-seq", "32") == 0
    out = capsys.readouterr().out
    assert "output head 96 -> 20 rows" in out and "3 special tokens always kept" in out
    assert "last 4 of 40 texts, not counted" in out  # no --eval-data: held out from --data
    assert "impossible tokens" in out and "top-1 agreement" in out and "2 prompts x 8 tokens" in out
    assert VocabQuality.load(tmp_path / "g" / QUALITY_FILE).tokens == 2 * 31


@pytest.mark.parametrize("argv, words", [
    (["--keep", "0"], ["argument --keep:", ">= 1"]),
    (["--coverage", "0"], ["argument --coverage:", "> 0"]),
    (["--coverage", "1.5"], ["argument --coverage:", "<= 1"]),
    (["--coverage", "nan"], ["argument --coverage:", "finite"]),
    (["--keep", "5", "--coverage", "0.9"], ["not allowed with argument"]),
    ([], ["one of the arguments --keep --coverage is required"]),
    (["--keep", "5", "--eval-seq", "1"], ["argument --eval-seq:"]),
    (["--keep", "5", "--greedy-tokens", "0"], ["argument --greedy-tokens:"]),
])
def test_bad_numbers_are_refused_at_parse_time(argv, words, model_dirs, texts, tmp_path, capsys):
    code = _trim(model_dirs["llama"], tmp_path / "o", "--data", str(texts / "domain.txt"), *argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and all(w in err for w in words), err
    assert not (tmp_path / "o").exists()


@pytest.fixture
def no_model_loading(monkeypatch):
    import ziplm_deploy.models
    import ziplm_deploy.models.io

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was refused")

    monkeypatch.setattr(ziplm_deploy.models, "load_model", forbidden)
    monkeypatch.setattr(ziplm_deploy.models.io, "load_model", forbidden)


@pytest.mark.parametrize("case, words", [
    ("encoder", ["needs a causal LM", "bert encoder"]),
    ("trimmed", ["already has a trimmed output vocabulary"]),
    ("keep-vocab", ["--keep 97 is more than the model's 96 output tokens"]),
    ("keep-specials", ["--keep 2 is fewer than the 3 special tokens"]),
    ("missing-data", ["domain text not found"]),
    ("missing-eval", ["held-out text not found"]),
    ("one-text", ["holds one text", "--eval-data"]),
    ("short-eval", ["held-out text", "gives 0 sequences of 128 tokens"]),
    ("exists", ["already exists"]),
])
def test_bad_inputs_are_refused_before_loading(case, words, model_dirs, texts, trimmed, tmp_path, capsys,
                                               no_model_loading):
    (tmp_path / "one.txt").write_text("w0 w1 w2 w3\n")
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "x").write_text("x")
    model = {"encoder": model_dirs["bert"], "trimmed": trimmed}.get(case, model_dirs["llama"])
    data = {"missing-data": tmp_path / "nope.txt", "one-text": tmp_path / "one.txt"}.get(case, texts / "domain.txt")
    keep = {"keep-vocab": "97", "keep-specials": "2"}.get(case, "10")
    extra = {"missing-eval": ["--eval-data", str(tmp_path / "nope.txt")],
             "short-eval": ["--eval-data", str(tmp_path / "one.txt")]}.get(case, [])
    out = tmp_path / ("exists" if case == "exists" else "o")
    code = _trim(model, out, "--data", str(data), "--keep", keep, *extra)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert all(w in err for w in words), err
    assert case == "exists" or not out.exists()


# --- the measures on known cases ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def windows(texts):
    return token_windows(tokenizer(), [(texts / "heldout.txt").read_text()], 40)[:4]


def test_keeping_every_token_loses_nothing(windows):
    reference = tiny_llama()
    q = vocab_quality(trim_model(copy.deepcopy(reference), range(VOCAB)), reference, windows, [[5, 6, 7]], 10)
    assert q.coverage == 1 and q.impossible_tokens == 0 and q.top1_agreement == 1
    assert q.kl == pytest.approx(0, abs=1e-6) and q.mass_outside == pytest.approx(0, abs=1e-6)
    assert q.perplexity == pytest.approx(q.reference_perplexity, rel=1e-5)
    assert q.greedy_prefix_agreement == q.greedy_step_agreement == 1 and q.greedy_identical == 1


def test_dropped_tokens_are_counted_as_impossible(windows):
    reference = tiny_llama()
    targets = windows[:, 1:].reshape(-1)
    frequent = torch.bincount(targets, minlength=VOCAB).argsort(descending=True)[:6].tolist()
    model = trim_model(copy.deepcopy(reference), frequent)
    q = vocab_quality(model, reference, windows, [windows[0, :5].tolist(), windows[1, :5].tolist()], 10)
    inside = torch.isin(targets, torch.tensor(frequent))
    assert q.tokens == targets.numel() and q.impossible_tokens == int((~inside).sum()) > 0
    assert q.coverage == pytest.approx(inside.float().mean().item())
    assert q.perplexity is None  # infinite: never silently dropped
    with torch.no_grad():  # the in-set perplexity: the trimmed model's distribution renormalised over the kept ids
        logits = reference(input_ids=windows).logits[:, :-1].reshape(targets.numel(), -1)
        logp = torch.log_softmax(logits[:, frequent], -1)
    pos = torch.tensor([frequent.index(t) if t in frequent else 0 for t in targets.tolist()])
    want = torch.exp(-logp[torch.arange(targets.numel()), pos][inside].mean()).item()
    assert q.perplexity_in_set == pytest.approx(want, rel=1e-4)
    with torch.no_grad():  # a dense trim keeps the kept logits: KL(trimmed || untrimmed) = -log P_untrimmed(kept set)
        p_kept = torch.softmax(reference(input_ids=windows).logits[:, :-1], -1)[..., frequent].sum(-1)
    assert q.kl == pytest.approx(-p_kept.log().mean().item(), rel=1e-4)
    assert q.mass_outside == pytest.approx(1 - p_kept.mean().item(), rel=1e-4) and 0 < q.mass_outside < 1
    assert q.top1_agreement < 1 and q.greedy_step_agreement <= 1


def test_the_quality_report_is_strict_json(trimmed, tmp_path):
    path = trimmed / QUALITY_FILE
    q = VocabQuality.load(path)
    assert VocabQuality.from_json(json.loads(json.dumps(q.to_json()))) == q
    for edit, message in ((lambda d: d.update(coverage=1.5), "coverage must be <= 1"),
                          (lambda d: d.update(kept=True), "kept must be an integer"),
                          (lambda d: d.update(kl=None), "kl must be a finite number"),
                          (lambda d: d.pop("tokens"), r"missing keys \['tokens'\]"),
                          (lambda d: d.update(extra=1), r"unknown keys \['extra'\]")):
        payload = json.loads(path.read_text())
        edit(payload)
        (tmp_path / "q.json").write_text(json.dumps(payload))
        with pytest.raises(UserError, match=message):
            VocabQuality.load(tmp_path / "q.json")


def test_a_trimmed_model_is_refused_by_prune_and_by_flop_with_a_table_that_cannot_predict_it(
        model_dirs, texts, tmp_path, capsys, monkeypatch):
    """Trim after pruning: prune refuses a trimmed model (its shapes would leave the trimmed head out); flop
    with a table that has no LM head entries is refused before training, not after it."""
    from families import linear_table

    from ziplm_deploy.cli import main

    trimmed = tmp_path / "trimmed"
    assert _trim(model_dirs["llama"], trimmed, "--data", str(texts / "domain.txt"), "--keep", "20") == 0
    linear_table(model_dirs["llama"], tmp_path / "table.json")
    from ziplm_deploy.core.table import LatencyTable, RankEntry, Stats

    t, st = LatencyTable.load(tmp_path / "table.json"), Stats(0.1, 0.1, 0.1, 5)  # + low-rank entries, for flop
    LatencyTable.build(t.fingerprint, t.arch, t.protocol, list(t.attention), list(t.ffn),
                       {**t.references, "linear:in": st, "linear:out": st},
                       [RankEntry(k, 8, st) for k in ("in", "out")]).save(tmp_path / "table.json")
    import ziplm_deploy.models
    import ziplm_deploy.models.io

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was refused")

    monkeypatch.setattr(ziplm_deploy.models, "load_model", forbidden)
    monkeypatch.setattr(ziplm_deploy.models.io, "load_model", forbidden)
    capsys.readouterr()
    for argv, words in (
        (["prune", "--model", str(trimmed), "--table", str(tmp_path / "table.json"), "--calib", str(texts / "domain.txt"),
          "--seq-len", "16", "--windows", "2", "--out", str(tmp_path / "p")],
         "no LM head entries, needed for a model with a trimmed vocabulary"),
        (["flop", "--model", str(trimmed), "--table", str(tmp_path / "table.json"), "--data", str(texts / "domain.txt"),
          "--seq-len", "16", "--target-sparsity", "0.5", "--out", str(tmp_path / "f")],
         "no LM head entries, needed for a model with a trimmed vocabulary"),
    ):
        assert main(argv) == 2, argv[0]
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and words in err, err
    assert not (tmp_path / "p").exists() and not (tmp_path / "f").exists()


def test_prune_on_a_trimmed_model_budgets_with_its_head_and_keeps_it(model_dirs, texts, tmp_path):
    """trim-vocab first, then prune: the head's saving counts toward each total target (over the untrimmed
    dense model), the search prunes blocks only for the rest, and every member keeps the trimmed head."""
    from families import linear_table

    from ziplm_deploy.cli import main
    from ziplm_deploy.core.shape import ModelShape
    from ziplm_deploy.core.table import HeadEntry, LatencyTable, Stats
    from ziplm_deploy.models import adapter_for, load_model

    trimmed = tmp_path / "trimmed"
    assert _trim(model_dirs["llama"], trimmed, "--data", str(texts / "domain.txt"), "--keep", "24") == 0
    linear_table(model_dirs["llama"], tmp_path / "table.json")
    t = LatencyTable.load(tmp_path / "table.json")

    def st(ms):
        return Stats(ms, ms, ms, 5)

    dense_ms = t.predict(t.dense_shape())  # a head that is a third of the model: 24 of 96 rows saves three quarters of it
    head = dense_ms / 3
    table = LatencyTable.build(t.fingerprint, t.arch, t.protocol, list(t.attention), list(t.ffn),
                               {**t.references, "dense": st(dense_ms), "head": st(head)},
                               head=[HeadEntry(k, st(head * k / t.arch.vocab)) for k in (16, 32, 48, 64, 80)])
    table.save(tmp_path / "table.json")
    trimmed_dense = table.predict(ModelShape(table.dense_shape().layers, vocab=24))
    assert trimmed_dense < dense_ms
    out = tmp_path / "family"
    assert main(["prune", "--model", str(trimmed), "--table", str(tmp_path / "table.json"), "--calib",
                 str(texts / "domain.txt"), "--seq-len", "16", "--windows", "4", "--targets", "1.2", "2",
                 "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "family-ziplm.json").read_text())
    light, strong = report["members"]
    for member in (light, strong):
        shape = ModelShape.from_json(member["shape"])
        assert shape.vocab == 24
        assert member["predicted_ms"] == pytest.approx(table.predict(shape), rel=1e-4)
        assert member["predicted_speedup"] >= member["target"] * 0.99  # a total speedup over the untrimmed dense
        model = load_model(member["path"])
        assert adapter_for(model).shape_of(model) == shape
    assert dense_ms / trimmed_dense > 1.2  # the trimmed head alone reaches 1.2x: no block needs to go
    assert ModelShape.from_json(light["shape"]).layers == table.dense_shape().layers
    assert ModelShape.from_json(strong["shape"]).layers != table.dense_shape().layers
