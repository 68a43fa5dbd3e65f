"""`rlhf experiment length-bias`: does ODIN's quality head (arXiv 2402.07319) keep PPO from chasing the
annotators' length bias, as well as the cheap baselines do or better?

The data is `builtin:preferences`, whose annotators prefer longer answers (+0.1 utility per word,
which the gold score ignores; `orchestrator.builtin.world`). Per seed, two reward models start from the SFT
policy and train on the same pairs with the same steps: Bradley-Terry, and ODIN (a quality and a
length head; length and orthogonality weights 0.1, as in `hidden-context`). Then PPO from the same SFT
policy with four rewards:

- `bt`: the Bradley-Terry reward;
- `odin`: ODIN's quality head alone (the length head is dropped at RL time, as in the paper);
- `bt_length_penalty`: Bradley-Terry minus `LENGTH_PENALTY` per response token (`reward.length_penalty`);
- `bt_clipped`: Bradley-Terry clipped to [-`CLIP`, `CLIP`] (`ppo.reward_clip`; the reward models'
  outputs are normalised to their training data's mean and std, so the clip is in std units).

Reported: the reward models' held-out accuracy (ODIN: of the sum of its heads, what it fits to the
labels) and Pearson correlation with length (ODIN: of its quality head), and for every PPO run the
held-out gold and length (words at the end, tokens along the way; curves.png plots gold against length
as well: the quality-length frontier), over seeds.

Findings, with pass rules stated before any run and applied to the mean over seeds:

1. **Bradley-Terry drives PPO to longer answers:** the `bt` run's held-out answers end at least
   `LONGER` (2) words longer than the SFT policy's.
2. **ODIN's reward models are as accurate and freed of length:** |ODIN sum accuracy - BT accuracy| <=
   `ACCURACY_GAP` (0.03) and |Pearson(quality head, length)| <= half of |Pearson(BT, length)|.
3. **ODIN: shorter at the same or better quality:** the `odin` run ends at least `SHORTER` (2) words
   shorter than `bt`, with gold no more than `GOLD_SLACK` (0.02) below `bt`'s.
4. **ODIN on the frontier:** at the `odin` run's final length, its gold is no more than `GOLD_SLACK`
   below the gold the `bt` run had at that length (`gold_at_length`: its held-out curve interpolated
   in length; when the `bt` curve never reaches that length, its nearest end).
5. **ODIN against the baselines:** the `odin` run's final gold is no more than `GOLD_SLACK` below the
   better of `bt_length_penalty` and `bt_clipped`.

Per seed s the chain is its own (`orchestrator.builtin.policy.builtin_policy_dir("tiny", s)`, both reward
models and every PPO run with seed s), in this process, local mode, one thread, on the shared skeleton
of the experiments (`orchestrator.experiments.common.Seeded`). Outputs under `--out`:
seed<s>/rm-<objective>/ and seed<s>/<variant>/, findings.json, results.md, curves.png.
`--quick`: one seed on the cached seed-0 policy, 30 reward-model steps on 2000 pairs, 3 PPO steps of
16 responses: a smoke run of the chain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from orchestrator.experiments.common import (Finding, Seeded, builtin_policy, ppo_outcome, seeded_main,
                                             seeded_parser, train_ppo, train_rm, variant_report)

__all__ = ["VARIANTS", "FINDINGS", "EXPERIMENT", "main", "finding_numbers", "gold_at_length"]

DATA = "builtin:preferences"
ODIN_COEFS = ("model.odin_length_coef=0.1", "model.odin_orth_coef=0.1")
LENGTH_PENALTY = 0.02
"""Per response token, in the reward models' std units: 50 more tokens cost one std of reward."""
CLIP = 1.0
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "bt": ("bradley_terry", []),
    "odin": ("odin", []),
    "bt_length_penalty": ("bradley_terry", [f"reward.length_penalty={LENGTH_PENALTY}"]),
    "bt_clipped": ("bradley_terry", [f"ppo.reward_clip={CLIP}"]),
}
"""variant -> (the reward model's objective, what the PPO run sets besides reward.path)."""
RM_STEPS, PPO_STEPS, SEEDS, EVAL_EVERY = 600, 100, 3, 20
QUICK = {"rm_steps": 30, "rm_rows": 2000, "eval_pairs": 200, "ppo_steps": 3,
         "ppo": ["ppo.rollout_batch_size=16", "ppo.minibatch_size=8"]}
LONGER, SHORTER, ACCURACY_GAP, GOLD_SLACK = 2.0, 2.0, 0.03, 0.02

FINDINGS = (
    Finding("bt_drives_length", "Bradley-Terry drives PPO to longer answers: held-out words, bt run minus SFT policy",
            f"words_gain_bt >= {LONGER}", lambda n: n["words_gain_bt"] >= LONGER,
            (("words_gain_bt", "{:+.1f}"), ("words_bt", "{:.1f}"), ("words_start", "{:.1f}"))),
    Finding("odin_reward_model", "ODIN's reward model: accuracy against Bradley-Terry's, and |Pearson with length|",
            f"|accuracy_gap| <= {ACCURACY_GAP} and abs_rho_odin_quality <= 0.5 abs_rho_bt",
            lambda n: abs(n["accuracy_gap"]) <= ACCURACY_GAP and n["abs_rho_odin_quality"] <= 0.5 * n["abs_rho_bt"],
            (("accuracy_bt", "{:.3f}"), ("accuracy_odin_sum", "{:.3f}"), ("accuracy_gap", "{:+.3f}"),
             ("abs_rho_bt", "{:.3f}"), ("abs_rho_odin_quality", "{:.3f}"))),
    Finding("odin_shorter", "ODIN's PPO run: shorter than bt's at the same or better gold",
            f"words_bt_minus_odin >= {SHORTER} and gold_odin_minus_bt >= -{GOLD_SLACK}",
            lambda n: n["words_bt_minus_odin"] >= SHORTER and n["gold_odin_minus_bt"] >= -GOLD_SLACK,
            (("words_bt_minus_odin", "{:+.1f}"), ("gold_odin_minus_bt", "{:+.3f}"), ("gold_odin", "{:.3f}"),
             ("gold_bt", "{:.3f}"))),
    Finding("odin_frontier", "ODIN on the quality-length frontier: its final gold minus bt's gold at the same length",
            f"gold_odin_minus_bt_at_length >= -{GOLD_SLACK}", lambda n: n["gold_odin_minus_bt_at_length"] >= -GOLD_SLACK,
            (("gold_odin_minus_bt_at_length", "{:+.3f}"), ("tokens_odin", "{:.1f}"))),
    Finding("odin_vs_baselines", "ODIN against the length penalty and clipping: final gold minus the better baseline's",
            f"gold_odin_minus_best_baseline >= -{GOLD_SLACK}", lambda n: n["gold_odin_minus_best_baseline"] >= -GOLD_SLACK,
            (("gold_odin_minus_best_baseline", "{:+.3f}"), ("gold_bt_length_penalty", "{:.3f}"), ("gold_bt_clipped", "{:.3f}"),
             ("words_bt_length_penalty", "{:.1f}"), ("words_bt_clipped", "{:.1f}"))),
)
COLUMNS = [("gold", "held-out gold", "{:.3f}"), ("words", "words", "{:.1f}"), ("tokens", "tokens", "{:.1f}"),
           ("disputed", "disputed ending", "{:.3f}"), ("repetition", "repeated trigrams", "{:.3f}"),
           ("reward_last", "train reward", "{:.3f}")]


def gold_at_length(curve: dict, length: float) -> float:
    """A run's held-out gold at `length` (tokens): its (length, gold) evaluation curve, in step order,
    interpolated linearly on the first segment that spans `length`; the gold of the point nearest in
    length when no segment does."""
    points = list(zip(curve["length"], curve["gold"]))
    for (l0, g0), (l1, g1) in zip(points, points[1:]):
        if min(l0, l1) <= length <= max(l0, l1):
            return g0 if l1 == l0 else g0 + (g1 - g0) * (length - l0) / (l1 - l0)
    return min(points, key=lambda p: abs(p[0] - length))[1]


def finding_numbers(rms: dict, rows: dict, curves: dict) -> dict:
    """The findings' numbers from one seed's reward-model evaluations ({'bradley_terry', 'odin'}: their
    `eval`), table rows ({'start', 'bt', 'odin', 'bt_length_penalty', 'bt_clipped'}) and curves."""
    bt_eval, odin_eval = rms["bradley_terry"], rms["odin"]
    start, bt, odin, lp, clip = (rows[k] for k in ("start", "bt", "odin", "bt_length_penalty", "bt_clipped"))
    rho_bt, rho_q = bt_eval["pearson_length"]["mean_utility"], odin_eval["pearson_length"]["quality"]
    return {
        "words_gain_bt": bt["words"] - start["words"], "words_bt": bt["words"], "words_start": start["words"],
        "accuracy_bt": bt_eval["pair_accuracy"], "accuracy_odin_sum": odin_eval["pair_accuracy_sum"],
        "accuracy_gap": odin_eval["pair_accuracy_sum"] - bt_eval["pair_accuracy"],
        "abs_rho_bt": abs(rho_bt), "abs_rho_odin_quality": abs(rho_q),
        "words_bt_minus_odin": bt["words"] - odin["words"], "gold_odin_minus_bt": odin["gold"] - bt["gold"],
        "gold_odin": odin["gold"], "gold_bt": bt["gold"],
        "gold_odin_minus_bt_at_length": odin["gold"] - gold_at_length(curves["bt"], odin["tokens"]),
        "tokens_odin": odin["tokens"],
        "gold_odin_minus_best_baseline": odin["gold"] - max(lp["gold"], clip["gold"]),
        "gold_bt_length_penalty": lp["gold"], "gold_bt_clipped": clip["gold"],
        "words_bt_length_penalty": lp["words"], "words_bt_clipped": clip["words"],
    }


def seed_chain(out: Path, seed: int, quick: bool) -> tuple[dict, dict, dict]:
    """One seed's reward models and PPO runs in `out`: (reward-model evaluations, table rows, curves)."""
    policy = builtin_policy(seed, quick)
    rm_extra = ([f"run.steps={QUICK['rm_steps']}", f"data.max_rows={QUICK['rm_rows']}", f"rm.eval_max_pairs={QUICK['eval_pairs']}"]
                if quick else [f"run.steps={RM_STEPS}"])
    rms = {}
    for objective in ("bradley_terry", "odin"):
        print(f"length-bias: seed {seed}, reward model {objective}", flush=True)
        rms[objective] = train_rm(str(out / f"rm-{objective}"), [
            f"data.path={DATA}", "data.split=train", "data.eval_split=test", f"run.seed={seed}", f"model.path={policy}",
            f"model.objective={objective}", *ODIN_COEFS, *rm_extra])
    ppo_extra = [f"run.steps={QUICK['ppo_steps']}", "run.eval_every=0", *QUICK["ppo"]] if quick else [
        f"run.steps={PPO_STEPS}", f"run.eval_every={EVAL_EVERY}"]
    rows, curves = {}, {}
    for name, (objective, overrides) in VARIANTS.items():
        run_dir = out / name
        print(f"length-bias: seed {seed}, PPO {name}", flush=True)
        summary = train_ppo(str(run_dir), [f"policy.path={policy}", f"run.seed={seed}", "reward.kind=model",
                                           f"reward.path={rms[objective]['model']}", *ppo_extra, *overrides])
        outcome = ppo_outcome(str(run_dir))
        rows.setdefault("start", {**outcome["start"], "tokens": summary["eval_start"]["length_tokens"], "reward_last": float("nan")})
        rows[name] = {**outcome["end"], "tokens": summary["eval_end"]["length_tokens"], "reward_last": outcome["reward_last"]}
        curves[name] = outcome["curve"]
    return {k: v["eval"] for k, v in rms.items()}, rows, curves


def report(folder: Path, chains: list, quick: bool) -> dict:
    """The table over seeds (results.md) and the curves with the quality-length frontier (curves.png)."""
    tables, curves = [rows for _, rows, _ in chains], [c for _, _, c in chains]
    summary = variant_report(folder, tables, curves, COLUMNS, list(VARIANTS), frontier=True)
    return {"variants": {k: {"reward_model": o, "overrides": v} for k, (o, v) in VARIANTS.items()},
            "rm_steps": QUICK["rm_steps"] if quick else RM_STEPS, "ppo_steps": QUICK["ppo_steps"] if quick else PPO_STEPS,
            "table": summary, "per_seed": tables, "curves": curves}


EXPERIMENT = Seeded(
    name="length-bias", description=__doc__.split("\n\n")[0], findings=FINDINGS, chain=seed_chain,
    numbers=lambda chain: dict.fromkeys((f.key for f in FINDINGS), finding_numbers(*chain)),
    summary_line=lambda r: (f"{DATA}: {r['rm_steps']} reward-model steps, {r['ppo_steps']} PPO steps per variant, seeds "
                            f"{', '.join(map(str, r['seeds']))}, {r['wall_time_s']:.0f} s"),
    report=report, seeds=SEEDS, quick_help="one seed, a few steps of every run")


def parser(prog: str | None = None):
    return seeded_parser(EXPERIMENT, prog)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    return seeded_main(EXPERIMENT, argv, prog)


if __name__ == "__main__":
    raise SystemExit(main())
