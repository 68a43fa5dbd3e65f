"""GAE and whitening: hand-computed values, a naive reference, and masking invariances."""

import math

import pytest
import torch

from losses.advantages import gae, whiten

F64 = torch.float64


def _naive_gae(rewards, values, mask, gamma, lam):
    """Reference: per row, take the valid positions in order and run the textbook recursion in Python."""
    adv = torch.zeros_like(rewards)
    ret = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        idx = [t for t in range(rewards.shape[1]) if mask[b, t]]
        next_v, next_a = 0.0, 0.0
        for t in reversed(idx):
            r, v = rewards[b, t].item(), values[b, t].item()
            delta = r + gamma * next_v - v
            a = delta + gamma * lam * next_a
            adv[b, t], ret[b, t] = a, a + v
            next_v, next_a = v, a
    return adv, ret


def test_gae_hand_computed_three_steps():
    # gamma = lam = 1/2, r = (1, 0, 2), V = (0.5, 1.0, 1.5), V after the last token = 0:
    #   t=2: delta = 2 + 0.5*0 - 1.5 = 0.5            A2 = 0.5
    #   t=1: delta = 0 + 0.5*1.5 - 1.0 = -0.25        A1 = -0.25 + 0.25*0.5 = -0.125
    #   t=0: delta = 1 + 0.5*1.0 - 0.5 = 1.0          A0 = 1.0 + 0.25*(-0.125) = 0.96875
    #   returns = A + V = (1.46875, 0.875, 2.0)
    # Row 2 has mask (1, 1, 0, 0); its garbage after the end must not matter:
    #   t=1: delta = 0 + 0 - 1.0 = -1.0               A1 = -1.0
    #   t=0: delta = 1 + 0.5*1.0 - 0.5 = 1.0          A0 = 1.0 + 0.25*(-1.0) = 0.75
    #   returns = (1.25, 0.0)
    rewards = torch.tensor([[1.0, 0.0, 2.0, 0.0], [1.0, 0.0, 9.0, 9.0]], dtype=F64)
    values = torch.tensor([[0.5, 1.0, 1.5, 0.0], [0.5, 1.0, 7.0, 7.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.5, lam=0.5)
    expected_adv = torch.tensor([[0.96875, -0.125, 0.5, 0.0], [0.75, -1.0, 0.0, 0.0]], dtype=F64)
    expected_ret = torch.tensor([[1.46875, 0.875, 2.0, 0.0], [1.25, 0.0, 0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(adv, expected_adv, rtol=0, atol=1e-15)
    torch.testing.assert_close(ret, expected_ret, rtol=0, atol=1e-15)


def test_gae_with_gamma_lam_one_is_monte_carlo_return_minus_value():
    # gamma = lam = 1: A_t = sum_{k >= t} r_k - V_t (the value terms telescope).
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randn(3, 6, generator=gen, dtype=F64)
    values = torch.randn(3, 6, generator=gen, dtype=F64)
    mask = torch.ones(3, 6, dtype=torch.bool)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    mc = rewards.flip(1).cumsum(1).flip(1)
    torch.testing.assert_close(adv, mc - values, rtol=0, atol=1e-12)
    torch.testing.assert_close(ret, mc, rtol=0, atol=1e-12)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.9), (0.5, 0.0), (0.9, 1.0)])
def test_gae_matches_naive_reference_with_right_padding(gamma, lam):
    gen = torch.Generator().manual_seed(1)
    batch, steps = 5, 9
    rewards = torch.randn(batch, steps, generator=gen, dtype=F64)
    values = torch.randn(batch, steps, generator=gen, dtype=F64)
    lengths = torch.tensor([9, 1, 5, 0, 7])  # includes a full row and an all-masked row
    mask = torch.arange(steps)[None, :] < lengths[:, None]
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    ref_adv, ref_ret = _naive_gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, ref_adv, rtol=0, atol=1e-12)
    torch.testing.assert_close(ret, ref_ret, rtol=0, atol=1e-12)
    assert (adv[3] == 0).all() and (ret[3] == 0).all()  # an all-zero mask gives zeros


def test_gae_skips_holes_like_the_reference():
    # Beyond the right-padded contract: a masked hole is skipped (token 1 bootstraps from token 3).
    gen = torch.Generator().manual_seed(2)
    rewards = torch.randn(2, 6, generator=gen, dtype=F64)
    values = torch.randn(2, 6, generator=gen, dtype=F64)
    mask = torch.tensor([[1, 1, 0, 1, 1, 0], [0, 1, 1, 0, 1, 1]], dtype=torch.bool)
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    ref_adv, ref_ret = _naive_gae(rewards, values, mask, 0.9, 0.8)
    torch.testing.assert_close(adv, ref_adv, rtol=0, atol=1e-12)
    torch.testing.assert_close(ret, ref_ret, rtol=0, atol=1e-12)


def test_gae_garbage_at_masked_positions_changes_nothing():
    gen = torch.Generator().manual_seed(3)
    rewards = torch.randn(4, 8, generator=gen)
    values = torch.randn(4, 8, generator=gen)
    mask = torch.arange(8)[None, :] < torch.tensor([8, 3, 0, 6])[:, None]
    adv, ret = gae(rewards, values, mask)
    for garbage in (torch.randn(4, 8, generator=gen) * 1e3, torch.full((4, 8), float("nan")),
                    torch.full((4, 8), float("inf"))):
        r2 = torch.where(mask, rewards, garbage)
        v2 = torch.where(mask, values, -garbage)
        adv2, ret2 = gae(r2, v2, mask)
        assert torch.equal(adv, adv2) and torch.equal(ret, ret2)
    assert (adv[~mask] == 0).all() and (ret[~mask] == 0).all()


# ------------------------------------------------------------------------------------------ whiten


def test_whiten_hand_values():
    # Valid x = (1, 2, 3): mean 2, unbiased var ((-1)^2 + 0 + 1^2) / (3 - 1) = 1.
    x = torch.tensor([[1.0, 2.0], [3.0, 100.0]], dtype=F64)
    mask = torch.tensor([[1, 1], [1, 0]])
    scale = 1 / math.sqrt(1 + 1e-8)
    torch.testing.assert_close(whiten(x, mask), torch.tensor([[-scale, 0.0], [scale, 0.0]], dtype=F64),
                               rtol=0, atol=1e-15)
    # shift_mean=False adds the mean back: (x - 2) / 1 + 2.
    torch.testing.assert_close(whiten(x, mask, shift_mean=False),
                               torch.tensor([[2 - scale, 2.0], [2 + scale, 0.0]], dtype=F64), rtol=0, atol=1e-15)


def test_whiten_statistics_and_garbage_invariance():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(6, 10, generator=gen, dtype=F64) * 3 + 5
    mask = torch.arange(10)[None, :] < torch.tensor([10, 4, 1, 7, 0, 9])[:, None]
    out = whiten(x, mask)
    valid = out[mask]
    assert abs(valid.mean().item()) < 1e-12
    assert valid.std(unbiased=True).item() == pytest.approx(1.0 / math.sqrt(1 + 1e-8 / x[mask].var().item()), abs=1e-12)
    assert (out[~mask] == 0).all()
    for garbage in (torch.full_like(x, float("nan")), torch.randn(6, 10, generator=gen, dtype=F64) * 1e6):
        assert torch.equal(whiten(torch.where(mask, x, garbage), mask), out)


def test_whiten_constant_input_is_finite():
    x = torch.full((2, 3), 4.0)
    out = whiten(x, torch.ones(2, 3))
    assert torch.equal(out, torch.zeros(2, 3))


# ------------------------------------------------------------------ critic-free estimators (issue 16)

from losses.advantages import grpo_advantages, reinforce_pp_advantages, rloo_advantages  # noqa: E402


def test_grpo_hand_computed():
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0], dtype=F64)
    # group 1: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = sqrt(1/3); group 2: all equal -> 0
    s = math.sqrt(1 / 3)
    want = torch.tensor([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s, 0, 0, 0, 0], dtype=F64)
    assert torch.allclose(grpo_advantages(scores, 4, eps=1e-12), want, atol=1e-9)
    assert torch.allclose(grpo_advantages(scores, 4), 0.5 / (s + 1e-6) * want.sign(), atol=1e-12)
    # Dr. GRPO: no std division
    assert torch.allclose(grpo_advantages(scores, 4, scale_by_std=False),
                          torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0], dtype=F64), atol=1e-12)
    # groups are contiguous rows: reordering groups reorders the output the same way
    swapped = torch.cat([scores[4:], scores[:4]])
    assert torch.allclose(grpo_advantages(swapped, 4), torch.cat([grpo_advantages(scores, 4)[4:], grpo_advantages(scores, 4)[:4]]))


def test_rloo_hand_computed():
    scores = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 8.0], dtype=F64)
    # group 1: 1 - (2+3)/2, 2 - (1+3)/2, 3 - (1+2)/2; group 2: 5 - 6.5, 5 - 6.5, 8 - 5
    want = torch.tensor([-1.5, 0.0, 1.5, -1.5, -1.5, 3.0], dtype=F64)
    assert torch.allclose(rloo_advantages(scores, 3), want, atol=1e-12)
    # = k/(k-1) x the Dr. GRPO advantage
    assert torch.allclose(rloo_advantages(scores, 3), 1.5 * grpo_advantages(scores, 3, scale_by_std=False), atol=1e-12)


def test_reinforce_pp_hand_computed():
    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 7.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # gamma 1: returns-to-go [3, 2, 2] and [1, 1, -]; over the 5 valid: mean 1.8, unbiased var 2.8 / 4 = 0.7
    sd = math.sqrt(0.7 + 1e-8)
    want = torch.tensor([[1.2 / sd, 0.2 / sd, 0.2 / sd], [-0.8 / sd, -0.8 / sd, 0.0]], dtype=F64)
    assert torch.allclose(reinforce_pp_advantages(rewards, mask), want, atol=1e-9)
    # gamma 1/2: row 0 returns [1 + 0.5 * 1, 0 + 0.5 * 2, 2] = [1.5, 1, 2]; row 1 [0.5, 1]
    g = torch.tensor([1.5, 1.0, 2.0, 0.5, 1.0], dtype=F64)
    z = (g - g.mean()) / torch.sqrt(g.var(correction=1) + 1e-8)
    got = reinforce_pp_advantages(rewards, mask, gamma=0.5)
    assert torch.allclose(got[mask.bool()], z, atol=1e-9) and got[1, 2] == 0


@pytest.mark.parametrize("fn", [grpo_advantages, rloo_advantages])
def test_group_estimators_refuse_bad_groups(fn):
    with pytest.raises(ValueError, match="group_size >= 2"):
        fn(torch.ones(4), 1)
    with pytest.raises(ValueError, match="do not split into groups of 3"):
        fn(torch.ones(4), 3)
    with pytest.raises(ValueError, match=r"\(B,\) sequence scores"):
        fn(torch.ones(2, 2), 2)
