"""The built-in defaults that need no download: the tokenizer and tiny Llama models built locally from
the task world, and the built-in datasets as rows.

Built folders are cached under `<root>/builtin/<name>-<hash>`, where root is `cache_dir`, else the
environment variable `RLHF_CACHE`, else `~/.cache/rlhf`, and the hash covers everything the build
depends on (builder version, size, seed, vocab size, config overrides, the task corpus). A folder is
written atomically (built in a temporary sibling folder, then `os.replace`d into place), so a crash
never leaves a half-written model behind, and it is reused when present.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

from orchestrator import task

logger = logging.getLogger(__name__)

BUILDER_VERSION = 1
"""Bump when the way built-in models are built changes; old cache folders are then ignored."""
TOKENIZER_VOCAB_SIZE = 1024
BUILTIN_SIZES = ("tiny", "small", "50m")


def cache_root(cache_dir: Optional[str] = None) -> Path:
    """`cache_dir`, else $RLHF_CACHE, else ~/.cache/rlhf."""
    return Path(cache_dir or os.environ.get("RLHF_CACHE") or Path.home() / ".cache" / "rlhf")


def _fingerprint(params: dict) -> str:
    corpus = hashlib.sha256("\n".join(task.corpus_texts()).encode()).hexdigest()
    blob = json.dumps({**params, "builder_version": BUILDER_VERSION, "corpus": corpus}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _build_atomically(final: Path, build: Callable[[Path], None]) -> Path:
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


def builtin_tokenizer_dir(cache_dir: Optional[str] = None, vocab_size: int = TOKENIZER_VOCAB_SIZE) -> str:
    """Folder of the built-in tokenizer (byte-level BPE trained on `task.corpus_texts()`), built if missing."""
    from actors.modeling import train_bpe_tokenizer

    name = f"tokenizer-{_fingerprint({'kind': 'tokenizer', 'vocab_size': vocab_size})}"

    def build(tmp: Path) -> None:
        logger.info("training the built-in tokenizer (vocab %d)", vocab_size)
        train_bpe_tokenizer(task.corpus_texts(), vocab_size=vocab_size).save_pretrained(tmp)

    return str(_build_atomically(cache_root(cache_dir) / "builtin" / name, build))


def builtin_tokenizer(cache_dir: Optional[str] = None, vocab_size: int = TOKENIZER_VOCAB_SIZE):
    """The built-in tokenizer, loaded from its cache folder (trained on first use)."""
    from actors.modeling import load_tokenizer

    return load_tokenizer(builtin_tokenizer_dir(cache_dir, vocab_size))


def builtin_model_dir(size: str = "tiny", cache_dir: Optional[str] = None, seed: int = 0, **overrides) -> str:
    """Folder of a freshly initialised built-in Llama causal LM of preset `size` ("tiny", "small", "50m")
    with the built-in tokenizer saved next to it (safetensors, `save_pretrained`). Built on first use,
    then reused; `load_causal_lm(path)` and `load_tokenizer(path)` work offline. `overrides` go to
    `tiny_llama_config` (e.g. `tie_word_embeddings=True`) and are part of the cache key."""
    from actors.modeling import build_causal_lm, tiny_llama_config

    if size not in BUILTIN_SIZES:
        raise ValueError(f"size must be one of {BUILTIN_SIZES}, got {size!r}")
    params = {"kind": "causal_lm", "size": size, "seed": seed, "vocab_size": TOKENIZER_VOCAB_SIZE, "overrides": overrides}
    name = f"{size}-{_fingerprint(params)}"

    def build(tmp: Path) -> None:
        tokenizer = builtin_tokenizer(cache_dir)
        logger.info("building the built-in %s Llama model (seed %d)", size, seed)
        model = build_causal_lm(tiny_llama_config(tokenizer, size, **overrides), seed=seed)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    return str(_build_atomically(cache_root(cache_dir) / "builtin" / name, build))


def resolve_model_path(path: str) -> str:
    """A model path as the jobs read it: 'builtin:<size>' is the built-in Llama of that size after its
    SFT warm start (`orchestrator.sft.builtin_policy_dir`, built and cached on first use);
    'builtin:<size>-base' is the freshly initialised one (`builtin_model_dir`); any other path or hub
    name is returned unchanged."""
    if not path.startswith("builtin:"):
        return path
    size = path.split(":", 1)[1]
    base = size.endswith("-base")
    size = size[: -len("-base")] if base else size
    if size not in BUILTIN_SIZES:
        raise ValueError(f"unknown built-in model {path!r}; built-in models: "
                         + ", ".join(f"builtin:{s}, builtin:{s}-base" for s in BUILTIN_SIZES))
    if base:
        return builtin_model_dir(size)
    from orchestrator.sft import builtin_policy_dir

    return builtin_policy_dir(size)


BUILTIN_DATASETS = ("prompts", "closed-prompts", "preferences", "hidden-context", "sft")


def builtin_rows(name: str, split: str, seed: int = 0) -> list[dict]:
    """Rows of a built-in dataset (`BUILTIN_DATASETS`) for split "train" or "test"; backs the data specs
    `builtin:prompts`, `builtin:closed-prompts` (its closed questions only: 76 train, 38 test, for
    `task.verifiable_reward`), `builtin:preferences`, `builtin:hidden-context` (preference pairs from the
    annotator pool of `task.HIDDEN_CONTEXT`) and `builtin:sft`."""
    if split not in task.SPLITS:
        raise ValueError(f"split of builtin:{name} must be one of {task.SPLITS}, got {split!r}")
    if name == "prompts":
        return task.prompt_rows(split, seed=seed)
    if name == "closed-prompts":
        return task.prompt_rows(split, seed=seed, query_type="closed")
    if name == "preferences":
        return task.preference_rows(split, seed=seed)
    if name == "hidden-context":
        return task.hidden_context_rows(split, seed=seed)
    if name == "sft":
        return task.sft_rows(seed=seed, split=split)
    raise ValueError(f"unknown built-in dataset {name!r}; choose one of {BUILTIN_DATASETS}")
