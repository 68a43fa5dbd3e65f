"""The one job skeleton: everything a training job does around its own step, done once for every job.

`rlhf ppo`, `rlhf dpo`, `rlhf rm` and `rlhf sft` are each a `Job` (their roles, their step, their
evaluation, their exports and summary) run by `run(job, cfg)`, which owns:

- the output folder: `config.yaml`; an earlier run's outputs that a fresh run would mix with (metrics,
  TensorBoard, checkpoints, samples, summary, curves) are moved aside to `previous-<time>/`, and the log
  says so;
- resume: `run.resume` resolved (and a bad path refused) before any role starts; the roles' and the
  driver's state restored from the checkpoint (`Job.load`, `Job.load_state_dict`, the driver RNG);
- metrics: one `MetricsLogger`, one record per logged step, exactly once (a resumed run drops the
  records after its checkpoint's step; `orchestrator.core.metrics`);
- evaluation: at the start (step 0), every `run.eval_every` steps, and at the end, always; the start
  and end results go into `summary.json` and `samples_start.jsonl` / `samples_end.jsonl`; the end
  evaluation is part of the final step's record and of the final checkpoint, so a run stopped after
  it does not evaluate twice;
- checkpoints: atomic `checkpoints/step_N/` every `run.save_every` steps and at the end
  (`orchestrator.core.checkpoint`), holding the roles' state (`Job.save`) and `driver.pt` (step, the job's
  state, the evaluation history, the driver RNG);
- the end: `Job.finish` (exports), `curves.png`, `summary.json`, the printed summary, role shutdown;
- hooks (`Hook`): code that watches a run without being part of it, e.g. `rlhf bench`'s timing of
  each step, the busy time of each role and its peak memory.

A new job is its config section, its roles and its step function: a `Job` subclass, nothing more
(`orchestrator.jobs.policy.PolicyJob` for a job of one policy role, as SFT and DPO), and one entry in
`orchestrator.registry`. The skeleton knows nothing of any job, of the built-in world or of built-in
model names: a job receives folders (`orchestrator.builtin.policy.resolve`, at the entry).
"""

from __future__ import annotations

import _thread
import abc
import copy
import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from actors.config import first_line
from cluster import RoleError, get
from orchestrator.config import ConfigError, to_dict, to_yaml
from orchestrator.core import checkpoint as ckpt
from orchestrator.core import preflight
from orchestrator.core.hooks import Hook  # noqa: F401  (re-exported)
from orchestrator.core.metrics import METRICS_FILE, TENSORBOARD_DIR, MetricsLogger, plot_curves

log = logging.getLogger("rlhf.job")

__all__ = ["Evaluation", "Hook", "Job", "Preempted", "Trained", "run", "first_and_last", "OUTPUTS"]

OUTPUTS = (METRICS_FILE, TENSORBOARD_DIR, "checkpoints", "summary.json", "curves.png", "samples_start.jsonl",
           "samples_end.jsonl", "wandb", "wandb_id")
"""What a run writes into output_dir (besides config.yaml and its exports): set aside by a fresh run."""


@dataclass
class Evaluation:
    """What a job's evaluation returns to the skeleton."""

    metrics: dict
    """eval/* scalars: written into the step's record of metrics.jsonl."""
    record: dict = field(default_factory=dict)
    """The evaluation for summary.json (start and end; JSON-serialisable)."""
    samples: list = field(default_factory=list)
    """Rows for samples_start.jsonl / samples_end.jsonl (held-out generations), if the job samples."""


@dataclass
class Trained:
    """A role whose state a checkpoint holds: its group, its actor class (`save_checkpoint`,
    `load_checkpoint`, `export`) and what gives the arguments its `export` takes after the folder
    (called at each export)."""

    group: object
    actor: type
    export_args: Callable[[], tuple] = tuple


class Job(abc.ABC):
    """A training job as the skeleton drives it. Subclasses set `name` and `curve_keys` and implement
    the abstract methods; the others have defaults."""

    name: str = "job"
    curve_keys: tuple = ()
    """Metrics plotted in curves.png."""
    groups: list = []
    """The job's role groups (set by `start`); `shutdown` releases them."""
    startup_s: float = 0.0
    """Seconds `start` took (set by the skeleton; in summary.json)."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start the roles (after config.yaml is written and resume is resolved)."""

    @abc.abstractmethod
    def step(self, step: int) -> dict:
        """Training step `step` (0-based); returns its metrics."""

    @abc.abstractmethod
    def evaluate(self, stage: str) -> Evaluation:
        """Held-out evaluation; stage is "start", "step" (every run.eval_every) or "end"."""

    @abc.abstractmethod
    def trained(self) -> dict[str, Trained]:
        """The roles a checkpoint holds, by name (their exports are `<name>_hf/` in a checkpoint)."""

    def save(self, folder: Path) -> None:
        """Write the trained roles' state into `folder`: DeepSpeed checkpoints (sharded weights, optimizer,
        scheduler, RNG), then the weights in Hugging Face format as `<name>_hf/`."""
        trained = self.trained()
        get(*[t.group.broadcast(t.actor.save_checkpoint, str(folder)) for t in trained.values()])
        get(*[t.group.broadcast(t.actor.export, str(folder / f"{name}_hf"), *t.export_args()) for name, t in trained.items()])

    def load(self, folder: Path) -> None:
        """Restore the trained roles' state from the checkpoint `folder`."""
        get(*[t.group.broadcast(t.actor.load_checkpoint, str(folder)) for t in self.trained().values()])

    def export(self, name: str, folder: Path, *args) -> str:
        """Export the trained role `name` to `folder` in Hugging Face format (a collective under ZeRO-3;
        rank 0 writes); returns the folder."""
        t = self.trained()[name]
        get(t.group.broadcast(t.actor.export, str(folder), *(args or t.export_args())))
        return str(folder)

    def fingerprint(self) -> dict:
        """What a checkpoint of this job must have been written for (models, LoRA and ZeRO layout, data
        size): stored in every checkpoint; a resume with a different one is refused before any role starts
        (`orchestrator.core.preflight.check_fingerprint`)."""
        return {"job": self.name}

    def role_configs(self) -> dict:
        """The config slice of every role `start` hosts (name -> slice with replicas, num_cpus, num_gpus,
        colocate_with): what a dry run plans."""
        return {}

    def state_dict(self) -> dict:
        """The job's driver-side state (data position, controllers, ...): tensors and plain values."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def finish(self, out: Path) -> dict:
        """Exports at the end of the run; returns extra summary fields."""
        return {}

    def summary(self, records: list[dict], history: dict) -> dict:
        """The job's own summary fields from every metrics record and the evaluation history."""
        return {}

    def progress(self, metrics: dict) -> str:
        """The progress bar's text for a step's metrics."""
        return ""

    def print_summary(self, summary: dict, out: Path) -> None:
        print(f"\n{self.name} finished: {summary['steps']} steps in {summary['wall_time_s']:.0f} s; outputs in {out}")

    def shutdown(self) -> None:
        """Release the roles."""
        for group in self.groups:
            group.shutdown()


def run(job: Job, cfg, dry_run: bool = False, hooks: tuple = ()) -> dict:
    """Run `job` under `cfg.run` (the whole config tree `cfg` goes to config.yaml); returns the summary.
    `hooks` (`Hook`) watch the run.

    `dry_run`: the checks only (config, data, models, the checkpoint to resume), then the placement plan
    is printed (`print_plan`) and nothing is written or started; returns {"dry_run": plan}."""
    timer = time.perf_counter()
    run_cfg = cfg.run
    out = Path(run_cfg.output_dir)
    # the checkpoint to resume (a bad path, or one beyond run.steps, fails before any role starts)
    resume_from = ckpt.resolve_resume(run_cfg.resume, run_cfg.output_dir)
    state = ckpt.load_driver_state(resume_from) if resume_from is not None else None
    if state is not None:
        preflight.check_fingerprint(state.get("fingerprint"), job.fingerprint(), resume_from, run_cfg.output_dir)
    if state is not None and int(state["step"]) > run_cfg.steps:
        raise ConfigError(f"config key 'run.steps': ({run_cfg.steps}) is below the step of the checkpoint to resume, "
                          f"{resume_from} (step {int(state['step'])}); ask for more steps, or run.resume=never to start fresh")
    if dry_run:
        return {"dry_run": print_plan(job, cfg, resume_from, state)}
    try:  # an unwritable output_dir fails here, before any role starts
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"config key 'run.output_dir': {str(out)!r} is not writable ({e.strerror or e})") from None
    if resume_from is None:
        _set_aside_previous_run(out)
    (out / "config.yaml").write_text(to_yaml(cfg))
    torch.manual_seed(run_cfg.seed)

    with _StopSignals(run_cfg.stop_timeout_s) as stop:
        t0 = time.perf_counter()
        job.start()
        job.startup_s = round(time.perf_counter() - t0, 2)
        stop.install()  # again: connecting to Ray installs Ray's own SIGTERM handler in this process
        try:
            summary = _loop(job, run_cfg, out, resume_from, state, timer, to_dict(cfg), stop, hooks)
            for hook in hooks:
                hook.finished(job, summary)
        finally:
            job.shutdown()
    job.print_summary(summary, out)
    return summary


def print_plan(job: Job, cfg, resume_from: Path | None, state: dict | None) -> dict:
    """Print what a run of `job` would do: where it writes, whether it resumes, the cluster it joins, and
    the placement groups of its roles (one bundle per replica, colocated roles sharing one); returns the
    plan as a dict."""
    from cluster.placement import plan_resources, plan_totals

    run_cfg = cfg.run
    roles = job.role_configs()
    gpus_asked = any(c.num_gpus > 0 for c in roles.values())
    plan = plan_resources(roles, has_gpus=gpus_asked) if run_cfg.mode == "ray" else {}
    if run_cfg.mode == "local":
        where = "local: every role in this process"
    elif run_cfg.ray_address:
        where = f"ray: the cluster at run.ray_address={run_cfg.ray_address}"
    elif os.environ.get("RAY_ADDRESS"):
        where = f"ray: the cluster of this job (RAY_ADDRESS={os.environ['RAY_ADDRESS']})"
    else:
        where = "ray: a new local cluster on 127.0.0.1"
    groups = {group: {"roles": group.split("+"), "bundles": bundles, "bundle": bundle.as_dict()}
              for group, bundles, bundle, _ in plan.values()}
    total = plan_totals(plan)
    out = {"job": job.name, "output_dir": run_cfg.output_dir, "resume_from": str(resume_from) if resume_from else None,
           "resume_step": int(state["step"]) if state else 0, "steps": run_cfg.steps, "hosting": where,
           "strategy": run_cfg.placement_strategy, "placement_timeout_s": run_cfg.placement_timeout_s,
           "placement_groups": groups, "total": total}
    print(f"rlhf {job.name} --dry-run: config, data and models checked; nothing was written or started")
    print(f"  output: {run_cfg.output_dir} ("
          + (f"resumes from {resume_from} at step {out['resume_step']}" if resume_from else "a fresh run") + f"), {run_cfg.steps} steps")
    print(f"  hosting: {where}")
    if groups:
        print(f"  placement ({run_cfg.placement_strategy}, waits up to run.placement_timeout_s={run_cfg.placement_timeout_s:g} s), "
              "one bundle per replica:")
        for name, g in groups.items():
            print(f"    {name}: {g['bundles']} x {g['bundle']}")
        print(f"  in all: {total}" + ("  (GPUs become 0 on a cluster without GPUs)" if gpus_asked else ""))
    return out


class Preempted(Exception):
    """The run stopped on SIGTERM or SIGINT at a step boundary, after writing its checkpoint."""

    EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.exit_code = self.EXIT_CODES.get(signum, 1)


class _StopSignals:
    """SIGTERM (a scheduler's preemption, `ray job stop`) and SIGINT (Ctrl-C) during a run: the current step
    finishes, a checkpoint is written at its boundary, the roles stop, and `Preempted` carries the exit
    code (143, 130). If that takes more than `timeout_s` after the signal, or a second signal comes, the
    step is abandoned at once (KeyboardInterrupt: no checkpoint; the last one stays). Only the main
    thread can own signals; elsewhere (a test's worker thread) nothing is installed."""

    def __init__(self, timeout_s: float):
        self.timeout_s, self.signum, self.previous, self.timer = timeout_s, None, {}, None

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # the second signal: abandon now
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}")
        self.signum = signum
        log.warning("%s received: finishing the current step, then a checkpoint and stop (at most %g s; "
                    "a second signal stops at once)", signal.Signals(signum).name, self.timeout_s)
        self.timer = threading.Timer(self.timeout_s, _thread.interrupt_main)
        self.timer.daemon = True
        self.timer.start()

    def install(self) -> None:
        """(Re)install the handlers; the first call remembers the ones to restore."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.signal(sig, self._handle)
            self.previous.setdefault(sig, previous if previous is not None else signal.SIG_DFL)

    def __enter__(self) -> "_StopSignals":
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        if self.timer is not None:
            self.timer.cancel()
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _restore(job: Job, folder: Path, state: dict) -> tuple[int, dict]:
    """Load the checkpoint `folder` (driver state `state`) into the running roles; (its step, its history)."""
    job.load(folder)
    job.load_state_dict(state["job"])
    torch.set_rng_state(state["rng"])
    log.info("resumed from %s at step %d", folder, int(state["step"]))
    return int(state["step"]), state.get("history", {})


def _loop(job: Job, run_cfg, out: Path, resume_from: Path | None, state: dict | None, timer: float, config: dict,
          stop: "_StopSignals", hooks: tuple) -> dict:
    """The steps, with self-healing in ray mode: when a role's actor dies (its process or node is lost), the
    roles are torn down and started again, the latest whole checkpoint is loaded (or the run's initial
    state, when there is none yet), and the run goes on from there, up to run.max_restarts times; each
    restart is logged with its cause, counted in the metrics (run/restarts) and listed in the summary."""
    start_step, history = _restore(job, resume_from, state) if resume_from is not None else (0, {})
    initial = (copy.deepcopy(job.state_dict()), torch.get_rng_state()) if resume_from is None else None
    restarts: list[dict] = []
    resume_step = start_step if resume_from is not None else None
    while True:
        metrics_log = MetricsLogger(out, resume_step=resume_step, loggers=run_cfg.loggers, config=config,
                                    wandb_project=run_cfg.wandb_project)
        try:
            records, extra = _steps(job, run_cfg, out, start_step, history, metrics_log, stop, len(restarts), hooks)
            break
        except RoleError as e:
            if not e.died or run_cfg.mode != "ray" or len(restarts) >= run_cfg.max_restarts:
                raise
            cause = first_line(e)
        finally:
            metrics_log.close()
        folder = ckpt.resolve_resume("auto", run_cfg.output_dir)
        log.warning("restart %d of %d (run.max_restarts): %s; starting the roles again, then %s", len(restarts) + 1,
                    run_cfg.max_restarts, cause, f"resuming from {folder}" if folder else "from the start (no checkpoint yet)")
        job.shutdown()
        job.start()
        stop.install()
        if folder is not None:
            start_step, history = _restore(job, folder, ckpt.load_driver_state(folder))
            resume_step = start_step
        else:
            job.load_state_dict(copy.deepcopy(initial[0]))
            torch.set_rng_state(initial[1])
            start_step, history, resume_step = 0, {}, -1  # -1: drop every record of the lost attempt
        restarts.append({"cause": cause, "resumed_at_step": start_step})
    summary = {"job": job.name, "steps": run_cfg.steps, **job.summary(records, history), **extra,
               "eval_start": history["start"]["record"], "eval_end": history["end"]["record"], "restarts": restarts,
               "wall_time_s": round(time.perf_counter() - timer, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _steps(job: Job, run_cfg, out: Path, start_step: int, history: dict, metrics_log: MetricsLogger,
           stop: "_StopSignals", restarts: int, hooks: tuple) -> tuple[list[dict], dict]:
    """Steps start_step+1 .. run.steps with their evaluations, metrics and checkpoints, then the exports;
    returns (every metrics record, the job's extra summary fields)."""
    from tqdm import tqdm

    for hook in hooks:
        hook.started(job)

    if "start" not in history:
        history["start"] = _evaluate(job, "start", 0, out)
        metrics_log.write(0, history["start"]["metrics"])
    last = run_cfg.steps
    bar = tqdm(range(start_step, last), initial=start_step, total=last, desc=job.name, dynamic_ncols=True)
    for step in bar:
        done = step + 1
        for hook in hooks:
            hook.before_step(job, step)
        metrics = job.step(step)
        for hook in hooks:
            hook.after_step(job, step, metrics)
        metrics["run/restarts"] = float(restarts)
        bar.set_postfix_str(job.progress(metrics))
        if done == last:
            history["end"] = _evaluate(job, "end", done, out)
            metrics.update(history["end"]["metrics"])
        elif run_cfg.eval_every and done % run_cfg.eval_every == 0:
            metrics.update(job.evaluate("step").metrics)
        if done % run_cfg.log_every == 0 or done == last or any(k.startswith("eval/") for k in metrics):
            metrics_log.write(done, metrics)
        if done == last or (run_cfg.save_every and done % run_cfg.save_every == 0) or stop.signum is not None:
            _save(job, run_cfg, done, history)
        if stop.signum is not None and done < last:
            name = signal.Signals(stop.signum).name
            raise Preempted(stop.signum, f"stopped by {name} after step {done} of {last}; checkpoint "
                            f"{ckpt.latest_checkpoint(run_cfg.output_dir)} written; run again with run.resume=auto to continue")
    bar.close()
    if history.get("end", {}).get("step") != last:  # resumed at the final step of a run that had no end evaluation
        history["end"] = _evaluate(job, "end", last, out)
    extra = job.finish(out)
    extra["startup_s"], extra["roles"] = job.startup_s, roles_summary(job.groups)
    records = metrics_log.read()
    plot_curves({"": records}, job.curve_keys, out / "curves.png", twin="eval/gold", labels={"eval/gold": "held-out gold"})
    return records, extra


def roles_summary(groups: list) -> dict:
    """{role: [one entry per replica: rank, node id and IP, hostname, pid, GPUs, peak memory, start-up s]} for
    summary.json (`RoleGroup.hosts`); in local mode every role reports the driver process."""
    return {g.name: g.hosts() for g in groups}


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (a full disk, a file size limit, a role that failed to save)."""


def _save(job: Job, run_cfg, done: int, history: dict) -> None:
    """The checkpoint of step `done`, atomically; a failure names the step and the checkpoint left intact."""
    try:
        with ckpt.atomic_checkpoint(run_cfg.output_dir, done, run_cfg.keep_checkpoints) as folder:
            job.save(folder)
            ckpt.save_driver_state(folder, {"step": done, "job": job.state_dict(), "history": history,
                                            "rng": torch.get_rng_state(), "fingerprint": job.fingerprint()})
    except Exception as e:  # noqa: BLE001  (one message naming what is left; the cause is chained)
        kept = ckpt.latest_checkpoint(run_cfg.output_dir)
        cause = first_line(e)
        raise CheckpointError(f"writing the checkpoint of step {done} failed ({cause}); "
                              f"{f'the last complete checkpoint, {kept}, is intact' if kept else 'no earlier checkpoint exists'}") from e


def _evaluate(job: Job, stage: str, step: int, out: Path) -> dict:
    """A start or end evaluation: its samples file written; returns its history entry."""
    ev = job.evaluate(stage)
    if ev.samples:
        with open(out / f"samples_{stage}.jsonl", "w") as f:
            for row in ev.samples:
                f.write(json.dumps(row) + "\n")
    log.info("%s evaluation at step %d: %s", stage, step, "  ".join(f"{k} {v:.4f}" for k, v in ev.metrics.items()))
    return {"step": step, "metrics": dict(ev.metrics), "record": ev.record}


def _set_aside_previous_run(out: Path) -> None:
    """A fresh run in a folder holding an earlier run's outputs (a crash before the first checkpoint,
    run.resume=never, a rerun): move them to previous-<time>/ so nothing mixes and nothing is lost."""
    found = [name for name in OUTPUTS if (out / name).exists()]
    if not found:
        return
    aside = out / time.strftime("previous-%Y%m%d-%H%M%S")
    n = 1
    while aside.exists():
        n += 1
        aside = out / time.strftime(f"previous-%Y%m%d-%H%M%S-{n}")
    aside.mkdir()
    for name in found:
        os.replace(out / name, aside / name)
    log.warning("%s held the outputs of an earlier run that this fresh run would mix with (%s); moved them to %s",
                out, ", ".join(found), aside)


def first_and_last(records: list[dict], key: str, at_most: int) -> tuple[float, float, int]:
    """(mean of the first k, mean of the last k, k) values of `key` over the records that have it, with
    k = a quarter of them, at least 1 and at most `at_most`: a training curve's start and end in summaries."""
    values = [r[key] for r in records if key in r]
    if not values:
        return math.nan, math.nan, 0
    k = max(1, min(at_most, len(values) // 4))
    return sum(values[:k]) / k, sum(values[-k:]) / k, k
