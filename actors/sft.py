"""The SFT role: the policy actor, trained on demonstrations by next-token cross-entropy on the response.

`SFTActor` IS a `PolicyActor` (same loading, engine, LoRA, sampling for the evaluation, checkpoints,
export). `train_step(batch, global_tokens)` is one optimizer step through `actors.trainer.train_step`:
the per-token loss is ``-log p(token | everything before it)`` on response tokens only (prompt tokens
are context), summed and divided by the response tokens of the whole minibatch over every replica,
i.e. the token-mean cross-entropy of the minibatch, however it is cut into replicas and micro-batches.

Packing (`pack_length` > 0): each replica packs its rows into rows of at most `pack_length` tokens
(`Sequences.packed`; positions restart per example, attention stays within each example), and
`cfg.micro_batch_size` then counts packed rows. The loss and its normaliser are the same response
tokens, so packing changes the speed, not the update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from actors.lm import forward_micro_batches, micro_batches, sequence_token_logprobs
from actors.policy import PolicyActor
from actors.trainer import MicroLoss, train_step
from actors.types import Sequences
from cluster.batch import Batch, spec
from cluster.group import gather_as

__all__ = ["SFTActor", "TokenLoss"]


@dataclass
class TokenLoss(Batch):
    nll: torch.Tensor = spec("B", torch.float32)  # (B,) sum over the response tokens of -log p(token | before)
    tokens: torch.Tensor = spec("B", torch.float32)  # (B,) response tokens of the row


class SFTActor(PolicyActor):
    def __init__(self, cfg, *, pack_length: int = 0, **kwargs):
        super().__init__(cfg, **kwargs)
        self.pack_length = pack_length

    def train_step(self, batch: Sequences, global_tokens: float) -> dict:
        """One optimizer step on this replica's rows (micro-batches of `cfg.micro_batch_size` rows);
        returns `TrainStats` weighted by tokens: sft/loss (the token-mean cross-entropy), policy/lr,
        policy/grad_norm."""
        device = self.engine.device
        self.engine.train()

        def loss_fn(micro: Sequences) -> MicroLoss:
            token_lp, response = sequence_token_logprobs(self.engine, micro.to(device))
            return MicroLoss(-token_lp, response)

        if self.pack_length:
            batch = batch.packed(self.pack_length, self.pad_id)
        micros = (micro.trimmed() for micro in micro_batches(batch, self.cfg.micro_batch_size, self.cfg.micro_batch_tokens))
        return train_step(self.engine, micros, loss_fn, global_tokens, "sft", model_prefix="policy").as_dict()

    @gather_as("cat")
    def token_loss(self, batch: Sequences) -> TokenLoss:
        """Held-out cross-entropy of this replica's rows: the sum over each row's response tokens, and their count."""
        def forward(micro: Sequences) -> torch.Tensor:
            token_lp, response = sequence_token_logprobs(self.engine, micro.trimmed())
            nll = torch.where(response, -token_lp, torch.zeros_like(token_lp)).sum(-1)
            return torch.stack([nll, response.sum(-1).float()], dim=1)  # (b, 2)

        out = forward_micro_batches(self.engine, batch, self.cfg.micro_batch_size, forward, tokens=self.cfg.micro_batch_tokens)
        return TokenLoss(nll=out[:, 0].contiguous(), tokens=out[:, 1].contiguous())
