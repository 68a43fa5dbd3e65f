"""generator.engine=vllm in ray mode, with real vLLM engines in generator actors: local == ray with the
policy on 2 ZeRO-3 replicas (its weights gathered for each sync) and 2 engines (rows seeded one by one, so
the split does not matter); GRPO; and an engine actor killed mid-run is started again, gets the current
weights before it samples, and the run finishes as an uninterrupted one does."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from ppo_helpers import tiny_ppo_config

pytestmark = pytest.mark.slow  # ray-mode PPO runs with vLLM engines (~6 min)

VLLM_RUN = ("generator.engine=vllm", "generator.kv_cache_gb=0.05", "generator.num_cpus=0.5")
LOGPROB_TOL = 1e-4  # as in test_vllm.py


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from orchestrator.builtin.models import builtin_model_dir

    return builtin_model_dir("tiny", cache_dir=str(tmp_path_factory.mktemp("cache")), seed=0, hidden_size=64,
                             intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)


def _records(out, drop=("time/",)) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if not k.startswith(drop)} for r in rows]


def _assert_same(a: dict, b: dict, rel=2e-4, abs_=1e-5):  # as test_ppo_ray.py's
    assert a.keys() == b.keys()
    bad = {k: (a[k], b[k]) for k in a if not b[k] == pytest.approx(a[k], rel=rel, abs=abs_, nan_ok=True)}
    assert not bad, bad


def test_local_and_ray_give_the_same_run_with_zero3_and_two_engines(model_dir, tmp_path, ray_cluster):
    from orchestrator.registry import run

    extra = ("run.steps=3", *VLLM_RUN)
    run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "local"), *extra))
    summary = run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "ray"), *extra, "run.mode=ray", "policy.replicas=2",
                                    "policy.zero_stage=3", "generator.replicas=2"))
    assert len(summary["roles"]["generator"]) == 2
    # held-out evaluation still samples with the policy's HF generate, whose random stream depends on the sharding
    local, ray = _records(tmp_path / "local", ("time/", "eval/")), _records(tmp_path / "ray", ("time/", "eval/"))
    assert [r["step"] for r in ray] == [0, 1, 2, 3]
    for a, b in zip(local, ray):
        _assert_same(a, b)
    for r in ray[1:]:
        assert r["mismatch/abs_max"] < LOGPROB_TOL and r["sync/version"] == r["step"] - 1 and r["rollout/lag"] == 0.0


def test_grpo_in_ray_mode_one_step_ahead(model_dir, tmp_path, ray_cluster):
    """GRPO with the engine one step ahead (ppo.rollout_ahead=1): the rollouts are one update behind, the
    engine's log-probs are the ones the ratio is taken against."""
    from orchestrator.registry import run

    out = tmp_path / "grpo"
    run("ppo", tiny_ppo_config(model_dir, str(out), "run.steps=3", "run.mode=ray", *VLLM_RUN,
                               "ppo.advantage_estimator=grpo", "ppo.samples_per_prompt=4",
                               "ppo.rollout_ahead=1", "ppo.old_logprobs=rollout"))
    rows = _records(out)[1:]
    assert [r["rollout/lag"] for r in rows] == [0.0, 1.0, 1.0]
    assert [r["sync/version"] for r in rows] == [0.0, 1.0, 2.0]  # the weights the next rollout is sampled with
    assert all("grpo/zero_std_groups" in r for r in rows)


def _generator_processes() -> list:
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info.get("cmdline") or []
        if cmd and cmd[0].startswith("ray::_Replica"):
            try:
                if p.environ().get("RLHF_ROLE") == "generator":
                    found.append(p)
            except psutil.Error:
                pass
    return found


def test_a_killed_engine_is_restarted_with_the_current_weights(model_dir, tmp_path, ray_cluster):
    """SIGKILL to the generator's process after step 3: the run restarts its roles, resumes from the step-2
    checkpoint, pushes the policy's weights into the new engine before it samples, and every step from the
    checkpoint on equals an uninterrupted run's (the engine's log-probs equal the trainer's throughout)."""
    from orchestrator.registry import run

    common = ["run.mode=ray", "run.steps=5", "run.save_every=2", "run.keep_checkpoints=5", *VLLM_RUN]
    out, whole = tmp_path / "killed", tmp_path / "whole"
    result: dict = {}

    def killed_run() -> None:
        try:
            result["summary"] = run("ppo", tiny_ppo_config(model_dir, str(out), *common))
        except BaseException as e:  # noqa: BLE001  (reported by the assertions below)
            result["error"] = e

    worker = threading.Thread(target=killed_run)
    worker.start()
    deadline = time.time() + 600
    while not any(r["step"] == 3 for r in _records(out)):
        assert worker.is_alive() and time.time() < deadline, result
        time.sleep(0.02)
    victims = _generator_processes()
    assert len(victims) == 1, victims
    os.kill(victims[0].pid, signal.SIGKILL)
    worker.join(timeout=900)
    assert "error" not in result, result.get("error")
    summary = result["summary"]
    assert len(summary["restarts"]) == 1 and summary["restarts"][0]["resumed_at_step"] == 2, summary["restarts"]
    killed = _records(out, drop=("time/", "run/"))
    assert [r["step"] for r in killed] == [0, 1, 2, 3, 4, 5]
    assert all(r["mismatch/abs_max"] < LOGPROB_TOL for r in killed[1:])
    run("ppo", tiny_ppo_config(model_dir, str(whole), *common))
    for a, b in zip(_records(whole, drop=("time/", "run/")), killed):
        _assert_same(a, b)
