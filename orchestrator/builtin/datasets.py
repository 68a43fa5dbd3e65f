"""The built-in datasets as rows: the data specs `builtin:prompts`, `builtin:closed-prompts`,
`builtin:preferences`, `builtin:hidden-context` and `builtin:sft` (`orchestrator.data.sources` reads them), and
the built-in environments' `builtin:lookup`, `builtin:clarify`, `builtin:lookup-sft`, `builtin:clarify-sft`
(`orchestrator.builtin.environments`)."""

from __future__ import annotations

from orchestrator.builtin import world
from orchestrator.builtin.environments import ENV_DATASETS, environment_rows

__all__ = ["BUILTIN_DATASETS", "GOLD_DATA", "builtin_rows"]

WORLD_DATASETS = ("prompts", "closed-prompts", "preferences", "hidden-context", "sft")
GOLD_DATA = tuple(f"builtin:{name}" for name in WORLD_DATASETS)
"""Data of the built-in world: its held-out prompts have a gold score."""
BUILTIN_DATASETS = WORLD_DATASETS + ENV_DATASETS
"""Every built-in data spec: the world's, and the built-in environments' prompts and warm-start SFT data."""


def builtin_rows(name: str, split: str, seed: int = 0) -> list[dict]:
    """Rows of a built-in dataset (`BUILTIN_DATASETS`) for split "train" or "test"; backs the data specs
    `builtin:prompts`, `builtin:closed-prompts` (its closed questions only: 76 train, 38 test, for
    `world.verifiable_reward`), `builtin:preferences`, `builtin:hidden-context` (preference pairs from the
    annotator pool of `world.HIDDEN_CONTEXT`) and `builtin:sft`."""
    if split not in world.SPLITS:
        raise ValueError(f"split of builtin:{name} must be one of {world.SPLITS}, got {split!r}")
    if name == "prompts":
        return world.prompt_rows(split, seed=seed)
    if name == "closed-prompts":
        return world.prompt_rows(split, seed=seed, query_type="closed")
    if name == "preferences":
        return world.preference_rows(split, seed=seed)
    if name == "hidden-context":
        return world.hidden_context_rows(split, seed=seed)
    if name == "sft":
        return world.sft_rows(seed=seed, split=split)
    if name in ENV_DATASETS:
        return environment_rows(name, split, seed)
    raise ValueError(f"unknown built-in dataset {name!r}; choose one of {BUILTIN_DATASETS}")
