"""`rlhf sft`: supervised fine-tuning on demonstrations, and the built-in policy's warm start.

One step::

    rows = stream.next(sft.batch_size)                                    # prompt + response rows
    stats = policy.scatter(SFTActor.train_step, sequences, global_tokens)  # token-mean cross-entropy on the responses

The role is `actors.sft.SFTActor` (a `PolicyActor`), hosted like every role: in this process (local
mode) or as `policy.replicas` Ray actors forming one DeepSpeed ZeRO engine. The loss counts response
tokens only (prompt tokens are context) and is divided by the response tokens of the whole batch, so
replicas and micro-batches do not change it. Everything around the step (output folder, metrics,
evaluation, checkpoints, resume, summary) is the job skeleton's (`orchestrator.job`). Evaluation:
held-out cross-entropy (`eval/loss`, `eval/ppl`) and the generation evaluation of every job (on the
built-in task's data: gold score, annotator reward, length; on other data: samples and length;
`orchestrator.evaluation`, `job.PolicyJob`).

The built-in warm start: `builtin:<size>` as a model path means the built-in Llama of that size
(`builtin:<size>-base`) after `rlhf sft` with its defaults (`builtin_policy_dir`): trained on first use
and cached under a key that covers the whole SFT config, so changing a default retrains it.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path

import torch

from actors.pairs import collate_sequences
from actors.sft import SFTActor, TokenLoss
from actors.trainer import merge_stats
from cluster import get
from orchestrator import job, preflight
from orchestrator.configtree import ConfigError
from orchestrator.config import SFTConfig
from orchestrator.streams import IndexStream

logger = logging.getLogger("rlhf.sft")


def _tokens(rows: list[dict]) -> int:
    return sum(len(r["response_ids"]) for r in rows)


class SFTJob(job.PolicyJob):
    name = "sft"
    curve_keys = ("sft/loss", "eval/loss", "policy/grad_norm")
    role_cls = SFTActor

    def __init__(self, cfg: SFTConfig):
        from orchestrator.data import load_sft

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

    def evaluate(self, stage: str) -> job.Evaluation:
        out: TokenLoss = get(self.policy.scatter_padded(SFTActor.token_loss, collate_sequences(self.eval_rows, self.pad_id)))
        loss = (out.nll.sum() / out.tokens.sum()).item()
        metrics = {"eval/loss": loss, "eval/ppl": math.exp(min(loss, 50.0))}
        return self.with_generation(metrics, {"loss": loss})

    def state_dict(self) -> dict:
        return {"data": self.stream.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state["data"])

    def summary(self, records: list[dict], history: dict) -> dict:
        first, last, _ = job.first_and_last(records, "sft/loss", 20)
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


def train(cfg: SFTConfig, dry_run: bool = False) -> dict:
    """Run SFT as configured; returns the summary (also in summary.json). `dry_run`: check and print the plan only (`orchestrator.job.run`)."""
    return job.run(SFTJob(cfg), cfg, dry_run=dry_run)


def builtin_policy_dir(size: str, seed: int = 0) -> str:
    """The SFT-warm-started built-in policy of `size`: `rlhf sft` with its defaults on builtin:<size>-base,
    run once in local mode on one thread and cached (its run folder, without checkpoints, kept inside the
    cached policy as `sft_run/`, for the record).

    `seed` (the experiments' seeds; `builtin:<size>` is seed 0) sets both the base model's random
    initialisation and the SFT run's seed (data order), so each seed is its own policy."""
    from orchestrator import builtin
    from orchestrator.config import load_job_config
    from orchestrator.configtree import to_dict

    base_dir = builtin.builtin_model_dir(size, seed=seed)
    base = f"builtin:{size}-base" if seed == 0 else base_dir
    overrides = [f"policy.path={base}", "run.mode=local", "run.resume=never", "run.save_every=0", f"run.seed={seed}"]
    cfg = load_job_config("sft", None, overrides + ["run.output_dir=unused"])
    recipe = to_dict(cfg)
    recipe["run"].pop("output_dir")
    key = builtin._fingerprint({"base": Path(base_dir).name, "sft": recipe})
    final = builtin.cache_root() / "builtin" / f"{size}-sft-{key}"

    def build(tmp: Path) -> None:
        logger.info("warm-starting builtin:%s with %d SFT steps (cached in %s)", size, cfg.run.steps, final)
        cfg.run.output_dir = str(tmp / "sft_run")
        threads = torch.get_num_threads()
        # one intra-op thread: for a model this small a second one gains little, and when anything else
        # holds a core, OpenMP's spinning threads make a 2-thread run many times slower
        torch.set_num_threads(1)
        try:
            train(cfg)
        finally:
            torch.set_num_threads(threads)
        run = Path(cfg.run.output_dir)
        shutil.rmtree(run / "checkpoints")
        for item in (run / "policy").iterdir():  # the exported policy is the cached folder
            item.rename(tmp / item.name)

    return str(builtin._build_atomically(final, build))
