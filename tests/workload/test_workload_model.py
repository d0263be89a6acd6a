"""Workload presets, parsing and validation; strict JSON; the generation latency model against hand-computed
sums on tables measured by the real profiler (tiny Llama, fast options); manifests and refused mixes."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from workload_helpers import FAST, TINY_LLAMA, WORKLOAD

from ziplm_deploy.core.arch import arch_from_config
from ziplm_deploy.core.errors import UserError
from ziplm_deploy.core.shape import LayerShape, ModelShape
from ziplm_deploy.core.workload import Workload, WorkloadTables, speedups
from ziplm_deploy.profiling.profiler import ProfileOptions, profile

# ---- presets, parsing, validation ---------------------------------------------------------------------------


@pytest.mark.parametrize("text,prompt,generate,name", [
    ("chat", 512, 128, "chat"), (" Chat ", 512, 128, "chat"), ("prefill-128", 128, 0, "prefill-128"),
    ("prefill-7", 7, 0, "prefill-7"), ("256x64", 256, 64, "256x64"), ("128x0", 128, 0, "prefill-128"),
    ("512x128", 512, 128, "chat"), ("1x1", 1, 1, "1x1"),
])
def test_presets_and_specs(text, prompt, generate, name):
    w = Workload.parse(text, batch=3)
    assert (w.prompt, w.generate, w.batch, w.name) == (prompt, generate, 3, name)
    assert Workload.parse(w.name, batch=3) == w


@pytest.mark.parametrize("text,words", [
    ("chatty", "unknown workload 'chatty'"), ("256x", "unknown workload '256x'"), ("-1x4", "unknown workload"),
    ("prefill-", "unknown workload"), ("2.5x4", "unknown workload"), ("", "unknown workload ''"),
    ("0x8", "'0x8': prompt must be between 1"), ("prefill-0", "'prefill-0': prompt must be between 1"),
    ("9999999x1", "got 9999999"), ("\u0663x4", "unknown workload"),  # an Arabic-Indic digit is not a number here
])
def test_bad_specs_name_the_value(text, words):
    with pytest.raises(UserError, match=words) as e:
        Workload.parse(text)
    assert "prefill-S" in str(e.value)  # the hint lists the accepted forms


@pytest.mark.parametrize("args,words", [
    ((0, 4), "prompt must be an integer >= 1, got 0"), ((8, -1), "generate must be an integer >= 0, got -1"),
    ((8, 4, 0), "batch must be an integer >= 1, got 0"), ((True, 4), "prompt must be an integer >= 1, got True"),
    ((8.0, 4), "prompt must be an integer >= 1, got 8.0"), ((8, "4"), "generate must be an integer >= 0, got '4'"),
    ((1 << 20, 1), "longer than"),
])
def test_constructor_refuses_bad_values(args, words):
    with pytest.raises(UserError, match=words):
        Workload(*args)


def test_decode_steps_and_default_grid():
    chat = Workload.parse("chat")
    assert (chat.step_kv_lens[0], chat.step_kv_lens[-1], len(chat.step_kv_lens)) == (512, 638, 127)
    assert chat.default_kv_lens() == (512, 575, 638)
    assert Workload(128, 64).default_kv_lens() == (128, 159, 190)
    assert Workload(8, 5).default_kv_lens(5) == (8, 9, 10, 11)  # fewer than asked when the steps are fewer
    assert Workload(8, 2).default_kv_lens() == (8,)
    for g in (0, 1):
        assert not Workload(8, g).step_kv_lens and Workload(8, g).default_kv_lens() == ()
    with pytest.raises(UserError, match=r"do not cover the decode steps .* \(KV 8\.\.11\)"):
        WORKLOAD.check_kv_lens((9, 11))
    with pytest.raises(UserError, match="no decode tables"):
        WORKLOAD.check_kv_lens(())
    WORKLOAD.check_kv_lens((4, 12))  # wider is fine


def test_workload_json_round_trip():
    w = Workload(300, 20, 4)
    assert Workload.from_json(json.loads(json.dumps(w.to_json()))) == w


@pytest.mark.parametrize("payload,words", [
    ({"prompt": "8", "generate": 4, "batch": 1}, "w.json: workload.prompt must be an integer, got '8'"),
    ({"prompt": 8, "generate": True, "batch": 1}, "workload.generate must be an integer, got True"),
    ({"prompt": 8, "generate": 4.5, "batch": 1}, "workload.generate must be an integer, got 4.5"),
    ({"prompt": 8, "generate": 4, "batch": 0}, "workload.batch must be >= 1, got 0"),
    ({"prompt": 8, "generate": -4, "batch": 1}, "workload.generate must be >= 0"),
    ({"prompt": 8, "generate": 4}, r"missing \['batch'\]"),
    ({"prompt": 8, "generate": 4, "batch": 1, "temperature": 0}, r"unknown \['temperature'\]"),
    ([8, 4, 1], "w.json: workload must be a JSON object"),
])
def test_workload_json_is_strict(payload, words):
    with pytest.raises(UserError, match=words):
        Workload.from_json(payload, "w.json")


# ---- the latency model ------------------------------------------------------------------------------------


def _pruned(arch) -> ModelShape:
    return ModelShape((LayerShape(2, 40, 1), LayerShape(0, 0, 0))).validate(arch)


def test_latency_model_is_the_hand_computed_sum(tiny_tables, tiny_arch):
    prefill, (d8, d9, d11) = tiny_tables.prefill, tiny_tables.decode
    assert tiny_tables.kv_lens == (8, 9, 11)
    assert tiny_tables.decode_weights() == pytest.approx((1.0, 1.5, 1.5))  # KV 10 is half KV 9, half KV 11
    for shape in (ModelShape.dense(tiny_arch), _pruned(tiny_arch)):
        steps = [d8.predict(shape), d9.predict(shape), (d9.predict(shape) + d11.predict(shape)) / 2, d11.predict(shape)]
        p = tiny_tables.predict(shape)
        assert p.ttft_ms == prefill.predict(shape)
        assert p.steps == 4 and p.decode_ms == pytest.approx(sum(steps), rel=1e-12)
        assert p.e2e_ms == pytest.approx(prefill.predict(shape) + sum(steps), rel=1e-12)
        assert p.ms_per_token == pytest.approx(sum(steps) / 4, rel=1e-12)
        assert p.tokens_per_s == pytest.approx(4000.0 / sum(steps), rel=1e-12)
        assert [tiny_tables.step_ms(shape, k) for k in range(8, 12)] == pytest.approx(steps, rel=1e-12)
    dense, pruned = tiny_tables.predict(tiny_tables.dense_shape()), tiny_tables.predict(_pruned(tiny_arch))
    s = speedups(pruned, dense)
    assert s["ttft"] == pytest.approx(prefill.predict(tiny_tables.dense_shape()) / prefill.predict(_pruned(tiny_arch)))
    assert s["decode"] == pytest.approx(pruned.tokens_per_s / dense.tokens_per_s)
    assert s["e2e"] == pytest.approx(dense.e2e_ms / pruned.e2e_ms)
    assert s["ttft"] > 1 and s["decode"] > 1 and s["e2e"] > 1
    with pytest.raises(UserError, match=r"KV length 12 is outside the measured decode tables \[8, 9, 11\]"):
        tiny_tables.step_ms(pruned_shape := _pruned(tiny_arch), 12)
    assert pruned_shape.layers[1].heads == 0


def test_batch_scales_tokens_per_s(tiny_tables):
    from ziplm_deploy.core.workload import WorkloadPrediction

    one, four = WorkloadPrediction(10.0, 8.0, 4, 1), WorkloadPrediction(10.0, 8.0, 4, 4)
    assert (one.ms_per_token, one.tokens_per_s, four.tokens_per_s, one.e2e_ms) == (2.0, 500.0, 2000.0, 18.0)
    assert WorkloadPrediction(10.0, 0.0, 0, 1).to_json() == {"ttft_ms": 10.0, "ms_per_token": None,
                                                              "tokens_per_s": None, "e2e_ms": 10.0, "decode_steps": 0}


def test_a_prefill_table_is_the_prefill_workload(tiny_tables):
    w = WorkloadTables.from_prefill_table(tiny_tables.prefill)
    assert w.workload == Workload(8, 0, 1) and w.workload.name == "prefill-8" and w.decode == ()
    p = w.predict(w.dense_shape())
    assert p.e2e_ms == p.ttft_ms == tiny_tables.prefill.predict(w.dense_shape()) and p.tokens_per_s is None
    with pytest.raises(UserError, match=r"a decode table \(KV 8\) alone has no time to first token"):
        WorkloadTables.from_prefill_table(tiny_tables.decode[0])


# ---- refused mixes ----------------------------------------------------------------------------------------


def _with_fp(table, **changes):
    return replace(table, fingerprint=replace(table.fingerprint, **changes))


def test_tables_of_another_deployment_are_refused(tiny_tables):
    prefill, (d8, d9, d11) = tiny_tables.prefill, tiny_tables.decode
    with pytest.raises(UserError, match=r"different deployments: prefill table vs decode table \(KV 9\): threads: 1 != 2"):
        WorkloadTables(WORKLOAD, prefill, (d8, _with_fp(d9, threads=2), d11))
    with pytest.raises(UserError, match="precision: 'fp32' != 'int8-dynamic'"):
        WorkloadTables(WORKLOAD, prefill, (d8, d9, _with_fp(d11, precision="int8-dynamic")))
    with pytest.raises(UserError, match=r"batch 1, seq 8, but workload 9x4 has batch 1, prompt 9"):
        WorkloadTables(Workload(9, 4), prefill, (d8, d9, d11))
    with pytest.raises(UserError, match=r"decode table \(KV 9\): measured at batch 2"):
        WorkloadTables(WORKLOAD, prefill, (d8, _with_fp(d9, batch=2), d11))
    with pytest.raises(UserError, match="is a decode table, expected prefill"):
        WorkloadTables(WORKLOAD, d8, (d8, d9, d11))
    with pytest.raises(UserError, match=r"a second decode table at KV 9"):
        WorkloadTables(WORKLOAD, prefill, (d8, d9, d9, d11))
    with pytest.raises(UserError, match=r"at KV lengths \[8, 9\] do not cover"):
        WorkloadTables(WORKLOAD, prefill, (d8, d9))
    # a prefill table timing every position's logits over-predicts TTFT: refused
    with pytest.raises(UserError, match=r"prefill table: times the LM head on all 8 prompt positions.*profile --workload"):
        WorkloadTables(WORKLOAD, _with_fp(prefill, logits="all"), (d8, d9, d11))
    assert WorkloadTables.from_prefill_table(_with_fp(prefill, logits="all")).workload.generate == 0  # scoring: fine


def test_tables_of_another_model_are_refused(tiny_tables):
    other = arch_from_config(dict(TINY_LLAMA, intermediate_size=96))
    d11 = profile(other, ProfileOptions(decode_kv_len=11, ffn_step=48, protocol=FAST), progress=False)
    prefill, (d8, d9, _) = tiny_tables.prefill, tiny_tables.decode
    with pytest.raises(UserError, match=r"different models: prefill table vs decode table \(KV 11\): arch ffn: 64 != 96"):
        WorkloadTables(WORKLOAD, prefill, (d8, d9, d11))


# ---- manifest files ---------------------------------------------------------------------------------------


def test_manifest_round_trip(tiny_tables, tmp_path):
    manifest = tiny_tables.save(tmp_path / "set")
    assert manifest == tmp_path / "set" / "workload.json"
    assert sorted(p.name for p in manifest.parent.iterdir()) == [
        "decode_b1_kv11.json", "decode_b1_kv8.json", "decode_b1_kv9.json", "prefill_b1_s8.json", "workload.json"]
    assert WorkloadTables.load(manifest) == tiny_tables == WorkloadTables.load(tmp_path / "set")
    manifest = tiny_tables.save(tmp_path / "chat.json")
    assert (tmp_path / "chat_decode_b1_kv9.json").is_file() and WorkloadTables.load(manifest) == tiny_tables


def _edit(manifest, change):
    payload = json.loads(manifest.read_text())
    change(payload)
    manifest.write_text(json.dumps(payload))


@pytest.mark.parametrize("change,words", [
    (lambda p: p["decode"][1].update(kv_len="9"), r"decode\[1\]\.kv_len must be an integer, got '9'"),
    (lambda p: p["decode"][1].update(kv_len=10), r"decode\[1\]\.kv_len is 10 but its table is a decode table \(KV 9\)"),
    (lambda p: p["workload"].update(prompt=True), "workload.prompt must be an integer, got True"),
    (lambda p: p["workload"].update(prompt=9), r"prefill \(.*prefill_b1_s8\.json\): measured at batch 1, seq 8"),
    (lambda p: p["workload"].update(generate=9), r"do not cover the decode steps of workload 8x9 \(KV 8\.\.15\)"),
    (lambda p: p["prefill"].update(table=3), "prefill.table must be a file name, got 3"),
    (lambda p: p["prefill"].update(sha256="0" * 64), r"prefill\.sha256 does not match"),
    (lambda p: p["decode"][0].update(table="nowhere.json"), r"decode\[0\]\.table: latency table not found"),
    (lambda p: p["decode"].pop(), r"at KV lengths \[8, 9\] do not cover"),
    (lambda p: p.update(decode={}), "decode must be a list"),
    (lambda p: p.update(extra=1), r"unknown \['extra'\]"),
    (lambda p: p.update(version=2), "version 2 is not supported"),
    (lambda p: p["decode"][0].pop("sha256"), r"decode\[0\]: missing \['sha256'\]"),
])
def test_bad_manifests_name_file_and_key(tiny_tables, tmp_path, change, words):
    manifest = tiny_tables.save(tmp_path / "set")
    _edit(manifest, change)
    with pytest.raises(UserError, match=words) as e:
        WorkloadTables.load(manifest)
    assert str(manifest) in str(e.value)


def test_a_changed_table_is_refused(tiny_tables, tmp_path):
    manifest = tiny_tables.save(tmp_path / "set")
    table = manifest.parent / "decode_b1_kv9.json"
    table.write_text(table.read_text() + "\n")
    with pytest.raises(UserError, match=r"decode\[1\]\.sha256 does not match .*decode_b1_kv9\.json"):
        WorkloadTables.load(manifest)
