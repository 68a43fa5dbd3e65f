"""Advantage estimation and whitening.

Shapes: ``(B, T)`` tensors cover response tokens and are right-padded; ``mask`` is 1 on valid tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from losses.common import masked_mean, masked_var

__all__ = ["gae", "whiten"]


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
