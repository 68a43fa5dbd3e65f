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
