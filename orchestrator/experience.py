"""Experience making: per-token rewards with a KL penalty, GAE, advantage whitening.

Everything numeric comes from `losses/`; this module holds the small amount of state PPO carries
between steps (the KL coefficient, running reward statistics), each with a `state_dict` so that a
resumed run continues exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from losses import masked_mean
from losses.advantages import gae, whiten
from losses.kl import kl_penalty


class KLController:
    """The KL coefficient beta of the reward r_t = -beta * KL_t (+ score on the last token).

    Fixed when `target` is 0. Otherwise the adaptive controller of Ziegler et al. 2019 ("Fine-Tuning
    Language Models from Human Preferences", section 2.2): with e = clip(KL / target - 1, -0.2, 0.2),
    beta <- beta * (1 + e * n / horizon) after each batch of n samples.
    """

    def __init__(self, coef: float, target: float = 0.0, horizon: int = 10000):
        self.coef, self.target, self.horizon = float(coef), float(target), int(horizon)

    def update(self, kl: float, n_samples: int) -> None:
        if self.target <= 0:
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.coef *= 1.0 + error * n_samples / self.horizon

    def state_dict(self) -> dict:
        return {"coef": self.coef}

    def load_state_dict(self, state: dict) -> None:
        self.coef = float(state["coef"])


class RunningMoments:
    """Running mean and std of sequence rewards (Chan et al. parallel update), for reward_norm."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double().flatten()
        n = x.numel()
        if n == 0:
            return
        batch_mean = x.mean().item()
        batch_m2 = ((x - batch_mean) ** 2).sum().item()
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta**2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 1.0

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])


@dataclass
class ShapedRewards:
    rewards: torch.Tensor  # (B, T) per-token reward: -beta * KL_t, plus the score on the last valid token
    kl: torch.Tensor  # (B, T) per-token KL estimate (0 off the mask)
    scores: torch.Tensor  # (B,) sequence reward after the EOS penalty, normalisation and clipping


def shape_rewards(
    scores: torch.Tensor,  # (B,) raw sequence reward
    logprobs: torch.Tensor,  # (B, T) log pi_old(a_t | s_t)
    ref_logprobs: torch.Tensor,  # (B, T) log pi_ref(a_t | s_t)
    action_mask: torch.Tensor,  # (B, T) 1 on response tokens
    ended_with_eos: torch.Tensor,  # (B,) bool
    kl_coef: float,
    kl_estimator: str = "k1",
    no_eos_penalty: float = 0.0,
    moments: RunningMoments | None = None,
    reward_clip: float = 0.0,
) -> ShapedRewards:
    """Per-token rewards as in Stiennon et al. 2020 (eq. 1) and InstructGPT: the KL penalty on every
    response token and the (shaped) sequence score added on the last valid token.

    Order of the score shaping: the no-EOS penalty is subtracted from the raw score, then the running
    normaliser (updated with this batch first) standardises it, then it is clipped to [-c, c].
    """
    scores = scores.to(torch.float32).clone()
    if no_eos_penalty:
        scores = scores - no_eos_penalty * (~ended_with_eos.bool()).to(scores.dtype)
    if moments is not None:
        moments.update(scores)
        scores = (scores - moments.mean) / (moments.std + 1e-8)
    if reward_clip > 0:
        scores = scores.clamp(-reward_clip, reward_clip)
    valid = action_mask.bool()
    kl = torch.where(valid, kl_penalty(logprobs, ref_logprobs, estimator=kl_estimator), 0.0)
    rewards = -kl_coef * kl
    last = last_index(action_mask)  # (B,)
    rows = torch.arange(rewards.shape[0])
    has_tokens = action_mask.sum(-1) > 0
    rewards[rows[has_tokens], last[has_tokens]] += scores[has_tokens].to(rewards.dtype)
    return ShapedRewards(rewards=torch.where(valid, rewards, 0.0), kl=kl, scores=scores)


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of a right-padded (B, T) mask (0 for an empty row)."""
    t = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return (t * mask.long()).max(dim=1).values


@dataclass
class Advantages:
    advantages: torch.Tensor  # (B, T) GAE advantages, whitened over the batch when asked
    returns: torch.Tensor  # (B, T) A + V before whitening: the critic's regression target


def compute_advantages(
    rewards: torch.Tensor,  # (B, T)
    values: torch.Tensor,  # (B, T) V_old(s_t)
    action_mask: torch.Tensor,  # (B, T)
    gamma: float,
    lam: float,
    whiten_advantages: bool,
) -> Advantages:
    """GAE (Schulman et al. 2016, eq. 16) and optional whitening over all valid tokens of the batch."""
    advantages, returns = gae(rewards, values, action_mask, gamma=gamma, lam=lam)
    if whiten_advantages:
        advantages = whiten(advantages, action_mask, shift_mean=True)
    return Advantages(advantages=advantages, returns=returns)


def kl_metric(kl: torch.Tensor, action_mask: torch.Tensor) -> float:
    """Mean per-sequence KL (sum over tokens, mean over sequences): what the adaptive controller tracks."""
    per_seq = (kl * action_mask).sum(-1)
    return per_seq.mean().item()


__all__ = [
    "KLController",
    "RunningMoments",
    "ShapedRewards",
    "shape_rewards",
    "last_index",
    "Advantages",
    "compute_advantages",
    "kl_metric",
    "make_experience",
    "reward_metrics",
    "schedule",
]


def make_experience(rollout, scores, ref_logprobs, old_logprobs, values, algo, kl_ctl: KLController, moments,
                    std_threshold: float = 1.0):
    """Rollout + scores + the three per-token views -> an `Experience` and its metrics.

    algo: the `PPOAlgoConfig` slice. Every number is computed by `losses/` through the helpers above.
    std_threshold: `reward.std_threshold`, for the reward diagnostics (`reward_metrics`).
    """
    from actors.types import Experience

    mask = rollout.action_mask
    shaped = shape_rewards(
        scores.reward, old_logprobs.values, ref_logprobs.values, mask, rollout.ended_with_eos,
        kl_coef=kl_ctl.coef, kl_estimator=algo.kl_estimator, no_eos_penalty=algo.no_eos_penalty,
        moments=moments if algo.reward_norm else None, reward_clip=algo.reward_clip,
    )
    adv = compute_advantages(shaped.rewards, values.values, mask, algo.gamma, algo.lam, algo.whiten_advantages)
    kl = kl_metric(shaped.kl, mask)
    lengths = mask.sum(-1).float()
    metrics = {
        **reward_metrics(scores, lengths, std_threshold),
        "reward/shaped": shaped.scores.mean().item(),
        "kl/mean": kl,
        "kl/coef": kl_ctl.coef,
        "length/mean": lengths.mean().item(),
        "length/eos_rate": rollout.ended_with_eos.float().mean().item(),
        "critic/values_mean": masked_mean(values.values, mask).item(),
        "critic/returns_mean": masked_mean(adv.returns, mask).item(),
        "critic/explained_variance": _explained_variance(values.values, adv.returns, mask),
        "policy/advantages_mean": masked_mean(adv.advantages, mask).item(),
    }
    kl_ctl.update(kl, rollout.num_rows)
    exp = Experience(
        sequences=rollout.sequences,
        attention_mask=rollout.attention_mask,
        action_mask=mask,
        old_logprobs=old_logprobs.values,
        old_values=values.values,
        advantages=adv.advantages,
        returns=adv.returns,
        mb_tokens=torch.zeros(rollout.num_rows),
    )
    return exp, metrics


def reward_metrics(scores, lengths: torch.Tensor, std_threshold: float) -> dict:
    """The per-step reward diagnostics, so that reward hacking and hidden disagreement are seen, not guessed.

    reward/score, reward/score_std: mean and (unbiased) std of the sequence rewards over the batch;
    reward/length_corr: Pearson correlation of reward with response length in tokens;
    distributional rewards (scores.std set): reward/pred_std, the mean predicted std, and
    reward/std_above_threshold, the share of responses whose predicted std > `std_threshold`;
    weighted sums (scores.components set): reward/component_<k>, the mean unweighted reward of term k.
    """
    reward = scores.reward
    metrics = {
        "reward/score": reward.mean().item(),
        "reward/score_std": reward.std().item() if reward.numel() > 1 else 0.0,
        "reward/length_corr": _pearson(reward, lengths),
    }
    if scores.std is not None:
        metrics["reward/pred_std"] = scores.std.mean().item()
        metrics["reward/std_above_threshold"] = (scores.std > std_threshold).float().mean().item()
    if scores.components is not None:
        for k, mean in enumerate(scores.components.mean(0).tolist()):
            metrics[f"reward/component_{k}"] = mean
    return metrics


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    from losses import pearson

    return float(pearson(x.double(), y.double())) if x.numel() > 1 else 0.0


def _explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over valid tokens (CleanRL's diagnostic of the critic)."""
    from losses import masked_var

    var_r = masked_var(returns, mask).item()
    return float("nan") if var_r == 0 else 1.0 - masked_var(returns - values, mask).item() / var_r


def schedule(exp, *, epochs: int, minibatch_size: int, replicas: int, generator: torch.Generator):
    """Order the rows for `replicas` data-parallel trainers and stamp each with its minibatch's token count.

    For each epoch the rows are shuffled and cut into minibatches of `minibatch_size`; each minibatch
    is cut into `replicas` equal shards. Replica r receives (as one contiguous block, so that
    `Batch.split(replicas)` hands it over) its shard of minibatch 0, then of minibatch 1, ... Every row
    carries `mb_tokens`, the valid-token count of its whole minibatch across replicas: the N_global of
    the loss, which makes the update independent of how the minibatch is cut.
    """
    n = exp.num_rows
    per_replica = minibatch_size // replicas
    blocks: list[list] = [[] for _ in range(replicas)]
    tokens = exp.action_mask.sum(-1).float()
    mb_tokens = torch.zeros(0)
    order = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n, minibatch_size):
            rows = perm[start : start + minibatch_size]
            total = tokens[rows].sum()
            for r in range(replicas):
                blocks[r].append((rows[r * per_replica : (r + 1) * per_replica], total))
    for r in range(replicas):
        for rows, total in blocks[r]:
            order.append(rows)
            mb_tokens = torch.cat([mb_tokens, total.repeat(len(rows))])
    planned = exp.select(torch.cat(order))
    planned.mb_tokens = mb_tokens
    return planned
