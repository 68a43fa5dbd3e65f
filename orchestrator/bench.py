"""`rlhf bench ppo`: per-phase wall time, tokens per second and peak memory per role.

Runs real PPO steps on a built-in Llama of the chosen size (random init: speed does not depend on
the weights) with every phase issued one after another (`ppo_step(profile=True)`), so each phase
has its own time. The first step warms up (allocations, DeepSpeed's first-call work) and is not
counted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

PHASES = ("generate", "score", "reference", "old_logprobs", "values", "advantages", "critic_update", "policy_update", "driver")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", choices=["ppo"], help="what to benchmark")
    p.add_argument("--size", default="tiny", help="built-in model size: tiny (~1M), small (~11M), 50m (~51M)")
    p.add_argument("--steps", type=int, default=3, help="measured steps (after one warm-up step)")
    p.add_argument("--out", default="runs/bench", help="folder for bench_<job>_<size>.json")
    p.add_argument("--config", help="YAML file with config values")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. run.mode=local")


def run(args: argparse.Namespace) -> int:
    import torch

    from actors.critic import CriticActor
    from actors.modeling import load_tokenizer
    from actors.policy import PolicyActor
    from actors.reference import ReferenceActor
    from actors.reward import RewardActor
    from cluster import get
    from orchestrator.builtin import BUILTIN_SIZES, builtin_model_dir
    from orchestrator.config import load_job_config
    from orchestrator.data import load_prompts
    from orchestrator.experience import KLController, RunningMoments
    from orchestrator.ppo import PromptStream, connect_hosting, optimizer_steps, ppo_step, start_roles

    if args.size not in BUILTIN_SIZES:
        raise SystemExit(f"rlhf bench: --size must be one of {', '.join(BUILTIN_SIZES)}")
    model_dir = builtin_model_dir(args.size)
    overrides = [f"policy.path={model_dir}", "reward.kind=function", "reward.function=orchestrator.task:gold_reward",
                 f"run.steps={args.steps + 1}", "run.output_dir=" + str(Path(args.out) / "run"), *args.overrides]
    cfg = load_job_config("ppo", args.config, overrides)
    torch.manual_seed(cfg.run.seed)
    tokenizer = load_tokenizer(model_dir)
    data, _ = load_prompts(cfg.data, tokenizer)
    connect_hosting(cfg)
    t0 = time.perf_counter()
    roles = start_roles(cfg, model_dir, optimizer_steps(cfg))
    startup = time.perf_counter() - t0
    stream = PromptStream(data, tokenizer.pad_token_id, cfg.run.seed)
    kl_ctl = KLController(cfg.ppo.kl_coef, cfg.ppo.kl_target, cfg.ppo.kl_horizon)
    moments = RunningMoments()
    records = [ppo_step(roles, cfg, stream, kl_ctl, moments, step, profile=True) for step in range(args.steps + 1)][1:]

    memory = {}
    calls = {"policy": PolicyActor, "critic": CriticActor, "reward": RewardActor, "reference": ReferenceActor}
    for name, cls in calls.items():
        group = getattr(roles, name)
        if group is not None:
            memory[name] = max(get(group.broadcast(cls.peak_memory_mb)))
    params = _count_params(model_dir)
    for g in roles.all():
        g.shutdown()

    phases = {p: statistics.mean(r[f"time/{p}"] for r in records) for p in PHASES}
    step_time = statistics.mean(r["time/step"] for r in records)
    tokens = statistics.mean(r["length/mean"] for r in records) * cfg.ppo.rollout_batch_size
    result = {
        "job": "ppo",
        "size": args.size,
        "parameters": params,
        "mode": cfg.run.mode,
        "replicas": {r: getattr(cfg, r).replicas for r in ("policy", "reference", "critic", "reward")},
        "zero_stage": cfg.policy.zero_stage,
        "dtype": cfg.policy.dtype,
        "rollout_batch_size": cfg.ppo.rollout_batch_size,
        "max_new_tokens": cfg.policy.max_new_tokens,
        "steps_measured": args.steps,
        "startup_s": round(startup, 2),
        "phase_s": {k: round(v, 4) for k, v in phases.items()},
        "step_s": round(step_time, 4),
        "generated_tokens_per_step": round(tokens, 1),
        "tokens_per_s_generate": round(tokens / phases["generate"], 1),
        "tokens_per_s_step": round(tokens / step_time, 1),
        "peak_memory_mb": {k: round(v, 1) for k, v in memory.items()},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench_ppo_{args.size}_{cfg.run.mode}.json"
    path.write_text(json.dumps(result, indent=2))
    _print_table(result)
    print(f"written {path}")
    return 0


def _count_params(folder: str) -> int:
    from actors.modeling import count_parameters, load_causal_lm

    return count_parameters(load_causal_lm(folder))


def _print_table(r: dict) -> None:
    print(f"\nrlhf bench ppo: builtin:{r['size']} ({r['parameters'] / 1e6:.1f}M params), {r['mode']} mode, "
          f"batch {r['rollout_batch_size']} x {r['max_new_tokens']} new tokens, {r['dtype']}, ZeRO-{r['zero_stage']}, "
          f"mean of {r['steps_measured']} steps after 1 warm-up")
    print(f"{'phase':<16}{'seconds':>10}{'share':>9}")
    for k, v in r["phase_s"].items():
        print(f"{k:<16}{v:>10.3f}{v / r['step_s']:>8.0%}")
    print(f"{'step':<16}{r['step_s']:>10.3f}")
    print(f"tokens/s: {r['tokens_per_s_generate']:.0f} in generation, {r['tokens_per_s_step']:.0f} over the whole step "
          f"({r['generated_tokens_per_step']:.0f} response tokens per step); role start-up {r['startup_s']:.1f} s")
    shared = " (local mode: one process hosts every role, so these are the same number)" if r["mode"] == "local" else ""
    print("peak memory per role (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in r["peak_memory_mb"].items()) + shared)
