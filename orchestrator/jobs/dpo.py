"""`rlhf dpo`: DPO, IPO and cDPO on one policy role, hosted like every role.

One step::

    pairs = stream.next(dpo.batch_size)                                  # the same global batch for any W
    stats = policy.scatter(DPOActor.train_step, pairs, global_pairs=B)   # chosen+rejected in one forward; one optimizer step

Hosting
-------
The policy is a role group (`cluster.create_groups`), as in PPO and `rlhf rm`: one object in this
process in local mode, or `policy.replicas` Ray actors forming one DeepSpeed ZeRO data-parallel engine
(`policy.zero_stage`) in ray mode. A batch is scattered as whole pairs, each replica takes its share
through `actors.trainer.train_step` with the GLOBAL pair count, so W replicas give the numbers of one
(tests/test_dpo_ray.py). (DPO used to scale out on Ray Train's TorchTrainer instead; moving it onto the
role groups deleted its second driver, its own checkpoint collectives and its faked evaluation roles,
and made local == ray hold by the same code as PPO's.)

Reference log-probs
-------------------
Computed once, before the first update, by the same role (with LoRA: its adapter-free base), for
every training and held-out pair, and stored per pair in every checkpoint (`driver.pt`), so there is
never a second model and a resumed full fine-tune keeps the reference of the initial weights.

Evaluation
----------
- Held-out pairs (at the start, every `run.eval_every` steps, at the end): DPO loss, implicit-reward
  accuracy (chosen reward > rejected reward) and margin, and the policy's log-probs of both answers.
- The generation evaluation of every job (`orchestrator.jobs.evaluation`), samples in `samples_start.jsonl`
  / `samples_end.jsonl`: with the built-in task's data, one sampled answer per held-out built-in
  prompt, scored by the gold score and by the annotators' mean utility
  (`orchestrator.builtin.world.annotator_reward`, PPO's default training reward); with other data, answers to
  the first held-out prompts, unscored (`orchestrator.jobs.policy.PolicyJob`).

Everything else (output folder, metrics, checkpoints, resume, summary) is the job skeleton's
(`orchestrator.core.job`).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch

from actors.dpo import DPOActor, dpo_loss_args
from actors.pairs import PairLogProbs, collate_pairs
from actors.trainer import merge_stats
from cluster import get
from losses.dpo import dpo_loss
from orchestrator.config import DPOConfig
from orchestrator.core.job import Evaluation, first_and_last
from orchestrator.core.streams import IndexStream
from orchestrator.data import load_preferences
from orchestrator.jobs.policy import PolicyJob

log = logging.getLogger("rlhf.dpo")
ID_COLUMNS = ["prompt_ids", "chosen_ids", "rejected_ids"]


def pair_logprobs(group, rows: list[dict], pad_id: int, reference: bool = False) -> torch.Tensor:
    """(N, 2) sequence log-probs (chosen, rejected) of every row, from every replica of `group`."""
    out: PairLogProbs = get(group.scatter_padded(DPOActor.pair_logprobs, collate_pairs(rows, pad_id), reference=reference))
    return torch.stack([out.chosen, out.rejected], dim=1)


class DPOJob(PolicyJob):
    name = "dpo"
    curve_keys = ("dpo/loss", "dpo/accuracy", "eval/accuracy", "dpo/margin", "logps/chosen")
    role_cls = DPOActor

    def __init__(self, cfg: DPOConfig):
        super().__init__(cfg)
        train_set, _ = load_preferences(cfg.data, self.tokenizer)
        eval_set, _ = load_preferences(cfg.data, self.tokenizer, eval_set=True)
        if cfg.dpo.eval_pairs:
            eval_set = eval_set.select(range(min(cfg.dpo.eval_pairs, len(eval_set))))
        self.weight_key = "pair_weight" if cfg.data.weight_column else None  # per-pair weights of the training loss
        self.train_rows = train_set.select_columns(ID_COLUMNS + ([self.weight_key] if self.weight_key else [])).to_list()
        self.eval_rows = eval_set.select_columns(ID_COLUMNS).to_list()
        self.prepare(self.train_rows, eval_set, ("chosen_ids", "rejected_ids"))
        log.info("data: %d train pairs, %d eval pairs, %d held-out prompts sampled (gold: %s)", len(self.train_rows),
                 len(self.eval_rows), len(self.sample_rows), bool(self.gold_rows))
        self.loss_args = dpo_loss_args(cfg.dpo.loss, cfg.dpo.beta, cfg.dpo.label_smoothing)
        self.stream = IndexStream(len(self.train_rows), cfg.run.seed)
        self.reference: dict | None = None  # {"train": (N, 2), "eval": (M, 2)} log pi_ref of chosen, rejected
        self.reference_pass_s: float | None = None  # seconds the reference pass took (None when resumed with it)

    def role_kwargs(self) -> dict:
        return {"pairs_per_step": self.cfg.dpo.batch_size}

    def references(self) -> dict:
        """The reference log-probs, computed on first use (before the first update) unless resumed."""
        if self.reference is None:
            t0 = time.perf_counter()
            self.reference = {"train": pair_logprobs(self.policy, self.train_rows, self.pad_id, reference=True),
                              "eval": pair_logprobs(self.policy, self.eval_rows, self.pad_id, reference=True)}
            self.reference_pass_s = time.perf_counter() - t0
            log.info("reference log-probs of %d pairs in %.1f s", len(self.train_rows) + len(self.eval_rows),
                     self.reference_pass_s)
        return self.reference

    def step(self, step: int) -> dict:
        B = self.cfg.dpo.batch_size
        reference = self.references()["train"]
        t0 = time.perf_counter()
        idx = self.stream.next(B)
        rows = [self.train_rows[i] for i in idx]
        pairs = collate_pairs(rows, self.pad_id, weight_key=self.weight_key)
        pairs.ref_chosen, pairs.ref_rejected = reference[idx, 0].contiguous(), reference[idx, 1].contiguous()
        metrics = merge_stats(get(self.policy.scatter(DPOActor.train_step, pairs, global_pairs=B, loss_args=self.loss_args)))
        seconds = time.perf_counter() - t0
        tokens = sum(2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows)
        metrics.update({"time/step": seconds, "time/pairs_per_s": B / seconds, "time/tokens_per_s": tokens / seconds})
        return metrics

    def evaluate(self, stage: str) -> Evaluation:
        ref = self.references()["eval"]
        logps = pair_logprobs(self.policy, self.eval_rows, self.pad_id)
        losses, chosen_reward, rejected_reward = dpo_loss(logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], **self.loss_args)
        metrics = {
            "eval/loss": losses.mean().item(),
            "eval/accuracy": (chosen_reward > rejected_reward).float().mean().item(),
            "eval/margin": (chosen_reward - rejected_reward).mean().item(),
            "eval/logps_chosen": logps[:, 0].mean().item(),
            "eval/logps_rejected": logps[:, 1].mean().item(),
        }
        return self.with_generation(metrics, {"pairs": dict(metrics)})

    def state_dict(self) -> dict:
        return {"data": self.stream.state_dict(), "reference": self.references()}

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state["data"])
        self.reference = state["reference"]

    def summary(self, records: list[dict], history: dict) -> dict:
        loss_first, loss_last, _ = first_and_last(records, "dpo/loss", 10)
        accuracy_first, accuracy_last, _ = first_and_last(records, "dpo/accuracy", 10)
        return {
            "loss_type": self.cfg.dpo.loss,
            "reference_pass_s": self.reference_pass_s,
            "replicas": self.policy.world_size,
            "train_loss_first": loss_first,
            "train_loss_last": loss_last,
            "train_accuracy_first": accuracy_first,
            "train_accuracy_last": accuracy_last,
            "eval_curve": [{"step": r["step"], "accuracy": r["eval/accuracy"], **({"gold": r["eval/gold"]} if "eval/gold" in r else {})}
                           for r in records if "eval/accuracy" in r],
        }

    def progress(self, m: dict) -> str:
        return f"loss {m['dpo/loss']:.4f} acc {m['dpo/accuracy']:.2f} margin {m['dpo/margin']:.3f}"

    def print_summary(self, summary: dict, out: Path) -> None:
        s, e = summary["eval_start"] or {}, summary["eval_end"] or {}
        sp, ep = s.get("pairs", {}), e.get("pairs", {})
        print(f"\nDPO ({summary['loss_type']}) finished: {summary['steps']} steps on {summary['replicas']} replica(s) "
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
        elif sg:
            print(f"  held-out samples: {out / 'samples_end.jsonl'} (response length {sg['length_tokens']:.1f} -> "
                  f"{eg['length_tokens']:.1f} tokens)")
        print(f"  exported policy: {out / 'policy'}   curves: {out / 'curves.png'}   metrics: {out / 'metrics.jsonl'}")
