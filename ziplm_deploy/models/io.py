"""Save and load pruned models as ordinary Hugging Face directories.

A pruned directory is ``save_pretrained`` output whose ``config.json`` also holds ``ziplm_shape`` (the
per-layer shape, dropped layers included, FLOP ranks too) and / or ``ziplm_vocab`` (the output tokens a
trimmed LM head keeps: ``models.vocab``). ``load_model`` rebuilds the real transformers class with that
shape and head and loads the safetensors strictly. The stock ``from_pretrained`` refuses such a directory
(its weights file has another name).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core import checks
from ..core.arch import SHAPE_CONFIG_KEY, ArchSpec, arch_from_config, arch_from_dir, config_path, read_model_config
from ..core.errors import UserError
from ..core.jsonio import make_dirs, read_json
from ..core.shape import VOCAB_CONFIG_KEY, ModelShape, VocabTrim
from ..families import family_for
from .base import LayerPlan, apply_ranks, shrink

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
# A pruned directory stores its weights under its own name, so that the stock ``from_pretrained`` finds
# no weights and stops, rather than loading what matches and re-initialising the rest (it would for
# a layer whose attention or FFN was removed entirely: those keys are merely "missing").
PRUNED_WEIGHTS = "pruned-model.safetensors"
PRUNED_WEIGHTS_INDEX = "pruned-model.safetensors.index.json"
LOAD_NOTE = "pruned by ziplm-deploy with per-layer shapes: load with ziplm_deploy.load_model(path)"


def structural_plan(shape: ModelShape, group_size: int) -> list[LayerPlan]:
    """A plan that gives a *dense* model the layer shapes of ``shape`` (which indices is irrelevant:
    the weights are loaded afterwards). With GQA, heads are taken group by group."""
    plan = []
    for s in shape.layers:
        if s.dropped:
            plan.append(LayerPlan(dropped=True))
            continue
        per_group = s.heads // s.kv if s.kv else 0
        heads = tuple(g * group_size + j for g in range(s.kv) for j in range(per_group))
        plan.append(LayerPlan(heads=heads, ffn=tuple(range(s.ffn))))
    return plan


def _model_class(config: Any):
    import transformers

    name = (config.architectures or [None])[0]
    cls = getattr(transformers, name, None) if name else None
    if cls is None:
        raise UserError(
            f"config.json names architecture {name!r}, which transformers {transformers.__version__} lacks",
            "set \"architectures\" in config.json to a transformers model class",
        )
    return cls


def _load_file(file: Path) -> dict[str, torch.Tensor]:
    """One safetensors file (checked whole by ``check_weights``): a damaged file is the user's error naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except Exception as e:  # safetensors raises its own error type for a damaged file
        raise UserError(f"{file.name} in {file.parent} is corrupt or truncated: {type(e).__name__}: "
                        f"{' '.join(str(e).split())[:120]}", "re-save or re-download the model") from None


def _shards(path: Path, index_name: str) -> list[Path]:
    """The shard files an index names (its ``weight_map`` values), checked to be a mapping of file names."""
    index = checks.mapping(read_json(path / index_name, "weights index"), str(path / index_name))
    weight_map = checks.mapping(index.get("weight_map"), str(path / index_name), "weight_map")
    source = str(path / index_name)
    names = {checks.typed(v, str, source, f"weight_map.{k}", "a file name") for k, v in weight_map.items()}
    return [path / name for name in sorted(names)]


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    for single, index_name in ((PRUNED_WEIGHTS, PRUNED_WEIGHTS_INDEX), (WEIGHTS, WEIGHTS_INDEX)):
        if (path / single).is_file():
            return _load_file(path / single)
        if (path / index_name).is_file():
            state: dict[str, torch.Tensor] = {}
            for shard in _shards(path, index_name):
                state.update(_load_file(shard))
            return state
    raise UserError(f"{path} has no {PRUNED_WEIGHTS}", "save pruned models with ziplm_deploy.models.save_model")


def check_weights(path: str | os.PathLike) -> None:
    """Refuse a model directory without weights, or with a corrupt or truncated ``*.safetensors`` file
    (torch-free header and size checks: cheap, before any loading)."""
    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    for index_name in (PRUNED_WEIGHTS_INDEX, WEIGHTS_INDEX):
        if (path / index_name).is_file():
            files += [f for f in _shards(path, index_name) if f not in files]
    if not files and not any(path.glob("pytorch_model*.bin")):
        raise UserError(f"{path} has no weights ({WEIGHTS})", "save the model with save_pretrained, or download it")
    for file in files:
        if not file.is_file():
            raise UserError(f"{file.name} in {path} is missing (named by the weights index)",
                            "re-save or re-download the model")
        checks.safetensors_header(file)


def check_model_dir(path: str | os.PathLike) -> ArchSpec:
    """A model directory's architecture, its config.json fields and weight files checked before any work."""
    arch = arch_from_dir(path)
    check_weights(path)
    return arch


def check_seq_len(model_dir: str | os.PathLike, seq_len: int, option: str = "--seq-len") -> None:
    """Refuse windows longer than a model with learned positions (BERT, GPT-2) can embed."""
    raw, source = read_model_config(model_dir), str(config_path(model_dir))
    key = family_for(arch_from_config(raw, source)).positions_key
    if key is None or raw.get(key) is None:
        return
    limit = checks.integer(raw[key], source, key, lo=1)
    if seq_len > limit:
        raise UserError(f"{option} {seq_len} is longer than the {limit} positions {model_dir} embeds ({key})",
                        f"pass {option} {limit} or less")


def _transformers_config(path: Path, config_file: str):
    """``AutoConfig`` of the directory; a config transformers cannot build from is the user's error."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(path))
    except (ValueError, TypeError, KeyError, AttributeError, OSError) as e:
        raise UserError(f"{config_file}: transformers cannot read it ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:120]})", "fix config.json or re-save the model") from None


def load_model(path: str | os.PathLike, dtype: torch.dtype | None = None) -> nn.Module:
    """Load a dense or pruned model directory into its real transformers class (``generate()`` works)."""
    from transformers.initialization import no_init_weights

    path = Path(path)
    raw = read_model_config(path)
    config_file = str(config_path(path))
    arch = arch_from_config(raw, source=config_file)
    check_weights(path)
    config = _transformers_config(path, config_file)
    cls = _model_class(config)
    recorded = raw.get(SHAPE_CONFIG_KEY)
    trim = _recorded_vocab(raw, arch, config_file)
    if recorded is None and trim is None:
        return cls.from_pretrained(str(path), dtype=dtype or torch.float32)
    if recorded is None:
        shape = ModelShape.dense(arch)
    else:
        shape = ModelShape.from_json(recorded, source=f"{config_file}: {SHAPE_CONFIG_KEY}").validate(arch)
    config.num_hidden_layers = len(shape.layers)
    setattr(config, family_for(arch).num_layers_key, len(shape.layers))
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and len(layer_types) != len(shape.layers):
        it = iter(layer_types)
        config.layer_types = [layer_types[0] if s.dropped else next(it) for s in shape.layers]
    if recorded is not None:
        delattr(config, SHAPE_CONFIG_KEY)
    if hasattr(config, "ziplm_note"):
        delattr(config, "ziplm_note")
    with no_init_weights():
        model = cls(config)
    if recorded is not None:
        shrink(model, structural_plan(shape, arch.group_size))
    if shape.has_ranks:
        apply_ranks(model, shape, init="empty")
    if trim is not None:
        from .vocab import attach_empty_head

        attach_empty_head(model, trim)
    state = _read_state_dict(path)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:  # a tensor of another size than the recorded shape / kept vocabulary gives it
        mismatch = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), _one_line(e))
        raise UserError(f"{path}: weights do not match the recorded shape ({mismatch[:160]})",
                        "the directory was modified after saving; re-export it with ziplm-deploy") from None
    tied = set(getattr(model, "_tied_weights_keys", None) or {}) if config.tie_word_embeddings else set()
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise UserError(
            f"{path}: weights do not match the recorded shape (missing {missing[:5]}, unexpected {unexpected[:5]})",
            "the directory was modified after saving; re-export it with ziplm-deploy",
        )
    if config.tie_word_embeddings:
        model.tie_weights()
    if dtype is not None:
        model.to(dtype)
    model.eval()
    return model


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:160]


def _recorded_vocab(raw: dict[str, Any], arch: ArchSpec, config_file: str) -> VocabTrim | None:
    """The trimmed output vocabulary config.json records (checked against the model's vocab size), or None."""
    payload = raw.get(VOCAB_CONFIG_KEY)
    if payload is None:
        return None
    where = f"{config_file}: {VOCAB_CONFIG_KEY}"
    trim = VocabTrim.from_json(payload, source=where).validate(arch.vocab, where)
    if raw.get("tie_word_embeddings"):
        raise UserError(f"{config_file}: tie_word_embeddings is true but the LM head is trimmed ({VOCAB_CONFIG_KEY})",
                        "a trimmed head is untied: set tie_word_embeddings to false or re-run trim-vocab")
    return trim


def _mark_pruned(folder: Path) -> None:
    for stock, ours in ((WEIGHTS, PRUNED_WEIGHTS), (WEIGHTS_INDEX, PRUNED_WEIGHTS_INDEX)):
        if (folder / stock).is_file():
            os.replace(folder / stock, folder / ours)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["ziplm_note"] = LOAD_NOTE
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def save_model(model: nn.Module, out: str | os.PathLike, tokenizer: Any = None, overwrite: bool = False,
               extra_files: dict[str, str] | None = None) -> Path:
    """Write ``model`` (and its tokenizer) to ``out`` atomically: a temp folder renamed at the end."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"output directory {out} already exists", "choose another --out or remove it")
    make_dirs(out.parent, out)
    tmp = Path(tempfile.mkdtemp(prefix=f"{checks.TEMP_PREFIX}{out.name}.", dir=out.parent))  # swept by later runs
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if any(getattr(model.config, key, None) is not None for key in (SHAPE_CONFIG_KEY, VOCAB_CONFIG_KEY)):
            _mark_pruned(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
