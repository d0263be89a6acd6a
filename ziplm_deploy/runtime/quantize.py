"""Deployment precision of an ONNX graph, and the one function that applies it (torch-free).

``fp32`` leaves a graph as it is; ``int8-dynamic`` is ONNX Runtime's ``quantize_dynamic``: QInt8 weights
(per tensor, or per output channel with ``per_channel``), activations quantized to uint8 at run time,
MatMuls with a constant weight only. ``int8-static`` is ``quantize_static`` in QDQ format: the same weights,
and every quantized MatMul's activation scale calibrated once (MinMax) on calibration token windows, so no
range is computed per call (faster) but an outlier the calibration did not see is clipped (on SmolLM2:
~11% faster than dynamic per recipe, and only ``/fp32-down`` keeps its quality; tools/results). Without
calibration windows (the profiler's block graphs) synthetic inputs calibrate it: timing does not depend on
the scales; an exported model must be calibrated on text (``export --calib``). The profiler (block graphs,
``--check`` shapes), the exporter and edge devices all call ``quantize_graph``, so a latency table predicts
the model exactly as shipped.

A precision is named by its label: ``fp32``, or ``int8-dynamic`` / ``int8-static`` with recipe options in this order:
``/per-channel`` (per-output-channel weight scales), ``/fp32-embed`` (the token-embedding table stays fp32:
with a tied LM head, int8 makes every call dequantize the whole 49,152 x 576 table before the head's fp32
MatMul, so keeping it fp32 is faster, not only more accurate) and ``/fp32-down`` (every FFN output
projection stays fp32: its input, the FFN's hidden activations, carries the massive per-token outliers that
per-tensor dynamic activation quantization cannot represent; on SmolLM2 those MatMuls are most of int8's
quality loss). The label goes into table fingerprints and into the ONNX metadata (``ziplm_precision``).
Measured on SmolLM2-135M (tools/results/int8_recipes_smollm2.md).
"""

from __future__ import annotations

import ast
import logging
import os
import re
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..core.errors import UserError
from ..core.fingerprint import INT8_SCHEMES, PRECISION_OPTIONS, canonical_precision

PRECISIONS = ("fp32", *INT8_SCHEMES)
STATIC_CALIBRATION = (16, 128)  # windows x tokens of calibration text an exported int8-static graph is calibrated on
PER_CHANNEL = "per-channel"
PRECISION_METADATA = "ziplm_precision"  # ONNX metadata key of the precision label
QUALITY_METADATA = "ziplm_quality"  # ONNX metadata: how a quantized graph was validated (export.quantize)
TOP1_KIND = "top1-agreement"  # its tolerance kind: arg-max agreement with the fp32 PyTorch logits
# Top-1 agreement of a quantized graph's logits with fp32 PyTorch on the export's validation inputs (random
# tokens) is a wiring check, not a quality verdict: it catches a broken or mismatched graph (an unrelated
# model agrees on ~0% of positions), while a sound int8 SmolLM2-135M agrees on 36% (dense) and 23% (ZipLM 2x)
# of these low-confidence positions (~60% on real text). Quality is judged on text: `export --eval-data
# --max-ppl-increase`, and the gate's `max_perplexity_increase` on `verify --eval-data`.
DEFAULT_MIN_TOP1 = 0.1


@dataclass(frozen=True)
class Precision:
    name: str = "fp32"
    per_channel: bool = False
    fp32_embed: bool = False  # the embedding table is not quantized (see the module docstring)
    fp32_down: bool = False  # FFN output projections are not quantized
    fp32_down_layers: tuple[int, ...] = ()  # only these layers' (dense-model indices; ``fp32-down=L,...``)

    def __post_init__(self) -> None:
        if self.name not in PRECISIONS:
            raise UserError(f"unknown precision {self.name!r}", f"choose one of {', '.join(PRECISIONS)}")
        if self.name == "fp32" and self.options:
            raise UserError(f"{', '.join(self.options)} needs a quantized precision",
                            "pass --precision int8-dynamic/" + "/".join(self.options))
        layers = self.fp32_down_layers
        if self.fp32_down and layers:
            raise UserError("fp32-down keeps every layer's output projection fp32, fp32-down=... only some",
                            "pass one of them")
        if list(layers) != sorted(set(layers)) or any(not isinstance(i, int) or i < 0 for i in layers):
            raise UserError(f"fp32-down layers must be distinct non-negative layer indices, got {list(layers)}",
                            "e.g. int8-dynamic/fp32-down=1,2,9")

    @property
    def options(self) -> tuple[str, ...]:
        flags = (self.per_channel, self.fp32_embed, self.fp32_down)
        named = tuple(o for o, on in zip(PRECISION_OPTIONS, flags) if on)
        return named + (("fp32-down=" + ",".join(map(str, self.fp32_down_layers)),) if self.fp32_down_layers else ())

    def keeps_down(self, layer: int) -> bool:
        """Whether layer ``layer``'s (dense index) FFN output projection stays fp32."""
        return self.fp32_down or layer in self.fp32_down_layers

    @property
    def quantized(self) -> bool:
        return self.name != "fp32"

    @property
    def static(self) -> bool:
        """Activation scales calibrated once (``int8-static``), not computed per call."""
        return self.name == "int8-static"

    @property
    def label(self) -> str:
        return "/".join((self.name, *self.options))

    @property
    def cli_flags(self) -> str:
        """The command-line option that selects this precision."""
        return f"--precision {self.label}"

    @staticmethod
    def parse(label: str, source: str = "precision") -> "Precision":
        """The precision a label names (``int8-dynamic/per-channel/fp32-embed``; options in any order, each
        once); anything else is a ``UserError``."""
        canonical = canonical_precision(label)
        if canonical is None:
            raise UserError(f"{source}: unknown precision {label!r}",
                            f"fp32, or int8-dynamic or int8-static with options "
                            f"{', '.join('/' + o for o in PRECISION_OPTIONS)} or /fp32-down=L,L,... "
                            "(e.g. int8-dynamic/fp32-embed)")
        name, *options = canonical.split("/")
        layers = next((tuple(int(x) for x in o.partition("=")[2].split(",")) for o in options
                       if o.startswith("fp32-down=")), ())
        return Precision(name, *(o in options for o in PRECISION_OPTIONS), fp32_down_layers=layers)


FP32 = Precision()
PRECISION_HELP = ("fp32, or int8-dynamic (activation ranges per call) or int8-static (QDQ, calibrated on text) with "
                  "recipe options appended: /per-channel, /fp32-embed (keep the embedding table fp32: faster with a "
                  "tied LM head), /fp32-down (keep FFN output projections fp32: most of int8's quality loss), "
                  "e.g. int8-dynamic/fp32-embed/fp32-down")


def precision_from_args(label: str, per_channel: bool = False, source: str = "--precision") -> Precision:
    """The precision a command line names: a label (``--precision``), ``--per-channel`` adding that option."""
    precision = Precision.parse(label, source)
    return replace(precision, per_channel=True) if per_channel else precision


def deployed_precision(model_dir: str | os.PathLike) -> Precision:
    """The precision a model directory is deployed in: the one it was pruned for (its manifest's table
    fingerprint; fp32 without a manifest). A bad label is a ``UserError`` naming the manifest."""
    from ..core.manifest import MANIFEST_FILE, pruned_precision

    return Precision.parse(pruned_precision(model_dir), f"{model_dir}/{MANIFEST_FILE}: fingerprint.precision")


def check_precision_layers(precision: Precision, num_layers: int, what: str = "the model") -> None:
    """Refuse, before any work, a ``fp32-down=L,...`` that names a layer ``what`` does not have."""
    if precision.fp32_down_layers and max(precision.fp32_down_layers) >= num_layers:
        raise UserError(f"precision {precision.label} names layer {max(precision.fp32_down_layers)}, but {what} has "
                        f"{num_layers} layers", "list layers of this model (ziplm-deploy int8-plan prints them)")


def quantize_graph(model: Any, precision: Precision, layer_ids: Any = None, calibration: Any = None) -> bytes:
    """The serialized graph in ``precision``: ``model`` is a ModelProto, serialized bytes or a path."""
    import onnx

    proto = model if isinstance(model, onnx.ModelProto) else _load(model)
    if not precision.quantized:
        return proto.SerializeToString()
    with tempfile.TemporaryDirectory(prefix="ziplm-quant.") as tmp:
        out = Path(tmp) / "model.onnx"
        quantize_file_to(proto, out, precision, layer_ids, calibration)
        return out.read_bytes()


def quantize_file_to(model: Any, out: str | os.PathLike, precision: Precision, layer_ids: Any = None,
                     calibration: Any = None) -> None:
    """Write ``model`` (ModelProto or path) to ``out`` in ``precision``, keeping its metadata and adding
    ``ziplm_precision``. ``layer_ids``: the dense-model index of each exported layer (a pruned model's dropped
    layers are gone from its graph), for ``fp32-down=L,...``; None: the graph's layers are the dense ones.
    ``calibration``: token windows (n, seq) that calibrate ``int8-static`` (a graph taking ``input_ids``);
    None calibrates it on synthetic inputs (for timing only)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = model if isinstance(model, onnx.ModelProto) else _load(model)
    meta = {p.key: p.value for p in proto.metadata_props}
    if precision.quantized:
        excluded = fp32_nodes(proto, precision, layer_ids)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantizers warn about pre-processing on every call
        try:
            if precision.static:
                _quantize_static(proto, out, precision, excluded, calibration_feeds(proto, calibration))
            else:
                quantize_dynamic(proto, out, per_channel=precision.per_channel, weight_type=QuantType.QInt8,
                                 nodes_to_exclude=excluded)
        finally:
            root.setLevel(level)
        proto = onnx.load(str(out))
    meta[PRECISION_METADATA] = precision.label
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save_model(proto, str(out))


def _quantize_static(proto: Any, out: str | os.PathLike, precision: Precision, excluded: list[str],
                     feeds: list[dict[str, Any]]) -> None:
    """``quantize_static`` in QDQ format on the nodes ``quantize_dynamic`` quantizes: MatMul / Gemm with a
    constant weight and Gather of a constant table (not the attention's activation x activation MatMuls),
    uint8 activations with MinMax scales over ``feeds``, QInt8 weights."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self) -> dict[str, Any] | None:
            return next(self.it, None)

    import onnx

    inits = {i.name for i in proto.graph.initializer}
    chosen = [n.name for n in proto.graph.node if n.name not in excluded and (
        (n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits)
        or (n.op_type == "Gather" and n.input and n.input[0] in inits))]
    if not chosen:  # quantize_static reads an empty list as "every node"
        onnx.save_model(proto, str(out))
        return
    with tempfile.TemporaryDirectory(prefix="ziplm-quant.") as tmp:
        source = Path(tmp) / "fp32.onnx"  # from a file: quantize_static rewrites a ModelProto it is given in place
        onnx.save_model(proto, str(source))
        quantize_static(source, out, Feeds(), quant_format=QuantFormat.QDQ, per_channel=precision.per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["MatMul", "Gemm", "Gather"], nodes_to_quantize=chosen,
                        calibrate_method=CalibrationMethod.MinMax)


SYNTHETIC_CALIBRATION = (4, 16)  # samples x tokens when int8-static has no calibration text (timing only)


def calibration_feeds(proto: Any, windows: Any = None) -> list[dict[str, Any]]:
    """Inputs that calibrate a graph: one per token window (``input_ids`` from the window, masks of ones,
    positions 0..L-1, empty past KV), or synthetic ones (random tokens below the graph's vocabulary, random
    hidden states) without windows. A graph that cannot take token windows is refused."""
    import numpy as np

    from .feeds import synthetic_feeds

    inputs = _graph_inputs(proto)
    names = [i.name for i in inputs]
    vocab = _vocab(proto)
    if windows is None:
        n, seq = SYNTHETIC_CALIBRATION
        return [synthetic_feeds(inputs, {"batch": 1, "seq": seq, "past": 0, "total": seq}, vocab, seed=i)
                for i in range(n)]
    windows = np.asarray(windows, dtype=np.int64)
    if "input_ids" not in names or windows.ndim != 2 or not windows.size:
        raise UserError(f"int8-static calibration needs a graph taking input_ids and token windows (n, seq); graph "
                        f"{proto.graph.name!r} takes {', '.join(names)}", "calibrate an exported model on text")
    if vocab and int(windows.max()) >= vocab:
        raise UserError(f"calibration token id {int(windows.max())} is beyond the graph's vocabulary of {vocab}",
                        "calibrate with the model's own tokenizer")
    feeds = []
    for i, window in enumerate(windows):
        seq = len(window)
        feed = synthetic_feeds(inputs, {"batch": 1, "seq": seq, "past": 0, "total": seq}, vocab or 1000, seed=i)
        feed["input_ids"] = window[None].astype(feed["input_ids"].dtype)
        feeds.append(feed)
    return feeds


def _graph_inputs(proto: Any) -> tuple[Any, ...]:
    import numpy as np
    from onnx import helper

    from .base import TensorInfo

    inits = {i.name for i in proto.graph.initializer}
    out = []
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
        out.append(TensorInfo(vi.name, np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)), dims))
    return tuple(out)


def _vocab(proto: Any) -> int:
    """Rows of the embedding table ``input_ids`` indexes (0 when the graph has none)."""
    tables = {i.name: i.dims for i in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "Gather" and len(n.input) == 2 and n.input[1] == "input_ids" and n.input[0] in tables:
            return int(tables[n.input[0]][0])
    return 0


# the FFN output projection of a layer, as the PyTorch exporter's name scopes record it (Llama and BERT
# ``layers.N``/``layer.N``, GPT-2 ``h.N``), a FLOP-factorised one's two halves included
_DOWN_SCOPES = {"llama": "mlp.down_proj", "gpt2": "mlp.c_proj", "bert": "output.dense"}
_SCOPES_KEY = "pkg.torch.onnx.name_scopes"


def fp32_nodes(proto: Any, precision: Precision, layer_ids: Any = None) -> list[str]:
    """Names of the nodes ``precision`` keeps in fp32: embedding ``Gather``s of an initializer table
    (``fp32-embed``), and the FFN output projections' ``MatMul``/``Gemm`` (``fp32-down``): in the
    profiler's graphs the ones whose weight is ``[layers.N.]ffn.down[.first|.second].weight``, in exported
    graphs the ones the exporter scoped under a layer's output projection; with ``fp32-down=L,...`` only those
    of layers L (the profiler's ``layers.N`` are dense indices, an export's are mapped through ``layer_ids``).
    A graph where ``fp32-down`` cannot tell the projections is refused: quantizing it all would silently ship
    another recipe than the label says."""
    inits = {i.name for i in proto.graph.initializer}
    if precision.fp32_down_layers:
        layers = _recorded_layers(proto)
        if layers is not None and max(precision.fp32_down_layers) >= len(layers):
            raise UserError(f"precision {precision.label} names layer {max(precision.fp32_down_layers)}, but the model "
                            f"has {len(layers)} layers", "list layers of this model (ziplm-deploy int8-plan prints them)")
        if layer_ids is None and layers is not None:
            layer_ids = [i for i, layer in enumerate(layers) if not layer.get("dropped")]
    keep = []
    if precision.fp32_embed:
        keep += [n.name for n in proto.graph.node if n.op_type == "Gather" and n.input and n.input[0] in inits]
    if precision.fp32_down or precision.fp32_down_layers:
        matmuls = [n for n in proto.graph.node if n.op_type in ("MatMul", "Gemm")]
        if matmuls and not any(_BLOCK_WEIGHT.match(i) for n in proto.graph.node for i in n.input) and not any(
                p.key == _SCOPES_KEY for n in matmuls for p in n.metadata_props):
            raise UserError(f"precision {precision.label}: cannot tell the FFN output projections in graph "
                            f"{proto.graph.name!r} (neither ziplm-deploy block weights nor exporter name scopes)",
                            "export the model with ziplm-deploy export, or drop /fp32-down")
        for n in matmuls:
            layer = _ffn_down_layer(n, layer_ids)
            if layer is None or not (precision.fp32_down or layer in precision.fp32_down_layers):
                continue  # quantize_dynamic first rewrites a Gemm to <name>_MatMul + Add
            keep += [n.name, f"{n.name}_MatMul"] if n.op_type == "Gemm" else [n.name]
    missing = [n for n in keep if not n]
    if missing:
        raise UserError(f"precision {precision.label}: graph {proto.graph.name!r} has unnamed nodes to keep in fp32",
                        "export the model with ziplm-deploy export")
    return keep


_BLOCK_WEIGHT = re.compile(r"^((layers\.\d+\.)?(attn|ffn)|embed|lm_head)\.")  # profiling/blocks.py names
_BLOCK_DOWN = re.compile(r"^(?:layers\.(\d+)\.)?ffn\.down(\.first|\.second)?\.weight$")
_EXPORT_DOWN = re.compile(r"\.(?:layers?|h)\.(\d+)\.(?:%s)(?:\.|$)" % "|".join(re.escape(d) for d in _DOWN_SCOPES.values()))
_NO_LAYER = -1  # a profiler graph of one FFN Linear (``ffn.down``): no layer, kept by ``fp32-down`` only


def _recorded_layers(proto: Any) -> list[dict[str, Any]] | None:
    """The per-layer shape ``export`` records in an exported graph's metadata (``ziplm_shape``, dropped layers
    included: they are gone from the graph itself); None without one."""
    import json

    meta = {p.key: p.value for p in proto.metadata_props}
    if "ziplm_shape" not in meta:
        return None
    try:
        layers = json.loads(meta["ziplm_shape"])["layers"]
        if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
            raise TypeError
        return layers
    except (ValueError, KeyError, TypeError):
        raise UserError(f"graph {proto.graph.name!r}: metadata ziplm_shape is not a shape", "re-export the model") from None


def _ffn_down_layer(node: Any, layer_ids: Any) -> int | None:
    """The dense-model layer index of an FFN output projection node (``_NO_LAYER`` for a layer-less profiler
    graph), None for any other node."""
    for i in node.input:
        m = _BLOCK_DOWN.match(i)
        if m:
            return int(m.group(1)) if m.group(1) is not None else _NO_LAYER
    for prop in node.metadata_props:
        if prop.key == _SCOPES_KEY:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            for sc in scopes:
                m = _EXPORT_DOWN.search("." + sc) if isinstance(sc, str) else None
                if m:
                    physical = int(m.group(1))
                    if layer_ids is None:
                        return physical
                    if physical >= len(layer_ids):
                        raise UserError(f"graph layer {physical} is beyond the model's {len(layer_ids)} layers",
                                        "export the model with ziplm-deploy export")
                    return int(layer_ids[physical])
    return None


def precision_of_metadata(meta: dict[str, str], source: str) -> Precision:
    """The precision an ONNX file records (files without the key were written in fp32)."""
    return Precision.parse(meta.get(PRECISION_METADATA, "fp32"), f"{source}: metadata {PRECISION_METADATA}")


def _load(model: Any) -> Any:
    import onnx

    if isinstance(model, bytes):
        return onnx.load_from_string(model)
    return onnx.load(os.fspath(model))


def quality_of_metadata(meta: dict[str, str], source: str) -> dict[str, Any] | None:
    """The ``ziplm_quality`` record of a quantized ONNX file (None when absent)."""
    import json

    if QUALITY_METADATA not in meta:
        return None
    try:
        record = json.loads(meta[QUALITY_METADATA])
    except json.JSONDecodeError:
        raise UserError(f"{source}: metadata {QUALITY_METADATA} is not valid JSON", "re-export it") from None
    if not isinstance(record, dict):
        raise UserError(f"{source}: metadata {QUALITY_METADATA} must be an object", "re-export it")
    return record
