"""TRL's trainer on the side-by-side spec, as one command (`benchmarks.side_by_side` times it whole).

    python -m benchmarks.trl_run ppo --model DIR --data prompts.jsonl --steps N [--bf16]
    python -m benchmarks.trl_run dpo --model DIR --data prefs.jsonl --steps N [--bf16] [--gradient-checkpointing]

PPO: `trl.experimental.ppo.PPOTrainer` (trl <= 1.12): policy and reference from DIR, reward and value
models from DIR/reward (sequence classifiers), 32 episodes per rollout as 4 minibatches of 8 (TRL's
rollout is per_device_train_batch_size x gradient_accumulation_steps; it steps the optimizer once per
rollout where this project steps once per minibatch), one PPO epoch, `--response-len` new tokens sampled at temperature 1 (no top-k/top-p), no sample generations,
no saving. DPO: `trl.DPOTrainer` with precomputed reference log-probs, batch 8, beta 0.1; TRL's own
defaults are bf16 autocast and gradient checkpointing (`--bf16 --gradient-checkpointing`).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("job", choices=["ppo", "dpo"])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--batch", type=int, default=32, help="PPO: episodes per rollout; DPO: pairs per step")
    p.add_argument("--minibatches", type=int, default=4)
    p.add_argument("--response-len", type=int, default=32)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--gradient-checkpointing", action="store_true")
    a = p.parse_args()

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    rows = [json.loads(line) for line in open(a.data)]
    tok = AutoTokenizer.from_pretrained(a.model)
    out = tempfile.mkdtemp(prefix="trl-bench-")
    common = dict(output_dir=out, save_strategy="no", report_to=[], use_cpu=True, bf16=a.bf16, logging_steps=10**6,
                  disable_tqdm=True, seed=0, dataloader_num_workers=0)
    torch.manual_seed(0)
    if a.job == "ppo":
        from trl.experimental.ppo import PPOConfig, PPOTrainer

        ds = Dataset.from_dict({"input_ids": [tok(r["prompt"])["input_ids"] for r in rows]})
        args = PPOConfig(per_device_train_batch_size=a.batch // a.minibatches, gradient_accumulation_steps=a.minibatches,
                         num_mini_batches=a.minibatches, num_ppo_epochs=1, response_length=a.response_len, temperature=1.0,
                         total_episodes=a.steps * a.batch, num_sample_generations=0, local_rollout_forward_batch_size=a.batch,
                         learning_rate=1e-6, gradient_checkpointing=a.gradient_checkpointing, **common)
        trainer = PPOTrainer(args=args, processing_class=tok, model=AutoModelForCausalLM.from_pretrained(a.model),
                             ref_model=AutoModelForCausalLM.from_pretrained(a.model),
                             reward_model=AutoModelForSequenceClassification.from_pretrained(f"{a.model}/reward", num_labels=1),
                             value_model=AutoModelForSequenceClassification.from_pretrained(f"{a.model}/reward", num_labels=1),
                             train_dataset=ds, eval_dataset=ds.select(range(8)))
    else:
        from trl import DPOConfig, DPOTrainer

        ds = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
        args = DPOConfig(per_device_train_batch_size=a.batch, max_steps=a.steps, beta=0.1, precompute_ref_log_probs=True,
                         precompute_ref_batch_size=a.batch, gradient_checkpointing=a.gradient_checkpointing,
                         learning_rate=1e-6, max_length=None, **common)
        trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(a.model), args=args, train_dataset=ds, processing_class=tok)
    trainer.train()
    print(f"trl {a.job}: {a.steps} steps done, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
