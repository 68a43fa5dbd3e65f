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
    findings = result["findings"]

    bt = findings["bt_orders_like_borda"]
    assert bt["bt_u(0.75)"] > bt["bt_u(0.95)"]  # like the Borda count, unlike the expected utility
    assert bt["borda(0.75)"] == pytest.approx(0.85) and bt["borda(0.95)"] == pytest.approx(0.5125)
    assert bt["spearman(bt_u, borda)"] > 0.9 > bt["spearman(bt_u, expected_u)"]

    mv = findings["mv_std_larger_above_0.8"]
    assert mv["mv_std_mean(a>=0.8)"] > 10 * mv["mv_std_mean(a<0.8)"]

    cat = findings["cdpl_bimodal_above_0.8"]
    assert cat["mass_below_split(a>=0.8)"] > 0.3 and cat["mass_above_split(a>=0.8)"] > 0.3
    assert cat["frac_bimodal(a>=0.8)"] >= 0.9 and cat["modes(a=0.9)"] >= 2 and cat["modes(a=0.5)"] == 1

    assert all(f["passed"] for f in findings.values()) and result["passed"] and code == 0
    png = tmp_path / "dpl_synthetic.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("[PASS]") for line in lines) == 3
    assert any("u_BT(0.75)" in line for line in lines)
