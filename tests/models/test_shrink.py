"""Physical shrink == masked reference; incremental decoding == full forward; dtype kept."""

from __future__ import annotations

import copy

import pytest
import torch

from families import GQA, PLANS, masked_reference, model_output as _out, tiny_model
from ziplm_deploy.core.errors import UserError
from ziplm_deploy.core.shape import LayerShape, ModelShape
from ziplm_deploy.models import LayerPlan, adapter_for, apply_shape, shrink

@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_pruned_equals_masked_reference(family, attn):
    model = tiny_model(family)
    model.config._attn_implementation = attn
    plan = PLANS[family]
    ref = masked_reference(model, plan)
    shrink(model, plan)
    ids = torch.randint(0, 120, (2, 11))
    assert torch.allclose(_out(model, ids), _out(ref, ids), atol=1e-5, rtol=0)
    got = adapter_for(model).shape_of(model)
    heads = [0 if p.heads == () else (len(p.heads) if p.heads else None) for p in plan]
    assert [s.heads for s in got.layers] == [h if h is not None else 4 + 2 * (family in GQA) for h in heads]
    assert got.layers[1].ffn == 0


def test_sequence_classification_head_survives_shrink():
    model = tiny_model("bert-cls")
    ref = masked_reference(model, PLANS["bert"])
    shrink(model, PLANS["bert"])
    ids = torch.randint(0, 120, (3, 9))
    assert _out(model, ids).shape == (3, 3)
    assert torch.allclose(_out(model, ids), _out(ref, ids), atol=1e-5)


def _skip_layers(model, dropped):
    """Reference for dropped layers: the layer returns its input unchanged."""
    ref = copy.deepcopy(model)
    for i in dropped:
        adapter_for(ref).layers(ref)[i].register_forward_hook(lambda mod, args, kwargs, out: args[0] if args else kwargs["hidden_states"], with_kwargs=True)
    return ref


def test_dropped_layers_equal_skipped_layers(family):
    model = tiny_model(family, layers=5)
    ref = _skip_layers(model, [0, 3])
    shrink(model, [LayerPlan(dropped=True), LayerPlan(), LayerPlan(), LayerPlan(dropped=True), LayerPlan()])
    assert len(adapter_for(model).layers(model)) == 3 and model.config.num_hidden_layers == 3
    shape = adapter_for(model).shape_of(model)
    assert [s.dropped for s in shape.layers] == [True, False, False, True, False]
    ids = torch.randint(0, 120, (2, 10))
    assert torch.allclose(_out(model, ids), _out(ref, ids), atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_incremental_decoding_matches_full_forward(family):
    """Layer 0 dropped and the next layer without attention: positions must come from a real cache slot."""
    from transformers import DynamicCache

    model = tiny_model(family, layers=5)
    heads = PLANS[family][3].heads
    shrink(model, [LayerPlan(dropped=True), LayerPlan(heads=()), LayerPlan(heads=heads, ffn=(0, 1, 2)),
                   LayerPlan(dropped=True), LayerPlan()])
    ids = torch.randint(0, 120, (2, 12))
    full = _out(model, ids)
    cache = DynamicCache()
    with torch.no_grad():
        out = model(input_ids=ids[:, :5], past_key_values=cache, use_cache=True)
        steps = [out.logits]
        for t in range(5, 12):
            out = model(input_ids=ids[:, t : t + 1], past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits)
    assert cache.get_seq_length() == 12
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)
    # generate() uses the same cache path
    gen = model.generate(ids[:, :4], max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert gen.shape == (2, 10)


def test_shrink_keeps_dtype_and_requires_grad(family):
    model = tiny_model(family).to(torch.bfloat16)
    apply_shape(model, ModelShape(tuple(
        LayerShape(2, 16, 1 if family in GQA else None) for _ in range(4))))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert all(p.requires_grad for p in model.parameters())


def test_apply_shape_takes_the_largest_heads_and_neurons():
    model = tiny_model("llama")
    adapter = adapter_for(model)
    layer = adapter.layers(model)[0]
    with torch.no_grad():  # make group 2 (heads 4, 5) and neuron 7 dominant
        layer.self_attn.o_proj.weight[:, 32:48] *= 100
        layer.mlp.down_proj.weight[:, 7] *= 100
    apply_shape(model, ModelShape((LayerShape(2, 1, 1),) + (LayerShape(6, 80, 3),) * 3))
    ref_layer = adapter_for(tiny_model("llama")).layers(tiny_model("llama"))[0]
    kept = adapter.layers(model)[0]
    assert torch.equal(kept.self_attn.k_proj.weight, ref_layer.self_attn.k_proj.weight[16:24])
    assert torch.equal(kept.mlp.up_proj.weight[0], ref_layer.mlp.up_proj.weight[7])


def test_shrinking_twice_composes(family):
    model = tiny_model(family)
    apply_shape(model, ModelShape(tuple(LayerShape(4 if family in GQA else 3, 40, 2 if family in GQA else None)
                                        for _ in range(4))))
    small = ModelShape(tuple(LayerShape(2, 20, 1 if family in GQA else None) for _ in range(4)))
    apply_shape(model, small)
    assert adapter_for(model).shape_of(model) == small
    assert _out(model, torch.randint(0, 120, (1, 5))).isfinite().all()


def test_bad_plans_are_user_errors():
    model = tiny_model("llama")
    with pytest.raises(UserError, match="KV groups unevenly"):
        shrink(model, [LayerPlan(heads=(0, 1, 2))] + [LayerPlan()] * 3)
    with pytest.raises(UserError, match="distinct and in"):
        shrink(tiny_model("gpt2"), [LayerPlan(heads=(0, 9))] + [LayerPlan()] * 3)
    with pytest.raises(UserError, match="plan has 2 layers"):
        shrink(tiny_model("bert"), [LayerPlan()] * 2)
    with pytest.raises(UserError, match="drops every layer"):
        shrink(tiny_model("bert"), [LayerPlan(dropped=True)] * 4)


@pytest.mark.parametrize("family", ["qwen2", "mistral", "qwen3"])
def test_llama_layout_families_shrink_and_decode(family):
    from transformers import DynamicCache

    model = tiny_model(family, layers=5)
    plan = [LayerPlan(dropped=True), LayerPlan(heads=()), LayerPlan(heads=(2, 3), ffn=(0, 4, 9)),
            LayerPlan(heads=(0, 1, 4, 5)), LayerPlan()]
    ref = masked_reference(model, [LayerPlan() if p.dropped else p for p in plan])
    adapter_for(ref).layers(ref)[0].register_forward_hook(lambda m, a, k, o: a[0] if a else k["hidden_states"],
                                                          with_kwargs=True)
    shrink(model, plan)
    ids = torch.randint(0, 120, (2, 9))
    full = _out(model, ids)
    assert torch.allclose(full, _out(ref, ids), atol=1e-5)
    with torch.no_grad():
        out = model(input_ids=ids[:, :4], past_key_values=DynamicCache(), use_cache=True)
        steps = [out.logits]
        for t in range(4, 9):
            out = model(input_ids=ids[:, t : t + 1], past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits)
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)
