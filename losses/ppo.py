"""PPO clipped policy and value losses, and the one loss aggregator.

Shapes: ``(B, T)`` tensors cover response tokens and are right-padded; ``mask`` is 1 on valid tokens.

Losses here are per token and unreduced (0 at masked positions); ``aggregate`` is the only reduction.
Metrics are 0-dim detached tensors, each a masked mean over the valid tokens of the call (the local
micro-batch). To combine metrics across micro-batches or shards exactly, weight each by its number of
valid tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from losses.common import masked_mean
from losses.kl import kl_penalty

__all__ = ["policy_loss", "value_loss", "aggregate", "AGGREGATIONS", "normalizer"]

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
"""The loss aggregation modes of `aggregate`."""


def _zero_masked(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate policy loss, per token, with an optional entropy bonus and KL term.

    Source: Schulman et al. 2017, "Proximal Policy Optimization Algorithms" (arXiv 1707.06347),
    eq. 7 (L^CLIP), negated to be minimised:

        ratio = exp(logprobs - old_logprobs) = pi(a|s) / pi_old(a|s)
        loss  = max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))

    With A > 0 the loss stops improving once ratio > 1 + eps; with A < 0 once ratio < 1 - eps. In
    those regions the clipped term is the larger one and the gradient is 0.

    Truncated importance sampling (Yao et al. 2025): with ``is_weights`` given (``(B, T)``, no gradient,
    `losses.mismatch.truncated_is_weights`), the clipped term of token t is multiplied by w_t before the
    entropy and KL terms are added: ``w_t * max(-A ratio, -A clip(ratio))``. The tokens were sampled by
    another policy than pi_old (an inference engine, or stale weights), and w_t corrects towards pi_old.

    Entropy bonus (the same paper, eq. 9, ``- c2 S[pi](s_t)``): with ``entropy`` given, the per-token
    loss becomes ``loss - entropy_coef * H_t``, which rewards keeping the policy spread out.

    KL in the loss (GRPO, Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300, eq. 3-4): with
    ``ref_logprobs`` given, the per-token loss gains ``kl_coef * D_t``, where D_t estimates
    ``KL(pi || pi_ref)`` at token t from the current log-probs (with gradient), by default GRPO's
    unbiased, non-negative estimator ``D_t = pi_ref/pi - log(pi_ref/pi) - 1`` (Schulman's k3,
    `losses.kl.kl_penalty`). The penalty then leaves the reward, so it does not enter the advantages.

    Metrics (0-dim, detached, masked means over this call's valid tokens):
        - ``clipfrac``: fraction of tokens where the clipped term is strictly larger, i.e. where the
          clip is active and the token gives no gradient (the definition of OpenRLHF and verl;
          CleanRL's ``|ratio - 1| > eps`` also counts tokens on the harmless side of the clip).
        - ``approx_kl``: ``KL(pi_old || pi)`` by Schulman's k3 estimator on tokens sampled from
          pi_old, ``(ratio - 1) - log ratio`` (as in CleanRL), i.e. ``kl_penalty(old_logprobs,
          logprobs, "k3")``.
        - ``ratio_mean``, ``ratio_max``: statistics of the ratio over valid tokens (a maximum, not a mean:
          combine it across micro-batches and shards with max).

    Args:
        logprobs: ``(B, T)`` log pi(a_t | s_t) under the current policy (requires grad).
        old_logprobs: ``(B, T)`` log pi_old(a_t | s_t) from the rollout policy.
        advantages: ``(B, T)`` A_t (e.g. whitened GAE advantages).
        mask: ``(B, T)`` 1 on valid tokens.
        clip_eps: the clip range eps.
        entropy: ``(B, T)`` H(pi(. | s_t)) of the current policy (requires grad), or None.
        entropy_coef: the bonus weight c2 (used when ``entropy`` is given).
        ref_logprobs: ``(B, T)`` log pi_ref(a_t | s_t) for the KL term, or None (no KL term).
        kl_coef: the KL term's weight beta (used when ``ref_logprobs`` is given).
        kl_estimator: "k1", "k2" or "k3" for D_t.
        is_weights: ``(B, T)`` truncated importance weights pi_old / pi_sampler of the policy-gradient term, or None.

    Returns:
        ``(per_token_loss, metrics)``: ``(B, T)`` loss, 0 at masked positions; dict of 0-dim tensors
        (``entropy`` too when given, ``kl_loss``, the mean D_t, with ``ref_logprobs``).
    """
    mask = mask.bool()
    # Masked positions are zeroed up front, so garbage there (even nan or inf) reaches neither the
    # loss nor the gradient (a nan at a masked position would otherwise give 0 * nan = nan gradients).
    logprobs, old_logprobs = _zero_masked(logprobs, mask), _zero_masked(old_logprobs, mask)
    advantages = _zero_masked(advantages, mask)
    log_ratio = logprobs - old_logprobs  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    pg_loss_unclipped = -advantages * ratio  # (B, T)
    pg_loss_clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)  # (B, T)
    pg_loss = torch.maximum(pg_loss_unclipped, pg_loss_clipped)  # (B, T)
    if is_weights is not None:
        pg_loss = pg_loss * _zero_masked(is_weights.detach(), mask)
    if entropy is not None:
        pg_loss = pg_loss - entropy_coef * _zero_masked(entropy, mask)
    kl = None
    if ref_logprobs is not None:
        kl = kl_penalty(logprobs, _zero_masked(ref_logprobs, mask), kl_estimator)  # (B, T), 0 where masked
        pg_loss = pg_loss + kl_coef * kl
    pg_loss = _zero_masked(pg_loss, mask)  # (B, T)

    with torch.no_grad():
        clipped = (pg_loss_clipped > pg_loss_unclipped).to(ratio.dtype)  # (B, T)
        approx_kl = kl_penalty(old_logprobs, logprobs, "k3")  # (B, T) = (ratio - 1) - log ratio
        metrics = {
            "clipfrac": masked_mean(clipped, mask),
            "approx_kl": masked_mean(approx_kl, mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": _zero_masked(ratio, mask).max(),  # ratio > 0, so the zeros never win
        }
        if entropy is not None:
            metrics["entropy"] = masked_mean(entropy, mask)
        if kl is not None:
            metrics["kl_loss"] = masked_mean(kl.detach(), mask)
    return pg_loss, metrics


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped value loss, per token.

    Source: the value-function clipping of OpenAI baselines ppo2 (not in the PPO paper), analysed in
    Engstrom et al. 2020, "Implementation Matters in Deep Policy Gradients" (arXiv 2005.12729):

        V_clip = clip(V, V_old - eps, V_old + eps) = V_old + clip(V - V_old, -eps, eps)
        loss   = 0.5 * max((V - R)^2, (V_clip - R)^2)

    Naming trap: this clips the *change* of the value prediction relative to the rollout's
    ``V_old`` (a trust region on the critic, eps in the units of the value), as baselines, OpenRLHF
    and verl do. It is not a clip of the squared error itself, which one library also calls "value
    clipping". The max makes the loss pessimistic: the clipped term (constant in V, so gradient 0)
    wins only when V has moved more than eps from V_old *towards* R; a move away from R keeps the
    unclipped term and its gradient.

    Metrics (0-dim, detached, masked means over this call's valid tokens):
        - ``clipfrac``: fraction of tokens where the clipped term is strictly larger (gradient 0).
        - ``values_mean``: mean of ``V``.

    Args:
        values: ``(B, T)`` V(s_t) from the critic being trained (requires grad).
        old_values: ``(B, T)`` V_old(s_t) from the rollout critic.
        returns: ``(B, T)`` R_t, the targets (e.g. GAE returns).
        mask: ``(B, T)`` 1 on valid tokens.
        clip_eps: the clip range on the value change.

    Returns:
        ``(per_token_loss, metrics)``: ``(B, T)`` loss, 0 at masked positions; dict of 0-dim tensors.
    """
    mask = mask.bool()
    # Masked positions zeroed up front, as in policy_loss.
    values, old_values, returns = (_zero_masked(x, mask) for x in (values, old_values, returns))
    values_clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)  # (B, T)
    vf_loss_unclipped = (values - returns).square()  # (B, T)
    vf_loss_clipped = (values_clipped - returns).square()  # (B, T)
    vf_loss = _zero_masked(0.5 * torch.maximum(vf_loss_unclipped, vf_loss_clipped), mask)  # (B, T)
    with torch.no_grad():
        clipped = (vf_loss_clipped > vf_loss_unclipped).to(values.dtype)  # (B, T)
        metrics = {
            "clipfrac": masked_mean(clipped, mask),
            "values_mean": masked_mean(values, mask),
        }
    return vf_loss, metrics


def aggregate(per_token: Tensor, mask: Tensor, num_tokens: int | float | Tensor | None = None,
              mode: str = "token_mean") -> Tensor:
    """Reduce a per-token loss to one number, dividing by a normaliser of the whole optimiser step.

        token_mean               loss = sum_{b,t} m_bt l_bt / N                 N = valid tokens
        seq_mean_token_mean      loss = sum_b (sum_t m_bt l_bt / n_b) / N        N = sequences, n_b = row b's tokens
        seq_mean_token_sum_norm  loss = sum_{b,t} m_bt l_bt / N                 N = sequences x T

    ``token_mean`` weighs every token alike (the token-level mean of DAPO, Yu et al. 2025, arXiv
    2503.14476, Sec. 3.3). ``seq_mean_token_mean`` weighs every sequence alike, each the mean of its
    tokens (GRPO's 1/G sum_i 1/|o_i| sum_t of DeepSeekMath, arXiv 2402.03300, eq. 3), which gives a
    short sequence's tokens more weight. ``seq_mean_token_sum_norm`` divides each sequence's token sum
    by one constant T, the generation budget (``mask.shape[-1]``, responses are right-padded to it):
    Dr. GRPO's unbiased form (Liu et al. 2025, arXiv 2503.20783, Sec. 3.1), with no length bias.

    ``num_tokens`` is the global normaliser N of the mode (`normalizer` over the whole minibatch, all
    shards and micro-batches): with it the sum of ``aggregate`` over shards and micro-batches equals the
    loss of the unsplit batch, so the accumulated gradient does not depend on how the batch was cut.
    Without it N is this call's own (local) count. Data-parallel engines (DDP, DeepSpeed) *average*
    gradients over ranks: there, pass ``N / world_size`` (or scale the loss by the world size).

    Masked positions are selected out with ``torch.where``: their values never matter. A local
    count of 0 is treated as 1, so an empty micro-batch gives 0, not nan.

    Args:
        per_token: ``(B, T)`` unreduced loss.
        mask: ``(B, T)`` 1 on valid tokens.
        num_tokens: the global normaliser N of ``mode``, or None for the local one.
        mode: one of `AGGREGATIONS`.

    Returns:
        0-dim tensor.
    """
    mask = mask.bool()
    per_token = _zero_masked(per_token, mask)
    if mode == "seq_mean_token_mean":
        total = (per_token.sum(-1) / mask.sum(-1).clamp_min(1)).sum()
    elif mode in ("token_mean", "seq_mean_token_sum_norm"):
        total = per_token.sum()
    else:
        raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {AGGREGATIONS}")
    if num_tokens is None:
        num_tokens = normalizer(mask, mode)
    return total / num_tokens


def normalizer(mask: Tensor, mode: str = "token_mean") -> Tensor:
    """N of `aggregate` for the rows of ``mask`` (``(B, T)``, 1 on valid tokens): the valid tokens
    (token_mean), the sequences (seq_mean_token_mean) or sequences x T (seq_mean_token_sum_norm); at
    least 1. Called on a whole minibatch, it gives the global normaliser."""
    mask = mask.bool()
    if mode == "token_mean":
        n = mask.sum()
    elif mode == "seq_mean_token_mean":
        n = torch.tensor(mask.shape[0])
    elif mode == "seq_mean_token_sum_norm":
        n = torch.tensor(mask.shape[0] * mask.shape[1])
    else:
        raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {AGGREGATIONS}")
    return n.clamp_min(1).to(torch.float32)
