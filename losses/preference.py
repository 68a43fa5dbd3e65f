"""Reward-model losses: Bradley-Terry, distributional preference learning (DPL), a Gaussian-mixture
head, and ODIN's disentangled length/quality heads.

Sources:
- DPL: Siththaranjan, Laidlaw and Hadfield-Menell 2023, "Distributional Preference Learning:
  Understanding and Accounting for Hidden Context in RLHF" (arXiv 2312.08358), its section on
  distributional preference learning (mean-and-variance and categorical DPL), and its code
  (github.com/cassidylaidlaw/hidden-context).
- ODIN: Chen et al. 2024, "ODIN: Disentangled Reward Mitigates Hacking in RLHF" (arXiv 2402.07319).
- Annotator types: a latent-class Bradley-Terry model, the mixture of preference models over user
  types of Chakraborty et al. 2024, "MaxMin-RLHF" (arXiv 2402.08925), section on learning a mixture
  of reward models; the DPL paper's hidden context as a discrete variable.

Shapes: ``B`` preference pairs; "c" is the chosen and "r" the rejected response of a pair. Every loss
returns per-sample values ``(B,)``, unreduced (reduce with a mean over pairs); batch-level terms (the
C-DPL entropy bonus, ODIN's correlation and orthogonality terms) are returned separately as 0-dim
tensors. 16-bit inputs are computed in float32 (results are float32); float32 and float64 inputs keep
their dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from losses.common import _compute_dtype, log_ndtr, pearson

__all__ = [
    "bradley_terry_loss",
    "mean_variance_loss",
    "mean_variance_std",
    "mean_variance_quantile",
    "categorical_atoms",
    "categorical_loss",
    "categorical_mean",
    "categorical_std",
    "categorical_quantile",
    "mixture_loss",
    "mixture_params",
    "mixture_mean",
    "mixture_std",
    "mixture_quantile",
    "annotator_types_loss",
    "annotator_types_split",
    "odin_loss",
    "odin_length_decorrelation",
    "odin_orthogonality",
]

# Lower bound on a combined variance s_c^2 + s_r^2 (or s^2) before dividing by its square root: a
# spread that collapses to 0 then gives a large but finite z (|z| <= |dmu| * 1e6) and finite gradients.
MIN_VARIANCE = 1e-12

# sqrt(2 pi): the slope of the DPL code's logistic approximation of the normal CDF (see below).
_SQRT_2PI = math.sqrt(2.0 * math.pi)


def _upcast(x: Tensor) -> Tensor:
    return x.to(_compute_dtype(x.dtype))


# --------------------------------------------------------------------------------------------------
# Bradley-Terry


def bradley_terry_loss(r_chosen: Tensor, r_rejected: Tensor) -> Tensor:
    """Per-pair Bradley-Terry negative log-likelihood.

        loss = -log sigmoid(r_c - r_r) = softplus(r_r - r_c)

    Source: Bradley and Terry 1952; the reward-model loss of Ouyang et al. 2022 (arXiv 2203.02155),
    eq. 1; the DPL paper's model of preferences. ``softplus`` is stable for any difference (+-1e4
    gives 0 and 1e4).

    Args:
        r_chosen: ``(B,)`` scalar reward of the chosen response.
        r_rejected: ``(B,)`` scalar reward of the rejected response.

    Returns:
        ``(B,)`` per-pair loss.
    """
    return F.softplus(_upcast(r_rejected) - _upcast(r_chosen))


# --------------------------------------------------------------------------------------------------
# Mean-variance DPL


def mean_variance_std(out: Tensor) -> Tensor:
    """Standard deviation of a mean-variance head: ``std = softplus(raw)``, with ``out = (mean, raw)``.

    Args:
        out: ``(B, 2)`` head output (mean, raw std).

    Returns:
        ``(B,)`` std >= 0.
    """
    return F.softplus(_upcast(out[..., 1]))


def mean_variance_loss(out_chosen: Tensor, out_rejected: Tensor, variance_penalty: float = 0.0) -> Tensor:
    """Per-pair loss of mean-variance DPL.

    The utility of a response is modelled as ``N(mu, s^2)``; independent draws give
    ``P(c beats r) = Phi(z)`` with

        z = (mu_c - mu_r) / sqrt(s_c^2 + s_r^2),    s = softplus(raw)

    (DPL paper, mean-and-variance DPL). As in the DPL code, ``-log Phi(z)`` is replaced by the
    logistic form ``-log sigmoid(sqrt(2 pi) z) = softplus(-sqrt(2 pi) z)`` (stable for any z), and a
    penalty on the spread may be added:

        loss = softplus(-z * sqrt(2 pi)) + variance_penalty * (s_c^2 + s_r^2)

    Caveat: with the usual ``sigmoid(1.702 x) ~ Phi(x)``, this is ``~ -log Phi(1.47 z)``, not
    ``-log Phi(z)`` (at z = 0.71: 0.157 vs 0.274), so the learned s is about 1.47 times the std of the
    normal model that gives the same win probabilities. Rankings by mean are unaffected; for the exact
    probit likelihood use ``mixture_loss`` with K = 1.

    Clamping: the combined variance is clamped below at ``MIN_VARIANCE`` = 1e-12 before the square
    root, so a spread collapsing to 0 keeps z and its gradients finite (only active when both stds
    are below ~7e-7).

    Args:
        out_chosen: ``(B, 2)`` (mean, raw std) of the chosen response.
        out_rejected: ``(B, 2)`` (mean, raw std) of the rejected response.
        variance_penalty: weight of ``s_c^2 + s_r^2`` (0 in the paper's experiments).

    Returns:
        ``(B,)`` per-pair loss (including the penalty).
    """
    mu_c, mu_r = _upcast(out_chosen[..., 0]), _upcast(out_rejected[..., 0])  # (B,)
    var = mean_variance_std(out_chosen).square() + mean_variance_std(out_rejected).square()  # (B,)
    z = (mu_c - mu_r) / var.clamp_min(MIN_VARIANCE).sqrt()  # (B,)
    loss = F.softplus(-z * _SQRT_2PI)
    if variance_penalty:
        loss = loss + variance_penalty * var
    return loss


def mean_variance_quantile(out: Tensor, alpha: float | Tensor) -> Tensor:
    """The alpha-quantile of a mean-variance head's utility distribution ``N(mu, s^2)``.

        q_alpha = mu + Phi^{-1}(alpha) * softplus(raw)

    (DPL paper: risk-averse optimisation of a lower quantile of the learned distribution.)

    Args:
        out: ``(B, 2)`` (mean, raw std).
        alpha: level in (0, 1), a float or a tensor broadcastable to ``(B,)``.

    Returns:
        ``(B,)`` quantiles.
    """
    mu = _upcast(out[..., 0])
    z_alpha = torch.special.ndtri(torch.as_tensor(alpha, dtype=mu.dtype, device=mu.device))
    return mu + z_alpha * mean_variance_std(out)


# --------------------------------------------------------------------------------------------------
# Categorical DPL


def categorical_atoms(num_atoms: int, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """The ``K`` atoms of categorical DPL, evenly spaced on [0, 1]: ``linspace(0, 1, K)``, ``(K,)``."""
    if num_atoms < 2:
        raise ValueError(f"categorical DPL needs at least 2 atoms, got {num_atoms}")
    return torch.linspace(0.0, 1.0, num_atoms, dtype=dtype, device=device)


def _log_win_matrix(atoms: Tensor) -> Tensor:
    """``log w``, ``(K, K)``: ``w_ij = 1`` if atom_i > atom_j, 1/2 if equal, 0 otherwise."""
    greater = atoms[:, None] > atoms[None, :]
    equal = atoms[:, None] == atoms[None, :]
    w = greater.to(atoms.dtype) + 0.5 * equal.to(atoms.dtype)
    return torch.log(w)  # log 0 = -inf: such (i, j) drop out of the logsumexp


def categorical_loss(
    logits_chosen: Tensor, logits_rejected: Tensor, entropy_coef: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Per-pair loss of categorical DPL, and its separate entropy bonus.

    The utility of a response is a distribution ``p = softmax(logits)`` over ``K`` atoms evenly
    spaced on [0, 1] (DPL paper, categorical DPL). Independent draws give

        P(c beats r) = sum_ij p_c(i) p_r(j) w_ij,   w_ij = 1 if atom_i > atom_j, 1/2 if equal, else 0
        loss         = -log P(c beats r)

    computed in log space, ``log P = logsumexp_ij(log p_c(i) + log p_r(j) + log w_ij)``, so
    probabilities that underflow to 0 (logit gaps of 1e4) keep the loss and its gradients finite.
    The loss is infinite only if ``P = 0`` exactly (e.g. ``-inf`` logits putting all chosen mass
    strictly below all rejected mass).

    Entropy bonus, as in the DPL code: with ``m`` the mean of the 2B distributions (chosen and
    rejected) of the batch, ``entropy_loss = entropy_coef * sum_k m_k log m_k = -entropy_coef * H(m)``;
    adding it to the mean loss maximises the entropy of the batch-mean distribution (it discourages
    collapsing all responses onto one atom). ``0 log 0`` is taken as 0 with zero gradient.

    Args:
        logits_chosen: ``(B, K)`` logits over atoms for the chosen response.
        logits_rejected: ``(B, K)`` logits over atoms for the rejected response.
        entropy_coef: weight of the entropy bonus.

    Returns:
        ``(losses, entropy_loss)``: ``(B,)`` per-pair ``-log P``; 0-dim ``-entropy_coef * H(m)``.
        The training objective is ``losses.mean() + entropy_loss``.
    """
    logits_c, logits_r = _upcast(logits_chosen), _upcast(logits_rejected)  # (B, K)
    atoms = categorical_atoms(logits_c.shape[-1], logits_c.dtype, logits_c.device)  # (K,)
    log_p_c = F.log_softmax(logits_c, dim=-1)  # (B, K)
    log_p_r = F.log_softmax(logits_r, dim=-1)  # (B, K)
    log_terms = log_p_c[:, :, None] + log_p_r[:, None, :] + _log_win_matrix(atoms)  # (B, K, K)
    losses = -torch.logsumexp(log_terms.flatten(1), dim=-1)  # (B,)

    probs = torch.cat([log_p_c, log_p_r], dim=0).exp()  # (2B, K)
    mean_dist = probs.mean(dim=0)  # (K,)
    positive = mean_dist > 0
    safe_log = torch.log(torch.where(positive, mean_dist, torch.ones_like(mean_dist)))  # (K,)
    neg_entropy = torch.where(positive, mean_dist * safe_log, torch.zeros_like(mean_dist)).sum()
    return losses, entropy_coef * neg_entropy


def categorical_mean(logits: Tensor) -> Tensor:
    """Mean utility of a categorical head: ``sum_k softmax(logits)_k * atom_k``.

    Args:
        logits: ``(B, K)``.

    Returns:
        ``(B,)`` in [0, 1].
    """
    logits = _upcast(logits)
    atoms = categorical_atoms(logits.shape[-1], logits.dtype, logits.device)
    return (F.softmax(logits, dim=-1) * atoms).sum(-1)


def categorical_std(logits: Tensor) -> Tensor:
    """Standard deviation of a categorical head: ``sqrt(sum_k p_k (atom_k - mean)^2)``, ``(B,)``."""
    logits = _upcast(logits)
    atoms = categorical_atoms(logits.shape[-1], logits.dtype, logits.device)
    probs = F.softmax(logits, dim=-1)  # (B, K)
    mean = (probs * atoms).sum(-1, keepdim=True)  # (B, 1)
    return (probs * (atoms - mean).square()).sum(-1).sqrt()


def categorical_quantile(logits: Tensor, alpha: float | Tensor) -> Tensor:
    """The alpha-quantile of a categorical head, by linear interpolation of its CDF.

    Each atom's mass is spread uniformly over its cell ``[atom_k - d/2, atom_k + d/2]``,
    ``d = 1 / (K - 1)`` the atom spacing, which makes the CDF piecewise linear through the knots

        (atom_0 - d/2, 0), (atom_0 + d/2, F_0), ..., (atom_{K-1} + d/2, F_{K-1}),   F_k = sum_{i<=k} p_i

    The quantile inverts it: with ``k`` the first index where ``F_k >= alpha``,

        q_alpha = atom_k - d/2 + d * (alpha - F_{k-1}) / p_k        (F_{-1} = 0)

    This is the DPL code's quantile (its evaluation script interpolates the same CDF on bins of width
    1/K) with the bins centred on the atoms: the two differ only by a fixed increasing affine map,
    so they rank responses identically. Centring makes a point mass at atom_k have median atom_k and a
    symmetric distribution have median equal to its mean; the range is ``[-d/2, 1 + d/2]``.

    Args:
        logits: ``(B, K)``.
        alpha: level in (0, 1), a float or a tensor broadcastable to ``(B,)``.

    Returns:
        ``(B,)`` quantiles (differentiable in the logits almost everywhere).
    """
    logits = _upcast(logits)
    num_atoms = logits.shape[-1]
    atoms = categorical_atoms(num_atoms, logits.dtype, logits.device)  # (K,)
    spacing = 1.0 / (num_atoms - 1)
    probs = F.softmax(logits, dim=-1)  # (B, K)
    cdf = probs.cumsum(-1)  # (B, K)
    alpha_t = torch.as_tensor(alpha, dtype=cdf.dtype, device=cdf.device).expand(cdf.shape[:-1])  # (B,)
    k = torch.searchsorted(cdf.detach().contiguous(), alpha_t.unsqueeze(-1).contiguous())  # (B, 1)
    k = k.clamp(max=num_atoms - 1)  # alpha above a rounded F_{K-1} < 1 falls in the last cell
    cdf_prev = torch.cat([torch.zeros_like(cdf[:, :1]), cdf[:, :-1]], dim=-1)  # (B, K) F_{k-1}
    f_prev = cdf_prev.gather(-1, k).squeeze(-1)  # (B,)
    mass = cdf.gather(-1, k).squeeze(-1) - f_prev  # (B,) p_k as seen by the search, > 0
    safe_mass = torch.where(mass > 0, mass, torch.ones_like(mass))
    frac = ((alpha_t - f_prev) / safe_mass).clamp(0.0, 1.0)  # (B,)
    return atoms[k.squeeze(-1)] - 0.5 * spacing + spacing * frac


# --------------------------------------------------------------------------------------------------
# Gaussian-mixture head (beyond the paper)


def mixture_params(out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Split a ``(B, 3K)`` mixture head into ``(log_weights, means, stds)``, each ``(B, K)``.

    Layout of the last dim: ``[weight logits (K) | means (K) | raw stds (K)]``, with
    ``log_weights = log_softmax(weight logits)`` and ``stds = softplus(raw)``.
    """
    out = _upcast(out)
    if out.shape[-1] % 3:
        raise ValueError(f"a mixture head has 3K outputs (weight logits, means, raw stds), got {out.shape[-1]}")
    logits, means, raw = out.chunk(3, dim=-1)
    return F.log_softmax(logits, dim=-1), means, F.softplus(raw)


def mixture_loss(out_chosen: Tensor, out_rejected: Tensor) -> Tensor:
    """Per-pair loss of a K-component Gaussian-mixture utility head (a DPL extension).

    Each response's utility is ``sum_k pi_k N(mu_k, s_k^2)``; for independent draws the exact win
    probability is (the difference of two independent normals is normal)

        P(c beats r) = sum_ij pi_ci pi_rj Phi((mu_ci - mu_rj) / sqrt(s_ci^2 + s_rj^2))
        loss         = -log P(c beats r)

    computed in log space: ``log P = logsumexp_ij(log pi_ci + log pi_rj + log Phi(z_ij))`` with
    ``log Phi`` from ``losses.common.log_ndtr`` (accurate values and gradients for z down to -1e10).
    With K = 1 it is mean-variance DPL with the exact ``-log Phi(z)``.

    Clamping: ``s_ci^2 + s_rj^2`` is clamped below at ``MIN_VARIANCE`` = 1e-12, as in
    ``mean_variance_loss``.

    Args:
        out_chosen: ``(B, 3K)`` mixture head of the chosen response (layout in ``mixture_params``).
        out_rejected: ``(B, 3K)`` mixture head of the rejected response.

    Returns:
        ``(B,)`` per-pair loss.
    """
    log_w_c, mu_c, s_c = mixture_params(out_chosen)  # (B, K) each
    log_w_r, mu_r, s_r = mixture_params(out_rejected)  # (B, K) each
    var = (s_c[:, :, None].square() + s_r[:, None, :].square()).clamp_min(MIN_VARIANCE)  # (B, K, K)
    z = (mu_c[:, :, None] - mu_r[:, None, :]) / var.sqrt()  # (B, K, K)
    log_terms = log_w_c[:, :, None] + log_w_r[:, None, :] + log_ndtr(z)  # (B, K, K)
    return -torch.logsumexp(log_terms.flatten(1), dim=-1)


def mixture_mean(out: Tensor) -> Tensor:
    """Mean of a mixture head: ``sum_k pi_k mu_k``, ``(B,)``."""
    log_w, mu, _ = mixture_params(out)
    return (log_w.exp() * mu).sum(-1)


def mixture_std(out: Tensor) -> Tensor:
    """Standard deviation of a mixture head: ``sqrt(sum_k pi_k (s_k^2 + mu_k^2) - mean^2)``, ``(B,)``.

    Computed as ``sqrt(sum_k pi_k (s_k^2 + (mu_k - mean)^2))``, the same value without cancellation.
    """
    log_w, mu, s = mixture_params(out)
    w = log_w.exp()
    mean = (w * mu).sum(-1, keepdim=True)
    return (w * (s.square() + (mu - mean).square())).sum(-1).sqrt()


def mixture_quantile(out: Tensor, alpha: float | Tensor, iters: int = 64) -> Tensor:
    """The alpha-quantile of a mixture head, by bisection on the mixture CDF.

    Solves ``F(x) = sum_k pi_k Phi((x - mu_k) / s_k) = alpha`` for every row at once. The initial
    bracket is ``[min_k q_k, max_k q_k]`` with ``q_k = mu_k + Phi^{-1}(alpha) s_k`` the components'
    quantiles: ``F`` is a convex combination of the component CDFs, so ``F <= alpha`` at the lower end
    and ``>= alpha`` at the upper end. Each of the ``iters`` fixed iterations halves the bracket, so
    the result (its midpoint) is within ``(max_k q_k - min_k q_k) / 2^(iters + 1)`` of the root, which
    for the default 64 is below float64 resolution (bisection stops shrinking at the dtype's ulp).
    Stds are clamped below at ``sqrt(MIN_VARIANCE)`` = 1e-6.

    The result is detached (no gradient): it is meant as a risk-averse reward for PPO.

    Args:
        out: ``(B, 3K)`` mixture head (layout in ``mixture_params``).
        alpha: level in (0, 1), a float or a tensor broadcastable to ``(B,)``.
        iters: number of bisection steps.

    Returns:
        ``(B,)`` quantiles.
    """
    with torch.no_grad():
        log_w, mu, s = mixture_params(out)  # (B, K)
        s = s.clamp_min(math.sqrt(MIN_VARIANCE))
        w = log_w.exp()
        alpha_t = torch.as_tensor(alpha, dtype=mu.dtype, device=mu.device).expand(mu.shape[:-1])  # (B,)
        comp_q = mu + torch.special.ndtri(alpha_t)[:, None] * s  # (B, K)
        lo, hi = comp_q.min(-1).values, comp_q.max(-1).values  # (B,)
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            cdf = (w * torch.special.ndtr((mid[:, None] - mu) / s)).sum(-1)  # (B,)
            below = cdf < alpha_t
            lo = torch.where(below, mid, lo)
            hi = torch.where(below, hi, mid)
        return 0.5 * (lo + hi)


# --------------------------------------------------------------------------------------------------
# Annotator types (a mixture of Bradley-Terry raters)


def _types_win_probs(u_chosen: Tensor, u_rejected: Tensor) -> Tensor:
    return torch.sigmoid(_upcast(u_chosen) - _upcast(u_rejected))


def annotator_types_loss(u_chosen: Tensor, u_rejected: Tensor, log_weights: Tensor) -> Tensor:
    """Per-pair loss of K annotator types, each a Bradley-Terry rater with its own utility.

    An annotator of type k prefers c with probability ``p_k = sigmoid(u_k(c) - u_k(r))``; the type is
    hidden, drawn with probability ``pi_k``, and the SAME type judges both answers of a pair (unlike
    ``mixture_loss``, whose two utilities are independent draws). So

        P(c beats r) = sum_k pi_k sigmoid(u_k(c) - u_k(r)),    loss = -log P(c beats r)

    computed as ``-logsumexp_k(log pi_k + log sigmoid(u_k(c) - u_k(r)))``, finite for any utilities.
    (MaxMin-RLHF, arXiv 2402.08925: a mixture of reward models over user types; with K = 1 this is
    ``bradley_terry_loss``.)

    Args:
        u_chosen: ``(B, K)`` utility of the chosen response for each type.
        u_rejected: ``(B, K)`` utility of the rejected response for each type.
        log_weights: ``(K,)`` or ``(B, K)`` log pi, normalised (e.g. a ``log_softmax``).

    Returns:
        ``(B,)`` per-pair loss.
    """
    diff = _upcast(u_chosen) - _upcast(u_rejected)  # (B, K)
    return -torch.logsumexp(_upcast(log_weights) + F.logsigmoid(diff), dim=-1)


def annotator_types_split(u_chosen: Tensor, u_rejected: Tensor, log_weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """What K annotator types say about each pair: the pooled win probability, and its uncertainty split
    into disagreement between the types and indifference within them.

        p_k          = sigmoid(u_k(c) - u_k(r))
        p            = sum_k pi_k p_k                      (an annotator drawn from the pool picks c)
        disagreement = 4 sum_k pi_k (p_k - p)^2            (the types prefer different answers)
        tie          = 4 sum_k pi_k p_k (1 - p_k)          (each type is itself unsure: a toss-up)

    By the law of total variance, ``tie + disagreement = 4 p (1 - p)``, the label's whole variance (x4,
    so each term is in [0, 1]): a pair the types split on, e.g. half certain of c and half certain of r,
    has disagreement 1 and tie 0; a pair every type finds a coin flip has disagreement 0 and tie 1.

    Args:
        u_chosen, u_rejected: ``(B, K)`` per-type utilities.
        log_weights: ``(K,)`` or ``(B, K)`` log pi.

    Returns:
        ``(p, disagreement, tie)``, each ``(B,)``.
    """
    p_k = _types_win_probs(u_chosen, u_rejected)  # (B, K)
    pi = _upcast(log_weights).exp().expand_as(p_k)  # (B, K)
    p = (pi * p_k).sum(-1)  # (B,)
    disagreement = 4.0 * (pi * (p_k - p[:, None]).square()).sum(-1)
    tie = 4.0 * (pi * p_k * (1.0 - p_k)).sum(-1)
    return p, disagreement, tie


# --------------------------------------------------------------------------------------------------
# ODIN


def odin_length_decorrelation(quality: Tensor, length_reward: Tensor, lengths: Tensor) -> Tensor:
    """ODIN's length loss: the length head should track response length, the quality head should not.

        L_length = 1 - rho(L, r_length) + |rho(L, r_quality)|

    with ``rho`` the Pearson correlation over the batch (``losses.common.pearson``) and ``L`` the
    response lengths (arXiv 2402.07319, the length loss of the disentangled reward model; the
    constant 1 only makes the loss non-negative, range [0, 3]).

    Args:
        quality: ``(N,)`` quality-head rewards of N responses (e.g. chosen and rejected together).
        length_reward: ``(N,)`` length-head rewards of the same responses.
        lengths: ``(N,)`` response lengths (e.g. token counts).

    Returns:
        0-dim loss.
    """
    lengths = _upcast(lengths)
    quality, length_reward = _upcast(quality), _upcast(length_reward)
    return 1.0 - pearson(lengths, length_reward) + pearson(lengths, quality).abs()


def odin_loss(
    quality_chosen: Tensor,
    length_chosen: Tensor,
    quality_rejected: Tensor,
    length_rejected: Tensor,
    len_chosen: Tensor,
    len_rejected: Tensor,
) -> tuple[Tensor, Tensor]:
    """ODIN's preference and length terms for a batch of pairs (arXiv 2402.07319).

    - Preference: Bradley-Terry on the sum of the two heads,
      ``bt = -log sigmoid((q_c + l_c) - (q_r + l_r))``, per pair.
    - Length: ``odin_length_decorrelation`` over the 2B responses of the batch (chosen and rejected
      concatenated), ``1 - rho(L, r_length) + |rho(L, r_quality)|``.

    The training objective is ``bt.mean() + lambda_L * length_term + lambda_O * odin_orthogonality(...)``.
    At RL time only the quality head is used as the reward.

    Args:
        quality_chosen, length_chosen: ``(B,)`` quality- and length-head rewards of the chosen responses.
        quality_rejected, length_rejected: ``(B,)`` the same for the rejected responses.
        len_chosen, len_rejected: ``(B,)`` response lengths.

    Returns:
        ``(bt_losses, length_term)``: ``(B,)`` per-pair loss; 0-dim batch term.
    """
    bt = bradley_terry_loss(_upcast(quality_chosen) + _upcast(length_chosen),
                            _upcast(quality_rejected) + _upcast(length_rejected))  # (B,)
    length_term = odin_length_decorrelation(
        torch.cat([quality_chosen, quality_rejected]),
        torch.cat([length_chosen, length_rejected]),
        torch.cat([len_chosen, len_rejected]),
    )
    return bt, length_term


def odin_orthogonality(w_quality: Tensor, w_length: Tensor) -> Tensor:
    """ODIN's orthogonality loss between the two linear heads' weight vectors.

        L_orth = mean |w_q . w_l|

    (arXiv 2402.07319, the orthogonality loss ``|W_Q^T W_L|``.) The mean runs over any leading dims,
    e.g. several head pairs; for two ``(H,)`` vectors it is just ``|w_q . w_l|``.

    Args:
        w_quality: ``(..., H)`` weight of the quality head.
        w_length: ``(..., H)`` weight of the length head.

    Returns:
        0-dim loss.
    """
    return (_upcast(w_quality) * _upcast(w_length)).sum(-1).abs().mean()
