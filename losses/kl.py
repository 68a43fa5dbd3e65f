"""Per-token KL estimators between the policy and a reference policy, and the KL coefficient's controller.

Shapes: ``(B, T)`` tensors cover response tokens and are right-padded.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["kl_penalty", "KL_ESTIMATORS", "sequence_kl", "KLController"]

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_penalty(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    estimator: str = "k1",
    log_ratio_clamp: float | None = None,
) -> Tensor:
    """Per-token estimate of ``KL(pi || pi_ref)`` from tokens sampled from ``pi``.

    Source: J. Schulman, "Approximating KL Divergence" (2020, http://joschu.net/blog/kl-approx.html),
    estimators k1, k2, k3. With ``log r = logprobs - ref_logprobs = log pi(y) - log pi_ref(y)``:

        k1 = log r                          unbiased, high variance, can be negative
        k2 = (log r)^2 / 2                  biased, low variance, >= 0
        k3 = exp(-log r) - 1 + log r        unbiased, low variance, >= 0

    (in the blog's notation ``r_blog = pi_ref / pi = exp(-log r)`` and ``k3 = (r_blog - 1) - log r_blog``).
    k3 is evaluated as ``expm1(-log r) + log r``, the same value with less rounding near ``log r = 0``.

    Clamping: none by default, so the values are exact. k3 overflows to ``inf`` when
    ``log r < -88`` in float32 (``exp(88) > 3.4e38``). Pass ``log_ratio_clamp = c`` to clamp
    ``log r`` to ``[-c, c]`` before applying the estimator, a common numeric guard (verl's
    low-variance KL clamps the log-ratio to [-20, 20] and then k3 itself to [-10, 10]); the clamped
    value has zero gradient outside the range.

    Args:
        logprobs: ``(B, T)`` log pi(y_t | ...) of the sampled tokens.
        ref_logprobs: ``(B, T)`` log pi_ref(y_t | ...) of the same tokens.
        estimator: "k1", "k2" or "k3".
        log_ratio_clamp: optional bound ``c > 0`` on ``|log r|``.

    Returns:
        ``(B, T)`` per-token KL estimate, unreduced and unmasked (mask it when aggregating).
    """
    log_ratio = logprobs - ref_logprobs  # (B, T)
    if log_ratio_clamp is not None:
        log_ratio = log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp)
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {KL_ESTIMATORS}")


def sequence_kl(kl: Tensor, mask: Tensor) -> Tensor:
    """Mean over sequences of the per-sequence KL ``sum_t m_t kl_t``: a 0-dim tensor.

    The quantity the adaptive controller tracks (Ziegler et al. 2019 compare the KL of whole
    responses with their target) and that PPO logs as ``kl/mean``.

    Args:
        kl: ``(B, T)`` per-token KL estimates (`kl_penalty`).
        mask: ``(B, T)`` 1 on valid tokens.
    """
    per_seq = torch.where(mask.bool(), kl, torch.zeros((), dtype=kl.dtype, device=kl.device)).sum(-1)  # (B,)
    return per_seq.mean()


class KLController:
    """The coefficient beta of the KL penalty ``r_t = -beta KL_t`` (+ the score on the last token).

    Fixed when `target` is 0. Otherwise the adaptive controller of Ziegler et al. 2019, "Fine-Tuning
    Language Models from Human Preferences" (arXiv 1909.08593), section 2.2: after a batch of n samples
    whose mean sequence KL is ``KL``,

        e    = clip(KL / target - 1, -0.2, 0.2)
        beta <- beta * (1 + e * n / horizon)

    so beta grows while the policy drifts beyond the target and shrinks while it stays inside.
    State is one number (`state_dict`), for exact resume.
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
