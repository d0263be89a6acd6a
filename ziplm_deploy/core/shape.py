"""The per-layer shape of a (pruned) model: the contract between profiler, pruner, exporter and verifier.

JSON form (other tools write these files)::

    {"format": "ziplm-deploy/shape", "version": 1,
     "layers": [{"heads": 12, "ffn": 3072}, {"heads": 0, "ffn": 512}, {"dropped": true}, ...]}

``kv_heads`` is optional per layer (GQA models); ``heads: 0`` removes attention, ``ffn: 0`` removes the
FFN, ``dropped: true`` removes the whole layer. ``vocab`` (optional, top level) is the number of output
tokens a trimmed LM head keeps (``trim-vocab``; the kept ids are in the model's config). ``ranks`` (optional, FLOP) gives the kept rank of FFN
Linears that were factorised into two thin Linears, by role: ``{"up": 96, "down": 120}`` (``gate`` too
for gated FFNs); ``up``/``gate`` map hidden -> ffn, ``down`` maps ffn -> hidden.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .arch import ArchSpec
from .errors import UserError
from .jsonio import atomic_write_json, check_header, read_json

SHAPE_FORMAT = "ziplm-deploy/shape"
SHAPE_VERSION = 1


FFN_ROLES = ("gate", "up", "down")
LINEAR_KINDS = ("in", "out")  # FFN Linears by direction: hidden -> ffn (gate, up), ffn -> hidden (down)


def linear_kind(role: str) -> str:
    return "out" if role == "down" else "in"


def ffn_roles(arch: ArchSpec) -> tuple[str, ...]:
    """The FFN Linears of a family, by role: (gate, up, down) for gated FFNs, else (up, down)."""
    return FFN_ROLES if arch.gated_ffn else FFN_ROLES[1:]


def ffn_linear_dims(arch: ArchSpec, role: str, width: int) -> tuple[int, int]:
    """(in, out) features of the FFN Linear ``role`` at FFN width ``width``."""
    return (width, arch.hidden) if role == "down" else (arch.hidden, width)


def kind_dims(arch: ArchSpec, kind: str) -> tuple[int, int]:
    """(in, out) features of a dense-width FFN Linear of direction ``kind`` ("in" or "out")."""
    return ffn_linear_dims(arch, "down" if kind == "out" else "up", arch.ffn)


@dataclass(frozen=True)
class LayerShape:
    heads: int = 0
    ffn: int = 0
    kv_heads: int | None = None  # None: same as heads (no GQA)
    dropped: bool = False
    ranks: tuple[tuple[str, int], ...] = ()  # FLOP-factorised FFN Linears: (role, kept rank), sorted

    @property
    def kv(self) -> int:
        return self.heads if self.kv_heads is None else self.kv_heads

    @property
    def rank_of(self) -> dict[str, int]:
        return dict(self.ranks)

    def to_json(self) -> dict[str, Any]:
        if self.dropped:
            return {"dropped": True}
        out: dict[str, Any] = {"heads": self.heads, "ffn": self.ffn}
        if self.kv_heads is not None:
            out["kv_heads"] = self.kv_heads
        if self.ranks:
            out["ranks"] = dict(self.ranks)
        return out

    @staticmethod
    def from_json(d: Any, where: str) -> "LayerShape":
        if not isinstance(d, dict):
            raise UserError(f"{where}: expected an object like {{\"heads\": 12, \"ffn\": 3072}}, got {d!r}")
        unknown = set(d) - {"heads", "ffn", "kv_heads", "dropped", "ranks"}
        if unknown:
            raise UserError(f"{where}: unknown key(s) {sorted(unknown)}", "allowed: heads, kv_heads, ffn, ranks, dropped")
        dropped = d.get("dropped", False)
        if not isinstance(dropped, bool):
            raise UserError(f"{where}: 'dropped' must be true or false, got {dropped!r}")
        if dropped:
            return LayerShape(dropped=True)
        vals = {}
        for key in ("heads", "ffn", "kv_heads"):
            v = d.get(key)
            if v is None:
                if key == "kv_heads":
                    continue
                raise UserError(f"{where}: missing '{key}'", "every kept layer needs heads and ffn")
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise UserError(f"{where}: '{key}' must be a non-negative integer, got {v!r}")
            vals[key] = v
        return LayerShape(heads=vals["heads"], ffn=vals["ffn"], kv_heads=vals.get("kv_heads"),
                          ranks=_ranks_from_json(d.get("ranks", {}), where))


def _ranks_from_json(d: Any, where: str) -> tuple[tuple[str, int], ...]:
    if not isinstance(d, dict):
        raise UserError(f"{where}: 'ranks' must be an object like {{\"up\": 96, \"down\": 120}}, got {d!r}")
    for role, r in d.items():
        if role not in FFN_ROLES:
            raise UserError(f"{where}: unknown FFN Linear {role!r} in 'ranks'", f"allowed: {', '.join(FFN_ROLES)}")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise UserError(f"{where}: rank of {role!r} must be a positive integer, got {r!r}")
    return tuple(sorted(d.items()))


@dataclass(frozen=True)
class ModelShape:
    layers: tuple[LayerShape, ...]
    vocab: int | None = None  # output tokens a trimmed LM head keeps (None: the whole vocabulary)

    # --- construction -------------------------------------------------------------------------
    @staticmethod
    def dense(arch: ArchSpec) -> "ModelShape":
        kv = arch.kv_heads if arch.kv_heads != arch.heads else None
        return ModelShape(tuple(LayerShape(arch.heads, arch.ffn, kv) for _ in range(arch.num_layers)))

    @staticmethod
    def from_model(model: Any) -> "ModelShape":
        """The shape of a live (possibly pruned) transformers model."""
        from ..models import adapter_for  # lazy: models/ needs torch

        return adapter_for(model).shape_of(model)

    # --- JSON ---------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": SHAPE_FORMAT,
            "version": SHAPE_VERSION,
            "layers": [layer.to_json() for layer in self.layers],
            **({"vocab": self.vocab} if self.vocab is not None else {}),
        }

    @staticmethod
    def from_json(payload: Any, source: str = "shape") -> "ModelShape":
        check_header(payload, SHAPE_FORMAT, (SHAPE_VERSION,), source)
        unknown = set(payload) - {"format", "version", "layers", "vocab"}
        if unknown:
            raise UserError(f"{source}: unknown key(s) {sorted(unknown)}", "allowed: format, version, layers, vocab")
        vocab = payload.get("vocab")
        if vocab is not None and (isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 1):
            raise UserError(f"{source}: 'vocab' must be a positive integer (output tokens kept), got {vocab!r}")
        layers = payload.get("layers")
        if not isinstance(layers, list) or not layers:
            raise UserError(f"{source}: 'layers' must be a non-empty list")
        return ModelShape(tuple(LayerShape.from_json(d, f"{source}: layers[{i}]") for i, d in enumerate(layers)), vocab)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.to_json())

    @staticmethod
    def load(path: str | os.PathLike) -> "ModelShape":
        return ModelShape.from_json(read_json(path, "shape file"), source=str(path))

    # --- queries ------------------------------------------------------------------------------
    @property
    def kept_layers(self) -> list[int]:
        return [i for i, layer in enumerate(self.layers) if not layer.dropped]

    @property
    def attention_layers(self) -> list[int]:
        """Original indices of the layers that still have attention (they own KV-cache slots)."""
        return [i for i, layer in enumerate(self.layers) if not layer.dropped and layer.heads > 0]

    def validate(self, arch: ArchSpec, source: str = "shape") -> "ModelShape":
        """Check the shape fits the dense architecture; returns it normalised (kv_heads filled for GQA)."""
        if len(self.layers) != arch.num_layers:
            raise UserError(
                f"{source}: has {len(self.layers)} layers but the model has {arch.num_layers}",
                "list every layer, with {\"dropped\": true} for removed ones",
            )
        if not self.kept_layers:
            raise UserError(f"{source}: drops every layer", "keep at least one layer")
        out = []
        for i, layer in enumerate(self.layers):
            where = f"{source}: layer {i}"
            if layer.dropped:
                out.append(layer)
                continue
            if layer.heads > arch.heads:
                raise UserError(f"{where} asks for {layer.heads} heads; the model has {arch.heads}")
            if layer.ffn > arch.ffn:
                raise UserError(f"{where} asks for ffn {layer.ffn}; the model has {arch.ffn}")
            _check_ranks(layer, arch, where)
            if arch.kv_heads == arch.heads:
                if layer.kv_heads is not None and layer.kv_heads != layer.heads:
                    raise UserError(f"{where}: kv_heads={layer.kv_heads} but this model has no GQA", "drop kv_heads")
                out.append(LayerShape(layer.heads, layer.ffn, ranks=layer.ranks))
                continue
            kv = layer.kv_heads
            if kv is None:  # infer: keep as many KV groups as the query heads need at full group size
                kv = -(-layer.heads // arch.group_size)
            if kv > arch.kv_heads:
                raise UserError(f"{where} asks for {kv} kv_heads; the model has {arch.kv_heads}")
            if (layer.heads == 0) != (kv == 0):
                raise UserError(f"{where}: heads={layer.heads} with kv_heads={kv}", "both must be 0 or both > 0")
            if layer.heads and layer.heads % kv:
                raise UserError(
                    f"{where}: {layer.heads} query heads are not divisible across {kv} kept KV groups",
                    f"use a multiple of {kv} heads or change kv_heads",
                )
            if layer.heads // max(kv, 1) > arch.group_size:
                raise UserError(
                    f"{where}: {layer.heads // kv} query heads per KV group; the model has {arch.group_size}",
                    "keep more kv_heads",
                )
            out.append(LayerShape(layer.heads, layer.ffn, kv, ranks=layer.ranks))
        if self.vocab is not None and self.vocab > arch.vocab:
            raise UserError(f"{source}: keeps {self.vocab} output tokens; the model's vocabulary has {arch.vocab}")
        return ModelShape(tuple(out), self.vocab)

    @property
    def has_ranks(self) -> bool:
        return any(layer.ranks for layer in self.layers)


def _check_ranks(layer: LayerShape, arch: ArchSpec, where: str) -> None:
    if not layer.ranks:
        return
    if layer.ffn == 0:
        raise UserError(f"{where}: has FFN ranks but its FFN is removed", "drop 'ranks' or keep the FFN")
    roles = ffn_roles(arch)
    for role, r in layer.ranks:
        if role not in roles:
            raise UserError(f"{where}: a {arch.family} FFN has no {role!r} Linear", f"ranks apply to {', '.join(roles)}")
        top = min(ffn_linear_dims(arch, role, layer.ffn))
        if r > top:
            raise UserError(f"{where}: rank {r} of {role!r} exceeds its smaller dimension {top}",
                            f"use a rank between 1 and {top}")


# --- a trimmed output vocabulary (``trim-vocab``) ----------------------------------------------------------
VOCAB_CONFIG_KEY = "ziplm_vocab"  # config.json key of a model whose LM head keeps only some output tokens
VOCAB_FORMAT = "ziplm-deploy/vocab"
VOCAB_VERSION = 1
DEFAULT_FILL_MARGIN = 128.0


@dataclass(frozen=True)
class VocabTrim:
    """The output tokens an LM head keeps (its K rows, in ascending id order) out of ``vocab_size``.

    The model still returns logits over the whole vocabulary: at every position the tokens outside
    ``kept`` get ``max(kept logits) - fill_margin``: finite (parity checks, samplers' arithmetic), and
    ``exp(-128)`` underflows to exactly 0 in an fp32 or fp16 softmax, so they can never be generated.
    JSON (under ``ziplm_vocab`` in config.json)::

        {"format": "ziplm-deploy/vocab", "version": 1, "vocab_size": 49152, "fill_margin": 128.0,
         "kept": [0, 1, 2, 17, ...]}
    """

    vocab_size: int
    kept: tuple[int, ...]
    fill_margin: float = DEFAULT_FILL_MARGIN

    def to_json(self) -> dict[str, Any]:
        return {"format": VOCAB_FORMAT, "version": VOCAB_VERSION, "vocab_size": self.vocab_size,
                "fill_margin": self.fill_margin, "kept": list(self.kept)}

    @staticmethod
    def from_json(payload: Any, source: str = "vocab") -> "VocabTrim":
        """Every field checked (names ``source`` and the key): ids are distinct, ascending and below vocab_size."""
        from . import checks

        check_header(payload, VOCAB_FORMAT, (VOCAB_VERSION,), source)
        unknown = set(payload) - {"format", "version", "vocab_size", "fill_margin", "kept"}
        if unknown:
            raise UserError(f"{source}: unknown key(s) {sorted(unknown)}",
                            "allowed: format, version, vocab_size, fill_margin, kept")
        for key in ("vocab_size", "kept"):
            if key not in payload:
                raise UserError(f"{source}: missing {key!r}", "re-run trim-vocab")
        vocab = checks.integer(payload["vocab_size"], source, "vocab_size", lo=1)
        margin = checks.number(payload.get("fill_margin", DEFAULT_FILL_MARGIN), source, "fill_margin", lo=0,
                               lo_open=True)
        kept = checks.typed(payload["kept"], list, source, "kept", "a list of token ids")
        if not kept:
            raise UserError(f"{source}: kept is empty", "keep at least one token")
        ids = [checks.integer(v, source, f"kept[{i}]", lo=0, hi=vocab - 1) for i, v in enumerate(kept)]
        bad = next((i for i in range(1, len(ids)) if ids[i] <= ids[i - 1]), None)
        if bad is not None:
            raise UserError(f"{source}: kept[{bad}] = {ids[bad]} is not above kept[{bad - 1}] = {ids[bad - 1]}",
                            "token ids must be distinct and ascending")
        return VocabTrim(vocab, tuple(ids), margin)

    def validate(self, vocab_size: int, source: str = "vocab") -> "VocabTrim":
        if self.vocab_size != vocab_size:
            raise UserError(f"{source}: vocab_size {self.vocab_size} differs from the model's {vocab_size}",
                            "re-run trim-vocab on this model")
        return self
