"""The family registry: one package per family, found by ``model_type``; no family branches elsewhere."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from ziplm_deploy.core import arch as core_arch
from ziplm_deploy.core.arch import arch_from_config
from ziplm_deploy.core.errors import UserError
from ziplm_deploy.families import FAMILIES, SUPPORTED_MODEL_TYPES, Family, GraphParts, family_for

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ziplm_deploy"
FAMILIES_DIR = PACKAGE / "families"

# `family ==`, `family != `, `family in`, `family not in`, and lookups keyed by a family name
FAMILY_BRANCH = re.compile(r"\bfamily\s*(==|!=)|\bfamily\s+(not\s+)?in\b|\[[\w.]*\bfamily\]|\.get\(.*\bfamily\)")
TINY_CONFIGS = {
    "bert": {"model_type": "bert", "hidden_size": 16, "num_attention_heads": 2, "num_hidden_layers": 2,
             "intermediate_size": 32, "vocab_size": 50, "max_position_embeddings": 64},
    "gpt2": {"model_type": "gpt2", "n_embd": 16, "n_head": 2, "n_layer": 2, "vocab_size": 50, "n_positions": 64},
    "llama": {"model_type": "llama", "hidden_size": 16, "num_attention_heads": 4, "num_key_value_heads": 2,
              "num_hidden_layers": 2, "intermediate_size": 32, "vocab_size": 50},
    "qwen2": {"model_type": "qwen2", "hidden_size": 16, "num_attention_heads": 4, "num_key_value_heads": 2,
              "num_hidden_layers": 2, "intermediate_size": 32, "vocab_size": 50},
    "mistral": {"model_type": "mistral", "hidden_size": 16, "num_attention_heads": 4, "num_key_value_heads": 2,
                "num_hidden_layers": 2, "intermediate_size": 32, "vocab_size": 50},
    "qwen3": {"model_type": "qwen3", "hidden_size": 16, "num_attention_heads": 4, "num_key_value_heads": 2,
              "head_dim": 8, "num_hidden_layers": 2, "intermediate_size": 32, "vocab_size": 50},
    "gemma3_text": {"model_type": "gemma3_text", "hidden_size": 16, "num_attention_heads": 4, "num_key_value_heads": 1,
                    "head_dim": 8, "num_hidden_layers": 2, "intermediate_size": 32, "vocab_size": 50},
}


def family_branches(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if FAMILY_BRANCH.search(line)]


def test_the_scan_finds_family_branches():
    branchy = ['if arch.family == "bert":', 'return self.family in ("gpt2", "llama")', "if family not in DECODERS:",
               'x = {"bert": 1}.get(arch.family)', 'key = KEYS.get(arch_from_config(raw, source).family)',
               "return _ADAPTERS[arch.family]", 'ok = arch.family != "gpt2"']
    clean = ['raise UserError(f"a {arch.family} model has no decode mode")', "from ..prune.family import METHODS",
             "family = family_for(arch)", "return family_for(arch).adapter()"]
    assert family_branches("\n".join(branchy)) == branchy
    assert family_branches("\n".join(clean)) == []


def test_no_family_branch_outside_the_families_package():
    found = {str(p.relative_to(ROOT)): family_branches(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))
             if FAMILIES_DIR not in p.parents}
    found = {path: lines for path, lines in found.items() if lines}
    assert not found, f"family branches outside ziplm_deploy/families/ (ask the family instead): {found}"


def test_registry_is_consistent():
    names = [f.name for f in FAMILIES]
    types = [t for f in FAMILIES for t in f.model_types]
    assert len(set(names)) == len(names) and len(set(types)) == len(types)
    assert SUPPORTED_MODEL_TYPES == tuple(types) == core_arch.SUPPORTED_MODEL_TYPES
    packages = sorted(p.parent.name for p in FAMILIES_DIR.glob("*/__init__.py"))
    assert packages == sorted(names), "every family folder is registered, and only those"
    for f in FAMILIES:
        assert isinstance(f, Family) and f.package == f"ziplm_deploy.families.{f.name}"
        assert all(family_for(t) is f for t in f.model_types)


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_config_reader_and_lookup_by_arch(model_type):
    arch = arch_from_config(TINY_CONFIGS[model_type], source="config.json")
    family = family_for(model_type)
    assert arch.model_type == model_type and arch.family == family.name
    assert family_for(arch) is family and arch.is_decoder == family.is_decoder


def test_unknown_model_types_and_families_list_what_exists():
    listed = "supported: bert, gemma3_text, gpt2, llama, mistral, qwen2, qwen3"
    with pytest.raises(UserError, match=f"model_type='phi3'.*{listed}"):
        family_for("phi3")
    with pytest.raises(UserError, match=f"x/config.json: unsupported architecture model_type='phi3'.*{listed}"):
        arch_from_config({"model_type": "phi3"}, source="x/config.json")
    arch = arch_from_config(TINY_CONFIGS["gpt2"])
    with pytest.raises(UserError, match="unknown model family 'phi'.*families: bert, gemma3, gpt2, llama, qwen3"):
        family_for(replace(arch, family="phi"))


@pytest.mark.parametrize("key,value,message", [
    ("final_logit_softcapping", 30.0, "final_logit_softcapping=30.0 is not supported"),
    ("attn_logit_softcapping", 50.0, "attn_logit_softcapping=50.0 is not supported"),
    ("use_bidirectional_attention", True, "bidirectional Gemma 3"),
    ("attention_bias", True, "attention_bias=true is not supported"),
    ("query_pre_attn_scalar", "256", "query_pre_attn_scalar"),
    ("query_pre_attn_scalar", -1, "query_pre_attn_scalar"),
    ("rope_parameters", [1], "rope_parameters"),
])
def test_gemma3_reader_refuses_what_its_graphs_do_not_compute(key, value, message):
    with pytest.raises(UserError, match=message):
        arch_from_config({**TINY_CONFIGS["gemma3_text"], key: value}, source="config.json")


@pytest.mark.parametrize("model_type", ["bert", "gpt2", "llama", "qwen2", "mistral", "qwen3", "gemma3_text"])
def test_each_family_gives_its_graph_parts_and_adapter(model_type):
    from families import tiny_model

    from ziplm_deploy.models import FamilyAdapter, adapter_for

    family = family_for(model_type)
    assert isinstance(family.graph(), GraphParts)
    model = tiny_model(model_type.removesuffix("_text"), layers=1)
    adapter = adapter_for(model)
    assert isinstance(adapter, FamilyAdapter) and adapter.family == family.name
    assert adapter is family.adapter() is adapter_for(arch_from_config(model.config.to_dict()))
    assert family.is_decoder == model.can_generate()


@pytest.mark.parametrize("model_type, limit", [("bert", 64), ("gpt2", 64), ("llama", None)])
def test_sequence_limit_comes_from_the_family_config_key(tmp_path, model_type, limit):
    from ziplm_deploy.models.io import check_seq_len

    (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIGS[model_type]))
    check_seq_len(tmp_path, 64)
    if limit is None:
        check_seq_len(tmp_path, 100_000)
        return
    key = family_for(model_type).positions_key
    with pytest.raises(UserError, match=f"--seq-len 65 is longer than the 64 positions .*{key}"):
        check_seq_len(tmp_path, 65)


NO_TORCH_SCRIPT = """
import sys, json
from ziplm_deploy.core.arch import arch_from_config, SUPPORTED_MODEL_TYPES
configs = json.loads(sys.argv[1])
archs = [arch_from_config(c) for c in configs.values()]
assert [a.is_decoder for a in archs] == [a.family != "bert" for a in archs]
light = not any(m in sys.modules for m in ("onnx", "numpy", "torch"))
from ziplm_deploy.core.shape import ModelShape
from ziplm_deploy.families import family_for
from ziplm_deploy.profiling.blocks import Sizes, block_graph, model_graph
for a in archs:
    block_graph(a, "attention", a.heads, Sizes(1, 4))
    model_graph(a, ModelShape.dense(a), Sizes(1, 4, "decode", 4) if a.is_decoder else Sizes(1, 4))
try:
    family_for(archs[0]).adapter()
except ImportError as e:
    adapter_needs_torch = "edge device" in str(e)
print(json.dumps({"light": light, "torch": "torch" in sys.modules, "adapter_needs_torch": adapter_needs_torch}))
"""


def test_families_config_and_graphs_no_torch(no_torch_env):
    """The torch-free side of every family (config reader, graph parts) works where ``import torch`` fails;
    reading a config imports neither onnx nor numpy."""
    r = subprocess.run([sys.executable, "-c", NO_TORCH_SCRIPT, json.dumps(TINY_CONFIGS)], env=no_torch_env,
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1]) == {"light": True, "torch": False, "adapter_needs_torch": True}
