import json

import pytest

from ziplm_deploy.core.arch import arch_from_config
from ziplm_deploy.core.errors import UserError
from ziplm_deploy.core.shape import LayerShape, ModelShape

LLAMA = {"model_type": "llama", "num_hidden_layers": 3, "hidden_size": 48, "num_attention_heads": 6,
         "num_key_value_heads": 3, "head_dim": 8, "intermediate_size": 80, "vocab_size": 120}
BERT = {"model_type": "bert", "num_hidden_layers": 2, "hidden_size": 48, "num_attention_heads": 4,
        "intermediate_size": 96, "vocab_size": 120}


def test_json_round_trip_keeps_every_field(tmp_path):
    shape = ModelShape((LayerShape(4, 80, 2), LayerShape(0, 0, 0), LayerShape(dropped=True)))
    path = tmp_path / "shape.json"
    shape.save(path)
    payload = json.loads(path.read_text())
    assert payload["format"] == "ziplm-deploy/shape" and payload["version"] == 1
    assert payload["layers"][2] == {"dropped": True}
    assert ModelShape.load(path) == shape


def test_contract_example_parses():
    payload = {"format": "ziplm-deploy/shape", "version": 1, "layers": [{"heads": 12, "ffn": 3072}, {"dropped": True}]}
    shape = ModelShape.from_json(payload)
    assert shape.layers[0] == LayerShape(12, 3072) and shape.layers[1].dropped
    assert shape.kept_layers == [0]


@pytest.mark.parametrize("payload, message", [
    ({"format": "other", "version": 1, "layers": []}, "format is 'other'"),
    ({"format": "ziplm-deploy/shape", "version": 9, "layers": [{"heads": 1, "ffn": 1}]}, "version 9 is not supported"),
    ({"format": "ziplm-deploy/shape", "version": 1, "layers": []}, "non-empty list"),
    ({"format": "ziplm-deploy/shape", "version": 1, "layers": [{"heads": -1, "ffn": 3}]}, "non-negative integer"),
    ({"format": "ziplm-deploy/shape", "version": 1, "layers": [{"heads": 2}]}, "missing 'ffn'"),
    ({"format": "ziplm-deploy/shape", "version": 1, "layers": [{"heads": 2, "ffn": 3, "hedas": 1}]}, "unknown key"),
])
def test_invalid_shape_files_are_rejected_with_the_reason(payload, message):
    with pytest.raises(UserError, match=message):
        ModelShape.from_json(payload)


def test_not_json_is_a_user_error(tmp_path):
    bad = tmp_path / "s.json"
    bad.write_text("{heads: 3")
    with pytest.raises(UserError, match="not valid JSON"):
        ModelShape.load(bad)


@pytest.mark.parametrize("layers, message", [
    ([LayerShape(6, 80)] * 2, "has 2 layers but the model has 3"),
    ([LayerShape(7, 80)] * 3, "asks for 7 heads; the model has 6"),
    ([LayerShape(6, 81)] * 3, "asks for ffn 81"),
    ([LayerShape(3, 80, 2)] * 3, "not divisible across 2 kept KV groups"),
    ([LayerShape(6, 80, 1)] * 3, "6 query heads per KV group; the model has 2"),
    ([LayerShape(0, 80, 1)] * 3, "both must be 0"),
    ([LayerShape(dropped=True)] * 3, "drops every layer"),
])
def test_validation_against_a_gqa_model(layers, message):
    arch = arch_from_config(LLAMA)
    with pytest.raises(UserError, match=message):
        ModelShape(tuple(layers)).validate(arch)


def test_validation_infers_kv_heads_and_rejects_kv_on_non_gqa():
    arch = arch_from_config(LLAMA)
    shape = ModelShape((LayerShape(4, 80), LayerShape(2, 0), LayerShape(0, 10))).validate(arch)
    assert [s.kv for s in shape.layers] == [2, 1, 0]
    with pytest.raises(UserError, match="has no GQA"):
        ModelShape((LayerShape(2, 96, 1), LayerShape(4, 96))).validate(arch_from_config(BERT))


def test_unknown_architecture_is_named():
    with pytest.raises(UserError, match="unsupported architecture model_type='t5'"):
        arch_from_config({"model_type": "t5"})


def test_flop_ranks_round_trip_and_validation():
    payload = {"format": "ziplm-deploy/shape", "version": 1,
               "layers": [{"heads": 6, "ffn": 80, "ranks": {"up": 20, "gate": 7, "down": 48}}, {"dropped": True},
                          {"heads": 6, "ffn": 80}]}
    shape = ModelShape.from_json(payload).validate(arch_from_config(LLAMA))
    assert shape.layers[0].rank_of == {"gate": 7, "up": 20, "down": 48} and shape.has_ranks
    assert ModelShape.from_json(shape.to_json()) == shape
    bad = {**payload, "layers": [{"heads": 6, "ffn": 80, "ranks": {"side": 3}}]}
    with pytest.raises(UserError, match="unknown FFN Linear 'side'"):
        ModelShape.from_json(bad)
    bad = {**payload, "layers": [{"heads": 6, "ffn": 80, "ranks": {"up": 0}}]}
    with pytest.raises(UserError, match="positive integer"):
        ModelShape.from_json(bad)
    llama, bert = arch_from_config(LLAMA), arch_from_config(BERT)
    with pytest.raises(UserError, match="rank 49 of 'up' exceeds its smaller dimension 48"):
        ModelShape((LayerShape(6, 80, ranks=(("up", 49),)),) + (LayerShape(6, 80),) * 2).validate(llama)
    with pytest.raises(UserError, match="its FFN is removed"):
        ModelShape((LayerShape(6, 0, ranks=(("up", 4),)),) + (LayerShape(6, 80),) * 2).validate(llama)
    with pytest.raises(UserError, match="bert FFN has no 'gate' Linear"):
        ModelShape((LayerShape(4, 96, ranks=(("gate", 4),)), LayerShape(4, 96))).validate(bert)


def test_flop_ranks_cut_parameters_and_flops():
    from ziplm_deploy.core.cost import block_params, model_flops

    arch = arch_from_config(BERT)
    dense = ModelShape.dense(arch)
    low = ModelShape((LayerShape(4, 96, ranks=(("down", 8), ("up", 16))), LayerShape(4, 96)))
    saved = (48 * 96 - 16 * (48 + 96)) + (96 * 48 - 8 * (96 + 48))
    assert block_params(arch, dense) - block_params(arch, low) == saved
    assert model_flops(arch, dense, 10) - model_flops(arch, low, 10) == 2 * 10 * saved


def _layers(*layers):
    return {"format": "ziplm-deploy/shape", "version": 1, "layers": list(layers)}


@pytest.mark.parametrize("payload, message", [
    ({**_layers({"heads": 1, "ffn": 1}), "version": True}, "version True is not supported"),
    (_layers({"heads": True, "ffn": 3}), r"layers\[0\]: 'heads' must be a non-negative integer, got True"),
    (_layers({"heads": 2, "ffn": 3.0}), r"layers\[0\]: 'ffn' must be a non-negative integer, got 3.0"),
    (_layers({"heads": 2, "ffn": 2.5}), r"layers\[0\]: 'ffn' must be a non-negative integer, got 2.5"),
    (_layers({"heads": 2, "ffn": "64"}), r"layers\[0\]: 'ffn' must be a non-negative integer, got '64'"),
    (_layers({"heads": 2, "ffn": 3}, {"heads": 2, "ffn": -3}), r"layers\[1\]: 'ffn' must be a non-negative integer"),
    (_layers({"heads": 2, "ffn": 3, "kv_heads": False}), r"'kv_heads' must be a non-negative integer, got False"),
    (_layers({"heads": 2, "ffn": 3, "ranks": {"up": True}}), r"rank of 'up' must be a positive integer, got True"),
    (_layers({"heads": 2, "ffn": 3, "ranks": {"up": 4.0}}), r"rank of 'up' must be a positive integer, got 4.0"),
    (_layers({"heads": 2, "ffn": 3, "ranks": {"up": 0}}), r"rank of 'up' must be a positive integer, got 0"),
    (_layers({"dropped": "yes"}), r"'dropped' must be true or false"),
    (_layers({"dropped": 1}), r"'dropped' must be true or false"),
    (_layers([2, 3]), r"layers\[0\]: expected an object"),
    ({"format": "ziplm-deploy/shape", "version": 1, "layers": "all"}, "'layers' must be a non-empty list"),
    ([1, 2], "expected a JSON object"),
])
def test_mistyped_shape_fields_are_refused_naming_file_and_key(tmp_path, payload, message):
    path = tmp_path / "shape.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(UserError, match=message) as err:
        ModelShape.load(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)
