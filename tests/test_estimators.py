"""`rlhf experiment estimators`: its summary and table on known rows (no runs), and its variants' configs."""

from __future__ import annotations

import pytest

from orchestrator.registry import load_config
from orchestrator.experiments import estimators


def _row(variant, seed, gold_end, step_s, status="ok"):
    return {"variant": variant, "seed": seed, "status": status, "gold_start": 0.3, "gold_end": gold_end, "train_reward_last": 1.0,
            "kl_last": 2.0, "length_tokens_end": 20.0, "disputed_end": 0.5, "step_s": step_s, "memory_mb/policy": 500.0 + seed}


def test_summary_is_mean_and_range_over_seeds():
    rows = [_row("gae", 0, 0.7, 1.0), _row("gae", 1, 0.5, 2.0), _row("grpo", 0, 0.4, 1.0),
            {"variant": "rloo", "seed": 0, "status": "failed", "error": "x"}]
    s = estimators.summarise(rows)
    assert s["gae"]["runs"] == 2 and s["rloo"] == {"runs": 0}
    assert s["gae"]["gold_end"] == {"mean": pytest.approx(0.6), "min": 0.5, "max": 0.7}
    assert s["gae"]["gold_gain"]["mean"] == pytest.approx(0.3)
    assert s["gae"]["memory_mb/policy"] == {"mean": 500.5, "min": 500.0, "max": 501.0}
    table = estimators.format_table(s).splitlines()
    assert table[0].startswith("| estimator | runs | held-out gold | gold gain |") and table[0].endswith("peak MB policy |")
    assert table[2].startswith("| gae | 2 | 0.600 (0.500..0.700) | +0.300 (+0.200..+0.400) |")
    assert table[3].startswith("| grpo | 1 | 0.400 | +0.100 |")
    assert table[4] == "| rloo | 0 | - | - | - | - | - | - | - | - |"


@pytest.mark.parametrize("name", list(estimators.VARIANTS))
def test_every_variant_is_a_valid_ppo_config(name):
    overrides = {**estimators.BASE, **estimators.VARIANTS[name]}
    cfg = load_config("ppo", None, [f"{k}={v}" for k, v in overrides.items()])
    assert cfg.ppo.rollout_batch_size == 64  # the same responses per step for every estimator
    assert cfg.ppo.critic_free == (name != "gae")


@pytest.mark.slow  # three ray-mode PPO runs of 6 steps: the critic, a group and a leave-one-out estimator
def test_quick_experiment_runs_estimators_end_to_end(tmp_path, capsys):
    import json

    from orchestrator.cli import main

    out = tmp_path / "est"
    picked = ["gae", "grpo", "rloo"]  # every estimator's config is resolved above; three of them run here
    argv = ["experiment", "estimators", "--quick", "--variants", ",".join(picked), "--out", str(out)]
    assert main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    runs = {r["variant"]: r for r in result["runs"]}
    assert list(runs) == picked and all(r["status"] == "ok" for r in runs.values())
    for name, r in runs.items():
        assert ("memory_mb/critic" in r) == (name == "gae")  # no critic actor for the critic-free estimators
        assert r["gold_start"] == runs["gae"]["gold_start"]  # one SFT policy, one held-out evaluation
        assert r["curve_steps"] == [0, 3, 6] and len(r["curve_gold"]) == 3
        assert r["samples_per_step"] == 16.0  # the same responses per step for all
    printed = capsys.readouterr().out
    assert "| estimator | runs | held-out gold |" in printed and "best held-out gold:" in printed
    assert (out / "curves.png").stat().st_size > 0
    # a rerun measures nothing again
    assert main(argv) == 0
    assert "running" not in capsys.readouterr().out
