"""`rlhf ppo`: the PPO job, with a critic (GAE) or critic-free (GRPO, Dr. GRPO, RLOO, REINFORCE++:
`ppo.advantage_estimator`). One step reads like the algorithm:

    rollout = policy.generate(prompts, each ppo.samples_per_prompt times)
    scores, ref, old, values = reward.score(rollout), reference.logprobs(rollout),
                               policy.logprobs(rollout), critic.values(rollout)     # concurrently
    exp = make_experience(rollout, scores, ref, old, values)                       # KL, advantages
    critic.train(exp); policy.train(exp)                                           # concurrently

Critic-free, there is no critic role at all (no actor, no device, no checkpoint): no values, no critic update.

One step off-policy (`ppo.rollout_ahead=1`), a generator role samples instead of the policy, one step ahead:

    rollout = the generator's rollout issued last step (from the weights before last step's update)
    generator.load_weights(policy.weights())                                       # weight_sync
    next = generator.generate(next prompts)       # not waited for: it runs while this step scores and trains
    ... the step as above, the PPO ratio against the generator's log-probs

The same code drives `local` mode (roles are objects in this process) and `ray` mode (roles are
groups of Ray actors); only `cluster.create_groups` differs. Everything around the step (output
folder, metrics, evaluation, checkpoints, resume, summary) is the job skeleton's (`orchestrator.job`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from actors.critic import CriticActor
from actors.policy import GeneratorActor, PolicyActor
from actors.reference import ReferenceActor
from actors.reward import RewardActor, check_reward_config, describe
from actors.trainer import NonFiniteError, merge_stats
from actors.types import LogProbs, Rollout
from cluster import RoleSpec, create_groups, get
from losses.common import RunningMoments
from losses.kl import KLController
from orchestrator import job, preflight
from orchestrator.config import ConfigError, PPOConfig
from orchestrator.data import to_prompt_batch
from orchestrator.evaluation import GOLD_DATA, sample_and_score
from orchestrator.experience import make_experience, nonfinite_inputs, schedule
from orchestrator.streams import IndexStream

log = logging.getLogger("rlhf.ppo")


def optimizer_steps(cfg: PPOConfig) -> int:
    """Optimizer steps of the whole run (the LR schedule's length): one per minibatch per epoch per step."""
    return cfg.run.steps * cfg.ppo.epochs * (cfg.ppo.rollout_batch_size // cfg.ppo.minibatch_size)


@dataclass
class Roles:
    policy: object
    critic: object | None  # None with a critic-free estimator (ppo.advantage_estimator != gae)
    reward: object
    reference: object | None  # None with a LoRA policy: reference = policy with adapters disabled
    generator: object | None = None  # ppo.rollout_ahead=1 only: samples the rollouts while the policy trains

    def all(self) -> list:
        return [g for g in (self.policy, self.reference, self.critic, self.reward, self.generator) if g is not None]


def hosted_roles(cfg: PPOConfig) -> dict:
    """The roles PPO starts and their config slices: policy, reward, the critic unless the advantage
    estimator is critic-free, the reference unless the policy's LoRA adapters double as it (LoRA
    without reference.path: adapters off = the reference), and the generator with ppo.rollout_ahead=1."""
    roles = {"policy": cfg.policy, "reward": cfg.reward}
    if not cfg.ppo.critic_free:
        roles["critic"] = cfg.critic
    if not (cfg.policy.lora.enabled and not cfg.reference.path):
        roles["reference"] = cfg.reference
    if cfg.ppo.rollout_ahead:
        roles["generator"] = cfg.generator_slice()
    return roles


def start_roles(cfg: PPOConfig, policy_path: str, total_optimizer_steps: int) -> Roles:
    seed = cfg.run.seed
    hosted = hosted_roles(cfg)
    common = dict(seed=seed, total_steps=total_optimizer_steps, minibatch_size=cfg.ppo.minibatch_size)
    specs = {
        "policy": RoleSpec(PolicyActor, cfg.policy, kwargs=dict(model_path=policy_path, **common)),
        "reward": RoleSpec(RewardActor, cfg.reward, kwargs=dict(seed=seed, max_new_tokens=cfg.policy.max_new_tokens)),
    }
    if "critic" in hosted:
        if cfg.critic.init_from == "reward" and cfg.reward.kind != "model":
            raise ConfigError("critic.init_from=reward needs reward.kind=model (a reward model to take the backbone from)")
        critic_path = policy_path if cfg.critic.init_from == "policy" else cfg.reward.path
        specs["critic"] = RoleSpec(CriticActor, cfg.critic, kwargs=dict(model_path=critic_path, **common))
    if "reference" in hosted:
        specs["reference"] = RoleSpec(
            ReferenceActor,
            cfg.reference,
            kwargs=dict(
                model_path=cfg.reference.path or policy_path,
                temperature=cfg.policy.temperature,
                micro_batch_size=cfg.policy.micro_batch_size,
                micro_batch_tokens=cfg.policy.micro_batch_tokens,
            ),
        )
    if "generator" in hosted:
        specs["generator"] = RoleSpec(GeneratorActor, hosted["generator"], kwargs=dict(model_path=policy_path, seed=seed))
    t0 = time.perf_counter()
    groups = create_groups(cfg.run.hosting(), specs)
    log.info("roles ready in %.1f s (%s mode)", time.perf_counter() - t0, cfg.run.mode)
    return Roles(policy=groups["policy"], critic=groups.get("critic"), reward=groups["reward"], reference=groups.get("reference"),
                 generator=groups.get("generator"))


def preflight_models(cfg: PPOConfig, policy_path: str) -> dict:
    """The models' configs, read and checked before any role starts (`orchestrator.preflight`): every path
    readable, LoRA targets that exist. Returns {role: ModelInfo} for policy, reference (when it has its
    own path), critic (when one is started) and reward (kind=model)."""
    trust = cfg.policy.trust_remote_code
    infos = {"policy": preflight.model_info("policy.path", policy_path, trust)}
    if cfg.reference.path:
        infos["reference"] = preflight.model_info("reference.path", cfg.reference.path, cfg.reference.trust_remote_code)
    if cfg.reward.kind == "model":
        infos["reward"] = preflight.model_info("reward.path", cfg.reward.path, cfg.reward.trust_remote_code)
    critic_path = policy_path if cfg.critic.init_from == "policy" else cfg.reward.path
    infos["critic"] = infos["policy"] if cfg.critic.init_from == "policy" else infos.get("reward")
    preflight.check_lora("policy", policy_path, cfg.policy.lora, trust_remote_code=trust)
    if infos["critic"] is not None and "critic" in hosted_roles(cfg):
        preflight.check_lora("critic", critic_path, cfg.critic.lora, trust_remote_code=cfg.critic.trust_remote_code)
    else:
        del infos["critic"]
    return infos


class PPOJob(job.Job):
    name = "ppo"
    curve_keys = ("reward/score", "kl/mean", "length/mean")
    profile = False
    """Issue the step's phases one after another, each timed on its own (`rlhf bench ppo`)."""

    def __init__(self, cfg: PPOConfig):
        from actors.modeling import load_tokenizer
        from orchestrator.builtin import resolve_model_path
        from orchestrator.data import load_prompts

        try:  # e.g. reward.statistic=quantile on a Bradley-Terry folder: fail before anything starts
            check_reward_config(cfg.reward)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.cfg = cfg
        self.policy_path = resolve_model_path(cfg.policy.path)
        if cfg.reference.path:
            cfg.reference.path = resolve_model_path(cfg.reference.path)
        self.infos = preflight_models(cfg, self.policy_path)
        tokenizer = load_tokenizer(self.policy_path, trust_remote_code=cfg.policy.trust_remote_code)
        self.pad_id = tokenizer.pad_token_id
        self.train_rows = load_prompts(cfg.data, tokenizer)[0].to_list()
        self.eval_rows = load_prompts(cfg.data, tokenizer, eval_set=True)[0].to_list()
        longest = max(len(r["prompt_ids"]) for r in self.train_rows + self.eval_rows) + cfg.policy.max_new_tokens
        for role, info in self.infos.items():
            if role != "reward":  # the reward model renders text with its own tokenizer
                preflight.check_positions(info, longest, "policy.max_new_tokens", "the longest prompt + policy.max_new_tokens")
        trust = cfg.policy.trust_remote_code
        if cfg.reference.path:
            preflight.check_same_vocab("policy.path", tokenizer, "reference.path", cfg.reference.path, trust)
        if cfg.critic.init_from == "reward" and cfg.reward.kind == "model" and not cfg.ppo.critic_free:
            preflight.check_same_vocab("policy.path", tokenizer, "reward.path", cfg.reward.path, trust)
        self.gold = cfg.data.path in GOLD_DATA
        log.info("data: %d train prompts, %d eval prompts (gold evaluation: %s)", len(self.train_rows),
                 len(self.eval_rows), self.gold)
        self.prompts = IndexStream(len(self.train_rows), cfg.run.seed)
        self.skipped = {"in_a_row": 0, "total": 0}  # steps skipped for non-finite inputs (run.on_nonfinite=skip)
        self.kl_ctl = KLController(cfg.ppo.kl_coef, cfg.ppo.kl_target, cfg.ppo.kl_horizon)
        self.moments = RunningMoments()
        self.roles: Roles | None = None
        self.ahead = Ahead()

    def fingerprint(self) -> dict:
        cfg = self.cfg
        given = {"policy": cfg.policy.path, "reference": cfg.reference.path,
                 "critic": cfg.policy.path if cfg.critic.init_from == "policy" else cfg.reward.path}
        models = {role: preflight.model_fingerprint(given[role], info) for role, info in self.infos.items() if role != "reward"}
        out = {"job": self.name, **models, "policy_layout": preflight.layout_fingerprint(cfg.policy),
               "train_rows": len(self.train_rows)}
        if not cfg.ppo.critic_free:  # a critic-free checkpoint holds no critic: resuming it with GAE is refused
            out.update(critic_init=cfg.critic.init_from, critic_layout=preflight.layout_fingerprint(cfg.critic))
        else:  # named in the refusal: "critic: {...} then, "none (...)" now"
            out["critic"] = "none (a critic-free ppo.advantage_estimator)"
        return out

    def role_configs(self) -> dict:
        return hosted_roles(self.cfg)

    def start(self) -> None:
        self.roles = start_roles(self.cfg, self.policy_path, optimizer_steps(self.cfg))
        self.groups = self.roles.all()
        self.ahead.started()

    def step(self, step: int) -> dict:
        try:
            metrics = ppo_step(self.roles, self.cfg, self.next_prompts, self.kl_ctl, self.moments, step, profile=self.profile,
                               ahead=self.ahead if self.cfg.ppo.rollout_ahead else None)
        except NonFiniteError as e:
            if self.cfg.run.on_nonfinite == "raise":
                raise
            self.skipped["in_a_row"] += 1
            self.skipped["total"] += 1
            if self.skipped["in_a_row"] > self.cfg.run.max_skipped_steps:
                raise NonFiniteError(f"{e} ({self.skipped['in_a_row']} steps in a row, more than run.max_skipped_steps="
                                     f"{self.cfg.run.max_skipped_steps})") from None
            log.warning("step %d skipped (run.on_nonfinite=skip): %s", step + 1, e)
            return {"nonfinite/skipped_steps": float(self.skipped["total"])}
        self.skipped["in_a_row"] = 0
        metrics["nonfinite/skipped_steps"] = float(self.skipped["total"])
        return metrics

    def next_prompts(self, n: int):
        return to_prompt_batch([self.train_rows[i] for i in self.prompts.next(n)], self.pad_id)

    def evaluate(self, stage: str) -> job.Evaluation:
        ev = sample_and_score(self.roles.policy, self.roles.reward, self.eval_rows, self.pad_id, self.gold,
                              on_nonfinite=self.cfg.run.on_nonfinite, reward_name=f"the reward ({describe(self.cfg.reward)})")
        return job.Evaluation(ev.metrics(), ev.record(), ev.samples)

    def save(self, folder: Path) -> None:
        roles = self.roles
        critic = roles.critic is not None
        get(  # DeepSpeed state (sharded weights, optimizer, scheduler) and the weights in HF format
            roles.policy.broadcast(PolicyActor.save_checkpoint, str(folder)),
            *([roles.critic.broadcast(CriticActor.save_checkpoint, str(folder))] if critic else []),
        )
        get(
            roles.policy.broadcast(PolicyActor.export, str(folder / "policy_hf")),
            *([roles.critic.broadcast(CriticActor.export, str(folder / "critic_hf"))] if critic else []),
        )

    def load(self, folder: Path) -> None:
        roles = self.roles
        get(
            roles.policy.broadcast(PolicyActor.load_checkpoint, str(folder)),
            *([roles.critic.broadcast(CriticActor.load_checkpoint, str(folder))] if roles.critic is not None else []),
        )

    def state_dict(self) -> dict:
        return {"kl": self.kl_ctl.state_dict(), "moments": self.moments.state_dict(), "data": self.prompts.state_dict(),
                "skipped": dict(self.skipped), "ahead": self.ahead.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.kl_ctl.load_state_dict(state["kl"])
        self.moments.load_state_dict(state["moments"])
        self.prompts.load_state_dict(state["data"])
        self.skipped = dict(state.get("skipped", self.skipped))
        self.ahead.load_state_dict(state.get("ahead"))

    def finish(self, out: Path) -> dict:
        get(self.roles.policy.broadcast(PolicyActor.export, str(out / "policy")))  # a collective under ZeRO-3; rank 0 writes
        return {"policy": str(out / "policy")}

    def summary(self, records: list[dict], history: dict) -> dict:
        first, last, _ = job.first_and_last(records, "reward/score", 5)
        return {"train_reward_first": first, "train_reward_last": last}

    def progress(self, m: dict) -> str:
        if "reward/score" not in m:
            return "skipped (non-finite inputs)"
        train = m.get("time/critic_update+policy_update", m.get("time/policy_update", math.nan))
        return f"reward {m['reward/score']:.3f} kl {m['kl/mean']:.3f} gen {m['time/generate']:.1f}s train {train:.1f}s"

    def print_summary(self, summary: dict, out: Path) -> None:
        s, e = summary["eval_start"] or {}, summary["eval_end"] or {}
        algo = self.cfg.ppo
        what = "PPO" if not algo.critic_free else (f"PPO ({algo.advantage_estimator}, no critic, "
                                                  f"{algo.samples_per_prompt} response(s) per prompt)")
        print(f"\n{what} finished: {summary['steps']} steps in {summary['wall_time_s']:.0f} s; outputs in {out}")
        print(f"  training reward (mean of first vs last steps): {summary['train_reward_first']:.4f} -> {summary['train_reward_last']:.4f}")
        print(f"  held-out reward:                                {s.get('reward', math.nan):.4f} -> {e.get('reward', math.nan):.4f}")
        if s.get("gold") is not None:
            print(f"  held-out GOLD score (never seen by PPO):        {s['gold']:.4f} -> {e['gold']:.4f}")
        print(f"  held-out response length (tokens):              {s.get('length_tokens', math.nan):.1f} -> {e.get('length_tokens', math.nan):.1f}")
        st, et = s.get("task") or {}, e.get("task") or {}
        if "disputed_share" in st:
            print(f"  held-out answers with the disputed casual ending: {st['disputed_share']:.0%} -> {et['disputed_share']:.0%}"
                  f"   (length in words {st['length']:.1f} -> {et['length']:.1f})")
        print(f"  exported policy: {out / 'policy'}   curves: {out / 'curves.png'}   samples: {out / 'samples_end.jsonl'}")


def train(cfg: PPOConfig, dry_run: bool = False) -> dict:
    """Run PPO as configured; returns the final summary (also written to summary.json). `dry_run`: check and print the plan only (`orchestrator.job.run`)."""
    return job.run(PPOJob(cfg), cfg, dry_run=dry_run)


class Ahead:
    """ppo.rollout_ahead=1: the generator's rollout for the next step, issued while this one trains.

    `pending` is that rollout (a `Pending` while it samples, a `Rollout` once gathered, None before the first
    step); `fresh` says whether the generator holds the policy's current weights. A checkpoint keeps the
    rollout (`state_dict`), so a resumed run trains on the samples an uninterrupted one would."""

    def __init__(self):
        self.pending = None
        self.fresh = False

    def started(self) -> None:
        """New roles (the start, or a restart after a lost actor): their generator has the initial weights."""
        self.fresh = False
        if not isinstance(self.pending, Rollout):
            self.pending = None  # a sample in flight on actors that are gone: the checkpoint's is loaded next

    def state_dict(self) -> dict | None:
        if self.pending is None:
            return None
        if not isinstance(self.pending, Rollout):
            self.pending = get(self.pending)
        return {name: getattr(self.pending, name) for name in self.pending.__dataclass_fields__}

    def load_state_dict(self, state: dict | None) -> None:
        self.pending = None if state is None else Rollout(**state)
        self.fresh = False


def ppo_step(roles: Roles, cfg: PPOConfig, next_prompts, kl_ctl: KLController, moments: RunningMoments, step: int,
             profile: bool = False, ahead: Ahead | None = None) -> dict:
    """One PPO step; every line a timed call. Returns the step's metrics.

    next_prompts(n) -> the next `PromptBatch` of n training prompts. Calls that can overlap are issued
    together and gathered with one `get`; with `profile=True` (`rlhf bench ppo`) they run one after
    another so that each phase gets its own wall time. `ahead` (ppo.rollout_ahead=1): the generator
    samples, one step ahead (`Ahead`); `time/generate` is then the time this step waited for its rollout.
    """
    t: dict[str, float] = {}
    per_prompt = cfg.ppo.samples_per_prompt
    recorded = cfg.ppo.old_logprobs == "rollout"  # log pi_old recorded while sampling: no forward pass for it

    def prompts():
        t0 = time.perf_counter()
        batch = next_prompts(cfg.ppo.rollout_batch_size // per_prompt)
        if per_prompt > 1:  # each prompt k times in a row: the groups of the critic-free baselines are contiguous
            batch = batch.select(torch.arange(batch.num_rows).repeat_interleave(per_prompt))
        t["driver"] = t.get("driver", 0.0) + time.perf_counter() - t0
        return batch

    if ahead is None:
        batch = prompts()
        (rollout,) = _run({"generate": lambda: roles.policy.scatter(PolicyActor.generate, batch, seed=cfg.run.seed * 100_003 + step,
                                                                    record_logprobs=recorded)}, t, profile)
    else:
        rollout, lag = _rollout_ahead(roles, cfg, ahead, prompts, step, t, profile)

    views = {
        "score": lambda: roles.reward.scatter(RewardActor.score, rollout),
        "reference": lambda: (
            roles.reference.scatter(ReferenceActor.logprobs, rollout)
            if roles.reference is not None
            else roles.policy.scatter(PolicyActor.reference_logprobs, rollout)
        ),
    }
    if not recorded:
        views["old_logprobs"] = lambda: roles.policy.scatter(PolicyActor.logprobs, rollout)
    if roles.critic is not None:
        views["values"] = lambda: roles.critic.scatter(CriticActor.values, rollout)
    outputs = dict(zip(views, _run(views, t, profile)))
    scores, ref_lp, values = outputs["score"], outputs["reference"], outputs.get("values")
    old_lp = LogProbs(logprobs=rollout.logprobs) if recorded else outputs["old_logprobs"]

    bad = nonfinite_inputs(rollout, scores, ref_lp, old_lp, values, describe(cfg.reward))
    if bad is not None:  # before anything learns from it (run.on_nonfinite: PPOJob raises or skips the step)
        raise NonFiniteError(bad)
    t0 = time.perf_counter()
    exp, metrics = make_experience(rollout, scores, ref_lp, old_lp, values, cfg.ppo, kl_ctl, moments,
                                   std_threshold=cfg.reward.std_threshold, length_penalty=cfg.reward.length_penalty)
    aggregations = {"policy": cfg.ppo.loss_agg, **({"critic": "token_mean"} if roles.critic is not None else {})}
    plans, updates = {}, {}
    for name, aggregation in aggregations.items():
        g = torch.Generator().manual_seed(cfg.run.seed * 7919 + step)  # the same minibatches for both
        plans[name] = schedule(exp, epochs=cfg.ppo.epochs, minibatch_size=cfg.ppo.minibatch_size,
                               replicas=getattr(roles, name).world_size, generator=g, aggregation=aggregation)
    t["advantages"] = time.perf_counter() - t0

    if roles.critic is not None:
        mb_critic = cfg.ppo.minibatch_size // roles.critic.world_size
        updates["critic_update"] = lambda: roles.critic.scatter(CriticActor.train, plans["critic"], minibatch_rows=mb_critic)
    mb_policy = cfg.ppo.minibatch_size // roles.policy.world_size
    updates["policy_update"] = lambda: roles.policy.scatter(
        PolicyActor.train, plans["policy"], minibatch_rows=mb_policy, aggregation=cfg.ppo.loss_agg,
        kl_coef=cfg.ppo.kl_loss_coef, kl_estimator=cfg.ppo.kl_loss_estimator)
    for stats in _run(updates, t, profile):
        metrics.update(merge_stats(stats))
    if ahead is not None:
        ahead.fresh = False  # the policy moved: the generator is one update behind
        metrics["rollout/lag"] = float(lag)
    metrics.update({f"time/{k}": v for k, v in t.items()})
    metrics["time/step"] = sum(t.values())
    metrics["time/tokens_per_s"] = float(rollout.action_mask.sum()) / max(metrics["time/step"], 1e-9)
    # the widths the models compute on (padding included), for the cost model (`orchestrator.costmodel`)
    metrics["length/prompt_padded"] = float(rollout.prompt_len)
    metrics["length/response_padded"] = float(rollout.action_mask.shape[1])
    metrics["length/prompt_mean"] = float(rollout.attention_mask[:, :rollout.prompt_len].sum(-1).float().mean())
    return metrics


def _rollout_ahead(roles: Roles, cfg: PPOConfig, ahead: Ahead, prompts, step: int, t: dict, profile: bool) -> tuple[Rollout, int]:
    """This step's rollout from the generator, and the next step's issued: (rollout, how many policy updates
    behind the weights it was sampled with are: 0 at the first step, else 1). `t["generate"]`: the time
    spent issuing and waiting for rollouts (in local mode the sampling itself, which runs when issued)."""
    spent = 0.0

    def timed(fn):
        nonlocal spent
        t0 = time.perf_counter()
        out = fn()
        spent += time.perf_counter() - t0
        return out

    def sync():
        if not ahead.fresh:  # the policy's weights go to the generator's replicas without passing the driver
            _run({"weight_sync": lambda: roles.generator.broadcast(GeneratorActor.load_weights,
                                                                    roles.policy.broadcast(PolicyActor.weights))}, t, profile)
            ahead.fresh = True

    def issue(s: int):
        batch = prompts()
        return timed(lambda: roles.generator.scatter(GeneratorActor.generate, batch, seed=cfg.run.seed * 100_003 + s,
                                                     record_logprobs=True))

    lag = 1
    if ahead.pending is None:  # the first step (or a restart before any checkpoint): sampled now, on-policy
        sync()
        ahead.pending, lag = issue(step), 0
    pending = ahead.pending
    rollout = pending if isinstance(pending, Rollout) else timed(lambda: get(pending))  # a checkpoint's is gathered already
    sync()
    ahead.pending = issue(step + 1)  # samples while this step scores and trains
    if profile:  # each phase timed alone (`rlhf bench ppo`): the next rollout's sampling, waited for here
        ahead.pending = timed(lambda: get(ahead.pending))
    t["generate"] = spent
    return rollout, lag


def _run(calls: dict, times: dict, profile: bool) -> list:
    """Issue `calls` (name -> zero-arg function returning a Pending) and gather them.

    Concurrently with one `get` (the time is recorded under the names joined by '+'), or one by one
    when profiling.
    """
    if profile:
        out = []
        for name, make in calls.items():
            t0 = time.perf_counter()
            out.append(get(make()))
            times[name] = time.perf_counter() - t0
        return out
    t0 = time.perf_counter()
    pending = [make() for make in calls.values()]
    out = get(*pending)
    times["+".join(calls)] = time.perf_counter() - t0
    return list(out) if len(pending) > 1 else [out]
