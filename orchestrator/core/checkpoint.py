"""Atomic checkpoint folders: written under a temporary name, renamed into place when complete.

Layout: `<output_dir>/checkpoints/step_000010/` with one subfolder per trained role (DeepSpeed
checkpoints: sharded weights, optimizer, scheduler, role RNG), the weights in Hugging Face format
(`policy_hf/`, `critic_hf/`, `model_hf/`: safetensors, loadable by transformers) and `driver.pt`
(step, the job's state such as data position, KL controller and reward statistics, the evaluation
history, the driver RNG; written by the job skeleton, `orchestrator.core.job`). A crash while writing
leaves only a `.tmp-*` folder, which is ignored and cleaned up by the next save, so the last complete
checkpoint is never replaced by a partial one. `manifest.json`, written last, lists every file with
its size: a file truncated or lost afterwards (a full disk, a copy cut short) is found by `verify`
before anything loads, and `run.resume=auto` then falls back to the previous complete checkpoint.
Multi-node: every replica writes its shard, so output_dir must be on a filesystem all nodes share.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from actors.config import first_line

from orchestrator.config import ConfigError

log = logging.getLogger("rlhf.checkpoint")
_STEP_RE = re.compile(r"^step_(\d{6,})$")
DRIVER_FILE = "driver.pt"
MANIFEST = "manifest.json"


def checkpoint_root(output_dir: str) -> Path:
    return Path(output_dir) / "checkpoints"


def complete_checkpoints(output_dir: str) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_RE.match(p.name))]
    return [p for _, p in sorted(found) if (p / DRIVER_FILE).is_file()]


def latest_checkpoint(output_dir: str) -> Path | None:
    found = complete_checkpoints(output_dir)
    return found[-1] if found else None


def verify(folder: Path) -> str | None:
    """None when the checkpoint `folder` is whole: every file of its manifest present with its size, and
    driver.pt readable; else what is wrong, naming the file. (Checkpoints written before manifests existed
    are checked for driver.pt only.)"""
    manifest = folder / MANIFEST
    if manifest.is_file():
        try:
            sizes = json.loads(manifest.read_text())
        except ValueError as e:
            return f"{manifest} is unreadable ({e})"
        for rel, size in sizes.items():
            f = folder / rel
            if not f.is_file():
                return f"{f} is missing"
            if f.stat().st_size != size:
                return f"{f} is truncated or changed ({f.stat().st_size} bytes, {size} when written)"
    try:
        load_driver_state(folder)
    except Exception as e:  # noqa: BLE001  (a damaged zip, a truncated pickle: one message)
        return f"{folder / DRIVER_FILE} cannot be read ({type(e).__name__}: {first_line(e)})"
    return None


def resolve_resume(resume: str, output_dir: str) -> Path | None:
    """run.resume -> the checkpoint folder to load, or None to start fresh. `auto` takes the newest whole
    checkpoint (`verify`), saying which damaged ones it passed over; a named one must be whole."""
    if resume == "never":
        return None
    if resume == "auto":
        for folder in reversed(complete_checkpoints(output_dir)):
            problem = verify(folder)
            if problem is None:
                return folder
            log.warning("checkpoint %s is damaged (%s); trying the one before it", folder, problem)
        return None
    path = Path(resume)
    if not (path / DRIVER_FILE).is_file():
        raise ConfigError(f"config key 'run.resume': {resume!r} is not a complete checkpoint folder (no {DRIVER_FILE}); "
                          "use auto, never, or a checkpoints/step_N folder")
    problem = verify(path)
    if problem is not None:
        raise ConfigError(f"config key 'run.resume': the checkpoint is damaged: {problem}; resume from an earlier "
                          "checkpoints/step_N folder, or run.resume=never")
    return path


@contextmanager
def atomic_checkpoint(output_dir: str, step: int, keep: int) -> Iterator[Path]:
    """Yield a temporary folder to write into; on success rename it to step_N and prune old ones."""
    root = checkpoint_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step_{step:06d}-", dir=root))
    try:
        yield tmp
        if not (tmp / DRIVER_FILE).is_file():
            raise RuntimeError(f"checkpoint {tmp} has no {DRIVER_FILE}; not publishing it")
        sizes = {str(f.relative_to(tmp)): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
        (tmp / MANIFEST).write_text(json.dumps(sizes, indent=0))
        final = root / f"step_{step:06d}"
        if final.exists():  # same step saved again (e.g. final save right after a periodic one)
            old = root / f".tmp-old-{final.name}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in complete_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def save_driver_state(folder: Path, state: dict) -> None:
    torch.save(state, folder / DRIVER_FILE)


def load_driver_state(folder: Path) -> dict:
    return torch.load(folder / DRIVER_FILE, weights_only=True)
