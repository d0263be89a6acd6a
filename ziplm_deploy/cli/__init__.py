"""Command line: ``ziplm-deploy <command>``. One thin module per command; each imports its stage lazily.

Exit codes: 0 success, 1 a check or gate failed, 2 bad input (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# command -> (module, one-line help). Modules define ``add_arguments(parser)`` and ``run(args) -> int``.
COMMANDS: dict[str, tuple[str, str]] = {
    "shrink": ("ziplm_deploy.cli.shrink", "physically shrink a model to a per-layer shape"),
    "trim-vocab": ("ziplm_deploy.cli.trim_vocab", "keep the output tokens a domain uses: an LM head of K rows, "
                   "logits still over the whole vocabulary"),
    "export": ("ziplm_deploy.cli.export", "export a model directory to a validated ONNX file"),
    "inspect": ("ziplm_deploy.cli.inspect", "print the per-layer shape, parameters and FLOPs of a model or ONNX file"),
    "profile": ("ziplm_deploy.cli.profile", "measure a latency table in the deployment runtime (torch-free)"),
    "int8-plan": ("ziplm_deploy.cli.int8_plan", "rank layers by how badly int8 represents their FFN output "
                  "projection input; print the precision label keeping the worst fp32"),
    "predict": ("ziplm_deploy.cli.predict", "predict a shape's latency and speedup from a latency table"),
    "prune": ("ziplm_deploy.cli.prune", "prune to a family of models, one per speedup target (ZipLM and baselines)"),
    "eval": ("ziplm_deploy.cli.eval", "perplexity (causal LM) or accuracy (classifier) of a model on data"),
    "distill": ("ziplm_deploy.cli.distill", "recover a pruned model by distillation from its teacher (or LM pretraining)"),
    "flop": ("ziplm_deploy.cli.flop", "FLOP: low-rank factorise the FFN Linears with L0 rank gates to a target sparsity"),
    "gradual": ("ziplm_deploy.cli.gradual", "gradual ZipLM: prune -> distill -> re-prune, one model per speedup target"),
    "run": ("ziplm_deploy.cli.run", "run a pipeline file: profile, prune, export, verify, gate, report (resumable)"),
    "demo": ("ziplm_deploy.cli.demo", "the whole pipeline on the embedded SmolLM2-135M default (profile, prune, export, verify, gate, report)"),
    "verify": ("ziplm_deploy.cli.verify", "measure baseline vs candidate in the deployment runtime: speedup, parity"),
    "gate": ("ziplm_deploy.cli.gate", "judge a verify report against a release policy (exit 1 when a budget fails)"),
    "report": ("ziplm_deploy.cli.report", "HTML/Markdown report of a run with quality/speedup/latency plots"),
    "build-engine": ("ziplm_deploy.cli.build_engine", "build a TensorRT engine with a device/version metadata sidecar"),
}


class _OneLineParser(argparse.ArgumentParser):
    """argparse errors as one line (no usage dump), like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _OneLineParser(prog="ziplm-deploy", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"ziplm-deploy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        try:
            importlib.import_module(module).add_arguments(p)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            p.set_defaults(_missing=True)  # a command of a stage not built yet
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ..core.errors import UserError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version (0) or a bad option (2, one line printed): an exit code, as below
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    if getattr(args, "_missing", False):
        print(f"ziplm-deploy: error: command {args.command!r} is not available in this version", file=sys.stderr)
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except UserError as e:
        print(f"ziplm-deploy {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head & co.
        return 0
    except KeyboardInterrupt:
        print(f"ziplm-deploy {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
