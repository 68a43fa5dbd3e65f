"""`rlhf bench ppo|dpo|rm|sft`: time per step and per phase, tokens/s, samples/s, peak memory per role and
MFU, on any model, on data synthesised at the lengths asked. `rlhf bench generate --engine hf|vllm`: the
rollout engine alone (`bench_generate`).

The model (`--model`) is a built-in one (`builtin:tiny-base`, the default), a Hugging Face folder or hub
name, or a size spec such as `llama:vocab=8192,hidden=256,intermediate=704,layers=4,heads=4` built with
random weights (`orchestrator.tools.synth`; speed does not depend on the weights). The data are `--rows`
rows of random tokens of the model's tokenizer at `--prompt-len` / `--response-len` tokens
(`orchestrator.tools.synth.synth_rows`); PPO's reward is the spec's `reward/` sequence classifier, or for
a folder a fresh one-output sequence-classification head on the same backbone, saved in `--out`
(`reward.*` overrides change it).

The bench is a run of the job as `rlhf <job>` makes it (`orchestrator.registry.run`, the one skeleton),
with `run.profile=true` (each phase's calls one after another, so each has its own time; a real run
overlaps the forward passes and the two updates) and a measurement hook (`Measure`): the wall time of
each of the `--steps` steps after `--warmup` warm-up steps (allocations, DeepSpeed's first-call work),
each role's time inside its methods, its peak memory. The run's start and end evaluations and its final
checkpoint are outside the measured steps. DPO's reference pass (once, before training) is timed on its own.

MFU is model FLOPs (the cost model's count, `orchestrator.tools.costmodel`: 2 x matmul parameters +
attention per token forward, 3x that to train) over the time, against the matmul peak of THIS machine
with all its cores, measured by the bench before the roles start (`costmodel.measure_peak`, fp32 and bf16).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from typing import TYPE_CHECKING

from orchestrator.core.hooks import Hook
from orchestrator.registry import JOBS, entry
from orchestrator.tools.args import length

if TYPE_CHECKING:
    from orchestrator.core.job import Job

__all__ = ["HELP", "DESCRIPTION", "add_args", "run", "Measure"]

HELP = "benchmarks on any model: per-phase time, samples/s, tokens/s, MFU, peak memory per role"
DESCRIPTION = "A run of the job through the one skeleton, each phase timed alone (run.profile=true), on synthesised data."
EVAL_ROWS = 16
TRAINING = [name for name, e in JOBS.items() if e.job is not None]


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", choices=[*TRAINING, "generate"], help="what to benchmark (generate: the rollout engine alone)")
    p.add_argument("--model", default="builtin:tiny-base",
                   help="builtin:<size>[-base], a model folder or hub name, or a size spec family:key=value,... "
                        "(e.g. llama:vocab=8192,hidden=256,intermediate=704,layers=4,heads=4)")
    p.add_argument("--prompt-len", type=length, default=32,
                   help="tokens per synthesised prompt: N, or LO:HI for lengths drawn uniformly per row")
    p.add_argument("--response-len", type=length, default=32,
                   help="tokens per synthesised response, N or LO:HI (PPO: N, policy.max_new_tokens unless overridden)")
    p.add_argument("--rows", type=int, default=256, help="synthesised training rows")
    p.add_argument("--steps", type=int, default=3, help="measured steps")
    p.add_argument("--warmup", type=int, default=1, help="steps run before the measured ones")
    p.add_argument("--out", default="runs/bench", help="folder for bench_<job>_<mode>.json and the synthesised data")
    p.add_argument("--config", help="YAML file with config values")
    p.add_argument("--engine", choices=["hf", "vllm"], default="hf", help="generate: the engine (generator.engine)")
    p.add_argument("--lengths", choices=["fixed", "spread"], default="fixed",
                   help="generate: fixed (EOS held back, every answer --response-len tokens) or spread (answers end at EOS)")
    p.add_argument("--threads", type=int, default=0, help="generate: torch threads (0: torch's default)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. run.mode=local policy.dtype=bf16")


def config_job(job: str) -> str:
    """The job whose config a bench's overrides are keys of (`generate`: PPO's policy.* and generator.*)."""
    return "ppo" if job == "generate" else job


def _longest(length: int | tuple[int, int]) -> int:
    return length if isinstance(length, int) else length[1]


def _shown(length, sep: str = "-") -> str:
    return str(length) if isinstance(length, int) else f"{length[0]}{sep}{length[1]}"


def resolve_model(model: str) -> str:
    """A folder for `--model`: a size spec is built (cached), builtin:... resolved, anything else checked
    as a model folder or hub name; a bad one is a one-line `ConfigError` naming --model."""
    from orchestrator.builtin.policy import resolve_model_path
    from orchestrator.config import ConfigError
    from orchestrator.core import preflight
    from orchestrator.tools.synth import is_spec, spec_model_dir

    try:
        path = spec_model_dir(model) if is_spec(model) else resolve_model_path(model)
        preflight.model_info("--model", path, trust_remote_code=False)
    except ConfigError as e:
        raise ConfigError(str(e).replace("config key '--model'", "rlhf bench --model", 1)) from None
    except ValueError as e:  # a size spec that cannot be built, an unknown builtin:...
        raise ConfigError(f"rlhf bench --model: {e}") from None
    return path


def bench_data(job: str, model_dir: str, out: Path, rows: int, prompt_len: int | tuple[int, int],
               response_len: int | tuple[int, int]) -> list[str]:
    """Synthesised train and held-out files of the rows `job` trains on, and the overrides that point the
    job at them (a length is N tokens or (lo, hi), `orchestrator.tools.synth.synth_rows`)."""
    from actors.modeling import load_tokenizer
    from orchestrator.tools.synth import synth_rows, write_rows

    kind = entry(job).data
    tokenizer = load_tokenizer(model_dir)
    data = synth_rows(kind, tokenizer, rows + EVAL_ROWS, prompt_len, response_len, seed=0)
    folder = out / "data"
    name = f"{kind}-{_shown(prompt_len, '_')}-{_shown(response_len, '_')}"
    train = write_rows(folder / f"{name}.jsonl", data[:rows])
    held_out = write_rows(folder / f"{name}-eval.jsonl", data[rows:])
    limits = [f"data.max_prompt_tokens={4 * _longest(prompt_len) + 8}", f"data.max_response_tokens={4 * _longest(response_len) + 8}"]
    return [f"data.path={train}", f"data.eval_path={held_out}", *limits]


def job_overrides(job: str, model_dir: str, out: Path) -> list[str]:
    """The model (`<role>.path` of the job's entry), and no LR warm-up (a bench runs fewer steps than a
    warm-up may need; speed does not depend on it). PPO's reward: the folder's `reward/` classifier (a size
    spec has one), else `reward_model_for(model_dir)`."""
    role = entry(job).role
    overrides = [f"{role}.path={model_dir}", f"{role}.warmup_steps=0"]
    if job == "ppo":
        reward = Path(model_dir) / "reward"
        reward = reward if (reward / "config.json").is_file() else reward_model_for(model_dir, out)
        overrides += ["critic.warmup_steps=0", "reward.kind=model", f"reward.path={reward}"]
    return overrides


def reward_model_for(model_dir: str, out: Path) -> Path:
    """A reward model of the same backbone for PPO's reward role: the causal LM's backbone with a fresh
    one-output sequence-classification head, saved (with the tokenizer) as a hub reward model is, in `out`."""
    import hashlib

    from actors.modeling import load_sequence_classifier, load_tokenizer

    source = str(Path(model_dir).resolve())  # one folder per source model, even when two share a name
    folder = out / "reward_model" / f"{Path(model_dir).name}-{hashlib.sha256(source.encode()).hexdigest()[:8]}"
    if not (folder / "config.json").is_file():
        load_sequence_classifier(model_dir, num_labels=1).save_pretrained(folder, safe_serialization=True)
        load_tokenizer(model_dir).save_pretrained(folder)
    return folder


class Measure(Hook):
    """The bench's measurements of a run: each measured step's metrics with its wall time (`time/wall`);
    after the last step (before the run's end evaluation and checkpoint), each replica's seconds inside
    its role's methods over the measured steps (`cluster.group`'s busy_s) and the peak memory of each
    role; at the end, the replicas of each role and the run's summary."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.records: list[dict] = []
        self.busy0: dict = {}
        self.busy: dict = {}
        self.memory: dict = {}
        self.replicas: dict = {}
        self.summary: dict = {}
        self.job: Job | None = None
        self._t0 = 0.0

    def before_step(self, job: Job, step: int) -> None:
        if step == self.warmup:
            self.busy0 = _busy(job)
        self._t0 = time.perf_counter()

    def after_step(self, job: Job, step: int, metrics: dict) -> None:
        wall = time.perf_counter() - self._t0
        if step >= self.warmup:
            self.records.append({**metrics, "time/wall": wall})
        if step == job.cfg.run.steps - 1:  # the last step: the end evaluation and checkpoint come next
            steps = len(self.records)
            self.busy = {name: [(b - a) / steps for a, b in zip(self.busy0[name], after)] for name, after in _busy(job).items()}
            self.memory = {g.name: max(h.get("peak_memory_mb", 0.0) for h in g.hosts()) for g in job.groups}

    def finished(self, job: Job, summary: dict) -> None:
        self.replicas = {g.name: g.world_size for g in job.groups}
        self.summary, self.job = summary, job


def run(args: argparse.Namespace) -> int:
    from orchestrator.config import ConfigError
    from orchestrator.registry import load_config
    from orchestrator.registry import run as run_job
    from orchestrator.tools.costmodel import measure_peak

    if args.job == "generate":
        return bench_generate(args)
    if args.steps < 1 or args.warmup < 0 or args.rows < 1:
        raise ConfigError("rlhf bench: --steps and --rows must be >= 1 and --warmup >= 0")
    if args.job == "ppo" and not isinstance(args.response_len, int):
        raise ConfigError("rlhf bench ppo: --response-len is policy.max_new_tokens (a sampled response ends at EOS "
                          "or there): give one number")
    model_dir = resolve_model(args.model)
    out = Path(args.out)
    overrides = [*job_overrides(args.job, model_dir, out),
                 *bench_data(args.job, model_dir, out, args.rows, args.prompt_len, args.response_len),
                 *([f"policy.max_new_tokens={args.response_len}"] if args.job == "ppo" else []),
                 f"run.steps={args.warmup + args.steps}", "run.output_dir=" + str(out / f"run_{args.job}"),
                 "run.save_every=0", "run.eval_every=0", "run.resume=never", "run.profile=true", *args.overrides]
    cfg = load_config(args.job, args.config, overrides)
    cores = os.cpu_count() or 1
    peak = {d: measure_peak(d, threads=cores, seconds=1.0) for d in ("fp32", "bf16")}  # before anything else runs
    measure = Measure(args.warmup)
    run_job(args.job, cfg, hooks=(measure,))
    result = summarise(args, cfg, measure, model_dir, peak, cores)
    result.update(_overhead(result, measure.records, measure.busy))
    result.update(startup_s=round(measure.job.startup_s, 2), replicas=measure.replicas,
                  peak_memory_mb={k: round(v, 1) for k, v in measure.memory.items()}, threads_per_replica=_threads(cfg, measure.job))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench_{args.job}_{cfg.run.mode}.json"
    path.write_text(json.dumps(result, indent=2))
    print_result(result)
    print(f"written {path}")
    return 0


def _busy(job) -> dict[str, list[float]]:
    """Seconds each replica of each role has spent inside its role's methods so far (`cluster.group`)."""
    return {g.name: [h["busy_s"] for h in g.hosts()] for g in job.groups}


def _overhead(result: dict, records: list[dict], busy: dict[str, list[float]]) -> dict:
    """What a step costs outside the roles' methods and the driver's own timed phases: Ray's dispatch,
    transfer and (de)serialisation, and the driver's glue (in local mode only the glue).

    Each role's share is its slowest replica's time in its methods per step. The bench runs each phase's
    calls one after another (run.profile), so the roles' shares add up to the step's compute; DPO, SFT and
    the reward model have one role."""
    roles = {name: max(per_rank) for name, per_rank in busy.items()}
    driver = statistics.mean(sum(r.get(f"time/{k}", 0.0) for k in ("driver", "advantages")) for r in records)
    outside = result["step_s"] - sum(roles.values()) - driver
    return {"roles_s": {k: round(v, 4) for k, v in roles.items()}, "driver_s": round(driver, 4),
            "overhead_s": round(outside, 4), "overhead_share": round(outside / result["step_s"], 4)}


def _threads(cfg, job: Job) -> dict:
    """Intra-op threads each replica computes with (`cluster.group.replica_threads`)."""
    from cluster.group import replica_threads
    from orchestrator.config import PPOConfig

    roles = job.role_configs()
    out = {name: replica_threads(cfg.run.mode, rc.num_cpus, rc.threads, alone=len(roles) == 1, replicas=rc.replicas)
           for name, rc in roles.items()}
    if isinstance(cfg, PPOConfig) and not cfg.ppo.max_staleness:  # on-policy generation runs alone (`cluster.group.alone_threads`)
        p = cfg.policy
        out["policy while generating"] = replica_threads(cfg.run.mode, p.num_cpus, p.threads, alone=True, replicas=p.replicas)
    return out


def phase_times(records: list[dict]) -> dict[str, float]:
    """Mean seconds per step of each timed call: a phase's calls where it ran several (`time/<phase>/<call>`,
    named by the call), else the phase itself; the step, the wall and the rates are not phases."""
    keys = [k[len("time/"):] for k in records[0] if k.startswith("time/") and k not in ("time/step", "time/wall", "time/tokens_per_s")]
    split = {k.split("/")[0] for k in keys if "/" in k}
    leaves = [k for k in keys if k not in split]
    return {k.split("/")[-1]: statistics.mean(r[f"time/{k}"] for r in records) for k in leaves}


def _shape(folder: str):
    from orchestrator.tools.costmodel import ModelShape

    return ModelShape.from_hf_config(json.loads((Path(folder) / "config.json").read_text()))


def summarise(args, cfg, measure: Measure, model_dir: str, peak: dict, cores: int) -> dict:
    from actors.modeling import count_parameters, model_skeleton, resolve_dtype

    job, records = measure.job, measure.records

    mean = lambda key: statistics.mean(r[key] for r in records)  # noqa: E731
    step_s = mean("time/wall")
    res = {"job": args.job, "model": args.model, "model_dir": model_dir,
           "parameters": count_parameters(model_skeleton(model_dir)), "mode": cfg.run.mode,
           "prompt_len": args.prompt_len, "response_len": args.response_len, "steps_measured": len(records),
           "warmup_steps": args.warmup, "cores": cores, "peak_flops": {k: round(v / 1e9, 1) for k, v in peak.items()},
           "step_s": round(step_s, 6), "step_s_spread": [round(min(r["time/wall"] for r in records), 4),
                                                          round(max(r["time/wall"] for r in records), 4)]}
    role = getattr(cfg, entry(args.job).role)
    dtype = resolve_dtype(role.dtype)
    res.update(dtype=dtype, zero_stage=role.zero_stage, lora=role.lora.enabled, micro_batch_size=role.micro_batch_size,
               micro_batch_tokens=role.micro_batch_tokens)
    shape = _shape(model_dir)
    if args.job == "ppo":
        res.update(_ppo(cfg, records, peak, step_s))
        return res
    rows = job.train_rows
    if args.job == "sft":
        batch, per_row = cfg.sft.batch_size, statistics.mean(len(r["prompt_ids"]) + len(r["response_ids"]) for r in rows)
        seqs, seq_len = 1, per_row
    else:
        batch = cfg.dpo.batch_size if args.job == "dpo" else cfg.rm.batch_size
        seq_len = statistics.mean(len(r["prompt_ids"]) + (len(r["chosen_ids"]) + len(r["rejected_ids"])) / 2 for r in rows)
        seqs = 2
    tokens = batch * seqs * seq_len
    head = args.job != "rm"  # a reward model has a one-output head, not the LM head
    train_flops = 3 * shape.forward_flops(tokens, seq_len / 2, lm_head=head)
    res.update(batch=batch, tokens_per_step=round(tokens, 1), samples_per_s=round(batch / step_s, 2),
               tokens_per_s=round(tokens / step_s, 1), mfu=round(train_flops / step_s / peak[dtype], 4))
    if measure.summary.get("reference_pass_s"):
        n = len(job.train_rows) + len(job.eval_rows)
        ref_tokens = n * 2 * seq_len
        s = measure.summary["reference_pass_s"]
        res["reference_pass"] = {"pairs": n, "s": round(s, 3), "pairs_per_s": round(n / s, 1), "tokens_per_s": round(ref_tokens / s, 1),
                                 "mfu": round(shape.forward_flops(ref_tokens, seq_len / 2) / s / peak[dtype], 4)}
    return res


def _ppo(cfg, records: list[dict], peak: dict, step_s: float) -> dict:
    from actors.modeling import resolve_dtype
    from orchestrator.tools.costmodel import FORWARD_PHASE, workload_of_config

    phase_s = phase_times(records)
    prompt = statistics.mean(r["length/prompt_padded"] for r in records)
    response = statistics.mean(r["length/response_padded"] for r in records)
    # model FLOPs count the real tokens, not the padding (which micro_batch_tokens does not compute)
    real_prompt = statistics.mean(r["length/prompt_mean"] for r in records)
    real_response = statistics.mean(r["length/mean"] for r in records)
    w = workload_of_config(cfg, prompt_len=real_prompt, response_len=real_response)
    flops: dict[str, float] = {}
    dtype = {}
    for name, role in w.roles.items():
        fwd = role.model.forward_flops(w.samples * (w.prompt_len + w.response_len), (w.prompt_len + w.response_len) / 2,
                                       lm_head=name not in ("reward", "critic"))
        flops[FORWARD_PHASE[name]] = fwd
        dtype[FORWARD_PHASE[name]] = role.dtype
        if name == "policy":
            flops["generate"] = (role.model.forward_flops(w.samples * w.prompt_len, w.prompt_len / 2)
                                 + role.model.forward_flops(w.samples * w.response_len, w.prompt_len + w.response_len / 2))
            dtype["generate"] = role.dtype
        if role.trainable:
            flops[f"{name}_update"] = 3 * fwd * w.epochs
            dtype[f"{name}_update"] = role.dtype
    n = cfg.ppo.rollout_batch_size
    response_tokens = statistics.mean(r["length/mean"] for r in records) * n
    return {"rollout_batch_size": n, "samples_per_prompt": cfg.ppo.samples_per_prompt, "max_new_tokens": cfg.policy.max_new_tokens,
            "advantage_estimator": cfg.ppo.advantage_estimator, "padded_prompt_len": prompt, "padded_response_len": response,
            "prompt_len_mean": round(real_prompt, 2), "response_len_mean": round(real_response, 2),
            "phase_s": {p: round(s, 4) for p, s in phase_s.items()},
            "phase_mfu": {p: round(flops[p] / s / peak[dtype[p]], 4) for p, s in phase_s.items() if p in flops},
            "samples_per_s": round(n / step_s, 2), "response_tokens_per_step": round(response_tokens, 1),
            "tokens_per_s_generate": round(response_tokens / phase_s["generate"], 1),
            "tokens_per_s": round(response_tokens / step_s, 1),
            "mfu": round(sum(flops.values()) / step_s / peak[resolve_dtype(cfg.policy.dtype)], 4)}


def print_result(r: dict) -> None:
    lora = ", LoRA" if r["lora"] else ""
    budget = f", micro-batches of up to {r['micro_batch_tokens']} tokens" if r.get("micro_batch_tokens") else ""
    print(f"\nrlhf bench {r['job']}: {r['model']} ({r['parameters']:,} params), {r['mode']} mode, {r['dtype']}, "
          f"ZeRO-{r['zero_stage']}{lora}{budget}, prompts {_shown(r['prompt_len'], '..')} + responses {_shown(r['response_len'], '..')} tokens, "
          f"mean of {r['steps_measured']} steps after {r['warmup_steps']} warm-up")
    print(f"machine peak ({r['cores']} cores, measured): fp32 {r['peak_flops']['fp32']:.0f} GFLOP/s, bf16 {r['peak_flops']['bf16']:.0f} GFLOP/s; "
          f"threads per replica: " + ", ".join(f"{k} {v}" for k, v in r["threads_per_replica"].items()))
    if r["job"] == "ppo":
        print(f"{'phase':<16}{'seconds':>10}{'share':>8}{'MFU':>8}")
        for k, v in r["phase_s"].items():
            mfu = f"{r['phase_mfu'][k]:.1%}" if k in r["phase_mfu"] else ""
            print(f"{k:<16}{v:>10.3f}{v / r['step_s']:>8.0%}{mfu:>8}")
        print(f"{'step':<16}{r['step_s']:>10.3f}{'':>8}{r['mfu']:>8.1%}   (min {r['step_s_spread'][0]:.3f}, max {r['step_s_spread'][1]:.3f})")
        print(f"{r['samples_per_s']:.2f} episodes/s; tokens/s: {r['tokens_per_s_generate']:.0f} in generation, {r['tokens_per_s']:.0f} "
              f"over the step ({r['response_tokens_per_step']:.0f} response tokens per step of {r['rollout_batch_size']})")
    else:
        unit = "pairs" if r["job"] in ("dpo", "rm") else "rows"
        print(f"train step: {r['step_s']:.3f} s (min {r['step_s_spread'][0]:.3f}, max {r['step_s_spread'][1]:.3f}), "
              f"{r['samples_per_s']:.2f} {unit}/s, {r['tokens_per_s']:.0f} tokens/s, MFU {r['mfu']:.1%} "
              f"({r['batch']} {unit} per step, {r['tokens_per_step']:.0f} tokens)")
        if "reference_pass" in r:
            ref = r["reference_pass"]
            print(f"reference pass (once, before training): {ref['pairs']} pairs in {ref['s']:.2f} s, {ref['pairs_per_s']:.1f} pairs/s, "
                  f"MFU {ref['mfu']:.1%}")
    what = "Ray's dispatch, transfer and (de)serialisation, and the driver's glue" if r["mode"] == "ray" else "the driver's glue"
    print(f"outside the roles' methods and the driver's phases: {r['overhead_s']:.4f} s per step ({r['overhead_share']:.1%}; {what}); "
          "in the roles: " + ", ".join(f"{k} {v:.3f}" for k, v in r["roles_s"].items()) + " s")
    shared = " (local mode: one process hosts every role, so these are the same number)" if r["mode"] == "local" and len(r["peak_memory_mb"]) > 1 else ""
    print("peak memory per role (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in r["peak_memory_mb"].items()) + shared
          + f"; role start-up {r['startup_s']:.1f} s")


def bench_generate(args: argparse.Namespace) -> int:
    """`rlhf bench generate`: the generator role's engine alone (`GeneratorActor`, as PPO samples with it, in this
    process, as a local role group), `--rows` prompts of `--prompt-len` synthesised tokens per call, answered with up to
    `--response-len` new tokens (policy.max_new_tokens): with `--lengths fixed` EOS is held back so every
    answer is that long (the same work for every engine), with `spread` answers end at EOS (a trained policy's
    answers end at different lengths: HF `generate` computes every row to the longest, vLLM's continuous
    batching frees a finished row's slot). Tokens/s counts the response tokens sampled; each of the `--steps`
    calls after `--warmup` is timed, and the mean, min and max are printed and written to
    bench_generate_<engine>.json. Config overrides reach the policy (sampling) and generator.* (the engine)."""
    import torch

    from actors.modeling import load_tokenizer
    from actors.policy import GeneratorActor
    from cluster import LocalGroup, get
    from orchestrator.config import ConfigError
    from orchestrator.data import to_prompt_batch
    from orchestrator.registry import load_config
    from orchestrator.tools.synth import synth_rows

    if args.steps < 1 or args.warmup < 0 or args.rows < 1 or args.threads < 0:
        raise ConfigError("rlhf bench generate: --steps and --rows must be >= 1, --warmup and --threads >= 0")
    if not isinstance(args.response_len, int):
        raise ConfigError("rlhf bench generate: --response-len is policy.max_new_tokens: give one number "
                          "(--lengths spread lets answers end at EOS)")
    model_dir = resolve_model(args.model)
    cfg = load_config(config_job("generate"), args.config, [f"policy.path={model_dir}", f"policy.max_new_tokens={args.response_len}",
                                           f"generator.engine={args.engine}", *args.overrides])
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(model_dir)
    texts = synth_rows("prompt", tokenizer, args.rows, args.prompt_len, 0, seed=0)
    rows = [{"prompt": r["prompt"], "prompt_ids": tokenizer(r["prompt"])["input_ids"], "reference": None, "query_type": None}
            for r in texts]
    batch = to_prompt_batch(rows, tokenizer.pad_token_id)
    longest = batch.input_ids.shape[1] + args.response_len
    floor = args.response_len if args.lengths == "fixed" else 0
    t0 = time.perf_counter()
    gen = LocalGroup(GeneratorActor, cfg.generator_slice(), name="generator",
                     kwargs=dict(model_path=model_dir, seed=cfg.run.seed, engine=cfg.generator, max_model_len=longest))
    startup_s = time.perf_counter() - t0
    seconds, tokens = [], []
    try:
        for i in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            rollout = get(gen.scatter(GeneratorActor.generate, batch, seed=i, min_new_tokens=floor))
            if i >= args.warmup:
                seconds.append(time.perf_counter() - t0)
                tokens.append(int(rollout.action_mask.sum()))
    finally:
        gen.shutdown()
    rates = [n / s for n, s in zip(tokens, seconds)]
    lengths = [n / args.rows for n in tokens]
    result = {"job": "generate", "engine": args.engine, "model": args.model, "lengths": args.lengths, "rows": args.rows,
              "prompt_len": args.prompt_len, "response_len": args.response_len, "threads": torch.get_num_threads(),
              "dtype": cfg.policy.dtype, "steps_measured": args.steps, "warmup_steps": args.warmup,
              "tokens_per_s": round(statistics.mean(rates), 1), "tokens_per_s_spread": [round(min(rates), 1), round(max(rates), 1)],
              "call_s": [round(s, 4) for s in seconds], "mean_response_tokens": round(statistics.mean(lengths), 1),
              "startup_s": round(startup_s, 2)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench_generate_{args.engine}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"rlhf bench generate: {args.engine} on {args.model}, {args.rows} prompts of {_shown(args.prompt_len, '..')} tokens, "
          f"{args.lengths} answers (mean {result['mean_response_tokens']} of up to {args.response_len} tokens), "
          f"{result['threads']} thread(s): {result['tokens_per_s']:.0f} tokens/s (min {min(rates):.0f}, max {max(rates):.0f}; "
          f"{args.steps} calls after {args.warmup} warm-up; engine start {startup_s:.1f} s)")
    print(f"written {path}")
    return 0
