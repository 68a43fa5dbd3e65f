"""Bradley-Terry, DPL (mean-variance, categorical), the mixture head and ODIN."""

import math

import pytest
import torch

from losses.preference import (
    annotator_types_loss,
    annotator_types_split,
    bradley_terry_loss,
    categorical_loss,
    categorical_mean,
    categorical_quantile,
    categorical_std,
    mean_variance_loss,
    mean_variance_quantile,
    mean_variance_std,
    mixture_loss,
    mixture_mean,
    mixture_quantile,
    mixture_std,
    odin_length_decorrelation,
    odin_loss,
    odin_orthogonality,
)

F64 = torch.float64
NEG_INF = float("-inf")


def _raw_for_std(std):
    """softplus^{-1}(std) = log(exp(std) - 1)."""
    return math.log(math.expm1(std))


def _phi(x):
    return 0.5 * math.erfc(-x / math.sqrt(2))


# ---------------------------------------------------------------------------------- Bradley-Terry


def test_bradley_terry_hand_value_and_extremes():
    # -log sigmoid(2 - 1) = log(1 + e^-1); a tie gives log 2.
    r_c = torch.tensor([2.0, 0.5, 1e4, -1e4], dtype=F64, requires_grad=True)
    r_r = torch.tensor([1.0, 0.5, -1e4, 1e4], dtype=F64)
    loss = bradley_terry_loss(r_c, r_r)
    loss.sum().backward()
    expected = torch.tensor([math.log1p(math.exp(-1)), math.log(2), 0.0, 2e4], dtype=F64)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-15, atol=1e-300)
    assert torch.isfinite(r_c.grad).all()


# ----------------------------------------------------------------------------- mean-variance DPL


def test_mean_variance_loss_hand_value():
    # mu_c = 1, mu_r = 0, s_c = s_r = 1: z = 1 / sqrt(2); loss = softplus(-z sqrt(2 pi)) = softplus(-sqrt(pi)).
    raw = _raw_for_std(1.0)
    out_c = torch.tensor([[1.0, raw]], dtype=F64)
    out_r = torch.tensor([[0.0, raw]], dtype=F64)
    expected = math.log1p(math.exp(-math.sqrt(math.pi)))
    assert mean_variance_loss(out_c, out_r).item() == pytest.approx(expected, abs=1e-14)
    # The penalty adds variance_penalty * (s_c^2 + s_r^2) = 0.5 * 2 = 1.
    assert mean_variance_loss(out_c, out_r, variance_penalty=0.5).item() == pytest.approx(expected + 1.0, abs=1e-14)
    # Note: the paper code's logistic form is not close to -log Phi(z) itself (0.157 vs 0.274 here); it
    # matches a probit with z scaled by sqrt(2 pi) / 1.702 ~ 1.47 (sigmoid(1.702 x) ~ Phi(x)), within 0.01.
    assert abs(expected + math.log(_phi(1 / math.sqrt(2)))) > 0.1
    assert abs(expected + math.log(_phi(math.sqrt(2 * math.pi) / 1.702 / math.sqrt(2)))) < 0.01


def test_mean_variance_std_and_quantile():
    out = torch.tensor([[2.0, _raw_for_std(0.5)]], dtype=F64)
    assert mean_variance_std(out).item() == pytest.approx(0.5, abs=1e-14)
    # q_alpha = mu + Phi^{-1}(alpha) * s: alpha = Phi(-1) gives 2 - 0.5 = 1.5; alpha = 0.5 gives mu.
    assert mean_variance_quantile(out, _phi(-1.0)).item() == pytest.approx(1.5, abs=1e-12)
    assert mean_variance_quantile(out, 0.5).item() == pytest.approx(2.0, abs=1e-14)


def test_mean_variance_gradcheck_float64():
    gen = torch.Generator().manual_seed(0)
    out_c = torch.randn(4, 2, generator=gen, dtype=F64, requires_grad=True)
    out_r = torch.randn(4, 2, generator=gen, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: mean_variance_loss(a, b, variance_penalty=0.3), (out_c, out_r))


def test_mean_variance_extremes_are_finite():
    # Mean gaps of +-1e4 and raw stds of -1e4 (softplus -> exactly 0): the clamp keeps z finite.
    out_c = torch.tensor([[1e4, -1e4], [-1e4, -1e4], [0.0, -1e4], [0.0, 50.0]], requires_grad=True)
    out_r = torch.tensor([[-1e4, -1e4], [1e4, -1e4], [0.0, -1e4], [1e4, 50.0]], requires_grad=True)
    loss = mean_variance_loss(out_c, out_r, variance_penalty=0.1)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(out_c.grad).all() and torch.isfinite(out_r.grad).all()
    assert loss[2].item() == pytest.approx(math.log(2), abs=1e-6)  # equal means: z = 0


# ------------------------------------------------------------------------------- categorical DPL


def test_categorical_ties_give_one_half():
    # Equal atoms win with weight 1/2: point masses on the same atom give P = 1/2, loss log 2.
    point = torch.tensor([[NEG_INF, 0.0, NEG_INF, NEG_INF]])
    losses, _ = categorical_loss(point, point.clone())
    assert losses.item() == pytest.approx(math.log(2), abs=1e-7)
    # Any identical pair of distributions: P(c > r) = P(r > c) and ties split, so P = 1/2.
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(1), dtype=F64)
    losses, _ = categorical_loss(logits, logits.clone())
    torch.testing.assert_close(losses, torch.full((5,), math.log(2), dtype=F64), rtol=0, atol=1e-15)


def test_categorical_hand_value_two_atoms():
    # Atoms (0, 1); p_c = (1/4, 3/4), p_r = (1/2, 1/2); w = [[1/2, 0], [1, 1/2]] (row: chosen atom).
    # P = 1/4*1/2*1/2 + 3/4*1/2*1 + 3/4*1/2*1/2 = 1/16 + 3/8 + 3/16 = 5/8.
    logits_c = torch.tensor([[0.0, math.log(3.0)]], dtype=F64)
    logits_r = torch.tensor([[0.0, 0.0]], dtype=F64)
    losses, entropy_loss = categorical_loss(logits_c, logits_r, entropy_coef=0.2)
    assert losses.item() == pytest.approx(-math.log(5 / 8), abs=1e-15)
    # Batch-mean distribution m = ((1/4 + 1/2) / 2, (3/4 + 1/2) / 2) = (3/8, 5/8);
    # entropy_loss = 0.2 * sum m log m = -0.2 * H(m).
    expected = 0.2 * (3 / 8 * math.log(3 / 8) + 5 / 8 * math.log(5 / 8))
    assert entropy_loss.item() == pytest.approx(expected, abs=1e-15)


def test_categorical_point_masses_strict_order():
    # Chosen on atom 2 and rejected on atom 1 of 3: P = 1; reversed: P = 0, an infinite loss (documented).
    c = torch.tensor([[NEG_INF, NEG_INF, 0.0]])
    r = torch.tensor([[NEG_INF, 0.0, NEG_INF]])
    assert categorical_loss(c, r)[0].item() == 0.0
    assert categorical_loss(r, c)[0].item() == float("inf")


def test_categorical_gradcheck_float64():
    gen = torch.Generator().manual_seed(2)
    logits_c = torch.randn(3, 5, generator=gen, dtype=F64, requires_grad=True)
    logits_r = torch.randn(3, 5, generator=gen, dtype=F64, requires_grad=True)

    def fn(a, b):
        losses, entropy_loss = categorical_loss(a, b, entropy_coef=0.3)
        return losses.sum() + entropy_loss

    assert torch.autograd.gradcheck(fn, (logits_c, logits_r))


def test_categorical_zero_probability_atoms_are_finite():
    # Logit gaps of 1e4 underflow probabilities to exactly 0 (float32); -inf logits are exact zeros.
    logits_c = torch.tensor([[1e4, -1e4, 0.0, -1e4], [0.0, NEG_INF, NEG_INF, 5.0]], requires_grad=True)
    logits_r = torch.tensor([[-1e4, 1e4, -1e4, -1e4], [NEG_INF, 0.0, 3.0, NEG_INF]], requires_grad=True)
    losses, entropy_loss = categorical_loss(logits_c, logits_r, entropy_coef=0.1)
    (losses.sum() + entropy_loss).backward()
    assert torch.isfinite(losses).all() and torch.isfinite(entropy_loss)
    assert torch.isfinite(logits_c.grad).all() and torch.isfinite(logits_r.grad).all()
    # Row 0: chosen all on atom 0, rejected all on atom 1 -> P = sum of exponentially small terms:
    # the dominant one is p_c(atom 2) = e^-1e4 over rejected atom 1 -> log P = -1e4 (+ tiny).
    assert losses[0].item() == pytest.approx(1e4, rel=1e-6)


def test_categorical_mean_std_and_quantile_hand_values():
    # Two atoms (0, 1), p = (1/4, 3/4): mean 3/4, std sqrt(1/4 * 3/4) = sqrt(3)/4.
    logits = torch.tensor([[0.0, math.log(3.0)]], dtype=F64)
    assert categorical_mean(logits).item() == pytest.approx(0.75, abs=1e-15)
    assert categorical_std(logits).item() == pytest.approx(math.sqrt(3) / 4, abs=1e-15)
    # Cells of width d = 1 centred on the atoms: knots (-0.5, 0), (0.5, 1/4), (1.5, 1).
    # alpha = 1/2 falls in cell 1: -0.5 + 1 + (1/2 - 1/4) / (3/4) = 0.5 + 1/3.
    assert categorical_quantile(logits, 0.5).item() == pytest.approx(0.5 + 1 / 3, abs=1e-15)
    # alpha = 1/8 falls in cell 0: -0.5 + (1/8) / (1/4) = 0.
    assert categorical_quantile(logits, 0.125).item() == pytest.approx(0.0, abs=1e-15)


def test_categorical_quantile_properties():
    k = 5  # atoms 0, .25, .5, .75, 1 (d = 0.25)
    # A point mass at atom 3 has median 0.75; the alpha-quantile moves through its cell linearly.
    point = torch.full((1, k), NEG_INF)
    point[0, 3] = 0.0
    assert categorical_quantile(point, 0.5).item() == pytest.approx(0.75, abs=1e-7)
    assert categorical_quantile(point, 0.1).item() == pytest.approx(0.75 - 0.125 + 0.1 * 0.25, abs=1e-7)
    # Uniform: CDF linear from -0.125 to 1.125, q = -0.125 + 1.25 alpha.
    uniform = torch.zeros(1, k, dtype=F64)
    for alpha in (0.05, 0.3, 0.5, 0.99):
        assert categorical_quantile(uniform, alpha).item() == pytest.approx(-0.125 + 1.25 * alpha, abs=1e-14)
    # Same ranking as the DPL code's quantile (bins [i/K, (i+1)/K]): q_code = (q / d + 1/2) / K.
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(6, k, generator=gen, dtype=F64) * 2
    for alpha in (0.1, 0.5):
        probs = logits.softmax(-1)
        cdf = torch.cat([torch.zeros(6, 1, dtype=F64), probs.cumsum(-1)], dim=-1)
        i = (cdf >= alpha).double().argmax(-1) - 1
        rows = torch.arange(6)
        code = (i + (alpha - cdf[rows, i]) / (cdf[rows, i + 1] - cdf[rows, i])) / k
        ours = categorical_quantile(logits, alpha)
        torch.testing.assert_close((ours / 0.25 + 0.5) / k, code, rtol=0, atol=1e-14)


# ------------------------------------------------------------------------------------ mixture head


def _mixture(weights, means, stds, dtype=F64):
    """Build a (1, 3K) head with the given mixture weights, means and stds."""
    logits = [math.log(w) for w in weights]
    raw = [_raw_for_std(s) for s in stds]
    return torch.tensor([logits + list(means) + raw], dtype=dtype)


def test_mixture_with_one_component_is_exact_mean_variance():
    # K = 1: P = Phi((mu_c - mu_r) / sqrt(s_c^2 + s_r^2)) = Phi((1 - 0.2) / sqrt(0.25 + 1)).
    out_c = _mixture([1.0], [1.0], [0.5])
    out_r = _mixture([1.0], [0.2], [1.0])
    expected = -math.log(_phi(0.8 / math.sqrt(1.25)))
    assert mixture_loss(out_c, out_r).item() == pytest.approx(expected, abs=1e-14)


def test_mixture_hand_value_two_components():
    # Chosen: 1/2 N(0, 1) + 1/2 N(2, 1); rejected: N(1, 1) (two equal components).
    # P = 1/2 Phi(-1/sqrt 2) + 1/2 Phi(1/sqrt 2) = 1/2 (by symmetry), loss log 2.
    out_c = _mixture([0.5, 0.5], [0.0, 2.0], [1.0, 1.0])
    out_r = _mixture([0.5, 0.5], [1.0, 1.0], [1.0, 1.0])
    assert mixture_loss(out_c, out_r).item() == pytest.approx(math.log(2), abs=1e-15)
    # Chosen: 1/4 N(0, 1) + 3/4 N(3, 2^2); rejected: N(1, 1):
    # P = 1/4 Phi(-1 / sqrt 2) + 3/4 Phi(2 / sqrt 5).
    out_c = _mixture([0.25, 0.75], [0.0, 3.0], [1.0, 2.0])
    out_r = _mixture([0.5, 0.5], [1.0, 1.0], [1.0, 1.0])
    expected = -math.log(0.25 * _phi(-1 / math.sqrt(2)) + 0.75 * _phi(2 / math.sqrt(5)))
    assert mixture_loss(out_c, out_r).item() == pytest.approx(expected, abs=1e-14)


def test_mixture_win_probabilities_sum_to_one():
    gen = torch.Generator().manual_seed(4)
    out_c = torch.randn(8, 9, generator=gen, dtype=F64) * 2
    out_r = torch.randn(8, 9, generator=gen, dtype=F64) * 2
    total = torch.exp(-mixture_loss(out_c, out_r)) + torch.exp(-mixture_loss(out_r, out_c))
    torch.testing.assert_close(total, torch.ones(8, dtype=F64), rtol=0, atol=1e-14)


def test_mixture_gradcheck_float64():
    gen = torch.Generator().manual_seed(5)
    out_c = torch.randn(3, 6, generator=gen, dtype=F64, requires_grad=True)
    out_r = torch.randn(3, 6, generator=gen, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(mixture_loss, (out_c, out_r))


def test_mixture_extremes_are_finite():
    # Means 1e4 apart, stds -> 0 (raw -1e4), weight logits +-1e4 (weights exactly 0 or 1).
    out_c = torch.tensor([[1e4, -1e4, -1e4, 1e4, -1e4, -1e4], [0.0, 0.0, 0.0, 0.0, -1e4, 30.0]], requires_grad=True)
    out_r = torch.tensor([[0.0, 0.0, 1e4, -1e4, -1e4, -1e4], [0.0, -1e4, 1e4, 0.0, -1e4, -1e4]], requires_grad=True)
    loss = mixture_loss(out_c, out_r)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(out_c.grad).all() and torch.isfinite(out_r.grad).all()


def test_mixture_mean_std_and_quantile():
    # 1/4 N(0, 1) + 3/4 N(4, 2^2): mean 3; E[x^2] = 1/4 * 1 + 3/4 * (4 + 16) = 15.25; var 6.25, std 2.5.
    out = _mixture([0.25, 0.75], [0.0, 4.0], [1.0, 2.0])
    assert mixture_mean(out).item() == pytest.approx(3.0, abs=1e-14)
    assert mixture_std(out).item() == pytest.approx(2.5, abs=1e-14)
    for alpha in (0.01, 0.2, 0.5, 0.95):
        q = mixture_quantile(out, alpha).item()
        cdf = 0.25 * _phi(q) + 0.75 * _phi((q - 4.0) / 2.0)
        assert cdf == pytest.approx(alpha, abs=1e-13)
    # One component: mu + Phi^{-1}(alpha) s exactly (the bracket is a point).
    single = _mixture([1.0], [1.0], [2.0])
    assert mixture_quantile(single, _phi(-1.0)).item() == pytest.approx(-1.0, abs=1e-12)


def test_mixture_quantile_is_vectorised_and_monotone_in_alpha():
    gen = torch.Generator().manual_seed(6)
    out = torch.randn(5, 12, generator=gen, dtype=F64)
    qs = torch.stack([mixture_quantile(out, a) for a in (0.05, 0.25, 0.5, 0.75, 0.95)])  # (5 alphas, B)
    assert (qs[1:] > qs[:-1]).all()
    assert not qs.requires_grad


# ------------------------------------------------------------------------------------------- ODIN


def test_odin_length_decorrelation_hand_values():
    lengths = torch.tensor([10.0, 20.0, 30.0, 40.0], dtype=F64)
    # Length head perfectly correlated with length, quality head uncorrelated:
    # quality (1, -1, -1, 1): centred lengths (-15, -5, 5, 15) . (1, -1, -1, 1) = 0 -> rho = 0.
    quality = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=F64)
    assert odin_length_decorrelation(quality, lengths * 0.1, lengths).item() == pytest.approx(0.0, abs=1e-15)
    # Both heads equal to length: 1 - 1 + |1| = 1; quality anti-correlated: 1 - 1 + |-1| = 1.
    assert odin_length_decorrelation(lengths, lengths, lengths).item() == pytest.approx(1.0, abs=1e-15)
    assert odin_length_decorrelation(-lengths, lengths, lengths).item() == pytest.approx(1.0, abs=1e-15)


def test_odin_loss_bt_on_sum_and_length_term_over_both_responses():
    q_c, l_c = torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.5, 1.0], dtype=F64)
    q_r, l_r = torch.tensor([0.0, 0.0], dtype=F64), torch.tensor([0.5, 0.0], dtype=F64)
    len_c, len_r = torch.tensor([5.0, 10.0], dtype=F64), torch.tensor([5.0, 1.0], dtype=F64)
    bt, length_term = odin_loss(q_c, l_c, q_r, l_r, len_c, len_r)
    # Sums: chosen (1.5, 1.0), rejected (0.5, 0.0): both differences 1 -> log(1 + e^-1).
    torch.testing.assert_close(bt, torch.full((2,), math.log1p(math.exp(-1)), dtype=F64), rtol=1e-15, atol=0)
    expected = odin_length_decorrelation(torch.cat([q_c, q_r]), torch.cat([l_c, l_r]), torch.cat([len_c, len_r]))
    assert length_term.item() == pytest.approx(expected.item(), abs=1e-15)


def test_odin_orthogonality_and_gradcheck():
    # (1, 2, 0) . (2, -1, 3) = 0; (1, 1) . (2, 3) = 5; the mean over two head pairs of |.| = 2.5.
    w_q = torch.tensor([[1.0, 2.0, 0.0], [1.0, 1.0, 0.0]], dtype=F64)
    w_l = torch.tensor([[2.0, -1.0, 3.0], [2.0, 3.0, 0.0]], dtype=F64)
    assert odin_orthogonality(w_q, w_l).item() == 2.5
    gen = torch.Generator().manual_seed(7)
    inputs = [torch.randn(6, generator=gen, dtype=F64, requires_grad=True) for _ in range(4)]
    lens = [torch.rand(6, generator=gen, dtype=F64) * 100 for _ in range(2)]

    def fn(q_c, l_c, q_r, l_r):
        bt, length_term = odin_loss(q_c, l_c, q_r, l_r, *lens)
        return bt.sum() + length_term

    assert torch.autograd.gradcheck(fn, tuple(inputs))


# ----------------------------------------------------------------------------------------------- annotator types


def test_annotator_types_hand_value_two_types():
    # type 0 (pi 0.7): u(c) - u(r) = ln 3, p_0 = 3/4; type 1 (pi 0.3): u(c) - u(r) = -ln 3, p_1 = 1/4
    # P = 0.7 * 0.75 + 0.3 * 0.25 = 0.6, loss = -ln 0.6
    u_c = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    u_r = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    log_w = torch.log(torch.tensor([0.7, 0.3], dtype=torch.float64))
    loss = annotator_types_loss(u_c, u_r, log_w)
    assert loss.item() == pytest.approx(-math.log(0.6), abs=1e-12)
    p, disagreement, tie = annotator_types_split(u_c, u_r, log_w)
    assert p.item() == pytest.approx(0.6, abs=1e-12)
    # 4 * (0.7 * (0.75 - 0.6)^2 + 0.3 * (0.25 - 0.6)^2) = 4 * (0.01575 + 0.03675) = 0.21
    assert disagreement.item() == pytest.approx(0.21, abs=1e-12)
    # 4 * (0.7 * 0.75 * 0.25 + 0.3 * 0.25 * 0.75) = 4 * 0.1875 = 0.75; and 0.21 + 0.75 = 4 * 0.6 * 0.4
    assert tie.item() == pytest.approx(0.75, abs=1e-12)


def test_annotator_types_one_type_is_bradley_terry_and_never_disagrees():
    g = torch.Generator().manual_seed(0)
    u_c, u_r = torch.randn(32, 1, generator=g, dtype=torch.float64), torch.randn(32, 1, generator=g, dtype=torch.float64)
    log_w = torch.zeros(1, dtype=torch.float64)
    torch.testing.assert_close(annotator_types_loss(u_c, u_r, log_w), bradley_terry_loss(u_c[:, 0], u_r[:, 0]), rtol=0, atol=1e-12)
    p, disagreement, tie = annotator_types_split(u_c, u_r, log_w)
    assert disagreement.abs().max().item() < 1e-15
    torch.testing.assert_close(tie, 4 * p * (1 - p), rtol=0, atol=1e-12)


def test_annotator_types_dispute_against_tie():
    # a split: half the pool certain of c, half certain of r -> disagreement ~1, tie ~0, p = 1/2;
    # a toss-up: both types indifferent -> disagreement 0, tie 1, p = 1/2 as well
    log_w = torch.log(torch.tensor([0.5, 0.5], dtype=torch.float64))
    split = annotator_types_split(torch.tensor([[30.0, -30.0]], dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64), log_w)
    toss = annotator_types_split(torch.zeros(1, 2, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64), log_w)
    assert split[0].item() == pytest.approx(0.5) and toss[0].item() == pytest.approx(0.5)
    assert split[1].item() == pytest.approx(1.0, abs=1e-12) and split[2].item() < 1e-12
    assert toss[1].item() == 0.0 and toss[2].item() == pytest.approx(1.0)


def test_annotator_types_total_variance_and_extremes():
    g = torch.Generator().manual_seed(1)
    u_c, u_r = 3 * torch.randn(64, 3, generator=g, dtype=torch.float64), 3 * torch.randn(64, 3, generator=g, dtype=torch.float64)
    log_w = torch.log_softmax(torch.randn(64, 3, generator=g, dtype=torch.float64), -1)  # per-pair weights broadcast too
    p, disagreement, tie = annotator_types_split(u_c, u_r, log_w)
    torch.testing.assert_close(disagreement + tie, 4 * p * (1 - p), rtol=0, atol=1e-12)
    extreme = annotator_types_loss(torch.tensor([[-1e4, 1e4]]), torch.tensor([[1e4, -1e4]]), torch.log(torch.tensor([0.5, 0.5])))
    assert torch.isfinite(extreme).all() and extreme.item() == pytest.approx(math.log(2.0), abs=1e-5)
    worst = annotator_types_loss(torch.tensor([[-1e4]]), torch.tensor([[1e4]]), torch.zeros(1))
    assert worst.item() == pytest.approx(2e4, rel=1e-6)  # -log sigmoid(-2e4), finite


def test_annotator_types_gradcheck_float64():
    g = torch.Generator().manual_seed(2)
    u_c = torch.randn(4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    u_r = torch.randn(4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, w: annotator_types_loss(a, b, torch.log_softmax(w, -1)), (u_c, u_r, logits))
