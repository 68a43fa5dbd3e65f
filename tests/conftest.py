"""Shared fixtures. Only `*_ray.py` tests may request `ray_cluster` (the tiering rule of docs/testing.md)."""

import os

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster per test module (ray.init costs ~4-10 s; a module's tests share it).

    Module scope, not session: `test_job_submit_ray.py` starts its own `ray start --head` cluster,
    and two clusters on one small machine compete for its two cores.

    8 logical CPUs on this 2-core machine: Ray over-subscribes logical CPUs, and test replicas ask
    for 0.5 each. Workers must import the test modules that define test roles: pytest puts tests/ on
    the driver's sys.path (rootdir-style imports, module name `test_cluster_ray`), so the same
    directory goes on the workers' PYTHONPATH. Nothing is uploaded (no working_dir or py_modules).
    """
    import cluster

    pythonpath = os.pathsep.join(p for p in (TESTS_DIR, os.environ.get("PYTHONPATH", "")) if p)
    cluster.connect(num_cpus=8, runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
    yield
    cluster.shutdown()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: under contention 2 torch threads ran up to 20x slower
    than 1. Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)



@pytest.fixture(autouse=True)
def _no_closed_log_streams():
    """A library that configures logging once per process (vLLM's handler on sys.stdout, set at its first
    import) keeps the stream of the test that imported it: pytest closes that test's capture, and every later
    log line would print a "--- Logging error ---" traceback into the current test's stderr. Such handlers are
    pointed at the process's real stderr (pytest's fd capture still holds it)."""
    import logging
    import sys

    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    for lg in loggers:
        for handler in lg.handlers:
            if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
                handler.stream = sys.__stderr__
    yield
