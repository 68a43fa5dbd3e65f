"""The critic role: per-token values V(s_t) and the clipped value update.

A `ValueModel` (causal-LM backbone + linear head) initialised from the policy's initial weights or
from the reward model's backbone (`critic.init_from`). Receives only its `CriticConfig` slice.
"""

from __future__ import annotations

import os

import torch

from actors.engine import build_engine, gathered_params, load_checkpoint, save_checkpoint
from actors.lm import ValueModel, forward_micro_batches, micro_batches
from actors.modeling import load_causal_lm, resolve_dtype
from actors.trainer import MicroLoss, TrainStats, train_step
from actors.types import Experience, Rollout, Values
from cluster.group import gather_as
from losses.ppo import value_loss


class CriticActor:
    def __init__(self, cfg, *, model_path: str, seed: int, total_steps: int, minibatch_size: int):
        self.cfg = cfg
        torch.manual_seed(seed)
        lm = load_causal_lm(model_path, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
        model = ValueModel.from_causal_lm(lm)
        del lm
        if resolve_dtype(cfg.dtype) == "bf16":
            model.value_head.to(torch.bfloat16)
        self.engine = build_engine(
            model, cfg, train=True, total_steps=total_steps, minibatch_size=minibatch_size,
            trainable=("value_head",) if cfg.lora.enabled else (),  # with LoRA the head still trains
        )

    def _values(self, sequences, attention_mask, prompt_len):
        """(b, T): the value of the state before each response token, read through the engine (ZeRO hooks)."""
        return self.engine(sequences, attention_mask)[:, prompt_len - 1 : -1]

    @gather_as("cat")
    @torch.no_grad()
    def values(self, rollout: Rollout) -> Values:
        """V_old(s_t) for every response token, (B, T)."""
        def forward(micro: Rollout) -> torch.Tensor:
            return self._values(micro.sequences, micro.attention_mask, micro.prompt_len).float()

        values = forward_micro_batches(self.engine, rollout, self.cfg.micro_batch_size, forward, tokens=self.cfg.micro_batch_tokens,
                                       width=rollout.action_mask.shape[1])
        return Values(values=values * rollout.action_mask)

    def train(self, exp: Experience, minibatch_rows: int) -> dict:
        """Clipped value updates: one optimizer step per minibatch of `minibatch_rows` rows of this replica
        (`actors.trainer.train_step`, as the policy)."""
        device = self.engine.device
        self.engine.train()

        def loss_fn(micro: Experience) -> MicroLoss:
            micro = micro.to(device)
            values = self._values(micro.sequences, micro.attention_mask, micro.prompt_len)
            per_token, metrics = value_loss(values, micro.old_values, micro.returns, micro.action_mask,
                                            clip_eps=self.cfg.value_clip_eps)
            return MicroLoss(per_token, micro.action_mask, metrics)

        stats = TrainStats()
        for mb in exp.chunks(minibatch_rows):
            micros = micro_batches(mb, self.cfg.micro_batch_size, self.cfg.micro_batch_tokens)
            train_step(self.engine, micros, loss_fn, mb.mb_tokens[0].item(), "critic", stats)
        return stats.as_dict()

    def save_checkpoint(self, folder: str) -> None:
        save_checkpoint(self.engine, folder, tag="critic")

    def load_checkpoint(self, folder: str) -> None:
        load_checkpoint(self.engine, folder, tag="critic")

    def export(self, folder: str) -> None:
        os.makedirs(folder, exist_ok=True)
        with gathered_params(self.engine) as model:
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            if rank == 0:
                model.save(folder)
