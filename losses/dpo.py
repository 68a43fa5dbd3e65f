"""Direct preference optimisation losses: DPO, conservative DPO (cDPO) and IPO.

Shapes: ``(B,)`` per preference pair. Sequence log-probabilities are sums of per-token log-probs
over the response (``aggregate`` is not involved: these are per-sample losses, reduce them with a
mean over pairs).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["dpo_loss", "DPO_LOSS_TYPES"]

DPO_LOSS_TYPES = ("sigmoid", "ipo")


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair DPO-family loss and the implicit rewards.

    With ``pi_*`` the policy's and ``ref_*`` the reference's sequence log-probabilities of the
    chosen (c) and rejected (r) responses,

        z = (pi_c - pi_r) - (ref_c - ref_r)

    - ``"sigmoid"``: ``-(1 - eps) * log sigmoid(beta * z) - eps * log sigmoid(-beta * z)``.
      With ``eps = label_smoothing = 0`` this is DPO, Rafailov et al. 2023, "Direct Preference
      Optimization" (arXiv 2305.18290), eq. 7. With ``eps > 0`` it is conservative DPO (cDPO),
      Mitchell 2023, "A note on DPO with noisy preferences and relationship to IPO": the labels are
      assumed flipped with probability eps, and the loss is the binary cross-entropy against the
      smoothed label. Evaluated with ``F.logsigmoid``, stable for any ``|beta * z|``.
    - ``"ipo"``: ``(z - 1 / (2 * beta))^2``, the sampled IPO loss of Azar et al. 2023, "A General
      Theoretical Paradigm to Understand Learning from Human Preferences" (arXiv 2310.12036),
      Sec. 5, with ``beta`` in the role of the paper's regularisation tau. ``label_smoothing`` is
      ignored. (The paper's log-probs are sums over tokens; some libraries pass length-averaged
      log-probs for IPO instead: that choice belongs to the caller.)

    Implicit rewards (Rafailov et al. 2023, eq. 5, without the partition term):
    ``chosen_rewards = beta * (pi_c - ref_c)``, ``rejected_rewards = beta * (pi_r - ref_r)``,
    detached (for logging and reward accuracy).

    Args:
        policy_chosen_logps: ``(B,)`` log pi(y_c | x).
        policy_rejected_logps: ``(B,)`` log pi(y_r | x).
        ref_chosen_logps: ``(B,)`` log pi_ref(y_c | x).
        ref_rejected_logps: ``(B,)`` log pi_ref(y_r | x).
        beta: the KL-regularisation strength (DPO beta; IPO tau).
        label_smoothing: cDPO's label-noise rate eps in [0, 0.5].
        loss_type: "sigmoid" or "ipo".

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each ``(B,)``; the rewards are detached.
    """
    z = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)  # (B,)
    if loss_type == "sigmoid":
        losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * z) - label_smoothing * F.logsigmoid(-beta * z)
    elif loss_type == "ipo":
        losses = (z - 1.0 / (2.0 * beta)).square()
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; expected one of {DPO_LOSS_TYPES}")
    chosen_rewards = (beta * (policy_chosen_logps - ref_chosen_logps)).detach()  # (B,)
    rejected_rewards = (beta * (policy_rejected_logps - ref_rejected_logps)).detach()  # (B,)
    return losses, chosen_rewards, rejected_rewards
