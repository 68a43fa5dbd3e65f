"""PPO's per-token reward: the shaped sequence score on the last response token, a KL penalty on every token.

Shapes: ``(B, T)`` tensors cover response tokens and are right-padded; ``mask`` is 1 on valid tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from losses.common import RunningMoments
from losses.kl import kl_penalty

__all__ = ["ShapedRewards", "shape_rewards", "last_index", "on_last_token"]


@dataclass
class ShapedRewards:
    rewards: Tensor  # (B, T) per-token reward: -beta * KL_t, plus the shaped score on the last valid token
    kl: Tensor  # (B, T) per-token KL estimate (0 off the mask)
    scores: Tensor  # (B,) sequence score after the no-EOS penalty, normalisation and clipping


def last_index(mask: Tensor) -> Tensor:
    """(B,) index of the last 1 in each row of a right-padded (B, T) mask (0 for an empty row)."""
    t = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return (t * mask.long()).max(dim=1).values


def on_last_token(values: Tensor, mask: Tensor) -> Tensor:
    """``(B, T)``: ``values[b]`` on the last valid token of row b, 0 elsewhere (and on a row without tokens)."""
    valid = mask.bool()
    out = torch.zeros(mask.shape, dtype=values.dtype, device=values.device)
    rows = torch.arange(mask.shape[0], device=mask.device)
    has_tokens = valid.any(-1)
    out[rows[has_tokens], last_index(mask)[has_tokens]] = values[has_tokens]
    return out


def shape_rewards(
    scores: Tensor,
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    ended_with_eos: Tensor,
    kl_coef: float,
    kl_estimator: str = "k1",
    no_eos_penalty: float = 0.0,
    moments: RunningMoments | None = None,
    reward_clip: float = 0.0,
    length_penalty: float = 0.0,
    turn_rewards: Tensor | None = None,
) -> ShapedRewards:
    """Per-token rewards of Stiennon et al. 2020 ("Learning to summarize from human feedback", eq. 1)
    and InstructGPT: ``r_t = -beta KL_t`` on every response token, plus the sequence score on the last one.

    The score is shaped first, in this order: ``no_eos_penalty`` is subtracted from the scores of
    responses that did not end with EOS, and ``length_penalty`` times the response's token count from
    every score (the length-penalty baseline of ODIN, arXiv 2402.07319); with `moments`, the running statistics are updated with this
    batch and the scores standardised, ``(s - mean) / (std + 1e-8)``; with ``reward_clip = c > 0`` they
    are clipped to ``[-c, c]``. An empty response (no valid token) gets no score.

    Args:
        scores: ``(B,)`` raw sequence rewards.
        logprobs: ``(B, T)`` log pi_old(a_t | s_t).
        ref_logprobs: ``(B, T)`` log pi_ref(a_t | s_t).
        mask: ``(B, T)`` 1 on response tokens.
        ended_with_eos: ``(B,)`` bool.
        kl_coef: beta.
        kl_estimator: "k1", "k2" or "k3" (`losses.kl.kl_penalty`).
        turn_rewards: ``(B, T)`` or None: a multi-turn episode's per-turn rewards, each on the last token of its
            turn, added to the token rewards as they are (no penalty, standardisation or clip: those shape the
            sequence score); the returned ``scores`` (the sequence-level signal of the critic-free estimators)
            then are the shaped score plus the episode's summed turn rewards (its return with gamma 1).
    """
    scores = scores.to(torch.float32).clone()
    if no_eos_penalty:
        scores = scores - no_eos_penalty * (~ended_with_eos.bool()).to(scores.dtype)
    if length_penalty:
        scores = scores - length_penalty * mask.sum(-1).to(scores.dtype)
    if moments is not None:
        moments.update(scores)
        scores = (scores - moments.mean) / (moments.std + 1e-8)
    if reward_clip > 0:
        scores = scores.clamp(-reward_clip, reward_clip)
    valid = mask.bool()
    kl = torch.where(valid, kl_penalty(logprobs, ref_logprobs, estimator=kl_estimator), 0.0)
    rewards = -kl_coef * kl + on_last_token(scores.to(kl.dtype), mask)
    if turn_rewards is not None:
        turn_rewards = torch.where(valid, turn_rewards.to(kl.dtype), 0.0)
        rewards = rewards + turn_rewards
        scores = scores + turn_rewards.sum(-1).to(scores.dtype)
    return ShapedRewards(rewards=torch.where(valid, rewards, 0.0), kl=kl, scores=scores)
