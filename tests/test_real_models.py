"""The real shipped models: SmolLM2-135M (Llama, GQA) and all-MiniLM-L6-v2 (BERT), pruned for real."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from families import greedy_ort, masked_reference, model_output, ort_session
from ziplm_deploy import load_model
from ziplm_deploy.export import export_onnx
from ziplm_deploy.models import LayerPlan, adapter_for, save_model, shrink
from ziplm_deploy.models.assets import minilm_dir, smollm2_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return load_model(smollm2_dir())


def _smollm2_plan():
    """30 layers, 9 heads in 3 KV groups of 3, FFN 1536: a mix of every kind of removal."""
    plan = []
    for i in range(30):
        if i in (0, 7):
            plan.append(LayerPlan(heads=(), ffn=tuple(range(0, 1536, 2))))  # no attention
        elif i in (12, 25):
            plan.append(LayerPlan(dropped=True))
        elif i % 3 == 0:
            plan.append(LayerPlan(heads=(0, 1, 6, 8), ffn=tuple(range(300))))  # 2 heads in each of groups 0, 2
        elif i % 3 == 1:
            plan.append(LayerPlan(heads=(3, 4, 5), ffn=()))  # one whole KV group, no FFN
        else:
            plan.append(LayerPlan(ffn=tuple(range(1, 1536, 3))))
    return plan


def test_smollm2_pruned_matches_reference_decodes_and_round_trips(smollm2, tmp_path):
    import copy

    model = copy.deepcopy(smollm2)
    plan = _smollm2_plan()
    dropped = [i for i, p in enumerate(plan) if p.dropped]
    ref = masked_reference(model, [LayerPlan() if p.dropped else p for p in plan])
    for i in dropped:
        adapter_for(ref).layers(ref)[i].register_forward_hook(lambda m, a, k, o: a[0] if a else k["hidden_states"],
                                                               with_kwargs=True)
    shrink(model, plan)
    ids = torch.randint(0, 49152, (2, 16), generator=torch.Generator().manual_seed(0))
    full = model_output(model, ids)
    assert (full - model_output(ref, ids)).abs().max() < 1e-3 * full.abs().max()
    del ref
    # incremental decoding with the compacted cache == full forward
    with torch.no_grad():
        out = model(input_ids=ids[:, :9], use_cache=True)
        steps = [out.logits]
        for t in range(9, 16):
            out = model(input_ids=ids[:, t : t + 1], past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits)
    assert (torch.cat(steps, 1) - full).abs().max() < 1e-3 * full.abs().max()
    save_model(model, tmp_path / "smol")
    loaded = load_model(tmp_path / "smol")
    assert type(loaded).__name__ == "LlamaForCausalLM"
    assert torch.equal(model_output(loaded, ids), full)


def test_smollm2_with_past_export_decodes_like_generate(smollm2, tmp_path):
    import copy

    model = copy.deepcopy(smollm2)
    # keep 5 layers so the export stays quick; one without attention, per-layer KV widths 0/1/2/3
    keep = {3: LayerPlan(heads=()), 10: LayerPlan(heads=(0, 3, 6)), 17: LayerPlan(heads=(1, 2, 4, 5)),
            24: LayerPlan(), 29: LayerPlan(ffn=tuple(range(512)))}
    shrink(model, [keep.get(i, LayerPlan(dropped=True)) for i in range(30)])
    result = export_onnx(model, tmp_path / "smol.onnx", with_past=True)
    assert all(d.ok for d in result.diffs)
    prefill, decode = ort_session(result.paths[0]), ort_session(result.paths[1])
    ids = torch.tensor([[1, 504, 3458, 314, 260, 1345, 282]])
    want = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=2).numpy()
    got = greedy_ort(prefill, decode, ids.numpy(), 6, n_attn=4)
    assert np.array_equal(got, want)


def test_minilm_pruned_matches_reference_and_exports(tmp_path):
    model = load_model(minilm_dir())
    assert type(model).__name__ == "BertModel" and adapter_for(model).arch(model).heads == 12
    plan = [LayerPlan(heads=(), ffn=tuple(range(0, 1536, 4))), LayerPlan(heads=tuple(range(6))),
            LayerPlan(ffn=()), LayerPlan(heads=(0, 5, 11), ffn=tuple(range(700))), LayerPlan(), LayerPlan(heads=(2,))]
    ref = masked_reference(model, plan)
    shrink(model, plan)
    ids = torch.randint(0, 30522, (3, 20), generator=torch.Generator().manual_seed(1))
    assert (model_output(model, ids) - model_output(ref, ids)).abs().max() < 1e-4
    result = export_onnx(model, tmp_path / "minilm.onnx")
    assert result.diffs[0].name == "last_hidden_state" and result.diffs[0].ok
