"""`rlhf sft`: supervised fine-tuning on demonstrations, and the built-in policy's warm start.

One step::

    rows = stream.next(sft.batch_size)                                    # prompt + response rows
    stats = policy.scatter(SFTActor.train_step, sequences, global_tokens)  # token-mean cross-entropy on the responses

The role is `actors.sft.SFTActor` (a `PolicyActor`), hosted like every role: in this process (local
mode) or as `policy.replicas` Ray actors forming one DeepSpeed ZeRO engine. The loss counts response
tokens only (prompt tokens are context) and is divided by the response tokens of the whole batch, so
replicas and micro-batches do not change it. Everything around the step (output folder, metrics,
evaluation, checkpoints, resume, summary) is the job skeleton's (`orchestrator.core.job`). Evaluation:
held-out cross-entropy (`eval/loss`, `eval/ppl`) and the generation evaluation of every job (on the
built-in world's data: gold score, annotator reward, length; on other data: samples and length;
`orchestrator.jobs.evaluation`, `orchestrator.jobs.policy.PolicyJob`). The built-in policies are this
job run with its defaults on the built-in base models (`orchestrator.builtin.policy`).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from actors.pairs import collate_sequences
from actors.sft import SFTActor, TokenLoss
from actors.trainer import merge_stats
from cluster import get
from orchestrator.config import ConfigError, SFTConfig
from orchestrator.core import preflight
from orchestrator.core.job import Evaluation, first_and_last
from orchestrator.core.streams import IndexStream
from orchestrator.data import load_sft
from orchestrator.jobs.policy import PolicyJob

logger = logging.getLogger("rlhf.sft")


def _tokens(rows: list[dict]) -> int:
    return sum(len(r["response_ids"]) for r in rows)


class SFTJob(PolicyJob):
    name = "sft"
    curve_keys = ("sft/loss", "eval/loss", "policy/grad_norm")
    role_cls = SFTActor

    def __init__(self, cfg: SFTConfig):
        super().__init__(cfg)
        columns = ["prompt_ids", "response_ids"]
        self.train_rows = load_sft(cfg.data, self.tokenizer)[0].select_columns(columns).to_list()
        eval_set = load_sft(cfg.data, self.tokenizer, eval_set=True)[0]
        self.eval_rows = eval_set.select(range(min(cfg.sft.eval_rows or len(eval_set), len(eval_set)))).select_columns(columns).to_list()
        if len(self.train_rows) < cfg.sft.batch_size:
            raise ValueError(f"sft.batch_size={cfg.sft.batch_size} is more than the {len(self.train_rows)} training rows")
        self.prepare(self.train_rows, eval_set, ("response_ids",))
        if cfg.sft.packing:
            longest = max(len(r["prompt_ids"]) + len(r["response_ids"]) for r in self.train_rows)
            if longest > cfg.sft.pack_length:
                raise ConfigError(f"config key 'sft.pack_length': ({cfg.sft.pack_length}) is shorter than the longest "
                                  f"training example ({longest} tokens); raise it or lower data.max_prompt_tokens / data.max_response_tokens")
            preflight.check_positions(self.policy_info, cfg.sft.pack_length, "sft.pack_length", "a packed row")
        logger.info("data: %d train rows, %d eval rows, %d held-out prompts sampled (gold: %s)", len(self.train_rows),
                    len(self.eval_rows), len(self.sample_rows), bool(self.gold_rows))
        self.stream = IndexStream(len(self.train_rows), cfg.run.seed)

    def role_kwargs(self) -> dict:
        return {"minibatch_size": self.cfg.sft.batch_size, "pack_length": self.cfg.sft.pack_length if self.cfg.sft.packing else 0}

    def step(self, step: int) -> dict:
        t0 = time.perf_counter()
        rows = [self.train_rows[i] for i in self.stream.next(self.cfg.sft.batch_size)]
        tokens = _tokens(rows)
        stats = get(self.policy.scatter(SFTActor.train_step, collate_sequences(rows, self.pad_id), global_tokens=tokens))
        metrics = merge_stats(stats)
        seconds = time.perf_counter() - t0
        metrics.update({"time/step": seconds, "time/tokens_per_s": tokens / seconds})
        return metrics

    def evaluate(self, stage: str) -> Evaluation:
        out: TokenLoss = get(self.policy.scatter_padded(SFTActor.token_loss, collate_sequences(self.eval_rows, self.pad_id)))
        loss = (out.nll.sum() / out.tokens.sum()).item()
        metrics = {"eval/loss": loss, "eval/ppl": math.exp(min(loss, 50.0))}
        return self.with_generation(metrics, {"loss": loss})

    def state_dict(self) -> dict:
        return {"data": self.stream.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state["data"])

    def summary(self, records: list[dict], history: dict) -> dict:
        first, last, _ = first_and_last(records, "sft/loss", 20)
        return {"train_loss_first": first, "train_loss_last": last}

    def progress(self, m: dict) -> str:
        return f"loss {m['sft/loss']:.3f} lr {m['policy/lr']:.2e}"

    def print_summary(self, summary: dict, out: Path) -> None:
        s, e = summary["eval_start"], summary["eval_end"]
        print(f"\nSFT finished: {summary['steps']} steps in {summary['wall_time_s']:.0f} s; outputs in {out}")
        print(f"  training loss (mean of first vs last steps): {summary['train_loss_first']:.4f} -> {summary['train_loss_last']:.4f}")
        print(f"  held-out loss (token-mean cross-entropy):    {s['loss']:.4f} -> {e['loss']:.4f}")
        sg, eg = s.get("generation") or {}, e.get("generation") or {}
        if sg.get("gold") is not None:
            print(f"  held-out GOLD score of sampled answers:      {sg['gold']:.4f} -> {eg['gold']:.4f}")
            print(f"  held-out response length (tokens):           {sg['length_tokens']:.1f} -> {eg['length_tokens']:.1f}")
        elif sg:
            print(f"  held-out samples: {out / 'samples_end.jsonl'} (response length {sg['length_tokens']:.1f} -> "
                  f"{eg['length_tokens']:.1f} tokens)")
        print(f"  exported policy: {out / 'policy'} (rlhf ppo policy.path={out / 'policy'})")
