"""Shared tensor helpers for PPO, DPO and reward-model training.

Pure functions on tensors: this module imports torch, math and the standard library only.

Conventions used across ``losses/``:
- ``mask`` is 1 (or True) on valid elements and 0 elsewhere; it is converted with ``mask.bool()``.
- Masked reductions select with ``torch.where`` instead of multiplying by the mask, so garbage at masked
  positions (even ``inf`` or ``nan``) cannot leak into a result (``0 * inf`` would be ``nan``).
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import Tensor

__all__ = ["log_probs_from_logits", "entropy_from_logits", "masked_mean", "masked_var", "explained_variance", "pearson",
           "spearman", "log_ndtr", "RunningMoments"]

# Elements per block when `log_probs_from_logits` walks the logits: bounds the temporary memory to
# about 4 bytes * 2**24 = 64 MiB per temporary (a float32 copy of the block and its exp).
_LOGSUMEXP_BLOCK_NUMEL = 2**24


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for 16-bit floats, the dtype itself otherwise (float32 and float64)."""
    return torch.promote_types(dtype, torch.float32)


def _row_blocks(lead_shape: tuple[int, ...], row_numel: int, budget: int) -> Iterator[tuple]:
    """Index tuples that tile the leading dims ``lead_shape`` of a ``(*lead_shape, V)`` tensor.

    Each yielded index selects a view of at most ``max(budget, row_numel)`` elements (one row of
    ``V`` elements is never split). Only integer and slice indices are produced, so ``x[idx]`` is a
    view: no copy of a non-contiguous tensor (such as ``logits[:, :-1]``) is ever made whole.
    """
    if len(lead_shape) == 0:
        yield ()
        return

    def rec(prefix: tuple, dims: tuple[int, ...]) -> Iterator[tuple]:
        inner = row_numel * math.prod(dims[1:])  # elements under one index of dims[0]
        if inner > budget and len(dims) > 1:
            for i in range(dims[0]):
                yield from rec(prefix + (i,), dims[1:])
            return
        step = max(1, budget // max(1, inner))
        for start in range(0, dims[0], step):
            yield prefix + (slice(start, start + step),)

    yield from rec((), lead_shape)


class _LabelLogProb(torch.autograd.Function):
    """``log p(label) = logits[label] - logsumexp(logits)`` with block-wise fp32 logsumexp.

    The backward pass recomputes ``softmax`` block by block from the saved logits and the saved
    ``logsumexp`` (shape ``(...)``), so neither pass holds a full-size float32 copy of 16-bit logits
    nor a full log-softmax.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, budget: int) -> Tensor:
        compute = _compute_dtype(logits.dtype)
        lead, vocab = tuple(logits.shape[:-1]), logits.shape[-1]
        lse = torch.empty(lead, dtype=compute, device=logits.device)  # (...)
        for idx in _row_blocks(lead, vocab, budget):
            lse[idx] = torch.logsumexp(logits[idx].to(compute), dim=-1)
        label_logit = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1).to(compute)  # (...)
        ctx.save_for_backward(logits, labels, lse)
        ctx.budget = budget
        return label_logit - lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        logits, labels, lse = ctx.saved_tensors
        lead, vocab = tuple(logits.shape[:-1]), logits.shape[-1]
        grad_logits = None  # (..., V)
        # d log p(y) / d logits_v = 1[v == y] - softmax(logits)_v, in place on one fresh buffer per block
        # (the same rounding as exp(z - lse) * -g: negation is exact)
        for idx in _row_blocks(lead, vocab, ctx.budget):
            g = grad_out[idx].unsqueeze(-1)  # (..., 1)
            block = logits[idx].to(lse.dtype) - lse[idx].unsqueeze(-1)  # (..., V), a new tensor
            block.exp_().mul_(-g)
            block.scatter_add_(-1, labels[idx].unsqueeze(-1), g)
            if block.shape == logits.shape and block.dtype == logits.dtype:
                return block, None, None  # the one block: it is the gradient
            if grad_logits is None:
                grad_logits = torch.empty_like(logits)
            grad_logits[idx] = block.to(grad_logits.dtype)
        return grad_logits, None, None


def log_probs_from_logits(
    logits: Tensor, labels: Tensor, *, block_numel: int = _LOGSUMEXP_BLOCK_NUMEL
) -> Tensor:
    """Log-probability of each label under a softmax over the last dim of ``logits``.

    Formula: ``log p(y) = z_y - logsumexp_v(z_v)`` with ``z = logits``; the standard identity
    ``log_softmax(z)_y = z_y - log sum_v exp(z_v)``.

    Memory-lean: the label logit is gathered and the logsumexp is computed block by block over the
    leading dims (at most ``block_numel`` logits per block), so no full ``(..., V)`` log-softmax is
    materialised in the forward pass, and the backward pass (a custom autograd function) recomputes
    the softmax block by block from the saved logits.

    Dtypes: 16-bit inputs (bf16, fp16) are reduced in float32 and the result is float32 (a PPO ratio
    exponentiates a difference of log-probs, so bf16 log-probs would not be precise enough); float32
    and float64 inputs are reduced and returned in their own dtype. The gradient has the logits' dtype.

    Args:
        logits: ``(..., V)`` unnormalised scores, e.g. ``(B, T, V)``; any dtype, may be a
            non-contiguous view such as ``logits[:, :-1]``.
        labels: ``(...)`` integer ids in ``[0, V)``, e.g. ``(B, T)``.
        block_numel: upper bound on logits per block (one row is never split).

    Returns:
        ``(...)`` log-probabilities, float32 for 16-bit input, else the input dtype.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match")
    return _LabelLogProb.apply(logits, labels.long(), int(block_numel))


class _Entropy(torch.autograd.Function):
    """``H = logsumexp(z) - sum_v softmax(z)_v z_v`` with block-wise fp32 reductions (as `_LabelLogProb`).

    Backward: ``dH/dz_v = -p_v (log p_v + H)``, recomputed block by block from the saved logits,
    ``logsumexp`` and ``H``, so no full-size float32 copy of 16-bit logits is ever held.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, budget: int) -> Tensor:
        compute = _compute_dtype(logits.dtype)
        lead, vocab = tuple(logits.shape[:-1]), logits.shape[-1]
        lse = torch.empty(lead, dtype=compute, device=logits.device)  # (...)
        entropy = torch.empty(lead, dtype=compute, device=logits.device)  # (...)
        for idx in _row_blocks(lead, vocab, budget):
            z = logits[idx].to(compute)
            lse[idx] = torch.logsumexp(z, dim=-1)
            probs = torch.exp(z - lse[idx].unsqueeze(-1))
            entropy[idx] = lse[idx] - (probs * z).sum(-1)
        ctx.save_for_backward(logits, lse, entropy)
        ctx.budget = budget
        return entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        logits, lse, entropy = ctx.saved_tensors
        lead, vocab = tuple(logits.shape[:-1]), logits.shape[-1]
        grad_logits = torch.empty_like(logits)  # (..., V)
        for idx in _row_blocks(lead, vocab, ctx.budget):
            log_p = logits[idx].to(lse.dtype) - lse[idx].unsqueeze(-1)  # (..., V)
            block = -torch.exp(log_p) * (log_p + entropy[idx].unsqueeze(-1)) * grad_out[idx].unsqueeze(-1)
            grad_logits[idx] = block.to(grad_logits.dtype)
        return grad_logits, None


def entropy_from_logits(logits: Tensor, *, block_numel: int = _LOGSUMEXP_BLOCK_NUMEL) -> Tensor:
    """Entropy of the softmax over the last dim of ``logits``: ``H = -sum_v p_v log p_v``.

    Formula: with ``p = softmax(z)``, ``H = logsumexp(z) - sum_v p_v z_v`` (since ``log p_v = z_v -
    logsumexp(z)``). Memory-lean and dtype rules as in `log_probs_from_logits`: block-wise fp32
    reductions, float32 result for 16-bit input, a custom backward ``dH/dz_v = -p_v (log p_v + H)``.

    Args:
        logits: ``(..., V)``, e.g. ``(B, T, V)``; may be a non-contiguous view.

    Returns:
        ``(...)`` entropies in nats, >= 0.
    """
    return _Entropy.apply(logits, int(block_numel))


def masked_mean(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Mean of ``x`` over the valid elements: ``sum(x * m) / sum(m)``.

    Masked elements are excluded with ``torch.where``, so their values (even ``nan``) do not matter.
    Where a reduction sees no valid element, the result is 0 (the count is clamped to at least 1).

    Args:
        x: tensor of any shape, e.g. ``(B, T)``.
        mask: same shape as ``x``; 1 on valid elements.
        dim: dims to reduce; ``None`` reduces over all elements to a 0-dim tensor.
    """
    mask = mask.bool()
    total = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
    if dim is None:
        return total.sum() / mask.sum().clamp_min(1)
    return total.sum(dim) / mask.sum(dim).clamp_min(1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over all valid elements, a 0-dim tensor.

    Formula: with ``n = sum(m)`` and ``mu = masked_mean(x, m)``,
    ``var = sum(m * (x - mu)^2) / (n - 1)`` if ``unbiased`` (Bessel's correction, as verl and
    OpenRLHF use for whitening), else ``/ n``. The denominator is clamped to at least 1, so one valid
    element (or none) gives 0.
    """
    mask = mask.bool()
    mean = masked_mean(x, mask)
    sq = torch.where(mask, (x - mean) ** 2, torch.zeros((), dtype=x.dtype, device=x.device))
    n = mask.sum()
    denom = (n - 1) if unbiased else n
    return sq.sum() / denom.clamp_min(1)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """How much of the variance of the returns the values explain: ``1 - Var(R - V) / Var(R)``.

    Over the valid elements, unbiased variances (`masked_var`); 1 is a perfect critic, 0 one no better
    than a constant, negative one worse than a constant. ``nan`` when the returns do not vary (0/0).
    Source: the critic diagnostic of OpenAI baselines (``explained_variance``), also in CleanRL.

    Args:
        values: ``(B, T)`` V(s_t).
        returns: ``(B, T)`` R_t.
        mask: ``(B, T)`` 1 on valid elements.
    """
    var_r = masked_var(returns, mask)
    if var_r == 0:
        return torch.tensor(float("nan"), dtype=var_r.dtype, device=var_r.device)
    return 1.0 - masked_var(returns - values, mask) / var_r


def pearson(x: Tensor, y: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of two 1-D tensors, a 0-dim tensor in [-1, 1].

    Formula: ``rho = sum(xc * yc) / (||xc|| * ||yc||)`` with ``xc = x - mean(x)``, ``yc = y - mean(y)``
    (the 1/n or 1/(n-1) factors cancel). The denominator is clamped below at ``eps``, so a constant
    input gives 0 with a finite gradient instead of 0/0.

    Args:
        x: ``(N,)``.
        y: ``(N,)``.
    """
    if x.shape != y.shape or x.dim() != 1:
        raise ValueError(f"pearson needs two 1-D tensors of one shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    xc = x - x.mean()
    yc = y - y.mean()
    denom = (torch.linalg.vector_norm(xc) * torch.linalg.vector_norm(yc)).clamp_min(eps)
    return (xc * yc).sum() / denom


def _average_ranks(x: Tensor) -> Tensor:
    """0-based ranks ``(N,)`` float64 of a 1-D tensor; tied values share the mean of their ranks."""
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    first = (torch.cumsum(counts, 0) - counts).double()  # (U,) rank of the first element of each value
    return (first + (counts.double() - 1) / 2)[inverse]


def spearman(x: Tensor, y: Tensor) -> Tensor:
    """Spearman rank correlation of two 1-D tensors, a 0-dim float64 tensor in [-1, 1] (no gradient).

    Formula: ``pearson(rank(x), rank(y))`` with average ranks for ties (tied values share the mean of
    the ranks they occupy), the textbook definition; a constant input gives 0 (see `pearson`).

    Args:
        x: ``(N,)``.
        y: ``(N,)``.
    """
    if x.shape != y.shape or x.dim() != 1:
        raise ValueError(f"spearman needs two 1-D tensors of one shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    return pearson(_average_ranks(x.detach()), _average_ranks(y.detach()))


# Below this point log_ndtr switches to its asymptotic expansion (see log_ndtr).
_LOG_NDTR_CUT = -20.0


def log_ndtr(x: Tensor) -> Tensor:
    """``log Phi(x)``, the log of the standard normal CDF, with accurate gradients in the far tail.

    For ``x >= -20`` this is ``torch.special.log_ndtr``. For ``x < -20`` it is the asymptotic
    expansion (Abramowitz and Stegun 26.2.12, the Mills-ratio series)
    ``log Phi(x) = -x^2/2 - log(-x) - log(2 pi)/2 + log(1 - 1/x^2 + 3/x^4 - 15/x^6 + 105/x^8)``,
    whose truncation error at ``x = -20`` is below 1e-10. The reason: the backward pass of
    ``torch.special.log_ndtr`` loses precision in the tail (float32 at ``x = -1e3`` gives a gradient
    off by about 5%, and at ``x = -1e5`` a gradient of 0.4 instead of 1e5), whereas autograd through
    the expansion gives ``d/dx ~ -x - 1/x``, accurate.
    """
    cut = torch.tensor(_LOG_NDTR_CUT, dtype=x.dtype, device=x.device)
    tail = x < cut
    x_tail = torch.where(tail, x, cut)  # keeps both branches finite for the unused side
    x_body = torch.where(tail, cut, x)
    inv2 = 1.0 / (x_tail * x_tail)
    series = inv2 * (-1.0 + inv2 * (3.0 + inv2 * (-15.0 + inv2 * 105.0)))
    asymptotic = -0.5 * x_tail * x_tail - torch.log(-x_tail) - 0.5 * math.log(2 * math.pi) + torch.log1p(series)
    return torch.where(tail, asymptotic, torch.special.log_ndtr(x_body))


class RunningMoments:
    """Running count, mean and unbiased std of every value seen so far, updated a batch at a time.

    Update (Chan, Golub and LeVeque 1979, the pairwise combination of two samples' moments): with the
    running ``(n_a, mean_a, M2_a)`` and a batch ``(n_b, mean_b, M2_b)``, ``delta = mean_b - mean_a``,
    ``n = n_a + n_b``, ``mean = mean_a + delta n_b / n``, ``M2 = M2_a + M2_b + delta^2 n_a n_b / n``;
    ``std = sqrt(M2 / (n - 1))`` (1.0 until two values have been seen). In float64, so the result equals
    the two-pass statistics of all values to rounding. State is plain numbers (`state_dict`), for exact
    resume. Used by PPO's reward normalisation.
    """

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, x: Tensor) -> None:
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
