"""`rlhf experiment hidden-context` in quick mode: the whole chain (three `rlhf rm` runs on
builtin:hidden-context, two `rlhf ppo` runs with the DPL mean and quantile rewards) runs and reports
every finding with the numbers it is judged on. The findings themselves need the full run (README)."""

import json

import torch

from orchestrator.experiments import hidden_context


def test_hidden_context_quick_runs_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RLHF_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert hidden_context.main(["--out", str(tmp_path / "hc"), "--quick"]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads((tmp_path / "hc" / "findings.json").read_text())
    assert result["data"] == "builtin:hidden-context" and result["train_pairs"] == hidden_context.QUICK_TRAIN_PAIRS
    f1, f2, f3 = (result[k] for k in ("dpl_std_on_disputed_pairs", "odin_length_decorrelation", "risk_averse_ppo"))
    assert f1["pairs_disputed"] + f1["pairs_agreed"] == hidden_context.QUICK_EVAL_PAIRS
    assert f1["std_disputed"] > 0 and f1["std_agreed"] > 0 and 0.5 < f1["ceiling"] < 1
    assert f1["passed"] == (f1["std_disputed"] >= hidden_context.STD_RATIO * f1["std_agreed"])
    assert abs(f2["rho_length_odin_length_head"]) <= 1 and 0 <= f2["accuracy_odin_sum"] <= 1
    assert f2["passed"] == (abs(f2["rho_length_odin_quality"]) <= 0.5 * abs(f2["rho_length_bt"])
                            and abs(f2["accuracy_odin_sum"] - f2["accuracy_bt"]) <= hidden_context.ODIN_ACCURACY_GAP)
    assert f3["passed"] == (f3["disputed_share_quantile_reward"] < f3["disputed_share_mean_reward"])
    out = capsys.readouterr().out
    assert out.count("[PASS]") + out.count("[FAIL]") == 3 and "findings written to" in out
