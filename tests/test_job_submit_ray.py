"""`rlhf ppo` under `ray job submit`, against a cluster started with `ray start --head` on 127.0.0.1.

The cluster is started with `--block` as a child process and stopped by signalling it, so that no
other Ray cluster on the machine (e.g. another test module's) is touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ppo_helpers import tiny_model_dir

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(port: int, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(1)
    raise TimeoutError(f"dashboard on 127.0.0.1:{port} did not come up in {timeout} s")


@pytest.mark.skipif(not Path(RAY).exists(), reason="ray CLI missing")
@pytest.mark.slow  # a `ray start` cluster and a submitted job (~75 s)
def test_rlhf_ppo_under_ray_job_submit(tmp_path):
    model_dir = tiny_model_dir(str(tmp_path / "cache"))
    tests_dir = str(Path(__file__).resolve().parent)
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join(p for p in (tests_dir, os.environ.get("PYTHONPATH", "")) if p)}
    env.pop("RAY_ADDRESS", None)
    port, dash = _free_port(), _free_port()
    temp_dir = tempfile.mkdtemp(prefix="rj-", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=4", "--disable-usage-stats",
         f"--temp-dir={temp_dir}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        try:
            _wait_http(dash, 180)
        except TimeoutError:
            os.killpg(head.pid, signal.SIGTERM)
            raise AssertionError("ray start --head failed:\n" + head.communicate(timeout=30)[0][-3000:]) from None
        out_dir = tmp_path / "job"
        overrides = [
            f"policy.path={model_dir}", f"run.output_dir={out_dir}", "run.mode=ray", "run.steps=1",
            "ppo.rollout_batch_size=8", "ppo.minibatch_size=4", "policy.micro_batch_size=2",
            "critic.micro_batch_size=2", "policy.max_new_tokens=8", "data.max_rows=64",
            "reward.function=ppo_helpers:length_reward",
            "policy.num_cpus=0.5", "critic.num_cpus=0.5", "reference.num_cpus=0.5", "reward.num_cpus=0.5",
        ]
        job = subprocess.run(
            [RAY, "job", "submit", f"--address=http://127.0.0.1:{dash}", "--", sys.executable, "-m",
             "orchestrator.cli", "ppo", *overrides],
            env=env, capture_output=True, text=True, timeout=900, cwd=REPO,
        )
        tail = job.stdout[-4000:] + job.stderr[-2000:]
        assert job.returncode == 0, tail
        assert "succeeded" in job.stdout, tail
        assert "PPO finished: 1 steps" in job.stdout, tail
        assert (out_dir / "policy" / "config.json").is_file()
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)
