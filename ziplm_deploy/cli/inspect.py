"""``ziplm-deploy inspect PATH``: per-layer shape, parameters and FLOPs of a model directory or ONNX file.

Torch-free: parameters come from the safetensors headers or the ONNX initializers.
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="model directory or .onnx file")
    p.add_argument("--seq", type=int, default=128, help="sequence length for the FLOP count (default 128)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _safetensors_params(model_dir: Path) -> int:
    total = 0
    for f in sorted(model_dir.glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name != "__metadata__":
                count = 1
                for dim in info["shape"]:
                    count *= dim
                total += count
    return total


def _onnx_info(path: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None, int, dict[str, str]]:
    import onnx

    from ..core.errors import UserError

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises several types for a damaged file
        raise UserError(f"{path} is not a readable ONNX model ({type(e).__name__}: {str(e)[:80]})",
                        "re-export it with ziplm-deploy export") from None
    if not proto.graph.node:
        raise UserError(f"{path} is not a readable ONNX model (empty graph)", "re-export it with ziplm-deploy export")
    meta = {p.key: p.value for p in proto.metadata_props}
    params = 0
    for init in proto.graph.initializer:
        count = 1
        for dim in init.dims:
            count *= dim
        params += count
    config = json.loads(meta["ziplm_config"]) if "ziplm_config" in meta else None
    shape = json.loads(meta["ziplm_shape"]) if "ziplm_shape" in meta else None
    io = {i.name: "input" for i in proto.graph.input}
    io.update({o.name: "output" for o in proto.graph.output})
    return config, shape, params, io


def run(args: argparse.Namespace) -> int:
    from ..core.arch import SHAPE_CONFIG_KEY, arch_from_config, read_model_config
    from ..core.cost import block_params, model_flops
    from ..core.errors import UserError
    from ..core.shape import ModelShape

    path = Path(args.path)
    io: dict[str, str] = {}
    if path.is_dir():
        config = read_model_config(path)
        shape_json = config.get(SHAPE_CONFIG_KEY)
        params = _safetensors_params(path)
        kind = "model directory"
    elif path.is_file():
        config, shape_json, params, io = _onnx_info(path)
        kind = "ONNX file"
        if config is None:
            print(f"{path}: ONNX file without ziplm-deploy metadata; {params / 1e6:.2f}M parameters in initializers")
            for name, role in io.items():
                print(f"  {role}: {name}")
            return 0
    else:
        raise UserError(f"{path} not found", "pass a model directory or an .onnx file")
    arch = arch_from_config(config, source=str(path))
    shape = (ModelShape.from_json(shape_json, source=f"{path}: {SHAPE_CONFIG_KEY}") if shape_json
             else ModelShape.dense(arch)).validate(arch)
    dense = ModelShape.dense(arch)
    flops, dense_flops = model_flops(arch, shape, args.seq), model_flops(arch, dense, args.seq)
    report = {
        "path": str(path), "kind": kind, "family": arch.family, "architecture": arch.architecture,
        "parameters": params, "block_parameters": block_params(arch, shape),
        "dense_block_parameters": block_params(arch, dense), "flops": flops, "dense_flops": dense_flops,
        "seq": args.seq, "shape": shape.to_json(),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{path} ({kind}): {arch.family} {arch.architecture or ''}, {len(shape.kept_layers)} of "
          f"{arch.num_layers} layers")
    if params:
        print(f"parameters: {params / 1e6:.2f}M total; transformer blocks {report['block_parameters'] / 1e6:.2f}M "
              f"of {report['dense_block_parameters'] / 1e6:.2f}M dense ({report['block_parameters'] / report['dense_block_parameters']:.1%})")
    print(f"FLOPs (batch 1, seq {args.seq}): {flops / 1e9:.2f} G of {dense_flops / 1e9:.2f} G dense "
          f"({flops / dense_flops:.1%})")
    gqa = arch.kv_heads != arch.heads
    ranks = shape.has_ranks
    print(f"{'layer':>5}  {'heads':>5}" + (f"  {'kv':>3}" if gqa else "") + f"  {'ffn':>6}"
          + ("  FLOP ranks" if ranks else ""))
    for i, s in enumerate(shape.layers):
        if s.dropped:
            print(f"{i:>5}  dropped")
        else:
            low = "  " + " ".join(f"{role}={r}" for role, r in s.ranks) if s.ranks else ""
            print(f"{i:>5}  {s.heads:>5}" + (f"  {s.kv:>3}" if gqa else "") + f"  {s.ffn:>6}{low}")
    for name, role in io.items():
        print(f"  {role}: {name}")
    return 0
