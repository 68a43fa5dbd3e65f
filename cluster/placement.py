"""Where replicas run in ray mode: hosting settings, placement groups, waiting for them out loud, and
where each replica ended up.

- `Hosting`: the run's hosting choices (mode, cluster address, placement strategy, how long to wait
  for resources, whether an autoscaler may add nodes). `orchestrator` builds it from ``run.*``.
- `plan_resources` / `plan_placements`: one placement group per role (shared by colocated roles),
  one bundle per replica.
- `check_feasible`: a request that no node of the cluster could ever hold fails at once, naming the
  role, its config keys and the largest node.
- `wait_placed`: waits for the placement groups, and says at once (then every 30 s) what each
  waiting role asked for and what the cluster has free, up to ``Hosting.placement_timeout_s``.
- `where()`: the node, process, device and peak memory of the calling process (a replica).

Strategies (Ray's placement-group strategies, applied to the bundles of one role, i.e. its replicas):
``PACK`` (default: as few nodes as possible, spilling over when one node cannot hold them; NCCL
within a node is fastest), ``SPREAD`` (one node each where possible), ``STRICT_SPREAD`` (one node
each, or wait), ``STRICT_PACK`` (all on one node, or wait). Colocated roles share their root role's
placement group, so replica i of each runs in bundle i, on the same node and device, whatever the
strategy.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from typing import Any, Literal, Mapping, Sequence

import cluster.dist as dist
import cluster.ray_init as ray_init

__all__ = ["Hosting", "STRATEGIES", "Resources", "plan_resources", "plan_totals", "Placement", "plan_placements", "PlacementError",
           "check_feasible", "wait_placed", "where", "peak_memory_mb"]

log = logging.getLogger(__name__)

STRATEGIES = ("PACK", "SPREAD", "STRICT_SPREAD", "STRICT_PACK")


@dataclasses.dataclass(frozen=True)
class Hosting:
    """How a job's roles are hosted (from the job's ``run.*`` keys; see `orchestrator.config.RunConfig`)."""

    mode: Literal["local", "ray"] = "local"
    address: str = ""
    strategy: str = "PACK"
    placement_timeout_s: float = 600.0
    autoscaler: bool = False
    """The cluster grows on demand: requests no current node can hold are waited for, not refused, and
    GPUs asked for are kept even while no GPU node is up."""
    report_every_s: float = 30.0
    """While waiting for resources, how often the wait is reported (the first report comes at once)."""
    profile_comm: bool = False
    """Time every collective of every replica (`cluster.dist.profile_collectives`); `where()` reports it."""


class PlacementError(RuntimeError):
    """A role's replicas cannot be placed: a request no node could hold, or the wait timed out."""


@dataclasses.dataclass(frozen=True)
class Resources:
    """Per-replica actor request, and per-bundle reservation, of one role in a placement group."""

    num_cpus: float
    num_gpus: float

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in (("CPU", self.num_cpus), ("GPU", self.num_gpus)) if v > 0}


def plan_resources(cfgs: Mapping[str, Any], *, has_gpus: bool) -> dict[str, tuple[str, int, Resources, Resources]]:
    """Pure placement arithmetic: role -> (placement name, bundles, bundle size, actor request).

    cfgs: role name -> config slice with replicas, num_cpus, num_gpus, colocate_with.

    - A role alone: ``replicas`` bundles of exactly its (num_cpus, num_gpus).
    - Colocated roles (a ``colocate_with`` chain) share one placement group, replica i of each in
      bundle i. CPUs add up (threads are not shared). GPUs are SHARED, which is the point of
      colocation: the bundle holds the largest ``num_gpus`` among them and each role's actors ask
      for an equal fraction of it, so Ray puts them on the same device(s) (e.g. two roles of 1 GPU
      -> 1 GPU per bundle, 0.5 per actor).
    - ``has_gpus=False``: every num_gpus is 0 (the same config runs on a CPU-only cluster).
    - A replica uses one device (``cuda:0`` of what Ray gives it), so num_gpus > 1 is an error.
    """
    for name, c in cfgs.items():
        if c.num_gpus > 1:
            raise ValueError(f"{name}.num_gpus={c.num_gpus}: a replica drives one device; use more replicas")
    root = _resolve_colocation(cfgs)
    members: dict[str, list[str]] = {}
    for name, r in root.items():
        members.setdefault(r, []).append(name)
    plan = {}
    for names in members.values():
        bundles = max(cfgs[m].replicas for m in names)
        gpus = max(cfgs[m].num_gpus for m in names) if has_gpus else 0.0
        bundle = Resources(num_cpus=sum(cfgs[m].num_cpus for m in names), num_gpus=gpus)
        share = gpus / len(names)
        for m in names:
            plan[m] = ("+".join(names), bundles, bundle, Resources(num_cpus=cfgs[m].num_cpus, num_gpus=share))
    return plan


class Placement:
    """One Ray placement group: bundle i hosts replica i of every role placed in it.

    `requests` holds each member role's per-actor resource request (`plan_resources`).
    Reference-counted by the groups using it; removed when the last of them shuts down.
    """

    def __init__(self, num_bundles: int, bundle: Resources, requests: Mapping[str, Resources], *,
                 strategy: str = "PACK", name: str = ""):
        from ray.util.placement_group import placement_group

        if strategy not in STRATEGIES:
            raise ValueError(f"unknown placement strategy {strategy!r}; one of {', '.join(STRATEGIES)}")
        self.bundles = [dict(bundle.as_dict() or {"CPU": 0.001}) for _ in range(num_bundles)]  # a bundle cannot be empty
        self.requests = dict(requests)
        self.strategy, self.name = strategy, name
        self.pg = placement_group(self.bundles, strategy=strategy)
        self._users = 0

    def __repr__(self) -> str:
        return f"Placement({self.name!r}, {len(self.bundles)} x {self.bundles[0]}, {self.strategy})"

    def describe(self) -> str:
        """e.g. ``reference+reward: 2 x {CPU: 2} (PACK)``"""
        return f"{self.name}: {len(self.bundles)} x {_fmt(self.bundles[0])} ({self.strategy})"

    def _acquire(self) -> None:
        self._users += 1

    def _release(self) -> None:
        self._users -= 1
        if self._users <= 0:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self.pg)


def _resolve_colocation(cfgs: Mapping[str, Any]) -> dict[str, str]:
    """role -> the root role whose placement it uses (following colocate_with chains)."""
    root: dict[str, str] = {}
    for name in cfgs:
        seen, cur = [name], name
        while getattr(cfgs[cur], "colocate_with", None):
            nxt = cfgs[cur].colocate_with
            if nxt not in cfgs:
                raise ValueError(f"{cur}.colocate_with={nxt!r} names no role of this job ({', '.join(cfgs)})")
            if nxt in seen:
                raise ValueError(f"colocation cycle: {' -> '.join(seen + [nxt])}")
            seen.append(nxt)
            cur = nxt
        root[name] = cur
    return root


def plan_placements(cfgs: Mapping[str, Any], hosting: Hosting) -> dict[str, Placement]:
    """One `Placement` per role, shared by colocated roles (see `plan_resources`); needs Ray.

    On a cluster without GPUs every num_gpus becomes 0, with a warning naming the roles, unless an
    autoscaler may still add GPU nodes (``hosting.autoscaler``). A request no node could hold fails
    here, before anything is reserved (`check_feasible`).
    """
    has_gpus = ray_init.has_gpus() or hosting.autoscaler
    wanted = [n for n, c in cfgs.items() if c.num_gpus > 0]
    if wanted and not has_gpus:
        log.warning("the Ray cluster has no GPUs: %s run on CPU (num_gpus -> 0)", ", ".join(wanted))
    plan = plan_resources(cfgs, has_gpus=has_gpus)
    if not hosting.autoscaler:
        check_feasible(plan, cfgs, hosting.strategy, _node_totals())
    placements: dict[str, Placement] = {}
    for name, (group_name, bundles, bundle, _) in plan.items():
        if group_name not in placements:
            requests = {m: req for m, (g, _, _, req) in plan.items() if g == group_name}
            placements[group_name] = Placement(bundles, bundle, requests, strategy=hosting.strategy, name=group_name)
    return {name: placements[plan[name][0]] for name in cfgs}


# ------------------------------------------------------------------------------ feasibility, waiting


def _fmt(res: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(res.items()) if k in ("CPU", "GPU")) + "}"


def _fits(need: Mapping[str, float], have: Mapping[str, float]) -> bool:
    return all(have.get(k, 0.0) + 1e-9 >= v for k, v in need.items())


def _node_totals() -> list[dict[str, float]]:
    """Total CPU/GPU of every alive node of the connected cluster."""
    import ray

    return [{k: float(n["Resources"].get(k, 0.0)) for k in ("CPU", "GPU")} for n in ray.nodes() if n.get("Alive")]


def plan_totals(plan: Mapping[str, tuple[str, int, Resources, Resources]]) -> dict[str, float]:
    """What a `plan_resources` plan reserves in all: every placement group's bundles, each counted once."""
    total: dict[str, float] = {}
    for _, n_bundles, bundle, _ in {p[0]: p for p in plan.values()}.values():
        for k, v in bundle.as_dict().items():
            total[k] = total.get(k, 0.0) + v * n_bundles
    return total


def check_feasible(plan: Mapping[str, tuple[str, int, Resources, Resources]], cfgs: Mapping[str, Any], strategy: str,
                   nodes: Sequence[Mapping[str, float]]) -> None:
    """Raise `PlacementError` for a placement no node of `nodes` (their total resources) could ever hold.

    One bundle (a replica, plus the replicas colocated with it) must fit on one node; STRICT_PACK
    needs all of a role's bundles on one node; STRICT_SPREAD needs a node per bundle; all bundles of
    the job together must not exceed the cluster's total. Requests that fit the nodes but not what is
    free now (other jobs hold it) are not refused: they are waited for (`wait_placed`). Pure arithmetic
    on `nodes`, so tests can give any cluster shape.
    """
    asked = plan_totals(plan)
    has = {k: sum(n.get(k, 0.0) for n in nodes) for k in asked}
    short = {k: v for k, v in asked.items() if v > has[k] + 1e-9}
    if short:
        per_role = "; ".join(f"{g}: {n} x {_fmt(b.as_dict())}" for g, n, b, _ in {p[0]: p for p in plan.values()}.values())
        raise PlacementError(f"the job asks for {_fmt(asked)} in all ({per_role}) and the cluster's {len(nodes)} node(s) have "
                             f"{_fmt(has)} in all; lower replicas / num_cpus / num_gpus, colocate roles (role.colocate_with), "
                             "or add nodes (run.autoscaler=true waits for them; Ray CPUs are logical: `ray start --num-cpus N` "
                             "may exceed the cores)")
    seen = set()
    for name, (group_name, n_bundles, bundle, _) in plan.items():
        if group_name in seen:
            continue
        seen.add(group_name)
        need = bundle.as_dict()
        members = [m for m, p in plan.items() if p[0] == group_name]
        keys = ", ".join(f"{m}.num_cpus={cfgs[m].num_cpus:g}" + (f" {m}.num_gpus={cfgs[m].num_gpus:g}" if need.get("GPU") else "")
                         for m in members)
        biggest = max(nodes, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)), default={})
        fitting = [n for n in nodes if _fits(need, n)]
        cluster = f"the cluster's {len(nodes)} node(s) have at most {_fmt(biggest)}"
        if not fitting:
            raise PlacementError(f"role '{group_name}' cannot be placed: one replica needs {_fmt(need)} on one node ({keys}), "
                                 f"and {cluster}; lower the request, or add a node that large "
                                 "(run.autoscaler=true waits for one)")
        if strategy == "STRICT_PACK" and not any(_fits({k: v * n_bundles for k, v in need.items()}, n) for n in nodes):
            raise PlacementError(f"role '{group_name}' cannot be placed with STRICT_PACK: its {n_bundles} replicas need "
                                 f"{_fmt({k: v * n_bundles for k, v in need.items()})} on one node ({keys}), and {cluster}; "
                                 "use run.placement_strategy=PACK to let them spread")
        if strategy == "STRICT_SPREAD" and len(fitting) < n_bundles:
            raise PlacementError(f"role '{group_name}' cannot be placed with STRICT_SPREAD: its {n_bundles} replicas need "
                                 f"{n_bundles} nodes with {_fmt(need)} each, and {len(fitting)} of the cluster's {len(nodes)} "
                                 "nodes have it; use run.placement_strategy=SPREAD or PACK, or fewer replicas")


def describe_free() -> str:
    """What the connected cluster has free now, in all and per node."""
    import ray

    total = ray.cluster_resources()
    free = ray.available_resources()
    parts = [f"{k} {free.get(k, 0.0):g} of {total.get(k, 0.0):g}" for k in ("CPU", "GPU") if total.get(k, 0.0) or k == "CPU"]
    per_node = []
    try:
        from ray._private.state import available_resources_per_node

        ips = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes() if n.get("Alive")}
        for node_id, res in available_resources_per_node().items():
            per_node.append(f"{ips.get(node_id, '?')}/{node_id[:8]} {_fmt({k: res.get(k, 0.0) for k in ('CPU', 'GPU') if k in res or k == 'CPU'})}")
    except Exception:  # noqa: BLE001  (a private API; the totals above are enough)
        pass
    return f"free {', '.join(parts)} on {len(ray.nodes())} node(s)" + (f" [{'; '.join(per_node)}]" if per_node else "")


def wait_placed(placements: Sequence[Placement], hosting: Hosting) -> dict[str, float]:
    """Wait until every placement group is reserved; returns {placement name: seconds it took}.

    When one is not placed at once, says so within seconds, per waiting role: what it asked for,
    which roles are placed, and what the cluster has free; then again every ``report_every_s``
    (an autoscaler may be adding nodes). Past ``placement_timeout_s``: `PlacementError` with the same
    account.
    """
    import ray

    refs = {p.pg.ready(): p for p in placements}
    placed: dict[str, float] = {}
    t0 = time.monotonic()
    deadline = t0 + hosting.placement_timeout_s
    next_report = t0 + min(2.0, hosting.report_every_s)
    waiting = list(refs)
    while waiting:
        now = time.monotonic()
        done, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=max(0.0, min(next_report, deadline) - now))
        for r in done:
            placed[refs[r].name] = round(time.monotonic() - t0, 2)
        if not waiting:
            break
        now = time.monotonic()
        if now >= deadline:
            raise PlacementError(f"placement not possible within run.placement_timeout_s={hosting.placement_timeout_s:g} s: "
                                 + _account([refs[r] for r in waiting], placed, placements))
        if now >= next_report:
            log.warning("waiting %.0f s for resources (up to run.placement_timeout_s=%g): %s", now - t0,
                        hosting.placement_timeout_s, _account([refs[r] for r in waiting], placed, placements))
            next_report = now + hosting.report_every_s
    if time.monotonic() - t0 > 2.0:
        log.info("all roles placed after %.0f s", time.monotonic() - t0)
    return placed


def _account(waiting: list[Placement], placed: Mapping[str, float], placements: Sequence[Placement]) -> str:
    """'waiting: critic 1 x {CPU: 1} (PACK); placed: policy, reference; asked in all {CPU: 4}; free CPU 0 of 2 ...'"""
    asked: dict[str, float] = {}
    for p in {id(p): p for p in placements}.values():
        for k, v in p.bundles[0].items():
            asked[k] = asked.get(k, 0.0) + v * len(p.bundles)
    text = "waiting: " + "; ".join(p.describe() for p in waiting)
    if placed:
        text += f"; placed: {', '.join(placed)}"
    text += f"; asked in all {_fmt(asked)}; {describe_free()}"
    import ray

    total = ray.cluster_resources()
    if not _fits(asked, total):
        text += ("; the cluster is smaller than the job: add nodes, or lower replicas / num_cpus / num_gpus "
                 "(Ray CPUs are logical: `ray start --num-cpus N` may exceed the cores)")
    return text


# ------------------------------------------------------------------------------------------- where


def peak_memory_mb() -> float:
    """Peak memory of this process: the CUDA allocator's peak on GPU, else the peak resident set size."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def where() -> dict:
    """The node, host, process, devices and peak memory of this process (a replica, or the driver in local mode)."""
    import torch

    info = {"node_id": "", "node_ip": "127.0.0.1", "hostname": socket.gethostname(), "pid": os.getpid(), "gpus": []}
    try:
        import ray

        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            info["node_id"] = ctx.get_node_id()
            info["node_ip"] = ray.util.get_node_ip_address()
            info["gpus"] = [str(g) for g in ray.get_gpu_ids()]
    except ImportError:  # pragma: no cover
        pass
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    info["peak_memory_mb"] = round(peak_memory_mb(), 1)
    info["memory"] = "cuda_max_allocated" if cuda else "max_rss"
    info.update(dist.collective_stats())
    return info
