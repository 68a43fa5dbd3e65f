"""Connecting the driver to Ray: the cluster of `ray job submit`, an explicit address, or a new local one.

`connect()` is the only place that calls ``ray.init``. Three cases, in this order:

1. an explicit `address` (``run.ray_address``): join that cluster;
2. inside ``ray job submit``: the job supervisor sets ``RAY_ADDRESS`` to its cluster, and
   ``ray.init()`` without an address joins it (the job's runtime_env, e.g. ``--working-dir``, is
   then inherited by every actor; we pass none of our own unless asked);
3. otherwise: start a single-node cluster in this process, for debugging and tests.

For case 3 (verified with Ray 2.60 on this machine): a fresh local ``ray.init`` turns token auth ON
by default and writes a generated token to ``~/.ray/auth_token``; it works, but leaves a credential
file behind and binds the node to the machine's external IP. We instead bind the local cluster to
127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, Ray's switch for loopback-only single-node
clusters) and turn token auth off (``RAY_AUTH_MODE=disabled``): a loopback-only cluster is reachable
only from this machine. Explicit values of either variable in the environment are respected. The
dashboard is off (``include_dashboard=False``); worker output is streamed to the driver
(``log_to_driver=True``); ``ray.init`` takes about 4-10 s here.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
from typing import Any

__all__ = ["connect", "shutdown", "has_gpus", "cpus_for"]

log = logging.getLogger(__name__)

_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_AUTH_ENV = "RAY_AUTH_MODE"


def connect(
    address: str = "",
    *,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    runtime_env: dict[str, Any] | None = None,
    namespace: str | None = None,
) -> None:
    """Connect this process to Ray (see the module docstring for which cluster); idempotent.

    num_cpus / num_gpus: logical resources of a NEW local cluster (ignored when joining one);
    Ray accepts more logical CPUs than cores, which lets several small replicas share a laptop.
    runtime_env: job-level runtime env; None ships nothing (workers on the same machine import the
    installed package; on a remote cluster use ``ray job submit --working-dir``).
    """
    import ray

    if ray.is_initialized():
        log.info("ray already initialised; reusing the connection")
        return
    common: dict[str, Any] = {"log_to_driver": True, "namespace": namespace}
    if runtime_env is not None:
        common["runtime_env"] = runtime_env
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        if _is_loopback(address):
            _loopback_driver()
        ray.init(address=address, **common)
        return
    if os.environ.get("RAY_ADDRESS"):
        log.info("connecting to the Ray cluster of this job (RAY_ADDRESS=%s)", os.environ["RAY_ADDRESS"])
        ray.init(**common)
        return
    _prefer_loopback_without_auth()
    log.info("starting a local Ray cluster (num_cpus=%s, num_gpus=%s)", num_cpus, num_gpus)
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, **common)
    ip = ray.util.get_node_ip_address()
    if os.environ.get(_AUTH_ENV) == "disabled" and not ipaddress.ip_address(ip).is_loopback:
        log.warning("local Ray cluster is bound to %s with token auth disabled; it is reachable from the network", ip)


def _is_loopback(address: str) -> bool:
    """Whether a ``host:port`` (or ``ray://host:port``) names this machine's loopback interface."""
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _loopback_driver() -> None:
    """This driver uses 127.0.0.1 as its own node address, as a cluster bound to 127.0.0.1 needs:
    otherwise Ray reaches for the machine's external IP and the connection to the GCS never completes.
    Ray reads the loopback switch into a module constant when `ray` is first imported, which in a
    driver has usually happened already (the role modules import cluster.group); raylets and workers
    started later read the environment. Keep the driver consistent with them."""
    from ray._private import ray_constants

    os.environ.setdefault(_LOOPBACK_ENV, "0")
    if os.environ[_LOOPBACK_ENV].lower() in ("0", "false"):
        ray_constants.ENABLE_RAY_CLUSTER = False


def _prefer_loopback_without_auth() -> None:
    """Environment for a local cluster: loopback-only, no token auth (module docstring)."""
    os.environ.setdefault(_AUTH_ENV, "disabled")
    _loopback_driver()


def shutdown() -> None:
    """Disconnect from Ray (and stop the local cluster if this process started it)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def has_gpus() -> bool:
    """Whether the connected Ray cluster has any GPU (the one check behind `num_gpus -> 0` on CPU clusters)."""
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def cpus_for(wanted: float) -> float:
    """Logical CPUs of a new local cluster that must host replicas asking for `wanted` CPUs in all: at
    least this machine's cores (Ray over-subscribes logical CPUs, so small replicas share a laptop)."""
    return max(float(os.cpu_count() or 1), float(math.ceil(wanted)))
