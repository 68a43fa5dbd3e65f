"""Self-healing runs: a role's actor process killed with SIGKILL in the middle of a ray-mode PPO run. The
driver tears the roles down, starts them again, loads the latest checkpoint and finishes by itself,
every step's metrics written once, the restart in the metrics and the summary; from the checkpoint on,
the trajectory equals an uninterrupted run's."""

import json

import pytest

from ppo_helpers import run_killed_at, tiny_model_dir, tiny_ppo_config

pytestmark = pytest.mark.slow  # two ray-mode PPO runs and a restart (~2 min)


def _records(out) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_killed_role_is_restarted_and_the_run_finishes_as_if_uninterrupted(ray_cluster, tmp_path):
    from orchestrator.registry import run

    model_dir = tiny_model_dir(str(tmp_path / "cache"))
    common = ["run.mode=ray", "run.steps=6", "run.save_every=2", "run.keep_checkpoints=5"]
    out, whole = tmp_path / "killed", tmp_path / "whole"
    summary = run_killed_at(tiny_ppo_config(model_dir, str(out), *common), step=3)  # after the step-2 checkpoint
    assert len(summary["restarts"]) == 1 and summary["restarts"][0]["resumed_at_step"] == 2, summary["restarts"]
    assert "the actor died" in summary["restarts"][0]["cause"] or "died" in summary["restarts"][0]["cause"]
    killed = _records(out)
    assert [r["step"] for r in killed] == [0, 1, 2, 3, 4, 5, 6]
    assert [r.get("run/restarts") for r in killed[1:]] == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]

    run("ppo", tiny_ppo_config(model_dir, str(whole), *common))
    for a, b in zip(_records(whole), killed):
        for key, value in a.items():
            if not key.startswith(("time/", "run/")):
                assert b[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (a["step"], key)
