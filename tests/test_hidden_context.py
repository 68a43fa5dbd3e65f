"""`rlhf experiment hidden-context` in quick mode: the whole chain (three `rlhf rm` runs on
builtin:hidden-context, two `rlhf ppo` runs with the DPL mean and quantile rewards) runs and reports
every finding with the numbers it is judged on. The findings themselves need the full run (README)."""

import copy
import json

import pytest
import torch

from orchestrator.experiments import hidden_context


def test_exit_code_follows_the_findings():
    """The exit code of a full run is its pass flags; of a quick run, that every judged number is finite."""
    finding = {"std_disputed": 1.0, "std_agreed": 0.5, "pairs_disputed": 3, "passed": True}
    result = {"quick": False, "passed": True, "dpl_std_on_disputed_pairs": finding,
              "odin_length_decorrelation": dict(finding), "risk_averse_ppo": dict(finding)}
    assert hidden_context.exit_code(result) == 0
    assert hidden_context.exit_code({**result, "passed": False}) == 1
    quick = {**copy.deepcopy(result), "quick": True, "passed": False}
    assert hidden_context.exit_code(quick) == 0  # a smoke run: failing findings are expected
    quick["risk_averse_ppo"]["std_agreed"] = float("nan")
    assert hidden_context.exit_code(quick) == 1  # ... but not a NaN


@pytest.mark.slow  # about 5 minutes: it builds the SFT policy in a fresh cache, then five runs
def test_hidden_context_quick_runs_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RLHF_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = hidden_context.main(["--out", str(tmp_path / "hc"), "--quick"])
    finally:
        torch.set_num_threads(threads)
    result = json.loads((tmp_path / "hc" / "findings.json").read_text())
    assert code == hidden_context.exit_code(result) == 0  # every judged number came out finite
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
