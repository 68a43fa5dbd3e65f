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
@pytest.mark.slow  # a `ray start` cluster and three submitted jobs (~150 s)
def test_rlhf_ppo_under_ray_job_submit_and_ray_job_stop(tmp_path):
    """A job runs to the end; then a longer one is stopped with `ray job stop` mid-run: it finishes its
    step, writes a checkpoint and exits (SIGTERM, 143), and a resubmitted job continues from it."""
    model_dir = tiny_model_dir(str(tmp_path / "cache"))
    tests_dir = str(Path(__file__).resolve().parent)
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join(p for p in (tests_dir, os.environ.get("PYTHONPATH", "")) if p),
           # `ray job stop` sends SIGTERM, then SIGKILL after this many seconds (Ray's default: 3)
           "RAY_JOB_STOP_WAIT_TIME_S": "120"}
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

        # preemption: `ray job stop` in the middle of a long run
        out_dir = tmp_path / "stopped"
        long_run = [o for o in overrides if not o.startswith(("run.output_dir", "run.steps", "reward.function"))]
        long_run += [f"run.output_dir={out_dir}", "run.steps=40", "run.save_every=0",
                     "reward.function=ppo_helpers:slow_length_reward"]
        address = f"--address=http://127.0.0.1:{dash}"
        submit = [RAY, "job", "submit", address, "--no-wait", "--submission-id=rlhf-stopped",
                  '--runtime-env-json={"env_vars": {"RLHF_SLOW_REWARD_S": "1.0"}}', "--", sys.executable, "-m",
                  "orchestrator.cli", "ppo", *long_run]
        assert subprocess.run(submit, env=env, capture_output=True, text=True, timeout=120, cwd=REPO).returncode == 0
        metrics = out_dir / "metrics.jsonl"
        deadline = time.time() + 600
        while not (metrics.exists() and '"step": 2' in metrics.read_text()):
            assert time.time() < deadline, "the submitted job made no progress"
            time.sleep(0.5)
        stop = subprocess.run([RAY, "job", "stop", address, "rlhf-stopped"], env=env, capture_output=True, text=True,
                              timeout=300, cwd=REPO)
        logs = subprocess.run([RAY, "job", "logs", address, "rlhf-stopped"], env=env, capture_output=True, text=True,
                              timeout=60, cwd=REPO).stdout
        steps = [int(line.split('"step": ')[1].split(",")[0]) for line in metrics.read_text().splitlines()]
        assert "rlhf: stopped by SIGTERM after step" in logs, stop.stdout + stop.stderr + logs[-3000:]
        assert [p.name for p in (out_dir / "checkpoints").iterdir()] == [f"step_{steps[-1]:06d}"]
        resumed = [o for o in long_run if not o.startswith(("run.steps", "reward.function"))]
        resumed += [f"run.steps={steps[-1] + 1}", "reward.function=ppo_helpers:length_reward"]
        job = subprocess.run([RAY, "job", "submit", address, "--", sys.executable, "-m", "orchestrator.cli", "ppo", *resumed],
                             env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
        assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
        steps = [int(line.split('"step": ')[1].split(",")[0]) for line in metrics.read_text().splitlines()]
        assert steps == list(range(len(steps))) and steps[-1] == len(steps) - 1
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)
