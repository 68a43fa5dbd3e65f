"""PPO in ray mode: the same numbers as local mode, and ZeRO sharding at two replicas equal to one replica."""

from __future__ import annotations

import json
import os

import pytest

from ppo_helpers import tiny_model_dir, tiny_ppo_config


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(str(tmp_path_factory.mktemp("cache")))


TIMINGS = ("time/", "sync/apply_s", "sync/mb_per_s")  # what differs between two runs of the same numbers


def _first_step(out_dir) -> dict:
    """The record of the first PPO step (its training metrics and, being the last step, the end evaluation)."""
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        (record,) = [r for r in map(json.loads, f) if r["step"] == 1]
    assert "policy/loss" in record and "eval/reward" in record
    return {k: v for k, v in record.items() if not k.startswith(TIMINGS)}


def _assert_same(a: dict, b: dict, rel=2e-4, abs_=1e-5):
    assert a.keys() == b.keys()
    bad = {k: (a[k], b[k]) for k in a if not b[k] == pytest.approx(a[k], rel=rel, abs=abs_, nan_ok=True)}
    assert not bad, bad


# top_k=1 makes sampling deterministic, so rollouts are identical however the batch is sharded
DETERMINISTIC = ("policy.top_k=1", "run.steps=1")


def test_local_and_ray_give_the_same_first_step(model_dir, tmp_path, ray_cluster):
    from orchestrator.registry import run

    run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "local"), *DETERMINISTIC))
    run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "ray"), *DETERMINISTIC, "run.mode=ray"))
    _assert_same(_first_step(tmp_path / "local"), _first_step(tmp_path / "ray"))


def test_multi_turn_episodes_local_and_ray_give_the_same_first_step(model_dir, tmp_path, ray_cluster):
    """Episodes of two model turns (env.path): each turn's episodes are sampled by two policy replicas (padded to
    them), scored and trained in ray mode, with the environment's calls in the driver: the same first step and
    held-out episodes as one local process (greedy, so the episodes are the same however they are sharded). The
    reward adds the test reward function's score of the whole conversation (its last turn's length) to the
    environment's turn rewards."""
    from orchestrator.registry import run

    env = ("env.path=ppo_helpers:FollowUp", "env.max_tokens=64")
    run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "local"), *DETERMINISTIC, *env))
    run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "ray"), *DETERMINISTIC, *env, "run.mode=ray", "policy.replicas=2"))
    local = _first_step(tmp_path / "local")
    assert local["env/turns"] == 2.0 and local["eval/turns"] == 2.0
    _assert_same(local, _first_step(tmp_path / "ray"))


@pytest.mark.slow  # one local PPO run, then one ray-mode run of two replicas per stage
def test_zero_2_and_3_at_two_replicas_equal_one_local_replica(model_dir, tmp_path, ray_cluster):
    """ZeRO 0 at two replicas is plain data parallelism, its engine step checked in test_cluster_ray."""
    from orchestrator.registry import run

    run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "one"), *DETERMINISTIC))
    for stage in (2, 3):
        two = tmp_path / f"two_zero{stage}"
        run("ppo", tiny_ppo_config(
            model_dir, str(two), *DETERMINISTIC, "run.mode=ray",
            "policy.replicas=2", "critic.replicas=2", f"policy.zero_stage={stage}", f"critic.zero_stage={stage}",
            f"reference.zero_stage={stage}",
        ))
        _assert_same(_first_step(tmp_path / "one"), _first_step(two))


@pytest.mark.slow  # two PPO runs, one in ray mode
def test_token_budget_at_two_zero3_replicas_equals_one_local_replica(model_dir, tmp_path, ray_cluster):
    """micro_batch_tokens on the policy (and so the reference) and the critic, each sharded over two ZeRO-3
    replicas whose rows differ in length: every replica makes as many forward calls (else a collective
    would hang), and the step is the one-process step."""
    from orchestrator.registry import run

    budget = ("policy.micro_batch_tokens=40", "critic.micro_batch_tokens=40")
    run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "local"), *DETERMINISTIC, *budget))
    run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "ray"), *DETERMINISTIC, *budget, "run.mode=ray", "policy.replicas=2",
                          "critic.replicas=2", "policy.zero_stage=3", "critic.zero_stage=3", "reference.zero_stage=3"))
    _assert_same(_first_step(tmp_path / "local"), _first_step(tmp_path / "ray"))


def test_critic_free_local_and_ray_give_the_same_run_with_three_roles(model_dir, tmp_path, ray_cluster):
    """GRPO with 4 sampled responses per prompt and the KL in the loss: two steps (sampling on, one policy
    replica, so both modes draw the same responses) give the same metrics, and ray mode starts no critic."""
    from orchestrator.registry import run

    extra = ("ppo.advantage_estimator=grpo", "ppo.samples_per_prompt=4", "ppo.kl_in_loss=true",
             "ppo.loss_agg=seq_mean_token_mean", "run.steps=2", "reward.replicas=2")
    run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "local"), *extra))
    summary = run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "ray"), *extra, "run.mode=ray"))
    assert set(summary["roles"]) == {"policy", "reference", "reward"}  # where each replica ran: no critic actor
    records = {}
    for mode in ("local", "ray"):
        with open(tmp_path / mode / "metrics.jsonl") as f:
            records[mode] = [{k: v for k, v in r.items() if not k.startswith("time/")} for r in map(json.loads, f)]
    assert [r["step"] for r in records["ray"]] == [0, 1, 2]
    for a, b in zip(records["local"], records["ray"]):
        _assert_same(a, b)
    assert "grpo/zero_std_groups" in records["ray"][1] and "critic/loss" not in records["ray"][1]


@pytest.mark.parametrize("transport", ["object_store", "collective"])
def test_one_step_off_policy_local_and_ray_give_the_same_run(model_dir, tmp_path, ray_cluster, transport):
    """ppo.max_staleness=1 with the policy on 2 ZeRO-3 replicas (its weights gathered for the sync) and 2
    generator replicas (the weights reach both through the object store, or a gloo transfer group): three
    steps equal local mode's, where the generator is an object in the same process."""
    from orchestrator.registry import run

    extra = ("policy.top_k=1", "run.steps=3", "ppo.old_logprobs=rollout", "ppo.max_staleness=1")
    run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "local"), *extra))
    summary = run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "ray"), *extra, "run.mode=ray", "policy.replicas=2",
                                    "policy.zero_stage=3", "generator.replicas=2", "generator.num_cpus=0.5",
                                    f"generator.sync_transport={transport}"))
    assert len(summary["roles"]["generator"]) == 2
    records = {}
    for mode in ("local", "ray"):
        with open(tmp_path / mode / "metrics.jsonl") as f:
            records[mode] = [{k: v for k, v in r.items() if not k.startswith(TIMINGS + ("sync/mb",))} for r in map(json.loads, f)]
    assert [r.get("rollout/lag") for r in records["ray"]] == [None, 0.0, 1.0, 1.0]
    for a, b in zip(records["local"], records["ray"]):
        _assert_same(a, b)
