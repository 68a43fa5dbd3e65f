"""Warm start of the built-in policy: a short supervised fine-tune on the built-in SFT rows, cached.

`builtin:tiny` (and builtin:small, builtin:50m) as a policy path means "the built-in Llama of that
size after this SFT". The result is a `save_pretrained` folder under the built-in cache, keyed by a
hash of everything that determines it, so the first run trains it (about a minute for tiny on 2 CPU
cores) and later runs reuse it.

The loss is the mean token cross-entropy on response tokens only (prompt tokens are context).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

logger = logging.getLogger("rlhf.sft")


@dataclass(frozen=True)
class SFTRecipe:
    steps: int = 600
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 20
    seed: int = 0


def sft_batches(tokenizer, rows: list[dict], batch_size: int, generator: torch.Generator):
    """Endless shuffled batches: (input_ids, attention_mask, labels) with labels -100 off the response."""
    encoded = []
    for row in rows:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": row["prompt"]}], tokenize=False, add_generation_prompt=True
        )
        full = tokenizer.apply_chat_template(
            [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}], tokenize=False
        )
        p_ids = tokenizer(prompt, add_special_tokens=False).input_ids
        f_ids = tokenizer(full, add_special_tokens=False).input_ids
        if f_ids[: len(p_ids)] != p_ids:
            raise ValueError(f"chat template: the prompt does not prefix the full conversation for {row['prompt']!r}")
        encoded.append((f_ids, len(p_ids)))
    pad = tokenizer.pad_token_id
    while True:
        order = torch.randperm(len(encoded), generator=generator).tolist()
        for i in range(0, len(order) - batch_size + 1, batch_size):
            chunk = [encoded[j] for j in order[i : i + batch_size]]
            L = max(len(ids) for ids, _ in chunk)
            input_ids = torch.full((batch_size, L), pad, dtype=torch.long)
            labels = torch.full((batch_size, L), -100, dtype=torch.long)
            attn = torch.zeros((batch_size, L), dtype=torch.long)
            for b, (ids, p) in enumerate(chunk):
                input_ids[b, : len(ids)] = torch.tensor(ids)
                attn[b, : len(ids)] = 1
                labels[b, p : len(ids)] = torch.tensor(ids[p:])
            yield input_ids, attn, labels


def run_sft(model, tokenizer, rows: list[dict], recipe: SFTRecipe) -> list[float]:
    """Train `model` in place; returns the loss curve. Plain torch: one process, no engine needed.

    One intra-op thread: for a model this small a second thread gains little (13 vs 15 s per 100
    steps here), and when anything else holds a core, OpenMP's spinning threads make a 2-thread run
    up to 10x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_sft(model, tokenizer, rows, recipe)
    finally:
        torch.set_num_threads(threads)


def _run_sft(model, tokenizer, rows: list[dict], recipe: SFTRecipe) -> list[float]:
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.95), weight_decay=0.0)
    total = recipe.steps

    def lr_at(step: int) -> float:
        if step < recipe.warmup:
            return (step + 1) / recipe.warmup
        progress = (step - recipe.warmup) / max(1, total - recipe.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    losses = []
    batches = sft_batches(tokenizer, rows, recipe.batch_size, gen)
    start = time.time()
    for step in range(total):
        input_ids, attn, labels = next(batches)
        logits = model(input_ids=input_ids, attention_mask=attn).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % 100 == 0 or step == total - 1:
            logger.info("sft step %d/%d loss %.3f (%.0f s)", step + 1, total, loss.item(), time.time() - start)
    model.eval()
    return losses


def builtin_policy_dir(size: str, recipe: SFTRecipe | None = None, cache_dir: str | None = None) -> str:
    """The SFT-warm-started built-in policy of `size`, trained on first use and cached."""
    from actors.modeling import load_causal_lm, load_tokenizer
    from orchestrator import builtin, task

    recipe = recipe or SFTRecipe()
    base = builtin.builtin_model_dir(size, cache_dir=cache_dir, seed=recipe.seed)
    key = builtin._fingerprint({"base": Path(base).name, "sft": asdict(recipe)})
    final = builtin.cache_root(cache_dir) / "builtin" / f"{size}-sft-{key}"

    def build(tmp: Path) -> None:
        logger.info("warm-starting builtin:%s with %d SFT steps (cached in %s)", size, recipe.steps, final)
        tokenizer = load_tokenizer(base)
        model = load_causal_lm(base)
        run_sft(model, tokenizer, task.sft_rows(seed=recipe.seed, split="train"), recipe)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    return str(builtin._build_atomically(final, build))
