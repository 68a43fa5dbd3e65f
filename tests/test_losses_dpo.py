"""DPO, cDPO and IPO: hand values, detached rewards, gradients and stability."""

import math

import pytest
import torch

from losses.dpo import dpo_loss

F64 = torch.float64


def _softplus(x):
    return math.log1p(math.exp(x))


def _pair():
    # pi_c = -1, pi_r = -3, ref_c = ref_r = -2: z = (-1 + 3) - (-2 + 2) = 2.
    return [torch.tensor([v], dtype=F64) for v in (-1.0, -3.0, -2.0, -2.0)]


def test_dpo_sigmoid_hand_value_and_rewards():
    # beta = 0.1: loss = -log sigmoid(0.2) = softplus(-0.2).
    losses, chosen_r, rejected_r = dpo_loss(*_pair(), beta=0.1)
    assert losses.item() == pytest.approx(_softplus(-0.2), abs=1e-15)
    # rewards: beta * (pi - ref) = 0.1 * (-1 + 2) = 0.1 and 0.1 * (-3 + 2) = -0.1.
    assert chosen_r.item() == pytest.approx(0.1, abs=1e-15)
    assert rejected_r.item() == pytest.approx(-0.1, abs=1e-15)


def test_cdpo_hand_value():
    # eps = 0.1: 0.9 * softplus(-0.2) + 0.1 * softplus(0.2).
    losses, _, _ = dpo_loss(*_pair(), beta=0.1, label_smoothing=0.1)
    assert losses.item() == pytest.approx(0.9 * _softplus(-0.2) + 0.1 * _softplus(0.2), abs=1e-15)
    # eps = 0.5: both labels equally likely, the loss is symmetric in z: its gradient at z = 0 is 0.
    z = torch.zeros(1, dtype=F64, requires_grad=True)
    loss, _, _ = dpo_loss(z, torch.zeros(1, dtype=F64), torch.zeros(1, dtype=F64), torch.zeros(1, dtype=F64),
                          beta=0.1, label_smoothing=0.5)
    loss.backward()
    assert z.grad.item() == 0.0 and loss.item() == pytest.approx(math.log(2), abs=1e-15)


def test_ipo_hand_value():
    # beta = 0.1: (z - 1 / (2 * 0.1))^2 = (2 - 5)^2 = 9; label smoothing is ignored.
    losses, chosen_r, _ = dpo_loss(*_pair(), beta=0.1, loss_type="ipo")
    assert losses.item() == pytest.approx(9.0, abs=1e-12)
    assert dpo_loss(*_pair(), beta=0.1, label_smoothing=0.3, loss_type="ipo")[0].item() == pytest.approx(9.0)
    assert chosen_r.item() == pytest.approx(0.1, abs=1e-15)


def test_rewards_are_detached_and_loss_type_is_checked():
    pc = torch.tensor([-1.0], requires_grad=True)
    losses, chosen_r, rejected_r = dpo_loss(pc, torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]))
    assert losses.requires_grad and not chosen_r.requires_grad and not rejected_r.requires_grad
    with pytest.raises(ValueError, match="hinge"):
        dpo_loss(pc, pc, pc, pc, loss_type="hinge")


@pytest.mark.parametrize("loss_type,smoothing", [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0)])
def test_dpo_gradcheck_float64(loss_type, smoothing):
    gen = torch.Generator().manual_seed(0)
    inputs = tuple(torch.randn(5, generator=gen, dtype=F64, requires_grad=True) for _ in range(4))
    assert torch.autograd.gradcheck(
        lambda *x: dpo_loss(*x, beta=0.3, label_smoothing=smoothing, loss_type=loss_type)[0], inputs
    )


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_extreme_log_ratios_are_finite(loss_type):
    # beta * z up to +-1e4 (z = +-1e5 with beta = 0.1).
    pc = torch.tensor([1e5, -1e5, 0.0], requires_grad=True)
    zeros = torch.zeros(3)
    losses, _, _ = dpo_loss(pc, zeros, zeros, zeros, beta=0.1, label_smoothing=0.1, loss_type=loss_type)
    losses.sum().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(pc.grad).all()
    if loss_type == "sigmoid":
        # z = -1e5: 0.9 * softplus(1e4) + 0.1 * softplus(-1e4) = 9000 (float32 exact).
        assert losses[1].item() == pytest.approx(9000.0, rel=1e-6)
