"""Advantage estimation and whitening: GAE (with a critic) and the critic-free estimators (GRPO,
Dr. GRPO, RLOO, REINFORCE++).

Shapes: ``(B, T)`` tensors cover response tokens and are right-padded; ``mask`` is 1 on valid tokens.
Group estimators take sequence scores ``(B,)`` with ``B = prompts x group_size`` and groups contiguous
(rows ``g*k .. g*k+k-1`` answer one prompt), and return ``(B,)`` sequence-level advantages.
"""

from __future__ import annotations

import torch
from torch import Tensor

from losses.common import masked_mean, masked_var

__all__ = ["gae", "whiten", "returns_to_go", "grpo_advantages", "rloo_advantages", "reinforce_pp_advantages"]


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalized Advantage Estimation over the valid tokens of each row.

    Source: Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
    Estimation" (arXiv 1506.02438), eq. 16, computed by its backward recursion:

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V_t                       (the lambda-return, the critic's target)

    where ``V_{t+1}`` and ``A_{t+1}`` belong to the next *valid* token, and are 0 after the last valid
    token of a row (the episode ends with the response).

    Masking: ``rewards`` and ``values`` are zeroed at masked positions up front, and a masked position
    passes the running ``V_{t+1}`` and ``A_{t+1}`` through unchanged. So values or rewards at masked
    positions change no output, right padding gives ``V = 0`` after the last valid token, a row whose
    mask is all zero gives all-zero outputs, and (beyond the right-padded contract) a hole inside a
    row is skipped, the token before it bootstrapping from the token after it. Both outputs are 0 at
    masked positions.

    Args:
        rewards: ``(B, T)`` r_t, per-token reward (e.g. KL penalty plus the score on the last token).
        values: ``(B, T)`` V(s_t) from the critic (old values, no gradient needed).
        mask: ``(B, T)`` 1 on valid response tokens.
        gamma: discount.
        lam: GAE lambda.

    Returns:
        ``(advantages, returns)``, each ``(B, T)``, 0 at masked positions.
    """
    if not (rewards.shape == values.shape == mask.shape) or rewards.dim() != 2:
        raise ValueError(
            f"gae needs (B, T) rewards, values and mask of one shape, got "
            f"{tuple(rewards.shape)}, {tuple(values.shape)}, {tuple(mask.shape)}"
        )
    mask = mask.bool()
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    rewards = torch.where(mask, rewards, zero)  # (B, T)
    values = torch.where(mask, values, zero)  # (B, T)

    num_steps = rewards.shape[1]
    next_value = torch.zeros_like(values[:, 0])  # (B,) V of the next valid token, 0 past the end
    next_adv = torch.zeros_like(values[:, 0])  # (B,) A of the next valid token, 0 past the end
    advantages = torch.zeros_like(values)  # (B, T)
    for t in reversed(range(num_steps)):
        valid = mask[:, t]  # (B,)
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        adv = delta + gamma * lam * next_adv  # (B,)
        advantages[:, t] = torch.where(valid, adv, zero)
        next_value = torch.where(valid, values[:, t], next_value)
        next_adv = torch.where(valid, adv, next_adv)
    returns = torch.where(mask, advantages + values, zero)  # (B, T)
    return advantages, returns


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise ``x`` with the mean and standard deviation of its valid elements.

    Formula, over all valid elements of the tensor (not per row):

        mu  = sum(m * x) / n
        var = sum(m * (x - mu)^2) / (n - 1)        (unbiased, as in verl and OpenRLHF)
        out = (x - mu) / sqrt(var + eps)           if shift_mean
        out = (x - mu) / sqrt(var + eps) + mu      otherwise (keeps the mean, as in TRL, verl, OpenRLHF)

    Source: the advantage normalisation of PPO implementations (OpenAI baselines ppo2; studied in
    Andrychowicz et al. 2021, "What Matters in On-Policy Reinforcement Learning?", arXiv 2006.05990).

    ``eps`` (default 1e-8, added to the variance) keeps a constant input finite: it whitens to 0.
    With one valid element the variance is 0 (see ``masked_var``). The output is 0 at masked
    positions, and values there do not affect the statistics. The statistics are those of this
    tensor: call it on the whole batch, not on a shard, to whiten over the batch.

    Args:
        x: ``(B, T)`` (any shape works), e.g. advantages.
        mask: same shape, 1 on valid elements.
        shift_mean: subtract the mean (True) or add it back after scaling (False).
        eps: added to the variance before the square root.

    Returns:
        tensor shaped like ``x``, 0 at masked positions.
    """
    mask = mask.bool()
    mean = masked_mean(x, mask)  # ()
    var = masked_var(x, mask, unbiased=True)  # ()
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask, out, torch.zeros((), dtype=out.dtype, device=out.device))


def _groups(scores: Tensor, group_size: int, method: str) -> Tensor:
    """``(B,)`` scores as ``(B / group_size, group_size)``, after checking the grouping."""
    if scores.dim() != 1:
        raise ValueError(f"{method} needs (B,) sequence scores, got shape {tuple(scores.shape)}")
    if group_size < 2:
        raise ValueError(f"{method} needs group_size >= 2 (responses per prompt, for the group baseline), got {group_size}")
    if scores.shape[0] % group_size:
        raise ValueError(f"{method}: {scores.shape[0]} scores do not split into groups of {group_size}")
    return scores.view(-1, group_size)


def grpo_advantages(scores: Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6) -> Tensor:
    """Group-relative advantages: each response's score against the mean of its prompt's group.

    Source: Shao et al. 2024, "DeepSeekMath" (arXiv 2402.03300), Sec. 4.1.2 (outcome supervision):

        A_i = (r_i - mean(r_1..r_k)) / (std(r_1..r_k) + eps)       (GRPO; std unbiased, k - 1)
        A_i =  r_i - mean(r_1..r_k)                                (scale_by_std=False: Dr. GRPO)

    Dr. GRPO: Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective" (arXiv
    2503.20783), Sec. 3.1, which drops the std division (it up-weights prompts that are nearly always
    or never solved). A group whose scores are all equal gets advantages 0 either way.

    Args:
        scores: ``(B,)`` one score per response, groups of ``group_size`` contiguous.
        group_size: responses per prompt, >= 2.
        scale_by_std: divide by the group's standard deviation (GRPO) or not (Dr. GRPO).
        eps: added to the standard deviation.

    Returns:
        ``(B,)`` advantages.
    """
    g = _groups(scores, group_size, "grpo_advantages")  # (G, k)
    adv = g - g.mean(dim=1, keepdim=True)
    if scale_by_std:
        adv = adv / (g.std(dim=1, keepdim=True, correction=1) + eps)
    return adv.reshape(-1)


def rloo_advantages(scores: Tensor, group_size: int) -> Tensor:
    """REINFORCE leave-one-out: each response's score against the mean of the OTHER responses to its prompt.

    Source: Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning
    from Human Feedback in LLMs" (arXiv 2402.14740), eq. 6, after Kool et al. 2019 ("Buy 4 REINFORCE
    samples, get a baseline for free!"):

        A_i = r_i - 1/(k-1) * sum_{j != i} r_j  =  k/(k-1) * (r_i - mean(r_1..r_k))

    Args:
        scores: ``(B,)`` one score per response, groups of ``group_size`` contiguous.
        group_size: responses per prompt, >= 2.

    Returns:
        ``(B,)`` advantages.
    """
    g = _groups(scores, group_size, "rloo_advantages")  # (G, k)
    others = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)  # (G, k) mean of the other responses
    return (g - others).reshape(-1)


def reinforce_pp_advantages(token_rewards: Tensor, action_mask: Tensor, gamma: float = 1.0) -> Tensor:
    """REINFORCE++: per-token returns-to-go of the (KL-shaped) token rewards, whitened over the batch.

    Source: Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models"
    (arXiv 2501.03262), Sec. 3:

        G_t = sum_{s >= t} gamma^(s - t) * r_s         over the valid tokens of the row
        A_t = (G_t - mean(G)) / std(G)                 mean and std over every valid token of the batch

    The returns-to-go are `returns_to_go` (`gae` with V = 0 and lambda = 1); the normalisation is `whiten`.
    Call it on the whole batch, not a shard, so that the statistics are the batch's.

    Args:
        token_rewards: ``(B, T)`` per-token rewards (KL penalty on every token, the score on the last).
        action_mask: ``(B, T)`` 1 on valid response tokens.
        gamma: discount.

    Returns:
        ``(B, T)`` advantages, 0 at masked positions.
    """
    return whiten(returns_to_go(token_rewards, action_mask, gamma), action_mask)


def returns_to_go(token_rewards: Tensor, action_mask: Tensor, gamma: float = 1.0) -> Tensor:
    """Discounted returns-to-go ``G_t = sum_{s >= t} gamma^(s - t) * r_s`` over the valid tokens of each row.

    The REINFORCE return (Williams 1992): `gae` with ``V = 0`` and ``lambda = 1``. The critic-free
    estimators use it to spread a sequence-level advantage placed on the last token, plus the per-token
    KL penalty when the KL is in the reward, over the response: token t then carries the advantage of
    the sequence and the KL penalty of the tokens from t on.

    Args:
        token_rewards: ``(B, T)`` per-token rewards.
        action_mask: ``(B, T)`` 1 on valid response tokens.
        gamma: discount.

    Returns:
        ``(B, T)`` returns, 0 at masked positions.
    """
    returns, _ = gae(token_rewards, torch.zeros_like(token_rewards), action_mask, gamma=gamma, lam=1.0)
    return returns
