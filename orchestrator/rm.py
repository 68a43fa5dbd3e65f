"""`rlhf rm`: train a reward model on preference pairs, evaluate it, save a self-describing folder.

One step reads like the algorithm::

    pairs = stream.next(rm.batch_size)                                  # a length-grouped minibatch
    stats = reward_model.scatter(RewardModelActor.train_step, pairs)    # loss from losses/, one optimizer step

The role is `actors.reward_trainer.RewardModelActor`, hosted by `cluster.create_groups` exactly like
the PPO roles: one object in local mode, or `model.replicas` Ray actors forming one DeepSpeed ZeRO
data-parallel engine (`model.zero_stage`). Checkpoints are atomic folders (`orchestrator.checkpoint`)
with the DeepSpeed state, the weights in Hugging Face format (`model_hf/`) and the driver state (step,
data position, RNG); `run.resume=auto` continues from the latest one, and the resumed run takes the
same steps as an uninterrupted one.

Outputs in `run.output_dir`: `metrics.jsonl` (+ TensorBoard), `curves.png`, `model/` (the saved reward
model: safetensors, tokenizer, `rlhf_reward` in its config: objective, head layout, atoms or
components, normalisation statistics, held-out accuracy), `eval/` (`orchestrator.rm_eval`: report.json
and plots), `summary.json`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from actors.pairs import Pairs, collate_pairs
from actors.reward_trainer import PairOutputs, RewardModelActor, head_from_config
from cluster import RoleSpec, create_groups, get
from orchestrator import checkpoint as ckpt
from orchestrator.config import RMConfig, to_yaml
from orchestrator.metrics import MetricsLogger, plot_curves

log = logging.getLogger("rlhf.rm")
ROLE = "reward_model"


def length_grouped_batches(lengths: list[int], batch_size: int, generator: torch.Generator,
                           group: int = 16) -> list[list[int]]:
    """One epoch of batches (index lists, full batches only; the remainder waits for the next epoch).

    Shuffle, cut into groups of `group` batches, sort each group by length, cut it into batches and
    shuffle the batches: batches hold similar lengths (about 1.6x less padding compute on the built-in
    pairs) while every epoch still sees a new random grouping.
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    order = order[: len(order) - len(order) % batch_size]
    span = batch_size * group
    batches = []
    for g in range(0, len(order), span):
        chunk = sorted(order[g : g + span], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


class PairStream:
    """Minibatches of pair indices, epoch after epoch; its position is part of a checkpoint.

    Each epoch is `length_grouped_batches` under the seed (seed, epoch):
    batches hold pairs of similar length (less padding), and the order is a pure function of the
    epoch, so (epoch, batch index) is the whole state.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        if len(lengths) < batch_size:
            raise ValueError(f"rm.batch_size={batch_size} is more than the {len(lengths)} training pairs")
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.epoch, self.index = 0, 0
        self._batches = self._epoch_batches()

    def _epoch_batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        return length_grouped_batches(self.lengths, self.batch_size, g)

    def next(self) -> list[int]:
        if self.index >= len(self._batches):
            self.epoch, self.index = self.epoch + 1, 0
            self._batches = self._epoch_batches()
        self.index += 1
        return self._batches[self.index - 1]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._batches = self._epoch_batches()


def _rows(dataset, limit: int = 0) -> list[dict]:
    rows = dataset.to_list()
    return rows[:limit] if limit else rows


def head_outputs(group, rows: list[dict], pad_id: int) -> tuple[PairOutputs, Pairs]:
    """Head outputs of `rows` from every replica (rows padded to a multiple of the replicas, then trimmed)."""
    n = group.world_size
    padded = rows + (rows * n)[: (-len(rows)) % n]
    pairs = collate_pairs(padded, pad_id)
    outs = get(group.scatter(RewardModelActor.outputs, pairs))
    k = len(rows)
    return outs.select(slice(0, k)), pairs.select(slice(0, k))


def rlhf_reward(cfg: RMConfig, group, norm_rows: list[dict], pad_id: int, extra: dict) -> dict:
    """The `rlhf_reward` entry of the saved config: the head layout, the normalisation statistics of the
    mean utility over the responses of `norm_rows` (training pairs), and `extra` (provenance, accuracy)."""
    head = head_from_config(cfg.model)
    outs, _ = head_outputs(group, norm_rows, pad_id)
    mu = torch.cat([head.mean(outs.chosen), head.mean(outs.rejected)]).double()
    head.norm_mean = float(mu.mean())
    head.norm_std = float(mu.std()) if len(mu) > 1 and float(mu.std()) > 0 else 1.0
    return {**head.to_dict(), "normalisation": f"mean utility over the {len(mu)} responses of {len(norm_rows)} training pairs",
            **extra}


def evaluate(group, cfg: RMConfig, rows: list[dict], pad_id: int) -> tuple[dict, dict]:
    from orchestrator.rm_eval import _group_labels, evaluate_outputs

    outs, pairs = head_outputs(group, rows, pad_id)
    groups = _group_labels(rows, cfg.rm.group_by, cfg.data.eval_path or f"{cfg.data.path}[{cfg.data.eval_split}]")
    return evaluate_outputs(head_from_config(cfg.model), outs.chosen, outs.rejected, pairs.chosen_len, pairs.rejected_len, groups)


def _save_checkpoint(group, cfg: RMConfig, step: int, driver_state: dict, norm_rows, pad_id, extra) -> Path:
    with ckpt.atomic_checkpoint(cfg.run.output_dir, step, cfg.run.keep_checkpoints) as tmp:
        get(group.broadcast(RewardModelActor.save_checkpoint, str(tmp)))
        info = rlhf_reward(cfg, group, norm_rows, pad_id, {**extra, "step": step})
        get(group.broadcast(RewardModelActor.export, str(tmp / "model_hf"), info))
        ckpt.save_driver_state(tmp, driver_state)
    return ckpt.checkpoint_root(cfg.run.output_dir) / f"step_{step:06d}"


def train(cfg: RMConfig) -> dict:
    """Train, evaluate and save the reward model of `cfg`; returns the summary (also in summary.json)."""
    from actors.modeling import load_tokenizer
    from actors.lm import merge_stats
    from orchestrator.data import load_preferences
    from orchestrator.ppo import connect_hosting, resolve_model_path
    from orchestrator.rm_eval import ceiling_report, print_report, write_report

    timer = time.perf_counter()
    out = Path(cfg.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    torch.manual_seed(cfg.run.seed)

    backbone = resolve_model_path(cfg.model.path)
    tokenizer = load_tokenizer(backbone, trust_remote_code=cfg.model.trust_remote_code)
    pad_id = tokenizer.pad_token_id
    train_set, train_stats = load_preferences(cfg.data, tokenizer)
    eval_set, eval_stats = load_preferences(cfg.data, tokenizer, eval_set=True)
    train_rows = _rows(train_set)
    eval_rows = _rows(eval_set, cfg.rm.eval_max_pairs)
    norm_rows = train_rows[: cfg.rm.norm_pairs or None]
    log.info("data: %d training pairs, %d held-out pairs", len(train_rows), len(eval_rows))
    lengths = [len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in train_rows]
    stream = PairStream(lengths, cfg.rm.batch_size, cfg.run.seed)
    extra = {"backbone": cfg.model.path, "trained_on": train_stats.source, "train_pairs": len(train_rows),
             "lora_merged": cfg.model.lora.enabled}

    connect_hosting(cfg, roles=("model",))
    t0 = time.perf_counter()
    group = create_groups(cfg.run.mode, {ROLE: RoleSpec(
        RewardModelActor, cfg.model,
        kwargs=dict(model_path=backbone, seed=cfg.run.seed, total_steps=cfg.run.steps, minibatch_size=cfg.rm.batch_size),
    )})[ROLE]
    log.info("reward model ready in %.1f s (%s mode, %d replica(s))", time.perf_counter() - t0, cfg.run.mode, group.world_size)

    metrics_log = MetricsLogger(out, resume=True)
    start_step = 0
    resume_from = ckpt.resolve_resume(cfg.run.resume, cfg.run.output_dir)
    if resume_from is not None:
        state = ckpt.load_driver_state(resume_from)
        get(group.broadcast(RewardModelActor.load_checkpoint, str(resume_from)))
        start_step = int(state["step"])
        stream.load_state_dict(state["data"])
        torch.set_rng_state(state["rng"])
        metrics_log.truncate(start_step)
        log.info("resumed from %s at step %d", resume_from, start_step)
    elif cfg.run.eval_every:
        report, _ = evaluate(group, cfg, eval_rows, pad_id)
        metrics_log.write(0, {"eval/accuracy": report["pair_accuracy"]})

    from tqdm import tqdm

    bar = tqdm(range(start_step, cfg.run.steps), initial=start_step, total=cfg.run.steps, desc=f"rm {cfg.model.objective}",
               dynamic_ncols=True)
    for step in bar:
        t0 = time.perf_counter()
        pairs = collate_pairs([train_rows[i] for i in stream.next()], pad_id)
        metrics = merge_stats(get(group.scatter(RewardModelActor.train_step, pairs, global_pairs=cfg.rm.batch_size)))
        metrics["time/step"] = time.perf_counter() - t0
        if (step + 1) % cfg.run.log_every == 0 or step + 1 == cfg.run.steps:
            metrics_log.write(step + 1, metrics)
        bar.set_postfix_str(f"loss {metrics['rm/loss']:.3f} acc {metrics['rm/accuracy']:.3f}")
        if cfg.run.eval_every and (step + 1) % cfg.run.eval_every == 0 and step + 1 < cfg.run.steps:
            report, _ = evaluate(group, cfg, eval_rows, pad_id)
            metrics_log.write(step + 1, {"eval/accuracy": report["pair_accuracy"]})
        last = step + 1 == cfg.run.steps
        if last or (cfg.run.save_every and (step + 1) % cfg.run.save_every == 0):
            state = {"step": step + 1, "data": stream.state_dict(), "rng": torch.get_rng_state()}
            _save_checkpoint(group, cfg, step + 1, state, norm_rows, pad_id, extra)
    bar.close()

    report, arrays = evaluate(group, cfg, eval_rows, pad_id)
    report.update({**ceiling_report(eval_rows), "data": eval_stats.source})
    metrics_log.write(cfg.run.steps, {"eval/accuracy": report["pair_accuracy"]})
    info = rlhf_reward(cfg, group, norm_rows, pad_id, {**extra, "step": cfg.run.steps, "eval_data": eval_stats.source,
                                                        "eval_pair_accuracy": report["pair_accuracy"]})
    get(group.broadcast(RewardModelActor.export, str(out / "model"), info))
    report["model"] = str(out / "model")
    write_report(report, arrays, out / "eval")
    records = metrics_log.read()
    plot_curves(records, out / "curves.png", keys=("rm/loss", "rm/accuracy", "rm/grad_norm"))
    metrics_log.close()
    group.shutdown()
    train_acc = [r["rm/accuracy"] for r in records if "rm/accuracy" in r]
    k = max(1, min(20, len(train_acc) // 4))
    summary = {
        "objective": cfg.model.objective,
        "steps": cfg.run.steps,
        "train_pairs": len(train_rows),
        "train_accuracy_first": sum(train_acc[:k]) / k if train_acc else None,
        "train_accuracy_last": sum(train_acc[-k:]) / k if train_acc else None,
        "eval": report,
        "norm_mean": info["norm_mean"],
        "norm_std": info["norm_std"],
        "model": str(out / "model"),
        "wall_time_s": round(time.perf_counter() - timer, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nrlhf rm finished: {cfg.run.steps} steps in {summary['wall_time_s']:.0f} s; saved model {out / 'model'}")
    if train_acc:
        print(f"  training batch accuracy (first vs last {k} steps): {summary['train_accuracy_first']:.4f} -> "
              f"{summary['train_accuracy_last']:.4f}")
    print_report(report, out / "eval")
    return summary
