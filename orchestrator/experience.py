"""Experience making: a scored rollout -> per-token rewards with a KL penalty, GAE, whitening -> `Experience`;
and the minibatch plan of the updates (`schedule`).

Every number comes from `losses/` (`losses.rewards.shape_rewards`, `losses.advantages`, the KL
controller and running moments whose state PPO carries between steps); this module only wires them
to the typed batches and names the metrics.
"""

from __future__ import annotations

import torch

from actors.types import Experience, LogProbs, Rollout, Scores, Values
from losses import masked_mean, pearson
from losses.advantages import gae, whiten
from losses.common import RunningMoments, explained_variance
from losses.kl import KLController, sequence_kl
from losses.rewards import shape_rewards

__all__ = ["make_experience", "reward_metrics", "schedule", "nonfinite_inputs"]


def nonfinite_inputs(rollout: Rollout, scores: Scores, ref_logprobs: LogProbs, old_logprobs: LogProbs, values: Values,
                     reward: str) -> str | None:
    """None when the scores and the per-token views of a rollout are finite (on response tokens); else one
    line naming the first non-finite source (`reward` describes the reward), how many responses it hit,
    and the first such prompt and response."""
    mask = rollout.action_mask.bool()
    checks = [(f"the reward ({reward})", ~torch.isfinite(scores.reward))]
    if scores.std is not None:
        checks.append((f"the reward's std ({reward})", ~torch.isfinite(scores.std)))
    for name, view in (("the reference log-probs", ref_logprobs.logprobs), ("the policy's log-probs", old_logprobs.logprobs),
                       ("the critic's values", values.values)):
        checks.append((name, (~torch.isfinite(view) & mask).any(-1)))
    for name, bad in checks:
        if bad.any():
            i = int(bad.nonzero()[0, 0])
            return (f"{name} is not finite for {int(bad.sum())} of {len(bad)} responses; first prompt "
                    f"{rollout.prompts[i][:80]!r}, response {rollout.responses[i][:80]!r}")
    return None


def make_experience(rollout: Rollout, scores: Scores, ref_logprobs: LogProbs, old_logprobs: LogProbs, values: Values,
                    algo, kl_ctl: KLController, moments: RunningMoments,
                    std_threshold: float = 1.0) -> tuple[Experience, dict]:
    """Rollout + scores + the three per-token views -> an `Experience` and its metrics.

    algo: the `PPOAlgoConfig` slice. kl_ctl is updated with this batch's KL (after the rewards used
    the coefficient before it), moments with its scores (when algo.reward_norm).
    std_threshold: `reward.std_threshold`, for the reward diagnostics (`reward_metrics`).
    """
    mask = rollout.action_mask
    shaped = shape_rewards(
        scores.reward, old_logprobs.logprobs, ref_logprobs.logprobs, mask, rollout.ended_with_eos,
        kl_coef=kl_ctl.coef, kl_estimator=algo.kl_estimator, no_eos_penalty=algo.no_eos_penalty,
        moments=moments if algo.reward_norm else None, reward_clip=algo.reward_clip,
    )
    advantages, returns = gae(shaped.rewards, values.values, mask, gamma=algo.gamma, lam=algo.lam)
    if algo.whiten_advantages:
        advantages = whiten(advantages, mask, shift_mean=True)
    kl = sequence_kl(shaped.kl, mask).item()
    lengths = mask.sum(-1).float()
    metrics = {
        **reward_metrics(scores, lengths, std_threshold),
        "reward/shaped": shaped.scores.mean().item(),
        "kl/mean": kl,
        "kl/coef": kl_ctl.coef,
        "length/mean": lengths.mean().item(),
        "length/eos_rate": rollout.ended_with_eos.float().mean().item(),
        "critic/values_mean": masked_mean(values.values, mask).item(),
        "critic/returns_mean": masked_mean(returns, mask).item(),
        "critic/explained_variance": explained_variance(values.values, returns, mask).item(),
        "policy/advantages_mean": masked_mean(advantages, mask).item(),
    }
    kl_ctl.update(kl, rollout.num_rows)
    exp = Experience(
        sequences=rollout.sequences,
        attention_mask=rollout.attention_mask,
        action_mask=mask,
        old_logprobs=old_logprobs.logprobs,
        old_values=values.values,
        advantages=advantages,
        returns=returns,
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
        "reward/length_corr": float(pearson(reward.double(), lengths.double())) if reward.numel() > 1 else 0.0,
    }
    if scores.std is not None:
        metrics["reward/pred_std"] = scores.std.mean().item()
        metrics["reward/std_above_threshold"] = (scores.std > std_threshold).float().mean().item()
    if scores.components is not None:
        for k, mean in enumerate(scores.components.mean(0).tolist()):
            metrics[f"reward/component_{k}"] = mean
    return metrics


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
