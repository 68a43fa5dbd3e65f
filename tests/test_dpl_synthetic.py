"""The DPL paper's 1-D synthetic experiment (arXiv 2312.08358), in quick mode."""

import json

import pytest
import torch

from orchestrator.experiments import dpl_synthetic


def test_borda_count_closed_form_matches_simulation():
    # BC(a) = P(a beats b) + P(tie) / 2 with b ~ U[0, 1] and independent hidden contexts.
    gen = torch.Generator().manual_seed(0)
    n = 400_000
    for a in (0.3, 0.75, 0.95):
        b = torch.rand(n, generator=gen)
        u_a = dpl_synthetic.utility(torch.full((n,), a), (torch.rand(n, generator=gen) < 0.5).float())
        u_b = dpl_synthetic.utility(b, (torch.rand(n, generator=gen) < 0.5).float())
        simulated = ((u_a > u_b).float() + 0.5 * (u_a == u_b).float()).mean().item()
        assert simulated == pytest.approx(dpl_synthetic.borda_count(torch.tensor(a)).item(), abs=3e-3)


def test_sampled_comparisons_follow_the_utilities():
    chosen, rejected = dpl_synthetic.sample_comparisons(50_000, torch.Generator().manual_seed(1))
    below = (chosen < 0.8) & (rejected < 0.8)
    assert (chosen[below] > rejected[below]).all()  # no hidden context below 0.8: deterministic
    # a >= 0.8 against a < 0.8 is a coin flip (z = 1 wins, z = 0 loses).
    mixed = (chosen >= 0.8) ^ (rejected >= 0.8)
    high_wins = ((chosen >= 0.8) & mixed).float().sum() / mixed.float().sum()
    assert high_wins.item() == pytest.approx(0.5, abs=0.02)


def test_dpl_synthetic_findings_quick(tmp_path, capsys):
    threads = torch.get_num_threads()
    code = dpl_synthetic.main(["--out", str(tmp_path), "--quick", "--seed", "0"])
    assert torch.get_num_threads() == threads  # restored
    result = json.loads((tmp_path / "findings.json").read_text())
    assert result["seeds"] == [0, 1, 2] and result["steps"] == dpl_synthetic.QUICK_STEPS

    for seed, (bt, mv, cat) in enumerate(zip(*(result[k]["per_seed"] for k in
                                               ("bt_orders_like_borda", "mv_std_larger_above_0.8", "cdpl_bimodal_above_0.8")))):
        # every seed on its own shows the paper's three effects
        assert bt["bt_u(0.75)"] > bt["bt_u(0.95)"] and bt["bt_margin"] == pytest.approx(bt["bt_u(0.75)"] - bt["bt_u(0.95)"])
        assert bt["spearman_bt_borda"] > 0.9 > bt["spearman_bt_expected"], seed  # like the Borda count, not E[u]
        assert mv["std_above"] > 10 * mv["std_below"] and mv["ratio"] == pytest.approx(mv["std_above"] / mv["std_below"])
        assert cat["mass_low"] > 0.3 and cat["mass_high"] > 0.3, seed
        assert cat["frac_bimodal"] >= 0.9 and cat["modes_at_0.9"] >= 2 and cat["modes_at_0.5"] == 1, seed
    # the verdicts: the rules on the mean over the seeds, and every seed passing
    for f in dpl_synthetic.FINDINGS:
        verdict = result[f.key]
        means = {k: v["mean"] for k, v in verdict["numbers"].items()}
        assert verdict["passed"] == f.holds(means) is True and verdict["seeds_passed"] == 3
    assert result["mv_std_larger_above_0.8"]["numbers"]["ratio"]["min"] == min(
        p["ratio"] for p in result["mv_std_larger_above_0.8"]["per_seed"])
    assert result["passed"] and code == 0
    png = tmp_path / "dpl_synthetic.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("[PASS]") for line in lines) == 3
    assert any("bt_margin +" in line and "holds in 3 of 3 seed(s)" in line for line in lines)
