"""PPO's per-token reward (`losses.rewards.shape_rewards`): hand-computed values, the shaping order,
and that garbage off the mask changes nothing."""

import math

import pytest
import torch

from losses.common import RunningMoments
from losses.rewards import last_index, shape_rewards

F64 = torch.float64


def test_last_index_of_right_padded_masks():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    assert last_index(mask).tolist() == [2, 0, 3, 0]


def test_kl_penalty_on_every_token_and_the_score_on_the_last():
    # k1: KL_t = log pi - log pi_ref. Row 0: 3 tokens, KL (0.2, -0.1, 0.4); row 1: 1 token, KL 0.5.
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, 7.0], [-0.5, 9.0, 9.0, 9.0]], dtype=F64)
    ref = torch.tensor([[-1.2, -1.9, -0.9, -3.0], [-1.0, 0.0, 0.0, 0.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    out = shape_rewards(torch.tensor([1.0, 2.0]), logprobs, ref, mask, torch.tensor([True, False]), kl_coef=0.1)
    expected = [[-0.02, 0.01, -0.04 + 1.0, 0.0], [-0.05 + 2.0, 0.0, 0.0, 0.0]]
    torch.testing.assert_close(out.rewards, torch.tensor(expected, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(out.kl, torch.tensor([[0.2, -0.1, 0.4, 0.0], [0.5, 0, 0, 0]], dtype=F64), rtol=0, atol=1e-12)
    assert out.scores.tolist() == [1.0, 2.0]


def test_score_shaping_order_penalty_then_normalisation_then_clip():
    """no-EOS penalty 0.5 on row 1: scores (3, 1 - 0.5) = (3, 0.5); running moments over them: mean 1.75,
    std sqrt(((1.25)^2 x 2) / 1) = 1.7678; standardised (0.7071, -0.7071); clipped to 0.5: (0.5, -0.5)."""
    zeros = torch.zeros(2, 2, dtype=F64)
    mask = torch.ones(2, 2, dtype=torch.long)
    moments = RunningMoments()
    out = shape_rewards(torch.tensor([3.0, 1.0]), zeros, zeros, mask, torch.tensor([True, False]), kl_coef=0.1,
                        no_eos_penalty=0.5, moments=moments, reward_clip=0.5)
    assert moments.count == 2 and moments.mean == pytest.approx(1.75)
    assert out.scores.tolist() == pytest.approx([0.5, -0.5])
    unclipped = shape_rewards(torch.tensor([3.0, 1.0]), zeros, zeros, mask, torch.tensor([True, False]), kl_coef=0.1,
                              no_eos_penalty=0.5, moments=RunningMoments())
    assert unclipped.scores.tolist() == pytest.approx([1.25 / math.sqrt(3.125), -1.25 / math.sqrt(3.125)], abs=1e-6)
    assert out.rewards[:, 1].tolist() == pytest.approx([0.5, -0.5]) and out.rewards[:, 0].tolist() == [0.0, 0.0]


def test_length_penalty_per_response_token_before_normalisation():
    """reward.length_penalty 0.1 per token: rows of 3 and 1 response tokens, scores (1, 1) -> (0.7, 0.9);
    with running moments the penalised scores are standardised: mean 0.8, std 0.1414 -> (-0.7071, 0.7071)."""
    zeros = torch.zeros(2, 3, dtype=F64)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    eos = torch.tensor([True, True])
    out = shape_rewards(torch.tensor([1.0, 1.0]), zeros, zeros, mask, eos, kl_coef=0.0, length_penalty=0.1)
    assert out.scores.tolist() == pytest.approx([0.7, 0.9])
    assert out.rewards[0].tolist() == pytest.approx([0, 0, 0.7]) and out.rewards[1].tolist() == pytest.approx([0.9, 0, 0])
    normed = shape_rewards(torch.tensor([1.0, 1.0]), zeros, zeros, mask, eos, kl_coef=0.0, length_penalty=0.1,
                           moments=RunningMoments())
    assert normed.scores.tolist() == pytest.approx([-1 / math.sqrt(2), 1 / math.sqrt(2)], abs=1e-5)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_garbage_off_the_mask_changes_nothing_and_an_empty_row_gets_no_score(estimator):
    gen = torch.Generator().manual_seed(0)
    logprobs, ref = torch.randn(3, 5, generator=gen, dtype=F64), torch.randn(3, 5, generator=gen, dtype=F64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    scores, ended = torch.tensor([1.0, -1.0, 5.0]), torch.tensor([True, True, False])
    clean = shape_rewards(scores, logprobs, ref, mask, ended, kl_coef=0.2, kl_estimator=estimator)
    noisy_lp, noisy_ref = logprobs.clone(), ref.clone()
    noisy_lp[mask == 0], noisy_ref[mask == 0] = float("nan"), float("inf")
    noisy = shape_rewards(scores, noisy_lp, noisy_ref, mask, ended, kl_coef=0.2, kl_estimator=estimator)
    torch.testing.assert_close(noisy.rewards, clean.rewards, rtol=0, atol=0)
    assert clean.rewards[2].abs().sum() == 0  # an empty response: no token to put the score on
