"""`rlhf dpo`: DPO, IPO and cDPO on one policy actor; ray mode scales it out with Ray Train.

One step, on every worker (rank r of W) of the same training function:

    pairs = stream.next(dpo.batch_size)[r-th share]          # the same global batch for any W
    actor.train_step(pairs, ref_logps[pairs])                # chosen+rejected in one forward; one optimizer step
    metrics = all_reduce(sums) / dpo.batch_size              # global means, identical on every rank

Hosting
-------
- local: the driver process is the single worker (`cluster.init_local`, a world of size 1).
- ray: `ray.train.torch.TorchTrainer` starts `policy.replicas` workers (ScalingConfig; GPUs when the
  cluster has them and policy.num_gpus > 0) and sets up their process group (gloo on CPU, nccl on
  GPU); each worker wraps it with DeepSpeed's comm layer and runs `run_worker`, the very function local
  mode runs, with a DeepSpeed ZeRO engine (policy.zero_stage) over the W workers. Each worker takes
  1/W of the global batch; the loss of a micro-batch is its per-pair loss sum divided by the GLOBAL
  pair count, and `actors.engine.backward` undoes DeepSpeed's gradient averaging, so W workers give
  the numbers of one worker at the same global batch (tests/test_dpo_ray.py).

Reference log-probs
-------------------
Computed once, before the first update, by the same actor (with LoRA: its adapter-free base), for
every training and held-out pair, sharded over the workers and all-gathered; they are stored per pair
in every checkpoint (`driver.pt`), so there is never a second model and a resumed full fine-tune keeps
the reference of the initial weights.

Checkpoints and metrics
-----------------------
Our own checkpoint folders, the layout of `rlhf ppo` (`orchestrator.checkpoint`: atomic
`checkpoints/step_N/` with the DeepSpeed state under `policy/`, the weights as `policy_hf/`, and
`driver.pt`), written by all workers into one folder on storage they share, and resumed with
`run.resume` in both modes. Ray Train's own `Checkpoint` objects are not used: they would copy the
same files into Ray's storage_path and give local mode a different resume path. Multi-node:
output_dir and the model folder must be on storage every node sees (paths are made absolute, since
Ray Train workers run in a working directory of their own); the pairs themselves are shipped to the
workers with the training function. Ray Train gets the
metrics through `ray.train.report` (every worker, every step: it is a barrier); rank 0 writes
`metrics.jsonl`, TensorBoard, `curves.png`, `summary.json` and the exported `policy/`.

Evaluation
----------
- Held-out pairs (every `run.eval_every` steps, at the start and the end): DPO loss, implicit-reward
  accuracy (chosen reward > rejected reward) and margin, and the policy's log-probs of both answers.
- With the built-in preference data, the gold evaluation of `rlhf ppo` (`orchestrator.ppo.evaluate`):
  one sampled answer per held-out built-in prompt, scored by the gold score and by the annotators' mean
  utility (`orchestrator.task.annotator_reward`, PPO's default training reward).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from cluster.group import LocalGroup
from orchestrator import checkpoint as ckpt
from orchestrator.config import DPOConfig, to_yaml

log = logging.getLogger("rlhf.dpo")
GOLD_DATA = "builtin:preferences"
ID_COLUMNS = ["prompt_ids", "chosen_ids", "rejected_ids"]


@dataclass
class PairData:
    """Everything a worker reads, loaded and validated once by the driver."""

    train: list  # rows {prompt_ids, chosen_ids, rejected_ids}
    eval: list  # held-out rows, same columns
    gold_prompts: list  # held-out prompt rows of the built-in task; empty: no gold evaluation
    pad_id: int


# ------------------------------------------------------------------------------------- driver


def train(cfg: DPOConfig) -> dict:
    """Run DPO as configured (local or ray mode); returns the summary (also in summary.json)."""
    from actors.modeling import load_tokenizer
    from orchestrator.ppo import resolve_model_path

    # absolute paths: Ray Train workers run in a working directory of their own
    cfg.run.output_dir = os.path.abspath(cfg.run.output_dir)
    if cfg.run.resume not in ("auto", "never"):
        cfg.run.resume = os.path.abspath(cfg.run.resume)
    out = Path(cfg.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    policy_path = resolve_model_path(cfg.policy.path)
    if os.path.isdir(policy_path):
        policy_path = os.path.abspath(policy_path)
    tokenizer = load_tokenizer(policy_path, trust_remote_code=cfg.policy.trust_remote_code)
    data = load_pair_data(cfg, tokenizer)
    log.info("data: %d train pairs, %d eval pairs, %d gold prompts", len(data.train), len(data.eval), len(data.gold_prompts))

    if cfg.run.mode == "local":
        import cluster

        cluster.init_local()
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, int(cfg.policy.num_cpus)))  # as a Ray worker gets; one thread is fastest on small CPUs
        try:
            summary = run_worker(cfg, policy_path, data)
        finally:
            torch.set_num_threads(threads)
    else:
        summary = _fit_with_ray_train(cfg, policy_path, data)
    _print_summary(summary, out)
    return summary


def load_pair_data(cfg: DPOConfig, tokenizer) -> PairData:
    """Train and held-out pairs (DataError naming file and row on bad input) and the gold prompts."""
    from orchestrator.config import DataConfig
    from orchestrator.data import load_preferences, load_prompts

    train_set, _ = load_preferences(cfg.data, tokenizer)
    eval_set, _ = load_preferences(cfg.data, tokenizer, eval_set=True)
    if cfg.dpo.eval_pairs:
        eval_set = eval_set.select(range(min(cfg.dpo.eval_pairs, len(eval_set))))
    gold_prompts: list = []
    if cfg.data.path == GOLD_DATA:
        prompts_cfg = DataConfig(path="builtin:prompts", max_prompt_tokens=cfg.data.max_prompt_tokens,
                                 chat_template=cfg.data.chat_template)
        gold_prompts = load_prompts(prompts_cfg, tokenizer, eval_set=True)[0].to_list()
    return PairData(
        train=train_set.select_columns(ID_COLUMNS).to_list(),
        eval=eval_set.select_columns(ID_COLUMNS).to_list(),
        gold_prompts=gold_prompts,
        pad_id=tokenizer.pad_token_id,
    )


def _fit_with_ray_train(cfg: DPOConfig, policy_path: str, data: PairData) -> dict:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from orchestrator.ppo import connect_hosting

    connect_hosting(cfg, roles=("policy",))
    use_gpu = ray.cluster_resources().get("GPU", 0) > 0 and cfg.policy.num_gpus > 0
    resources = {"CPU": cfg.policy.num_cpus, **({"GPU": cfg.policy.num_gpus} if use_gpu else {})}
    out = Path(cfg.run.output_dir).resolve()
    trainer = TorchTrainer(
        _ray_train_loop,
        train_loop_config={"cfg": cfg, "policy_path": policy_path, "data": data},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.policy.replicas, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=f"dpo-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=str(out / "ray_train")),
    )
    result = trainer.fit()
    if getattr(result, "error", None) is not None:
        raise result.error
    return json.loads((out / "summary.json").read_text())


def _ray_train_loop(config: dict) -> None:
    """The function of every Ray Train worker: DeepSpeed's comm layer over Ray Train's process group, then `run_worker`."""
    import ray.train
    import ray.train.torch

    from cluster.dist import backend, select_accelerator

    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("rlhf", "actors"):  # our progress lines
        logging.getLogger(name).setLevel(logging.INFO)
    logging.getLogger("ray.train.v2._internal.execution.context").setLevel(logging.WARNING)  # prints every report's metrics
    select_accelerator()
    import deepspeed

    deepspeed.init_distributed(dist_backend=backend(), auto_mpi_discovery=False)
    if torch.cuda.is_available():  # Ray Train shows a node's workers all of its GPUs: use this worker's
        torch.cuda.set_device(ray.train.torch.get_device())
    cfg = config["cfg"]
    torch.set_num_threads(max(1, int(cfg.policy.num_cpus)))
    run_worker(cfg, config["policy_path"], config["data"], report=ray.train.report)


# ------------------------------------------------------------------------------------- worker


def run_worker(cfg: DPOConfig, policy_path: str, data: PairData, report=None) -> dict | None:
    """The DPO loop of one worker (rank r of W); torch.distributed must be initialised. Rank 0 returns the summary."""
    import torch.distributed as tdist
    from tqdm import tqdm

    from actors.dpo import DPOActor, dpo_loss_args
    from orchestrator.metrics import MetricsLogger, plot_curves
    from orchestrator.ppo import IndexStream, write_samples

    timer = time.perf_counter()
    rank, world = tdist.get_rank(), tdist.get_world_size()
    lead = rank == 0
    out = Path(cfg.run.output_dir)
    B = cfg.dpo.batch_size
    if B % world:
        raise ValueError(f"dpo.batch_size ({B}) must be divisible by the {world} workers")
    torch.manual_seed(cfg.run.seed)
    actor = DPOActor(cfg.policy, model_path=policy_path, seed=cfg.run.seed, total_steps=cfg.run.steps, pairs_per_step=B)
    loss_args = dpo_loss_args(cfg.dpo.loss, cfg.dpo.beta, cfg.dpo.label_smoothing)
    device = actor.engine.device
    stream = IndexStream(len(data.train), cfg.run.seed)
    history: dict = {}
    start_step = 0

    resume_from = ckpt.resolve_resume(cfg.run.resume, cfg.run.output_dir)
    metrics_log = MetricsLogger(out, resume=resume_from is not None) if lead else None
    if resume_from is not None:
        state = ckpt.load_driver_state(resume_from)
        actor.load_checkpoint(str(resume_from))
        start_step = int(state["step"])
        stream.load_state_dict(state["data"])
        history = state["history"]
        reference = state["reference"]
        torch.set_rng_state(state["rng"])
        if lead:
            metrics_log.truncate(start_step)
            log.info("resumed from %s at step %d", resume_from, start_step)
    else:
        t0 = time.perf_counter()
        reference = {  # (N, 2): log pi_ref of chosen, rejected
            "train": all_pair_logprobs(actor, data.train, reference=True),
            "eval": all_pair_logprobs(actor, data.eval, reference=True),
        }
        if lead:
            log.info("reference log-probs of %d pairs in %.1f s", len(data.train) + len(data.eval), time.perf_counter() - t0)

    from orchestrator.ppo import evaluate

    roles = gold_roles(actor, data, cfg, lead)

    def evaluate_now(step: int, name: str | None = None) -> dict:
        metrics = pair_eval(actor, data.eval, reference["eval"], loss_args)
        gen = evaluate(roles, data.gold_prompts, data.pad_id, gold=True) if roles is not None else None
        if gen is not None:
            metrics.update({"eval/gold": gen.gold, "eval/reward": gen.reward, "eval/length": gen.length})
        if lead:
            metrics_log.write(step, metrics)
            if name is not None:
                history[name] = {"pairs": {k: v for k, v in metrics.items()}, "generation": gen.record() if gen else None}
                if gen is not None:
                    write_samples(out / f"samples_{name.split('_')[0]}.jsonl", gen.samples)
            log.info("eval at step %d: %s", step, "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return metrics

    if "start_eval" not in history:
        evaluate_now(start_step, "start_eval")

    bar = tqdm(range(start_step, cfg.run.steps), initial=start_step, total=cfg.run.steps, desc="dpo",
               dynamic_ncols=True, disable=not (lead and report is None))
    for step in bar:
        t0 = time.perf_counter()
        mine = stream.next(B)[rank * (B // world) : (rank + 1) * (B // world)]
        rows = [data.train[i] for i in mine]
        ref = reference["train"][mine]
        stats = actor.train_step(rows, ref[:, 0], ref[:, 1], B, loss_args)
        tokens = sum(2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows)
        sums = _all_sum([stats[k] for k in PAIR_METRICS] + [tokens], device)
        seconds = time.perf_counter() - t0
        metrics = {name: s / B for name, s in zip(PAIR_METRICS.values(), sums)}
        metrics.update({"policy/lr": stats["lr"], "policy/grad_norm": stats["grad_norm"], "time/step": seconds,
                        "time/pairs_per_s": B / seconds, "time/tokens_per_s": sums[-1] / seconds})
        done = step + 1
        if lead and (done % cfg.run.log_every == 0 or done == cfg.run.steps):
            metrics_log.write(done, metrics)
        bar.set_postfix_str(f"loss {metrics['dpo/loss']:.4f} acc {metrics['dpo/accuracy']:.2f} margin {metrics['dpo/margin']:.3f}")
        if lead and report is not None and done % cfg.run.log_every == 0:
            log.info("step %d/%d: loss %.4f accuracy %.3f margin %.4f", done, cfg.run.steps,
                     metrics["dpo/loss"], metrics["dpo/accuracy"], metrics["dpo/margin"])
        if cfg.run.eval_every and done % cfg.run.eval_every == 0 and done < cfg.run.steps:
            metrics.update(evaluate_now(done))
        if report is not None and (done % cfg.run.log_every == 0 or done == cfg.run.steps):
            report({"step": done, **metrics})  # a barrier: every worker calls it at the same steps
        if done == cfg.run.steps or (cfg.run.save_every and done % cfg.run.save_every == 0):
            state = {"step": done, "data": stream.state_dict(), "history": history, "reference": reference,
                     "rng": torch.get_rng_state()}
            save_checkpoint(actor, cfg, done, state, device)
    bar.close()

    evaluate_now(cfg.run.steps, "end_eval")
    actor.export(str(out / "policy"))  # a collective under ZeRO-3; rank 0 writes
    summary = None
    if lead:
        records = metrics_log.read()
        plot_curves(records, out / "curves.png", keys=("dpo/loss", "dpo/accuracy", "eval/accuracy", "dpo/margin", "logps/chosen"))
        summary = _summary(cfg, records, history, time.perf_counter() - timer, world)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        metrics_log.close()
    tdist.barrier()
    return summary


# train_step sum -> metric name (each divided by the global pair count)
PAIR_METRICS = {
    "loss": "dpo/loss",
    "accuracy": "dpo/accuracy",
    "margin": "dpo/margin",
    "chosen_reward": "dpo/chosen_reward",
    "rejected_reward": "dpo/rejected_reward",
    "logps_chosen": "logps/chosen",
    "logps_rejected": "logps/rejected",
}


def _all_sum(values: list[float], device) -> list[float]:
    import torch.distributed as tdist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    tdist.all_reduce(t)
    return t.cpu().tolist()


def all_pair_logprobs(actor, rows: list, reference: bool = False) -> torch.Tensor:
    """(N, 2) sequence log-probs (chosen, rejected) of every row, sharded over the workers and all-gathered.

    Every worker gets the same number of rows (the list is padded by cycling), so under ZeRO-3 all
    of them run the same number of forward passes (each is a collective there).
    """
    import torch.distributed as tdist

    world, rank = tdist.get_world_size(), tdist.get_rank()
    per = math.ceil(len(rows) / world)
    mine = [rows[i % len(rows)] for i in range(rank * per, (rank + 1) * per)]
    chosen, rejected = actor.pair_logprobs(mine, reference=reference)
    local = torch.stack([chosen, rejected], dim=1).to(actor.engine.device)
    parts = [torch.empty_like(local) for _ in range(world)]
    tdist.all_gather(parts, local)
    return torch.cat(parts).cpu()[: len(rows)]


def pair_eval(actor, rows: list, ref: torch.Tensor, loss_args: dict) -> dict:
    """Held-out pairs: DPO loss, implicit-reward accuracy and margin, policy log-probs (identical on every rank)."""
    from losses.dpo import dpo_loss

    logps = all_pair_logprobs(actor, rows)
    losses, chosen_reward, rejected_reward = dpo_loss(logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], **loss_args)
    return {
        "eval/loss": losses.mean().item(),
        "eval/accuracy": (chosen_reward > rejected_reward).float().mean().item(),
        "eval/margin": (chosen_reward - rejected_reward).mean().item(),
        "eval/logps_chosen": logps[:, 0].mean().item(),
        "eval/logps_rejected": logps[:, 1].mean().item(),
    }


def gold_roles(actor, data: PairData, cfg: DPOConfig, lead: bool):
    """The roles PPO's held-out evaluation (`orchestrator.ppo.evaluate`) drives: this actor and the
    annotators' reward; None without gold prompts, or on ranks that need not sample.

    Rank 0 samples; under ZeRO-3 every rank must enter generation (a collective), so all do.
    """
    if not data.gold_prompts or not (lead or cfg.policy.zero_stage == 3):
        return None
    from actors.reward import RewardActor
    from orchestrator.config import RewardConfig
    from orchestrator.ppo import Roles

    reward = RewardActor(RewardConfig(kind="function", function="orchestrator.task:annotator_reward"))
    return Roles(policy=_Hosted("policy", actor), critic=None, reward=_Hosted("reward", reward), reference=None)


class _Hosted(LocalGroup):
    """An existing role object as a `LocalGroup` (world size 1), so PPO's `evaluate` can drive it."""

    def __init__(self, name: str, role: object):
        self.name, self.role_cls, self.role = name, type(role), role


def save_checkpoint(actor, cfg: DPOConfig, step: int, state: dict, device) -> None:
    """Every worker writes its DeepSpeed shard into one atomic step folder that rank 0 opens and publishes."""
    import torch.distributed as tdist

    lead = tdist.get_rank() == 0
    with contextlib.ExitStack() as stack:
        box = [str(stack.enter_context(ckpt.atomic_checkpoint(cfg.run.output_dir, step, cfg.run.keep_checkpoints)))] if lead else [None]
        tdist.broadcast_object_list(box, src=0, device=device)
        folder = Path(box[0])
        actor.save_checkpoint(str(folder))
        actor.export(str(folder / "policy_hf"))
        tdist.barrier()
        if lead:
            ckpt.save_driver_state(folder, state)
    tdist.barrier()  # published before anyone moves on


# ------------------------------------------------------------------------------------- summary


def _summary(cfg: DPOConfig, records: list[dict], history: dict, seconds: float, world: int) -> dict:
    train = [r for r in records if "dpo/loss" in r]
    k = max(1, min(10, len(train) // 4 or 1))

    def mean(key, rs):
        return sum(r[key] for r in rs) / len(rs) if rs else math.nan

    return {
        "loss_type": cfg.dpo.loss,
        "steps": train[-1]["step"] if train else 0,
        "workers": world,
        "train_loss_first": mean("dpo/loss", train[:k]),
        "train_loss_last": mean("dpo/loss", train[-k:]),
        "train_accuracy_first": mean("dpo/accuracy", train[:k]),
        "train_accuracy_last": mean("dpo/accuracy", train[-k:]),
        "eval_curve": [{"step": r["step"], "accuracy": r["eval/accuracy"], **({"gold": r["eval/gold"]} if "eval/gold" in r else {})}
                       for r in records if "eval/accuracy" in r],
        "eval_start": history.get("start_eval"),
        "eval_end": history.get("end_eval"),
        "wall_time_s": round(seconds, 1),
    }


def _print_summary(summary: dict, out: Path) -> None:
    s, e = summary["eval_start"] or {}, summary["eval_end"] or {}
    sp, ep = s.get("pairs", {}), e.get("pairs", {})
    print(f"\nDPO ({summary['loss_type']}) finished: {summary['steps']} steps on {summary['workers']} worker(s) "
          f"in {summary['wall_time_s']:.0f} s; outputs in {out}")
    print(f"  training loss (mean of first vs last steps):        {summary['train_loss_first']:.4f} -> {summary['train_loss_last']:.4f}")
    print(f"  training accuracy (implicit reward, chosen > rejected): {summary['train_accuracy_first']:.3f} -> {summary['train_accuracy_last']:.3f}")
    print(f"  held-out pairs: accuracy {sp.get('eval/accuracy', math.nan):.3f} -> {ep.get('eval/accuracy', math.nan):.3f}, "
          f"margin {sp.get('eval/margin', math.nan):.4f} -> {ep.get('eval/margin', math.nan):.4f}, "
          f"loss {sp.get('eval/loss', math.nan):.4f} -> {ep.get('eval/loss', math.nan):.4f}")
    curve = summary.get("eval_curve") or []
    if curve:
        print("  held-out accuracy by step: " + ", ".join(f"{c['step']}: {c['accuracy']:.3f}" for c in curve))
    sg, eg = s.get("generation") or {}, e.get("generation") or {}
    if sg.get("gold") is not None:
        print(f"  held-out GOLD score of sampled answers (rlhf ppo's evaluation): {sg['gold']:.4f} -> {eg['gold']:.4f}")
        print(f"  held-out annotator reward (what the labels reward):            {sg['reward']:.4f} -> {eg['reward']:.4f}")
        print(f"  held-out response length (tokens):                             {sg['length_tokens']:.1f} -> {eg['length_tokens']:.1f}")
        st, et = sg.get("task") or {}, eg.get("task") or {}
        if "disputed_share" in st:
            print(f"  held-out answers with the disputed casual ending: {st['disputed_share']:.0%} -> {et['disputed_share']:.0%}")
    print(f"  exported policy: {out / 'policy'}   curves: {out / 'curves.png'}   metrics: {out / 'metrics.jsonl'}")
