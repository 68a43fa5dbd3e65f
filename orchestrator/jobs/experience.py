"""Experience making: a scored rollout -> per-token rewards with a KL penalty, advantages (GAE and
whitening, or a critic-free estimator: GRPO, Dr. GRPO, RLOO, REINFORCE++) -> `Experience`; and the
minibatch plan of the updates (`schedule`).

Every number comes from `losses/` (`losses.rewards.shape_rewards`, `losses.advantages`, the KL
controller and running moments whose state PPO carries between steps); this module only wires them
to the typed batches and names the metrics.
"""

from __future__ import annotations

import torch

from actors.types import Experience, LogProbs, Rollout, Scores, Values
from losses import masked_mean, pearson
from losses.advantages import gae, grpo_advantages, reinforce_pp_advantages, returns_to_go, rloo_advantages, whiten
from losses.common import RunningMoments, explained_variance
from losses.kl import KLController, sequence_kl
from losses.ppo import normalizer
from losses.rewards import on_last_token, shape_rewards

__all__ = ["make_experience", "reward_metrics", "schedule", "nonfinite_inputs"]


def nonfinite_inputs(rollout: Rollout, scores: Scores, ref_logprobs: LogProbs, old_logprobs: LogProbs, values: Values | None,
                     reward: str) -> str | None:
    """None when the scores and the per-token views of a rollout are finite (on response tokens); else one
    line naming the first non-finite source (`reward` describes the reward), how many responses it hit,
    and the first such prompt and response."""
    mask = rollout.action_mask.bool()
    checks = [(f"the reward ({reward})", ~torch.isfinite(scores.reward))]
    if scores.std is not None:
        checks.append((f"the reward's std ({reward})", ~torch.isfinite(scores.std)))
    views = [("the reference log-probs", ref_logprobs.logprobs), ("the policy's log-probs", old_logprobs.logprobs)]
    if values is not None:
        views.append(("the critic's values", values.values))
    if rollout.logprobs is not None and rollout.logprobs is not old_logprobs.logprobs:
        views.append(("the sampler's log-probs", rollout.logprobs))
    for name, view in views:
        checks.append((name, (~torch.isfinite(view) & mask).any(-1)))
    for name, bad in checks:
        if bad.any():
            i = int(bad.nonzero()[0, 0])
            return (f"{name} is not finite for {int(bad.sum())} of {len(bad)} responses; first prompt "
                    f"{rollout.prompts[i][:80]!r}, response {rollout.responses[i][:80]!r}")
    return None


def make_experience(rollout: Rollout, scores: Scores, ref_logprobs: LogProbs, old_logprobs: LogProbs, values: Values | None,
                    algo, kl_ctl: KLController, moments: RunningMoments,
                    std_threshold: float = 1.0, length_penalty: float = 0.0) -> tuple[Experience, dict]:
    """Rollout + scores + the per-token views -> an `Experience` and its metrics.

    algo: the `PPOAlgoConfig` slice; `algo.advantage_estimator` picks the advantages:
      gae           GAE on the KL-shaped token rewards with the critic's `values`, whitened (whiten_advantages);
      grpo, rloo    the group baseline (`losses.advantages`) on the shaped sequence scores (with an environment,
                    plus each episode's return), placed on the last token, plus the per-token KL penalty, as returns-to-go: A_t = A_seq - beta * sum_{s>=t} KL_s;
      reinforce_pp  returns-to-go of the KL-shaped token rewards, whitened over the batch.
    `values` is None for the critic-free estimators. With `algo.kl_in_loss` the reward carries no KL
    (its coefficient is 0) and the experience carries the reference log-probs for the loss.
    kl_ctl is updated with this batch's KL (after the rewards used the coefficient before it), moments
    with its scores (when algo.reward_norm).
    std_threshold: `reward.std_threshold`, for the reward diagnostics (`reward_metrics`).
    length_penalty: `reward.length_penalty`, per response token (`losses.rewards.shape_rewards`).
    A multi-turn rollout (`rollout.turn_rewards` set) adds each turn's reward on its turn's last token; its
    environment tokens are outside `rollout.action_mask`, so no KL, advantage or GAE step falls on them.
    """
    mask = rollout.action_mask
    estimator = algo.advantage_estimator
    kl_coef = 0.0 if algo.kl_in_loss else kl_ctl.coef
    shaped = shape_rewards(
        scores.reward, old_logprobs.logprobs, ref_logprobs.logprobs, mask, rollout.ended_with_eos,
        kl_coef=kl_coef, kl_estimator=algo.kl_estimator, no_eos_penalty=algo.no_eos_penalty,
        moments=moments if algo.reward_norm else None, reward_clip=algo.reward_clip, length_penalty=length_penalty,
        turn_rewards=rollout.turn_rewards,
    )
    returns = None
    if estimator == "gae":
        advantages, returns = gae(shaped.rewards, values.values, mask, gamma=algo.gamma, lam=algo.lam)
        if algo.whiten_advantages:
            advantages = whiten(advantages, mask, shift_mean=True)
    elif estimator in ("grpo", "rloo"):
        k = algo.samples_per_prompt
        seq = (grpo_advantages(shaped.scores, k, scale_by_std=algo.grpo_scale_by_std) if estimator == "grpo"
               else rloo_advantages(shaped.scores, k))
        advantages = returns_to_go(-kl_coef * shaped.kl + on_last_token(seq, mask), mask, gamma=algo.gamma)
    elif estimator == "reinforce_pp":
        advantages = reinforce_pp_advantages(shaped.rewards, mask, gamma=algo.gamma)
    else:
        raise ValueError(f"unknown advantage estimator {estimator!r}")
    kl = sequence_kl(shaped.kl, mask).item()
    lengths = mask.sum(-1).float()
    metrics = {
        **reward_metrics(scores, lengths, std_threshold),
        **group_metrics(shaped.scores, algo.samples_per_prompt),
        "reward/shaped": shaped.scores.mean().item(),
        "kl/mean": kl,
        "kl/coef": algo.kl_loss_coef if algo.kl_in_loss else kl_ctl.coef,
        "length/mean": lengths.mean().item(),
        "length/eos_rate": rollout.ended_with_eos.float().mean().item(),
        # the widths the models compute on (padding included), for the cost model (`orchestrator.tools.costmodel`),
        # and the mean real prompt length, for `rlhf bench`'s model FLOPs
        "length/prompt_padded": float(rollout.prompt_len),
        "length/response_padded": float(mask.shape[1]),
        "length/prompt_mean": float(rollout.attention_mask[:, :rollout.prompt_len].sum(-1).float().mean()),
        "policy/advantages_mean": masked_mean(advantages, mask).item(),
    }
    if values is not None:
        metrics.update({
            "critic/values_mean": masked_mean(values.values, mask).item(),
            "critic/returns_mean": masked_mean(returns, mask).item(),
            "critic/explained_variance": explained_variance(values.values, returns, mask).item(),
        })
    kl_ctl.update(kl, rollout.num_rows)
    exp = Experience(
        sequences=rollout.sequences,
        attention_mask=rollout.attention_mask,
        action_mask=mask,
        old_logprobs=old_logprobs.logprobs,
        advantages=advantages,
        mb_tokens=torch.zeros(rollout.num_rows),
        old_values=None if values is None else values.values,
        returns=returns,
        ref_logprobs=ref_logprobs.logprobs if algo.kl_in_loss else None,
    )
    return exp, metrics


def group_metrics(scores: torch.Tensor, group_size: int) -> dict:
    """With several responses per prompt (`group_size` > 1, groups contiguous): reward/group_std, the mean
    over groups of the (unbiased) std of their shaped scores, and grpo/zero_std_groups, the number of
    groups whose scores are all equal (std < 1e-6: their GRPO/RLOO advantages are 0, so they teach
    nothing but the KL), with grpo/zero_std_share, that number over the groups. {} for one response per prompt."""
    if group_size < 2:
        return {}
    std = scores.double().view(-1, group_size).std(dim=1, correction=1)  # (G,)
    zero = (std < 1e-6).sum().item()
    return {"reward/group_std": std.mean().item(), "grpo/zero_std_groups": float(zero),
            "grpo/zero_std_share": zero / std.numel()}


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


def schedule(exp, *, epochs: int, minibatch_size: int, replicas: int, generator: torch.Generator,
             aggregation: str = "token_mean"):
    """Order the rows for `replicas` data-parallel trainers and stamp each with its minibatch's loss normaliser.

    For each epoch the rows are shuffled and cut into minibatches of `minibatch_size`; each minibatch
    is cut into `replicas` equal shards. Replica r receives (as one contiguous block, so that
    `Batch.split(replicas)` hands it over) its shard of minibatch 0, then of minibatch 1, ... Every row
    carries `mb_tokens`, the N_global of its whole minibatch across replicas for the loss `aggregation`
    (`losses.ppo.normalizer`: the valid-token count for token_mean), which makes the update
    independent of how the minibatch is cut.
    """
    n = exp.num_rows
    per_replica = minibatch_size // replicas
    blocks: list[list] = [[] for _ in range(replicas)]
    mb_tokens = torch.zeros(0)
    order = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n, minibatch_size):
            rows = perm[start : start + minibatch_size]
            total = normalizer(exp.action_mask[rows], aggregation)
            for r in range(replicas):
                blocks[r].append((rows[r * per_replica : (r + 1) * per_replica], total))
    for r in range(replicas):
        for rows, total in blocks[r]:
            order.append(rows)
            mb_tokens = torch.cat([mb_tokens, total.repeat(len(rows))])
    planned = exp.select(torch.cat(order))
    planned.mb_tokens = mb_tokens
    return planned
