"""DPO in ray mode: two Ray replicas of the policy role with DeepSpeed ZeRO give the numbers of one
replica (local mode, one process) for the same global batch."""

from __future__ import annotations

import json
import os

import pytest

from ppo_helpers import tiny_model_dir
from test_dpo import _cfg


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(str(tmp_path_factory.mktemp("cache")))


def _records(out_dir) -> list[dict]:
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")} for line in f]


@pytest.mark.slow  # a local and a 2-replica DPO run per stage
@pytest.mark.parametrize("stage", [2, 3])
def test_two_ray_replicas_equal_one_local_replica(model_dir, tmp_path, ray_cluster, stage):
    from orchestrator.registry import run

    # top_k=1: the held-out generations are deterministic, so they do not depend on how prompts are sharded
    common = ("run.steps=3", "run.eval_every=2", "policy.micro_batch_size=2", "policy.num_cpus=0.5", "policy.top_k=1")
    one = run("dpo", _cfg(model_dir, str(tmp_path / "one"), *common))  # local mode: one replica, in this process
    two = run("dpo", _cfg(model_dir, str(tmp_path / "two"), *common, "run.mode=ray", "policy.replicas=2",
                     f"policy.zero_stage={stage}"))
    assert two["replicas"] == 2 and one["replicas"] == 1
    a, b = _records(tmp_path / "one"), _records(tmp_path / "two")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 1, 2, 3]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        bad = {k: (ra[k], rb[k]) for k in ra if rb[k] != pytest.approx(ra[k], rel=2e-4, abs=1e-5)}
        assert not bad, (ra["step"], bad)
    # the loss moved, so equal numbers are not the trivial log 2 of step 1
    assert abs(a[-2]["dpo/loss"] - a[1]["dpo/loss"]) > 1e-3
