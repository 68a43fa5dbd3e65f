"""Several Ray nodes on this one machine (`ray.cluster_utils.Cluster`, as Ray's own tests do; every node
on 127.0.0.1): replicas placed by strategy (PACK, SPREAD, STRICT_SPREAD), colocated replicas on their
partner's node, requests no node can hold refused at once, a PPO run across nodes equal to the
single-node run, and a resume after the node that hosted a replica is gone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import pytest

from ppo_helpers import TESTS_DIR, tiny_model_dir, tiny_ppo_config

pytestmark = pytest.mark.slow  # three raylets, then two ray-mode PPO runs across them (~3 min)

NODES = 3
CPUS_PER_NODE = 2


@pytest.fixture(scope="module")
def nodes():
    """A head and two worker nodes of 2 logical CPUs each, all on 127.0.0.1; this process is the driver."""
    import ray
    from ray.cluster_utils import Cluster

    from cluster.ray_init import _prefer_loopback_without_auth

    _prefer_loopback_without_auth()  # as the driver's own local cluster: loopback only, no token auth
    node_args = dict(num_cpus=CPUS_PER_NODE, node_ip_address="127.0.0.1", include_dashboard=False)
    c = Cluster(initialize_head=True, head_node_args=dict(node_args))
    for _ in range(NODES - 1):
        c.add_node(**node_args)
    c.wait_for_nodes()
    pythonpath = os.pathsep.join(p for p in (TESTS_DIR, os.environ.get("PYTHONPATH", "")) if p)
    ray.init(address=c.address, runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, log_to_driver=True)
    c.node_args = node_args
    yield c
    ray.shutdown()
    c.shutdown()


class Probe:
    """A role with no model: enough to see where its replicas land (the group's torch.distributed set-up runs)."""

    def __init__(self, cfg):
        self.cfg = cfg


@dataclasses.dataclass
class Slot:
    replicas: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    colocate_with: str | None = None


def _placed(nodes, strategy: str, **roles: Slot) -> dict[str, list[str]]:
    """Start the roles with `strategy`; {role: node id of each replica}; then release them."""
    from cluster import Hosting, RoleSpec, create_groups

    groups = create_groups(Hosting(mode="ray", address=nodes.address, strategy=strategy, placement_timeout_s=60),
                           {name: RoleSpec(Probe, cfg) for name, cfg in roles.items()})
    try:
        return {name: [h["node_id"] for h in g.hosts()] for name, g in groups.items()}
    finally:
        for g in groups.values():
            g.shutdown()


def test_strategies_place_replicas_across_nodes_and_colocation_follows(nodes):
    spread = _placed(nodes, "STRICT_SPREAD", policy=Slot(replicas=3, num_cpus=0.5), reference=Slot(replicas=3, num_cpus=0.5,
                                                                                                      colocate_with="policy"))
    assert len(set(spread["policy"])) == 3, spread  # one node per replica
    assert spread["reference"] == spread["policy"], spread  # replica i of a colocated role on replica i's node
    assert len(set(_placed(nodes, "SPREAD", policy=Slot(replicas=3, num_cpus=0.5))["policy"])) == 3
    packed = _placed(nodes, "PACK", policy=Slot(replicas=3, num_cpus=0.5))["policy"]
    assert len(set(packed)) == 1, packed  # three half-CPU replicas fit on one node
    spilled = _placed(nodes, "PACK", policy=Slot(replicas=3, num_cpus=1.0))["policy"]
    assert len(set(spilled)) == 2, spilled  # 3 CPUs on nodes of 2: PACK spills over to a second node


def test_requests_no_node_can_hold_fail_at_once(nodes):
    from cluster import PlacementError

    for strategy, slot, words in (
        ("STRICT_SPREAD", Slot(replicas=NODES + 1, num_cpus=0.5), "STRICT_SPREAD: its 4 replicas need 4 nodes"),
        ("PACK", Slot(replicas=1, num_cpus=CPUS_PER_NODE + 1), "one replica needs {CPU: 3} on one node (policy.num_cpus=3)"),
        ("STRICT_PACK", Slot(replicas=3, num_cpus=1.0), "STRICT_PACK: its 3 replicas need {CPU: 3} on one node"),
    ):
        t0 = time.perf_counter()
        with pytest.raises(PlacementError, match=r"role 'policy' cannot be placed") as err:
            _placed(nodes, strategy, policy=slot)
        assert words in str(err.value)
        assert time.perf_counter() - t0 < 5, "refused at once, not after a timeout"
    t0 = time.perf_counter()
    with pytest.raises(PlacementError, match=r"the job asks for \{CPU: 8\} in all \(policy: 4 x \{CPU: 2\}\) and the "
                                             r"cluster's 3 node\(s\) have \{CPU: 6\} in all"):
        _placed(nodes, "PACK", policy=Slot(replicas=4, num_cpus=2.0))  # each replica fits a node, all four do not
    assert time.perf_counter() - t0 < 5


def test_a_request_that_must_wait_is_reported_then_times_out(nodes, caplog):
    from cluster import PlacementError

    from cluster import Hosting, RoleSpec, create_groups

    # another job holds 5 of the 6 CPUs: a request the cluster could hold, but not now, is waited for out loud
    holder = create_groups(Hosting(mode="ray", address=nodes.address, placement_timeout_s=30),
                           {"other_job": RoleSpec(Probe, Slot(replicas=5, num_cpus=1.0))})["other_job"]
    try:
        t0 = time.perf_counter()
        with pytest.raises(PlacementError, match="placement not possible within run.placement_timeout_s=4 s") as err:
            create_groups(Hosting(mode="ray", address=nodes.address, placement_timeout_s=4, report_every_s=1),
                          {"policy": RoleSpec(Probe, Slot(replicas=2, num_cpus=1.0))})
        assert time.perf_counter() - t0 < 20
    finally:
        holder.shutdown()
    assert "asked in all {CPU: 2}" in str(err.value) and "free CPU 1 of 6" in str(err.value)
    reports = [r.getMessage() for r in caplog.records if "waiting" in r.getMessage() and "for resources" in r.getMessage()]
    assert reports and "policy: 2 x {CPU: 1} (PACK)" in reports[0], reports


def _records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_ppo_across_nodes_equals_one_process_and_resumes_after_a_node_is_gone(nodes, tmp_path):
    from orchestrator.registry import run

    model_dir = tiny_model_dir(str(tmp_path / "cache"))
    common = ("policy.top_k=1", "run.save_every=1", "run.keep_checkpoints=4")  # greedy: rollouts do not depend on sharding
    whole = run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "local"), *common, "run.steps=4"))
    across = ("run.mode=ray", f"run.ray_address={nodes.address}", "run.placement_strategy=STRICT_SPREAD",
              "policy.replicas=2", "critic.replicas=2", "policy.zero_stage=2", "critic.zero_stage=2",
              "reference.replicas=2", "reference.colocate_with=policy")
    out = tmp_path / "across"
    first = run("ppo", tiny_ppo_config(model_dir, str(out), *common, *across, "run.steps=2"))

    roles = first["roles"]
    policy_nodes = [h["node_id"] for h in roles["policy"]]
    assert len(set(policy_nodes)) == 2, roles["policy"]  # STRICT_SPREAD: the two replicas on two nodes
    assert [h["node_id"] for h in roles["reference"]] == policy_nodes  # colocated replica i on policy replica i's node
    assert all(h["peak_memory_mb"] > 0 and h["pid"] for hosts in roles.values() for h in hosts)

    # the node of a policy replica goes away, a new one joins; the run resumes from the shared output_dir
    gone = next(n for n in nodes.worker_nodes if n.node_id in policy_nodes)
    nodes.remove_node(gone)
    nodes.add_node(**nodes.node_args)
    nodes.wait_for_nodes()
    second = run("ppo", tiny_ppo_config(model_dir, str(out), *common, *across, "run.steps=4"))
    hosts = [h["node_id"] for hosts in second["roles"].values() for h in hosts]
    assert gone.node_id not in hosts

    ours, theirs = _records(out), _records(tmp_path / "local")
    assert [r["step"] for r in ours] == [0, 1, 2, 3, 4]
    for a, b in zip(theirs, ours):
        for key, value in a.items():
            if not key.startswith(("time/", "run/")):
                assert b[key] == pytest.approx(value, rel=1e-3, abs=1e-5), (a["step"], key)
    assert whole["roles"]["policy"][0]["pid"] == os.getpid()  # the reference run: every role in this process
