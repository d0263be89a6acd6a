"""argparse ``type=`` converters that refuse bad numbers at parse time (one line on stderr, exit 2).

``--ffn-step -5``, ``--damp nan``, ``--targets inf`` and ``--max-windows 0`` never reach the work.
"""

from __future__ import annotations

import argparse
import math
import re
from typing import Callable


def _number(text: str, integer: bool, what: str) -> float:
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise argparse.ArgumentTypeError(f"{what} must be {kind}, got {text!r}" if what
                                         else f"{kind} expected, got {text!r}") from None
    if not integer and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{what} must be a finite number, got {text!r}" if what
                                         else f"a finite number expected, got {text!r}")
    return value


def ranged(lo: float | None = None, hi: float | None = None, *, integer: bool = False,
           lo_open: bool = False, hi_open: bool = False, what: str = "") -> Callable[[str], float]:
    """A converter for a finite number (or integer) in [lo, hi] (``lo_open``/``hi_open``: bound excluded);
    ``what`` names the quantity in the message ("a speedup target must be >= 1, got 0.5")."""
    subject = f"{what} must be" if what else "must be"

    def convert(text: str) -> float:
        value = _number(text, integer, what)
        if lo is not None and (value <= lo if lo_open else value < lo):
            raise argparse.ArgumentTypeError(f"{subject} {'>' if lo_open else '>='} {lo:g}, got {text}")
        if hi is not None and (value >= hi if hi_open else value > hi):
            raise argparse.ArgumentTypeError(f"{subject} {'<' if hi_open else '<='} {hi:g}, got {text}")
        return value

    convert.__name__ = "integer" if integer else "number"  # argparse names the type in its message
    return convert


positive_int = ranged(1, integer=True)
nonneg_int = ranged(0, integer=True)
positive_float = ranged(0, lo_open=True)
nonneg_float = ranged(0)
fraction = ranged(0, 1)  # [0, 1]
open_fraction = ranged(0, 1, lo_open=True)  # (0, 1]
open_unit = ranged(0, 1, lo_open=True, hi_open=True)  # (0, 1): a sparsity or drop rate
speedup = ranged(1, what="a speedup target")  # a speedup target: finite, >= 1
seq_len = ranged(2, integer=True, what="a sequence length")  # a window needs a token and its successor


def torch_device(text: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``; CUDA only where this torch build has it (torch is imported only then)."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"device must be cpu, cuda or cuda:N, got {text!r}")
    if text == "cpu":
        return text
    import torch

    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"CUDA is not available in this torch build ({torch.__version__}): "
                                         "pass --device cpu, or install a CUDA build of torch on a GPU machine")
    index = int(text.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


torch_device.__name__ = "device"
