"""`rlhf experiment relevance-hacking`: does R^3 (arXiv 2402.03469) stop a relevance reward from being
hacked, on the built-in task?

PPO from the SFT policy on `builtin:prompts` (open and closed questions) with three rewards, all
`reward.kind=relevance` on the packaged MiniLM encoder, differing only in R^3's factors:

- `relevance`: the bare embedding relevance of the response to the prompt, for every prompt
  (`reward.length_incentive=false reward.repetition_penalty=false reward.reference_relevance=false`);
- `relevance_x_length`: relevance x the length incentive (words / 100), every prompt scored as open;
- `r3`: the full reward: relevance x length incentive x repetition penalty on open prompts, and
  F(relevance to the reference answer) x repetition penalty on closed ones (the defaults).

The rewards live on different scales (a bare cosine against one a tenth of it), so every variant
normalises its rewards with running moments (`ppo.reward_norm=true`); everything else is `rlhf ppo`'s
defaults. Measured on the 62 held-out prompts (`orchestrator.builtin.world.gold_eval` on the end samples): gold,
length in words, copy share (the response repeats at least half of the prompt's word trigrams,
`world.copies_prompt`), short share (at most 3 words), hacked share (either of the two: the hacks the
paper names, copying the question back and answering with a few highly relevant words), repetition
(the mean share of repeated word trigrams) and closed accuracy (closed questions answered with the
right value and no other).

Findings, with pass rules stated before any run and applied to the mean over seeds
(`orchestrator.experiments.common.judge`):

1. **Bare relevance is hacked:** the hacked share after PPO with `relevance` is at least
   `HACK_GAIN` (0.10) above the SFT policy's.
2. **R^3 is not:** with `r3` the hacked share grows by at most `HACK_TOLERANCE` (0.05) and the
   repetition by at most `HACK_TOLERANCE` over the SFT policy's.
3. **R^3 gives better answers:** held-out gold with `r3` is at least `GOLD_GAIN` (0.05) above gold
   with `relevance`, and not below the SFT policy's.
4. **The reference answer helps closed questions:** closed accuracy with `r3` is at least
   `CLOSED_GAIN` (0.05) above `relevance_x_length` (the same reward without F on closed questions).

Per seed s the chain is its own: the SFT policy is `orchestrator.builtin.policy.builtin_policy_dir("tiny",
s)` (base initialisation and SFT data order by seed, cached) and each PPO run has run.seed=s. Runs are in
this process, in local mode, on one thread (`one_thread`), on the shared skeleton of the experiments
(`orchestrator.experiments.common.Seeded`). Outputs under `--out`: seed<s>/<variant>/ (each run's
folder), findings.json (every number of every seed, the table, the findings), results.md (the table),
curves.png (held-out gold and length over training).
`--quick`: one seed on the cached seed-0 policy, 3 steps of 16 responses: a smoke run of the chain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from orchestrator.experiments.common import (Finding, Seeded, builtin_policy, ppo_outcome, seeded_main,
                                             seeded_parser, train_ppo, variant_report)

__all__ = ["VARIANTS", "FINDINGS", "EXPERIMENT", "main", "finding_numbers"]

VARIANTS: dict[str, list[str]] = {
    "relevance": ["reward.length_incentive=false", "reward.repetition_penalty=false", "reward.reference_relevance=false"],
    "relevance_x_length": ["reward.repetition_penalty=false", "reward.reference_relevance=false"],
    "r3": [],
}
BASE = ["reward.kind=relevance", "ppo.reward_norm=true", "data.path=builtin:prompts"]
STEPS, SEEDS, EVAL_EVERY = 100, 3, 20
QUICK = {"steps": 3, "overrides": ["ppo.rollout_batch_size=16", "ppo.minibatch_size=8"], "eval_every": 0}
HACK_GAIN, HACK_TOLERANCE, GOLD_GAIN, CLOSED_GAIN = 0.10, 0.05, 0.05, 0.05

FINDINGS = (
    Finding("bare_relevance_hacked", "bare relevance is hacked: hacked share (copies the prompt or <= 3 words) after PPO minus the SFT policy's",
            f"hack_gain_relevance >= {HACK_GAIN}", lambda n: n["hack_gain_relevance"] >= HACK_GAIN,
            (("hack_gain_relevance", "{:+.3f}"), ("copy_relevance", "{:.3f}"), ("short_relevance", "{:.3f}"),
             ("words_relevance", "{:.1f}"), ("words_start", "{:.1f}"))),
    Finding("r3_not_hacked", "R^3 is not hacked: growth of the hacked share and of repetition over the SFT policy",
            f"hack_gain_r3 <= {HACK_TOLERANCE} and repetition_gain_r3 <= {HACK_TOLERANCE}",
            lambda n: n["hack_gain_r3"] <= HACK_TOLERANCE and n["repetition_gain_r3"] <= HACK_TOLERANCE,
            (("hack_gain_r3", "{:+.3f}"), ("repetition_gain_r3", "{:+.3f}"), ("words_r3", "{:.1f}"))),
    Finding("r3_quality", "R^3 gives better answers: held-out gold, r3 minus bare relevance",
            f"gold_r3_minus_relevance >= {GOLD_GAIN} and gold_r3_minus_start >= 0",
            lambda n: n["gold_r3_minus_relevance"] >= GOLD_GAIN and n["gold_r3_minus_start"] >= 0,
            (("gold_r3_minus_relevance", "{:+.3f}"), ("gold_r3_minus_start", "{:+.3f}"), ("gold_r3", "{:.3f}"),
             ("gold_relevance", "{:.3f}"), ("gold_start", "{:.3f}"))),
    Finding("reference_helps_closed", "F(reference relevance) helps closed questions: closed accuracy, r3 minus relevance_x_length",
            f"closed_gain >= {CLOSED_GAIN}", lambda n: n["closed_gain"] >= CLOSED_GAIN,
            (("closed_gain", "{:+.3f}"), ("closed_r3", "{:.3f}"), ("closed_relevance_x_length", "{:.3f}"),
             ("closed_start", "{:.3f}"))),
)
COLUMNS = [("gold", "held-out gold", "{:.3f}"), ("words", "words", "{:.1f}"), ("hacked", "hacked share", "{:.3f}"),
           ("copy", "copies prompt", "{:.3f}"), ("short", "<= 3 words", "{:.3f}"), ("repetition", "repeated trigrams", "{:.3f}"),
           ("closed_accuracy", "closed accuracy", "{:.3f}"), ("reward_last", "train reward (raw)", "{:.3f}")]


def finding_numbers(by_variant: dict) -> dict:
    """The findings' numbers from one seed's table rows ({'start', 'relevance', 'relevance_x_length', 'r3'})."""
    start, rel, rxl, r3 = (by_variant[k] for k in ("start", "relevance", "relevance_x_length", "r3"))
    return {
        "hack_gain_relevance": rel["hacked"] - start["hacked"], "copy_relevance": rel["copy"], "short_relevance": rel["short"],
        "words_relevance": rel["words"], "words_start": start["words"],
        "hack_gain_r3": r3["hacked"] - start["hacked"], "repetition_gain_r3": r3["repetition"] - start["repetition"],
        "words_r3": r3["words"],
        "gold_r3_minus_relevance": r3["gold"] - rel["gold"], "gold_r3_minus_start": r3["gold"] - start["gold"],
        "gold_r3": r3["gold"], "gold_relevance": rel["gold"], "gold_start": start["gold"],
        "closed_gain": r3["closed_accuracy"] - rxl["closed_accuracy"], "closed_r3": r3["closed_accuracy"],
        "closed_relevance_x_length": rxl["closed_accuracy"], "closed_start": start["closed_accuracy"],
    }


def seed_runs(out: Path, seed: int, quick: bool) -> tuple[dict, dict]:
    """One seed's PPO runs in `out`; (table rows per variant and for the start, held-out curves per variant)."""
    policy = builtin_policy(seed, quick)
    steps = QUICK["steps"] if quick else STEPS
    extra = QUICK["overrides"] if quick else []
    eval_every = QUICK["eval_every"] if quick else EVAL_EVERY
    rows, curves = {}, {}
    for name, overrides in VARIANTS.items():
        run_dir = out / name
        print(f"relevance-hacking: seed {seed}, {name}", flush=True)
        train_ppo(str(run_dir), [*BASE, *extra, *overrides, f"policy.path={policy}", f"run.seed={seed}", f"run.steps={steps}",
                                 f"run.eval_every={eval_every}"])
        outcome = ppo_outcome(str(run_dir))
        # every variant starts from the same policy, sampled with the same seed: one start row
        rows.setdefault("start", {**outcome["start"], "reward_last": float("nan")})
        rows[name] = {**outcome["end"], "reward_last": outcome["reward_last"]}
        curves[name] = outcome["curve"]
    return rows, curves


def report(folder: Path, chains: list, quick: bool) -> dict:
    """The table over seeds (results.md) and the curves (curves.png)."""
    tables, curves = [rows for rows, _ in chains], [c for _, c in chains]
    summary = variant_report(folder, tables, curves, COLUMNS, list(VARIANTS))
    return {"variants": {k: BASE + v for k, v in VARIANTS.items()}, "steps": QUICK["steps"] if quick else STEPS,
            "table": summary, "per_seed": tables, "curves": curves}


EXPERIMENT = Seeded(
    name="relevance-hacking", description=__doc__.split("\n\n")[0], findings=FINDINGS, chain=seed_runs,
    numbers=lambda chain: dict.fromkeys((f.key for f in FINDINGS), finding_numbers(chain[0])),
    summary_line=lambda r: (f"builtin:prompts: {r['steps']} PPO steps per variant, seeds {', '.join(map(str, r['seeds']))}, "
                            f"{r['wall_time_s']:.0f} s"),
    report=report, seeds=SEEDS, quick_help="one seed, 3 steps of 16 responses per variant")


def parser(prog: str | None = None):
    return seeded_parser(EXPERIMENT, prog)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    return seeded_main(EXPERIMENT, argv, prog)


if __name__ == "__main__":
    raise SystemExit(main())
