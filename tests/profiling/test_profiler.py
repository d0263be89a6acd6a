"""The profiler on real ORT sessions with tiny models: every entry measured, calibration exact on the
references, check reports errors; the random shapes are valid and non-uniform."""

from __future__ import annotations

import pytest

from ziplm_deploy.core.arch import arch_from_config
from ziplm_deploy.core.errors import UserError
from ziplm_deploy.core.table import LatencyTable
from ziplm_deploy.profiling.grid import attention_grid, ffn_grid, random_shape
from ziplm_deploy.profiling.profiler import ProfileOptions, check, profile, random_shapes
from ziplm_deploy.runtime.timing import Protocol

FAST = Protocol(warmup=1, rounds=5, recheck=3)
CONFIGS = {
    "bert": dict(model_type="bert", num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                 intermediate_size=64, vocab_size=100),
    "gpt2": dict(model_type="gpt2", n_layer=2, n_embd=32, n_head=4, vocab_size=100),
    "llama": dict(model_type="llama", num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=64, vocab_size=100),
}


@pytest.mark.parametrize("family,kv_len", [("bert", 0), ("gpt2", 0), ("gpt2", 16), ("llama", 16)])
def test_profile_then_check(family, kv_len, tmp_path):
    arch = arch_from_config(CONFIGS[family])
    opts = ProfileOptions(seq=8, decode_kv_len=kv_len, ffn_step=16, protocol=FAST)
    table = profile(arch, opts, progress=False)
    assert [(e.heads, e.kv_heads) for e in table.attention] == attention_grid(arch)
    assert [e.ffn for e in table.ffn] == ffn_grid(arch.ffn, 16) == list(range(0, arch.ffn + 1, 16))
    assert all(e.stats.n == FAST.rounds for e in table.attention + table.ffn)
    assert table.fingerprint.mode == ("decode" if kv_len else "prefill") and table.fingerprint.kv_len == kv_len
    st = table.statistic
    assert table.predict(table.dense_shape()) == pytest.approx(table.references["dense"].get(st))
    assert table.predict(table.removed_shape()) == pytest.approx(table.references["removed"].get(st))
    table.save(tmp_path / "t.json")
    assert LatencyTable.load(tmp_path / "t.json") == table

    report = check(table, random_shapes(arch, 2, seed=3), opts, progress=False, protocol=FAST)
    assert len(report.results) == 2
    assert set(report.to_json()["summary"]) == {"median_abs_latency_error", "max_abs_latency_error",
                                                "median_abs_speedup_error", "max_abs_speedup_error"}
    with pytest.raises(UserError, match="another deployment: threads"):
        check(table, [table.dense_shape()], ProfileOptions(seq=8, decode_kv_len=kv_len, threads=2), progress=False)


@pytest.mark.parametrize("kv_len", [0, 16])
def test_trimmed_heads_are_timed_and_predicted(kv_len, tmp_path):
    """``vocab_step``: one entry per grid point below the vocabulary, the dense head as reference; a shape
    keeping K output tokens is predicted with the trimmed-minus-dense head time; BERT has no head to trim."""
    arch = arch_from_config(CONFIGS["llama"])
    table = profile(arch, ProfileOptions(seq=8, decode_kv_len=kv_len, ffn_step=32, vocab_step=30, protocol=FAST),
                    progress=False)
    assert [e.rows for e in table.head] == [30, 60, 90] and "head" in table.references
    assert table.protocol["vocab_step"] == 30
    dense = table.dense_shape()
    trimmed = type(dense)(dense.layers, vocab=45)
    delta = (table.head_ms(30) + table.head_ms(60)) / 2 - table.references["head"].get(table.statistic)
    assert table.predict(trimmed) == pytest.approx(table.predict(dense) + table.calibration.alpha * delta)
    table.save(tmp_path / "t.json")
    assert LatencyTable.load(tmp_path / "t.json") == table
    with pytest.raises(UserError, match="has no LM head to trim"):
        profile(arch_from_config(CONFIGS["bert"]), ProfileOptions(seq=8, vocab_step=30), progress=False)


def test_the_trimmed_head_graph_computes_what_the_trimmed_head_module_does():
    import numpy as np
    import onnxruntime as ort
    import torch
    from onnx import numpy_helper

    from ziplm_deploy.core.shape import VocabTrim
    from ziplm_deploy.models.vocab import TrimmedHead
    from ziplm_deploy.profiling.blocks import Sizes, head_graph

    arch = arch_from_config(CONFIGS["llama"])
    graph = head_graph(arch, 30, Sizes(1, 8))
    weights = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
    index = weights[next(k for k in weights if k.startswith("vocab_index"))]
    kept = tuple(int(i) for i in np.flatnonzero(index < 30))
    head = TrimmedHead(torch.from_numpy(weights["lm_head.weight"].T.copy()), VocabTrim(arch.vocab, kept))
    x = np.random.default_rng(0).standard_normal((1, 8, arch.hidden)).astype(np.float32)
    got = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        want = head(torch.from_numpy(x)).numpy()
    assert len(kept) == 30 and np.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_last_position_logits_graph_is_the_last_row_of_the_full_one(family):
    """``Sizes.logits`` "last" (generation's prefill): the whole-model graph and the head graph compute exactly
    the last position's row of what the all-positions graphs compute, with a fixed 1 on the logits' axis 1."""
    import numpy as np

    from ziplm_deploy.profiling.blocks import Sizes, head_graph, model_graph
    from ziplm_deploy.runtime import get_backend
    from ziplm_deploy.runtime.feeds import synthetic_feeds

    backend = get_backend("ort-cpu", threads=1)
    arch = arch_from_config(CONFIGS[family])
    full, last = Sizes(1, 8), Sizes(1, 8, logits="last")
    shape = random_shapes(arch, 1, seed=1)[0]
    for make in (lambda s: model_graph(arch, shape, s), lambda s: head_graph(arch, None, s), lambda s: head_graph(arch, 30, s)):
        outs = []
        for sizes in (full, last):
            g = make(sizes)
            session = backend.load(g.SerializeToString())
            outs.append(session.run(synthetic_feeds(session.inputs, sizes.dims, arch.vocab))["logits"])
            session.close()
            assert [d.dim_value or d.dim_param for d in g.graph.output[0].type.tensor_type.shape.dim][1] == (
                1 if sizes.logits == "last" else "seq")
        assert outs[1].shape == (1, 1, arch.vocab)
        np.testing.assert_allclose(outs[1], outs[0][:, -1:], rtol=1e-5, atol=1e-5)


def test_last_position_logits_is_refused_where_it_means_nothing():
    with pytest.raises(UserError, match="a decode step has one position"):
        profile(arch_from_config(CONFIGS["llama"]), ProfileOptions(decode_kv_len=4, logits="last"), progress=False)
    with pytest.raises(UserError, match="has no LM head"):
        profile(arch_from_config(CONFIGS["bert"]), ProfileOptions(seq=8, logits="last"), progress=False)


def test_tables_profiled_together_are_each_a_whole_table():
    """``profile_together``: one interleaved timing run for a prefill and a decode table; each has its own
    entries, references, calibration, re-check and fingerprint, exactly as ``profile`` would give; tables that
    differ in more than their sizes are not profiled together."""
    from ziplm_deploy.core.errors import InternalError
    from ziplm_deploy.profiling.profiler import profile_together

    arch = arch_from_config(CONFIGS["llama"])
    runs = [ProfileOptions(seq=8, ffn_step=32, logits="last", protocol=FAST),
            ProfileOptions(decode_kv_len=12, ffn_step=32, protocol=FAST)]
    prefill, decode = profile_together(arch, runs, progress=False)
    assert (prefill.fingerprint.mode, prefill.fingerprint.seq, prefill.fingerprint.logits) == ("prefill", 8, "last")
    assert (decode.fingerprint.mode, decode.fingerprint.kv_len, decode.fingerprint.logits) == ("decode", 12, "all")
    for table in (prefill, decode):
        assert [(e.heads, e.kv_heads) for e in table.attention] == attention_grid(arch)
        assert all(e.stats.n == FAST.rounds for e in table.attention + table.ffn)
        assert table.predict(table.dense_shape()) == pytest.approx(table.references["dense"].get(table.statistic))
        assert table.references["dense_recheck"].n == FAST.recheck
    assert prefill.references["dense"] != decode.references["dense"]  # each timed its own graphs
    with pytest.raises(InternalError, match="differ in more than their sizes"):
        profile_together(arch, [runs[0], ProfileOptions(decode_kv_len=12, ffn_step=16, protocol=FAST)], progress=False)


def test_bert_has_no_decode():
    with pytest.raises(UserError, match="BERT has no decode mode"):
        profile(arch_from_config(CONFIGS["bert"]), ProfileOptions(decode_kv_len=4), progress=False)


def test_random_shapes_are_valid_and_non_uniform():
    import numpy as np

    arch = arch_from_config(dict(CONFIGS["llama"], num_hidden_layers=12))
    shapes = random_shapes(arch, 5, seed=0)
    for shape in shapes:
        assert shape.validate(arch) == shape
        assert len({(layer.heads, layer.ffn) for layer in shape.layers}) > 1
    assert random_shape(arch, np.random.default_rng(0)) == random_shape(arch, np.random.default_rng(0))
