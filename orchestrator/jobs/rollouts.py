"""Where a PPO step's rollout comes from, chosen once per run (`rollout_source`):

- `OnPolicy` (`ppo.rollout_ahead=0`): the policy samples each step's rollout itself, from its current
  weights (phase `generate`).
- `Ahead` (`ppo.rollout_ahead=1`, one step off-policy as OpenRLHF's and verl's asynchronous modes): a
  generator role (a copy of the policy's weights on devices of its own) samples step t+1's rollout while
  step t scores and trains. After each update the policy's weights go to it (phase `weight_sync`,
  replica to replica, not through the driver); `rollout/lag` says how many updates behind the weights a
  rollout was sampled with (0 at the first step, else 1).

Both take the prompts from `prompts()` (timed as `driver`) and record how long the step waited for its
rollout as `generate`. A source's state (`Ahead`: the rollout sampled for the next step) is part of
every checkpoint, so a resumed run trains on the samples an uninterrupted one would.
"""

from __future__ import annotations

from typing import Callable

from actors.policy import GeneratorActor, PolicyActor
from actors.types import PromptBatch, Rollout
from cluster import get
from orchestrator.core.phases import Phases

__all__ = ["OnPolicy", "Ahead", "rollout_source"]


def _seed(run_seed: int, step: int) -> int:
    """The sampling seed of step `step`'s rollout."""
    return run_seed * 100_003 + step


class OnPolicy:
    """ppo.rollout_ahead=0: the policy samples each step's rollout (module doc)."""

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


class Ahead:
    """ppo.rollout_ahead=1: the generator's rollout for the next step, issued while this one trains (module doc).

    `pending` is that rollout (a `Pending` while it samples, a `Rollout` once gathered, None before the
    first step); `fresh` says whether the generator holds the policy's current weights."""

    def __init__(self, prompts: Callable[[], PromptBatch], seed: int):
        self.prompts, self.seed = prompts, seed
        self.pending = None
        self.fresh = False
        self.policy = self.generator = None

    def started(self, roles) -> None:
        """New roles (the start, or a restart after a lost actor): their generator has the initial weights."""
        self.policy, self.generator = roles.policy, roles.generator
        self.fresh = False
        if not isinstance(self.pending, Rollout):
            self.pending = None  # a sample in flight on actors that are gone: the checkpoint's is loaded next

    def _sync(self, phases: Phases) -> None:
        if not self.fresh:  # the policy's weights go to the generator's replicas without passing the driver
            phases.run("weight_sync", weight_sync=lambda: self.generator.broadcast(
                GeneratorActor.load_weights, self.policy.broadcast(PolicyActor.weights)))
            self.fresh = True

    def _issue(self, step: int, phases: Phases):
        with phases.timed("driver"):
            batch = self.prompts()
        return phases.issue("generate", lambda: self.generator.scatter(
            GeneratorActor.generate, batch, seed=_seed(self.seed, step), record_logprobs=True))

    def next(self, step: int, phases: Phases) -> tuple[Rollout, dict]:
        """This step's rollout (sampled last step, or now at the first step) and `rollout/lag`; the next
        step's rollout is issued before returning (when profiling, waited for, so each phase is timed alone)."""
        lag = 1
        if self.pending is None:  # the first step (or a restart before any checkpoint): sampled now, on-policy
            self._sync(phases)
            self.pending, lag = self._issue(step, phases), 0
        rollout = self.pending if isinstance(self.pending, Rollout) else phases.wait("generate", self.pending)
        self._sync(phases)
        self.pending = self._issue(step + 1, phases)  # samples while this step scores and trains
        if phases.profile:
            self.pending = phases.wait("generate", self.pending)
        return rollout, {"rollout/lag": float(lag)}

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
    """The rollout source of a `PPOConfig`: `Ahead` with ppo.rollout_ahead=1, else `OnPolicy`."""
    if cfg.ppo.rollout_ahead:
        return Ahead(prompts, cfg.run.seed)
    return OnPolicy(prompts, cfg.run.seed, record_logprobs=cfg.ppo.old_logprobs == "rollout")
