"""PPO policy/value losses and the aggregator: one test per clip regime, and the invariances."""

import math

import pytest
import torch

from losses.ppo import aggregate, normalizer, policy_loss, value_loss

F64 = torch.float64
EPS = 0.2


def _policy_case(ratio, advantage):
    old = torch.tensor([[-1.0]], dtype=F64)
    logprobs = (old + math.log(ratio)).requires_grad_()
    adv = torch.tensor([[advantage]], dtype=F64)
    loss, metrics = policy_loss(logprobs, old, adv, torch.ones(1, 1), clip_eps=EPS)
    loss.sum().backward()
    return loss.item(), logprobs.grad.item(), metrics


# Each case: ratio, A, expected loss, expected d loss / d logprobs, clip active.
# loss = max(-A r, -A clip(r, 0.8, 1.2)); where the unclipped term wins, d/dlogp = -A r (dr/dlogp = r).
POLICY_REGIMES = {
    # A > 0, inside: max(-2*1.1, -2*1.1) = -2.2, grad -2.2.
    "pos_adv_inside": (1.1, 2.0, -2.2, -2.2, False),
    # A > 0, above: max(-2*1.5, -2*1.2) = max(-3.0, -2.4) = -2.4, the clipped term: grad 0.
    "pos_adv_above": (1.5, 2.0, -2.4, 0.0, True),
    # A > 0, below: max(-2*0.5, -2*0.8) = max(-1.0, -1.6) = -1.0, unclipped: grad -2*0.5 = -1.0.
    "pos_adv_below": (0.5, 2.0, -1.0, -1.0, False),
    # A < 0, inside: max(2*0.9, 2*0.9) = 1.8, grad 2*0.9 = 1.8.
    "neg_adv_inside": (0.9, -2.0, 1.8, 1.8, False),
    # A < 0, above: max(2*1.5, 2*1.2) = 3.0, unclipped (the pessimistic bound): grad 3.0.
    "neg_adv_above": (1.5, -2.0, 3.0, 3.0, False),
    # A < 0, below: max(2*0.5, 2*0.8) = 1.6, the clipped term: grad 0.
    "neg_adv_below": (0.5, -2.0, 1.6, 0.0, True),
}


@pytest.mark.parametrize("case", list(POLICY_REGIMES))
def test_policy_loss_regimes(case):
    ratio, adv, expected_loss, expected_grad, clipped = POLICY_REGIMES[case]
    loss, grad, metrics = _policy_case(ratio, adv)
    assert loss == pytest.approx(expected_loss, abs=1e-12)
    assert grad == pytest.approx(expected_grad, abs=1e-12)
    assert metrics["clipfrac"].item() == (1.0 if clipped else 0.0)
    # approx_kl = (r - 1) - log r, the k3 estimate of KL(pi_old || pi).
    assert metrics["approx_kl"].item() == pytest.approx(ratio - 1 - math.log(ratio), abs=1e-12)
    assert metrics["ratio_mean"].item() == pytest.approx(ratio, abs=1e-12)


def test_policy_loss_metrics_are_masked_means_and_detached():
    # Tokens: ratio 1.5 with A=2 (clipped), ratio 1.1 (not), a masked token with ratio 1.5 and A=2.
    old = torch.zeros(1, 3, dtype=F64)
    logprobs = torch.tensor([[math.log(1.5), math.log(1.1), math.log(1.5)]], dtype=F64, requires_grad=True)
    adv = torch.full((1, 3), 2.0, dtype=F64)
    mask = torch.tensor([[1, 1, 0]])
    loss, metrics = policy_loss(logprobs, old, adv, mask)
    assert metrics["clipfrac"].item() == pytest.approx(0.5)
    assert metrics["ratio_max"].item() == pytest.approx(1.5)
    assert all(not m.requires_grad and m.dim() == 0 for m in metrics.values())
    assert loss[0, 2].item() == 0.0


@pytest.mark.parametrize(
    "value,expected_loss,expected_grad,clipped",
    [
        # V_old = 1, R = 2, eps = 0.2.
        # Inactive: V = 1.1 moved 0.1 < eps: 0.5 * (1.1 - 2)^2 = 0.405; grad V - R = -0.9.
        (1.1, 0.405, -0.9, False),
        # Active: V = 1.5 moved towards R beyond eps: V_clip = 1.2,
        # max(0.5 * 0.5^2, 0.5 * 0.8^2) = max(0.125, 0.32) = 0.32, the clipped term: grad 0.
        (1.5, 0.32, 0.0, True),
        # Moved away beyond eps: V = 0.5, V_clip = 0.8: max(0.5 * 1.5^2, 0.5 * 1.2^2) = 1.125, grad -1.5.
        (0.5, 1.125, -1.5, False),
    ],
)
def test_value_loss_regimes(value, expected_loss, expected_grad, clipped):
    values = torch.tensor([[value]], dtype=F64, requires_grad=True)
    old = torch.tensor([[1.0]], dtype=F64)
    returns = torch.tensor([[2.0]], dtype=F64)
    loss, metrics = value_loss(values, old, returns, torch.ones(1, 1), clip_eps=EPS)
    loss.sum().backward()
    assert loss.item() == pytest.approx(expected_loss, abs=1e-12)
    assert values.grad.item() == pytest.approx(expected_grad, abs=1e-12)
    assert metrics["clipfrac"].item() == (1.0 if clipped else 0.0)


def test_value_clip_is_on_the_value_change_not_the_squared_error():
    # A large error with an unchanged value is not clipped: V = V_old = 0, R = 10 -> 0.5 * 100 = 50.
    loss, metrics = value_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.full((1, 1), 10.0), torch.ones(1, 1))
    assert loss.item() == 50.0 and metrics["clipfrac"].item() == 0.0


# ---------------------------------------------------------------------------------- invariances


def _random_batch(seed, batch=6, steps=7):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([7, 2, 5, 0, 3, 6])[:batch]
    mask = torch.arange(steps)[None, :] < lengths[:, None]
    old = -torch.rand(batch, steps, generator=gen, dtype=F64) * 3
    logprobs = old + 0.3 * torch.randn(batch, steps, generator=gen, dtype=F64)
    adv = torch.randn(batch, steps, generator=gen, dtype=F64)
    values = torch.randn(batch, steps, generator=gen, dtype=F64)
    old_values = values + 0.3 * torch.randn(batch, steps, generator=gen, dtype=F64)
    returns = torch.randn(batch, steps, generator=gen, dtype=F64)
    return mask, logprobs, old, adv, values, old_values, returns


def _losses_and_grads(mask, logprobs, old, adv, values, old_values, returns, num_tokens=None):
    logprobs = logprobs.clone().requires_grad_()
    values = values.clone().requires_grad_()
    pg = aggregate(policy_loss(logprobs, old, adv, mask)[0], mask, num_tokens)
    vf = aggregate(value_loss(values, old_values, returns, mask)[0], mask, num_tokens)
    (pg + vf).backward()
    return pg.detach(), vf.detach(), logprobs.grad, values.grad


def test_policy_and_value_losses_unchanged_by_garbage_at_masked_positions():
    mask, *tensors = _random_batch(0)
    reference = _losses_and_grads(mask, *tensors)
    gen = torch.Generator().manual_seed(9)
    for fill in ("random", "nan", "inf"):
        dirty = []
        for t in tensors:
            if fill == "random":
                garbage = torch.randn(t.shape, generator=gen, dtype=F64) * 1e3
            else:
                garbage = torch.full_like(t, float(fill))
            dirty.append(torch.where(mask, t, garbage))
        got = _losses_and_grads(mask, *dirty)
        for a, b in zip(reference, got):
            assert torch.equal(a, b), fill
    assert (reference[2][~mask] == 0).all() and (reference[3][~mask] == 0).all()


def test_aggregate_hand_value_and_empty_batch():
    # Valid entries 1, 2, 6 -> local mean 3; with a global count of 6 -> 9 / 6 = 1.5.
    per_token = torch.tensor([[1.0, 2.0, float("nan")], [6.0, float("inf"), 5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert aggregate(per_token, mask).item() == 3.0
    assert aggregate(per_token, mask, num_tokens=6).item() == 1.5
    assert aggregate(per_token, torch.zeros(2, 3)).item() == 0.0  # no valid token: 0, not nan


def test_aggregate_over_two_shards_with_global_count_equals_unsharded():
    mask, logprobs, old, adv, values, old_values, returns = _random_batch(1)
    full_pg, full_vf, full_grad_lp, full_grad_v = _losses_and_grads(mask, logprobs, old, adv, values, old_values,
                                                                    returns)
    global_tokens = int(mask.sum())
    shards = [slice(0, 2), slice(2, 6)]  # unequal token counts: 9 and 14 valid tokens
    pg = vf = 0.0
    grad_lp, grad_v = torch.zeros_like(logprobs), torch.zeros_like(values)
    for s in shards:
        args = [t[s] for t in (mask, logprobs, old, adv, values, old_values, returns)]
        s_pg, s_vf, s_glp, s_gv = _losses_and_grads(*args, num_tokens=global_tokens)
        pg, vf = pg + s_pg, vf + s_vf
        grad_lp[s], grad_v[s] = s_glp, s_gv
    torch.testing.assert_close(pg, full_pg, rtol=1e-14, atol=0)
    torch.testing.assert_close(vf, full_vf, rtol=1e-14, atol=0)
    torch.testing.assert_close(grad_lp, full_grad_lp, rtol=1e-14, atol=0)
    torch.testing.assert_close(grad_v, full_grad_v, rtol=1e-14, atol=0)
    # The test can fail: the mean of per-shard local means is a different number here.
    local = [aggregate(policy_loss(logprobs[s], old[s], adv[s], mask[s])[0], mask[s]) for s in shards]
    assert abs(float(sum(local) / 2) - float(full_pg)) > 1e-3


def test_micro_batch_gradient_accumulation_equals_one_batch():
    # A linear "policy" whose parameters receive gradients from every micro-batch.
    mask, _, old, adv, _, _, _ = _random_batch(2)
    gen = torch.Generator().manual_seed(5)
    features = torch.randn(*mask.shape, 4, generator=gen, dtype=F64)
    weight = (0.3 * torch.randn(4, generator=gen, dtype=F64)).requires_grad_()
    global_tokens = int(mask.sum())

    def step_loss(rows, num_tokens):
        logprobs = old[rows] + features[rows] @ weight  # (b, T)
        return aggregate(policy_loss(logprobs, old[rows], adv[rows], mask[rows])[0], mask[rows], num_tokens)

    full = step_loss(slice(0, 6), None)
    clipfrac = policy_loss(old + features @ weight, old, adv, mask)[1]["clipfrac"].item()
    assert 0.1 < clipfrac < 0.9  # both clipped and unclipped tokens contribute
    (full_grad,) = torch.autograd.grad(full, weight)
    accumulated = torch.zeros_like(weight)
    total = 0.0
    for rows in (slice(0, 1), slice(1, 4), slice(4, 6)):
        loss = step_loss(rows, global_tokens)
        (g,) = torch.autograd.grad(loss, weight)
        accumulated += g
        total += loss.item()
    assert total == pytest.approx(full.item(), rel=1e-14)
    torch.testing.assert_close(accumulated, full_grad, rtol=1e-13, atol=1e-15)


def test_entropy_bonus_by_hand():
    """Schulman et al. 2017 eq. 9: loss - c2 H per token. Ratio 1.1, A = 2 (inside the clip): -2.2;
    H = 0.7, c2 = 0.5: -2.2 - 0.35 = -2.55; d loss / d H = -c2 on valid tokens, 0 off the mask."""
    old = torch.zeros(1, 2, dtype=F64)
    logprobs = torch.full((1, 2), math.log(1.1), dtype=F64)
    adv = torch.full((1, 2), 2.0, dtype=F64)
    entropy = torch.tensor([[0.7, float("nan")]], dtype=F64, requires_grad=True)  # garbage off the mask
    mask = torch.tensor([[1, 0]])
    loss, metrics = policy_loss(logprobs, old, adv, mask, clip_eps=EPS, entropy=entropy, entropy_coef=0.5)
    assert loss[0, 0].item() == pytest.approx(-2.55, abs=1e-12) and loss[0, 1].item() == 0.0
    loss.sum().backward()
    assert entropy.grad.tolist() == [[-0.5, 0.0]]
    assert metrics["entropy"].item() == pytest.approx(0.7)
    plain, plain_metrics = policy_loss(logprobs, old, adv, mask, clip_eps=EPS)
    assert plain[0, 0].item() == pytest.approx(-2.2, abs=1e-12) and "entropy" not in plain_metrics


def test_aggregate_modes_hand_values():
    # Row 0: tokens 1, 2 (n=2); row 1: token 6 (n=1); T = 3, two rows.
    per_token = torch.tensor([[1.0, 2.0, float("nan")], [6.0, float("inf"), 5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert aggregate(per_token, mask, mode="token_mean").item() == 3.0  # (1 + 2 + 6) / 3
    assert aggregate(per_token, mask, mode="seq_mean_token_mean").item() == 3.75  # (1.5 + 6) / 2
    assert aggregate(per_token, mask, mode="seq_mean_token_sum_norm").item() == 1.5  # (3 + 6) / (2 * 3)
    assert normalizer(mask, "token_mean").item() == 3
    assert normalizer(mask, "seq_mean_token_mean").item() == 2
    assert normalizer(mask, "seq_mean_token_sum_norm").item() == 6
    with pytest.raises(ValueError, match="unknown loss aggregation 'mean'"):
        aggregate(per_token, mask, mode="mean")


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_every_aggregation_is_exact_over_shards_with_the_global_normaliser(mode):
    mask, logprobs, old, adv, *_ = _random_batch(3)

    def loss_and_grad(rows, num):
        lp = logprobs[rows].clone().requires_grad_()
        loss = aggregate(policy_loss(lp, old[rows], adv[rows], mask[rows])[0], mask[rows], num, mode=mode)
        loss.backward()
        return loss.detach(), lp.grad

    full, full_grad = loss_and_grad(slice(0, 6), None)
    n = normalizer(mask, mode)
    total, grad = 0.0, torch.zeros_like(logprobs)
    for rows in (slice(0, 1), slice(1, 4), slice(4, 6)):  # unequal shards
        part, g = loss_and_grad(rows, n)
        total, grad[rows] = total + part, g
    torch.testing.assert_close(total, full, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, full_grad, rtol=1e-12, atol=0)


def test_seq_mean_weighs_a_short_response_more_and_sum_norm_does_not():
    # Two rows, loss 1 on every valid token: row 0 has 1 token, row 1 has 4. Gradient per token of row 0 vs row 1.
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]])
    per_token = torch.ones(2, 4, requires_grad=True)
    for mode, ratio in (("token_mean", 1.0), ("seq_mean_token_mean", 4.0), ("seq_mean_token_sum_norm", 1.0)):
        (g,) = torch.autograd.grad(aggregate(per_token, mask, mode=mode), per_token)
        assert g[0, 0].item() / g[1, 0].item() == pytest.approx(ratio, rel=1e-6), mode


def test_kl_in_the_loss_is_grpo_k3_with_its_gradient():
    # log pi = -1, log pi_ref = -1.5 on one token: D = exp(-0.5) + 0.5 - 1; dD/dlog pi = 1 - exp(-0.5).
    logprobs = torch.tensor([[-1.0, -2.0]], dtype=F64, requires_grad=True)
    ref = torch.tensor([[-1.5, 7.0]], dtype=F64)
    old = logprobs.detach().clone()
    adv = torch.zeros(1, 2, dtype=F64)
    mask = torch.tensor([[1, 0]])
    per_token, metrics = policy_loss(logprobs, old, adv, mask, ref_logprobs=ref, kl_coef=0.5)
    d = math.exp(-0.5) + 0.5 - 1
    assert per_token[0, 0].item() == pytest.approx(0.5 * d, rel=1e-12)
    assert per_token[0, 1].item() == 0.0
    assert metrics["kl_loss"].item() == pytest.approx(d, rel=1e-12)
    per_token.sum().backward()
    # the surrogate's gradient is -A * ratio = 0 here (A = 0); only the KL term's remains
    assert logprobs.grad[0, 0].item() == pytest.approx(0.5 * (1 - math.exp(-0.5)), rel=1e-12)
    assert logprobs.grad[0, 1].item() == 0.0
