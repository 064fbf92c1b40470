"""Argument types shared by the ``rlsparsity`` subcommands, and a one-line-error parser.

Every bad option value is refused by argparse with one line on stderr (exit 2) naming the
option and the value: ``rlsparsity diff: error: argument --topk: 1.5 is not a fraction in
(0, 1]``. No usage block is printed on errors (``--help`` prints it).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from typing import NoReturn

_DEVICE = re.compile(r"^(cpu(:\d+)?|cuda(:\d+)?|mps)$")


class DeviceError(ValueError):
    """A --device that is not usable on this machine."""


class OneLineParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (``prog: error: message``), exit code 2."""

    def error(self, message: str) -> NoReturn:
        msg = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {msg} (see {self.prog} --help)\n")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def tolerance(text: str) -> float:
    """A finite number >= 0 (refuses nan, inf, negatives)."""
    v = _number(text)
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number >= 0")
    return v


def fraction(text: str) -> float:
    """A fraction p with 0 < p <= 1 (top-p masks)."""
    v = _number(text)
    if not (math.isfinite(v) and 0 < v <= 1):
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in (0, 1]")
    return v


def fraction_or_off(text: str) -> float:
    """A fraction in (0, 1], or a number <= 0 meaning "off"."""
    v = _number(text)
    if not math.isfinite(v) or v > 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in (0, 1] (or <= 0 for off)")
    return v


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return v


def device(text: str) -> str:
    """cpu, cuda, cuda:N or mps (availability is checked by :func:`check_device` when used)."""
    if not _DEVICE.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (cpu, cuda, cuda:N or mps)")
    return text


def check_device(dev: str) -> None:
    """DeviceError (a ValueError) with one line if ``dev`` is not usable here (imports torch only
    for non-CPU devices)."""
    if dev.startswith("cpu"):
        return
    import torch

    if dev == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError("--device mps: MPS is not available on this machine")
        return
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {dev}: CUDA is not available on this machine (use --device cpu)")
    idx = int(dev.split(":")[1]) if ":" in dev else 0
    if idx >= torch.cuda.device_count():
        raise DeviceError(f"--device {dev}: only {torch.cuda.device_count()} CUDA device(s) here")


def fail(prog: str, message: str) -> int:
    """Print ``prog: error: message`` as one line on stderr; return exit code 2."""
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2
