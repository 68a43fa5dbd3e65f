"""The built-in Bradley-Terry reward model, `builtin:rm-tiny`, and the loss/eval functions behind it.

The model is a `LlamaForSequenceClassification` (num_labels=1) whose backbone starts from the
SFT-warm-started built-in policy (`orchestrator.sft.builtin_policy_dir`) and whose fresh `score` head
is scaled by 0.01 (as the DPL code does), trained with the Bradley-Terry loss
(`losses.preference.bradley_terry_loss`) on `builtin:preferences` (train split) and evaluated on the
test split. Plain torch in one process, like `orchestrator.sft`; the result is a `save_pretrained`
folder under the built-in cache (`<root>/builtin/rm-<size>-<hash>`), written atomically and keyed by
a hash of the SFT folder and the recipe, so the first use trains it (about 70 s for tiny on one
thread of this shared 2-core machine) and later uses reuse it. Its config carries a JSON self-description under `rlhf_reward`.

Rendering and pooling (the contract with `actors.reward.RewardActor`)
--------------------------------------------------------------------
A (prompt, response) pair is rendered by `actors.reward._chat_text` (the chat template: user turn,
assistant turn ending with eos), tokenized without adding special tokens and RIGHT-padded with the
pad id, exactly as `RewardActor._model_scores` does at PPO time; `tests/test_reward_model.py`
checks that both give the same scores. transformers' sequence classifier reads the hidden state of
the rightmost token whose id is not `config.pad_token_id` (it ignores the attention mask), so with
right padding that is the eos of the response. `sequence_rewards` therefore checks that the pad id
sits exactly on the masked positions: a stray pad id inside a text, or a non-pad token in the padding,
would move the pooled position silently.

Reusable pieces (for a later `rlhf rm` on the role machinery)
-------------------------------------------------------------
`encode_pairs` (text rows -> the `load_preferences` id layout), `sequence_rewards` (one forward, (N,)
rewards), `bradley_terry_batch` (per-pair losses of a `PreferenceBatch`: aggregate them with the
global pair count), `pair_rewards` / `pair_accuracy` / `response_rewards` (evaluation).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

logger = logging.getLogger("rlhf.reward_model")

__all__ = [
    "RMRecipe",
    "encode_pairs",
    "sequence_outputs",
    "sequence_rewards",
    "bradley_terry_batch",
    "length_grouped_batches",
    "train_bradley_terry",
    "pair_rewards",
    "pair_accuracy",
    "response_rewards",
    "scale_score_head",
    "bayes_ceiling",
    "spearman",
    "builtin_reward_model_dir",
    "main",
]


@dataclass(frozen=True)
class RMRecipe:
    steps: int = 300
    """Optimizer steps (one batch of pairs each). 300 x 32 pairs is 2.4 epochs of builtin:preferences;
    longer runs memorise the 4000 noisy pairs (train accuracy up, test accuracy down)."""
    batch_size: int = 32
    """Preference pairs per step (2x sequences per forward)."""
    lr: float = 1e-3
    """Peak AdamW learning rate (linear warmup, cosine decay to 10%)."""
    warmup: int = 25
    """Warmup steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    head_init_scale: float = 0.01
    """Factor on the freshly initialised score head (the DPL code's 0.01)."""
    bf16: bool = False
    """Train under bf16 autocast. Off: at the tiny size autocast's casts cost more than the bf16
    matmuls save on this CPU (0.83 vs 0.50 s per step measured); evaluation is always fp32."""
    train_pairs: int = 0
    """0: the builtin:preferences train split as is (4000 pairs). N > 0: the first N pairs that the same
    simulator draws on the same train prompts (`task.preference_rows("train", n=N)`, a superset of
    the default split): more pairs are what this tiny model needs to learn gold (see the report)."""
    seed: int = 0
    """Head initialisation, batch order."""


# ---------------------------------------------------------------------------------------------------
# Encoding and the forward pass


def _conversation_ids(tokenizer, prompts: Sequence[str], responses: Sequence[str]) -> list[list[int]]:
    """Token ids of each rendered conversation, exactly as `RewardActor._model_scores` tokenizes them."""
    from actors.reward import _chat_text

    texts = [_chat_text(tokenizer, p, r) for p, r in zip(prompts, responses)]
    return tokenizer(texts, add_special_tokens=False).input_ids


def encode_pairs(tokenizer, rows: Sequence[Mapping]) -> list[dict]:
    """Preference rows -> dicts in the `orchestrator.data.load_preferences` id layout.

    Rows with `prompt_ids`, `chosen_ids` and `rejected_ids` (from `load_preferences`) pass through.
    Text rows (`prompt`, `chosen`, `rejected` strings) are rendered like `RewardActor` renders them
    (`_conversation_ids`); `prompt_ids` is the longest common prefix of the two conversations and
    `chosen_ids` / `rejected_ids` the rest, so `prompt_ids + chosen_ids` IS the scoring-time sequence.
    """
    out: list[dict] = []
    text_rows = [r for r in rows if "chosen_ids" not in r]
    if text_rows:
        prompts = [r["prompt"] for r in text_rows]
        chosen = _conversation_ids(tokenizer, prompts, [r["chosen"] for r in text_rows])
        rejected = _conversation_ids(tokenizer, prompts, [r["rejected"] for r in text_rows])
        encoded = iter(zip(chosen, rejected))
    for row in rows:
        if "chosen_ids" in row:
            out.append({k: list(row[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids")})
            continue
        c, r = next(encoded)
        n = 0
        while n < min(len(c), len(r)) and c[n] == r[n]:
            n += 1
        out.append({"prompt_ids": c[:n], "chosen_ids": c[n:], "rejected_ids": r[n:]})
    return out


def sequence_outputs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_id: int | None = None) -> torch.Tensor:
    """Score-head outputs (N, num_labels) float32 of right-padded sequences, at the last non-pad token.

    input_ids:      (N, T) long, right-padded with the pad id (`pad_id`, default `model.config.pad_token_id`)
    attention_mask: (N, T) 1 on tokens, 0 on padding (must be exactly where input_ids == pad id)
    `model` may be a DeepSpeed engine (pass `pad_id` then: the engine has no `config`).
    """
    pad_id = model.config.pad_token_id if pad_id is None else pad_id
    if pad_id is None:
        raise ValueError("the reward model's config has no pad_token_id; the head could not find the last token")
    is_pad = input_ids == pad_id
    if not torch.equal(is_pad, attention_mask == 0):
        raise ValueError(
            "sequence_rewards: pad ids must sit exactly on the masked positions (the head pools the last "
            "non-pad token, not the last unmasked one)"
        )
    if (attention_mask[:, 1:] > attention_mask[:, :-1]).any() or not attention_mask[:, 0].all():
        raise ValueError("sequence_rewards: sequences must be right-padded and non-empty")
    return model(input_ids=input_ids, attention_mask=attention_mask).logits.float()  # (N, num_labels)


def sequence_rewards(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scalar rewards (N,) float32 of right-padded sequences: output 0 of `sequence_outputs`."""
    return sequence_outputs(model, input_ids, attention_mask)[:, 0]


def _right_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attention_mask[i, : len(s)] = 1
    return input_ids, attention_mask


def bradley_terry_batch(model, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward over a `PreferenceBatch` (rows 0..B-1 chosen, B..2B-1 rejected).

    Returns (losses, r_chosen, r_rejected), each (B,): per-pair -log sigmoid(r_c - r_r). The caller
    aggregates (the plain trainer takes the mean; a sharded trainer divides the sum by the global
    pair count).
    """
    from losses.preference import bradley_terry_loss

    rewards = sequence_rewards(model, batch.input_ids, batch.attention_mask)  # (2B,)
    r_chosen, r_rejected = rewards[: batch.num_pairs], rewards[batch.num_pairs :]
    return bradley_terry_loss(r_chosen, r_rejected), r_chosen, r_rejected


def scale_score_head(model, factor: float) -> None:
    """Multiply the freshly initialised score head by `factor` (0.01: start near a constant reward)."""
    with torch.no_grad():
        model.score.weight.mul_(factor)
        if getattr(model.score, "bias", None) is not None:
            model.score.bias.mul_(factor)


# ---------------------------------------------------------------------------------------------------
# Training


def length_grouped_batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator,
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


def train_bradley_terry(model, tokenizer, train_rows: Sequence[Mapping], recipe: RMRecipe) -> list[dict]:
    """Train `model` (a sequence classifier, num_labels=1) in place on preference rows.

    Plain torch, one process: AdamW (betas 0.9/0.95), linear warmup then cosine decay to 10% of
    `recipe.lr`, gradient clipping at 1.0, batches of `recipe.batch_size` pairs from
    `length_grouped_batches` (a new shuffle each epoch). Returns the curve: one {"loss", "accuracy"} per step (batch mean
    BT loss, share of batch pairs ranked right). The model is left in eval mode.
    """
    from orchestrator.data import collate_preferences

    encoded = encode_pairs(tokenizer, train_rows)
    if len(encoded) < recipe.batch_size:
        raise ValueError(f"train_bradley_terry: {len(encoded)} pairs, fewer than one batch of {recipe.batch_size}")
    pad_id = model.config.pad_token_id
    gen = torch.Generator().manual_seed(recipe.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.95), weight_decay=recipe.weight_decay)

    def lr_at(step: int) -> float:
        if step < recipe.warmup:
            return (step + 1) / recipe.warmup
        progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    lengths = [len(e["prompt_ids"]) + max(len(e["chosen_ids"]), len(e["rejected_ids"])) for e in encoded]
    batches: list[list[int]] = []
    curve = []
    model.train()
    start = time.time()
    for step in range(recipe.steps):
        if not batches:
            batches = length_grouped_batches(lengths, recipe.batch_size, gen)
        batch = collate_preferences([encoded[i] for i in batches.pop()], pad_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.bf16):
            losses, r_chosen, r_rejected = bradley_terry_batch(model, batch)
        loss = losses.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        curve.append({"loss": loss.item(), "accuracy": (r_chosen > r_rejected).float().mean().item()})
        if (step + 1) % 100 == 0 or step == recipe.steps - 1:
            window = curve[-100:]
            logger.info(
                "rm step %d/%d loss %.3f batch acc %.3f (last %d steps, %.0f s)", step + 1, recipe.steps,
                sum(c["loss"] for c in window) / len(window), sum(c["accuracy"] for c in window) / len(window),
                len(window), time.time() - start,
            )
    model.eval()
    return curve


# ---------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def pair_rewards(model, tokenizer, rows: Sequence[Mapping], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_chosen, r_rejected), each (B,) float32, in eval mode and the model's own dtype (no autocast)."""
    from orchestrator.data import collate_preferences

    encoded = encode_pairs(tokenizer, rows)
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    for i in range(0, len(encoded), batch_size):
        batch = collate_preferences(encoded[i : i + batch_size], model.config.pad_token_id)
        _, r_c, r_r = bradley_terry_batch(model, batch)
        chosen.append(r_c)
        rejected.append(r_r)
    model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def pair_accuracy(model, tokenizer, rows: Sequence[Mapping], batch_size: int = 64) -> float:
    """Share of pairs whose chosen response gets the higher reward (a tie counts one half)."""
    r_chosen, r_rejected = pair_rewards(model, tokenizer, rows, batch_size)
    return ((r_chosen > r_rejected).float() + 0.5 * (r_chosen == r_rejected).float()).mean().item()


@torch.no_grad()
def response_rewards(model, tokenizer, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """Rewards (N,) float32 of (prompt, response) pairs, rendered and padded as at PPO time."""
    ids = _conversation_ids(tokenizer, prompts, responses)
    was_training = model.training
    model.eval()
    out = [sequence_rewards(model, *_right_pad(ids[i : i + batch_size], model.config.pad_token_id))
           for i in range(0, len(ids), batch_size)]
    model.train(was_training)
    return torch.cat(out)


def bayes_ceiling(rows: Sequence[Mapping], prompt_rows: Sequence[Mapping]) -> dict:
    """Accuracy ceilings of the built-in preference labels, from the simulated annotators' utilities.

    oracle:        predict the drawn label by sign(u_chosen - u_rejected) with each row's OWN
                   annotator's utility (`task.annotator_utility`); a tie counts one half.
    oracle_expected: the same predictor's expected accuracy, mean of max(p, 1 - p) with
                   p = sigmoid(u_chosen - u_rejected) (the label-noise-free version of `oracle`).
    blind:         the best predictor that does not know the annotator group (all a scalar reward
                   model can be): chosen iff 0.5 sigmoid(m_formal) + 0.5 sigmoid(m_casual) > 0.5.
    """
    from orchestrator import task

    by_prompt = {r["prompt"]: r for r in prompt_rows}
    oracle = expected = blind = 0.0
    for row in rows:
        p = by_prompt[row["prompt"]]
        m = {a: task.annotator_utility(p, row["chosen"], a) - task.annotator_utility(p, row["rejected"], a)
             for a in ("formal", "casual")}
        own = m[row["annotator"]]
        oracle += 1.0 if own > 0 else 0.5 if own == 0 else 0.0
        prob = 1 / (1 + math.exp(-own))
        expected += max(prob, 1 - prob)
        pooled = 0.5 / (1 + math.exp(-m["formal"])) + 0.5 / (1 + math.exp(-m["casual"]))
        blind += 1.0 if pooled > 0.5 else 0.5 if pooled == 0.5 else 0.0
    n = len(rows)
    return {"oracle": oracle / n, "oracle_expected": expected / n, "blind": blind / n}


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation (average ranks for ties) of two 1-D tensors."""
    from losses.common import pearson

    def ranks(v: torch.Tensor) -> torch.Tensor:
        v = v.double()
        order = torch.argsort(v)
        r = torch.empty_like(v)
        r[order] = torch.arange(len(v), dtype=torch.float64)
        for value in torch.unique(v):  # average the ranks of ties
            tied = v == value
            if tied.sum() > 1:
                r[tied] = r[tied].mean()
        return r

    return pearson(ranks(x), ranks(y)).item()


# ---------------------------------------------------------------------------------------------------
# The built-in reward model


def builtin_reward_model_dir(size: str = "tiny", recipe: RMRecipe | None = None, cache_dir: str | None = None) -> str:
    """The built-in Bradley-Terry reward model of `size` (`builtin:rm-<size>`), trained on first use and cached.

    A `save_pretrained` folder (safetensors + tokenizer) whose config carries `rlhf_reward`: the
    objective, head and pooling, the data, the held-out pair accuracy and the reward's mean and std
    over the test responses.
    """
    from actors.modeling import load_sequence_classifier, load_tokenizer
    from orchestrator import builtin, task
    from orchestrator.sft import builtin_policy_dir

    recipe = recipe or RMRecipe()
    backbone = builtin_policy_dir(size, cache_dir=cache_dir)
    key = builtin._fingerprint({"backbone": Path(backbone).name, "rm": asdict(recipe), "objective": "bradley_terry"})
    final = builtin.cache_root(cache_dir) / "builtin" / f"rm-{size}-{key}"

    def build(tmp: Path) -> None:
        logger.info("training builtin:rm-%s with %d Bradley-Terry steps (cached in %s)", size, recipe.steps, final)
        start = time.time()
        tokenizer = load_tokenizer(backbone)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)  # the fresh score head
            model = load_sequence_classifier(backbone, num_labels=1)
        scale_score_head(model, recipe.head_init_scale)
        if recipe.train_pairs:
            train_rows = task.preference_rows("train", seed=recipe.seed, n=recipe.train_pairs)
        else:
            train_rows = builtin.builtin_rows("preferences", "train", seed=recipe.seed)
        curve = train_bradley_terry(model, tokenizer, train_rows, recipe)
        test_rows = builtin.builtin_rows("preferences", "test", seed=recipe.seed)
        r_chosen, r_rejected = pair_rewards(model, tokenizer, test_rows)
        rewards = torch.cat([r_chosen, r_rejected])
        tail = curve[-50:]
        ceiling = bayes_ceiling(test_rows, task.prompt_rows("test"))
        model.config.rlhf_reward = {
            "objective": "bradley_terry",
            "head": "score",
            "num_labels": 1,
            "pooling": "last_non_pad_token",
            "rendering": "chat_template",
            "trained_on": "builtin:preferences",
            "train_split": "train",
            "train_pairs": len(train_rows),
            "eval_split": "test",
            "pair_accuracy": round(((r_chosen > r_rejected).float().mean().item()), 4),
            "pair_accuracy_ceiling": {k: round(v, 4) for k, v in ceiling.items()},
            "train_loss_last50": round(sum(c["loss"] for c in tail) / len(tail), 4),
            "reward_mean": round(rewards.mean().item(), 4),
            "reward_std": round(rewards.std().item(), 4),
            "backbone": Path(backbone).name,
            "recipe": asdict(recipe),
            "train_seconds": round(time.time() - start, 1),
        }
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    return str(builtin._build_atomically(final, build))


def _sample_policy(policy_dir: str, prompts: Sequence[str], samples_per_prompt: int, seed: int,
                   max_new_tokens: int = 48, batch_size: int = 64) -> list[str]:
    """Responses of the policy in `policy_dir`: HF generate, do_sample, temperature 1, chat template."""
    from actors.modeling import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(policy_dir)
    tokenizer.padding_side = "left"
    model = load_causal_lm(policy_dir).eval()
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts for _ in range(samples_per_prompt)]
    out = []
    torch.manual_seed(seed)
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            gen = model.generate(
                **enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
            out += tokenizer.batch_decode(gen[:, enc.input_ids.shape[1] :], skip_special_tokens=True)
    return out


def evaluate_builtin(rm_dir: str, size: str = "tiny", samples_per_prompt: int = 1, seed: int = 0) -> dict:
    """The numbers of the built-in reward model: accuracies, ceilings and correlations (see `main`)."""
    from actors.modeling import load_sequence_classifier, load_tokenizer
    from losses.common import pearson
    from orchestrator import builtin, task
    from orchestrator.sft import builtin_policy_dir

    tokenizer = load_tokenizer(rm_dir)
    model = load_sequence_classifier(rm_dir, num_labels=1).eval()
    report: dict = {"folder": rm_dir}
    test_rows = builtin.builtin_rows("preferences", "test")
    r_chosen, r_rejected = pair_rewards(model, tokenizer, test_rows)
    right = (r_chosen > r_rejected).float()
    report["pair_accuracy"] = {"test": right.mean().item()}
    for kind in task.PAIR_KINDS:
        mask = torch.tensor([r["pair_kind"] == kind for r in test_rows])
        report["pair_accuracy"][kind] = right[mask].mean().item()
    report["pair_accuracy"]["train"] = pair_accuracy(model, tokenizer, builtin.builtin_rows("preferences", "train"))
    report["ceiling"] = bayes_ceiling(test_rows, task.prompt_rows("test"))

    rewards = torch.cat([r_chosen, r_rejected]).double()
    gold = torch.tensor([r["gold_chosen"] for r in test_rows] + [r["gold_rejected"] for r in test_rows], dtype=torch.float64)
    words = torch.tensor([r["len_chosen"] for r in test_rows] + [r["len_rejected"] for r in test_rows], dtype=torch.float64)
    casual = torch.tensor([r["casual_chosen"] for r in test_rows] + [r["casual_rejected"] for r in test_rows], dtype=torch.float64)
    report["test_responses"] = {
        "n": len(rewards),
        "pearson_gold": pearson(rewards, gold).item(),
        "spearman_gold": spearman(rewards, gold),
        "pearson_words": pearson(rewards, words).item(),
        "pearson_casual": pearson(rewards, casual).item(),
    }

    prompt_rows = task.prompt_rows("test")
    samples = _sample_policy(builtin_policy_dir(size), [r["prompt"] for r in prompt_rows], samples_per_prompt, seed)
    rows = [r for r in prompt_rows for _ in range(samples_per_prompt)]
    s_rewards = response_rewards(model, tokenizer, [r["prompt"] for r in rows], samples).double()
    s_gold = torch.tensor([task.gold_score(r, y) for r, y in zip(rows, samples)], dtype=torch.float64)
    s_words = torch.tensor([task.n_words(y) for y in samples], dtype=torch.float64)
    report["sft_samples"] = {
        "n": len(samples),
        "samples_per_prompt": samples_per_prompt,
        "mean_gold": s_gold.mean().item(),
        "mean_words": s_words.mean().item(),
        "pearson_gold": pearson(s_rewards, s_gold).item(),
        "spearman_gold": spearman(s_rewards, s_gold),
        "pearson_words": pearson(s_rewards, s_words).item(),
        "examples": [{"prompt": r["prompt"], "response": y, "reward": round(s.item(), 3), "gold": round(g.item(), 3)}
                     for r, y, s, g in list(zip(rows, samples, s_rewards, s_gold))[:4]],
    }
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m orchestrator.reward_model`: build (or reuse) builtin:rm-<size> and print its numbers."""
    parser = argparse.ArgumentParser(prog="python -m orchestrator.reward_model", description=main.__doc__)
    parser.add_argument("--size", default="tiny", help="built-in size (default tiny)")
    parser.add_argument("--steps", type=int, default=RMRecipe.steps, help=f"training steps (default {RMRecipe.steps})")
    parser.add_argument("--lr", type=float, default=RMRecipe.lr, help=f"peak learning rate (default {RMRecipe.lr})")
    parser.add_argument("--batch-size", type=int, default=RMRecipe.batch_size, help=f"pairs per step (default {RMRecipe.batch_size})")
    parser.add_argument("--train-pairs", type=int, default=0,
                        help="0: builtin:preferences train as is (4000 pairs); N: N pairs from the same simulator")
    parser.add_argument("--samples-per-prompt", type=int, default=1, help="SFT samples per test prompt for the correlation (default 1)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on 2 shared cores, 2 threads ran 7-20x slower under contention)")
    parser.add_argument("--json", metavar="FILE", help="also write the report here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)

    recipe = RMRecipe(steps=args.steps, lr=args.lr, batch_size=args.batch_size, train_pairs=args.train_pairs)
    start = time.time()
    rm_dir = builtin_reward_model_dir(args.size, recipe)
    build_seconds = time.time() - start
    report = evaluate_builtin(rm_dir, args.size, args.samples_per_prompt)
    report["build_seconds"] = build_seconds
    with open(Path(rm_dir) / "config.json") as f:
        report["rlhf_reward"] = json.load(f).get("rlhf_reward")

    acc, ceil, tr, sm = report["pair_accuracy"], report["ceiling"], report["test_responses"], report["sft_samples"]
    print(f"builtin:rm-{args.size} -> {rm_dir}  (build/load {build_seconds:.0f} s; trained in "
          f"{report['rlhf_reward'].get('train_seconds')} s when first built)")
    print(f"pair accuracy  test {acc['test']:.3f}  train {acc['train']:.3f}  | by kind: "
          + "  ".join(f"{k} {acc[k]:.3f}" for k in ("independent", "quality_only", "length_only", "casual_only")))
    print(f"ceiling (test) oracle sign(u_c - u_r), own annotator {ceil['oracle']:.3f} (expected {ceil['oracle_expected']:.3f});"
          f"  annotator-blind {ceil['blind']:.3f}")
    print(f"test responses (n={tr['n']}): pearson(reward, gold) {tr['pearson_gold']:+.3f}  spearman {tr['spearman_gold']:+.3f}  "
          f"pearson(reward, words) {tr['pearson_words']:+.3f}  pearson(reward, casual) {tr['pearson_casual']:+.3f}")
    print(f"SFT samples (n={sm['n']}, mean gold {sm['mean_gold']:.3f}, mean words {sm['mean_words']:.1f}): "
          f"pearson(reward, gold) {sm['pearson_gold']:+.3f}  spearman {sm['spearman_gold']:+.3f}  "
          f"pearson(reward, words) {sm['pearson_words']:+.3f}")
    for ex in sm["examples"]:
        print(f"  [{ex['reward']:+.2f} gold {ex['gold']:.2f}] {ex['prompt']} -> {ex['response']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
