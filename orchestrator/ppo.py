"""`rlhf ppo`: the driver. One step reads like the algorithm:

    rollout = policy.generate(prompts)
    scores, ref, old, values = reward.score(rollout), reference.logprobs(rollout),
                               policy.logprobs(rollout), critic.values(rollout)     # concurrently
    exp = make_experience(rollout, scores, ref, old, values)                       # KL, GAE, whitening
    critic.train(exp); policy.train(exp)                                           # concurrently

The same code drives `local` mode (roles are objects in this process) and `ray` mode (roles are
groups of Ray actors); only `cluster.create_groups` differs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from actors.critic import CriticActor
from actors.policy import PolicyActor
from actors.reference import ReferenceActor
from actors.reward import RewardActor, check_reward_config
from actors.types import PromptBatch
from cluster import RoleSpec, create_groups, get
from orchestrator import checkpoint as ckpt
from orchestrator.config import ConfigError, PPOConfig, to_yaml
from orchestrator.experience import KLController, RunningMoments, make_experience, schedule
from orchestrator.metrics import MetricsLogger, plot_curves

log = logging.getLogger("rlhf.ppo")
EVAL_SEED = 1_000_003


def resolve_model_path(path: str) -> str:
    """'builtin:<size>' -> the SFT-warm-started built-in policy folder (built and cached on first use)."""
    if path.startswith("builtin:"):
        from orchestrator.builtin import BUILTIN_SIZES
        from orchestrator.sft import builtin_policy_dir

        size = path.split(":", 1)[1]
        if size not in BUILTIN_SIZES:
            raise ValueError(f"unknown built-in model {path!r}; built-in sizes: {', '.join(BUILTIN_SIZES)}")
        return builtin_policy_dir(size)
    return path


class IndexStream:
    """Indices 0..n-1 in a seeded random order, epoch after epoch. An epoch's order is a pure function
    of (seed, epoch), so (epoch, index) is the whole state: it goes into checkpoints. PPO draws its
    prompts and DPO its pairs from it."""

    def __init__(self, n: int, seed: int):
        if n < 1:
            raise ValueError("IndexStream: no items to draw from")
        self.n, self.seed = n, seed
        self.epoch, self.index = 0, 0

    def _order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def next(self, k: int) -> list[int]:
        """The next k indices (crossing into the next epoch's order when this one runs out)."""
        out: list[int] = []
        order = self._order()
        while len(out) < k:
            if self.index >= len(order):
                self.epoch, self.index = self.epoch + 1, 0
                order = self._order()
            take = order[self.index : self.index + k - len(out)]
            out += take
            self.index += len(take)
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


class PromptStream:
    """Prompt batches in the order of an `IndexStream`; its position is part of a checkpoint."""

    def __init__(self, dataset, pad_id: int, seed: int):
        self.dataset, self.pad_id = dataset, pad_id
        self.indices = IndexStream(len(dataset), seed)

    def next(self, n: int) -> PromptBatch:
        return to_prompt_batch([self.dataset[i] for i in self.indices.next(n)], self.pad_id)

    def state_dict(self) -> dict:
        return self.indices.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.indices.load_state_dict(state)


def to_prompt_batch(rows: list[dict], pad_id: int) -> PromptBatch:
    from orchestrator.data import collate_prompts

    input_ids, attention_mask = collate_prompts(rows, pad_id)
    return PromptBatch(
        input_ids=input_ids,
        attention_mask=attention_mask.long(),
        prompts=[r["prompt"] for r in rows],
        references=[r.get("reference") for r in rows],
        query_types=[r.get("query_type") for r in rows],
    )


def optimizer_steps(cfg: PPOConfig) -> int:
    """Optimizer steps of the whole run (the LR schedule's length): one per minibatch per epoch per step."""
    return cfg.run.steps * cfg.ppo.epochs * (cfg.ppo.rollout_batch_size // cfg.ppo.minibatch_size)


def connect_hosting(cfg: PPOConfig, roles: tuple[str, ...] = ("policy", "reference", "critic", "reward")) -> None:
    """Ray mode: join (or start) the cluster; local mode: the in-process world of size 1.

    `roles`: the config sections of the job's roles (`rlhf rm` passes its one `model` section)."""
    import cluster

    if cfg.run.mode == "ray":
        # a new local cluster gets enough logical CPUs for every replica (Ray over-subscribes cores)
        wanted = sum(getattr(cfg, r).num_cpus * getattr(cfg, r).replicas for r in roles)
        cluster.connect(cfg.run.ray_address, num_cpus=max(float(os.cpu_count() or 1), math.ceil(wanted)))
    else:
        cluster.init_local()


@dataclass
class Roles:
    policy: object
    critic: object
    reward: object
    reference: object | None  # None with a LoRA policy: reference = policy with adapters disabled

    def all(self) -> list:
        return [g for g in (self.policy, self.reference, self.critic, self.reward) if g is not None]


def start_roles(cfg: PPOConfig, policy_path: str, total_optimizer_steps: int) -> Roles:
    seed = cfg.run.seed
    lora_reference = cfg.policy.lora.enabled and not cfg.reference.path
    critic_path = policy_path if cfg.critic.init_from == "policy" else cfg.reward.path
    if cfg.critic.init_from == "reward" and cfg.reward.kind != "model":
        raise ValueError("critic.init_from=reward needs reward.kind=model (a reward model to take the backbone from)")
    common = dict(seed=seed, total_steps=total_optimizer_steps, minibatch_size=cfg.ppo.minibatch_size)
    specs = {
        "policy": RoleSpec(PolicyActor, cfg.policy, kwargs=dict(model_path=policy_path, **common)),
        "critic": RoleSpec(CriticActor, cfg.critic, kwargs=dict(model_path=critic_path, **common)),
        "reward": RoleSpec(RewardActor, cfg.reward, kwargs=dict(seed=seed, max_new_tokens=cfg.policy.max_new_tokens)),
    }
    if not lora_reference:
        specs["reference"] = RoleSpec(
            ReferenceActor,
            cfg.reference,
            kwargs=dict(
                model_path=cfg.reference.path or policy_path,
                temperature=cfg.policy.temperature,
                micro_batch_size=cfg.policy.micro_batch_size,
            ),
        )
    groups = create_groups(cfg.run.mode, specs)
    return Roles(policy=groups["policy"], critic=groups["critic"], reward=groups["reward"], reference=groups.get("reference"))


@dataclass
class Evaluation:
    reward: float
    gold: float | None
    length: float
    samples: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # the task's own evaluation (gold by query type, length in words...)

    def record(self) -> dict:
        return {"reward": self.reward, "gold": self.gold, "length_tokens": self.length, "task": self.extra}


def evaluate(roles: Roles, eval_rows: list[dict], pad_id: int, gold: bool) -> Evaluation:
    """Sample once per held-out prompt (fixed seed) and score with the training reward and, for the
    built-in task, with the gold score (orchestrator.task.gold_score), which PPO never sees."""
    n = roles.policy.world_size
    padded = eval_rows + eval_rows[: (-len(eval_rows)) % n]  # divisible by the replicas; trimmed below
    rollout = get(roles.policy.scatter(PolicyActor.generate, to_prompt_batch(padded, pad_id), seed=EVAL_SEED))
    scores = get(roles.reward.scatter(RewardActor.score, rollout))
    k = len(eval_rows)
    responses = rollout.responses[:k]
    lengths = rollout.action_mask[:k].sum(-1).float()
    result = Evaluation(reward=scores.reward[:k].mean().item(), gold=None, length=lengths.mean().item())
    golds = [None] * k
    if gold:
        from orchestrator import task

        golds = [task.gold_score(row, resp) for row, resp in zip(eval_rows, responses)]
        result.gold = sum(golds) / k
        result.extra = task.gold_eval(eval_rows, responses)
    result.samples = [
        {"prompt": row["prompt"], "response": resp, "reward": float(r), "gold": g}
        for row, resp, r, g in zip(eval_rows, responses, scores.reward[:k].tolist(), golds)
    ]
    return result


def _save_checkpoint(roles: Roles, cfg: PPOConfig, step: int, driver_state: dict) -> Path:
    with ckpt.atomic_checkpoint(cfg.run.output_dir, step, cfg.run.keep_checkpoints) as tmp:
        get(  # DeepSpeed state (sharded weights, optimizer, scheduler) and the weights in HF format
            roles.policy.broadcast(PolicyActor.save_checkpoint, str(tmp)),
            roles.critic.broadcast(CriticActor.save_checkpoint, str(tmp)),
        )
        get(
            roles.policy.broadcast(PolicyActor.export, str(tmp / "policy_hf")),
            roles.critic.broadcast(CriticActor.export, str(tmp / "critic_hf")),
        )
        ckpt.save_driver_state(tmp, driver_state)
    return ckpt.checkpoint_root(cfg.run.output_dir) / f"step_{step:06d}"


def train(cfg: PPOConfig) -> dict:
    """Run PPO as configured; returns the final summary (also written to summary.json)."""
    from actors.modeling import load_tokenizer
    from orchestrator.data import load_prompts

    try:  # e.g. reward.statistic=quantile on a Bradley-Terry folder: fail before anything starts
        check_reward_config(cfg.reward)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    out = Path(cfg.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    torch.manual_seed(cfg.run.seed)

    timer = time.perf_counter()
    policy_path = resolve_model_path(cfg.policy.path)
    if cfg.reference.path:
        cfg.reference.path = resolve_model_path(cfg.reference.path)
    tokenizer = load_tokenizer(policy_path, trust_remote_code=cfg.policy.trust_remote_code)
    train_set, _ = load_prompts(cfg.data, tokenizer)
    eval_set, _ = load_prompts(cfg.data, tokenizer, eval_set=True)
    eval_rows = [eval_set[i] for i in range(len(eval_set))]
    gold = cfg.data.path == "builtin:prompts"
    log.info("data: %d train prompts, %d eval prompts (gold evaluation: %s)", len(train_set), len(eval_rows), gold)

    connect_hosting(cfg)
    t_roles = time.perf_counter()
    roles = start_roles(cfg, policy_path, optimizer_steps(cfg))
    log.info("roles ready in %.1f s (%s mode)", time.perf_counter() - t_roles, cfg.run.mode)

    kl_ctl = KLController(cfg.ppo.kl_coef, cfg.ppo.kl_target, cfg.ppo.kl_horizon)
    moments = RunningMoments()
    prompts = PromptStream(train_set, tokenizer.pad_token_id, cfg.run.seed)
    metrics_log = MetricsLogger(out, resume=True)
    start_step = 0
    history: dict = {}
    resume_from = ckpt.resolve_resume(cfg.run.resume, cfg.run.output_dir)
    if resume_from is not None:
        state = ckpt.load_driver_state(resume_from)
        get(
            roles.policy.broadcast(PolicyActor.load_checkpoint, str(resume_from)),
            roles.critic.broadcast(CriticActor.load_checkpoint, str(resume_from)),
        )
        start_step = int(state["step"])
        kl_ctl.load_state_dict(state["kl"])
        moments.load_state_dict(state["moments"])
        prompts.load_state_dict(state["data"])
        history = state.get("history", {})
        torch.set_rng_state(state["rng"])
        metrics_log.truncate(start_step)
        log.info("resumed from %s at step %d", resume_from, start_step)

    if "start_eval" not in history:
        ev = evaluate(roles, eval_rows, tokenizer.pad_token_id, gold)
        history["start_eval"] = ev.record()
        write_samples(out / "samples_start.jsonl", ev.samples)
        log.info("start eval: reward %.4f gold %s length %.1f", ev.reward, _fmt(ev.gold), ev.length)

    from tqdm import tqdm

    bar = tqdm(range(start_step, cfg.run.steps), initial=start_step, total=cfg.run.steps, desc="ppo", dynamic_ncols=True)
    for step in bar:
        metrics = ppo_step(roles, cfg, prompts, kl_ctl, moments, step)
        if (step + 1) % cfg.run.log_every == 0 or step + 1 == cfg.run.steps:
            metrics_log.write(step + 1, metrics)
        bar.set_postfix_str(
            f"reward {metrics['reward/score']:.3f} kl {metrics['kl/mean']:.3f} "
            f"gen {metrics['time/generate']:.1f}s train {metrics['time/critic_update+policy_update']:.1f}s"
        )
        if cfg.run.eval_every and (step + 1) % cfg.run.eval_every == 0 and step + 1 < cfg.run.steps:
            ev = evaluate(roles, eval_rows, tokenizer.pad_token_id, gold)
            metrics_log.write(step + 1, {"eval/reward": ev.reward, "eval/length": ev.length, **({"eval/gold": ev.gold} if gold else {})})
        last = step + 1 == cfg.run.steps
        if last or (cfg.run.save_every and (step + 1) % cfg.run.save_every == 0):
            _save_checkpoint(roles, cfg, step + 1, _driver_state(step + 1, kl_ctl, moments, prompts, history))
    bar.close()

    ev = evaluate(roles, eval_rows, tokenizer.pad_token_id, gold)
    history["end_eval"] = ev.record()
    write_samples(out / "samples_end.jsonl", ev.samples)
    get(roles.policy.broadcast(PolicyActor.export, str(out / "policy")))  # a collective under ZeRO-3; rank 0 writes
    records = metrics_log.read()
    plot_curves(records, out / "curves.png")
    summary = _summary(records, history, time.perf_counter() - timer)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    metrics_log.close()
    for g in roles.all():
        g.shutdown()
    _print_summary(summary, out)
    return summary


def ppo_step(
    roles: Roles, cfg: PPOConfig, prompts: PromptStream, kl_ctl: KLController, moments: RunningMoments, step: int,
    profile: bool = False,
) -> dict:
    """One PPO step; every line a timed call. Returns the step's metrics.

    Calls that can overlap are issued together and gathered with one `get`; with `profile=True`
    (`rlhf bench ppo`) they run one after another so that each phase gets its own wall time.
    """
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    batch = prompts.next(cfg.ppo.rollout_batch_size)
    t["driver"] = time.perf_counter() - t0
    (rollout,) = _run({"generate": lambda: roles.policy.scatter(PolicyActor.generate, batch, seed=cfg.run.seed * 100_003 + step)}, t, profile)

    scores, ref_lp, old_lp, values = _run(
        {
            "score": lambda: roles.reward.scatter(RewardActor.score, rollout),
            "reference": lambda: (
                roles.reference.scatter(ReferenceActor.logprobs, rollout)
                if roles.reference is not None
                else roles.policy.scatter(PolicyActor.reference_logprobs, rollout)
            ),
            "old_logprobs": lambda: roles.policy.scatter(PolicyActor.logprobs, rollout),
            "values": lambda: roles.critic.scatter(CriticActor.values, rollout),
        },
        t,
        profile,
    )

    t0 = time.perf_counter()
    exp, metrics = make_experience(rollout, scores, ref_lp, old_lp, values, cfg.ppo, kl_ctl, moments,
                                   std_threshold=cfg.reward.std_threshold)
    plans = {}
    for name, group in (("policy", roles.policy), ("critic", roles.critic)):
        g = torch.Generator().manual_seed(cfg.run.seed * 7919 + step)  # the same minibatches for both
        plans[name] = schedule(exp, epochs=cfg.ppo.epochs, minibatch_size=cfg.ppo.minibatch_size, replicas=group.world_size, generator=g)
    t["advantages"] = time.perf_counter() - t0

    mb_policy = cfg.ppo.minibatch_size // roles.policy.world_size
    mb_critic = cfg.ppo.minibatch_size // roles.critic.world_size
    critic_stats, policy_stats = _run(
        {
            "critic_update": lambda: roles.critic.scatter(CriticActor.train, plans["critic"], minibatch_rows=mb_critic),
            "policy_update": lambda: roles.policy.scatter(PolicyActor.train, plans["policy"], minibatch_rows=mb_policy),
        },
        t,
        profile,
    )

    from actors.lm import merge_stats

    metrics.update(merge_stats(policy_stats))
    metrics.update(merge_stats(critic_stats))
    metrics.update({f"time/{k}": v for k, v in t.items()})
    metrics["time/step"] = sum(t.values())
    metrics["time/tokens_per_s"] = float(rollout.action_mask.sum()) / max(metrics["time/step"], 1e-9)
    return metrics


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


def _driver_state(step, kl_ctl, moments, prompts, history) -> dict:
    return {
        "step": step,
        "kl": kl_ctl.state_dict(),
        "moments": moments.state_dict(),
        "data": prompts.state_dict(),
        "history": history,
        "rng": torch.get_rng_state(),
    }


def write_samples(path: Path, samples: list) -> None:
    with open(path, "w") as f:
        for s in samples:
            f.write(json.dumps(s) + "\n")


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _summary(records: list[dict], history: dict, seconds: float) -> dict:
    rewards = [r["reward/score"] for r in records if "reward/score" in r]
    k = max(1, min(5, len(rewards) // 4 or 1))
    return {
        "steps": records[-1]["step"] if records else 0,
        "train_reward_first": sum(rewards[:k]) / k if rewards else math.nan,
        "train_reward_last": sum(rewards[-k:]) / k if rewards else math.nan,
        "eval_start": history.get("start_eval"),
        "eval_end": history.get("end_eval"),
        "wall_time_s": round(seconds, 1),
    }


def _print_summary(summary: dict, out: Path) -> None:
    s, e = summary["eval_start"] or {}, summary["eval_end"] or {}
    print(f"\nPPO finished: {summary['steps']} steps in {summary['wall_time_s']:.0f} s; outputs in {out}")
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
