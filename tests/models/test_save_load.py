"""Pruned directories reload exactly into the real transformers classes; stock loading fails loudly."""

from __future__ import annotations

import json

import pytest
import torch

from families import PLANS, model_output as _out, tiny_model
from ziplm_deploy import load_model
from ziplm_deploy.core.errors import UserError
from ziplm_deploy.models import LayerPlan, adapter_for, save_model, shrink


def _pruned(family):
    model = tiny_model(family, layers=5)
    shrink(model, PLANS[family][:2] + [LayerPlan(dropped=True)] + PLANS[family][2:])
    return model


def test_round_trip_is_exact(family, tmp_path):
    model = _pruned(family)
    save_model(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["ziplm_shape"]["layers"][2] == {"dropped": True}
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is type(model)  # the real transformers class
    assert adapter_for(loaded).shape_of(loaded) == adapter_for(model).shape_of(model)
    ids = torch.randint(0, 120, (2, 9))
    assert torch.equal(_out(loaded, ids), _out(model, ids))
    if family != "bert":
        a = model.generate(ids[:, :3], max_new_tokens=5, do_sample=False, pad_token_id=0)
        b = loaded.generate(ids[:, :3], max_new_tokens=5, do_sample=False, pad_token_id=0)
        assert torch.equal(a, b)


def test_round_trip_keeps_bf16(tmp_path):
    model = _pruned("llama").to(torch.bfloat16)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("plan", ["sliced", "whole-blocks-only"])
def test_stock_class_refuses_a_pruned_directory(family, plan, tmp_path):
    """Also when no tensor changed shape (only whole blocks and layers removed): stock loading would
    then report 'missing keys' and silently re-initialise them, so it must find no weights at all."""
    model = _pruned(family) if plan == "sliced" else tiny_model(family)
    if plan == "whole-blocks-only":
        shrink(model, [LayerPlan(heads=()), LayerPlan(dropped=True), LayerPlan(ffn=()), LayerPlan()])
    save_model(model, tmp_path / "m")
    with pytest.raises(OSError, match="pruned-model.safetensors|model.safetensors"):
        type(model).from_pretrained(tmp_path / "m")
    assert "ziplm_deploy.load_model" in (tmp_path / "m" / "config.json").read_text()


def test_dense_directory_loads_through_the_stock_path(tmp_path):
    model = tiny_model("gpt2")
    model.save_pretrained(tmp_path / "dense")
    loaded = load_model(tmp_path / "dense")
    ids = torch.randint(0, 120, (1, 6))
    assert torch.equal(_out(loaded, ids), _out(model, ids))


def test_tampered_weights_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    save_model(_pruned("bert"), tmp_path / "m")
    weights = tmp_path / "m" / "pruned-model.safetensors"
    state = load_file(str(weights))
    state.pop(next(k for k in state if "intermediate.dense.weight" in k))
    save_file(state, str(weights))
    with pytest.raises(UserError, match="weights do not match the recorded shape"):
        load_model(tmp_path / "m")


def test_save_is_atomic_and_refuses_to_overwrite(tmp_path):
    model = _pruned("gpt2")
    save_model(model, tmp_path / "m")
    with pytest.raises(UserError, match="already exists"):
        save_model(model, tmp_path / "m")

    class Boom(Exception):
        pass

    def fail(*a, **k):
        raise Boom

    model.save_pretrained = fail
    with pytest.raises(Boom):
        save_model(model, tmp_path / "other")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no partial directory left


def test_missing_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="model directory not found"):
        load_model(tmp_path / "nope")
