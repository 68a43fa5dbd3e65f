"""Role groups: N data-parallel replicas of one role class, called the same way in local and ray mode.

A role is a plain class, ``Role(cfg_slice, *args, **kwargs)``, whose methods take and return typed
batches (`cluster.batch.Batch`) or plain values. A group hosts it:

- `LocalGroup`: one instance in the driver process (world size 1; breakpoints work);
- `RayGroup`: one Ray actor per replica in a placement group; every replica joins the role's
  torch.distributed group (gloo on CPU, NCCL on GPU) before the role object is built, so the role's
  DeepSpeed engine is one ZeRO data-parallel engine across the replicas.

The driver is identical in both modes::

    groups = create_groups(cfg.run.mode, {"policy": RoleSpec(Policy, cfg.policy), "critic": ...})
    lp = groups["policy"].scatter(Policy.logprobs, rollout)   # rollout.split(N), one shard per replica
    v = groups["critic"].scatter(Critic.values, rollout)      # both run at once
    lp, v = get(lp, v)                                        # ONE ray.get; shards concatenated

Methods are named by reference (``Policy.logprobs``), never by a string typed at the call site, and
how their per-replica results combine is declared once on the method with `gather_as`:

    class Policy:
        @gather_as("cat")       # Batch shards -> Batch.cat (rank order = row order)
        def logprobs(self, rollout: Rollout) -> LogProbs: ...
        @gather_as("first")     # the replicas agree (e.g. an all-reduced metric); take rank 0's
        def metrics(self) -> dict[str, float]: ...
        def train(self, exp: Experience) -> dict[str, float]: ...   # default "list": per-replica list

Every Batch argument and result is `check()`-ed where it crosses the boundary, and Batch results are
moved to CPU (the driver may have no GPU). Errors inside a role method surface as `RoleError`
naming the role, the replica rank and the method, with the replica's traceback.

Placement (ray mode, `cluster.placement`): one placement group per role with one bundle per
replica, ``{"CPU": num_cpus, "GPU": num_gpus}``, placed by the run's strategy (PACK by default;
SPREAD, STRICT_SPREAD, STRICT_PACK). A role whose config says ``colocate_with: other`` is placed in
the other role's placement group: replica i of both runs in bundle i, on the same node and the same
device(s). A request no node could hold fails at once; one that must wait for free resources is
reported within seconds, with what the cluster has free. ``group.hosts()`` says where each replica
ran (node, process, device, peak memory, start-up time).
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import functools
import logging
import os
import time
import traceback
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

import torch

from cluster.batch import Batch
import cluster.dist as dist
import cluster.ray_init as ray_init
from cluster.placement import Hosting, Placement, Resources, plan_placements, plan_resources, wait_placed, where

__all__ = [
    "GatherMode",
    "gather_as",
    "RoleError",
    "Pending",
    "get",
    "RoleGroup",
    "LocalGroup",
    "RayGroup",
    "Hosting",
    "Placement",
    "Resources",
    "plan_resources",
    "plan_placements",
    "RoleSpec",
    "create_groups",
    "wait_ready",
]

log = logging.getLogger(__name__)

GatherMode = Literal["cat", "list", "first"]
_GATHER_ATTR = "__rlhf_gather__"
_GATHER_MODES = ("cat", "list", "first")


def gather_as(mode: GatherMode) -> Callable[[Callable], Callable]:
    """Declare how a role method's per-replica results combine: "cat", "list" (default) or "first".

    "cat": the results are shards of one Batch class, concatenated in rank order (the inverse of the
    split that `RoleGroup.scatter` made). "list": the list of per-replica results, in rank order.
    "first": rank 0's result (for values every replica computes identically, e.g. all-reduced).
    Only sets an attribute: the method stays a plain method, callable without any group.
    """
    if mode not in _GATHER_MODES:
        raise ValueError(f"gather mode must be one of {_GATHER_MODES}, got {mode!r}")

    def mark(fn: Callable) -> Callable:
        setattr(fn, _GATHER_ATTR, mode)
        return fn

    return mark


class RoleError(RuntimeError):
    """A role method (or constructor) failed in a replica; says which role, rank and method.

    The message carries the replica's own traceback (the remote frames are not in the driver's).
    `died`: the replica's actor (its process or node) is gone, rather than its method raising.
    """

    def __init__(self, message: str, role: str = "", rank: int = -1, method: str = "", died: bool = False):
        super().__init__(message)
        self.role, self.rank, self.method, self.died = role, rank, method, died

    def __reduce__(self):  # keep the attributes across Ray's pickling
        return (type(self), (self.args[0], self.role, self.rank, self.method, self.died))


# ------------------------------------------------------------------------------------ invocation


def _method_name(role_cls: type, method: Callable) -> str:
    """Name of `method` after checking that it is `role_cls`'s own attribute (``Role.method``)."""
    name = getattr(method, "__name__", None)
    if name is None or not callable(method):
        raise TypeError(f"expected a method of {role_cls.__name__} such as {role_cls.__name__}.some_method, got {method!r}")
    if getattr(role_cls, name, None) != method:
        raise TypeError(f"{getattr(method, '__qualname__', name)} is not a method of {role_cls.__name__}")
    return name


def _gather_mode(method: Callable) -> GatherMode:
    return getattr(method, _GATHER_ATTR, "list")


def _label(role: str, rank: int, world_size: int) -> str:
    return f"role '{role}' replica {rank}/{world_size}"


def _invoke(obj: Any, role: str, rank: int, world_size: int, method: str, args: tuple, kwargs: dict) -> Any:
    """Call ``obj.method(*args, **kwargs)`` as a boundary crossing: check batches, CPU results, RoleError."""
    try:
        for value in (*args, *kwargs.values()):
            if isinstance(value, Batch):
                value.check()
        result = getattr(obj, method)(*args, **kwargs)
        if isinstance(result, Batch):
            result = result.to("cpu").check()
        return result
    except Exception as exc:
        where = f"{_label(role, rank, world_size)}: {type(obj).__name__}.{method}"
        raise RoleError(
            f"{where} raised {type(exc).__name__}: {exc}\n--- traceback in the replica ---\n{traceback.format_exc()}",
            role,
            rank,
            method,
        ) from exc


def _construct(role_cls: type, cfg: Any, args: tuple, kwargs: dict, role: str, rank: int, world_size: int) -> Any:
    try:
        return role_cls(cfg, *args, **kwargs)
    except Exception as exc:
        raise RoleError(
            f"{_label(role, rank, world_size)}: {role_cls.__name__}(...) raised {type(exc).__name__}: {exc}\n"
            f"--- traceback in the replica ---\n{traceback.format_exc()}",
            role,
            rank,
            "__init__",
        ) from exc


# --------------------------------------------------------------------------------------- Pending


class Pending:
    """The not-yet-gathered results of one group call; resolve with `get()` / `cluster.get(...)`.

    In ray mode it holds one ObjectRef per called replica; in local mode the value is already there.
    """

    def __init__(self, *, role: str, method: str, mode: GatherMode | Literal["single"], refs=None, values=None,
                 labels: Sequence[str] = ()):
        self.role, self.method, self.mode = role, method, mode
        self._refs = refs  # list[ObjectRef] | None
        self._values = values  # list | None (local mode, or after resolution)
        self._labels = list(labels)  # per ref: who, for errors
        self._done = False
        self._result: Any = None
        self._rows: int | None = None  # `scatter_padded`: the rows of the caller's batch, kept from a "cat" result

    def __repr__(self) -> str:
        state = "done" if self._done else f"{len(self._refs or self._values or [])} replica(s) running"
        return f"Pending({self.role}.{self.method}, gather={self.mode}, {state})"

    def _finish(self, values: list) -> Any:
        if self.mode == "single":
            result = values[0]
        elif self.mode == "first":
            result = values[0]
        elif self.mode == "list":
            result = list(values)
        else:  # "cat"
            if not all(isinstance(v, Batch) for v in values):
                kinds = sorted({type(v).__name__ for v in values})
                raise TypeError(f"{self.role}.{self.method} is declared gather_as('cat') but returned {kinds}, not Batch")
            result = type(values[0]).cat(values)
            if self._rows is not None:
                result = result.select(slice(0, self._rows))
        self._done, self._result, self._refs, self._values = True, result, None, None
        return result


def get(*pendings: Pending) -> Any:
    """Gather several calls with ONE ``ray.get``: the value of one Pending, or a tuple for several.

    Calls already resolved (local mode, or earlier gets) are returned as they are. A failure in any
    replica raises its `RoleError` (role, rank, method, replica traceback); a dead replica raises a
    `RoleError` naming it.
    """
    if not pendings:
        raise TypeError("get() needs at least one Pending")
    unique = list({id(p): p for p in pendings}.values())  # the same Pending may be passed twice
    waiting = [p for p in unique if not p._done and p._refs is not None]
    if waiting:
        import ray

        refs = [r for p in waiting for r in p._refs]
        try:
            values = ray.get(refs)
        except ray.exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, RoleError):
                raise cause from None
            raise
        except ray.exceptions.RayActorError as err:
            raise _actor_error(err, waiting) from err
        start = 0
        for p in waiting:
            n = len(p._refs)
            p._finish(values[start : start + n])
            start += n
    for p in unique:
        if not p._done:
            p._finish(p._values)
    results = tuple(p._result for p in pendings)
    return results[0] if len(results) == 1 else results


def _actor_error(err: Exception, waiting: list[Pending]) -> RoleError:
    """A RoleError naming the replica whose actor died, found by asking each ref in turn."""
    import ray

    for p in waiting:
        for ref, label in zip(p._refs, p._labels):
            try:
                ray.get(ref, timeout=0)
            except ray.exceptions.RayActorError:
                return RoleError(f"{label}: the actor died during {p.role}.{p.method}: {err}", p.role, -1, p.method, died=True)
            except Exception:  # other failures or not ready: not the dead one
                continue
    return RoleError(f"a replica died: {err}", died=True)


# ------------------------------------------------------------------------------------- interface


class RoleGroup(abc.ABC):
    """N replicas of one role. Call methods by reference; every call returns a `Pending`."""

    name: str
    role_cls: type

    @property
    @abc.abstractmethod
    def world_size(self) -> int:
        """Number of replicas (1 in local mode)."""

    def scatter(self, method: Callable, batch: Batch, *args: Any, **kwargs: Any) -> Pending:
        """``batch.split(world_size)``: shard i goes to replica i, with the same `args`/`kwargs` for all.

        The batch's rows must divide evenly by the number of replicas. Gathered by the method's
        `gather_as` mode ("cat" restores the original row order).
        """
        if not isinstance(batch, Batch):
            raise TypeError(f"scatter needs a Batch as its first argument, got {type(batch).__name__}")
        name = _method_name(self.role_cls, method)
        shards = batch.check().split(self.world_size)
        return self._submit(name, _gather_mode(method), [(shard, *args) for shard in shards], kwargs)

    def scatter_padded(self, method: Callable, batch: Batch, *args: Any, **kwargs: Any) -> Pending:
        """`scatter` for any number of rows, for a method gathered with "cat" (evaluation, scoring).

        The batch is padded to a multiple of the replicas with its own first rows (every replica gets
        the same number of rows, so under ZeRO-3 every one makes the same collective forward passes),
        and the gathered result is cut back to the batch's rows.
        """
        if _gather_mode(method) != "cat":
            raise TypeError(f"scatter_padded needs a method gathered with 'cat'; {method.__qualname__} is not")
        rows = batch.num_rows
        extra = (-rows) % self.world_size
        if extra:
            batch = type(batch).cat([batch, batch.select([i % rows for i in range(extra)])])
        pending = self.scatter(method, batch, *args, **kwargs)
        pending._rows = rows
        return pending

    def broadcast(self, method: Callable, *args: Any, **kwargs: Any) -> Pending:
        """Call `method` with the same arguments on every replica (e.g. save, metrics, collectives).

        An argument may be another group's `Pending` of a "first" or "single" call: in ray mode its result
        goes from that replica to these through the object store without passing the driver (e.g. the
        policy's weights to the generator), and a failure of that call is raised as its own `RoleError`."""
        name = _method_name(self.role_cls, method)
        return self._submit(name, _gather_mode(method), [args] * self.world_size, kwargs)

    def call_rank0(self, method: Callable, *args: Any, **kwargs: Any) -> Pending:
        """Call `method` on replica 0 only; its result is returned as is.

        Only for methods without collectives: under ZeRO a method that touches the engine (forward,
        gathered params) on one rank waits forever for the others. Use `broadcast` with
        ``gather_as("first")`` for those.
        """
        name = _method_name(self.role_cls, method)
        return self._submit(name, "single", [args], kwargs)

    @abc.abstractmethod
    def _submit(self, method: str, mode: str, per_rank_args: list[tuple], kwargs: dict) -> Pending:
        """Start ``method(*per_rank_args[r], **kwargs)`` on replicas 0..len(per_rank_args)-1."""

    @abc.abstractmethod
    def hosts(self) -> list[dict]:
        """Where each replica runs, in rank order: node id and IP, hostname, pid, GPU ids, peak memory so far
        (`cluster.placement.where`), and the role's start-up time (``startup_s``: from asking for its
        replicas to their role objects built, placement wait included)."""

    def shutdown(self) -> None:
        """Release the replicas: the role's own `shutdown()` first when it has one (an inference engine
        frees its memory and processes), then ray: kill the actors; local: drop the object."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.role_cls.__name__}, replicas={self.world_size})"


def replica_threads(mode: str, num_cpus: float, threads: int = 0, alone: bool = False, replicas: int = 1) -> int:
    """Intra-op threads of a replica (`PlacementConfig.threads`). Ray mode: `threads` when set; else, for a
    role alone in its job (sft, dpo, rm: nothing else computes while it does), the cores of this node
    divided by the role's `replicas`; else `num_cpus` (the roles of PPO share the node). At least 1.
    Local mode: every role shares this process and its threads."""
    if mode != "ray":
        return torch.get_num_threads()
    if threads:
        return threads
    if alone:
        return max(1, (os.cpu_count() or 1) // replicas)
    return max(1, int(num_cpus))


_ALONE_THREADS = 0
"""In a Ray replica: the threads of a call that runs while the rest of the job waits (`alone_threads`)."""


@contextlib.contextmanager
def alone_threads():
    """For a call during which nothing else of the job computes (PPO's generation: every other role waits
    for the rollout): the replica's intra-op threads become those of a role alone on its node (the node's
    cores over the role's replicas, or its `threads`), then return to its own. A no-op outside a Ray replica
    (local mode: every role shares this process's threads already)."""
    before = torch.get_num_threads()
    if _ALONE_THREADS and _ALONE_THREADS != before:
        torch.set_num_threads(_ALONE_THREADS)
        try:
            yield
        finally:
            torch.set_num_threads(before)
    else:
        yield


# ----------------------------------------------------------------------------------------- local


class LocalGroup(RoleGroup):
    """The role as one plain object in this process: world size 1, no Ray.

    Joins the process-wide world of size 1 (`cluster.dist.init_local`), shared by every local role.
    Calls run eagerly when made and return resolved Pendings; an error is raised at the call (as a
    `RoleError` chained to the original exception, so a debugger's post-mortem lands in the role).
    ``cfg.replicas`` is ignored: ZeRO over one replica gives the same numbers by construction.
    """

    def __init__(self, role_cls: type, cfg: Any, *, name: str, args: tuple = (), kwargs: dict | None = None):
        self.name, self.role_cls = name, role_cls
        replicas = getattr(cfg, "replicas", 1)
        if replicas != 1:
            log.info("local mode: role %r runs as 1 replica (config asks for %d)", name, replicas)
        dist.init_local()
        t0 = time.perf_counter()
        self.role = _construct(role_cls, cfg, tuple(args), dict(kwargs or {}), name, 0, 1)
        self.startup_s = round(time.perf_counter() - t0, 2)
        self.busy_s = 0.0  # seconds inside the role's methods (`_Replica.busy_s`)

    @property
    def world_size(self) -> int:
        return 1

    def _submit(self, method: str, mode: str, per_rank_args: list[tuple], kwargs: dict) -> Pending:
        per_rank_args = [tuple(get(a) if isinstance(a, Pending) else a for a in args) for args in per_rank_args]
        t0 = time.perf_counter()
        try:
            values = [_invoke(self.role, self.name, 0, 1, method, a, kwargs) for a in per_rank_args]
        finally:
            self.busy_s += time.perf_counter() - t0
        return Pending(role=self.name, method=method, mode=mode, values=values, labels=[_label(self.name, 0, 1)])

    def hosts(self) -> list[dict]:
        return [{"rank": 0, **where(), "startup_s": self.startup_s, "busy_s": self.busy_s}]

    def shutdown(self) -> None:
        if self.role is not None and callable(getattr(self.role, "shutdown", None)):
            try:
                self.role.shutdown()
            except Exception as exc:  # the run's own outcome stands; a role that did not stop cleanly is logged
                log.warning("%s: shutdown failed: %s", _label(self.name, 0, 1), exc)
        self.role = None


# ------------------------------------------------------------------------------------------- ray


class _Replica:
    """The Ray actor hosting one replica of a role (one process, one rank of the role's group)."""

    def __init__(self, role: str, rank: int, world_size: int, num_cpus: float, threads: int = 0, alone: bool = False):
        self.role_name, self.rank, self.world_size = role, rank, world_size
        self.role = None
        self.busy_s = 0.0
        """Seconds spent inside the role's methods (after any forwarded argument arrived): what a call costs
        beyond it is the driver's and Ray's (dispatch, transfer, (de)serialisation; `rlhf bench`)."""
        # Ray sets OMP_NUM_THREADS for the process; torch's intra-op pool is sized here explicitly so
        # that replicas sharing a node do not each grab every core (and a role alone in its job gets them).
        torch.set_num_threads(replica_threads("ray", num_cpus, threads, alone, world_size))
        global _ALONE_THREADS
        _ALONE_THREADS = replica_threads("ray", num_cpus, threads, True, world_size)

    def __repr__(self) -> str:  # Ray prefixes this replica's log lines with it
        return f"{self.role_name}[{self.rank}]"

    def where(self) -> dict:
        """This replica's node, process, devices and peak memory (`cluster.placement.where`), and `busy_s`."""
        return {"rank": self.rank, **where(), "busy_s": self.busy_s}

    def master_address(self) -> tuple[str, int]:
        """Rank 0 only: this node's IP and a free port for the torch.distributed rendezvous."""
        return dist.node_ip(), dist.free_port()

    def setup(self, master: tuple[str, int], payload: tuple) -> None:
        """Join the role's process group, then build the role object (its DeepSpeed engine needs the group)."""
        role_cls, cfg, args, kwargs = payload
        try:
            dist.init_distributed(rank=self.rank, world_size=self.world_size, master_addr=master[0],
                                  master_port=master[1], local_rank=0)
        except Exception as exc:
            raise RoleError(f"{_label(self.role_name, self.rank, self.world_size)}: torch.distributed setup "
                            f"with {master[0]}:{master[1]} failed: {exc}\n{traceback.format_exc()}",
                            self.role_name, self.rank, "setup") from exc
        if os.environ.get(dist.PROFILE_ENV) == "1":
            dist.profile_collectives()
        self.role = _construct(role_cls, cfg, args, kwargs, self.role_name, self.rank, self.world_size)

    def call(self, method: str, args: tuple, kwargs: dict) -> Any:
        import ray

        if any(isinstance(a, ray.ObjectRef) for a in args):  # another group's result, forwarded (`RoleGroup.broadcast`)
            try:
                args = tuple(ray.get(a) if isinstance(a, ray.ObjectRef) else a for a in args)
            except ray.exceptions.RayTaskError as err:
                cause = getattr(err, "cause", None)
                raise (cause if isinstance(cause, RoleError) else err) from None
        t0 = time.perf_counter()
        try:
            return _invoke(self.role, self.role_name, self.rank, self.world_size, method, args, kwargs)
        finally:
            self.busy_s += time.perf_counter() - t0


@functools.lru_cache(maxsize=None)
def _remote_replica():
    import ray

    return ray.remote(_Replica)


class RayGroup(RoleGroup):
    """N Ray actors, one replica each, forming one torch.distributed group and one ZeRO engine.

    Start-up: actors are created in `placement` (or a new placement group of ``cfg.replicas``
    bundles); rank 0 reports its IP and a free port; every replica then joins the process group and
    constructs the role. The address travels as an ObjectRef argument, so nothing here blocks the
    driver: with ``wait=False`` several groups start concurrently and `wait_ready` waits for all.

    Per-replica environment: ``DS_ACCELERATOR=cpu`` and ``OMP_NUM_THREADS=max(1, int(num_cpus))``
    on CPU-only replicas; on GPU replicas Ray sets CUDA_VISIBLE_DEVICES to the replica's own GPU(s),
    so each uses ``cuda:0`` (LOCAL_RANK 0). Replicas of ONE role must not share a GPU (NCCL refuses
    two ranks on one device); fractional GPUs are for colocating different roles.
    The role class must be importable by the workers (installed package, or the job's working_dir).
    """

    def __init__(
        self,
        role_cls: type,
        cfg: Any,
        *,
        name: str,
        placement: Placement | None = None,
        args: tuple = (),
        kwargs: dict | None = None,
        wait: bool = True,
        hosting: Hosting | None = None,
        alone: bool = False,
    ):
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if not ray.is_initialized():
            raise RuntimeError("Ray is not connected: call cluster.connect() before creating a RayGroup")
        self.name, self.role_cls = name, role_cls
        self.hosting = hosting or Hosting(mode="ray")
        self._t0 = time.perf_counter()
        self.startup_s: float | None = None
        replicas = int(cfg.replicas)
        if placement is None:
            placement = plan_placements({name: cfg}, self.hosting)[name]
        if name not in placement.requests:
            raise ValueError(f"{placement} was not planned for role {name!r} (plan it with plan_placements)")
        if replicas > len(placement.bundles):
            raise ValueError(f"role {name!r} has {replicas} replicas but {placement} has {len(placement.bundles)} bundles")
        request = placement.requests[name]
        num_cpus, num_gpus = request.num_cpus, request.num_gpus
        self.placement = placement
        placement._acquire()
        env = {"OMP_NUM_THREADS": str(max(1, int(num_cpus))), "RLHF_ROLE": name}  # RLHF_ROLE: which process is which (ps, tests)
        if num_gpus == 0:
            env["DS_ACCELERATOR"] = "cpu"
        if self.hosting.profile_comm:
            env[dist.PROFILE_ENV] = "1"
        remote_cls = _remote_replica()
        self._actors = [
            remote_cls.options(
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=placement.pg, placement_group_bundle_index=rank
                ),
                runtime_env={"env_vars": env},
                max_restarts=0,
            ).remote(name, rank, replicas, num_cpus, int(getattr(cfg, "threads", 0)), alone)
            for rank in range(replicas)
        ]
        self._labels = [_label(name, r, replicas) for r in range(replicas)]
        master = self._actors[0].master_address.remote()
        payload = ray.put((role_cls, cfg, tuple(args), dict(kwargs or {})))
        self._ready = [a.setup.remote(master, payload) for a in self._actors]
        if wait:
            try:
                wait_ready([self])
            except BaseException:
                self.shutdown()
                raise

    @property
    def world_size(self) -> int:
        return len(self._actors)

    def hosts(self) -> list[dict]:
        import ray

        return [{**info, "startup_s": self.startup_s} for info in ray.get([a.where.remote() for a in self._actors])]

    def _submit(self, method: str, mode: str, per_rank_args: list[tuple], kwargs: dict) -> Pending:
        import ray

        # Ray resolves ObjectRefs passed as top-level arguments: an argument shared by several
        # replicas is put in the object store once instead of being serialised per replica.
        per_rank_args = [tuple(_forwarded(a) for a in args) for args in per_rank_args]
        shared = len(per_rank_args) > 1
        kw = ray.put(kwargs) if shared and kwargs else kwargs
        same_args = shared and all(a is per_rank_args[0] for a in per_rank_args)
        common = ray.put(per_rank_args[0]) if same_args else None
        refs = [
            actor.call.remote(method, common if same_args else args, kw)
            for actor, args in zip(self._actors, per_rank_args)
        ]
        return Pending(role=self.name, method=method, mode=mode, refs=refs, labels=self._labels[: len(refs)])

    def shutdown(self) -> None:
        import ray

        if self._actors and callable(getattr(self.role_cls, "shutdown", None)):
            refs = [actor.call.remote("shutdown", (), {}) for actor in self._actors]
            try:
                ray.get(refs, timeout=60)
            except Exception as exc:  # dead or stuck replicas are killed below all the same
                log.warning("%s: shutdown failed: %s", self.name, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
        if self.placement is not None:
            self.placement._release()
            self.placement = None


def _forwarded(arg: Any) -> Any:
    """A `Pending` argument as what a replica receives: its value when resolved, else the ObjectRef of its
    one result (rank 0's), which the replica gets from the object store itself."""
    if not isinstance(arg, Pending):
        return arg
    if arg.mode not in ("first", "single"):
        raise TypeError(f"only a 'first' or 'single' call can be passed on to another group, not {arg!r}")
    return arg._result if arg._done else arg._refs[0]


def wait_ready(groups: Iterable[RoleGroup]) -> None:
    """Wait until every RayGroup in `groups` has placed its replicas and built its role objects.

    Placement first (`cluster.placement.wait_placed`: a role that has to wait for resources is
    reported within seconds, with what it asked for and what the cluster has free, up to the hosting's
    ``placement_timeout_s``); then the replicas' setup, group by group as they finish, so that each
    group's ``startup_s`` is its own and a failed constructor raises its `RoleError` at once.
    """
    import ray

    ray_groups = [g for g in groups if isinstance(g, RayGroup) and g._ready is not None]
    if not ray_groups:
        return
    placements = list({id(g.placement): g.placement for g in ray_groups}.values())
    hosting = ray_groups[0].hosting
    wait_placed(placements, dataclasses.replace(hosting, placement_timeout_s=max(g.hosting.placement_timeout_s for g in ray_groups)))
    owner = {ref: g for g in ray_groups for ref in g._ready}
    remaining = list(owner)
    while remaining:
        done, remaining = ray.wait(remaining, num_returns=1)
        g = owner[done[0]]
        label = g._labels[g._ready.index(done[0])]
        get(Pending(role=g.name, method="__init__", mode="list", refs=done, labels=[label]))  # a failed constructor raises now
        if not any(r in remaining for r in g._ready):  # this group's replicas are all built
            g.startup_s = round(time.perf_counter() - g._t0, 2)
            g._ready = None


# -------------------------------------------------------------------------------------- factory


@dataclasses.dataclass
class RoleSpec:
    """What to host for one role: its class, its config slice and extra constructor arguments."""

    role_cls: type
    cfg: Any
    """The role's config slice; its PlacementConfig fields (replicas, num_cpus, num_gpus, colocate_with) place it."""
    args: tuple = ()
    kwargs: dict = dataclasses.field(default_factory=dict)


def create_groups(hosting: Hosting | Literal["local", "ray"], specs: Mapping[str, RoleSpec]) -> dict[str, RoleGroup]:
    """All role groups of a job, hosted as `hosting` says (a `Hosting`, or just its mode), with
    colocation resolved from the configs.

    Ray mode: connects to Ray first when this process is not connected yet (`cluster.connect`: the
    `ray job submit` cluster, ``hosting.address``, or a new local cluster with enough logical CPUs for
    every replica), then makes placement groups via `plan_placements` (a request no node could hold
    fails here); every replica of every role starts concurrently and this returns when all roles are
    constructed (one wait, reported while it waits for resources). Local mode: each role constructed
    in turn in this process, in the world of size 1 (`cluster.init_local`).
    """
    if isinstance(hosting, str):
        hosting = Hosting(mode=hosting)
    if hosting.mode == "local":
        if hosting.profile_comm:
            dist.profile_collectives()
        return {name: LocalGroup(s.role_cls, s.cfg, name=name, args=s.args, kwargs=s.kwargs) for name, s in specs.items()}
    if hosting.mode != "ray":
        raise ValueError(f"mode must be 'local' or 'ray', got {hosting.mode!r}")
    wanted = sum(float(getattr(s.cfg, "num_cpus", 1.0)) * int(getattr(s.cfg, "replicas", 1)) for s in specs.values())
    ray_init.connect(hosting.address, num_cpus=ray_init.cpus_for(wanted))
    placements = plan_placements({name: s.cfg for name, s in specs.items()}, hosting)
    groups: dict[str, RoleGroup] = {}
    try:
        for name, s in specs.items():
            groups[name] = RayGroup(s.role_cls, s.cfg, name=name, placement=placements[name], args=s.args,
                                    kwargs=s.kwargs, wait=False, hosting=hosting, alone=len(specs) == 1)
        wait_ready(groups.values())
    except BaseException:
        for g in groups.values():
            g.shutdown()
        for placement in {id(p): p for p in placements.values()}.values():
            if placement._users == 0:  # planned but never used by a group
                placement._acquire()
                placement._release()
        raise
    return groups
