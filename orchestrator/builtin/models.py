"""The built-in models that need no download: the tokenizer and the freshly initialised Llama models of
each size, built locally from the world's corpus (`orchestrator.builtin.world`).

Built folders are cached under `<cache root>/builtin/<name>-<hash>` (`orchestrator.core.cache`), where
the hash covers everything the build depends on (builder version, size, seed, vocab size, config
overrides, the world's corpus); a present folder is reused. The SFT-warm-started policies
(`builtin:<size>`) are `orchestrator.builtin.policy`'s.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Optional

from orchestrator.builtin import world
from orchestrator.core.cache import build_atomically, cache_root, fingerprint

logger = logging.getLogger(__name__)

BUILDER_VERSION = 1
"""Bump when the way built-in models are built changes; old cache folders are then ignored."""
TOKENIZER_VOCAB_SIZE = 1024
BUILTIN_SIZES = ("tiny", "small", "50m")


def _fingerprint(params: dict) -> str:
    """The cache key of a built folder: `params`, the builder version, the world's corpus and the chat template
    the tokenizer is saved with."""
    from actors.modeling import CHAT_TEMPLATE

    corpus = hashlib.sha256("\n".join(world.corpus_texts()).encode()).hexdigest()
    return fingerprint({**params, "builder_version": BUILDER_VERSION, "corpus": corpus,
                        "chat_template": hashlib.sha256(CHAT_TEMPLATE.encode()).hexdigest()})


def builtin_tokenizer_dir(cache_dir: Optional[str] = None, vocab_size: int = TOKENIZER_VOCAB_SIZE) -> str:
    """Folder of the built-in tokenizer (byte-level BPE trained on `world.corpus_texts()`), built if missing."""
    from actors.modeling import train_bpe_tokenizer

    name = f"tokenizer-{_fingerprint({'kind': 'tokenizer', 'vocab_size': vocab_size})}"

    def build(tmp: Path) -> None:
        logger.info("training the built-in tokenizer (vocab %d)", vocab_size)
        train_bpe_tokenizer(world.corpus_texts(), vocab_size=vocab_size).save_pretrained(tmp)

    return str(build_atomically(cache_root(cache_dir) / "builtin" / name, build))


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

    return str(build_atomically(cache_root(cache_dir) / "builtin" / name, build))
