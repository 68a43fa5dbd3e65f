"""The one registry of jobs, and the one way to run one.

Each entry says what the CLI (`rlhf <name>`, `rlhf config <name>`), the config loader, `rlhf bench`, the
scaling sweep (`rlhf experiment scaling`) and the cost model need to know about a job: its config tree,
its `Job` class (imported when first needed, so `rlhf --help` stays light), the rows it trains on and
the key of its batch size. A new job is its step function (a `Job` subclass), its config section and
one entry here.

`run(name, cfg)` is the entry every caller goes through (the CLI, the experiments, `rlhf bench`, tests):
it turns the config's built-in model names into folders (`orchestrator.builtin.policy.resolve`), then
runs the job in the skeleton (`orchestrator.core.job.run`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from orchestrator.config import ConfigError, DPOConfig, PPOConfig, RMConfig, RMEvalConfig, SFTConfig, load

__all__ = ["Entry", "JOBS", "load_config", "run"]


def _ppo() -> type:
    from orchestrator.jobs.ppo import PPOJob

    return PPOJob


def _sft() -> type:
    from orchestrator.jobs.sft import SFTJob

    return SFTJob


def _dpo() -> type:
    from orchestrator.jobs.dpo import DPOJob

    return DPOJob


def _rm() -> type:
    from orchestrator.jobs.rm import RMJob

    return RMJob


def _rm_eval(cfg) -> dict:
    from orchestrator.jobs.rm_eval import eval_saved_model

    report, _ = eval_saved_model(cfg)
    return report


@dataclass(frozen=True)
class Entry:
    """What the tools need to know about one job."""

    name: str
    config: type
    """Its config tree (`rlhf config <name>`)."""
    help: str
    """One line for `rlhf --help`."""
    example: str
    """Overrides shown in its --help."""
    job: Callable[[], type] | None = None
    """The `Job` class, imported on first use; None for a command that trains nothing (`evaluate`)."""
    evaluate: Callable[..., dict] | None = None
    """A command that trains nothing: evaluate(cfg) -> its report."""
    data: str = ""
    """The kind of rows it trains on (prompt, preference, sft): what `rlhf bench` synthesises."""
    batch_key: str = ""
    """The config key of the rows per step (the samples axis of a scaling sweep)."""
    role: str = "policy"
    """The config section of its trained model (`rlhf bench --model` sets <role>.path)."""
    unit: str = "rows"
    """What a row of its batch is, in reports: episodes, pairs, rows."""


JOBS: dict[str, Entry] = {
    "ppo": Entry("ppo", PPOConfig, "PPO: policy, reference, critic and reward as Ray actor groups (or local objects)",
                 "policy.lr=1e-6 run.mode=local", job=_ppo, data="prompt", batch_key="ppo.rollout_batch_size", unit="episodes"),
    "sft": Entry("sft", SFTConfig, "SFT: supervised fine-tuning on prompt/response demonstrations (local, or Ray replicas with ZeRO)",
                 "data.path=demos.jsonl policy.path=./my_model", job=_sft, data="sft", batch_key="sft.batch_size"),
    "dpo": Entry("dpo", DPOConfig, "DPO / IPO / cDPO: one policy role (local, or Ray replicas with DeepSpeed ZeRO)",
                 "dpo.loss=ipo policy.replicas=2 run.mode=ray", job=_dpo, data="preference", batch_key="dpo.batch_size", unit="pairs"),
    "rm": Entry("rm", RMConfig, "train a reward model (bradley_terry, mean_variance, categorical, mixture, odin)",
                "model.objective=mean_variance run.mode=local", job=_rm, data="preference", batch_key="rm.batch_size",
                role="model", unit="pairs"),
    "rm_eval": Entry("rm_eval", RMEvalConfig, "evaluate a saved reward model: JSON report and plots", "path=runs/rm/model",
                     evaluate=_rm_eval),
}
"""Every job by the name the CLI gives it."""


def entry(name: str) -> Entry:
    if name not in JOBS:
        raise ConfigError(f"unknown job '{name}'; jobs: {', '.join(sorted(JOBS))}")
    return JOBS[name]


def load_config(name: str, path: str | None = None, overrides: list[str] | None = None):
    """The config of job `name` from its defaults, an optional YAML file and dotted overrides, checked."""
    return load(entry(name).config, path, overrides)


def run(name: str, cfg, *, dry_run: bool = False, hooks: tuple = ()) -> dict:
    """Run job `name` with the config `cfg`: built-in model names become folders, then the job runs in the
    skeleton (`dry_run`: the checks and the placement plan only, no built-in model trained for them;
    `hooks` watch it). Returns its summary."""
    from orchestrator.builtin.policy import resolve
    from orchestrator.core.job import run as run_job

    e = entry(name)
    cfg = resolve(cfg, build=not dry_run)
    if e.evaluate is not None:
        return e.evaluate(cfg)
    return run_job(e.job()(cfg), cfg, dry_run=dry_run, hooks=hooks)
