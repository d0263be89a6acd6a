"""LatencyTable: schema round trip, lookup/interpolation, calibration, merge, refusals."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from ziplm_deploy.core.arch import arch_from_config
from ziplm_deploy.core.errors import UserError
from ziplm_deploy.core.fingerprint import DeviceFingerprint
from ziplm_deploy.core.shape import LayerShape, ModelShape
from ziplm_deploy.core.table import AttentionEntry, FfnEntry, LatencyTable, Stats, fit_two_point
from ziplm_deploy.profiling.grid import attention_grid, ffn_grid

BERT = arch_from_config(dict(model_type="bert", num_hidden_layers=3, hidden_size=64, num_attention_heads=4,
                             intermediate_size=100, vocab_size=1000))
LLAMA = arch_from_config(dict(model_type="llama", num_hidden_layers=2, hidden_size=64, num_attention_heads=6,
                              num_key_value_heads=2, intermediate_size=100, vocab_size=1000))
FP = DeviceFingerprint(cpu="test cpu", cores=2, gpu=None, runtime="onnxruntime", runtime_version="1.0",
                       provider="CPUExecutionProvider", opt_level="all", threads=1, dtype="float32", batch=1, seq=8,
                       mode="prefill", kv_len=0, opset=18, platform="Linux x86_64", producer="ziplm-deploy test")


def s(ms: float, n: int = 10) -> Stats:
    return Stats(ms, ms * 1.1, ms * 1.3, n)


def attn_ms(h: int) -> float:
    return 0.1 if h == 0 else 1.0 + 0.5 * h


def ffn_ms(m: int) -> float:
    return 0.1 if m == 0 else 1.0 + 0.01 * m


def make_table(arch=BERT, step=25, dense=None, removed=None) -> LatencyTable:
    att = [AttentionEntry(h, kv, s(attn_ms(h))) for h, kv in attention_grid(arch)]
    ffn = [FfnEntry(m, s(ffn_ms(m))) for m in ffn_grid(arch.ffn, step)]
    n = arch.num_layers
    dense_sum = n * (attn_ms(arch.heads) + ffn_ms(arch.ffn))
    removed_sum = n * (attn_ms(0) + ffn_ms(0))
    refs = {"dense": s(dense if dense is not None else 2 * dense_sum + 3),
            "removed": s(removed if removed is not None else 2 * removed_sum + 3)}
    return LatencyTable.build(FP, arch, {"statistic": "p25"}, att, ffn, refs)


def test_fit_two_point_passes_through_both_references():
    alpha, beta = fit_two_point(10.0, 23.0, 1.0, 5.0)
    assert alpha * 10 + beta == pytest.approx(23.0) and alpha * 1 + beta == pytest.approx(5.0)
    with pytest.raises(UserError, match="calibration impossible"):
        fit_two_point(1.0, 2.0, 1.0, 1.0)


def test_calibration_and_predict():
    t = make_table()
    assert t.calibration.alpha == pytest.approx(2.0) and t.calibration.beta == pytest.approx(3.0)
    assert t.predict(t.dense_shape()) == pytest.approx(t.references["dense"].p25)
    assert t.predict(t.removed_shape()) == pytest.approx(t.references["removed"].p25)
    shape = ModelShape((LayerShape(2, 50), LayerShape(0, 0), LayerShape(dropped=True)))
    raw = attn_ms(2) + ffn_ms(50) + attn_ms(0) + ffn_ms(0)
    assert t.predict(shape) == pytest.approx(2 * raw + 3)
    assert t.speedup(shape) == pytest.approx(t.predict(t.dense_shape()) / t.predict(shape))


def test_ffn_interpolation_never_uses_the_zero_entry():
    t = make_table(step=25)  # grid 0, 25, 50, 75, 100
    assert t.ffn_ms(50) == pytest.approx(ffn_ms(50))
    assert t.ffn_ms(60) == pytest.approx(ffn_ms(60))  # linear between 50 and 75
    assert t.ffn_ms(10) == pytest.approx(ffn_ms(10))  # extends the 25-50 line, not 0-25
    assert t.ffn_ms(0) == pytest.approx(0.1)
    with pytest.raises(UserError, match="outside"):
        t.ffn_ms(101)


def test_gqa_entries_and_lookup():
    t = make_table(LLAMA)
    pairs = {(e.heads, e.kv_heads) for e in t.attention}
    assert pairs == {(0, 0), (1, 1), (2, 1), (3, 1), (2, 2), (4, 2), (6, 2)}
    shape = ModelShape((LayerShape(4, 30, 2), LayerShape(3, 0, 1)))
    assert t.predict(shape) > t.predict(t.removed_shape())
    with pytest.raises(UserError, match="not divisible"):
        t.predict(ModelShape((LayerShape(3, 30, 2), LayerShape(6, 100, 2))))


def test_json_round_trip(tmp_path):
    t = make_table(LLAMA)
    path = tmp_path / "t.json"
    t.save(path)
    payload = json.loads(path.read_text())
    assert payload["format"] == "ziplm-deploy/latency-table" and payload["version"] == 1
    assert LatencyTable.load(path) == t


@pytest.mark.parametrize("mutate,match", [
    (lambda p: p.update(version=99), "version 99 is not supported"),
    (lambda p: p.update(format="other"), "format is 'other'"),
    (lambda p: p.update(extra=1), "unknown \\['extra'\\]"),
    (lambda p: p["ffn"].pop(0), "0-FFN entries are required"),
    (lambda p: p["fingerprint"].pop("cpu"), "fingerprint has missing \\['cpu'\\]"),
    (lambda p: p["attention"][0].pop("p25"), "bad sample statistics"),
    (lambda p: p["attention"][0].update(speed=1), "must have keys"),
])
def test_load_refuses_broken_files(tmp_path, mutate, match):
    payload = make_table().to_json()
    mutate(payload)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(UserError, match=match):
        LatencyTable.load(path)


def test_refuses_another_model():
    t = make_table()
    other = replace(BERT, hidden=128)
    with pytest.raises(UserError, match="hidden=64.*hidden=128"):
        t.predict(t.dense_shape(), arch=other)
    with pytest.raises(UserError, match="family"):
        t.check_arch(LLAMA)
    with pytest.raises(UserError, match="has 2 layers but the model has 3"):
        t.predict(ModelShape((LayerShape(1, 1), LayerShape(1, 1))))


def test_merge_takes_union_and_refits():
    t = make_table(step=50)  # grid 0, 50, 100
    finer = make_table(step=25)
    finer = replace(finer, ffn=tuple(replace(e, stats=s(e.stats.p25, n=20)) for e in finer.ffn))
    merged = t.merge(finer)
    assert [e.ffn for e in merged.ffn] == [0, 25, 50, 75, 100]
    assert all(e.stats.n == 20 for e in merged.ffn)
    assert merged.predict(merged.dense_shape()) == pytest.approx(t.references["dense"].p25)
    with pytest.raises(UserError, match="different deployments: threads"):
        t.merge(replace(finer, fingerprint=replace(FP, threads=2)))


def _with_ranks(table: LatencyTable) -> LatencyTable:
    """``table`` plus low-rank entries: a factorised Linear costs 0.2 + 0.01 * rank, a dense one 1.0."""
    from ziplm_deploy.core.table import RankEntry

    low = [RankEntry(kind, r, s(0.2 + 0.01 * r)) for kind in ("in", "out") for r in (16, 32, 64)]
    refs = {**table.references, "linear:in": s(1.0), "linear:out": s(1.0)}
    return LatencyTable.build(table.fingerprint, table.arch, table.protocol, list(table.attention),
                              list(table.ffn), refs, low)


def test_flop_ranks_add_the_factorised_minus_dense_linear_time():
    t = _with_ranks(make_table())
    dense = t.dense_shape()
    layers = list(dense.layers)
    layers[1] = replace(layers[1], ranks=(("down", 32), ("up", 24)))
    shape = ModelShape(tuple(layers))
    # down at 32: 0.52 - 1.0; up at 24 (between grid points 16 and 32): 0.44 - 1.0
    delta = (0.52 - 1.0) + (0.44 - 1.0)
    assert t.raw_sum(shape) == pytest.approx(t.raw_sum(dense) + delta)
    assert t.predict(shape) == pytest.approx(t.calibration.alpha * (t.raw_sum(dense) + delta) + t.calibration.beta)
    assert t.speedup(shape) > 1
    assert t.lowrank_ms("in", 8) == pytest.approx(0.28)  # below the grid: the line through 16 and 32
    assert t.lowrank_ms("out", 100) == pytest.approx(1.2)  # above: the line through 32 and 64
    again = LatencyTable.from_json(json.loads(json.dumps(t.to_json())))
    assert again == t and again.predict(shape) == pytest.approx(t.predict(shape))
    # a table without low-rank entries merges them in, with their own dense-Linear references
    merged = make_table().merge(t)
    assert merged.lowrank == t.lowrank and merged.predict(shape) == pytest.approx(t.predict(shape))


def test_flop_ranks_refusals():
    plain = make_table()
    layers = list(plain.dense_shape().layers)
    layers[0] = replace(layers[0], ranks=(("up", 8),))
    with pytest.raises(UserError, match="no low-rank entries"):
        plain.predict(ModelShape(tuple(layers)))
    t = _with_ranks(plain)
    layers[0] = replace(layers[0], ffn=50)
    with pytest.raises(UserError, match="dense FFN width"):
        t.predict(ModelShape(tuple(layers)))
    payload = t.to_json()
    payload["lowrank"][0]["linear"] = "sideways"
    with pytest.raises(UserError, match="bad low-rank entry"):
        LatencyTable.from_json(payload)
    payload = t.to_json()
    payload["lowrank"][0]["rank"] = "many"
    with pytest.raises(UserError, match=r"lowrank\[0\]\.rank must be an integer, got 'many'"):
        LatencyTable.from_json(payload)
    assert "lowrank" not in plain.to_json()  # tables without FLOP entries keep the pre-FLOP format
    payload = t.to_json()
    del payload["references"]["linear:in"]
    with pytest.raises(UserError, match="bad low-rank entry"):
        LatencyTable.from_json(payload)


def _with_heads(table: LatencyTable) -> LatencyTable:
    """``table`` plus trimmed-head entries (1000-token vocabulary): K rows cost 0.5 + 0.002 K ms, the dense head
    3.0 ms."""
    from ziplm_deploy.core.table import HeadEntry

    heads = [HeadEntry(k, s(0.5 + 0.002 * k)) for k in (250, 500, 750)]
    return LatencyTable.build(table.fingerprint, table.arch, table.protocol, list(table.attention), list(table.ffn),
                              {**table.references, "head": s(3.0)}, head=heads)


def test_a_trimmed_vocabulary_adds_the_trimmed_minus_dense_head_time():
    t = _with_heads(make_table(LLAMA))
    dense = t.dense_shape()
    trimmed = ModelShape(dense.layers, vocab=400)  # between 250 and 500: 0.5 + 0.8
    delta = (0.5 + 0.002 * 400) - 3.0
    assert t.raw_sum(trimmed) == pytest.approx(t.raw_sum(dense) + delta)
    assert t.predict(trimmed) == pytest.approx(t.calibration.alpha * (t.raw_sum(dense) + delta) + t.calibration.beta)
    assert t.head_ms(100) == pytest.approx(0.7)  # below the grid: the line through 250 and 500
    assert t.head_ms(1000) == 3.0 and t.predict(ModelShape(dense.layers, vocab=1000)) == t.predict(dense)
    again = LatencyTable.from_json(json.loads(json.dumps(t.to_json())))
    assert again == t and again.predict(trimmed) == pytest.approx(t.predict(trimmed))
    merged = make_table(LLAMA).merge(t)  # head entries come whole, with their own dense-head reference
    assert merged.head == t.head and merged.predict(trimmed) == pytest.approx(t.predict(trimmed))
    assert ModelShape.from_json(json.loads(json.dumps(trimmed.to_json()))) == trimmed


def test_trimmed_vocabulary_refusals():
    plain = make_table(LLAMA)
    with pytest.raises(UserError, match="no LM head entries.*--vocab-step"):
        plain.predict(ModelShape(plain.dense_shape().layers, vocab=400))
    with pytest.raises(UserError, match="keeps 2000 output tokens; the model's vocabulary has 1000"):
        plain.predict(ModelShape(plain.dense_shape().layers, vocab=2000))
    assert "head" not in plain.to_json()  # tables without head entries keep the old format
    t = _with_heads(plain)
    for edit, match in ((lambda p: p["head"].append(dict(p["head"][0])), "two entries with the same rows"),
                        (lambda p: p["head"][0].update(rows=1000), r"head\[0\]\.rows must be"),
                        (lambda p: p["head"][0].update(rows=True), r"head\[0\]\.rows must be an integer"),
                        (lambda p: p["references"].pop("head"), "need references.head")):
        payload = t.to_json()
        edit(payload)
        with pytest.raises(UserError, match=match):
            LatencyTable.from_json(payload)
    for bad in (0, -3, 2.5, True, "many"):
        with pytest.raises(UserError, match="'vocab' must be a positive integer"):
            ModelShape.from_json({**plain.dense_shape().to_json(), "vocab": bad})


def _set(path: tuple, value):
    def mutate(payload):
        target = payload
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


@pytest.mark.parametrize("mutate,match", [
    (_set(("version",), True), "version True is not supported"),
    (_set(("version",), 1.0), "version 1.0 is not supported"),
    (_set(("attention", 1, "p25"), float("nan")), r"attention\[1\]\.p25 must be a finite number, got nan"),
    (_set(("attention", 1, "p25"), float("inf")), r"attention\[1\]\.p25 must be a finite number, got inf"),
    (_set(("ffn", 2, "p50"), -0.5), r"ffn\[2\]\.p50 must be >= 0, got -0.5"),
    (_set(("ffn", 2, "p90"), "1.2"), r"ffn\[2\]\.p90 must be a finite number, got '1.2'"),
    (_set(("ffn", 2, "n"), True), r"ffn\[2\]\.n must be an integer, got True"),
    (_set(("ffn", 2, "n"), 0), r"ffn\[2\]\.n must be >= 1"),
    (_set(("attention", 1, "heads"), 1.5), r"attention\[1\]\.heads must be an integer, got 1.5"),
    (_set(("attention", 1, "heads"), False), r"attention\[1\]\.heads must be an integer, got False"),
    (_set(("ffn", 1, "ffn"), -25), r"ffn\[1\]\.ffn must be >= 0"),
    (_set(("references", "dense", "p25"), float("nan")), r"references\.dense\.p25 must be a finite number"),
    (_set(("references",), []), "references must be a JSON object"),
    (_set(("calibration", "alpha"), float("nan")), "calibration.alpha must be a finite number, got nan"),
    (_set(("calibration", "alpha"), -2.0), "calibration.alpha must be > 0, got -2.0"),
    (_set(("calibration", "beta"), float("nan")), "calibration.beta must be a finite number, got nan"),
    (_set(("calibration", "beta"), -50.0), "calibration.beta is -50.0 but the table's references give 3"),
    (_set(("calibration", "alpha"), 2.5), "calibration.alpha is 2.5 but the table's references give 2"),
    (_set(("calibration",), "fast"), "calibration must be a JSON object"),
    (_set(("arch", "heads"), "4"), "arch.heads must be an integer, got '4'"),
    (_set(("arch", "gated_ffn"), 0), "arch.gated_ffn must be true or false, got 0"),
    (_set(("arch", "norm_eps"), float("nan")), "arch.norm_eps must be a finite number"),
    (_set(("fingerprint", "threads"), True), "fingerprint.threads must be an integer, got True"),
    (_set(("fingerprint", "cpu"), 3), "fingerprint.cpu must be a string, got 3"),
    (_set(("protocol",), ["p25"]), "protocol must be a JSON object"),
])
def test_load_refuses_mistyped_and_non_finite_fields_naming_file_and_key(tmp_path, mutate, match):
    payload = make_table().to_json()
    mutate(payload)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(payload))  # NaN / Infinity as Python's json writes them
    with pytest.raises(UserError, match=match) as err:
        LatencyTable.load(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_table_with_a_negative_fitted_intercept_loads_and_predicts_only_positive_times(tmp_path):
    # real profiles of tiny models fit small negative betas: valid, as long as predictions stay positive
    t = make_table(dense=None, removed=0.5)
    assert t.calibration.beta < 0
    t.save(tmp_path / "t.json")
    loaded = LatencyTable.load(tmp_path / "t.json")
    assert loaded == t and loaded.predict(loaded.removed_shape()) == pytest.approx(0.5)
    tiny = ModelShape((LayerShape(0, 0), LayerShape(dropped=True), LayerShape(dropped=True)))
    with pytest.raises(UserError, match="predicts -?[0-9.e-]+ ms for this shape"):
        loaded.predict(tiny)
