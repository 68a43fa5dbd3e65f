"""The sections every job shares: `RunConfig` (hosting, steps, seed, outputs, checkpoints, trackers) and
`DataConfig` (where the rows come from, and the length and error rules)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from orchestrator.config.tree import Check

__all__ = ["RunConfig", "DataConfig", "EnvConfig"]


@dataclass
class DataConfig:
    path: str = "builtin:prompts"
    """Dataset: a .json/.jsonl/.parquet file, a folder of such shards, a Hugging Face dataset name (or a datasets builder such as json with data_files), or builtin:prompts / builtin:preferences / builtin:sft."""
    split: str = "train"
    """Split to read (folders, hub datasets and builtin data); hub splits may slice, e.g. train[:1000] or train[:10%]."""
    subset: str = ""
    """Hub datasets: the configuration (subset) name, e.g. 'harmless-base'."""
    data_files: list[str] = field(default_factory=list)
    """Hub datasets and builders: the files to read (datasets' data_files; patterns allowed)."""
    data_dir: str = ""
    """Hub datasets: the folder inside the repository to read (datasets' data_dir); local folders: the subfolder."""
    eval_path: str = ""
    """Held-out dataset for evaluation; empty means split `eval_split` of `path` (builtin and hub data; a local file needs eval_path)."""
    eval_split: str = "test"
    """Split of the evaluation dataset."""
    max_prompt_tokens: int = 512
    """Longest prompt, in tokens after the chat template (the built-in task's prompts are under 16)."""
    max_response_tokens: int = 1024
    """Longest response (chosen/rejected, SFT answer) in tokens with its EOS; preference and SFT data (the built-in task's are under 64)."""
    on_long: Literal["drop", "truncate"] = "drop"
    """Rows longer than the limits: drop them, or truncate (prompts keep their end, responses their start)."""
    on_error: Literal["raise", "skip"] = "raise"
    """Malformed rows: stop with an error naming file, row and field, or skip and count them."""
    chat_template: bool = True
    """Apply the tokenizer's chat template when it has one."""
    max_rows: int = 0
    """Read at most this many rows (0 = all)."""
    weight_column: str = ""
    """rlhf rm and rlhf dpo: a column of per-pair weights (finite, >= 0; rows of weight 0 are dropped), e.g. the audit_weight of `rlhf data audit --write-clean`. The loss of a batch is sum(w * loss) / sum(w); held-out evaluation stays unweighted. Empty: every pair counts 1."""

    def validate(self, check: Check) -> None:
        check(bool(self.path), "path", "must not be empty")
        check(self.max_prompt_tokens >= 1, "max_prompt_tokens", "must be >= 1")
        check(self.max_response_tokens >= 1, "max_response_tokens", "must be >= 1")
        check(self.max_rows >= 0, "max_rows", "must be >= 0")


@dataclass
class RunConfig:
    mode: Literal["local", "ray"] = "ray"
    """local: every role in this process (debug with breakpoints); ray: every role a group of Ray actors."""
    ray_address: str = ""
    """Ray cluster to join; empty means the cluster of `ray job submit` if any, else a new local one."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_SPREAD", "STRICT_PACK"] = "PACK"
    """How each role's replicas are spread over nodes (ray mode): PACK (as few nodes as possible, spilling over), SPREAD (a node each where possible), STRICT_SPREAD (a node each, or wait), STRICT_PACK (one node, or wait). Colocated roles always share replica i's node."""
    placement_timeout_s: float = 600.0
    """Longest wait for the cluster to have the resources every role asks for; the wait is reported at once and every 30 s."""
    autoscaler: bool = False
    """The cluster adds nodes on demand (KubeRay, `ray up`): a request no current node can hold is waited for instead of refused at once, and num_gpus is kept while no GPU node is up yet."""
    profile_comm: bool = False
    """Time every DeepSpeed collective of every replica (ZeRO gathers and reduce-scatters, data-parallel all-reduces) and report it per replica in summary.json `roles` (comm_s, comm_ops, comm_mb). Each timed collective waits for the device, so this is for measuring (`rlhf experiment scaling` turns it on), not for production runs."""
    profile: bool = False
    """Run the calls of each step's phase one after another instead of at once, each timed on its own (metrics time/<phase>/<call>, e.g. time/forward/values): slower, for measuring (`rlhf bench` turns it on); the numbers trained on are the same."""
    steps: int = 100
    """Training steps (PPO: rollout batches)."""
    seed: int = 0
    """Seed of every random generator (data order, init, sampling)."""
    output_dir: str = "runs/ppo"
    """Where checkpoints, metrics, plots and the exported model go."""
    save_every: int = 50
    """Write a checkpoint every N steps (0 = only at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk; older ones are deleted after a new one is complete."""
    resume: str = "auto"
    """'auto': continue from the latest checkpoint in output_dir if any; 'never'; or a checkpoint folder."""
    eval_every: int = 0
    """Evaluate on held-out prompts every N steps (0 = at the start and end only)."""
    log_every: int = 1
    """Write metrics every N steps."""
    max_restarts: int = 3
    """run.mode=ray: times a run restarts its roles by itself when one's actor (process or node) dies, resuming from the latest checkpoint; 0 = stop with the error."""
    stop_timeout_s: float = 300.0
    """On SIGTERM / SIGINT (preemption, `ray job stop`, Ctrl-C): the longest wait for the current step and its checkpoint; past it (or on a second signal) the step is abandoned without a checkpoint."""
    on_nonfinite: Literal["raise", "skip"] = "raise"
    """A NaN or infinity in a reward, log-prob, value or loss: raise (stop with a message naming its source) or skip (PPO drops the step, counts it in nonfinite/skipped_steps, and stops after run.max_skipped_steps in a row). No optimizer step ever sees one."""
    max_skipped_steps: int = 3
    """run.on_nonfinite=skip: consecutive skipped steps before the run stops."""
    on_env_error: Literal["raise", "skip"] = "raise"
    """An environment (env.path) whose reset or step raises, returns the wrong types or passes env.step_timeout_s: raise (stop with one line naming the class, the method, the prompt row and the turn) or skip (the episode is dropped from training: no token of it is an action; counted in env/errors)."""
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Trackers besides metrics.jsonl: tensorboard, wandb (pip install wandb; WANDB_MODE=offline needs no network). [] for none."""
    wandb_project: str = "rlhf"
    """loggers=wandb: the W&B project."""

    def hosting(self):
        """The `cluster.Hosting` of these settings (what `cluster.create_groups` takes)."""
        from cluster import Hosting

        return Hosting(mode=self.mode, address=self.ray_address, strategy=self.placement_strategy,
                       placement_timeout_s=self.placement_timeout_s, autoscaler=self.autoscaler,
                       profile_comm=self.profile_comm)

    def validate(self, check: Check) -> None:
        import importlib.util

        check(self.placement_timeout_s > 0, "placement_timeout_s", "must be > 0")
        for name in self.loggers:
            check(name in ("tensorboard", "wandb"), "loggers", f"must list tensorboard and/or wandb, got {name!r}")
        check("wandb" not in self.loggers or importlib.util.find_spec("wandb") is not None, "loggers",
              "lists wandb, which is not installed (pip install wandb, or pip install rlhf[wandb])")
        check(self.steps >= 1, "steps", "must be >= 1")
        check(self.max_skipped_steps >= 0, "max_skipped_steps", "must be >= 0")
        check(self.stop_timeout_s > 0, "stop_timeout_s", "must be > 0")
        check(self.max_restarts >= 0, "max_restarts", "must be >= 0")
        check(self.save_every >= 0, "save_every", "must be >= 0")
        check(self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
        check(self.eval_every >= 0, "eval_every", "must be >= 0")
        check(self.log_every >= 1, "log_every", "must be >= 1")


@dataclass
class EnvConfig:
    """Multi-turn rollouts (`orchestrator.jobs.episodes`): an environment the policy talks to, one object per
    episode. Unset (path empty), a rollout is one prompt and one response."""

    path: str = ""
    """The environment class: 'module:Class' (importable where the driver runs; a file's folder on PYTHONPATH), or a built-in one: builtin:lookup (a per-episode fact only a lookup tool call reveals), builtin:clarify (a vague request that needs a clarifying question). The class needs no import of ours: __init__(**env.kwargs), reset(row) -> the first message (a string, or chat messages), step(response) -> (the next message(s) or None, this turn's reward, done)."""
    kwargs: dict = field(default_factory=dict)
    """Keyword arguments of the class's __init__ (e.g. env.kwargs.max_value=9, or in YAML a mapping)."""
    max_turns: int = 4
    """Model turns per episode at most; the episode ends after the last one whatever the environment says."""
    max_tokens: int = 256
    """Tokens of an episode at most, its first prompt included (the models and engines are sized for it): a model turn that would pass it is cut there and the episode ends, as it does when an environment message leaves no room. Each model turn is also at most policy.max_new_tokens."""
    step_timeout_s: float = 30.0
    """Seconds one reset or step call may take; past it the episode fails (run.on_env_error)."""
    workers: int = 8
    """Threads that run the calls of different episodes at once (one episode's calls run in order)."""

    def validate(self, check: Check) -> None:
        check(not self.path or self.path.startswith("builtin:") or ":" in self.path, "path",
              "must look like 'module:Class' or name a built-in environment (builtin:lookup, builtin:clarify)")
        check(self.max_turns >= 1, "max_turns", "must be >= 1")
        check(self.max_tokens >= 1, "max_tokens", "must be >= 1")
        check(self.step_timeout_s > 0, "step_timeout_s", "must be > 0")
        check(self.workers >= 1, "workers", "must be >= 1")
