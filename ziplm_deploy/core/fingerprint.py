"""The device and runtime a latency table (or a measurement) was taken on.

A table only predicts the deployment it was measured in: same CPU/GPU, runtime and version, provider,
optimisation level, threads, dtype, precision and input sizes. ``differences`` lists what does not match.
``precision`` (``fp32``, ``int8-dynamic`` or ``int8-static`` and its recipe options, e.g.
``int8-dynamic/per-channel/fp32-embed``: the graphs were quantized so) came later: a fingerprint without it
was measured in fp32.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from .checks import integer, typed
from .errors import UserError

_INT_FIELDS = ("cores", "threads", "batch", "seq", "kv_len", "opset")
DEFAULT_PRECISION = "fp32"  # of fingerprints written before precisions existed
# which prefill positions a causal LM's graphs computed logits for: every one (scoring, the exporter's
# default graph) or the last only (generation: the first token's, as GenAI folders compute them); decode
# steps have one position ("all"). Fingerprints written before the field existed timed every position.
LOGITS = ("all", "last")
# int8 recipe options, in label order (runtime.quantize.Precision): per-channel weight scales; the embedding
# table kept fp32 (a tied LM head is then not dequantized on every call); FFN output projections kept fp32
PRECISION_OPTIONS = ("per-channel", "fp32-embed", "fp32-down")
# int8 schemes: activations quantized at run time per call (dynamic), or with scales calibrated once (static, QDQ)
INT8_SCHEMES = ("int8-dynamic", "int8-static")
PRECISION_LABELS = ("fp32",) + tuple(  # the labels without a layer list (runtime.quantize.Precision.label)
    scheme + "".join(f"/{o}" for i, o in enumerate(PRECISION_OPTIONS) if mask >> i & 1)
    for scheme in INT8_SCHEMES for mask in range(2 ** len(PRECISION_OPTIONS)))
# ``fp32-down=L,L,...``: only those layers' FFN output projections stay fp32 (dense-model layer indices)
_DOWN_LAYERS = re.compile(r"^fp32-down=(0|[1-9][0-9]*)(,(0|[1-9][0-9]*))*$")


def canonical_precision(label: Any) -> str | None:
    """The canonical form of a precision label (options in ``PRECISION_OPTIONS`` order, a layer list sorted), or
    None when ``label`` is not one: unknown or repeated options, ``fp32`` with options, both ``fp32-down`` and
    ``fp32-down=...``, a repeated layer."""
    if not isinstance(label, str):
        return None
    name, *options = label.split("/")
    if name == "fp32":
        return None if options else "fp32"
    if name not in INT8_SCHEMES:
        return None
    flags: set[str] = set()
    layers: list[int] | None = None
    for option in options:
        if _DOWN_LAYERS.match(option):
            listed = [int(x) for x in option.partition("=")[2].split(",")]
            if layers is not None or len(set(listed)) != len(listed):
                return None
            layers = sorted(listed)
        elif option in PRECISION_OPTIONS and option not in flags:
            flags.add(option)
        else:
            return None
    if layers is not None and "fp32-down" in flags:
        return None
    parts = [o for o in PRECISION_OPTIONS if o in flags]
    if layers is not None:
        parts.append("fp32-down=" + ",".join(map(str, layers)))
    return "/".join((name, *parts))


def fp32_down_layers(label: str) -> tuple[int, ...]:
    """The layer list of a (canonical) label's ``fp32-down=L,...`` option; () without one."""
    for option in label.split("/")[1:]:
        if option.startswith("fp32-down="):
            return tuple(int(x) for x in option.partition("=")[2].split(","))
    return ()


def is_precision_label(label: Any) -> bool:
    """A precision label as machine-written (canonical)."""
    return label is not None and canonical_precision(label) == label


@dataclass(frozen=True)
class DeviceFingerprint:
    cpu: str  # CPU model name
    cores: int  # logical CPUs visible to the process
    gpu: str | None  # GPU name for GPU providers, None on CPU
    runtime: str  # "onnxruntime" | "tensorrt" | "torch"
    runtime_version: str
    provider: str  # e.g. "CPUExecutionProvider", "TensorrtExecutionProvider", "cuda-graph"
    opt_level: str  # runtime optimisation level ("all", "extended", "basic", "disabled", ...)
    threads: int  # intra-op threads (0: runtime default)
    dtype: str  # "float32" | "float16" | ...
    batch: int
    seq: int  # prefill sequence length; 1 for decode
    mode: str  # "prefill" | "decode"
    kv_len: int  # KV-cache length for decode; 0 for prefill
    opset: int
    platform: str  # OS / machine
    producer: str  # "ziplm-deploy X.Y.Z"
    precision: str = DEFAULT_PRECISION  # how the graphs were quantized (runtime.quantize labels)
    logits: str = "all"  # LOGITS: prefill logits of every position, or of the last only

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(d: Any, source: str) -> "DeviceFingerprint":
        if not isinstance(d, dict):
            raise UserError(f"{source}: 'fingerprint' must be an object")
        names = {f.name for f in fields(DeviceFingerprint)}
        missing = names - set(d) - {"precision", "logits"}
        unknown = set(d) - names
        if missing or unknown:
            raise UserError(
                f"{source}: fingerprint has missing {sorted(missing)} / unknown {sorted(unknown)} keys",
                "regenerate the table with `ziplm-deploy profile`",
            )
        return DeviceFingerprint(**{name: _field(name, d[name], source) for name in sorted(names & set(d))})

    def precision_mismatch(self, precision: str, what: str) -> str | None:
        """A one-line reason when ``what`` (a model, a measurement) is in another precision than this table."""
        if precision == self.precision:
            return None
        return f"the latency table was measured in precision {self.precision}, but {what} is {precision}"

    def differences(self, other: "DeviceFingerprint", ignore: tuple[str, ...] = ("producer",)) -> list[str]:
        """``key: mine != theirs`` for every field that differs (``ignore``d fields excepted)."""
        out = []
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name not in ignore and a != b:
                out.append(f"{f.name}: {a!r} != {b!r}")
        return out


def _field(name: str, value: Any, source: str) -> Any:
    """A fingerprint value of the right type: counts are non-negative integers, ``gpu`` a string or
    null, everything else a string."""
    key = f"fingerprint.{name}"
    if name in _INT_FIELDS:
        return integer(value, source, key, lo=0)
    if name == "precision":
        label = typed(value, str, source, key, "a string")
        if not is_precision_label(label):
            raise UserError(f"{source}: {key} must be a precision label ({', '.join(PRECISION_LABELS[:3])}, ...), "
                            f"got {label!r}",
                            "regenerate the table with `ziplm-deploy profile`")
        return label
    if name == "logits":
        label = typed(value, str, source, key, "a string")
        if label not in LOGITS:
            raise UserError(f"{source}: {key} must be one of {', '.join(LOGITS)}, got {label!r}",
                            "regenerate the table with `ziplm-deploy profile`")
        return label
    if name == "gpu":
        return typed(value, (str, type(None)), source, key, "a string or null")
    return typed(value, str, source, key, "a string")
