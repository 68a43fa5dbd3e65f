"""generator.engine=vllm in ray mode, with real vLLM engines in generator actors: local == ray with the
policy on 2 ZeRO-3 replicas (its weights gathered for each sync) and 2 engines (rows seeded one by one, so
the split does not matter), the weights sent over a gloo transfer group; GRPO one step ahead; and an engine actor killed mid-run is started again, gets the current
weights before it samples, and the run finishes as an uninterrupted one does."""

from __future__ import annotations

import json

import pytest

from ppo_helpers import run_killed_at, tiny_ppo_config

pytestmark = pytest.mark.slow  # ray-mode PPO runs with vLLM engines (~6 min)

VLLM_RUN = ("generator.engine=vllm", "generator.kv_cache_gb=0.05", "generator.num_cpus=0.5")
LOGPROB_TOL = 1e-4  # as in test_vllm.py


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from orchestrator.builtin.models import builtin_model_dir

    return builtin_model_dir("tiny", cache_dir=str(tmp_path_factory.mktemp("cache")), seed=0, hidden_size=64,
                             intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)


TIMINGS = ("time/", "sync/apply_s", "sync/mb_per_s")  # what differs between two runs of the same numbers


def _records(out, drop=TIMINGS) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if not k.startswith(drop)} for r in rows]


def _assert_same(a: dict, b: dict, rel=2e-4, abs_=1e-5):  # as test_ppo_ray.py's
    assert a.keys() == b.keys()
    bad = {k: (a[k], b[k]) for k in a if not b[k] == pytest.approx(a[k], rel=rel, abs=abs_, nan_ok=True)}
    assert not bad, bad


def test_local_and_ray_give_the_same_run_with_zero3_two_engines_and_the_collective_transport(model_dir, tmp_path, ray_cluster):
    """The policy on 2 ZeRO-3 replicas sends its gathered weights to 2 engines over a gloo transfer group
    (generator.sync_transport=collective, the NCCL path's code on CPU): three steps and the held-out
    evaluations (sampled by the engines, row seeds independent of the split) equal local mode's, where the
    weights pass in memory, and every step's engine log-probs are the trainer's."""
    from orchestrator.registry import run

    extra = ("run.steps=3", "run.eval_every=2", *VLLM_RUN)
    run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "local"), *extra))
    summary = run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "ray"), *extra, "run.mode=ray", "policy.replicas=2",
                                    "policy.zero_stage=3", "generator.replicas=2", "generator.sync_transport=collective"))
    assert len(summary["roles"]["generator"]) == 2
    # (sync/mb: the object store's safetensors blobs and the transfer group's aligned buckets differ in size)
    local, ray = _records(tmp_path / "local", TIMINGS + ("sync/mb",)), _records(tmp_path / "ray", TIMINGS + ("sync/mb",))
    assert [r["step"] for r in ray] == [0, 1, 2, 3] and "eval/gold" in ray[2] and "eval/gold" in ray[3]
    for a, b in zip(local, ray):
        _assert_same(a, b)
    for r in ray[1:]:
        assert r["mismatch/abs_max"] < LOGPROB_TOL and r["sync/version"] == r["step"] - 1 and r["rollout/lag"] == 0.0


def test_grpo_in_ray_mode_one_step_ahead(model_dir, tmp_path, ray_cluster):
    """GRPO with the engine one step ahead (ppo.max_staleness=1): the rollouts are one update behind, the
    engine's log-probs are the ones the ratio is taken against."""
    from orchestrator.registry import run

    out = tmp_path / "grpo"
    run("ppo", tiny_ppo_config(model_dir, str(out), "run.steps=3", "run.mode=ray", *VLLM_RUN,
                               "ppo.advantage_estimator=grpo", "ppo.samples_per_prompt=4",
                               "ppo.max_staleness=1", "ppo.old_logprobs=rollout"))
    rows = _records(out)[1:]
    assert [r["rollout/lag"] for r in rows] == [0.0, 1.0, 1.0]
    # the sync read with each rollout: the start's evaluation made the first step's sync (version 0, read with
    # the rollout that step issues, the second); step 2's sync (version 1) is read with the third
    assert [r.get("sync/version") for r in rows] == [None, 0.0, 1.0]
    assert all("grpo/zero_std_groups" in r for r in rows)


def test_a_killed_engine_is_restarted_with_the_current_weights(model_dir, tmp_path, ray_cluster):
    """SIGKILL to the generator's process after step 3: the run restarts its roles, resumes from the step-2
    checkpoint, pushes the policy's weights into the new engine before it samples, and every step from the
    checkpoint on equals an uninterrupted run's (the engine's log-probs equal the trainer's throughout)."""
    from orchestrator.registry import run

    common = ["run.mode=ray", "run.steps=5", "run.save_every=2", "run.keep_checkpoints=5", *VLLM_RUN]
    out, whole = tmp_path / "killed", tmp_path / "whole"
    summary = run_killed_at(tiny_ppo_config(model_dir, str(out), *common), step=3, role="generator")
    assert len(summary["restarts"]) == 1 and summary["restarts"][0]["resumed_at_step"] == 2, summary["restarts"]
    killed = _records(out, drop=TIMINGS + ("run/",))
    assert [r["step"] for r in killed] == [0, 1, 2, 3, 4, 5]
    assert all(r["mismatch/abs_max"] < LOGPROB_TOL for r in killed[1:])
    run("ppo", tiny_ppo_config(model_dir, str(whole), *common))
    for a, b in zip(_records(whole, drop=TIMINGS + ("run/",)), killed):
        _assert_same(a, b)
