"""The scoring contract of a reward model, one code path for training and PPO-time scoring.

`actors.reward_trainer.RewardModelActor` (training and evaluation, `rlhf rm`) and
`actors.reward.ModelScorer` (kind=model in PPO, `rlhf serve reward`) both score a conversation, as
`actors.rendering` renders it, as one right-padded sequence through `sequence_outputs`.
transformers' sequence classifier reads the hidden state of the rightmost token whose id is not
`config.pad_token_id` (it ignores the attention mask), so with right padding that is the last token of
the text (the eos of the response). `sequence_outputs` therefore checks that the pad id sits exactly
on the masked positions: a pad id inside a text, or a non-pad token in the padding, would move the
pooled position silently.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["right_pad", "sequence_outputs"]


def right_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids (N, T) long right-padded with `pad_id`, attention_mask (N, T) long 1 on tokens), T the longest."""
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attention_mask[i, : len(s)] = 1
    return input_ids, attention_mask


def sequence_outputs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_id: int | None,
                     eos_id: int | None = None) -> torch.Tensor:
    """Score-head outputs (N, num_labels) float32 of right-padded sequences, at the last non-pad token.

    input_ids:      (N, T) long, right-padded with `pad_id`
    attention_mask: (N, T) 1 on tokens, 0 on padding
    `model` is a Hugging Face sequence classifier or a DeepSpeed engine around one. When the pad id is
    not the EOS id (`eos_id`), the pad id must sit exactly on the masked positions (else the pooled
    position would move silently). When it is (a tokenizer without a pad token, common on the Hub),
    transformers pools the last token before the trailing EOS; training (`rlhf rm`) and scoring
    (PPO, serving) both come here, so they pool at the same token either way.
    """
    if pad_id is None:
        raise ValueError("sequence_outputs: no pad id (model config or tokenizer); the head could not find the last token")
    if pad_id != eos_id and not torch.equal(input_ids == pad_id, attention_mask == 0):
        raise ValueError(
            "sequence_outputs: pad ids must sit exactly on the masked positions (the head pools the last non-pad "
            "token, not the last unmasked one)"
        )
    if (attention_mask[:, 1:] > attention_mask[:, :-1]).any() or not attention_mask[:, 0].all():
        raise ValueError("sequence_outputs: sequences must be right-padded and non-empty")
    return model(input_ids=input_ids, attention_mask=attention_mask).logits.float()  # (N, num_labels)
