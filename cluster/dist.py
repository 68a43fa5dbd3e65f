"""In-process distributed setup: torch.distributed first, DeepSpeed's comm layer on top.

One process hosts one replica of one role in ray mode, and every role in local mode. Either way the
process joins exactly one torch.distributed group before any DeepSpeed engine is built:

- ray mode: `init_distributed(rank=r, world_size=n, master_addr=..., master_port=...)`, called by
  `cluster.group.RayGroup` in each replica's own process with the rank-0 replica's address;
- local mode: `init_local()`, a world of size 1 on 127.0.0.1, created once per process and shared by
  every role living in the driver (and by `tests/test_engine.py`).

Backend: NCCL when CUDA is available, gloo otherwise. DeepSpeed's CPU accelerator names "ccl"
(oneCCL) as its backend, which is not installed here; because the process group already exists
when `deepspeed.init_distributed` runs, DeepSpeed wraps it instead of creating its own, so gloo is
what ZeRO's collectives use on CPU.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import sys

import torch

__all__ = [
    "select_accelerator",
    "backend",
    "free_port",
    "node_ip",
    "init_distributed",
    "init_local",
    "PROFILE_ENV",
    "profile_collectives",
    "collective_stats",
]

log = logging.getLogger(__name__)

_DEFAULT_TIMEOUT_S = 1800.0


def select_accelerator() -> str:
    """Set ``DS_ACCELERATOR=cpu`` when no CUDA device is visible; return "cuda" or "cpu".

    Must run before the first ``import deepspeed`` in the process: DeepSpeed picks its accelerator
    once, at import, and its autodetection otherwise probes for Intel/NPU stacks and logs warnings.
    `actors.engine` calls it at import time (it is the only module that imports deepspeed at top
    level), and `RayGroup` also sets the variable in each replica's environment. An explicit
    ``DS_ACCELERATOR`` in the environment is left alone.
    """
    kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    _prefer_interpreter_ninja()
    return kind


def _prefer_interpreter_ninja() -> None:
    """Put this interpreter's bin dir first on PATH when it holds a `ninja` (pip's ninja in a venv).

    DeepSpeed JIT-builds its CPU shared-memory comm op with torch.utils.cpp_extension, which runs
    whichever `ninja` is first on PATH and caches the build under TORCH_EXTENSIONS_DIR. Ninja 1.12
    changed how it hashes build commands, so processes alternating between a venv's ninja (1.13 here)
    and the system's (1.11; e.g. `.venv/bin/python` run without activating the venv, or Ray workers
    started from such a driver) rebuild the op every time: 60-90 s on this 2-core machine instead
    of a cache hit. Seen with Ray workers; the fix is to always use the interpreter's own ninja.
    """
    bin_dir = os.path.dirname(sys.executable)
    if not os.access(os.path.join(bin_dir, "ninja"), os.X_OK):
        return
    path = os.environ.get("PATH", "").split(os.pathsep)
    if not path or path[0] != bin_dir:
        os.environ["PATH"] = os.pathsep.join([bin_dir] + [p for p in path if p and p != bin_dir])


def backend() -> str:
    """torch.distributed backend for this process: "nccl" on CUDA, "gloo" on CPU."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def free_port(host: str = "") -> int:
    """A TCP port that is free right now on `host` (all interfaces by default).

    The port is released before it is used, so another process could take it in between; the
    window is milliseconds and the rendezvous fails loudly if it happens.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, 0))
        return s.getsockname()[1]


def node_ip() -> str:
    """This node's IP as Ray sees it (reachable from other nodes), or 127.0.0.1 outside Ray."""
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except ImportError:  # pragma: no cover
        pass
    return "127.0.0.1"


def init_distributed(
    *,
    rank: int,
    world_size: int,
    master_addr: str,
    master_port: int,
    local_rank: int = 0,
    timeout_s: float = _DEFAULT_TIMEOUT_S,
) -> None:
    """Join the process group of one role, then initialise DeepSpeed's comm layer on it.

    Sets MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK (DeepSpeed reads some of them, e.g.
    LOCAL_RANK to pick the device), selects the CUDA device, and calls
    ``torch.distributed.init_process_group`` with NCCL on CUDA and gloo on CPU. `local_rank` is the
    index of this process's device among the devices it can see: 0 under Ray, where every replica
    sees only its own GPUs.

    Idempotent for the same world; joining a different world in the same process raises, since
    torch.distributed has one default group per process.
    """
    select_accelerator()
    import torch.distributed as tdist

    if tdist.is_initialized():
        if tdist.get_world_size() != world_size or tdist.get_rank() != rank:
            raise RuntimeError(
                f"torch.distributed is already initialised as rank {tdist.get_rank()} of "
                f"{tdist.get_world_size()}; cannot join as rank {rank} of {world_size} in the same process"
            )
        return
    env = {
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": str(local_rank),
    }
    os.environ.update(env)
    timeout = datetime.timedelta(seconds=timeout_s)
    kwargs = {}
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        kwargs["device_id"] = torch.device("cuda", local_rank)
    tdist.init_process_group(
        backend=backend(), init_method="env://", rank=rank, world_size=world_size, timeout=timeout, **kwargs
    )
    import deepspeed

    deepspeed.init_distributed(dist_backend=backend(), auto_mpi_discovery=False, timeout=timeout)
    log.info("rank %d/%d joined %s:%d with %s", rank, world_size, master_addr, master_port, backend())


def init_local() -> None:
    """A world of size 1 in this process (local mode and single-process tests); idempotent.

    Every role in the driver shares it: ZeRO over one replica is plain data-parallel-free training,
    so local mode runs the same engine code as ray mode.
    """
    import torch.distributed as tdist

    if tdist.is_initialized():
        init_distributed(rank=0, world_size=1, master_addr="", master_port=0)  # validates the world
        return
    init_distributed(rank=0, world_size=1, master_addr="127.0.0.1", master_port=free_port("127.0.0.1"))


PROFILE_ENV = "RLHF_PROFILE_COMM"
"""Set to 1 in a replica's environment (``run.profile_comm``) to time its collectives."""


def profile_collectives() -> None:
    """Time every collective DeepSpeed issues in this process (ZeRO's all-gathers and reduce-scatters,
    data-parallel all-reduces, broadcasts) with DeepSpeed's comms logger. Each timed op waits for the
    device to finish, so this serialises communication with compute on GPU: a measurement mode, not a
    production one."""
    import deepspeed.comm as ds_comm

    ds_comm.configure(enabled=True, prof_all=True, verbose=False)


def collective_stats() -> dict:
    """What `profile_collectives` measured in this process so far: ``comm_s`` (wall seconds inside
    collectives), ``comm_ops`` (calls) and ``comm_mb`` (message megabytes, as DeepSpeed sizes them);
    empty when profiling is off."""
    import deepspeed.comm.comm as ds_comm

    if not ds_comm.comms_logger.enabled:
        return {}
    # the logger's latency lists hold each op name's running total; the timers hold the totals themselves
    seconds = sum(t.elapsed(reset=False) for t in ds_comm.timers.timers.values()) / 1000.0
    ops = sum(rec[0] for sizes in ds_comm.comms_logger.comms_dict.values() for rec in sizes.values())
    mb = sum(size * rec[0] for sizes in ds_comm.comms_logger.comms_dict.values() for size, rec in sizes.items()) / 2**20
    return {"comm_s": round(seconds, 4), "comm_ops": int(ops), "comm_mb": round(mb, 2)}
