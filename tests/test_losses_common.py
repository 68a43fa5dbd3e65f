"""Shared helpers of losses/: log-probs from logits, masked reductions, Pearson, log_ndtr; and purity."""

import ast
import math
import pathlib
import sys

import pytest
import torch

from losses import entropy_from_logits, log_probs_from_logits, masked_mean
from losses.common import RunningMoments, explained_variance, log_ndtr, masked_var, pearson

LOSSES_DIR = pathlib.Path(__file__).resolve().parents[1] / "losses"


def _reference_log_probs(logits, labels):
    return torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


# ---------------------------------------------------------------------------------------- purity


def test_losses_import_only_torch_math_and_stdlib():
    allowed_roots = {"torch", "math", "losses", "__future__"} | set(sys.stdlib_module_names)
    forbidden = {"ray", "deepspeed", "orchestrator", "actors", "cluster", "numpy", "transformers"}
    files = sorted(LOSSES_DIR.glob("*.py"))
    assert len(files) >= 8
    for path in files:
        source = path.read_text()
        assert "torch.distributed" not in source, path
        for node in ast.walk(ast.parse(source)):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            for name in names:
                root = name.split(".")[0]
                assert root in allowed_roots and root not in forbidden, f"{path.name} imports {name}"


def test_every_public_function_has_a_docstring_with_a_formula_or_source():
    import losses.advantages, losses.dpo, losses.kl, losses.ppo, losses.preference, losses.relevance, losses.rewards  # noqa: E401

    for module in (losses.advantages, losses.kl, losses.ppo, losses.dpo, losses.preference, losses.relevance,
                   losses.common, losses.rewards):
        for name in module.__all__:
            obj = getattr(module, name)
            if callable(obj):
                assert obj.__doc__ and len(obj.__doc__.strip()) > 40, f"{module.__name__}.{name}"


# ------------------------------------------------------------------------- log_probs_from_logits


def test_log_probs_from_logits_matches_log_softmax_fp32():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 50, generator=gen) * 5
    labels = torch.randint(0, 50, (3, 7), generator=gen)
    out = log_probs_from_logits(logits, labels)
    assert out.dtype == torch.float32 and out.shape == (3, 7)
    torch.testing.assert_close(out, _reference_log_probs(logits, labels), rtol=0, atol=2e-6)


def test_log_probs_from_logits_hand_value():
    # logits (0, log 3): softmax = (1/4, 3/4), so log p(1) = log 0.75 and log p(0) = log 0.25.
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]], dtype=torch.float64)
    out = log_probs_from_logits(logits, torch.tensor([1, 0]))
    torch.testing.assert_close(out, torch.tensor([math.log(0.75), math.log(0.25)], dtype=torch.float64),
                               rtol=0, atol=1e-15)


def test_log_probs_from_logits_gradient_matches_autograd_reference():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 6, 33, generator=gen, requires_grad=True)
    labels = torch.randint(0, 33, (4, 6), generator=gen)
    weights = torch.randn(4, 6, generator=gen)
    (log_probs_from_logits(logits, labels) * weights).sum().backward()
    ours = logits.grad.clone()
    logits.grad = None
    (_reference_log_probs(logits, labels) * weights).sum().backward()
    torch.testing.assert_close(ours, logits.grad, rtol=0, atol=1e-6)


def test_log_probs_from_logits_gradcheck_float64_with_blocks():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 5, (2, 3), generator=gen)
    # block_numel=5: one row per block, exercising the block walk in both passes.
    assert torch.autograd.gradcheck(lambda x: log_probs_from_logits(x, labels, block_numel=5), (logits,))


@pytest.mark.parametrize("block_numel", [1, 7, 40, 10**9])
def test_log_probs_from_logits_blocks_and_non_contiguous_views(block_numel):
    gen = torch.Generator().manual_seed(3)
    full = torch.randn(3, 6, 20, generator=gen, requires_grad=True)
    logits = full[:, :-1]  # (3, 5, 20), not viewable as (15, 20)
    assert not logits.is_contiguous()
    labels = torch.randint(0, 20, (3, 5), generator=gen)
    weights = torch.randn(3, 5, generator=gen)
    out = log_probs_from_logits(logits, labels, block_numel=block_numel)
    torch.testing.assert_close(out, _reference_log_probs(logits, labels), rtol=0, atol=2e-6)
    # the gradient through the view, whether the backward returns its one block or fills blocks in
    (out * weights).sum().backward()
    ours = full.grad.clone()
    full.grad = None
    (_reference_log_probs(full[:, :-1], labels) * weights).sum().backward()
    torch.testing.assert_close(ours, full.grad, rtol=0, atol=1e-6)
    assert bool((ours[:, -1] == 0).all())


def test_log_probs_from_logits_bf16_reduces_in_fp32():
    gen = torch.Generator().manual_seed(4)
    logits = (torch.randn(2, 9, 300, generator=gen) * 4).bfloat16().requires_grad_()
    labels = torch.randint(0, 300, (2, 9), generator=gen)
    out = log_probs_from_logits(logits, labels, block_numel=600)
    assert out.dtype == torch.float32
    # Reference: the same bf16 values, log-softmax in fp32.
    ref_logits = logits.detach().float().requires_grad_()
    ref = _reference_log_probs(ref_logits, labels)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    out.sum().backward()
    ref.sum().backward()
    assert logits.grad.dtype == torch.bfloat16
    # The gradient is computed in fp32 and rounded once to bf16 (relative precision 2^-8).
    torch.testing.assert_close(logits.grad.float(), ref_logits.grad, rtol=2**-8, atol=1e-6)


def test_log_probs_from_logits_extreme_logits_are_finite():
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 3.0]], requires_grad=True)
    out = log_probs_from_logits(logits, torch.tensor([1, 1]))
    out.sum().backward()
    # Row 0: log p(1) = -1e4 - logsumexp = -2e4 (the other terms vanish); row 1: log p(1) = 0.
    torch.testing.assert_close(out.detach(), torch.tensor([-2e4, 0.0]), rtol=1e-6, atol=0)
    assert torch.isfinite(logits.grad).all()


# ----------------------------------------------------------------------------- masked reductions


def test_masked_mean_and_var_hand_values_ignore_garbage():
    # Valid values 1, 2, 3, 6: mean 3, squared deviations 4, 1, 0, 9 -> sum 14;
    # unbiased var 14 / 3, biased var 14 / 4.
    x = torch.tensor([[1.0, 2.0, float("nan")], [3.0, 6.0, float("inf")]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    assert masked_mean(x, mask).item() == 3.0
    torch.testing.assert_close(masked_var(x, mask), torch.tensor(14 / 3), rtol=1e-7, atol=0)
    torch.testing.assert_close(masked_var(x, mask, unbiased=False), torch.tensor(3.5), rtol=1e-7, atol=0)
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([1.5, 4.5]))


def test_masked_mean_with_no_valid_element_is_zero():
    x = torch.tensor([[5.0, 7.0]])
    mask = torch.zeros(1, 2)
    assert masked_mean(x, mask).item() == 0.0
    assert masked_var(x, mask).item() == 0.0
    assert masked_var(torch.tensor([4.0]), torch.tensor([1])).item() == 0.0  # one element: 0, not nan


# ---------------------------------------------------------------------------------------- pearson


def test_pearson_hand_values():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    # Exact linear relations: +1 and -1.
    torch.testing.assert_close(pearson(x, 2 * x + 1), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(pearson(x, -x), torch.tensor(-1.0, dtype=torch.float64))
    # y = (1, 3, 2, 4): xc = (-1.5, -.5, .5, 1.5), yc = (-1.5, .5, -.5, 1.5):
    # sum xc*yc = 2.25 - .25 - .25 + 2.25 = 4, |xc|^2 = |yc|^2 = 5 -> rho = 4 / 5.
    y = torch.tensor([1.0, 3.0, 2.0, 4.0], dtype=torch.float64)
    torch.testing.assert_close(pearson(x, y), torch.tensor(0.8, dtype=torch.float64), rtol=0, atol=1e-15)


def test_pearson_constant_input_is_zero_with_finite_gradient():
    x = torch.ones(5, requires_grad=True)
    y = torch.arange(5.0)
    rho = pearson(x, y)
    rho.backward()
    assert rho.item() == 0.0 and torch.isfinite(x.grad).all()


# --------------------------------------------------------------------------------------- log_ndtr


def test_log_ndtr_matches_erfc_and_is_continuous_at_the_cut():
    x = torch.tensor([-40.0, -25.0, -20.0001, -20.0, -19.9999, -3.0, 0.0, 2.0], dtype=torch.float64)
    # log Phi(x) = log(erfc(-x / sqrt 2) / 2), exact in float64 for these x (erfc(28) ~ 1e-343 is not,
    # so use the torch float64 value as the reference only where erfc does not underflow).
    expected = torch.tensor([math.log(0.5 * math.erfc(-v / math.sqrt(2))) if v > -26 else float("nan")
                             for v in x.tolist()], dtype=torch.float64)
    got = log_ndtr(x)
    ok = ~torch.isnan(expected)
    torch.testing.assert_close(got[ok], expected[ok], rtol=1e-12, atol=0)
    torch.testing.assert_close(got[0], torch.special.log_ndtr(x[0]), rtol=1e-12, atol=0)


def test_log_ndtr_tail_gradient_is_accurate_in_float32():
    # d/dx log Phi(x) = phi(x) / Phi(x) = -x - 1/x + 2/x^3 + O(x^-5) for x -> -inf.
    x = torch.tensor([-1e3, -1e5, -1e8], requires_grad=True)
    log_ndtr(x).sum().backward()
    expected = -x.detach() - 1 / x.detach()
    torch.testing.assert_close(x.grad, expected, rtol=1e-6, atol=0)
    # The value: -x^2/2 - log(-x) - log(2 pi)/2 to float32 precision.
    v = torch.tensor(-1e3)
    assert log_ndtr(v).item() == pytest.approx(-5e5 - math.log(1e3) - 0.5 * math.log(2 * math.pi), rel=1e-7)


# ---------------------------------------------------------------------------------------- entropy


def test_entropy_hand_values():
    # uniform over 2: log 2; p = (1/4, 3/4) from logits (0, log 3): -(1/4 log 1/4 + 3/4 log 3/4)
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]], dtype=torch.float64)
    expected = [math.log(2.0), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]
    assert entropy_from_logits(logits).tolist() == pytest.approx(expected, abs=1e-12)
    # a shift of all logits changes nothing; a near-one-hot distribution has entropy near 0
    assert entropy_from_logits(logits + 7.0).tolist() == pytest.approx(expected, abs=1e-12)
    assert entropy_from_logits(torch.tensor([[0.0, 60.0]], dtype=torch.float64)).item() < 1e-20


@pytest.mark.parametrize("block_numel", [1, 7, 2**24])
def test_entropy_value_and_gradient_match_the_softmax_formula(block_numel):
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(3, 6, 40, generator=gen, dtype=torch.float64) * 3
    grad_out = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    x1 = base.clone().requires_grad_()
    h = entropy_from_logits(x1[:, :-1], block_numel=block_numel)  # a non-contiguous view
    (h * grad_out).sum().backward()
    x2 = base.clone().requires_grad_()
    p = torch.softmax(x2[:, :-1], -1)
    ref = -(p * torch.log_softmax(x2[:, :-1], -1)).sum(-1)
    (ref * grad_out).sum().backward()
    torch.testing.assert_close(h, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-10, atol=1e-12)
    assert entropy_from_logits(base.to(torch.bfloat16)).dtype == torch.float32  # 16-bit input reduced in fp32


# ----------------------------------------------------------------------- explained variance, moments


def test_explained_variance_by_hand_ignores_masked_garbage():
    # R = (1, 2, 3, 4): mean 2.5, unbiased Var = 5/3. R - V = (0, 0, 0, -1): mean -0.25,
    # squared deviations 3 x 0.0625 + 0.5625 = 0.75, Var = 0.25. EV = 1 - 0.25 / (5/3) = 0.85.
    returns = torch.tensor([[1.0, 2.0, 99.0], [3.0, 4.0, float("nan")]], dtype=torch.float64)
    values = torch.tensor([[1.0, 2.0, -5.0], [3.0, 5.0, float("inf")]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    assert explained_variance(values, returns, mask).item() == pytest.approx(0.85, abs=1e-12)
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0, abs=1e-12)  # a perfect critic
    assert math.isnan(explained_variance(values, torch.ones_like(returns), mask).item())  # returns do not vary


def test_running_moments_by_hand_and_against_two_pass_statistics():
    m = RunningMoments()
    assert m.std == 1.0  # nothing seen yet
    m.update(torch.tensor([1.0, 2.0, 3.0]))
    m.update(torch.tensor([]))  # no-op
    m.update(torch.tensor([4.0, 5.0]))
    # all values 1..5: mean 3, M2 = 4 + 1 + 0 + 1 + 4 = 10, std = sqrt(10 / 4)
    assert (m.count, m.mean, m.m2) == (5, pytest.approx(3.0, abs=1e-15), pytest.approx(10.0, abs=1e-12))
    assert m.std == pytest.approx(math.sqrt(2.5), abs=1e-12)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, generator=gen) * 3 + 1 for n in (1, 7, 64, 2)]
    m2 = RunningMoments()
    for b in batches:
        m2.update(b)
    everything = torch.cat(batches).double()
    assert m2.mean == pytest.approx(everything.mean().item(), abs=1e-12)
    assert m2.std == pytest.approx(everything.std().item(), abs=1e-12)
    resumed = RunningMoments()
    resumed.load_state_dict(m2.state_dict())
    assert (resumed.count, resumed.mean, resumed.m2) == (m2.count, m2.mean, m2.m2)
