"""``ziplm-deploy shrink --model DIR --shape SHAPE.json --out DIR``"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="Hugging Face model directory (dense or already pruned)")
    p.add_argument("--shape", required=True, help="shape JSON: {format: ziplm-deploy/shape, version: 1, layers: [...]}")
    p.add_argument("--out", required=True, help="output model directory (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args: argparse.Namespace) -> int:
    from ..core.checks import check_output_path
    from ..core.cost import block_params
    from ..core.manifest import MANIFEST_FILE, new_manifest
    from ..core.shape import ModelShape
    from ..models import adapter_for, apply_shape, load_model, save_model
    from ..models.io import check_model_dir

    check_output_path(args.out, "output directory", directory=True, overwrite=args.overwrite)
    arch = check_model_dir(args.model)
    shape = ModelShape.load(args.shape).validate(arch, source=args.shape)
    from ..models.tokenizer import load_tokenizer

    model = load_model(args.model)
    before = adapter_for(model).shape_of(model)
    apply_shape(model, shape)
    after = adapter_for(model).shape_of(model)
    manifest = new_manifest("shrink-magnitude", args.model, after.to_json(),
                            options={"selection": "weight magnitude"},
                            metrics={"block_params_before": block_params(arch, before),
                                     "block_params_after": block_params(arch, after)})
    import json

    save_model(model, args.out, tokenizer=load_tokenizer(args.model), overwrite=args.overwrite,
               extra_files={MANIFEST_FILE: json.dumps(manifest.to_json(), indent=2) + "\n"})
    b, a = block_params(arch, before), block_params(arch, after)
    print(f"shrunk {args.model} -> {args.out}: block parameters {b / 1e6:.2f}M -> {a / 1e6:.2f}M ({a / b:.1%})")
    return 0
