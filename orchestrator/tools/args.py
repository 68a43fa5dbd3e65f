"""Argument types the tools share (argparse `type=` functions: a bad value is one line and exit 2)."""

from __future__ import annotations

import argparse

__all__ = ["positive_int", "non_negative_int", "length"]


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def length(text: str) -> int | tuple[int, int]:
    """A token length: "N", or "LO:HI" for lengths drawn per row (1 <= LO <= HI)."""
    lo, sep, hi = text.partition(":")
    try:
        lo_n, hi_n = int(lo), int(hi) if sep else int(lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give N or LO:HI tokens") from None
    if not 1 <= lo_n <= hi_n:
        raise argparse.ArgumentTypeError(f"{text!r}: lengths must be >= 1 and LO <= HI")
    return lo_n if lo_n == hi_n else (lo_n, hi_n)
