"""Where roles live: Ray connection, placement, role groups (local or Ray actors), process groups.

Public API (details in each module):

- `connect(address="")` / `shutdown()`: join the `ray job submit` cluster, an explicit one, or start
  a local one (`cluster.ray_init`); `has_gpus()`: whether the cluster has GPUs.
- `create_groups(hosting, {name: RoleSpec(Role, cfg_slice)})`: every role of a job as a `RoleGroup`,
  `LocalGroup` (in-process) or `RayGroup` (N actors, one ZeRO group), colocation resolved; in ray mode
  it connects first if needed. `Hosting` (mode, address, placement strategy, placement timeout,
  autoscaler) and the placement arithmetic live in `cluster.placement`; `group.hosts()` says where
  each replica ran.
- `batch`: `Batch` and `spec`, the typed batches that cross process boundaries.
- `serving`: a class as a Ray Serve HTTP deployment (`deploy`, `delete`).
- `group.scatter(Role.method, batch)`, `group.scatter_padded(...)` (any number of rows),
  `group.broadcast(Role.method, ...)`,
  `group.call_rank0(Role.method, ...)` -> `Pending`; `get(*pendings)` gathers with one ray.get.
- `gather_as("cat" | "list" | "first")`: a role method's declaration of how replica results combine.
- `RoleError`: a role method failed; names role, replica rank and method.
- `init_local()`: the world of size 1 for local mode and single-process tests (`cluster.dist`).
"""

from cluster.batch import Batch, spec
from cluster.dist import init_local
from cluster.group import LocalGroup, Pending, RayGroup, RoleError, RoleGroup, RoleSpec, create_groups, gather_as, get, wait_ready
from cluster.placement import (
    STRATEGIES,
    Hosting,
    Placement,
    PlacementError,
    Resources,
    check_feasible,
    plan_placements,
    plan_resources,
    where,
)
from cluster.ray_init import connect, cpus_for, has_gpus, shutdown

__all__ = [
    "connect",
    "shutdown",
    "has_gpus",
    "cpus_for",
    "init_local",
    "create_groups",
    "Hosting",
    "STRATEGIES",
    "PlacementError",
    "check_feasible",
    "where",
    "RoleSpec",
    "RoleGroup",
    "LocalGroup",
    "RayGroup",
    "Placement",
    "Resources",
    "plan_resources",
    "plan_placements",
    "wait_ready",
    "Pending",
    "Batch",
    "spec",
    "get",
    "gather_as",
    "RoleError",
]
