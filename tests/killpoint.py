"""Run the CLI in a child process that SIGKILLs itself right after a chosen function returns for the first time:
a kill -9 at an exact point of a run, without a test hook inside the package."""

from __future__ import annotations

import sys

_CHILD = """
import importlib, os, signal, sys
module, attr = sys.argv[1].rsplit(":", 1)
owner = importlib.import_module(module)
*path, name = attr.split(".")
for part in path:
    owner = getattr(owner, part)
original = getattr(owner, name)
def killed_after(*args, **kwargs):
    result = original(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
    return result
setattr(owner, name, killed_after)
from ziplm_deploy.cli import main
sys.exit(main(sys.argv[2:]))
"""


def killed_cli(after: str, argv: list[str]) -> list[str]:
    """The command line of ``ziplm-deploy ARGV`` killed (SIGKILL) once ``after`` ("package.module:name" or
    "package.module:Class.method") has returned."""
    return [sys.executable, "-c", _CHILD, after, *argv]
