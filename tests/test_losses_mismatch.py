"""losses.mismatch: the engine-trainer gap and the truncated importance-sampling correction (Yao et al. 2025),
against values worked out by hand, and the corrected PPO-clip term's value and gradient."""

from __future__ import annotations

import math

import pytest
import torch

from losses.mismatch import logprob_mismatch, truncated_is_weights
from losses.ppo import policy_loss

# two responses: three action tokens, then one (its last two positions padding, with garbage there)
TRAINER = torch.log(torch.tensor([[0.5, 0.2, 0.9], [0.3, 0.7, 0.1]]))
SAMPLER = torch.log(torch.tensor([[0.25, 0.4, 0.3], [0.3, 1e-30, float("nan")]]))
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


def test_mismatch_by_hand():
    m = logprob_mismatch(SAMPLER, TRAINER, MASK)
    gaps = [math.log(2), math.log(2), math.log(3), 0.0]  # |log 0.25 - log 0.5|, |log 0.4 - log 0.2|, ...
    assert m["mismatch/abs_mean"] == pytest.approx(sum(gaps) / 4, rel=1e-6)
    assert m["mismatch/abs_max"] == pytest.approx(math.log(3), rel=1e-6)
    # k3 with the sampler as the sampling policy: r = pi_trainer / pi_sampler, k3 = r - 1 - log r
    k3 = [(r - 1 - math.log(r)) for r in (2.0, 0.5, 3.0, 1.0)]
    assert m["mismatch/kl"] == pytest.approx(sum(k3) / 4, rel=1e-6)


def test_truncated_weights_by_hand():
    w, m = truncated_is_weights(TRAINER, SAMPLER, MASK, cap=2.5)
    # pi_old / pi_sampler = 0.5/0.25, 0.2/0.4, 0.9/0.3, 0.3/0.3 -> 2, 0.5, 3 (capped at 2.5), 1; 0 on padding
    torch.testing.assert_close(w, torch.tensor([[2.0, 0.5, 2.5], [1.0, 0.0, 0.0]]), rtol=1e-6, atol=0)
    assert not w.requires_grad and w.dtype == TRAINER.dtype
    assert m["tis/weight_mean"] == pytest.approx(6.0 / 4, rel=1e-6)
    assert m["tis/weight_max"] == pytest.approx(3.0, rel=1e-6)
    assert m["tis/capped_share"] == 0.25
    with pytest.raises(ValueError, match="must be >= 1"):
        truncated_is_weights(TRAINER, SAMPLER, MASK, cap=0.9)


def test_the_weights_scale_the_clipped_term_and_its_gradient_only():
    """ratio = 1 on the first row (current = old): loss_t = -A_t w_t, d loss_t / d logprob_t = -A_t w_t. On the
    second row the ratio is e^0.5 > 1 + eps with A > 0: clipped, loss -A (1 + eps) w, no gradient. The entropy
    bonus is not weighted."""
    w, _ = truncated_is_weights(TRAINER, SAMPLER, MASK, cap=2.5)
    old = TRAINER.clone()
    current = old.clone()
    current[1, 0] += 0.5
    current.requires_grad_(True)
    adv = torch.tensor([[1.0, -2.0, 0.5], [3.0, 7.0, 7.0]])
    entropy = torch.full((2, 3), 0.1)
    loss, _ = policy_loss(current, old, adv, MASK, clip_eps=0.2, is_weights=w, entropy=entropy, entropy_coef=1.0)
    expected = [[-1.0 * 2.0 - 0.1, 2.0 * 0.5 - 0.1, -0.5 * 2.5 - 0.1], [-3.0 * 1.2 * 1.0 - 0.1, 0.0, 0.0]]
    torch.testing.assert_close(loss, torch.tensor(expected), rtol=1e-6, atol=1e-7)
    loss.sum().backward()
    torch.testing.assert_close(current.grad, torch.tensor([[-2.0, 1.0, -1.25], [0.0, 0.0, 0.0]]), rtol=1e-6, atol=0)
    # without weights: the plain PPO-clip term (w = 1)
    plain, _ = policy_loss(current.detach(), old, adv, MASK, clip_eps=0.2)
    ones, _ = policy_loss(current.detach(), old, adv, MASK, clip_eps=0.2, is_weights=MASK.float())
    assert torch.equal(plain, ones)
