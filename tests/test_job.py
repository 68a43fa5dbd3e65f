"""The job skeleton (`orchestrator.core.job`) as a user meets it: a run killed with SIGKILL (before its first
checkpoint, or after one), then started again with the same command, leaves every step in
metrics.jsonl exactly once; a fresh start never mixes with an earlier run's outputs; every job
evaluates at the start and at the end. Local mode, a tiny random model; the killed runs are real
`rlhf ppo` processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ppo_helpers import TESTS_DIR, tiny_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(str(tmp_path_factory.mktemp("cache")))


def _steps(out) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def _command(model_dir, out, steps: int, save_every: int) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", "ppo", f"policy.path={model_dir}", f"run.output_dir={out}",
            "run.mode=local", f"run.steps={steps}", f"run.save_every={save_every}", "ppo.rollout_batch_size=4",
            "ppo.minibatch_size=4", "ppo.epochs=1", "policy.micro_batch_size=4", "critic.micro_batch_size=4",
            "policy.max_new_tokens=4", "data.max_rows=16", "reward.kind=function",
            "reward.function=ppo_helpers:slow_length_reward"]


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")]))
    env.update(OMP_NUM_THREADS="1", RLHF_SLOW_REWARD_S="0.3")  # a step of ~0.3 s: the kill lands mid-run
    return env


def _kill_when(cmd: list[str], out, seen) -> None:
    """Start `cmd`, SIGKILL it as soon as metrics.jsonl shows `seen(steps)`; fail if it ends first."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not seen(_steps(out)):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "the run made no progress"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()


def _finish(cmd: list[str]) -> None:
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow  # two real processes per case, ~40 s
def test_killed_before_the_first_checkpoint_then_restarted_logs_each_step_once(model_dir, tmp_path):
    out = tmp_path / "run"
    cmd = _command(model_dir, out, steps=6, save_every=0)
    _kill_when(cmd, out, lambda steps: 3 in steps)
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").glob("step_*"))
    old = _steps(out)
    _finish(cmd)  # run.resume=auto finds no checkpoint: a fresh run
    assert _steps(out) == [0, 1, 2, 3, 4, 5, 6]
    aside = [p for p in out.iterdir() if p.name.startswith("previous-")]
    assert len(aside) == 1 and _steps(aside[0]) == old  # the killed run's metrics, kept apart, not lost


@pytest.mark.slow
def test_killed_after_a_checkpoint_resumes_and_drops_the_lost_steps(model_dir, tmp_path):
    out = tmp_path / "run"
    cmd = _command(model_dir, out, steps=6, save_every=2)
    _kill_when(cmd, out, lambda steps: 3 in steps)  # step 3 is logged after the step-2 checkpoint
    assert (out / "checkpoints" / "step_000002").is_dir()
    _finish(cmd)  # resumes at step 2: the killed run's step 3 (and anything after) is dropped and redone
    assert _steps(out) == [0, 1, 2, 3, 4, 5, 6]
    assert not any(p.name.startswith("previous-") for p in out.iterdir())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["eval_start"]["reward"] is not None


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_finishes_the_step_writes_a_checkpoint_and_resume_continues(model_dir, tmp_path, sig, code):
    """Preemption: SIGTERM (or Ctrl-C's SIGINT) mid-run finishes the current step, writes its checkpoint
    (save_every=0: none otherwise), stops with exit 143 (130) and one line; run.resume=auto then runs the
    remaining steps, each logged once."""
    out = tmp_path / "run"
    cmd = _command(model_dir, out, steps=30, save_every=0)
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while 2 not in _steps(out):
        assert proc.poll() is None and time.time() < deadline, "the run ended or stalled before the signal"
        time.sleep(0.02)
    proc.send_signal(sig)
    stderr = proc.communicate(timeout=120)[1]
    lines = [line for line in stderr.splitlines() if line.startswith("rlhf:")]
    assert proc.returncode == code and "Traceback" not in stderr, stderr[-3000:]
    stopped = _steps(out)[-1]
    assert len(lines) == 1 and lines[0].startswith(f"rlhf: stopped by {sig.name} after step {stopped} of 30; checkpoint ")
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"step_{stopped:06d}"]
    _finish(_command(model_dir, out, steps=stopped + 2, save_every=0))
    assert _steps(out) == list(range(stopped + 3))


def test_a_fresh_run_sets_an_earlier_runs_outputs_aside(model_dir, tmp_path):
    from orchestrator.registry import run
    from ppo_helpers import tiny_ppo_config

    out = tmp_path / "run"
    run("ppo", tiny_ppo_config(model_dir, str(out), "run.steps=1"))
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[1])
    run("ppo", tiny_ppo_config(model_dir, str(out), "run.steps=2", "run.resume=never"))  # fresh on purpose
    assert _steps(out) == [0, 1, 2]
    aside = [p for p in out.iterdir() if p.name.startswith("previous-")]
    assert len(aside) == 1
    assert {p.name for p in aside[0].iterdir()} >= {"metrics.jsonl", "checkpoints", "summary.json", "tensorboard"}
    assert json.loads((aside[0] / "metrics.jsonl").read_text().splitlines()[1]) == first
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_000002"]  # no checkpoint of the old run


def test_metrics_logger_refuses_to_append_to_an_old_file(tmp_path):
    from orchestrator.core.metrics import MetricsLogger

    log = MetricsLogger(tmp_path)
    log.write(0, {"eval/x": 1.0})
    log.write(1, {"a": 1.0})
    log.write(2, {"a": 2.0})
    log.close()
    with pytest.raises(FileExistsError):
        MetricsLogger(tmp_path)  # a fresh run appending to it would log steps 0, 1, 2, 0, 1, 2
    resumed = MetricsLogger(tmp_path, resume_step=1)
    resumed.write(2, {"a": 3.0})
    resumed.close()
    assert [(r["step"], r.get("a")) for r in resumed.read()] == [(0, None), (1, 1.0), (2, 3.0)]


def test_resume_checks_come_before_any_role_starts(model_dir, tmp_path, capsys, monkeypatch):
    """A checkpoint beyond run.steps, or a run.resume path that is no checkpoint: one line, exit 2, and
    no role was built (PolicyActor would raise here)."""
    import actors.policy
    from orchestrator.cli import main
    from orchestrator.registry import run
    from ppo_helpers import tiny_ppo_config

    out = tmp_path / "run"
    run("ppo", tiny_ppo_config(model_dir, str(out), "run.steps=2"))

    def no_roles(*args, **kwargs):
        raise AssertionError("a role was started")

    monkeypatch.setattr(actors.policy.PolicyActor, "__init__", no_roles)
    base = [f"policy.path={model_dir}", f"run.output_dir={out}", "run.mode=local", "reward.kind=function", "data.max_rows=64",
            "reward.function=ppo_helpers:length_reward"]
    assert main(["ppo", *base, "run.steps=1"]) == 2
    assert "config key 'run.steps'" in capsys.readouterr().err
    assert main(["ppo", *base, f"run.resume={tmp_path}"]) == 2
    assert "not a complete checkpoint folder" in capsys.readouterr().err
