"""The gap between the log-probs an inference engine reported for the tokens it sampled and the ones the
trainer computes for the same tokens (the training-inference mismatch).

F. Yao, L. Liu, D. Zhang, C. Dong, J. Shang, J. Gao, "Your Efficient RL Framework Secretly Brings You
Off-Policy RL Training" (2025): an engine (vLLM, SGLang) and a trainer compute different probabilities for
the same weights and tokens (other kernels, other precision, another order of summation), so a rollout is
sampled from pi_engine while the PPO update assumes pi_old. They measure the gap (`logprob_mismatch`) and
correct for it with truncated importance sampling (`truncated_is_weights`); the same correction covers a
rollout sampled from weights some updates behind (ppo.max_staleness, AReaL's decoupled PPO).

Shapes: ``(B, T)`` tensors over response tokens, right-padded; ``mask`` is 1 on action tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from losses.kl import kl_penalty

__all__ = ["logprob_mismatch", "truncated_is_weights"]


def logprob_mismatch(engine_logprobs: Tensor, trainer_logprobs: Tensor, mask: Tensor) -> dict[str, float]:
    """Over the action tokens: the mean and max of |log pi_engine(a) - log pi_trainer(a)|, and the k3
    estimate of KL(pi_engine || pi_trainer) per token (`losses.kl.kl_penalty`, k3: the tokens were sampled
    from the engine, so it is the unbiased, non-negative estimator with the engine as the sampling policy).
    All zero when the two agree; computed in float64."""
    m = mask.bool()
    if not m.any():
        return {"mismatch/abs_mean": 0.0, "mismatch/abs_max": 0.0, "mismatch/kl": 0.0}
    engine, trainer = engine_logprobs.double()[m], trainer_logprobs.double()[m]
    gap = (engine - trainer).abs()
    return {"mismatch/abs_mean": float(gap.mean()), "mismatch/abs_max": float(gap.max()),
            "mismatch/kl": float(kl_penalty(engine, trainer, "k3").mean())}


def truncated_is_weights(trainer_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor, cap: float) -> tuple[Tensor, dict[str, float]]:
    """Per-token truncated importance weights of the policy gradient (Yao et al. 2025, token-level TIS):

        w_t = min(pi_old(a_t | s_t) / pi_sampler(a_t | s_t), cap) = min(exp(log pi_old - log pi_sampler), cap)

    pi_old the trainer's recomputed log-probs (the PPO ratio's denominator), pi_sampler the ones the tokens
    were sampled with. The PPO-clip term of token t is multiplied by w_t (`losses.ppo.policy_loss`,
    `is_weights`), so the update follows pi_old's gradient estimate although the tokens came from
    pi_sampler; the cap bounds the variance a token the sampler found much less likely would add.

    Returns the ``(B, T)`` weights (no gradient; 0 on masked positions) and metrics over the action tokens:
    tis/weight_mean, tis/weight_max (before the cap) and tis/capped_share (tokens whose weight was capped)."""
    if cap < 1:
        raise ValueError(f"the TIS cap must be >= 1, got {cap}")
    m = mask.bool()
    raw = torch.exp(trainer_logprobs.detach().double() - sampler_logprobs.detach().double())
    raw = torch.where(m, raw, torch.zeros((), dtype=raw.dtype))
    weights = raw.clamp(max=cap).to(trainer_logprobs.dtype)
    if not m.any():
        return weights, {"tis/weight_mean": 0.0, "tis/weight_max": 0.0, "tis/capped_share": 0.0}
    return weights, {"tis/weight_mean": float(weights.double()[m].mean()), "tis/weight_max": float(raw[m].max()),
                     "tis/capped_share": float((raw[m] > cap).double().mean())}
