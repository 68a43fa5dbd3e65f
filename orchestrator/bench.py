"""`rlhf bench ppo`: per-phase wall time, tokens per second and peak memory per role.
`rlhf bench dpo`: pairs per second, tokens per second and peak memory of the DPO actor (`run_dpo`).

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
    p.add_argument("job", choices=["ppo", "dpo"], help="what to benchmark")
    p.add_argument("--size", default="tiny", help="built-in model size: tiny (~1M), small (~11M), 50m (~51M)")
    p.add_argument("--steps", type=int, default=3, help="measured steps (after one warm-up step)")
    p.add_argument("--out", default="runs/bench", help="folder for bench_<job>_<size>.json")
    p.add_argument("--config", help="YAML file with config values")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. run.mode=local")


def run(args: argparse.Namespace) -> int:
    if args.job == "dpo":
        return run_dpo(args)
    import torch

    from actors.modeling import load_tokenizer
    from losses.common import RunningMoments
    from losses.kl import KLController
    from orchestrator.builtin import BUILTIN_SIZES, builtin_model_dir
    from orchestrator.config import load_job_config
    from orchestrator.data import load_prompts, to_prompt_batch
    from orchestrator.ppo import optimizer_steps, ppo_step, start_roles
    from orchestrator.streams import IndexStream

    if args.size not in BUILTIN_SIZES:
        raise SystemExit(f"rlhf bench: --size must be one of {', '.join(BUILTIN_SIZES)}")
    model_dir = builtin_model_dir(args.size)
    overrides = [f"policy.path={model_dir}", "reward.kind=function", "reward.function=orchestrator.task:gold_reward",
                 f"run.steps={args.steps + 1}", "run.output_dir=" + str(Path(args.out) / "run"), *args.overrides]
    cfg = load_job_config("ppo", args.config, overrides)
    torch.manual_seed(cfg.run.seed)
    tokenizer = load_tokenizer(model_dir)
    rows = load_prompts(cfg.data, tokenizer)[0].to_list()
    t0 = time.perf_counter()
    roles = start_roles(cfg, model_dir, optimizer_steps(cfg))
    startup = time.perf_counter() - t0
    stream = IndexStream(len(rows), cfg.run.seed)

    def next_prompts(n: int):
        return to_prompt_batch([rows[i] for i in stream.next(n)], tokenizer.pad_token_id)

    kl_ctl = KLController(cfg.ppo.kl_coef, cfg.ppo.kl_target, cfg.ppo.kl_horizon)
    moments = RunningMoments()
    records = [ppo_step(roles, cfg, next_prompts, kl_ctl, moments, step, profile=True) for step in range(args.steps + 1)][1:]

    memory = {g.name: max(h["peak_memory_mb"] for h in g.hosts()) for g in roles.all()}
    replicas = {g.name: g.world_size for g in roles.all()}
    params = _count_params(model_dir)
    for g in roles.all():
        g.shutdown()

    phases = {p: statistics.mean(r[f"time/{p}"] for r in records) for p in PHASES if f"time/{p}" in records[0]}  # critic-free: no values, no critic update
    step_time = statistics.mean(r["time/step"] for r in records)
    tokens = statistics.mean(r["length/mean"] for r in records) * cfg.ppo.rollout_batch_size
    result = {
        "job": "ppo",
        "size": args.size,
        "parameters": params,
        "mode": cfg.run.mode,
        "advantage_estimator": cfg.ppo.advantage_estimator,
        "replicas": replicas,
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


def run_dpo(args: argparse.Namespace) -> int:
    """DPO optimizer steps on a built-in Llama of the chosen size (random init), in this process (one local replica).

    Measures the reference pass (no-grad forward of chosen + rejected, as before training) and the
    training step (forward + backward + AdamW) on the same `dpo.batch_size` pairs of
    builtin:preferences, after one warm-up batch. Tokens count prompt + response of both sequences of
    each pair (padding excluded). One local replica: Ray replicas run this same code, each on 1/W of the batch.
    """
    import torch

    from actors.dpo import DPOActor, dpo_loss_args
    from cluster.placement import peak_memory_mb
    from actors.pairs import collate_pairs
    from cluster import RoleSpec, create_groups, get
    from orchestrator.builtin import BUILTIN_SIZES, builtin_model_dir
    from orchestrator.config import ConfigError, load_job_config
    from orchestrator.dpo import DPOJob, pair_logprobs
    from orchestrator.streams import IndexStream

    if args.size not in BUILTIN_SIZES:
        raise SystemExit(f"rlhf bench: --size must be one of {', '.join(BUILTIN_SIZES)}")
    model_dir = builtin_model_dir(args.size)
    overrides = [f"policy.path={model_dir}", "run.mode=local", f"run.steps={args.steps + 1}",
                 "run.output_dir=" + str(Path(args.out) / "run"), *args.overrides]
    cfg = load_job_config("dpo", args.config, overrides)
    if cfg.run.mode != "local" or cfg.policy.replicas != 1:
        raise ConfigError("rlhf bench dpo measures one local replica: run.mode must be local and policy.replicas 1")
    data = DPOJob(cfg)
    torch.manual_seed(cfg.run.seed)
    B = cfg.dpo.batch_size
    t0 = time.perf_counter()
    spec = RoleSpec(DPOActor, cfg.policy, kwargs=dict(model_path=model_dir, seed=cfg.run.seed, total_steps=args.steps + 1,
                                                      pairs_per_step=B))
    policy = create_groups("local", {"policy": spec})["policy"]
    startup = time.perf_counter() - t0
    stream = IndexStream(len(data.train_rows), cfg.run.seed)
    batches = [[data.train_rows[i] for i in stream.next(B)] for _ in range(args.steps + 1)]
    tokens = [sum(2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows) for rows in batches]

    refs, ref_times = [], []
    for rows in batches:
        t0 = time.perf_counter()
        refs.append(pair_logprobs(policy, rows, data.pad_id, reference=True))
        ref_times.append(time.perf_counter() - t0)
    loss_args = dpo_loss_args(cfg.dpo.loss, cfg.dpo.beta, cfg.dpo.label_smoothing)
    step_times = []
    for rows, ref in zip(batches, refs):
        pairs = collate_pairs(rows, data.pad_id)
        pairs.ref_chosen, pairs.ref_rejected = ref[:, 0].contiguous(), ref[:, 1].contiguous()
        t0 = time.perf_counter()
        get(policy.scatter(DPOActor.train_step, pairs, global_pairs=B, loss_args=loss_args))
        step_times.append(time.perf_counter() - t0)
    policy.shutdown()

    measured_tokens = statistics.mean(tokens[1:])
    step_s, ref_s = statistics.mean(step_times[1:]), statistics.mean(ref_times[1:])
    result = {
        "job": "dpo",
        "size": args.size,
        "parameters": _count_params(model_dir),
        "mode": "local",
        "zero_stage": cfg.policy.zero_stage,
        "dtype": cfg.policy.dtype,
        "lora": cfg.policy.lora.enabled,
        "threads": torch.get_num_threads(),
        "batch_pairs": B,
        "micro_batch_pairs": cfg.policy.micro_batch_size,
        "steps_measured": args.steps,
        "startup_s": round(startup, 2),
        "tokens_per_batch": round(measured_tokens, 1),
        "train_step_s": round(step_s, 4),
        "train_pairs_per_s": round(B / step_s, 1),
        "train_tokens_per_s": round(measured_tokens / step_s, 1),
        "reference_pass_s": round(ref_s, 4),
        "reference_pairs_per_s": round(B / ref_s, 1),
        "reference_tokens_per_s": round(measured_tokens / ref_s, 1),
        "peak_memory_mb": round(peak_memory_mb(), 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench_dpo_{args.size}_local.json"
    path.write_text(json.dumps(result, indent=2))
    r = result
    print(f"\nrlhf bench dpo: builtin:{r['size']} ({r['parameters'] / 1e6:.1f}M params), one local replica, {r['threads']} thread(s), "
          f"{r['batch_pairs']} pairs per step in micro-batches of {r['micro_batch_pairs']}, {r['dtype']}, ZeRO-{r['zero_stage']}"
          f"{', LoRA' if r['lora'] else ''}, mean of {r['steps_measured']} steps after 1 warm-up "
          f"({r['tokens_per_batch']:.0f} tokens per batch, chosen + rejected)")
    print(f"{'phase':<26}{'seconds':>9}{'pairs/s':>10}{'tokens/s':>11}")
    print(f"{'train step (fwd+bwd+adam)':<26}{step_s:>9.3f}{r['train_pairs_per_s']:>10.1f}{r['train_tokens_per_s']:>11.0f}")
    print(f"{'reference pass (no grad)':<26}{ref_s:>9.3f}{r['reference_pairs_per_s']:>10.1f}{r['reference_tokens_per_s']:>11.0f}")
    print(f"peak memory (resident set of this process): {r['peak_memory_mb']:.0f} MB; actor start-up {r['startup_s']:.1f} s")
    print(f"written {path}")
    return 0
