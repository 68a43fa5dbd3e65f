"""Collating prompt rows into the left-padded `PromptBatch` a policy samples from."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:
    import torch

    from actors.types import PromptBatch

__all__ = ["collate_prompts", "to_prompt_batch"]


def collate_prompts(rows: Sequence[Mapping], pad_id: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Left-pad the `prompt_ids` of dataset rows into a batch, so every prompt ends at the last column.

    Returns:
        input_ids:      (B, P) long, pad_id then prompt tokens; P = longest prompt
        attention_mask: (B, P) long, 1 on prompt tokens, 0 on padding
    """
    import torch

    if not rows:
        raise ValueError("collate_prompts: no rows")
    seqs = [list(r["prompt_ids"]) for r in rows]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            input_ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            attention_mask[i, width - len(s):] = 1
    return input_ids, attention_mask


def to_prompt_batch(rows: Sequence[Mapping], pad_id: int) -> "PromptBatch":
    """Prompt rows of `load_prompts` -> the `PromptBatch` a policy samples from (left-padded ids, the
    plain prompts, the whole chats, references and query types)."""
    from actors.types import PromptBatch

    input_ids, attention_mask = collate_prompts(rows, pad_id)
    return PromptBatch(
        input_ids=input_ids,
        attention_mask=attention_mask.long(),
        prompts=[r["prompt"] for r in rows],
        messages=[r.get("chat") for r in rows],
        references=[r.get("reference") for r in rows],
        query_types=[r.get("query_type") for r in rows],
    )
