"""Layer 2: the model families, one package each, registered by ``model_type``.

A family package holds everything the project knows about that family (see ``base``): the config
reader, its ONNX graph parts and its PyTorch adapter. Adding a family is one new folder here plus its
name in ``_PACKAGES``; nothing outside this package branches on a family's name. Importing this module
needs neither onnx nor torch.
"""

from __future__ import annotations

from importlib import import_module

from ..core.arch import ArchSpec
from ..core.errors import UserError
from .base import ConfigFields, Family, GraphParts

_PACKAGES = ("bert", "gemma3", "gpt2", "llama", "qwen3")  # the registry: one name per family package

FAMILIES: tuple[Family, ...] = tuple(import_module(f"{__name__}.{name}").FAMILY for name in _PACKAGES)
_BY_TYPE: dict[str, Family] = {t: f for f in FAMILIES for t in f.model_types}
_BY_NAME: dict[str, Family] = {f.name: f for f in FAMILIES}
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(_BY_TYPE)


def family_for(model_type_or_arch: str | ArchSpec) -> Family:
    """The family of a config's ``model_type`` or of an ``ArchSpec``; unknown ones list what exists."""
    if isinstance(model_type_or_arch, ArchSpec):
        family = _BY_NAME.get(model_type_or_arch.family)
        if family is None:
            raise UserError(f"unknown model family {model_type_or_arch.family!r}",
                            f"families: {', '.join(_BY_NAME)}")
        return family
    family = _BY_TYPE.get(model_type_or_arch)
    if family is None:
        raise UserError(f"unsupported architecture model_type={model_type_or_arch!r}",
                        f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    return family


__all__ = ["FAMILIES", "SUPPORTED_MODEL_TYPES", "ConfigFields", "Family", "GraphParts", "family_for"]
