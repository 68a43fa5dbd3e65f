"""The gap between the log-probs an inference engine reported for the tokens it sampled and the ones the
trainer computes for the same tokens (the training-inference mismatch).

F. Yao, L. Liu, D. Zhang, C. Dong, J. Shang, J. Gao, "Your Efficient RL Framework Secretly Brings You
Off-Policy RL Training" (2025): an engine (vLLM, SGLang) and a trainer compute different probabilities for
the same weights and tokens (other kernels, other precision, another order of summation), so a rollout is
sampled from pi_engine while the PPO update assumes pi_old. They measure the gap and correct for it.

Shapes: ``(B, T)`` tensors over response tokens, right-padded; ``mask`` is 1 on action tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from losses.kl import kl_penalty

__all__ = ["logprob_mismatch"]


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
