"""`rlhf bench ppo` and `rlhf bench dpo` run end to end on the smallest built-in model (local mode, one
measured step) and write their numbers: the benchmarks stay runnable as the code under them changes."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_CACHE", str(tmp_path / "cache"))


@pytest.mark.slow  # four roles started for one measured step
def test_bench_ppo_reports_every_phase(tmp_path, capsys):
    from orchestrator.cli import main

    assert main(["bench", "ppo", "--steps", "1", "--out", str(tmp_path), "run.mode=local", "ppo.rollout_batch_size=8",
                 "ppo.minibatch_size=8", "policy.max_new_tokens=8", "data.max_rows=16"]) == 0
    result = json.loads((tmp_path / "bench_ppo_tiny_local.json").read_text())
    assert result["steps_measured"] == 1 and result["step_s"] > 0
    assert set(result["phase_s"]) == {"generate", "score", "reference", "old_logprobs", "values", "advantages",
                                      "critic_update", "policy_update", "driver"}
    assert result["step_s"] == pytest.approx(sum(result["phase_s"].values()), rel=0.05)
    assert "tokens/s" in capsys.readouterr().out


def test_bench_dpo_reports_pairs_per_second(tmp_path):
    from orchestrator.cli import main

    assert main(["bench", "dpo", "--steps", "1", "--out", str(tmp_path), "dpo.batch_size=8", "policy.micro_batch_size=4",
                 "data.max_rows=64"]) == 0
    result = json.loads((tmp_path / "bench_dpo_tiny_local.json").read_text())
    assert result["train_pairs_per_s"] > 0 and result["reference_pairs_per_s"] > 0 and result["batch_pairs"] == 8
