"""Ray Serve hosting: a class as an HTTP deployment on the connected cluster, and its removal.

The one place that talks to Ray Serve's deployment API, so that the application code (e.g.
`orchestrator.tools.serve`'s `RewardServer`) only says what to serve. Resources follow the role rule of
`cluster.group`: a replica asks for its `num_gpus` only when the cluster has GPUs, so one config runs
on CPU and GPU clusters alike. HTTP binds `host` (127.0.0.1 unless the caller says otherwise).
"""

from __future__ import annotations

import logging
from typing import Any

from cluster.ray_init import has_gpus

__all__ = ["deploy", "delete"]

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def deploy(cls: type, *init_args: Any, name: str, route: str, host: str = "127.0.0.1", port: int = 8000,
           replicas: int = 1, num_cpus: float = 1.0, num_gpus: float = 0.0, max_ongoing_requests: int = 100,
           max_constructor_retry_count: int = 3) -> None:
    """Run `cls(*init_args)` as the Serve application `name` at `route` on http://host:port; returns once
    every replica is constructed (`serve.run`). A replica whose constructor raises is retried
    `max_constructor_retry_count` times, then the deploy fails with its error."""
    from ray import serve

    if host not in LOOPBACK:
        log.warning("binding %s: the endpoint has no authentication and is reachable from the network", host)
    serve.start(http_options={"host": host, "port": port})
    deployment = serve.deployment(cls).options(
        name=cls.__name__,
        num_replicas=replicas,
        max_ongoing_requests=max_ongoing_requests,
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus if has_gpus() else 0.0},
        max_constructor_retry_count=max_constructor_retry_count,
    )
    serve.run(deployment.bind(*init_args), name=name, route_prefix=route)


def delete(name: str, wait: bool = True) -> None:
    """Remove the Serve application `name`. wait=False returns at once (the detached Serve controller
    finishes the deletion), e.g. within the 3 s `ray job stop` allows between SIGTERM and SIGKILL."""
    from ray import serve

    serve.delete(name, _blocking=wait)
