"""argparse ``type=`` converters that refuse bad numbers at parse time (argparse prints one line, exit 2).

``--ffn-step -5``, ``--damp nan``, ``--targets inf`` and ``--max-windows 0`` never reach the work.
"""

from __future__ import annotations

import argparse
import math
from typing import Callable


def _number(text: str, integer: bool) -> float:
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{'an integer' if integer else 'a number'} expected, got {text!r}") from None
    if not integer and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"a finite number expected, got {text!r}")
    return value


def ranged(lo: float | None = None, hi: float | None = None, *, integer: bool = False,
           lo_open: bool = False) -> Callable[[str], float]:
    """A converter for a finite number (or integer) in [lo, hi] (``lo_open``: strictly above lo)."""

    def convert(text: str) -> float:
        value = _number(text, integer)
        if lo is not None and (value <= lo if lo_open else value < lo):
            raise argparse.ArgumentTypeError(f"must be {'>' if lo_open else '>='} {lo:g}, got {text}")
        if hi is not None and value > hi:
            raise argparse.ArgumentTypeError(f"must be <= {hi:g}, got {text}")
        return value

    convert.__name__ = "integer" if integer else "number"  # argparse names the type in its message
    return convert


positive_int = ranged(1, integer=True)
nonneg_int = ranged(0, integer=True)
positive_float = ranged(0, lo_open=True)
nonneg_float = ranged(0)
fraction = ranged(0, 1)  # [0, 1]
open_fraction = ranged(0, 1, lo_open=True)  # (0, 1]
speedup = ranged(1, lo_open=False)  # a speedup target: finite, >= 1
