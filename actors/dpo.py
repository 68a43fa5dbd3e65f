"""The DPO role: the policy actor, plus sequence log-probs of preference pairs and the DPO update.

`DPOActor` IS a `PolicyActor` (same model loading, DeepSpeed engine, LoRA, sampling for the gold
evaluation, checkpoints, `save_pretrained` export); it adds what DPO needs, on `actors.pairs.Pairs`
batches (one row per pair, so a scatter over replicas never separates a pair):

- `pair_logprobs(pairs)`: log pi(y | x) summed over the response tokens, for the chosen and the
  rejected answer of each pair. Chosen and rejected go through ONE forward pass: `Pairs.stacked`
  makes 2b right-padded sequences, chosen rows first; token log-probs come from
  `actors.lm.sequence_token_logprobs`, the function SFT trains with.
- `pair_logprobs(pairs, reference=True)`: the reference. With LoRA, the same weights with the
  adapters disabled (valid at any time); without LoRA, the actor's own weights, which are the
  reference only before the first update (the driver computes them once, up front, and stores them
  per pair, so no second model is held during training).
- `train_step(pairs, global_pairs, loss_args)`: one optimizer step on this replica's share of a global
  batch through `actors.trainer.train_step` (per-pair losses over the global pair count), so W
  replicas take exactly the step of one replica on the whole batch.
"""

from __future__ import annotations

import contextlib

import torch

from actors.engine import unwrap
from actors.lm import forward_micro_batches, micro_batches, sequence_token_logprobs
from actors.pairs import PairLogProbs, Pairs
from actors.policy import PolicyActor
from actors.trainer import MicroLoss, train_step
from cluster.group import gather_as
from losses.dpo import dpo_loss

__all__ = ["DPOActor", "dpo_loss_args", "sequence_logprobs"]


def sequence_logprobs(model, pairs: Pairs, pad_id: int) -> torch.Tensor:
    """(b, 2) log pi(response | prompt) of chosen (column 0) and rejected (column 1) of b pairs, fp32."""
    token_lp, response = sequence_token_logprobs(model, pairs.stacked(pad_id))  # (2b, L-1) each
    sums = torch.where(response, token_lp, torch.zeros_like(token_lp)).sum(-1)  # (2b,)
    return sums.view(2, -1).T


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

    @gather_as("cat")
    def pair_logprobs(self, pairs: Pairs, reference: bool = False) -> PairLogProbs:
        """Sequence log-probs of chosen and rejected of this replica's pairs, of the policy or the reference."""
        lora = hasattr(unwrap(self.engine), "disable_adapter")
        if reference and not lora and self.updates > 0:
            raise RuntimeError("reference log-probs of a full fine-tune must be computed before the first update")
        adapters_off = unwrap(self.engine).disable_adapter if (reference and lora) else contextlib.nullcontext
        with adapters_off():
            both = forward_micro_batches(self.engine, pairs, self.cfg.micro_batch_size,
                                         lambda micro: sequence_logprobs(self.engine, micro, self.pad_id),
                                         tokens=self.cfg.micro_batch_tokens)
        return PairLogProbs(chosen=both[:, 0].contiguous(), rejected=both[:, 1].contiguous())

    def train_step(self, pairs: Pairs, global_pairs: int, loss_args: dict) -> dict:
        """One optimizer step on this replica's pairs (their `ref_chosen` / `ref_rejected` set); returns
        `actors.trainer.TrainStats` weighted by pairs: dpo/loss, dpo/accuracy (implicit reward of chosen
        above rejected's), dpo/margin, dpo/chosen_reward, dpo/rejected_reward, logps/chosen,
        logps/rejected, policy/lr, policy/grad_norm."""
        device = self.engine.device
        self.engine.train()

        def loss_fn(micro: Pairs) -> MicroLoss:
            micro = micro.to(device)
            logps = sequence_logprobs(self.engine, micro, self.pad_id)  # (b, 2): one pass, chosen and rejected
            losses, chosen_reward, rejected_reward = dpo_loss(logps[:, 0], logps[:, 1], micro.ref_chosen,
                                                              micro.ref_rejected, **loss_args)
            metrics = {
                "accuracy": (chosen_reward > rejected_reward).float().mean(),
                "margin": (chosen_reward - rejected_reward).mean(),
                "chosen_reward": chosen_reward.mean(),
                "rejected_reward": rejected_reward.mean(),
                "logps/chosen": logps[:, 0].detach().mean(),
                "logps/rejected": logps[:, 1].detach().mean(),
            }
            return MicroLoss(micro.weighted(losses), torch.ones_like(losses), metrics)

        micros = micro_batches(pairs, self.cfg.micro_batch_size, self.cfg.micro_batch_tokens)
        stats = train_step(self.engine, micros, loss_fn, global_pairs, "dpo",
                           model_prefix="policy")
        self.updates += 1
        return stats.as_dict()

    def load_checkpoint(self, folder: str) -> None:
        super().load_checkpoint(folder)
        self.updates = max(self.updates, 1)  # trained weights: the reference must come from the checkpoint
