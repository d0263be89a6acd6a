"""A generation workload (prompt P tokens, generate G tokens, batch B) and its latency model (torch-free).

``Workload`` is what a user ships: ``chat`` (P 512 / G 128), ``prefill-S`` (P S / G 0: one prefill pass,
what the prefill-only tables always measured) or ``PxG`` (``256x64``).

``WorkloadTables`` is one prefill ``LatencyTable`` at the workload's prompt length and decode tables at a
few KV-cache lengths, all of one model and one deployment (device, runtime, threads, batch, precision).
Its latency model for a ``ModelShape``:

- TTFT = prefill(P): the prefill pass yields the first token.
- The other G - 1 tokens each take one decode step; the step that yields token k + 1 feeds token k
  with a cache of L = P + k - 1 tokens, so the steps run at L = P .. P + G - 2 (G - 1 steps; with G <= 1
  there is no decode step). This is what ``generate`` in transformers and ONNX Runtime GenAI's loop do:
  G calls, the first of them the prefill.
- step(L): linear interpolation in L between the whole-shape predictions of the two decode tables
  around L (each ``alpha_k * sum(entries_k) + beta_k`` with its own calibration). The whole-shape
  prediction is interpolated, not the per-module entries, because each table's calibration (alpha,
  beta) was fitted on reference models measured at that KV length only: interpolated entries would
  need an alpha and beta nobody measured. It is still linear in each table's entries, so
  ``e2e = prefill(P) + sum_k W_k * decode_k`` with fixed weights ``W_k`` (``decode_weights``), which a
  search can budget on like one table. KV lengths outside the measured ones are refused, never
  extrapolated.
- end-to-end = TTFT + sum of the steps; ms/token = their mean; tokens/s = B * 1000 / ms per token
  (decode throughput: each step yields one token per sequence).

Manifest JSON (``ziplm-deploy profile --workload`` writes it beside the tables)::

    {"format": "ziplm-deploy/workload-tables", "version": 1,
     "workload": {"prompt": 512, "generate": 128, "batch": 1},
     "prefill": {"table": "prefill_b1_s512.json", "sha256": "..."},
     "decode": [{"kv_len": 512, "table": "decode_b1_kv512.json", "sha256": "..."}, ...]}

Table paths are relative to the manifest's folder; a table whose bytes changed since the manifest was
written is refused (its sha256 no longer matches).
"""

from __future__ import annotations

import hashlib
import os
import re
from bisect import bisect_left
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .checks import integer, mapping, typed
from .errors import UserError
from .jsonio import atomic_write_json, check_header, read_json
from .shape import ModelShape
from .table import TABLE_FORMAT, LatencyTable

WORKLOAD_FORMAT = "ziplm-deploy/workload-tables"
WORKLOAD_VERSION = 1
PRESETS: dict[str, tuple[int, int]] = {"chat": (512, 128)}  # name -> (prompt, generate)
MAX_TOKENS = 1 << 20  # prompt + generate: a sanity bound (no runtime here has a longer context)
_SPEC_HINT = "use a preset (chat), prefill-S (e.g. prefill-128) or PxG (prompt x generated tokens, e.g. 256x64)"
# fingerprint fields that legitimately differ between the tables of one workload
_PER_TABLE_FIELDS = ("producer", "seq", "mode", "kv_len", "logits")


@dataclass(frozen=True)
class Workload:
    prompt: int  # P: prompt tokens (prefill length)
    generate: int = 0  # G: generated tokens (0: prefill only, e.g. scoring)
    batch: int = 1  # B: sequences generated together

    def __post_init__(self) -> None:
        for key, value, lo in (("prompt", self.prompt, 1), ("generate", self.generate, 0), ("batch", self.batch, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise UserError(f"workload {key} must be an integer >= {lo}, got {value!r}", _SPEC_HINT)
        if self.prompt + self.generate > MAX_TOKENS:
            raise UserError(f"workload of {self.prompt} + {self.generate} tokens is longer than {MAX_TOKENS}",
                            "use a shorter prompt or fewer generated tokens")

    # --- names ------------------------------------------------------------------------------------
    @staticmethod
    def parse(text: str, batch: int = 1) -> "Workload":
        """``chat``, ``prefill-S`` or ``PxG`` (case-insensitive, surrounding spaces ignored)."""
        spec = str(text).strip().lower()
        if spec in PRESETS:
            return Workload(*PRESETS[spec], batch=batch)
        m = re.fullmatch(r"prefill-([0-9]+)", spec)
        if m:
            return Workload(_spec_int(m.group(1), text, "prompt", 1), 0, batch)
        m = re.fullmatch(r"([0-9]+)x([0-9]+)", spec)
        if m:
            return Workload(_spec_int(m.group(1), text, "prompt", 1), _spec_int(m.group(2), text, "generate", 0), batch)
        raise UserError(f"unknown workload {text!r}", _SPEC_HINT)

    @property
    def name(self) -> str:
        """The preset's name, ``prefill-S`` or ``PxG``: ``Workload.parse(w.name)`` gives back ``w`` (batch aside)."""
        for name, pg in PRESETS.items():
            if pg == (self.prompt, self.generate):
                return name
        return f"prefill-{self.prompt}" if self.generate == 0 else f"{self.prompt}x{self.generate}"

    def describe(self) -> str:
        return f"{self.name} (prompt {self.prompt}, generate {self.generate}, batch {self.batch})"

    # --- decode steps ------------------------------------------------------------------------------
    @property
    def step_kv_lens(self) -> range:
        """KV-cache lengths of the decode steps: P .. P + G - 2 (empty for G <= 1)."""
        return range(self.prompt, self.prompt + max(self.generate - 1, 0))

    def default_kv_lens(self, points: int = 3) -> tuple[int, ...]:
        """Where to measure decode tables: ``points`` evenly spaced KV lengths from the first step's to the
        last step's (both included; fewer when the steps are fewer)."""
        steps = self.step_kv_lens
        if not steps:
            return ()
        first, last = steps[0], steps[-1]
        if points < 2 or first == last:
            return (first,)
        return tuple(sorted({first + i * (last - first) // (points - 1) for i in range(points)}))

    def check_kv_lens(self, kv_lens: tuple[int, ...] | list[int], what: str = "decode tables") -> None:
        """Refuse decode KV lengths that do not cover the steps (interpolation only, no extrapolation)."""
        steps = self.step_kv_lens
        if not steps:
            return
        if not kv_lens:
            raise UserError(f"workload {self.name} has {len(steps)} decode steps (KV {steps[0]}..{steps[-1]}) "
                            f"but there are no {what}", "profile with --workload to measure them")
        lo, hi = min(kv_lens), max(kv_lens)
        if lo > steps[0] or hi < steps[-1]:
            raise UserError(f"{what} at KV lengths {sorted(kv_lens)} do not cover the decode steps of workload "
                            f"{self.name} (KV {steps[0]}..{steps[-1]})",
                            f"include a KV length <= {steps[0]} and one >= {steps[-1]}")

    # --- JSON --------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "generate": self.generate, "batch": self.batch}

    @staticmethod
    def from_json(d: Any, source: str = "workload", key: str = "workload") -> "Workload":
        d = mapping(d, source, key)
        names = {"prompt", "generate", "batch"}
        missing, unknown = names - set(d), set(d) - names
        if missing or unknown:
            raise UserError(f"{source}: {key}: missing {sorted(missing)} / unknown {sorted(unknown)} keys",
                            "a workload is {\"prompt\": P, \"generate\": G, \"batch\": B}")
        return Workload(integer(d["prompt"], source, f"{key}.prompt", lo=1, hi=MAX_TOKENS),
                        integer(d["generate"], source, f"{key}.generate", lo=0, hi=MAX_TOKENS),
                        integer(d["batch"], source, f"{key}.batch", lo=1))


def _spec_int(digits: str, text: str, what: str, lo: int) -> int:
    value = int(digits)
    if value < lo or value > MAX_TOKENS:
        raise UserError(f"workload {text!r}: {what} must be between {lo} and {MAX_TOKENS}, got {value}", _SPEC_HINT)
    return value


@dataclass(frozen=True)
class WorkloadPrediction:
    """Predicted generation latency of one shape under one workload."""

    ttft_ms: float
    decode_ms: float  # sum of the decode steps
    steps: int  # G - 1
    batch: int

    @property
    def e2e_ms(self) -> float:
        return self.ttft_ms + self.decode_ms

    @property
    def ms_per_token(self) -> float | None:
        return self.decode_ms / self.steps if self.steps else None

    @property
    def tokens_per_s(self) -> float | None:
        return self.batch * 1000.0 / self.ms_per_token if self.steps else None

    def to_json(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 4)

        return {"ttft_ms": r(self.ttft_ms), "ms_per_token": r(self.ms_per_token), "tokens_per_s": r(self.tokens_per_s),
                "e2e_ms": r(self.e2e_ms), "decode_steps": self.steps}


def speedups(pred: WorkloadPrediction, dense: WorkloadPrediction) -> dict[str, float | None]:
    """Dense over ``pred`` for TTFT, decode (ms/token, = the tokens/s ratio) and end to end."""
    decode = dense.ms_per_token / pred.ms_per_token if pred.steps else None
    return {"ttft": dense.ttft_ms / pred.ttft_ms, "decode": decode, "e2e": dense.e2e_ms / pred.e2e_ms}


@dataclass(frozen=True)
class WorkloadTables:
    """A prefill table at P and decode tables (ascending KV length) of one model and deployment."""

    workload: Workload
    prefill: LatencyTable
    decode: tuple[LatencyTable, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "decode", tuple(sorted(self.decode, key=lambda t: t.fingerprint.kv_len)))
        _check_tables(self.workload, self.prefill, self.decode)

    @staticmethod
    def from_prefill_table(table: LatencyTable) -> "WorkloadTables":
        """A prefill-only table is the ``prefill-S`` workload at its own batch and sequence length."""
        fp = table.fingerprint
        if fp.mode != "prefill":
            raise UserError(f"a {fp.mode} table (KV {fp.kv_len}) alone has no time to first token",
                            "pass the workload manifest from `ziplm-deploy profile --workload`")
        return WorkloadTables(Workload(fp.seq, 0, fp.batch), table)

    @property
    def arch(self):
        return self.prefill.arch

    @property
    def kv_lens(self) -> tuple[int, ...]:
        return tuple(t.fingerprint.kv_len for t in self.decode)

    def dense_shape(self) -> ModelShape:
        return self.prefill.dense_shape()

    # --- the latency model ---------------------------------------------------------------------------
    def _segment(self, kv_len: int) -> tuple[int, float]:
        """(i, w): step(kv_len) = (1 - w) * decode[i] + w * decode[i + 1] (w = 0 on a measured point)."""
        lens = self.kv_lens
        if not lens or kv_len < lens[0] or kv_len > lens[-1]:
            raise UserError(f"KV length {kv_len} is outside the measured decode tables {list(lens)}",
                            "profile decode tables that cover it (no extrapolation)")
        i = bisect_left(lens, kv_len)
        if lens[i] == kv_len:
            return i, 0.0
        return i - 1, (kv_len - lens[i - 1]) / (lens[i] - lens[i - 1])

    def decode_weights(self) -> tuple[float, ...]:
        """``W_k``: sum over the workload's steps of decode table k's interpolation weight, so that the
        total decode time is ``sum_k W_k * decode[k].predict(shape)`` (the W_k add up to G - 1)."""
        weights = [0.0] * len(self.decode)
        for kv_len in self.workload.step_kv_lens:
            i, w = self._segment(kv_len)
            weights[i] += 1.0 - w
            if w:
                weights[i + 1] += w
        return tuple(weights)

    def step_ms(self, shape: ModelShape, kv_len: int) -> float:
        """Predicted time (ms) of one decode step with a KV cache of ``kv_len`` tokens."""
        i, w = self._segment(kv_len)
        at = self.decode[i].predict(shape)
        return at if not w else (1.0 - w) * at + w * self.decode[i + 1].predict(shape)

    def predict(self, shape: ModelShape, source: str = "shape") -> WorkloadPrediction:
        shape = shape.validate(self.arch, source)
        weights = self.decode_weights()
        decode_ms = sum(w * t.predict(shape) for w, t in zip(weights, self.decode) if w)
        return WorkloadPrediction(self.prefill.predict(shape), decode_ms, len(self.workload.step_kv_lens),
                                  self.workload.batch)

    # --- files --------------------------------------------------------------------------------------
    def table_names(self, prefix: str = "") -> tuple[str, list[str]]:
        """File names of the prefill table and of each decode table."""
        b = self.workload.batch
        return (f"{prefix}prefill_b{b}_s{self.workload.prompt}.json",
                [f"{prefix}decode_b{b}_kv{t.fingerprint.kv_len}.json" for t in self.decode])

    def save(self, out: str | os.PathLike) -> Path:
        """Write the tables and the manifest: ``out`` a folder (``out/workload.json`` and the tables in it)
        or a ``.json`` manifest path (tables beside it, named after it). The manifest is written last:
        it exists only once every table it lists is whole. Returns the manifest's path."""
        out = Path(out)
        if out.suffix.lower() == ".json":
            manifest, prefix = out, f"{out.stem}_"
        else:
            manifest, prefix = out / "workload.json", ""
        folder = manifest.parent
        prefill_name, decode_names = self.table_names(prefix)
        entries = []
        for name, table in [(prefill_name, self.prefill), *zip(decode_names, self.decode)]:
            table.save(folder / name)
            entries.append({"table": name, "sha256": file_sha256(folder / name)})
        atomic_write_json(manifest, {
            "format": WORKLOAD_FORMAT, "version": WORKLOAD_VERSION, "workload": self.workload.to_json(),
            "prefill": entries[0],
            "decode": [{"kv_len": t.fingerprint.kv_len, **e} for t, e in zip(self.decode, entries[1:])],
        })
        return manifest

    @staticmethod
    def load(path: str | os.PathLike) -> "WorkloadTables":
        """A workload manifest, or a plain prefill latency table (the ``prefill-S`` workload)."""
        path = Path(path)
        if path.is_dir():
            path = path / "workload.json"
        payload = read_json(path, "workload tables")
        if isinstance(payload, dict) and payload.get("format") == TABLE_FORMAT:
            return WorkloadTables.from_prefill_table(LatencyTable.from_json(payload, str(path)))
        return WorkloadTables.from_json(payload, path)

    @staticmethod
    def from_json(payload: Any, path: Path) -> "WorkloadTables":
        source = str(path)
        check_header(payload, WORKLOAD_FORMAT, (WORKLOAD_VERSION,), source)
        keys = {"format", "version", "workload", "prefill", "decode"}
        missing, unknown = keys - set(payload), set(payload) - keys
        if missing or unknown:
            raise UserError(f"{source}: missing {sorted(missing)} / unknown {sorted(unknown)} keys",
                            "regenerate it with `ziplm-deploy profile --workload`")
        workload = Workload.from_json(payload["workload"], source)
        prefill = _load_entry(payload["prefill"], path, "prefill", ())
        items = typed(payload["decode"], list, source, "decode", "a list")
        decode = [_load_entry(d, path, f"decode[{i}]", ("kv_len",)) for i, d in enumerate(items)]
        names = {"prefill": f"{source}: prefill ({_table_path(payload['prefill'], path)})"}
        for i, (d, table) in enumerate(zip(items, decode)):
            kv = integer(d["kv_len"], source, f"decode[{i}].kv_len", lo=1)
            if table.fingerprint.mode != "decode" or table.fingerprint.kv_len != kv:
                raise UserError(f"{source}: decode[{i}].kv_len is {kv} but its table is a "
                                f"{table.fingerprint.mode} table (KV {table.fingerprint.kv_len})",
                                "regenerate it with `ziplm-deploy profile --workload`")
            names[f"kv{kv}"] = f"{source}: decode[{i}] ({_table_path(d, path)})"
        _check_tables(workload, prefill, tuple(decode), names, source)
        return WorkloadTables(workload, prefill, tuple(decode))


def file_sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _table_path(entry: dict[str, Any], manifest: Path) -> Path:
    p = Path(entry["table"])
    return p if p.is_absolute() else manifest.parent / p


def _load_entry(entry: Any, manifest: Path, key: str, extra: tuple[str, ...]) -> LatencyTable:
    source = str(manifest)
    entry = mapping(entry, source, key)
    names = {"table", "sha256", *extra}
    missing, unknown = names - set(entry), set(entry) - names
    if missing or unknown:
        raise UserError(f"{source}: {key}: missing {sorted(missing)} / unknown {sorted(unknown)} keys",
                        "regenerate it with `ziplm-deploy profile --workload`")
    typed(entry["table"], str, source, f"{key}.table", "a file name")
    digest = typed(entry["sha256"], str, source, f"{key}.sha256", "a hex digest")
    path = _table_path(entry, manifest)
    if not path.is_file():
        raise UserError(f"{source}: {key}.table: latency table not found: {path}",
                        "keep the tables beside the manifest, or profile the workload again")
    if file_sha256(path) != digest:
        raise UserError(f"{source}: {key}.sha256 does not match {path} (the table changed after the manifest "
                        "was written)", "profile the workload again")
    return LatencyTable.load(path)


def _check_tables(workload: Workload, prefill: LatencyTable, decode: tuple[LatencyTable, ...],
                  names: dict[str, str] | None = None, source: str = "") -> None:
    """One model, one deployment: refuse a mix, naming the table and the difference."""
    names = names or {}

    def name(t: LatencyTable) -> str:
        fp = t.fingerprint
        key = "prefill" if fp.mode == "prefill" and t is prefill else f"kv{fp.kv_len}"
        return names.get(key, "prefill table" if key == "prefill" else f"decode table (KV {fp.kv_len})")

    fp = prefill.fingerprint
    if fp.mode != "prefill":
        raise UserError(f"{name(prefill)}: is a {fp.mode} table, expected prefill", "pass the prefill table")
    if fp.seq != workload.prompt or fp.batch != workload.batch:
        raise UserError(f"{name(prefill)}: measured at batch {fp.batch}, seq {fp.seq}, but workload {workload.name} "
                        f"has batch {workload.batch}, prompt {workload.prompt}",
                        "profile the prefill table at the workload's prompt length and batch")
    if workload.generate and prefill.arch.is_decoder and fp.logits != "last":
        raise UserError(f"{name(prefill)}: times the LM head on all {fp.seq} prompt positions, but a generation "
                        "runtime computes the last position's logits only (its time to first token would be "
                        "over-predicted)", f"re-profile with `ziplm-deploy profile --workload {workload.name}`")
    seen: set[int] = set()
    for t in decode:
        d = t.fingerprint
        if d.mode != "decode":
            raise UserError(f"{name(t)}: is a {d.mode} table, expected decode", "list decode tables under decode")
        if d.kv_len in seen:
            raise UserError(f"{name(t)}: a second decode table at KV {d.kv_len}", "keep one table per KV length")
        seen.add(d.kv_len)
        if d.batch != workload.batch:
            raise UserError(f"{name(t)}: measured at batch {d.batch}, the workload has batch {workload.batch}",
                            "profile every table at the workload's batch")
        diffs = fp.differences(d, ignore=_PER_TABLE_FIELDS)
        if diffs:
            raise UserError(f"workload tables of different deployments: {name(prefill)} vs {name(t)}: "
                            + "; ".join(diffs), "profile every table of a workload in one deployment")
        if t.arch != prefill.arch:
            mine, theirs = asdict(prefill.arch), asdict(t.arch)
            diff = "; ".join(f"{k}: {mine[k]!r} != {theirs[k]!r}" for k in mine if mine[k] != theirs[k])
            raise UserError(f"workload tables of different models: {name(prefill)} vs {name(t)}: arch {diff}",
                            "profile every table of a workload for one model")
        if t.statistic != prefill.statistic:
            raise UserError(f"{name(t)}: uses statistic {t.statistic}, {name(prefill)} uses {prefill.statistic}",
                            "profile every table of a workload with one protocol")
    if not prefill.arch.is_decoder and workload.generate > 1:
        raise UserError(f"{source or 'workload tables'}: workload {workload.name} generates tokens, but a "
                        f"{prefill.arch.family} model has no decode mode", "use a prefill-S workload")
    workload.check_kv_lens(tuple(seen), f"{source}: decode tables" if source else "decode tables")

