"""`rlhf rm`: train a reward model on preference pairs, evaluate it, save a self-describing folder.

One step reads like the algorithm::

    pairs = stream.next()                                               # a length-grouped minibatch
    stats = reward_model.scatter(RewardModelActor.train_step, pairs)    # loss from losses/, one optimizer step

The role is `actors.reward_trainer.RewardModelActor`, hosted by `cluster.create_groups` exactly like
the PPO roles: one object in local mode, or `model.replicas` Ray actors forming one DeepSpeed ZeRO
data-parallel engine (`model.zero_stage`). Everything around the step (output folder, metrics,
evaluation at the start, every run.eval_every steps and at the end, checkpoints with the weights in
Hugging Face format as `model_hf/`, resume, summary) is the job skeleton's (`orchestrator.core.job`).

Outputs in `run.output_dir`: `metrics.jsonl` (+ TensorBoard), `curves.png`, `model/` (the saved reward
model: safetensors, tokenizer, `rlhf_reward` in its config: objective, head layout, rendering, atoms or
components, normalisation statistics, held-out accuracy), `eval/` (`orchestrator.jobs.rm_eval`: report.json
and plots), `summary.json`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from actors.modeling import load_tokenizer
from actors.pairs import Pairs, collate_pairs
from actors.reward_trainer import PairOutputs, RewardModelActor, head_from_config
from actors.trainer import merge_stats
from cluster import RoleSpec, create_groups, get
from orchestrator.config import RMConfig
from orchestrator.core import preflight
from orchestrator.core.job import Evaluation, Job, Trained, first_and_last
from orchestrator.core.streams import LengthGroupedStream
from orchestrator.data import load_preferences
from orchestrator.jobs.rm_eval import ceiling_report, evaluate_outputs, group_labels, print_report, write_report

log = logging.getLogger("rlhf.rm")
ROLE = "reward_model"


def head_outputs(group, rows: list[dict], pad_id: int) -> tuple[PairOutputs, Pairs]:
    """Head outputs of `rows` from every replica of `group`, and the collated pairs."""
    pairs = collate_pairs(rows, pad_id)
    return get(group.scatter_padded(RewardModelActor.outputs, pairs)), pairs


class RMJob(Job):
    name = "rm"
    curve_keys = ("rm/loss", "rm/accuracy", "rm/grad_norm")

    def __init__(self, cfg: RMConfig):
        self.cfg = cfg
        self.info = preflight.check_model("model", cfg.model, kind="classifier", exclude=("score",))
        tokenizer = load_tokenizer(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
        self.pad_id = tokenizer.pad_token_id
        train_set, self.train_stats = load_preferences(cfg.data, tokenizer)
        eval_set, self.eval_stats = load_preferences(cfg.data, tokenizer, eval_set=True)
        self.train_rows = train_set.to_list()
        self.eval_rows = eval_set.to_list()[: cfg.rm.eval_max_pairs or None]
        self.eval_groups = group_labels(self.eval_rows, cfg.rm.group_by, self.eval_stats.source)
        self.norm_rows = self.train_rows[: cfg.rm.norm_pairs or None]
        self.weight_key = "pair_weight" if cfg.data.weight_column else None  # per-pair weights of the training loss
        log.info("data: %d training pairs, %d held-out pairs", len(self.train_rows), len(self.eval_rows))
        answers = ("chosen_ids", "rejected_ids")
        preflight.check_positions(self.info, preflight.longest_row(self.train_rows + self.eval_rows, answers),
                                  "data.max_prompt_tokens", "the longest prompt + response of the data")
        lengths = [preflight.longest_row([r], answers) for r in self.train_rows]
        self.stream = LengthGroupedStream(lengths, cfg.rm.batch_size, cfg.run.seed, what="pairs (rm.batch_size)")
        self.provenance = {"backbone": cfg.model.path, "trained_on": self.train_stats.source,
                           "train_pairs": len(self.train_rows), "lora_merged": cfg.model.lora.enabled}
        self.group = None
        self._norm: tuple[float, float] | None = None  # (mean, std) of the mean utility under the current weights
        self.report: dict = {}
        self.arrays: dict = {}

    def fingerprint(self) -> dict:
        head = head_from_config(self.cfg.model)
        return {"job": self.name, "model": preflight.model_fingerprint(self.cfg.model.path, self.info),
                "model_layout": preflight.layout_fingerprint(self.cfg.model), "head": [head.objective, head.num_labels],
                "train_rows": len(self.train_rows)}

    def role_configs(self) -> dict:
        return {ROLE: self.cfg.model}

    def start(self) -> None:
        t0 = time.perf_counter()
        spec = RoleSpec(RewardModelActor, self.cfg.model, kwargs=dict(
            model_path=self.cfg.model.path, seed=self.cfg.run.seed, total_steps=self.cfg.run.steps,
            minibatch_size=self.cfg.rm.batch_size))
        self.group = create_groups(self.cfg.run.hosting(), {ROLE: spec})[ROLE]
        self.groups = [self.group]
        log.info("reward model ready in %.1f s (%s mode, %d replica(s))", time.perf_counter() - t0, self.cfg.run.mode,
                 self.group.world_size)

    def step(self, step: int) -> dict:
        t0 = time.perf_counter()
        pairs = collate_pairs([self.train_rows[i] for i in self.stream.next()], self.pad_id, weight_key=self.weight_key)
        self._norm = None  # the weights change: the normalisation is computed again when next needed
        metrics = merge_stats(get(self.group.scatter(RewardModelActor.train_step, pairs, global_pairs=self.cfg.rm.batch_size)))
        metrics["time/step"] = time.perf_counter() - t0
        return metrics

    def evaluate(self, stage: str) -> Evaluation:
        outs, pairs = head_outputs(self.group, self.eval_rows, self.pad_id)
        report, arrays = evaluate_outputs(self.head(), outs.chosen, outs.rejected, pairs.chosen_len,
                                          pairs.rejected_len, self.eval_groups)
        report.update({**ceiling_report(self.eval_rows), "data": self.eval_stats.source})
        if stage == "end":
            self.report, self.arrays = report, arrays
        return Evaluation({"eval/accuracy": report["pair_accuracy"]}, report)

    def head(self):
        """The saved head: the objective's layout, and the rendering the data loader used."""
        head = head_from_config(self.cfg.model)
        head.chat_template = self.cfg.data.chat_template
        return head

    def rlhf_reward(self, extra: dict) -> dict:
        """The `rlhf_reward` entry of the saved config: the head layout and rendering, the normalisation
        statistics of the mean utility over the responses of the first training pairs, provenance, `extra`."""
        head = self.head()
        if self._norm is None:  # once per set of weights: the final checkpoint and the export share it
            outs, _ = head_outputs(self.group, self.norm_rows, self.pad_id)
            mu = torch.cat([head.mean(outs.chosen), head.mean(outs.rejected)]).double()
            self._norm = (float(mu.mean()), float(mu.std()) if len(mu) > 1 and float(mu.std()) > 0 else 1.0)
        head.norm_mean, head.norm_std = self._norm
        return {**head.to_dict(), "normalisation": f"mean utility over the {2 * len(self.norm_rows)} responses of "
                f"{len(self.norm_rows)} training pairs", **self.provenance, **extra}

    def trained(self) -> dict[str, Trained]:
        """The reward model; its export carries the `rlhf_reward` entry (head, rendering, normalisation)."""
        return {"model": Trained(self.group, RewardModelActor, export_args=lambda: (self.rlhf_reward({}),))}

    def state_dict(self) -> dict:
        return {"data": self.stream.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state["data"])

    def finish(self, out: Path) -> dict:
        if not self.report:  # resumed after the end evaluation: compute it again for the report and plots
            self.evaluate("end")
        info = self.rlhf_reward({"step": self.cfg.run.steps, "eval_data": self.eval_stats.source,
                                 "eval_pair_accuracy": self.report["pair_accuracy"]})
        self.export("model", out / "model", info)
        self.report["model"] = str(out / "model")
        write_report(self.report, self.arrays, out / "eval")
        return {"objective": self.cfg.model.objective, "train_pairs": len(self.train_rows), "eval": self.report,
                "norm_mean": info["norm_mean"], "norm_std": info["norm_std"], "model": str(out / "model")}

    def summary(self, records: list[dict], history: dict) -> dict:
        first, last, k = first_and_last(records, "rm/accuracy", 20)
        return {"train_accuracy_first": first, "train_accuracy_last": last, "first_k": k}

    def progress(self, m: dict) -> str:
        return f"loss {m['rm/loss']:.3f} acc {m['rm/accuracy']:.3f}"

    def print_summary(self, summary: dict, out: Path) -> None:
        print(f"\nrlhf rm finished: {summary['steps']} steps in {summary['wall_time_s']:.0f} s; saved model {out / 'model'}")
        if summary["first_k"]:
            print(f"  training batch accuracy (first vs last {summary['first_k']} steps): "
                  f"{summary['train_accuracy_first']:.4f} -> {summary['train_accuracy_last']:.4f}")
        print_report(summary["eval"], out / "eval")
