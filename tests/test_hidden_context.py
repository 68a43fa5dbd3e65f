"""`rlhf experiment hidden-context` in quick mode: the whole chain (three `rlhf rm` runs on
builtin:hidden-context, two `rlhf ppo` runs with the DPL mean and quantile rewards) runs, and every
finding's numbers are recomputed from the files the runs wrote. The findings themselves need the full
run over seeds (docs/experiments.md); their rules on known inputs are in test_experiments.py."""

import copy
import json

import pytest

from orchestrator.experiments.common import findings_exit_code, judge
from orchestrator.experiments import hidden_context as hc


def _result(quick: bool, passed: bool) -> dict:
    numbers = {f.key: {"ratio": 1.5, "abs_rho_bt": 0.4, "abs_rho_odin_quality": 0.1, "accuracy_gap": 0.0, "share_drop": 0.2}
               for f in hc.FINDINGS}
    result = {f.key: judge(f, [numbers[f.key]]) for f in hc.FINDINGS}
    return {**result, "quick": quick, "passed": passed}


def test_exit_code_follows_the_findings():
    """The exit code of a full run is its pass flags; of a quick run, that every judged number is finite."""
    assert findings_exit_code(_result(False, True), hc.FINDINGS) == 0
    assert findings_exit_code(_result(False, False), hc.FINDINGS) == 1
    quick = _result(True, False)
    assert findings_exit_code(quick, hc.FINDINGS) == 0  # a smoke run: failing findings are expected
    quick = copy.deepcopy(quick)
    quick["risk_averse_ppo"]["per_seed"][0]["share_drop"] = float("nan")
    assert findings_exit_code(quick, hc.FINDINGS) == 1  # ... but not a NaN


@pytest.mark.slow  # about 2 minutes on the cached SFT policy: three reward models, two PPO runs
def test_hidden_context_quick_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "hc"
    code = hc.main(["--out", str(out), "--quick"])
    result = json.loads((out / "findings.json").read_text())
    assert code == findings_exit_code(result, hc.FINDINGS) == 0  # every judged number came out finite
    assert result["data"] == "builtin:hidden-context" and result["train_pairs"] == hc.QUICK_TRAIN_PAIRS
    assert result["seeds"] == [0] and result["rm_steps"] == hc.QUICK_RM_STEPS
    # every finding's numbers, recomputed from what the runs wrote
    seed = out / "seed0"
    rm = {obj: json.loads((seed / f"rm-{obj}" / "summary.json").read_text())["eval"]
          for obj in ("mean_variance", "bradley_terry", "odin")}
    ppo = {stat: json.loads((seed / f"ppo-{stat}" / "summary.json").read_text()) for stat in ("mean", "quantile")}
    want = {"dpl_std_on_disputed_pairs": hc.std_numbers(rm["mean_variance"]),
            "odin_length_decorrelation": hc.odin_numbers(rm["bradley_terry"], rm["odin"]),
            "risk_averse_ppo": hc.risk_numbers(ppo["mean"], ppo["quantile"])}
    for f in hc.FINDINGS:
        got = result[f.key]
        assert got["passed"] == f.holds(want[f.key]) and got["seeds"] == 1
        for key, value in want[f.key].items():
            assert got["numbers"][key]["mean"] == pytest.approx(value, nan_ok=True), (f.key, key)
    f1 = want["dpl_std_on_disputed_pairs"]
    assert f1["pairs_disputed"] + f1["pairs_agreed"] == hc.QUICK_EVAL_PAIRS
    assert f1["std_disputed"] > 0 and f1["std_agreed"] > 0 and 0.5 < f1["ceiling"] < 1
    # the quantile run read the DPL model's 0.1-quantile, the mean run its mean
    assert "statistic: quantile" in (seed / "ppo-quantile" / "config.yaml").read_text()
    assert "statistic: mean" in (seed / "ppo-mean" / "config.yaml").read_text()
    out_text = capsys.readouterr().out
    assert out_text.count("[PASS]") + out_text.count("[FAIL]") == 3 and "findings written to" in out_text
