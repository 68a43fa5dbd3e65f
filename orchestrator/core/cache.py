"""The on-disk cache of folders built on first use (the built-in tokenizer and models, the SFT-warm-started
built-in policies, the models of `rlhf bench` size specs).

Folders live under `cache_root()`: the `cache_dir` given, else the environment variable `RLHF_CACHE`,
else `~/.cache/rlhf`. `build_atomically` writes a folder in a temporary sibling and `os.replace`s it
into place, so a crash never leaves a half-written folder behind and a present folder is reused.
`fingerprint` names a folder by everything its build depends on.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

__all__ = ["cache_root", "build_atomically", "fingerprint"]


def cache_root(cache_dir: Optional[str] = None) -> Path:
    """`cache_dir`, else $RLHF_CACHE, else ~/.cache/rlhf."""
    return Path(cache_dir or os.environ.get("RLHF_CACHE") or Path.home() / ".cache" / "rlhf")


def fingerprint(params: dict) -> str:
    """12 hex digits of the sha256 of `params` as sorted JSON."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


def build_atomically(final: Path, build: Callable[[Path], None]) -> Path:
    """Return `final`, building it with `build(tmp_dir)` in a sibling temp folder first if it is missing."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():  # not a concurrent builder that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
