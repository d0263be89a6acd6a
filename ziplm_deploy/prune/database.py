"""The ZipLM level database: for every layer's attention and FFN, nested kept sets with their OBS loss.

Built once per (model, calibration data) from the dense model's Hessians; every search target and
every later run on the same model and data reuses it. Weights are not stored per level: the OBS
weights of a level equal the least-squares reconstruction from its kept columns (``obs.reconstruct``),
so the Hessians are stored once beside the level list and the weights are rebuilt at stitching time.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..core.arch import ArchSpec
from ..core.checks import TEMP_PREFIX, integer, mapping, number, typed
from ..core.errors import UserError
from ..core.jsonio import atomic_write_json, check_header, read_json
from .family import ATTENTION_LEVELS
from .hessian import LayerHessians
from .obs import geometric, obs_greedy, obs_grouped_heads, output_energy

DB_FORMAT = "ziplm-deploy/obs-database"
DB_VERSION = 2  # 2: GQA attention levels keep query heads within KV groups (Level.kv, ModuleDb.group)
DB_FILE = "database.json"
HESSIANS_FILE = "hessians.safetensors"
REBUILD = "delete the database folder to rebuild it"


@dataclass(frozen=True)
class Level:
    units: int  # heads (KV groups for unit "kv_group") / neurons kept
    kept: tuple[int, ...]  # kept unit indices
    loss: float  # OBS loss, absolute
    rel_loss: float  # loss / output energy of the dense module (0 dense, 1 removed)
    kv: int | None = None  # unit "gqa_head": KV groups kept (the kept heads are spread evenly over them)


@dataclass(frozen=True)
class ModuleDb:
    layer: int
    kind: str  # "attn" | "ffn"
    unit: str  # "head" | "kv_group" | "gqa_head" (query heads within KV groups) | "neuron"
    unit_cols: int  # input columns per unit
    energy: float
    levels: tuple[Level, ...]  # descending (units, kv); levels[0] is the module as it is
    group: int = 1  # "kv_group" / "gqa_head": query heads per KV group in this layer

    def level(self, units: int, kv: int | None = None) -> Level:
        for lv in self.levels:
            if lv.units == units and lv.kv == kv:
                return lv
        raise KeyError((units, kv))

    def attention_shape(self, level: Level) -> tuple[int, int | None]:
        """(query heads, KV heads or None without GQA) an attention level keeps."""
        if self.unit == "kv_group":
            return level.units * self.group, level.units
        if self.unit == "gqa_head":
            return level.units, level.kv
        return level.units, None


@dataclass(frozen=True)
class Database:
    arch: dict[str, Any]
    modules: tuple[ModuleDb, ...]
    calibration: dict[str, Any]  # source, windows, seq_len, seed, token hash
    damp: float

    def module(self, layer: int, kind: str) -> ModuleDb | None:
        for m in self.modules:
            if m.layer == layer and m.kind == kind:
                return m
        return None

    def to_json(self) -> dict[str, Any]:
        return {"format": DB_FORMAT, "version": DB_VERSION, "arch": self.arch, "calibration": self.calibration,
                "damp": self.damp, "modules": [asdict(m) for m in self.modules]}

    @staticmethod
    def from_json(payload: Any, source: str) -> "Database":
        """The level index with every field checked (types, finite losses, integer unit counts and indices)."""
        try:
            check_header(payload, DB_FORMAT, (DB_VERSION,), source)
            modules = typed(payload.get("modules"), list, source, "modules", "a list of module objects")
            return Database(mapping(payload.get("arch"), source, "arch"),
                            tuple(_module_from_json(m, source, f"modules[{i}]") for i, m in enumerate(modules)),
                            mapping(payload.get("calibration"), source, "calibration"),
                            number(payload.get("damp"), source, "damp", lo=0.0))
        except UserError as e:  # our own cache: rebuilding it is always the fix
            raise UserError(e.message, REBUILD) from None


def _require(d: dict[str, Any], keys: tuple[str, ...], source: str, key: str) -> dict[str, Any]:
    missing = [k for k in keys if k not in d]
    if missing:
        raise UserError(f"{source}: {key} lacks {', '.join(missing)}", REBUILD)
    return d


def _module_from_json(m: Any, source: str, key: str) -> ModuleDb:
    m = _require(mapping(m, source, key), ("layer", "kind", "unit", "unit_cols", "energy", "levels"), source, key)
    if m["kind"] not in ("attn", "ffn") or m["unit"] not in UNITS:
        raise UserError(f"{source}: {key}: kind {m['kind']!r} / unit {m['unit']!r} is not attn/ffn / "
                        f"{', '.join(UNITS)}", REBUILD)
    levels = typed(m["levels"], list, source, f"{key}.levels", "a list of levels")
    module = ModuleDb(integer(m["layer"], source, f"{key}.layer", lo=0), m["kind"], m["unit"],
                      integer(m["unit_cols"], source, f"{key}.unit_cols", lo=1),
                      number(m["energy"], source, f"{key}.energy", lo=0.0),
                      tuple(_level_from_json(lv, source, f"{key}.levels[{j}]") for j, lv in enumerate(levels)),
                      integer(m.get("group", 1), source, f"{key}.group", lo=1))
    if module.unit == "gqa_head":
        if module.kind != "attn" or any(not _even(lv, module.group) for lv in module.levels):
            raise UserError(f"{source}: {key}: a gqa_head level lacks kv or keeps heads unevenly", REBUILD)
    elif any(lv.kv is not None for lv in module.levels):
        raise UserError(f"{source}: {key}: only gqa_head levels have kv", REBUILD)
    return module


def _even(level: Level, group: int) -> bool:
    """A gqa_head level keeps ``units // kv`` query heads in each of ``kv`` KV groups (of ``group`` heads)."""
    if level.kv is None or (level.units == 0) != (level.kv == 0):
        return False
    counts: dict[int, int] = {}
    for head in level.kept:
        counts[head // group] = counts.get(head // group, 0) + 1
    return len(counts) == level.kv and all(c * level.kv == level.units and c <= group for c in counts.values())


def _level_from_json(lv: Any, source: str, key: str) -> Level:
    lv = _require(mapping(lv, source, key), ("units", "kept", "loss", "rel_loss"), source, key)
    kept = typed(lv["kept"], list, source, f"{key}.kept", "a list of unit indices")
    units = integer(lv["units"], source, f"{key}.units", lo=0)
    if len(kept) != units:
        raise UserError(f"{source}: {key} keeps {len(kept)} units but says units={units}", REBUILD)
    kv = lv.get("kv")
    return Level(units, tuple(integer(k, source, f"{key}.kept[{i}]", lo=0) for i, k in enumerate(kept)),
                 number(lv["loss"], source, f"{key}.loss"), number(lv["rel_loss"], source, f"{key}.rel_loss"),
                 None if kv is None else integer(kv, source, f"{key}.kv", lo=0))


def ffn_levels(width: int, step: int) -> list[int]:
    """Widths kept: ``width, width - step, ...`` down to 0 (0 always included)."""
    return sorted({*range(width, 0, -step), 0}, reverse=True)


UNITS = ("head", "kv_group", "gqa_head", "neuron")


def attention_unit(arch: ArchSpec) -> tuple[str, int]:
    """Whole-group unit: GQA models remove whole KV groups (a KV head with its query heads); others single heads."""
    if arch.kv_heads != arch.heads:
        return "kv_group", arch.group_size * arch.head_dim
    return "head", arch.head_dim


def build_database(weights: list[tuple[torch.Tensor | None, torch.Tensor | None]], hessians: list[LayerHessians],
                   arch: ArchSpec, ffn_step: int, damp: float, calibration: dict[str, Any],
                   progress: bool = True, neuron_fraction: float = 1 / 32,
                   kv_heads: list[int] | None = None, attention: str = "heads-in-groups") -> Database:
    """``weights[l] = (W_attn_out, W_ffn_down)`` as (out, in) of the model's layer l.

    Attention without GQA: heads removed one at a time. With GQA (``kv_heads[l]`` KV heads in layer l;
    default the dense count), ``attention="heads-in-groups"`` offers every (KV groups kept, query heads
    per kept group) level (``obs_grouped_heads``), ``"whole-groups"`` only whole KV groups. FFN neurons
    go ``neuron_fraction`` of the remaining ones per step (exact joint OBS updates; 0 = one at a time).
    Runs single-threaded: the greedy loop is many small operations, which a contended thread pool slows
    down by an order of magnitude.
    """
    if attention not in ATTENTION_LEVELS:
        raise UserError(f"unknown attention levels {attention!r}", f"choose one of: {', '.join(ATTENTION_LEVELS)}")
    gqa = arch.kv_heads != arch.heads
    jobs = []
    for layer, ((w_attn, w_ffn), h) in enumerate(zip(weights, hessians)):
        if w_attn is not None:
            heads = w_attn.shape[1] // arch.head_dim
            kv = kv_heads[layer] if kv_heads is not None else arch.kv_heads
            group = heads // kv if gqa and kv else 1
            if gqa and attention == "heads-in-groups":
                jobs.append((layer, "attn", "gqa_head", arch.head_dim, group, w_attn, h.attn, None))
            else:
                unit, cols = ("kv_group", group * arch.head_dim) if gqa else ("head", arch.head_dim)
                jobs.append((layer, "attn", unit, cols, group, w_attn, h.attn, list(range(w_attn.shape[1] // cols + 1))))
        if w_ffn is not None:
            jobs.append((layer, "ffn", "neuron", 1, 1, w_ffn, h.ffn, ffn_levels(w_ffn.shape[1], ffn_step)))
    total = sum(_steps(u, w.shape[1] // cols, group) for _, _, u, cols, group, w, _, _ in jobs)
    modules = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tqdm(total=total, desc="OBS database", unit="unit", disable=not progress) as bar:
            for layer, kind, u, cols, group, w, h, levels in jobs:
                w32, h32 = w.detach().float(), h.float()
                energy = output_energy(w32, h32)

                def rel(loss: float) -> float:
                    return loss / energy if energy > 0 else 0.0

                if u == "gqa_head":
                    found = obs_grouped_heads(w32, h32, cols, group, damp=damp, progress=bar.update)
                    found_levels = [Level(kv * per, lv.kept, lv.loss, rel(lv.loss), kv)
                                    for (kv, per), lv in found.items()]
                else:
                    step = geometric(neuron_fraction) if kind == "ffn" and neuron_fraction > 0 else None
                    found = obs_greedy(w32, h32, cols, levels, damp=damp, progress=bar.update,
                                       **({"per_step": step} if step else {}))
                    found_levels = [Level(k, lv.kept, lv.loss, rel(lv.loss)) for k, lv in found.items()]
                found_levels.sort(key=lambda lv: (lv.units, lv.kv or 0), reverse=True)
                modules.append(ModuleDb(layer, kind, u, cols, energy, tuple(found_levels), group))
    finally:
        torch.set_num_threads(threads)
    return Database(asdict(arch), tuple(modules), calibration, damp)


def live_kv_heads(adapter: Any, model: Any, arch: ArchSpec) -> list[int] | None:
    """KV heads of each live layer of a (possibly already pruned) GQA model; None without GQA."""
    if arch.kv_heads == arch.heads:
        return None
    out = []
    for layer in adapter.layers(model):
        w = adapter.attn_out_weight(layer)
        out.append(adapter.kv_heads_of(layer, w.shape[1] // arch.head_dim) if w is not None else 0)
    return out


def _steps(unit: str, units: int, group: int) -> int:
    """Progress units of one module's greedy search: one per removed unit (for gqa_head: the group chain,
    then the rounds within each number of kept groups)."""
    if unit != "gqa_head":
        return units
    n_groups = units // group
    return n_groups + (group - 1) * n_groups * (n_groups + 1) // 2


def token_hash(windows: torch.Tensor) -> str:
    return hashlib.sha256(windows.numpy().tobytes()).hexdigest()[:16]


def save_database(db: Database, hessians: list[LayerHessians], folder: str | os.PathLike) -> None:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for i, h in enumerate(hessians):
        if h.attn is not None:
            tensors[f"{i}.attn"] = h.attn.contiguous()
        if h.ffn is not None:
            tensors[f"{i}.ffn"] = h.ffn.contiguous()
    tmp = folder / f"{TEMP_PREFIX}{HESSIANS_FILE}"
    save_file(tensors, str(tmp), metadata={"tokens": str(hessians[0].tokens)})
    os.replace(tmp, folder / HESSIANS_FILE)
    atomic_write_json(folder / DB_FILE, db.to_json())


def load_database(folder: str | os.PathLike) -> tuple[Database, list[LayerHessians]]:
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    db = Database.from_json(read_json(folder / DB_FILE, "OBS database"), source=str(folder / DB_FILE))
    if not (folder / HESSIANS_FILE).is_file():
        raise UserError(f"{folder} has no {HESSIANS_FILE}", REBUILD)
    if not db.modules:
        raise UserError(f"{folder / DB_FILE}: 'modules' is empty", REBUILD)
    layers = 1 + max(m.layer for m in db.modules)
    try:
        with safe_open(str(folder / HESSIANS_FILE), framework="pt") as f:
            keys = set(f.keys())
            tokens = int((f.metadata() or {}).get("tokens", 0))
            hessians = [LayerHessians(f.get_tensor(f"{i}.attn") if f"{i}.attn" in keys else None,
                                      f.get_tensor(f"{i}.ffn") if f"{i}.ffn" in keys else None, tokens)
                        for i in range(layers)]
    except (SafetensorError, OSError, ValueError) as e:  # a truncated or garbled file
        raise UserError(f"{folder / HESSIANS_FILE} is not a readable safetensors file ({str(e).splitlines()[0]})",
                        REBUILD) from None
    return db, hessians


def database_key(model_config: dict[str, Any], calibration: dict[str, Any], ffn_step: int, damp: float,
                 attention: str = "heads-in-groups") -> str:
    """Content key of a database: same model config + calibration tokens + options -> reuse."""
    blob = json.dumps({"config": model_config, "calibration": calibration, "ffn_step": ffn_step, "damp": damp,
                       "version": DB_VERSION, "attention": attention},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
