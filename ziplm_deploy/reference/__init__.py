"""Reference data shipped inside the package (so an installed wheel has it, not only a source checkout):
the stored SmolLM2 latency tables of ``profiles/`` and the release policies of ``policies/`` that the demo
uses. The files here are symbolic links to those top-level folders, which stay the one place they live;
building a wheel copies their content in."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def reference_file(name: str) -> Path:
    """The path of a shipped reference file (a real file both in a checkout and in an installed wheel)."""
    path = Path(str(files(__name__) / name))
    if not path.is_file():
        from ..core.errors import UserError

        raise UserError(f"the reference file {name} is missing from the installed package",
                        "reinstall ziplm-deploy")
    return path
