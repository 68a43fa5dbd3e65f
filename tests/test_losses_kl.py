"""KL estimators k1, k2, k3 (Schulman 2020): hand values, properties and the optional clamp."""

import math

import pytest
import torch

from losses.kl import kl_penalty

F64 = torch.float64


def test_kl_estimators_hand_values():
    # log r = logprobs - ref_logprobs = (0.5, -1.0, 0.0):
    #   k1 = log r                      = (0.5, -1.0, 0)
    #   k2 = (log r)^2 / 2              = (0.125, 0.5, 0)
    #   k3 = exp(-log r) - 1 + log r    = (e^-0.5 - 0.5, e^1 - 2, 0)
    logprobs = torch.tensor([[-1.0, -3.0, -2.0]], dtype=F64)
    ref = torch.tensor([[-1.5, -2.0, -2.0]], dtype=F64)
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k1"), torch.tensor([[0.5, -1.0, 0.0]], dtype=F64))
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k2"), torch.tensor([[0.125, 0.5, 0.0]], dtype=F64))
    expected_k3 = torch.tensor([[math.exp(-0.5) - 0.5, math.e - 2.0, 0.0]], dtype=F64)
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k3"), expected_k3, rtol=1e-15, atol=1e-15)
    assert kl_penalty(logprobs, ref).equal(kl_penalty(logprobs, ref, "k1"))  # k1 is the default


def test_k3_is_nonnegative_and_unbiased_in_expectation():
    # E_{y ~ pi}[k1] = E[k3] = KL(pi || pi_ref), computed exactly over a 4-token vocabulary.
    pi = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)
    ref = torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=F64)
    exact = (pi * (pi / ref).log()).sum()
    for est in ("k1", "k3"):
        expectation = (pi * kl_penalty(pi.log(), ref.log(), est)).sum()
        torch.testing.assert_close(expectation, exact, rtol=1e-14, atol=1e-15)
    log_r = torch.linspace(-30, 30, 121, dtype=F64)
    assert (kl_penalty(log_r, torch.zeros_like(log_r), "k3") >= 0).all()


def test_k3_is_accurate_near_zero():
    # For small x = log r: k3 = e^-x - 1 + x = x^2/2 - x^3/6 + ...; expm1 keeps it accurate in float32.
    x = torch.tensor([1e-4, -1e-4])
    k3 = kl_penalty(x, torch.zeros(2), "k3")
    expected = x.double() ** 2 / 2 - x.double() ** 3 / 6
    torch.testing.assert_close(k3.double(), expected, rtol=1e-3, atol=0)


def test_log_ratio_clamp_is_optional_and_documented_behaviour():
    logprobs = torch.tensor([-200.0, 0.0])
    ref = torch.tensor([0.0, -200.0])  # log r = (-200, 200)
    unclamped = kl_penalty(logprobs, ref, "k3")
    assert torch.isinf(unclamped[0])  # exp(200) overflows float32: exact maths, no hidden clamp
    clamped = kl_penalty(logprobs, ref, "k3", log_ratio_clamp=20.0)
    torch.testing.assert_close(clamped, torch.tensor([math.exp(20.0) - 21.0, math.exp(-20.0) - 1.0 + 20.0]))
    assert torch.isfinite(clamped).all()


def test_unknown_estimator_raises():
    with pytest.raises(ValueError, match="k4"):
        kl_penalty(torch.zeros(1), torch.zeros(1), "k4")


# -------------------------------------------------------------------------------- KL controller


def test_kl_controller_is_fixed_without_a_target():
    from losses.kl import KLController

    ctl = KLController(0.05)
    for kl in (0.0, 3.0, 100.0):
        ctl.update(kl, 64)
    assert ctl.coef == 0.05


def test_adaptive_kl_controller_by_hand():
    """Ziegler et al. 2019: e = clip(KL / target - 1, -0.2, 0.2), beta <- beta (1 + e n / horizon)."""
    from losses.kl import KLController

    ctl = KLController(0.1, target=6.0, horizon=10000)
    ctl.update(9.0, 64)  # e = clip(0.5) = 0.2: beta = 0.1 x (1 + 0.2 x 64 / 10000) = 0.1 x 1.00128
    assert ctl.coef == pytest.approx(0.100128, rel=1e-12)
    ctl.update(6.6, 100)  # e = 0.1, inside the clip: x (1 + 0.1 x 100 / 10000) = x 1.001
    assert ctl.coef == pytest.approx(0.100128 * 1.001, rel=1e-12)
    ctl.update(1.0, 500)  # e = clip(-5/6) = -0.2: x (1 - 0.2 x 500 / 10000) = x 0.99
    assert ctl.coef == pytest.approx(0.100128 * 1.001 * 0.99, rel=1e-12)
    resumed = KLController(0.1, target=6.0, horizon=10000)
    resumed.load_state_dict(ctl.state_dict())
    ctl.update(7.2, 64), resumed.update(7.2, 64)
    assert resumed.coef == ctl.coef


def test_sequence_kl_sums_tokens_and_averages_sequences():
    from losses.kl import sequence_kl

    kl = torch.tensor([[0.5, 0.25, 99.0], [1.0, float("nan"), float("inf")]])  # garbage off the mask
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert sequence_kl(kl, mask).item() == pytest.approx((0.75 + 1.0) / 2)
