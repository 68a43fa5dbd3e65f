"""The scoring contract of a reward model, one code path for training and PPO-time scoring.

`actors.reward_trainer.RewardModelActor` (training and evaluation, `rlhf rm`, `rlhf rm eval`) and
`actors.reward.ModelScorer` (kind=model in PPO, `rlhf serve reward`) both score a conversation, as
`actors.rendering` renders it, as one right-padded sequence through `sequence_outputs`.

Pooling (recorded as `pooling` in a saved reward model's `rlhf_reward`, read back by PPO and serving):

- `last_token` (what `rlhf rm` trains): the score head's output at the last token of each sequence by
  its attention mask, i.e. the EOS that ends the response. The pad id plays no part, so a tokenizer
  without a pad token (GPT-2, most Llama checkpoints: pad == eos) pools exactly where one with a
  distinct pad token does, and a pad id inside a text cannot move it.
- `model`: the classifier's own pooling, for reward models trained elsewhere (a hub sequence classifier
  without `rlhf_reward`): transformers' decoder classifiers read the rightmost token whose id is not
  `config.pad_token_id`, which is what they were trained on (with pad == eos: the token before the EOS).

`last_token` reads the per-token outputs of the classifier's `score` layer (every Hugging Face decoder
classifier has one, applied to all positions before pooling) with a forward hook, so DeepSpeed engines,
ZeRO-3 and peft wrappers need nothing special. A classifier without a `score` layer (encoder models such
as DeBERTa, pooling their first token) always uses its own pooling.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["POOLINGS", "right_pad", "sequence_outputs"]

POOLINGS = ("last_token", "model")


def right_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids (N, T) long right-padded with `pad_id`, attention_mask (N, T) long 1 on tokens), T the longest."""
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attention_mask[i, : len(s)] = 1
    return input_ids, attention_mask


def _score_layer(model) -> torch.nn.Module | None:
    """The per-token `score` layer of a Hugging Face decoder classifier (inside a DeepSpeed engine or a
    peft wrapper), or None."""
    module = getattr(model, "module", model)  # DeepSpeed engine -> the model
    if hasattr(module, "get_base_model"):  # peft
        module = module.get_base_model()
    layer = getattr(module, "score", None)
    return layer if isinstance(layer, torch.nn.Module) else None


def sequence_outputs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, pooling: str = "last_token") -> torch.Tensor:
    """Score-head outputs (N, num_labels) float32 of right-padded sequences, pooled per `pooling` (module doc).

    input_ids:      (N, T) long, right-padded (the pad id does not matter for `last_token`)
    attention_mask: (N, T) 1 on tokens, 0 on padding
    `model` is a Hugging Face sequence classifier or a DeepSpeed engine around one.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if (attention_mask[:, 1:] > attention_mask[:, :-1]).any() or not attention_mask[:, 0].all():
        raise ValueError("sequence_outputs: sequences must be right-padded and non-empty")
    layer = _score_layer(model) if pooling == "last_token" else None
    if layer is None:
        return model(input_ids=input_ids, attention_mask=attention_mask).logits.float()  # (N, num_labels)
    per_token: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _module, _inputs, out: per_token.append(out))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask)
    finally:
        handle.remove()
    out = per_token[-1]  # (N, T, num_labels)
    last = attention_mask.long().sum(-1) - 1  # (N,) the last real token: the response's EOS
    return out[torch.arange(out.shape[0], device=out.device), last.to(out.device)].float()
