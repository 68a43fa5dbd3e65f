"""`rlhf ppo`: the PPO job, with a critic (GAE) or critic-free (GRPO, Dr. GRPO, RLOO, REINFORCE++:
`ppo.advantage_estimator`). One step (`PPOJob.ppo_step`) reads like the algorithm:

    rollout = rollouts.next()                                   # the policy samples (or a generator, one step ahead)
    views   = reward.score, reference.logprobs, policy.logprobs, critic.values (rollout)   # at once
    exp     = make_experience(rollout, views)                   # KL-shaped rewards, advantages, whitening
    critic.train(exp); policy.train(exp)                        # PPO epochs over minibatches, at once

Critic-free, there is no critic role at all (no actor, no device, no checkpoint): no values, no critic
update. Where the rollout comes from (on-policy, or a generator one step ahead with a weight sync after
each update) is chosen once (`orchestrator.jobs.rollouts`); each line of the step is a timed phase
(`orchestrator.core.phases`: `generate`, `forward`, `advantages`, `update`, and `weight_sync` one step
ahead). The same code drives `local` mode (roles are objects in this process) and `ray` mode (roles are
groups of Ray actors); only `cluster.create_groups` differs. Everything around the step (output folder,
metrics, evaluation, checkpoints, resume, summary) is the job skeleton's (`orchestrator.core.job`).
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from actors.critic import CriticActor
from actors.modeling import load_tokenizer
from actors.policy import GeneratorActor, PolicyActor
from actors.reference import ReferenceActor
from actors.rendering import Rendering
from actors.reward import RewardActor, check_reward_config, describe
from actors.trainer import NonFiniteError, merge_stats
from actors.types import LogProbs, PromptBatch, Rollout, Scores
from cluster import RoleSpec, create_groups
from losses.common import RunningMoments
from losses.kl import KLController
from losses.mismatch import logprob_mismatch, truncated_is_weights
from orchestrator.builtin.datasets import GOLD_DATA
from orchestrator.config import ConfigError, PPOConfig
from orchestrator.core import preflight
from orchestrator.core.job import Evaluation, Job, Trained, first_and_last
from orchestrator.core.phases import Phases
from orchestrator.core.streams import IndexStream
from orchestrator.data import load_prompts, to_prompt_batch
from orchestrator.jobs.episodes import EpisodeRunner, env_class, episode_rows
from orchestrator.jobs.evaluation import sample_and_score
from orchestrator.jobs.experience import make_experience, nonfinite_inputs, schedule
from orchestrator.jobs.rewards import reward_functions
from orchestrator.jobs.rollouts import rollout_source

log = logging.getLogger("rlhf.ppo")

__all__ = ["PPOJob", "Roles", "optimizer_steps"]


def optimizer_steps(cfg: PPOConfig) -> int:
    """Optimizer steps of the whole run (the LR schedule's length): one per minibatch per epoch per step."""
    return cfg.run.steps * cfg.ppo.epochs * (cfg.ppo.rollout_batch_size // cfg.ppo.minibatch_size)


@dataclass
class Roles:
    policy: object
    critic: object | None  # None with a critic-free estimator (ppo.advantage_estimator != gae)
    reward: object | None  # None with reward.kind=none: the environment's rewards alone
    reference: object | None  # None with a LoRA policy: reference = policy with adapters disabled
    generator: object | None = None  # ppo.max_staleness=1 or generator.engine=vllm only: samples the rollouts

    def all(self) -> list:
        return [g for g in (self.policy, self.reference, self.critic, self.reward, self.generator) if g is not None]


class PPOJob(Job):
    name = "ppo"
    curve_keys = ("reward/score", "kl/mean", "length/mean")

    def __init__(self, cfg: PPOConfig):
        self.cfg = cfg
        self.functions = reward_functions(cfg.reward)
        try:  # e.g. reward.statistic=quantile on a Bradley-Terry folder: fail before anything starts
            check_reward_config(cfg.reward, self.functions)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.infos = self.check_models()
        tokenizer = load_tokenizer(cfg.policy.path, trust_remote_code=cfg.policy.trust_remote_code)
        self.pad_id = tokenizer.pad_token_id
        self.train_rows = load_prompts(cfg.data, tokenizer)[0].to_list()
        self.eval_rows = load_prompts(cfg.data, tokenizer, eval_set=True)[0].to_list()
        self.episodes = self.environment(tokenizer)
        if self.episodes is not None:
            self.curve_keys = ("env/return", "env/turns", "kl/mean", "length/mean")
        if self.episodes is None:
            self.longest = preflight.longest_row(self.train_rows + self.eval_rows) + cfg.policy.max_new_tokens
            key, what = "policy.max_new_tokens", "the longest prompt + policy.max_new_tokens"
        else:  # an episode's tokens, its first prompt included, are at most env.max_tokens
            self.longest, key, what = cfg.env.max_tokens, "env.max_tokens", "an episode's tokens"
        for role, info in self.infos.items():
            if role != "reward":  # the reward model renders text with its own tokenizer
                preflight.check_positions(info, self.longest, key, what)
        trust = cfg.policy.trust_remote_code
        if cfg.reference.path:
            preflight.check_same_vocab("policy.path", tokenizer, "reference.path", cfg.reference.path, trust)
        if cfg.critic.init_from == "reward" and cfg.reward.kind == "model" and not cfg.ppo.critic_free:
            preflight.check_same_vocab("policy.path", tokenizer, "reward.path", cfg.reward.path, trust)
        self.gold = cfg.data.path in GOLD_DATA or cfg.env.path.startswith("builtin:")  # a built-in environment's rewards are gold
        log.info("data: %d train prompts, %d eval prompts (gold evaluation: %s)", len(self.train_rows),
                 len(self.eval_rows), self.gold)
        self.prompts = IndexStream(len(self.train_rows), cfg.run.seed)
        self.skipped = {"in_a_row": 0, "total": 0}  # steps skipped for non-finite inputs (run.on_nonfinite=skip)
        self.kl_ctl = KLController(cfg.ppo.kl_coef, cfg.ppo.kl_target, cfg.ppo.kl_horizon)
        self.moments = RunningMoments()
        self.rollouts = rollout_source(cfg, self.next_prompts, self.episodes)
        self.updates = 0  # the policy's updates so far: the weight version of its current weights
        self.roles: Roles | None = None

    def environment(self, tokenizer) -> EpisodeRunner | None:
        """The episodes' runner of env.path (None without one): its class imported now, so that a path that does not
        import fails before any role starts."""
        cfg = self.cfg
        if not cfg.env.path:
            return None
        try:
            cls = env_class(cfg.env.path)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        try:  # env.kwargs against the class's __init__, before anything starts
            inspect.signature(cls).bind(**cfg.env.kwargs)
        except TypeError as e:
            raise ConfigError(f"config key 'env.kwargs': {cls.__name__}(**{cfg.env.kwargs}) does not fit its __init__: {e}") from None
        except ValueError:  # no signature to read (a builtin or extension type): its first reset will say
            pass
        log.info("environment: %s (env.path=%s), at most %d model turns and %d tokens per episode", cls.__name__,
                 cfg.env.path, cfg.env.max_turns, cfg.env.max_tokens)
        return EpisodeRunner(cfg.env, env_cls=cls, rendering=Rendering(tokenizer, cfg.data.chat_template),
                             on_error=cfg.run.on_env_error, pad_id=tokenizer.pad_token_id)

    def check_models(self) -> dict:
        """The models' configs, read and checked before any role starts (`orchestrator.core.preflight`): every
        path readable, LoRA targets that exist. Returns {role: ModelInfo} for policy, reference (when it has
        its own path), critic (when one is started) and reward (kind=model)."""
        cfg = self.cfg
        infos = {"policy": preflight.check_model("policy", cfg.policy)}
        if cfg.reference.path:
            infos["reference"] = preflight.model_info("reference.path", cfg.reference.path, cfg.reference.trust_remote_code)
        if cfg.reward.kind == "model":
            infos["reward"] = preflight.model_info("reward.path", cfg.reward.path, cfg.reward.trust_remote_code)
        preflight.check_engine(cfg.policy, cfg.generator)
        if "critic" in cfg.hosted_roles():
            critic = infos.get(cfg.critic.init_from)  # the backbone critic.init_from names: the policy's, or the reward model's
            if critic is not None:
                infos["critic"] = critic
                preflight.check_lora("critic", cfg.critic_path, cfg.critic.lora, trust_remote_code=cfg.critic.trust_remote_code)
        return infos

    def fingerprint(self) -> dict:
        cfg = self.cfg
        given = {"policy": cfg.policy.path, "reference": cfg.reference.path, "critic": cfg.critic_path}
        models = {role: preflight.model_fingerprint(given[role], info) for role, info in self.infos.items() if role != "reward"}
        out = {"job": self.name, **models, "policy_layout": preflight.layout_fingerprint(cfg.policy),
               "train_rows": len(self.train_rows)}
        if not cfg.ppo.critic_free:  # a critic-free checkpoint holds no critic: resuming it with GAE is refused
            out.update(critic_init=cfg.critic.init_from, critic_layout=preflight.layout_fingerprint(cfg.critic))
        else:  # named in the refusal: "critic: {...} then, "none (...)" now"
            out["critic"] = "none (a critic-free ppo.advantage_estimator)"
        return out

    def role_configs(self) -> dict:
        return self.cfg.hosted_roles()

    def start(self) -> None:
        cfg = self.cfg
        hosted = cfg.hosted_roles()
        common = dict(seed=cfg.run.seed, total_steps=optimizer_steps(cfg), minibatch_size=cfg.ppo.minibatch_size)
        specs = {"policy": RoleSpec(PolicyActor, cfg.policy, kwargs=dict(model_path=cfg.policy.path, **common))}
        if "reward" in hosted:  # (reward.kind=none: an environment's rewards alone, no role)
            specs["reward"] = RoleSpec(RewardActor, cfg.reward, kwargs=dict(seed=cfg.run.seed, max_new_tokens=cfg.policy.max_new_tokens,
                                                                           functions=self.functions))
        if "critic" in hosted:
            if cfg.critic.init_from == "reward" and cfg.reward.kind != "model":
                raise ConfigError("critic.init_from=reward needs reward.kind=model (a reward model to take the backbone from)")
            specs["critic"] = RoleSpec(CriticActor, cfg.critic, kwargs=dict(model_path=cfg.critic_path, **common))
        if "reference" in hosted:
            specs["reference"] = RoleSpec(ReferenceActor, cfg.reference, kwargs=dict(
                model_path=cfg.reference.path or cfg.policy.path, temperature=cfg.policy.temperature,
                micro_batch_size=cfg.policy.micro_batch_size, micro_batch_tokens=cfg.policy.micro_batch_tokens))
        if "generator" in hosted:
            specs["generator"] = RoleSpec(GeneratorActor, hosted["generator"], kwargs=dict(
                model_path=cfg.policy.path, seed=cfg.run.seed, engine=cfg.generator, max_model_len=self.longest))
        t0 = time.perf_counter()
        groups = create_groups(cfg.run.hosting(), specs)
        log.info("roles ready in %.1f s (%s mode)", time.perf_counter() - t0, cfg.run.mode)
        self.roles = Roles(policy=groups["policy"], critic=groups.get("critic"), reward=groups.get("reward"),
                           reference=groups.get("reference"), generator=groups.get("generator"))
        self.groups = self.roles.all()
        self.rollouts.started(self.roles)

    def trained(self) -> dict[str, Trained]:
        out = {"policy": Trained(self.roles.policy, PolicyActor)}
        if self.roles.critic is not None:
            out["critic"] = Trained(self.roles.critic, CriticActor)
        return out

    def step(self, step: int) -> dict:
        try:
            metrics = self.ppo_step(step)
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

    def ppo_step(self, step: int) -> dict:
        """One PPO step, each line a phase (`Phases`); returns the step's metrics."""
        phases = Phases(self.cfg.run.profile)
        rollout, metrics = self.rollouts.next(step, phases)                  # generate (+ weight_sync one step ahead)
        views = phases.run("forward", **self.forward_calls(rollout))         # score, reference, old log-probs, values
        with phases.timed("advantages"):
            exp, experience_metrics = self.experience(rollout, views)        # KL-shaped rewards, advantages, whitening
            plans = self.minibatches(exp, step)
        updates = phases.run("update", **self.update_calls(plans))           # critic and policy PPO epochs
        self.rollouts.updated()
        self.updates = step + 1
        for stats in updates.values():
            experience_metrics.update(merge_stats(stats))
        out = {**experience_metrics, **metrics, **phases.metrics()}
        out["time/tokens_per_s"] = float(rollout.action_mask.sum()) / max(out["time/step"], 1e-9)
        return out

    def next_prompts(self) -> PromptBatch:
        """The next rollout batch's prompts: ppo.rollout_batch_size / ppo.samples_per_prompt training prompts,
        each ppo.samples_per_prompt times in a row (the groups of the critic-free baselines are contiguous)."""
        k = self.cfg.ppo.samples_per_prompt
        draw = self.prompts.epoch * self.prompts.n + self.prompts.index  # the place of these prompts in the stream
        indices = self.prompts.next(self.cfg.ppo.rollout_batch_size // k)
        rows = [self.train_rows[i] for i in indices]
        batch = to_prompt_batch(rows, self.pad_id)
        if self.episodes is not None:  # what each environment's reset reads (the k episodes of a prompt: one seed)
            batch.rows = episode_rows(rows, indices, self.cfg.run.seed, draw)
        return batch.select(torch.arange(batch.num_rows).repeat_interleave(k)) if k > 1 else batch

    def forward_calls(self, rollout: Rollout) -> dict:
        """The no-grad passes over a rollout: the reward's score, the reference's log-probs (the policy's
        adapter-free base with LoRA and no reference.path), the policy's log-probs unless the rollout
        recorded them (ppo.old_logprobs=rollout), and the critic's values unless critic-free."""
        roles = self.roles
        calls = {}
        if roles.reward is not None:
            calls["score"] = lambda: roles.reward.scatter(RewardActor.score, rollout)
        if roles.reference is not None:
            calls["reference"] = lambda: roles.reference.scatter(ReferenceActor.logprobs, rollout)
        else:
            calls["reference"] = lambda: roles.policy.scatter(PolicyActor.reference_logprobs, rollout)
        if self.cfg.ppo.old_logprobs == "recompute":
            calls["old_logprobs"] = lambda: roles.policy.scatter(PolicyActor.logprobs, rollout)
        if roles.critic is not None:
            calls["values"] = lambda: roles.critic.scatter(CriticActor.values, rollout)
        return calls

    def experience(self, rollout: Rollout, views: dict):
        """`make_experience` of the rollout and its views, after checking that they are finite (a
        `NonFiniteError` naming the first bad source: run.on_nonfinite raises or skips the step)."""
        cfg = self.cfg
        old = views["old_logprobs"] if "old_logprobs" in views else LogProbs(logprobs=rollout.logprobs)
        if "score" not in views:  # reward.kind=none: the environment's turn rewards are the whole reward
            views["score"] = Scores(reward=torch.zeros(rollout.num_rows))
        bad = nonfinite_inputs(rollout, views["score"], views["reference"], old, views.get("values"), describe(cfg.reward))
        if bad is not None:
            raise NonFiniteError(bad)
        exp, metrics = make_experience(rollout, views["score"], views["reference"], old, views.get("values"), cfg.ppo, self.kl_ctl,
                                       self.moments, std_threshold=cfg.reward.std_threshold, length_penalty=cfg.reward.length_penalty)
        if rollout.logprobs is not None and "old_logprobs" in views:  # the sampler's log-probs against the trainer's
            metrics.update(logprob_mismatch(rollout.logprobs, views["old_logprobs"].logprobs, rollout.action_mask))
            if cfg.ppo.tis_cap > 0:  # correct the policy gradient towards pi_old (`losses.mismatch`)
                exp.is_weights, tis = truncated_is_weights(old.logprobs, rollout.logprobs, rollout.action_mask, cfg.ppo.tis_cap)
                metrics.update(tis)
        return exp, metrics

    def minibatches(self, exp, step: int) -> dict:
        """Each trained role's plan of the update (`schedule`): the same minibatches for both, cut for its replicas."""
        aggregations = {"policy": self.cfg.ppo.loss_agg, **({"critic": "token_mean"} if self.roles.critic is not None else {})}
        plans = {}
        for name, aggregation in aggregations.items():
            g = torch.Generator().manual_seed(self.cfg.run.seed * 7919 + step)  # the same minibatches for both
            plans[name] = schedule(exp, epochs=self.cfg.ppo.epochs, minibatch_size=self.cfg.ppo.minibatch_size,
                                   replicas=getattr(self.roles, name).world_size, generator=g, aggregation=aggregation)
        return plans

    def update_calls(self, plans: dict) -> dict:
        """The PPO epochs of the critic (unless critic-free) and the policy over their minibatch plans."""
        roles, algo = self.roles, self.cfg.ppo
        calls = {}
        if roles.critic is not None:
            calls["critic_update"] = lambda: roles.critic.scatter(CriticActor.train, plans["critic"],
                                                                  minibatch_rows=algo.minibatch_size // roles.critic.world_size)
        calls["policy_update"] = lambda: roles.policy.scatter(
            PolicyActor.train, plans["policy"], minibatch_rows=algo.minibatch_size // roles.policy.world_size,
            aggregation=algo.loss_agg, kl_coef=algo.kl_loss_coef, kl_estimator=algo.kl_loss_estimator)
        return calls

    def evaluate(self, stage: str) -> Evaluation:
        """Held-out answers sampled from the policy's current weights, by the rollout engine: the policy's own
        `generate` (generator.engine=hf), or the generator's vLLM engine after a weight sync."""
        sampler = self.roles.policy
        if self.cfg.generator.engine == "vllm":
            sampler = self.rollouts.synced_generator(self.updates)
        ev = sample_and_score(sampler, self.roles.reward, self.eval_rows, self.pad_id, self.gold,
                              on_nonfinite=self.cfg.run.on_nonfinite, reward_name=f"the reward ({describe(self.cfg.reward)})",
                              episodes=self.episodes)
        return Evaluation(ev.metrics(), ev.record(), ev.samples)

    def state_dict(self) -> dict:
        return {"kl": self.kl_ctl.state_dict(), "moments": self.moments.state_dict(), "data": self.prompts.state_dict(),
                "skipped": dict(self.skipped), "ahead": self.rollouts.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.kl_ctl.load_state_dict(state["kl"])
        self.moments.load_state_dict(state["moments"])
        self.prompts.load_state_dict(state["data"])
        self.skipped = dict(state.get("skipped", self.skipped))
        self.rollouts.load_state_dict(state.get("ahead"))
        self.updates = int(state.get("updates", 0))

    def finish(self, out: Path) -> dict:
        return {"policy": self.export("policy", out / "policy")}

    def summary(self, records: list[dict], history: dict) -> dict:
        first, last, _ = first_and_last(records, "reward/score", 5)
        out = {"train_reward_first": first, "train_reward_last": last}
        if self.episodes is not None:
            out["train_return_first"], out["train_return_last"], _ = first_and_last(records, "env/return", 5)
        return out

    def progress(self, m: dict) -> str:
        if "reward/score" not in m:
            return "skipped (non-finite inputs)"
        episodes = f"return {m['env/return']:.3f} turns {m['env/turns']:.1f} " if "env/return" in m else ""
        return (f"{episodes}reward {m['reward/score']:.3f} kl {m['kl/mean']:.3f} gen {m['time/generate']:.1f}s "
                f"train {m['time/update']:.1f}s")

    def print_summary(self, summary: dict, out: Path) -> None:
        s, e = summary["eval_start"] or {}, summary["eval_end"] or {}
        algo = self.cfg.ppo
        what = "PPO" if not algo.critic_free else (f"PPO ({algo.advantage_estimator}, no critic, "
                                                  f"{algo.samples_per_prompt} response(s) per prompt)")
        print(f"\n{what} finished: {summary['steps']} steps in {summary['wall_time_s']:.0f} s; outputs in {out}")
        if self.roles is None or self.roles.reward is not None:
            print(f"  training reward (mean of first vs last steps): {summary['train_reward_first']:.4f} -> {summary['train_reward_last']:.4f}")
        if "train_return_first" in summary:
            print(f"  training episode return (first vs last steps): {summary['train_return_first']:.4f} -> {summary['train_return_last']:.4f}")
            print(f"  held-out episode return:                       {(s.get('task') or {}).get('return', math.nan):.4f} -> "
                  f"{(e.get('task') or {}).get('return', math.nan):.4f}   (turns {(s.get('task') or {}).get('turns', math.nan):.2f} -> "
                  f"{(e.get('task') or {}).get('turns', math.nan):.2f}, tool calls {(s.get('task') or {}).get('tool_calls', math.nan):.2f} -> "
                  f"{(e.get('task') or {}).get('tool_calls', math.nan):.2f})")
        if s.get("reward") is not None:
            print(f"  held-out reward:                                {s['reward']:.4f} -> {e.get('reward', math.nan):.4f}")
        if s.get("gold") is not None:
            print(f"  held-out GOLD score (never seen by PPO):        {s['gold']:.4f} -> {e['gold']:.4f}")
        print(f"  held-out response length (tokens):              {s.get('length_tokens', math.nan):.1f} -> {e.get('length_tokens', math.nan):.1f}")
        st, et = s.get("task") or {}, e.get("task") or {}
        if "disputed_share" in st:
            print(f"  held-out answers with the disputed casual ending: {st['disputed_share']:.0%} -> {et['disputed_share']:.0%}"
                  f"   (length in words {st['length']:.1f} -> {et['length']:.1f})")
        print(f"  exported policy: {out / 'policy'}   curves: {out / 'curves.png'}   samples: {out / 'samples_end.jsonl'}")
