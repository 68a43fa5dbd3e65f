"""The reward-model role of `rlhf rm`: a sequence classifier trained on preference pairs with any objective
of `actors.reward_head.RewardHead` (Bradley-Terry, mean-variance / categorical / mixture DPL, ODIN).

The model is `AutoModelForSequenceClassification` on a causal-LM backbone with `head.num_labels`
outputs; its score head reads the last token of each conversation, the response's EOS
(`actors.scoring.sequence_outputs`, the same path as PPO-time scoring, whatever the pad token) and starts scaled by `head_init_scale` (0.01, as the DPL code does). Full
fine-tuning or LoRA (the score head then trains in full next to the adapters). Hosted like every role
(`cluster.group`): one object in local mode, or N Ray replicas forming one DeepSpeed ZeRO
data-parallel engine. Pairs arrive as `actors.pairs.Pairs` (one row per pair, so every replica gets
whole pairs).

The loss contract (`actors.trainer.train_step`, the trainer of every role): one `train_step` call is
one optimizer step over the replica's shard of a minibatch of `global_pairs` pairs. A micro-batch of b
pairs contributes ``sum(per-pair loss) / global_pairs + batch_term * b / global_pairs`` (`LossTerms`),
so per-pair terms give the full-batch gradient however the minibatch is sharded or micro-batched;
batch-level terms (ODIN's length decorrelation and orthogonality, the categorical entropy bonus) are
computed per micro-batch and weighted by its share, as the ODIN and DPL code do per device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from actors.engine import build_engine, export_pretrained, load_checkpoint, save_checkpoint
from actors.lm import forward_micro_batches, micro_batches
from actors.pairs import Pairs
from actors.reward_head import RewardHead
from actors.scoring import sequence_outputs
from actors.trainer import MicroLoss, train_step
from cluster.batch import Batch, spec
from cluster.group import gather_as

__all__ = ["PairOutputs", "pair_outputs", "head_from_config", "scale_score_head", "RewardModelActor"]


@dataclass
class PairOutputs(Batch):
    chosen: torch.Tensor = spec("B K", torch.float32)  # (B, K) score-head outputs of chosen, K = head.num_labels
    rejected: torch.Tensor = spec("B K", torch.float32)  # (B, K) score-head outputs of rejected


def _forward(model, pairs: Pairs, pad_id: int, pooling: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward over chosen and rejected of `pairs`: (out_chosen (b, K), out_rejected (b, K)).

    `Pairs.stacked` cuts both halves to the longest real sequence of this micro-batch (trailing
    padding of the full minibatch costs nothing) and stacks them into one (2b, T) batch.
    """
    b = pairs.num_rows
    batch = pairs.stacked(pad_id)
    out = sequence_outputs(model, batch.input_ids, batch.attention_mask, pooling)  # (2b, K)
    return out[:b], out[b:]


def pair_outputs(model, pairs: Pairs, pad_id: int, pooling: str, micro_batch_size: int, tokens: int = 0) -> PairOutputs:
    """Head outputs of every pair in eval mode, `micro_batch_size` pairs (or `tokens` padded tokens,
    `actors.lm.micro_batches`) per forward, pooled per `pooling` (`actors.scoring`); `model` is a Hugging
    Face sequence classifier or a DeepSpeed engine around one."""
    both = forward_micro_batches(model, pairs, micro_batch_size,
                                 lambda micro: torch.stack(_forward(model, micro, pad_id, pooling), dim=1),  # (B, 2, K)
                                 tokens=tokens)
    return PairOutputs(chosen=both[:, 0].contiguous(), rejected=both[:, 1].contiguous())


def head_from_config(cfg) -> RewardHead:
    """The `RewardHead` of a `RewardModelConfig` (only the fields its objective uses)."""
    return RewardHead(
        objective=cfg.objective,
        num_atoms=cfg.num_atoms if cfg.objective == "categorical" else 0,
        num_components=cfg.num_components if cfg.objective == "mixture" else 0,
        variance_penalty=cfg.variance_penalty,
        entropy_coef=cfg.entropy_coef,
        odin_length_coef=cfg.odin_length_coef,
        odin_orth_coef=cfg.odin_orth_coef,
    )


def scale_score_head(model, factor: float) -> None:
    """Multiply the freshly initialised score head by `factor` (0.01: start near a constant reward)."""
    with torch.no_grad():
        model.score.weight.mul_(factor)
        if getattr(model.score, "bias", None) is not None:
            model.score.bias.mul_(factor)


class RewardModelActor:
    """Trains one reward model. Receives only its `RewardModelConfig` slice."""

    def __init__(self, cfg, *, model_path: str, seed: int, total_steps: int, minibatch_size: int):
        from actors.modeling import load_sequence_classifier, load_tokenizer

        self.cfg = cfg
        self.head = head_from_config(cfg)
        torch.manual_seed(seed)  # the fresh score head: identical on every replica and in local mode
        self.tokenizer = load_tokenizer(model_path, trust_remote_code=cfg.trust_remote_code)
        model = load_sequence_classifier(model_path, num_labels=self.head.num_labels, dtype=cfg.dtype,
                                         trust_remote_code=cfg.trust_remote_code)
        if not hasattr(model, "score"):
            raise ValueError(f"model.path={model_path!r}: {type(model).__name__} has no `score` head "
                             "(rlhf rm needs a causal-LM backbone whose sequence classifier names its head `score`)")
        scale_score_head(model, cfg.head_init_scale)
        self.pad_id = self.tokenizer.pad_token_id  # as the driver collates and `ModelScorer` pads
        self.engine = build_engine(
            model, cfg, train=True, total_steps=total_steps, minibatch_size=minibatch_size,
            trainable=("score",) if cfg.lora.enabled else (),  # with LoRA the head still trains in full
        )
        self.engine.train()

    def _score_weight(self) -> torch.Tensor:
        """The score head's weight (num_labels, H) as the autograd graph sees it (ODIN's orthogonality)."""
        for name, param in self.engine.module.named_parameters():
            if name.split(".")[-2:] == ["score", "weight"]:
                if param.numel() == 0:  # partitioned by ZeRO-3 and not persisted whole
                    raise ValueError("objective=odin with model.zero_stage=3 needs the score head kept whole "
                                     "(DeepSpeed keeps params under stage3_param_persistence_threshold whole)")
                return param
        raise ValueError("no score.weight parameter found")

    def train_step(self, pairs: Pairs, global_pairs: int) -> dict:
        """One optimizer step over this replica's pairs (`actors.trainer.train_step`, micro-batches of
        `cfg.micro_batch_size` pairs; per-pair losses over the global pair count, batch terms by share).

        Returns `TrainStats` weighted by pairs (merge replicas with `actors.trainer.merge_stats`):
        rm/loss (per-pair + batch terms), rm/accuracy (chosen's mean utility above rejected's, ties 1/2),
        rm/margin, the objective's extra terms, rm/lr and rm/grad_norm.
        """
        device = self.engine.device
        self.engine.train()
        odin = self.head.objective == "odin"

        def loss_fn(micro: Pairs) -> MicroLoss:
            micro = micro.to(device)
            out_c, out_r = _forward(self.engine, micro, self.pad_id, self.head.pooling)
            terms = self.head.loss(out_c, out_r, micro.chosen_len if odin else None, micro.rejected_len if odin else None,
                                   self._score_weight() if odin else None)
            with torch.no_grad():
                mean_c, mean_r = self.head.mean(out_c), self.head.mean(out_r)
                metrics = {"accuracy": ((mean_c > mean_r).float() + 0.5 * (mean_c == mean_r).float()).mean(),
                           "margin": (mean_c - mean_r).mean(), **terms.parts}
            return MicroLoss(micro.weighted(terms.pair), torch.ones_like(terms.pair), metrics, batch_term=terms.batch)

        micros = micro_batches(pairs, self.cfg.micro_batch_size, self.cfg.micro_batch_tokens)
        return train_step(self.engine, micros, loss_fn, global_pairs, "rm").as_dict()

    @gather_as("cat")
    def outputs(self, pairs: Pairs) -> PairOutputs:
        """Head outputs (eval mode, no gradients) of this replica's pairs."""
        return pair_outputs(self.engine, pairs, self.pad_id, self.head.pooling, self.cfg.micro_batch_size, self.cfg.micro_batch_tokens)

    def save_checkpoint(self, folder: str) -> None:
        save_checkpoint(self.engine, folder, tag="reward_model")

    def load_checkpoint(self, folder: str) -> None:
        load_checkpoint(self.engine, folder, tag="reward_model")

    def export(self, folder: str, rlhf_reward: dict) -> None:
        """A self-describing `save_pretrained` folder: safetensors, tokenizer, and `rlhf_reward` in its config
        (LoRA merged into the weights). A collective under ZeRO-3; rank 0 writes."""
        export_pretrained(self.engine, self.tokenizer, folder, {"rlhf_reward": dict(rlhf_reward)},
                          adapter=self.cfg.lora.save_adapter)
