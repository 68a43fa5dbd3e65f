"""Reproducible experiments (`rlhf experiment NAME`): each runs, prints its findings with pass flags and
writes them to `<out>/findings.json` through `write_findings`."""

from __future__ import annotations

import json
import os

__all__ = ["write_findings"]


def write_findings(result: dict, lines: list[str], out: str) -> str:
    """Print `lines` (the formatted findings) and write `result` to `<out>/findings.json`; returns that path."""
    for line in lines:
        print(line)
    path = os.path.join(out, "findings.json")
    with open(path, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"findings written to {path}")
    return path
