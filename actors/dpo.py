"""The DPO role: the policy actor, plus sequence log-probs of preference pairs and the DPO update.

`DPOActor` IS a `PolicyActor` (same model loading, DeepSpeed engine, LoRA, sampling for the gold
evaluation, checkpoints, `save_pretrained` export); it adds what DPO needs:

- `pair_logprobs(rows)`: log pi(y | x) summed over the response tokens, for the chosen and the
  rejected answer of each pair. Chosen and rejected go through ONE forward pass: a micro-batch of b
  pairs is collated (`actors.pairs.collate_pairs`, as for the reward model) and stacked
  (`Pairs.stacked`) into 2b right-padded sequences, chosen rows first. Token log-probs come from
  `actors.lm.response_logprobs`, the function the PPO policy and reference use.
- `pair_logprobs(rows, reference=True)`: the reference. With LoRA, the same weights with the
  adapters disabled (valid at any time); without LoRA, the actor's own weights, which are the
  reference only before the first update (the driver computes them once, up front, and stores them
  per pair, so no second model is held during training).
- `train_step(rows, ref_chosen, ref_rejected, global_pairs)`: one optimizer step on this worker's
  share of a global batch. Each micro-batch contributes ``sum of its per-pair losses / global_pairs``
  (`losses.ppo.aggregate` with the global count), and `actors.engine.backward` undoes DeepSpeed's
  data-parallel averaging, so W workers take exactly the step of one worker on the whole batch.

Rows are dataset rows of `orchestrator.data.load_preferences` (prompt_ids, chosen_ids, rejected_ids).
"""

from __future__ import annotations

import contextlib

import torch

from actors.engine import backward, step, unwrap
from actors.lm import response_logprobs
from actors.pairs import StackedPairs, collate_pairs
from actors.policy import PolicyActor
from losses.dpo import dpo_loss
from losses.ppo import aggregate

# metric sums returned by train_step (divided by the global pair count by the driver)
PAIR_SUMS = ("loss", "accuracy", "margin", "chosen_reward", "rejected_reward", "logps_chosen", "logps_rejected")


def sequence_logprobs(model, batch: StackedPairs) -> torch.Tensor:
    """log pi(response | prompt) per row of a `StackedPairs` (`Pairs.stacked`): (2B,), fp32, chosen rows first.

    `response_logprobs` with prompt_len=1 scores every token from position 1 on (the batch is one
    right-padded block, prompts of different lengths); the response mask keeps the answer tokens.
    """
    token_lp = response_logprobs(model, batch.input_ids, batch.attention_mask, prompt_len=1)  # (2B, L-1)
    mask = batch.response_mask[:, 1:].bool()
    return torch.where(mask, token_lp, torch.zeros_like(token_lp)).sum(-1)


def dpo_loss_args(loss: str, beta: float, label_smoothing: float) -> dict:
    """`dpo.loss` (dpo | ipo | cdpo) -> keyword arguments of `losses.dpo.dpo_loss`."""
    if loss == "dpo":
        return {"beta": beta, "label_smoothing": 0.0, "loss_type": "sigmoid"}
    if loss == "cdpo":
        return {"beta": beta, "label_smoothing": label_smoothing, "loss_type": "sigmoid"}
    if loss == "ipo":
        return {"beta": beta, "label_smoothing": 0.0, "loss_type": "ipo"}
    raise ValueError(f"unknown dpo.loss {loss!r}; expected dpo, ipo or cdpo")


class DPOActor(PolicyActor):
    def __init__(self, cfg, *, model_path: str, seed: int, total_steps: int, pairs_per_step: int):
        # the engine's batch bookkeeping counts pairs: micro_batch_size pairs per forward
        super().__init__(cfg, model_path=model_path, seed=seed, total_steps=total_steps, minibatch_size=pairs_per_step)
        self.updates = 0

    def _micro(self, rows: list) -> list:
        b = self.cfg.micro_batch_size
        return [rows[i : i + b] for i in range(0, len(rows), b)]

    def _collate(self, rows: list) -> StackedPairs:
        return collate_pairs(rows, self.pad_id).to(self.engine.device).stacked(self.pad_id)

    @torch.no_grad()
    def pair_logprobs(self, rows: list, reference: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen (B,), rejected (B,)) sequence log-probs of the policy, or of the reference."""
        lora = hasattr(unwrap(self.engine), "disable_adapter")
        if reference and not lora and self.updates > 0:
            raise RuntimeError("reference log-probs of a full fine-tune must be computed before the first update")
        was_training = self.engine.training
        self.engine.eval()
        adapters_off = unwrap(self.engine).disable_adapter if (reference and lora) else contextlib.nullcontext
        out = []
        with adapters_off():
            for micro in self._micro(rows):
                out.append(sequence_logprobs(self.engine, self._collate(micro)).cpu().view(2, -1))
        if was_training:
            self.engine.train()
        both = torch.cat(out, dim=1)  # (2, B)
        return both[0], both[1]

    def train_step(self, rows: list, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, global_pairs: int,
                   loss_args: dict) -> dict:
        """One optimizer step on this worker's `rows`; returns metric SUMS over its pairs (`PAIR_SUMS`), lr, grad_norm."""
        self.engine.train()
        sums = dict.fromkeys(PAIR_SUMS, 0.0)
        start = 0
        for micro in self._micro(rows):
            b = len(micro)
            ref_c, ref_r = ref_chosen[start : start + b], ref_rejected[start : start + b]
            start += b
            logps = sequence_logprobs(self.engine, self._collate(micro)).view(2, b)  # one pass: chosen, rejected
            pi_c, pi_r = logps[0], logps[1]
            losses, chosen_reward, rejected_reward = dpo_loss(
                pi_c, pi_r, ref_c.to(pi_c.device), ref_r.to(pi_c.device), **loss_args
            )
            backward(self.engine, aggregate(losses, torch.ones_like(losses), num_tokens=global_pairs))
            sums["loss"] += losses.detach().sum().item()
            sums["accuracy"] += (chosen_reward > rejected_reward).float().sum().item()
            sums["margin"] += (chosen_reward - rejected_reward).sum().item()
            sums["chosen_reward"] += chosen_reward.sum().item()
            sums["rejected_reward"] += rejected_reward.sum().item()
            sums["logps_chosen"] += pi_c.detach().sum().item()
            sums["logps_rejected"] += pi_r.detach().sum().item()
        info = step(self.engine)
        self.updates += 1
        return {**sums, **info}

    def load_checkpoint(self, folder: str) -> None:
        super().load_checkpoint(folder)
        self.updates = max(self.updates, 1)  # trained weights: the reference must come from the checkpoint
