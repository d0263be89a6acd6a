"""The family adapter interface and the family-independent shrink procedure.

An adapter knows where one family keeps its layers, heads and FFN neurons. Everything else
(selection, validation, renumbering, shapes) is written once here against that interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ..core.arch import SHAPE_CONFIG_KEY, ArchSpec, arch_from_config
from ..core.errors import InternalError, UserError
from ..core.shape import VOCAB_CONFIG_KEY, LayerShape, ModelShape, VocabTrim
from .surgery import LowRankLinear, group_norms


@dataclass(frozen=True)
class LayerPlan:
    """What to keep of one layer, as indices into the layer's *current* heads / neurons.

    ``heads`` are query-head indices; with GQA every kept KV group must keep the same number of them.
    ``None`` keeps everything; an empty tuple removes the block.
    """

    heads: tuple[int, ...] | None = None
    ffn: tuple[int, ...] | None = None
    dropped: bool = False


def out_in_weight(proj: nn.Module | None) -> torch.Tensor | None:
    """A projection's weight as an (out, in) view: ``nn.Linear`` stores it so, GPT-2's ``Conv1D`` transposed;
    a FLOP-factorised ``LowRankLinear`` gives its product (a copy)."""
    if proj is None:
        return None
    if isinstance(proj, LowRankLinear):
        return proj.dense_weight()
    return proj.weight.T if hasattr(proj, "nf") else proj.weight


class FamilyAdapter:
    """Where one model family keeps its parts. Subclasses fill in the module paths."""

    family: str = ""
    ffn_linear_paths: dict[str, str] = {}  # FFN Linears by role (gate / up / down), relative to a layer

    # --- where things live --------------------------------------------------------------------
    def layers(self, model: nn.Module) -> nn.ModuleList:
        raise NotImplementedError

    def set_layers(self, model: nn.Module, layers: list[nn.Module]) -> None:
        raise NotImplementedError

    def attn_out_proj(self, layer: nn.Module) -> nn.Module | None:
        """The attention output projection module (its input is what OBS prunes), None if removed."""
        raise NotImplementedError

    def ffn_out_proj(self, layer: nn.Module) -> nn.Module | None:
        """The FFN down projection module, None if removed."""
        raise NotImplementedError

    def attn_out_weight(self, layer: nn.Module) -> torch.Tensor | None:
        """The attention output projection as an (hidden, heads*head_dim) view, or None if removed."""
        return out_in_weight(self.attn_out_proj(layer))

    def ffn_out_weight(self, layer: nn.Module) -> torch.Tensor | None:
        """The FFN down projection as an (hidden, ffn) view, or None if removed."""
        return out_in_weight(self.ffn_out_proj(layer))

    def ffn_in_weights(self, layer: nn.Module) -> list[torch.Tensor]:
        """The FFN input projections as (ffn, hidden) matrices (fc1; or gate and up)."""
        raise NotImplementedError

    def kv_heads_of(self, layer: nn.Module, heads: int) -> int:
        return heads

    def ffn_linear(self, layer: nn.Module, role: str) -> nn.Module | None:
        """The FFN Linear ``role`` (gate / up / down) of a layer, None if the FFN was removed."""
        try:
            return layer.get_submodule(self.ffn_linear_paths[role])
        except AttributeError:
            return None

    def set_ffn_linear(self, layer: nn.Module, role: str, module: nn.Module) -> None:
        parent, _, child = self.ffn_linear_paths[role].rpartition(".")
        setattr(layer.get_submodule(parent) if parent else layer, child, module)

    def ffn_ranks(self, layer: nn.Module) -> tuple[tuple[str, int], ...]:
        """(role, rank) of the layer's FLOP-factorised FFN Linears."""
        found = ((role, self.ffn_linear(layer, role)) for role in sorted(self.ffn_linear_paths))
        return tuple((role, m.rank) for role, m in found if isinstance(m, LowRankLinear))

    def ffn_width(self, layer: nn.Module) -> int:
        proj = self.ffn_out_proj(layer)
        if proj is None:
            return 0
        return proj.in_features if isinstance(proj, LowRankLinear) else out_in_weight(proj).shape[1]

    # --- surgery ------------------------------------------------------------------------------
    def keep_heads(self, layer: nn.Module, heads: Sequence[int], kv_heads: Sequence[int], arch: ArchSpec) -> None:
        raise NotImplementedError

    def remove_attention(self, layer: nn.Module, arch: ArchSpec) -> None:
        raise NotImplementedError

    def keep_ffn(self, layer: nn.Module, neurons: Sequence[int]) -> None:
        raise NotImplementedError

    def remove_ffn(self, layer: nn.Module, arch: ArchSpec) -> None:
        raise NotImplementedError

    def set_cache_index(self, layer: nn.Module, index: int) -> None:
        """Point the layer's attention at KV-cache slot ``index`` (decoders only)."""

    def set_num_layers(self, model: nn.Module, kept: Sequence[int]) -> None:
        config = model.config
        layer_types = getattr(config, "layer_types", None)
        if layer_types is not None and len(layer_types) != len(kept):
            config.layer_types = [layer_types[i] for i in kept]
        config.num_hidden_layers = len(kept)

    # --- derived ------------------------------------------------------------------------------
    def arch(self, model: nn.Module) -> ArchSpec:
        return arch_from_config(model.config.to_dict(), source=type(model).__name__)

    def layer_shape(self, layer: nn.Module, arch: ArchSpec) -> LayerShape:
        wo = self.attn_out_weight(layer)
        heads = 0 if wo is None else wo.shape[1] // arch.head_dim
        ffn = self.ffn_width(layer)
        kv = (self.kv_heads_of(layer, heads) if heads else 0) if arch.kv_heads != arch.heads else None
        return LayerShape(heads=heads, ffn=ffn, kv_heads=kv, ranks=self.ffn_ranks(layer) if ffn else ())

    def shape_of(self, model: nn.Module) -> ModelShape:
        """The model's per-layer shape, dropped layers included (from the config's record of them), and the
        output tokens its LM head keeps when ``trim-vocab`` trimmed it."""
        arch = self.arch(model)
        live = [self.layer_shape(layer, arch) for layer in self.layers(model)]
        trim = getattr(model.config, VOCAB_CONFIG_KEY, None)
        vocab = len(VocabTrim.from_json(trim, f"config.{VOCAB_CONFIG_KEY}").kept) if trim is not None else None
        recorded = getattr(model.config, SHAPE_CONFIG_KEY, None)
        if recorded is None:
            return ModelShape(tuple(live), vocab)
        old = ModelShape.from_json(recorded, source="config.ziplm_shape")
        it = iter(live)
        layers = tuple(LayerShape(dropped=True) if s.dropped else next(it) for s in old.layers)
        if next(it, None) is not None or len(live) != len(old.kept_layers):
            raise InternalError("config.ziplm_shape does not match the model's layers")
        return ModelShape(layers, vocab)


def _check_heads(heads: Sequence[int], arch: ArchSpec, current: int, group: int, where: str) -> list[int]:
    """Validate query-head indices; return the KV groups they use (GQA), in order."""
    if len(set(heads)) != len(heads) or any(not 0 <= h < current for h in heads):
        raise UserError(f"{where}: head indices {list(heads)} must be distinct and in [0, {current})")
    if arch.kv_heads == arch.heads:
        return sorted(heads)
    groups: dict[int, int] = {}
    for h in heads:
        groups[h // group] = groups.get(h // group, 0) + 1
    if len(set(groups.values())) > 1:
        raise UserError(
            f"{where}: kept heads {sorted(heads)} use KV groups unevenly {dict(sorted(groups.items()))}",
            "keep the same number of query heads in every kept KV group",
        )
    return sorted(groups)


def shrink(model: nn.Module, plan: Sequence[LayerPlan]) -> nn.Module:
    """Physically remove heads, neurons and layers, in place, following ``plan`` (one entry per current layer).

    Fully removed blocks become small constant modules; the layers that keep attention are renumbered
    0..A-1 so the KV cache stays compact and positions are read from a real attention layer.
    """
    from . import adapter_for

    adapter = adapter_for(model)
    arch = adapter.arch(model)
    layers = list(adapter.layers(model))
    if len(plan) != len(layers):
        raise UserError(f"plan has {len(plan)} layers, the model has {len(layers)}")
    before = adapter.shape_of(model)
    kept_live = [i for i, p in enumerate(plan) if not p.dropped]
    if not kept_live:
        raise UserError("the plan drops every layer", "keep at least one layer")

    for i, (layer, p) in enumerate(zip(layers, plan)):
        if not p.dropped:
            _shrink_layer(adapter, arch, layer, p, f"layer {i}")

    kept_modules = [layers[i] for i in kept_live]
    adapter.set_layers(model, kept_modules)
    adapter.set_num_layers(model, kept_live)
    slot = 0
    for layer in kept_modules:
        if adapter.attn_out_weight(layer) is not None:
            adapter.set_cache_index(layer, slot)
            slot += 1

    _record_shape(model, before, plan, layers, adapter, arch)
    return model


def _shrink_layer(adapter: Any, arch: Any, layer: nn.Module, p: LayerPlan, where: str) -> None:
    """Keep ``p``'s heads and FFN neurons of one layer, in place (``None``: keep all; empty: remove the part)."""
    shape = adapter.layer_shape(layer, arch)
    if p.heads is not None and shape.heads > 0:
        heads = sorted(p.heads)
        if not heads:
            adapter.remove_attention(layer, arch)
        elif len(heads) < shape.heads:
            group = shape.heads // max(shape.kv, 1)
            kv = _check_heads(heads, arch, shape.heads, group, where)
            adapter.keep_heads(layer, heads, kv, arch)
        else:
            _check_heads(heads, arch, shape.heads, shape.heads, where)
    elif p.heads and shape.heads == 0:
        raise UserError(f"{where}: attention is already removed; cannot keep heads {list(p.heads)}")
    if p.ffn is not None and shape.ffn > 0:
        idx = sorted(p.ffn)
        if len(set(idx)) != len(idx) or any(not 0 <= j < shape.ffn for j in idx):
            raise UserError(f"{where}: FFN indices must be distinct and in [0, {shape.ffn})")
        if not idx:
            adapter.remove_ffn(layer, arch)
        elif len(idx) < shape.ffn:
            if shape.ranks:
                raise UserError(f"{where}: its FFN is factorised (FLOP ranks {dict(shape.ranks)}); "
                                "neurons of a factorised FFN cannot be removed",
                                "prune FFN neurons before running flop")
            adapter.keep_ffn(layer, idx)
    elif p.ffn and shape.ffn == 0:
        raise UserError(f"{where}: FFN is already removed; cannot keep neurons")


def _record_shape(model, before: ModelShape, plan, layers, adapter: FamilyAdapter, arch: ArchSpec) -> None:
    """Record the full shape (dropped layers included) in the config, so save/load can rebuild it."""
    merged: list[LayerShape] = []
    live = iter(zip(plan, layers))
    for s in before.layers:
        if s.dropped:
            merged.append(s)
            continue
        p, layer = next(live)
        merged.append(LayerShape(dropped=True) if p.dropped else adapter.layer_shape(layer, arch))
    setattr(model.config, SHAPE_CONFIG_KEY, ModelShape(tuple(merged)).to_json())


def apply_ranks(model: nn.Module, shape: ModelShape, init: str = "svd") -> nn.Module:
    """Factorise the FFN Linears that ``shape`` gives a rank (FLOP), in place, and record the ranks.

    ``init="svd"``: each becomes the best rank-r approximation of its weight (truncated SVD);
    ``init="empty"``: uninitialised (the weights are loaded afterwards). Layers already factorised must
    already have the asked rank.
    """
    from . import adapter_for

    if init not in ("svd", "empty"):
        raise InternalError(f"unknown init {init!r}")
    adapter = adapter_for(model)
    arch = adapter.arch(model)
    shape = shape.validate(arch)
    current = adapter.shape_of(model)
    live = [i for i, s in enumerate(current.layers) if not s.dropped]
    layers = list(adapter.layers(model))
    for pos, i in enumerate(live):
        want, have = shape.layers[i], current.layers[i]
        if want.dropped or (want.heads, want.ffn, want.kv) != (have.heads, have.ffn, have.kv):
            raise UserError(f"layer {i}: ranks can only be applied to a model of the same shape "
                            f"({have.to_json()} here, {want.to_json()} asked)", "shrink the model first")
        for role, r in want.ranks:
            module = adapter.ffn_linear(layers[pos], role)
            if isinstance(module, LowRankLinear):
                if module.rank != r:
                    raise UserError(f"layer {i}: {role} is already factorised at rank {module.rank}, not {r}")
                continue
            weight = out_in_weight(module)
            if init == "svd":
                new = LowRankLinear.from_svd(weight, getattr(module, "bias", None), r)
            else:
                new = LowRankLinear(weight.shape[1], weight.shape[0], r, getattr(module, "bias", None) is not None,
                                    dtype=weight.dtype, device=weight.device)
            new.requires_grad_(weight.requires_grad)
            adapter.set_ffn_linear(layers[pos], role, new)
        extra = set(adapter.ffn_ranks(layers[pos])) - set(want.ranks)
        if extra:
            raise UserError(f"layer {i}: FFN Linears {sorted(extra)} are factorised but not in the shape")
    setattr(model.config, SHAPE_CONFIG_KEY, adapter.shape_of(model).to_json())
    return model


def magnitude_plan(model: nn.Module, shape: ModelShape) -> list[LayerPlan]:
    """Pick which heads / neurons to keep by weight magnitude so that the model takes ``shape``.

    Heads are ranked by the L2 norm of their output-projection columns; with GQA, KV groups are
    ranked by their heads' total norm, then heads within each kept group. Neurons are ranked by the
    product of their down-projection column norm and their input-projection row norms.
    """
    from . import adapter_for

    adapter = adapter_for(model)
    arch = adapter.arch(model)
    shape = shape.validate(arch)
    current = adapter.shape_of(model)
    live = [i for i, s in enumerate(current.layers) if not s.dropped]
    plan: list[LayerPlan] = []
    for pos, i in enumerate(live):
        layer = adapter.layers(model)[pos]
        want, have = shape.layers[i], current.layers[i]
        if want.dropped:
            plan.append(LayerPlan(dropped=True))
            continue
        if want.heads > have.heads or want.ffn > have.ffn or (want.kv or 0) > (have.kv or 0):
            raise UserError(f"layer {i}: cannot grow from {have.to_json()} to {want.to_json()}")
        plan.append(LayerPlan(heads=_top_heads(adapter, layer, arch, have, want), ffn=_top_neurons(adapter, layer, want.ffn)))
    for i, s in enumerate(current.layers):
        if s.dropped and not shape.layers[i].dropped:
            raise UserError(f"layer {i} is already dropped; cannot restore it")
    return plan


def magnitude_scores(adapter: FamilyAdapter, layer: nn.Module, arch: ArchSpec) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per-unit magnitude of a layer: attention heads (KV groups with GQA: summed over their heads)
    by output-projection column norm; FFN neurons by down-column norm times input-row norms."""
    attn = None
    wo = adapter.attn_out_weight(layer)
    if wo is not None:
        attn = group_norms(wo, arch.head_dim)
        if arch.kv_heads != arch.heads:
            kv = adapter.kv_heads_of(layer, attn.numel())
            attn = attn.reshape(kv, -1).sum(dim=1)
    return attn, ffn_magnitude(adapter, layer)


def ffn_magnitude(adapter: FamilyAdapter, layer: nn.Module) -> torch.Tensor | None:
    wd = adapter.ffn_out_weight(layer)
    if wd is None:
        return None
    score = wd.detach().float().norm(dim=0)
    for w in adapter.ffn_in_weights(layer):
        score = score * w.detach().float().norm(dim=1)
    return score


def _top(scores: torch.Tensor, k: int) -> list[int]:
    return sorted(torch.argsort(scores, descending=True, stable=True)[:k].tolist())


def _top_heads(adapter: FamilyAdapter, layer: nn.Module, arch: ArchSpec, have: LayerShape, want: LayerShape):
    if have.heads == 0 or want.heads == have.heads and want.kv == have.kv:
        return None
    if want.heads == 0:
        return ()
    scores = group_norms(adapter.attn_out_weight(layer), arch.head_dim)
    if arch.kv_heads == arch.heads:
        return tuple(_top(scores, want.heads))
    group = have.heads // have.kv
    group_scores = scores.reshape(have.kv, group).sum(dim=1)
    per_group = want.heads // want.kv
    out: list[int] = []
    for g in _top(group_scores, want.kv):
        out += [g * group + j for j in _top(scores[g * group : (g + 1) * group], per_group)]
    return tuple(out)


def _top_neurons(adapter: FamilyAdapter, layer: nn.Module, k: int):
    wd = adapter.ffn_out_weight(layer)
    if wd is None or k == wd.shape[1]:
        return None
    if k == 0:
        return ()
    return tuple(_top(ffn_magnitude(adapter, layer), k))


def apply_shape(model: nn.Module, shape: ModelShape) -> nn.Module:
    """Shrink ``model`` in place to ``shape``, choosing what to keep by weight magnitude; FFN Linears the
    shape gives a FLOP rank become their truncated SVD at that rank. The output vocabulary is not changed here
    (which tokens to keep needs data: ``trim-vocab``), so a shape asking for another one is refused."""
    if shape.vocab is not None:
        from . import adapter_for

        adapter = adapter_for(model)
        have = adapter.shape_of(model).vocab
        want = None if shape.vocab >= adapter.arch(model).vocab else shape.vocab  # the whole vocabulary: untrimmed
        if want != have:
            raise UserError(f"the shape keeps {shape.vocab} output tokens; the model has "
                            f"{'its whole vocabulary' if have is None else f'{have} kept tokens'}",
                            "trim the vocabulary with `ziplm-deploy trim-vocab`, or drop 'vocab' from the shape")
    shrink(model, magnitude_plan(model, shape))
    if shape.has_ranks:
        apply_ranks(model, shape)
    return model

