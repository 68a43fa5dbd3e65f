"""Where a PPO step's rollout comes from, chosen once per run (`rollout_source`):

- `OnPolicy` (`ppo.rollout_ahead=0` with generator.engine=hf): the policy samples each step's rollout
  itself, from its current weights (phase `generate`).
- `FromGenerator`: a generator role (a copy of the policy's weights on devices of its own: HF `generate`, or
  a vLLM engine per replica with generator.engine=vllm) samples the rollouts. Before a step's rollout is
  sampled the generator gets the policy's latest weights (phase `weight_sync`, replica to replica, not
  through the driver), counted as a weight version (the policy's steps so far), which every rollout row
  carries (`Rollout.weight_version`).
  With `ahead=1` (`ppo.rollout_ahead=1`, one step off-policy as OpenRLHF's and verl's asynchronous modes)
  the rollout of step t+1 is sampled while step t scores and trains, from the weights before step t's
  update; with `ahead=0` (vLLM on-policy) it is sampled at the start of its own step.
  `rollout/lag` says how many updates behind the policy a rollout's weights were (0 at the first step, else
  `ahead`); `sync/version` and `sync/mb` what the last sync moved, `time/sync_mb_per_s` how fast.

Both take the prompts from `prompts()` (timed as `driver`) and record how long the step waited for its
rollout as `generate`. A source's state (`FromGenerator`: a rollout sampled ahead for the next step) is
part of every checkpoint, so a resumed run trains on the samples an uninterrupted one would.
"""

from __future__ import annotations

from typing import Callable

import torch

from actors.policy import GeneratorActor, PolicyActor
from actors.types import PromptBatch, Rollout
from cluster import get
from orchestrator.core.phases import Phases

__all__ = ["OnPolicy", "FromGenerator", "rollout_source"]


def _seed(run_seed: int, step: int) -> int:
    """The sampling seed of step `step`'s rollout."""
    return run_seed * 100_003 + step


class OnPolicy:
    """The policy samples each step's rollout (module doc)."""

    def __init__(self, prompts: Callable[[], PromptBatch], seed: int, record_logprobs: bool):
        self.prompts, self.seed, self.record_logprobs = prompts, seed, record_logprobs
        self.policy = None

    def started(self, roles) -> None:
        self.policy = roles.policy

    def next(self, step: int, phases: Phases) -> tuple[Rollout, dict]:
        """This step's rollout and its metrics."""
        with phases.timed("driver"):
            batch = self.prompts()
        rollout = phases.run("generate", generate=lambda: self.policy.scatter(
            PolicyActor.generate, batch, seed=_seed(self.seed, step), record_logprobs=self.record_logprobs))["generate"]
        return rollout, {}

    def updated(self) -> None:
        """The policy's weights changed."""

    def state_dict(self) -> None:
        return None

    def load_state_dict(self, state) -> None:
        pass


class FromGenerator:
    """The generator role samples the rollouts, `ahead` steps ahead of the policy (0 or 1; module doc).

    `pending` is the rollout sampled for the next step (a `Pending` while it samples, a `Rollout` once
    gathered, None when there is none); `fresh` says whether the generator holds the policy's current
    weights; `full_weights` asks the policy for every tensor even with LoRA (a vLLM engine reloads whole
    layers)."""

    def __init__(self, prompts: Callable[[], PromptBatch], seed: int, ahead: int, full_weights: bool, sleep: bool = False):
        self.prompts, self.seed, self.ahead, self.full_weights = prompts, seed, ahead, full_weights
        self.sleep = sleep and not ahead  # generator.sleep: the engine sleeps while the policy trains
        self.pending = None
        self.fresh = False
        self.policy = self.generator = None
        self.synced: dict = {}

    def started(self, roles) -> None:
        """New roles (the start, or a restart after a lost actor): their generator has the initial weights."""
        self.policy, self.generator = roles.policy, roles.generator
        self.fresh = False
        if not isinstance(self.pending, Rollout):
            self.pending = None  # a sample in flight on actors that are gone: the checkpoint's is loaded next

    def _sync(self, version: int, phases: Phases) -> None:
        if not self.fresh:  # the policy's weights go to the generator's replicas without passing the driver
            if self.sleep:
                get(self.generator.broadcast(GeneratorActor.wake_up))
            stats = phases.run("weight_sync", weight_sync=lambda: self.generator.broadcast(
                GeneratorActor.load_weights, self.policy.broadcast(PolicyActor.weights, full=self.full_weights),
                version=version))["weight_sync"]
            self.synced = stats[0] if isinstance(stats, list) else stats
            self.fresh = True

    def _issue(self, step: int, phases: Phases):
        with phases.timed("driver"):
            batch = self.prompts()
        # a seed per row, fixed by the step and the row's place in the batch: a row's sample does not depend
        # on which replica (or engine) it went to
        batch.seeds = _seed(self.seed, step) * 65_537 + torch.arange(batch.num_rows)
        return phases.issue("generate", lambda: self.generator.scatter(
            GeneratorActor.generate, batch, seed=_seed(self.seed, step), record_logprobs=True))

    def next(self, step: int, phases: Phases) -> tuple[Rollout, dict]:
        """This step's rollout (sampled last step, or now) and its metrics; with `ahead`, the next step's
        rollout is issued before returning (when profiling, waited for, so each phase is timed alone)."""
        if self.pending is None:  # on-policy, the first step, or a restart before any checkpoint: sampled now
            self._sync(step, phases)
            self.pending = self._issue(step, phases)
        rollout = self.pending if isinstance(self.pending, Rollout) else phases.wait("generate", self.pending)
        self.pending = None
        if self.sleep:
            get(self.generator.broadcast(GeneratorActor.sleep))
        if self.ahead:
            self._sync(step, phases)
            self.pending = self._issue(step + 1, phases)  # samples while this step scores and trains
            if phases.profile:
                self.pending = phases.wait("generate", self.pending)
        metrics = {"rollout/lag": float(step - rollout.weight_version.min())} if rollout.weight_version is not None else {}
        if self.synced:
            metrics.update({"sync/version": float(self.synced["version"]), "sync/mb": self.synced["bytes"] / 2**20,
                            "time/sync_mb_per_s": self.synced["bytes"] / 2**20 / max(self.synced["seconds"], 1e-9)})
        return rollout, metrics

    def updated(self) -> None:
        """The policy moved: the generator is one update behind."""
        self.fresh = False

    def state_dict(self) -> dict | None:
        if self.pending is None:
            return None
        if not isinstance(self.pending, Rollout):
            self.pending = get(self.pending)
        return {name: getattr(self.pending, name) for name in self.pending.__dataclass_fields__}

    def load_state_dict(self, state: dict | None) -> None:
        self.pending = None if state is None else Rollout(**state)
        self.fresh = False


def rollout_source(cfg, prompts: Callable[[], PromptBatch]):
    """The rollout source of a `PPOConfig`: `FromGenerator` when a generator role samples
    (`PPOConfig.uses_generator`), else `OnPolicy`."""
    if cfg.uses_generator:
        return FromGenerator(prompts, cfg.run.seed, ahead=cfg.ppo.rollout_ahead,
                             full_weights=cfg.generator.engine == "vllm", sleep=cfg.generator.sleep)
    return OnPolicy(prompts, cfg.run.seed, record_logprobs=cfg.ppo.old_logprobs == "rollout")
