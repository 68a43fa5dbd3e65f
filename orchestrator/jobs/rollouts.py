"""Where a PPO step's rollout comes from, chosen once per run (`rollout_source`):

- `OnPolicy` (`ppo.max_staleness=0` with generator.engine=hf): the policy samples each step's rollout
  itself, from its current weights (phase `generate`).
- `FromGenerator`: a generator role (a copy of the policy's weights on devices of its own: HF `generate`, or
  a vLLM engine per replica with generator.engine=vllm) samples the rollouts. Before a step's rollout is
  sampled the generator gets the policy's latest weights (phase `weight_sync`, replica to replica, not
  through the driver), counted as a weight version (the policy's steps so far), which every rollout row
  carries (`Rollout.weight_version`).
  With `ppo.max_staleness=K` >= 1 (K=1: one step off-policy, as OpenRLHF's and verl's asynchronous modes;
  K > 1 as AReaL's bounded staleness) K rollouts are in flight: after step t's rollout is taken, the
  weights of step t are sent and the rollout of step t+K issued, so the generator samples while the policy
  scores and trains, and the rollout of step t comes from the weights of step max(0, t-K). The sync is
  only issued (each replica applies it after the samples queued before it, and `GeneratorActor.generate`
  refuses to sample with another version than the one it was issued for). With K=0 (vLLM on-policy) the
  step syncs, then samples its own rollout.
  `rollout/lag` says how many updates behind the policy a rollout's weights were (min(t, K)),
  `rollout/lag_<k>` the share of the batch's rows k updates behind (the staleness histogram, k = 0..K);
  At a step whose rollout was sampled right after a sync: `sync/version` and `sync/mb` what it moved,
  `sync/apply_s` how long the generator took to apply it, `sync/mb_per_s` how fast (no sync
  before it, as for the rollout sampled ahead at the first step: none of these).

Multi-turn (env.path): either source runs the episodes' loop (`orchestrator.jobs.episodes`) with its engine,
one batched call per model turn; ahead of the policy the loop runs when the rollout is issued (the staleness
is the same; the turns do not yet overlap the policy's update, since the loop runs in the driver).

Both take the prompts from `prompts()` (timed as `driver`) and record how long the step waited for its
rollout as `generate`. A source's state (`FromGenerator`: the rollouts sampled ahead for the next steps)
is part of every checkpoint, so a resumed run trains on the samples an uninterrupted one would.
"""

from __future__ import annotations

from typing import Callable

import torch

from actors.policy import GeneratorActor, PolicyActor
from actors.types import PromptBatch, Rollout
from cluster import Pending, get
from orchestrator.core.phases import Phases
from orchestrator.jobs.episodes import episode_metrics

__all__ = ["OnPolicy", "FromGenerator", "rollout_source"]


def _seed(run_seed: int, step: int) -> int:
    """The sampling seed of step `step`'s rollout."""
    return run_seed * 100_003 + step


def _sample(group, method, batch: PromptBatch, seed: int, phases: Phases, episodes, **kwargs) -> Rollout:
    """The rollout of `batch` sampled by `group`'s `method` (`PolicyActor.generate` or `GeneratorActor.generate`),
    timed as `generate`: one call, or with an environment (`episodes`, an `EpisodeRunner`) one call per model
    turn of the episodes still running, the environment's calls timed as `env`."""
    if episodes is None:
        return phases.run("generate", generate=lambda: group.scatter(method, batch, seed=seed, **kwargs))["generate"]

    def turn(prompts: PromptBatch, k: int) -> Rollout:
        return phases.run("generate", generate=lambda: group.scatter_padded(method, prompts, seed=seed * 1_009 + k, **kwargs))["generate"]

    return episodes.run(batch, seed, turn, phases.timed)


class OnPolicy:
    """The policy samples each step's rollout (module doc)."""

    def __init__(self, prompts: Callable[[], PromptBatch], seed: int, record_logprobs: bool, episodes=None):
        self.prompts, self.seed, self.record_logprobs, self.episodes = prompts, seed, record_logprobs, episodes
        self.policy = None

    def started(self, roles) -> None:
        self.policy = roles.policy

    def next(self, step: int, phases: Phases) -> tuple[Rollout, dict]:
        """This step's rollout and its metrics."""
        with phases.timed("driver"):
            batch = self.prompts()
        rollout = _sample(self.policy, PolicyActor.generate, batch, _seed(self.seed, step), phases, self.episodes,
                          record_logprobs=self.record_logprobs)
        return rollout, episode_metrics(rollout)

    def updated(self) -> None:
        """The policy's weights changed."""

    def state_dict(self) -> None:
        return None

    def load_state_dict(self, state) -> None:
        pass


class FromGenerator:
    """The generator role samples the rollouts, at most `staleness` updates behind the policy (module doc).

    `pending` maps a step to the rollout sampled for it (a `Pending` while it samples, a `Rollout` once
    gathered): with staleness K it holds steps t+1..t+K after step t. `fresh` says whether the generator
    holds the policy's current weights; `full_weights` asks the policy for every tensor even with LoRA (a vLLM
    engine reloads whole layers)."""

    def __init__(self, prompts: Callable[[], PromptBatch], seed: int, staleness: int, full_weights: bool, sleep: bool = False,
                 transport=None, episodes=None):
        """`transport`: the `GeneratorConfig` when the weights go over a transfer group (sync_transport=collective),
        else None (Ray's object store, or memory in local mode). `episodes`: an `EpisodeRunner` for multi-turn
        rollouts (env.path), whose loop runs in the driver when the rollout is issued."""
        self.prompts, self.seed, self.staleness, self.full_weights = prompts, seed, staleness, full_weights
        self.episodes = episodes
        self.transport = transport
        self.transfer_open = False
        self.sleep = sleep and not staleness  # generator.sleep: the engine sleeps while the policy trains
        self.pending: dict[int, object] = {}
        self.fresh = False
        self.version = 0  # the weight version the generator was last sent
        self.syncs: dict[int, object] = {}  # weight syncs issued and not yet read, by the step sampled next after them
        self.policy = self.generator = None

    def started(self, roles) -> None:
        """New roles (the start, or a restart after a lost actor): their generator has the initial weights."""
        self.policy, self.generator = roles.policy, roles.generator
        self.fresh = False
        self.transfer_open = False  # new replicas: a new transfer group
        self.syncs = {}
        if not all(isinstance(r, Rollout) for r in self.pending.values()):
            self.pending = {}  # samples in flight on actors that are gone: the checkpoint's are loaded next

    def _sync(self, version: int, next_step: int, phases: Phases) -> None:
        """Send the policy's weights (version `version`) to the generator's replicas, policy to generator, not
        through the driver. On-policy (or profiling) the step waits for it; ahead of the policy it is only
        issued: each replica takes it after the samples already queued on it, before `next_step`'s, and its
        stats are read when that rollout is."""
        if self.fresh:
            return
        if self.sleep:
            get(self.generator.broadcast(GeneratorActor.wake_up))

        def send():
            return self.generator.broadcast(GeneratorActor.load_weights, self.policy.broadcast(PolicyActor.weights, full=self.full_weights),
                                            version=version)

        if self.transport is not None:  # sender and receivers at once, and the step waits for both
            with phases.timed("weight_sync"):
                self._open_transfer()
                _, received = get(self.policy.broadcast(PolicyActor.send_weights, full=self.full_weights),
                                  self.generator.broadcast(GeneratorActor.receive_weights, version=version))
            self.syncs[next_step] = received
        elif self.staleness and not phases.profile:
            self.syncs[next_step] = phases.issue("weight_sync", send)
        else:
            self.syncs[next_step] = phases.run("weight_sync", weight_sync=send)["weight_sync"]
        self.version, self.fresh = version, True

    def _open_transfer(self) -> None:
        """The weight-transfer group of the policy's rank 0 and every generator replica (each vLLM worker), made
        once per set of roles: a free port on the policy's node, the layout of the weights it will send, then
        sender and receivers join at once (`cluster.transfer`)."""
        if self.transfer_open:
            return
        g = self.transport
        host, port = get(self.policy.call_rank0(PolicyActor.transfer_port))
        layout = get(self.policy.broadcast(PolicyActor.transfer_layout, full=self.full_weights, bucket_mb=g.sync_bucket_mb))
        world = 1 + self.generator.world_size * (g.tensor_parallel if g.engine == "vllm" else 1)
        get(self.policy.broadcast(PolicyActor.open_transfer, host, port, world, g.sync_timeout_s),
            self.generator.broadcast(GeneratorActor.join_transfer, host, port, world, layout, g.sync_timeout_s))
        self.transfer_open = True

    def _issue(self, step: int, phases: Phases):
        with phases.timed("driver"):
            batch = self.prompts()
        # a seed per row, fixed by the step and the row's place in the batch: a row's sample does not depend
        # on which replica (or engine) it went to
        batch.seeds = _seed(self.seed, step) * 65_537 + torch.arange(batch.num_rows)
        if self.episodes is not None:  # the turns of the episodes, sampled now from the weights of this version
            self.pending[step] = _sample(self.generator, GeneratorActor.generate, batch, _seed(self.seed, step), phases,
                                         self.episodes, record_logprobs=True, version=self.version)
            return
        pending = phases.issue("generate", lambda: self.generator.scatter(
            GeneratorActor.generate, batch, seed=_seed(self.seed, step), record_logprobs=True, version=self.version))
        self.pending[step] = phases.wait("generate", pending) if phases.profile else pending

    def next(self, step: int, phases: Phases) -> tuple[Rollout, dict]:
        """This step's rollout (sampled up to `staleness` steps ago, or now) and its metrics. With staleness
        K the rollout of step t + K is issued before returning, from the weights of step t: it samples while
        this step scores and trains (when profiling, waited for, so each phase is timed alone)."""
        if step not in self.pending:  # the first step, on-policy, or a restart before any checkpoint
            self.pending = {}
            self._sync(step, step, phases)
            for s in range(step, step + max(self.staleness, 1)):
                self._issue(s, phases)
        rollout = self.pending.pop(step)
        if not isinstance(rollout, Rollout):
            rollout = phases.wait("generate", rollout)
        synced = self.syncs.pop(step, None)  # the sync this rollout was sampled right after: done
        if isinstance(synced, Pending):
            synced = get(synced)
        synced = synced[0] if isinstance(synced, list) else synced
        if self.sleep:
            get(self.generator.broadcast(GeneratorActor.sleep))
        if self.staleness:
            self._sync(step, step + self.staleness, phases)
            self._issue(step + self.staleness, phases)
        metrics = episode_metrics(rollout)
        if rollout.weight_version is not None:
            lag = step - rollout.weight_version
            metrics["rollout/lag"] = float(lag.max())
            # the staleness histogram: the share of this batch's rows sampled k updates behind, k = 0..K
            metrics.update({f"rollout/lag_{k}": float((lag == k).float().mean()) for k in range(self.staleness + 1)})
        if synced:
            metrics.update({"sync/version": float(synced["version"]), "sync/mb": synced["bytes"] / 2**20,
                            "sync/apply_s": synced["seconds"],
                            "sync/mb_per_s": synced["bytes"] / 2**20 / max(synced["seconds"], 1e-9)})
        return rollout, metrics

    def updated(self) -> None:
        """The policy moved: the generator is one update behind."""
        self.fresh = False

    def synced_generator(self, version: int):
        """The generator role holding the policy's current weights (version `version`, the updates so far),
        for held-out sampling: the sync the next step would make is made now, queued after the rollouts in
        flight (which keep the versions they were issued with), so training samples what it would have."""
        self._sync(version, version + self.staleness, Phases())
        return self.generator

    def state_dict(self) -> dict | None:
        """The rollouts sampled ahead (waited for), by step: a resumed run trains on them."""
        if not self.pending:
            return None
        for step, rollout in self.pending.items():
            if not isinstance(rollout, Rollout):
                self.pending[step] = get(rollout)
        return {"pending": {step: {name: getattr(r, name) for name in r.__dataclass_fields__} for step, r in self.pending.items()}}

    def load_state_dict(self, state: dict | None) -> None:
        self.pending = {} if state is None else {int(step): Rollout(**fields) for step, fields in state["pending"].items()}
        self.fresh = False


def rollout_source(cfg, prompts: Callable[[], PromptBatch], episodes=None):
    """The rollout source of a `PPOConfig`: `FromGenerator` when a generator role samples
    (`PPOConfig.uses_generator`), else `OnPolicy`; `episodes`: an `EpisodeRunner` with env.path set."""
    if cfg.uses_generator:
        return FromGenerator(prompts, cfg.run.seed, staleness=cfg.ppo.max_staleness,
                             full_weights=cfg.generator.engine == "vllm", sleep=cfg.generator.sleep,
                             transport=cfg.generator if cfg.generator.sync_transport == "collective" else None,
                             episodes=episodes)
    return OnPolicy(prompts, cfg.run.seed, record_logprobs=cfg.ppo.old_logprobs == "rollout" or cfg.ppo.tis_cap > 0,
                    episodes=episodes)
