"""The reward-model format: one head layout per objective, its loss, and the reward read off it.

A saved reward model is a Hugging Face sequence-classifier folder (`AutoModelForSequenceClassification`,
any causal-LM backbone; the head reads the hidden state of the last non-pad token) whose config carries
a JSON self-description under `rlhf_reward` (see `RewardHead.to_dict`). `RewardHead.from_config` reads
it back, so PPO, `rlhf rm eval` and `rlhf serve reward` need only the folder.

Head layouts (the `num_labels` outputs of the score head), with the losses from `losses.preference`:

| objective       | num_labels | outputs                                    | loss                        |
|-----------------|------------|--------------------------------------------|-----------------------------|
| bradley_terry   | 1          | reward                                     | bradley_terry_loss          |
| mean_variance   | 2          | mean, raw std (std = softplus(raw))        | mean_variance_loss          |
| categorical     | K atoms    | logits over atoms linspace(0, 1, K)        | categorical_loss            |
| mixture         | 3 C        | weight logits, means, raw stds (C comps)   | mixture_loss                |
| odin            | 2          | quality, length                            | odin_loss + orthogonality   |

The reward for RL (`RewardHead.reward`): the mean of the utility distribution (`statistic="mean"`) or
its alpha-quantile (`statistic="quantile"`, the DPL paper's risk-averse reward), normalised with the
statistics stored at save time: (value - norm_mean) / norm_std; the predicted std is divided by
norm_std too. Bradley-Terry has no distribution (its std is None; only `mean` is allowed); ODIN's reward
is its quality head alone (the length head is dropped at RL time, as in the ODIN paper).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch
from torch import Tensor

from actors.scoring import POOLINGS
from losses import preference as P

OBJECTIVES = ("bradley_terry", "mean_variance", "categorical", "mixture", "odin")
DISTRIBUTIONAL = ("mean_variance", "categorical", "mixture")
STATISTICS = ("mean", "quantile")

__all__ = ["OBJECTIVES", "DISTRIBUTIONAL", "STATISTICS", "RewardHead", "LossTerms"]


@dataclass
class LossTerms:
    """Per-pair losses (B,) and the batch-level term (0-dim) of one micro-batch.

    The training loss of a micro-batch is `pair.sum() / global_pairs + batch * (B / global_pairs)`:
    per-pair terms are exact under any sharding; batch terms (ODIN's length decorrelation and
    orthogonality, categorical's entropy bonus) are computed over the pairs one forward sees and
    weighted by its share of the global batch, as the ODIN and DPL code do per device.
    """

    pair: Tensor
    batch: Tensor
    parts: dict = field(default_factory=dict)  # name -> 0-dim tensor, for logging


@dataclass
class RewardHead:
    objective: str = "bradley_terry"
    """One of OBJECTIVES."""
    num_atoms: int = 0
    """categorical: number of atoms K (>= 2)."""
    num_components: int = 0
    """mixture: number of Gaussian components C (>= 1)."""
    norm_mean: float = 0.0
    """Subtracted from the reward statistic at RL time (set at save time from training responses)."""
    norm_std: float = 1.0
    """The reward statistic (and the predicted std) is divided by this at RL time."""
    variance_penalty: float = 0.0
    """mean_variance: weight of the penalty on the predicted spread (the DPL code's option)."""
    entropy_coef: float = 0.0
    """categorical: weight of the entropy bonus."""
    odin_length_coef: float = 1.0
    """odin: weight of the length-decorrelation term."""
    odin_orth_coef: float = 1.0
    """odin: weight of the head-orthogonality term."""
    pooling: str = "last_token"
    """Which token the head reads (`actors.scoring`): last_token (the last token by the attention mask, the
    response's EOS; what `rlhf rm` trains) or model (the classifier's own pooling; a classifier saved
    without rlhf_reward, e.g. from the Hub, was trained that way)."""
    chat_template: bool = True
    """How conversations were rendered in training (`actors.rendering.Rendering`): through the tokenizer's
    chat template when it has one (data.chat_template), else plain. Scoring renders the same way."""

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective {self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        if self.objective == "categorical" and self.num_atoms < 2:
            raise ValueError(f"objective=categorical needs num_atoms >= 2, got {self.num_atoms}")
        if self.objective == "mixture" and self.num_components < 1:
            raise ValueError(f"objective=mixture needs num_components >= 1, got {self.num_components}")
        if not self.norm_std > 0:
            raise ValueError(f"norm_std must be > 0, got {self.norm_std}")
        if self.pooling == "last_non_pad_token":  # how models saved before pooling by lengths recorded it
            self.pooling = "model"
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling {self.pooling!r} is not one of {', '.join(POOLINGS)}")

    # ------------------------------------------------------------------ layout

    @property
    def num_labels(self) -> int:
        return {"bradley_terry": 1, "mean_variance": 2, "categorical": self.num_atoms,
                "mixture": 3 * self.num_components, "odin": 2}[self.objective]

    @property
    def outputs(self) -> list[str]:
        """Names of the score head's outputs, in order."""
        if self.objective == "bradley_terry":
            return ["reward"]
        if self.objective == "mean_variance":
            return ["mean", "raw_std"]
        if self.objective == "categorical":
            return [f"atom_{k}" for k in range(self.num_atoms)]
        if self.objective == "mixture":
            c = self.num_components
            return [f"weight_logit_{k}" for k in range(c)] + [f"mean_{k}" for k in range(c)] + [f"raw_std_{k}" for k in range(c)]
        return ["quality", "length"]

    @property
    def distributional(self) -> bool:
        return self.objective in DISTRIBUTIONAL

    def to_dict(self) -> dict:
        """The `rlhf_reward` entry of a saved model's config (plus the derived layout, for readers)."""
        return {**asdict(self), "num_labels": self.num_labels, "outputs": self.outputs}

    @classmethod
    def from_dict(cls, d: dict | None) -> "RewardHead":
        """Read `rlhf_reward` back; a plain one-output classifier without it is Bradley-Terry read with the
        classifier's own pooling (as it was trained elsewhere)."""
        d = dict(d) if d else {"pooling": "model"}
        known = {f.name for f in fields(cls)}
        head = cls(**{k: v for k, v in d.items() if k in known})
        if "num_labels" in d and d["num_labels"] != head.num_labels:
            raise ValueError(f"rlhf_reward says num_labels={d['num_labels']} but objective={head.objective} "
                             f"implies {head.num_labels}")
        return head

    @classmethod
    def from_config(cls, config) -> "RewardHead":
        head = cls.from_dict(getattr(config, "rlhf_reward", None))
        if config.num_labels != head.num_labels:
            raise ValueError(f"the model has {config.num_labels} outputs but its rlhf_reward "
                             f"(objective={head.objective}) needs {head.num_labels}")
        return head

    # ------------------------------------------------------------------ training

    def loss(self, out_chosen: Tensor, out_rejected: Tensor, len_chosen: Tensor | None = None,
             len_rejected: Tensor | None = None, score_weight: Tensor | None = None) -> LossTerms:
        """Per-pair and batch-level loss of B pairs; out_* are (B, num_labels) head outputs.

        odin needs the response lengths (B,) and the score head's weight (2, H) (orthogonality).
        """
        zero = out_chosen.new_zeros((), dtype=torch.float32)
        o = self.objective
        if o == "bradley_terry":
            return LossTerms(P.bradley_terry_loss(out_chosen[:, 0], out_rejected[:, 0]), zero)
        if o == "mean_variance":
            return LossTerms(P.mean_variance_loss(out_chosen, out_rejected, self.variance_penalty), zero)
        if o == "categorical":
            pair, entropy = P.categorical_loss(out_chosen, out_rejected, self.entropy_coef)
            return LossTerms(pair, entropy.float(), {"entropy_term": entropy.detach()})
        if o == "mixture":
            return LossTerms(P.mixture_loss(out_chosen, out_rejected), zero)
        if len_chosen is None or len_rejected is None or score_weight is None:
            raise ValueError("objective=odin needs response lengths and the score head's weight")
        pair, length_term = P.odin_loss(out_chosen[:, 0], out_chosen[:, 1], out_rejected[:, 0], out_rejected[:, 1],
                                        len_chosen.float(), len_rejected.float())
        orth = P.odin_orthogonality(score_weight[0], score_weight[1])
        batch = self.odin_length_coef * length_term + self.odin_orth_coef * orth
        return LossTerms(pair, batch, {"length_term": length_term.detach(), "orthogonality": orth.detach()})

    # ------------------------------------------------------------------ reading rewards

    def mean(self, out: Tensor) -> Tensor:
        """(N,) mean utility (raw, unnormalised); ODIN: the quality head."""
        o = self.objective
        if o == "bradley_terry":
            return out[:, 0].float()
        if o == "mean_variance":
            return out[:, 0].float()
        if o == "categorical":
            return P.categorical_mean(out)
        if o == "mixture":
            return P.mixture_mean(out)
        return out[:, 0].float()

    def std(self, out: Tensor) -> Tensor | None:
        """(N,) predicted std of the utility (raw); None for non-distributional heads."""
        o = self.objective
        if o == "mean_variance":
            return P.mean_variance_std(out)
        if o == "categorical":
            return P.categorical_std(out)
        if o == "mixture":
            return P.mixture_std(out)
        return None

    def quantile(self, out: Tensor, alpha: float) -> Tensor:
        """(N,) the alpha-quantile of the utility (raw); distributional heads only."""
        o = self.objective
        if o == "mean_variance":
            return P.mean_variance_quantile(out, alpha)
        if o == "categorical":
            return P.categorical_quantile(out, alpha)
        if o == "mixture":
            return P.mixture_quantile(out, alpha)
        raise ValueError(f"reward.statistic=quantile needs a distributional reward model; this one is {o}")

    def check_statistic(self, statistic: str, alpha: float) -> None:
        if statistic not in STATISTICS:
            raise ValueError(f"reward.statistic={statistic!r} is not one of {', '.join(STATISTICS)}")
        if statistic == "quantile":
            if not self.distributional:
                raise ValueError(f"reward.statistic=quantile needs a distributional reward model "
                                 f"(mean_variance, categorical, mixture); this one is {self.objective}")
            if not 0 < alpha < 1:
                raise ValueError(f"reward.alpha must be in (0, 1), got {alpha}")

    def reward(self, out: Tensor, statistic: str = "mean", alpha: float = 0.5) -> tuple[Tensor, Tensor | None]:
        """(reward (N,), std (N,) or None), both float32 and normalised with norm_mean / norm_std."""
        self.check_statistic(statistic, alpha)
        value = self.mean(out) if statistic == "mean" else self.quantile(out, alpha)
        std = self.std(out)
        value = ((value.float() - self.norm_mean) / self.norm_std).detach()
        if std is not None:
            std = (std.float() / self.norm_std).detach()
        return value, std
