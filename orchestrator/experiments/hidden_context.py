"""Hidden context and length bias on the built-in preference data: what DPL, ODIN and the risk-averse
reward do about them, end to end through `rlhf rm` and `rlhf ppo`.

The data is `builtin:hidden-context` (`orchestrator.builtin.world.hidden_context_rows`): each pair is labelled
by one annotator, 65% from a casual group and 35% from a formal group that disagree about a casual
ending ("lol !!", the *disputed* style: +4.0 utility for the casual group, -2.5 for the formal one,
times the rationality 3), and every annotator prefers longer answers (+0.1 utility per word), which
the gold score ignores. The label does not say which group labelled it: that is the hidden context.

Three findings, each judged over seeds (`orchestrator.experiments.common.judge`: the pass rule, stated here
before any run, applies to the mean over seeds of the numbers below; the spread and the number of
seeds in which it holds alone are reported with it):

1. **DPL's std finds the disagreement.** A mean-variance DPL model's mean predicted std over the
   responses of held-out pairs the groups would disagree on (one response casual, one not:
   `disputed`) is at least `STD_RATIO` times that over pairs they agree on (number: `ratio`).
2. **ODIN's quality head is freed of length.** ODIN's quality head (its RL reward) correlates with
   response length at most half as much as a Bradley-Terry model trained on the same pairs with the
   same steps, while ODIN as a model (the sum of its heads, what it fits to the labels) ranks the
   held-out pairs about as well (accuracy within `ODIN_ACCURACY_GAP` of Bradley-Terry's). The quality
   head's own accuracy is reported too: it is lower by construction, since it ignores the length
   preference that decides a fifth of the pairs.
3. **The risk-averse reward avoids the disputed style.** PPO from the same SFT policy with the DPL
   model's alpha-quantile reward (`reward.statistic=quantile`) ends with a share of casual (disputed)
   answers on the held-out prompts at least `SHARE_DROP` (5 points) below PPO with its mean reward
   (number: `share_drop`; a margin, so that a tie of two saturated runs is not a pass).

Per seed s (`--seeds`, 3 by default, from `--seed`) the whole chain is its own: the SFT policy is the
built-in tiny Llama initialised with seed s and warm-started by `rlhf sft` with seed s
(`orchestrator.builtin.policy.builtin_policy_dir(size, seed)`, cached), the three reward models start from that
policy and train with seed s, and both PPO runs start from it with seed s. Each reward model is trained
by `rlhf rm` and each policy by `rlhf ppo` (`orchestrator.registry.run`; local mode, one thread: the
numbers do not depend on the machine's core count), on the shared skeleton of the experiments
(`orchestrator.experiments.common.Seeded`), so the experiment exercises the same code as the
commands; all outputs (models, reports, plots, metrics) stay under `--out/seed<s>/`. A reward model
already trained there (its final checkpoint) is reused (`run.resume=auto`), so a rerun after an
interruption picks up where it stopped.
`rlhf experiment hidden-context [--quick] [--seeds N]`; `--quick` is a smoke run (one seed on the
cached seed-0 policy, few steps and pairs; findings not expected to pass, only to be computed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from orchestrator.experiments.common import Finding, Seeded, builtin_policy, seeded_main, seeded_parser, train_ppo, train_rm

__all__ = ["EXPERIMENT", "main", "FINDINGS", "std_numbers", "odin_numbers", "risk_numbers"]

RM_STEPS, PPO_STEPS, SEEDS = 600, 100, 3
QUICK_RM_STEPS, QUICK_PPO_STEPS, QUICK_TRAIN_PAIRS, QUICK_EVAL_PAIRS = 30, 2, 2000, 200
ALPHA = 0.1
STD_RATIO = 1.2
ODIN_ACCURACY_GAP = 0.03
SHARE_DROP = 0.05
DATA = "builtin:hidden-context"
# ODIN's length and orthogonality weights: at 1.0 the length terms slow the tiny model's fit (on this
# data after 600 steps: accuracy of the sum of the heads 0.607 against 0.639 at 0.1 and 0.641 for BT).
ODIN_COEFS = ("model.odin_length_coef=0.1", "model.odin_orth_coef=0.1")

FINDINGS = (
    Finding("dpl_std_on_disputed_pairs", "DPL (mean-variance) mean predicted std, disputed over agreed held-out pairs",
            f"ratio >= {STD_RATIO}", lambda n: n["ratio"] >= STD_RATIO,
            (("ratio", "{:.2f}"), ("std_disputed", "{:.4f}"), ("std_agreed", "{:.4f}"), ("pair_accuracy", "{:.3f}"))),
    Finding("odin_length_decorrelation", "|Pearson with length|, ODIN quality head against Bradley-Terry",
            f"abs_rho_odin_quality <= 0.5 abs_rho_bt and |accuracy_gap| <= {ODIN_ACCURACY_GAP}",
            lambda n: n["abs_rho_odin_quality"] <= 0.5 * n["abs_rho_bt"] and abs(n["accuracy_gap"]) <= ODIN_ACCURACY_GAP,
            (("abs_rho_bt", "{:.3f}"), ("abs_rho_odin_quality", "{:.3f}"), ("accuracy_bt", "{:.3f}"),
             ("accuracy_odin_sum", "{:.3f}"), ("accuracy_gap", "{:+.3f}"))),
    Finding("risk_averse_ppo", f"casual (disputed) share of held-out answers after PPO, mean reward minus {ALPHA}-quantile reward",
            f"share_drop >= {SHARE_DROP}", lambda n: n["share_drop"] >= SHARE_DROP,
            (("share_drop", "{:+.3f}"), ("share_mean_reward", "{:.3f}"), ("share_quantile_reward", "{:.3f}"),
             ("share_start", "{:.3f}"), ("gold_mean_reward", "{:.3f}"), ("gold_quantile_reward", "{:.3f}"))),
)


def std_numbers(mv_eval: dict) -> dict:
    """Finding 1's numbers from a mean-variance model's held-out evaluation (`orchestrator.jobs.rm_eval`,
    grouped by `disputed`)."""
    by = mv_eval.get("by_group", {})
    disputed, agreed = by.get("True", {}), by.get("False", {})
    std_d, std_a = disputed.get("sigma_mean", float("nan")), agreed.get("sigma_mean", float("nan"))
    return {"std_disputed": std_d, "std_agreed": std_a, "ratio": std_d / std_a if std_a else float("nan"),
            "pairs_disputed": disputed.get("pairs", 0), "pairs_agreed": agreed.get("pairs", 0),
            "r2": mv_eval.get("r2", float("nan")), "pair_accuracy": mv_eval["pair_accuracy"],
            "ceiling": mv_eval.get("annotator_blind_ceiling", float("nan"))}


def odin_numbers(bt_eval: dict, odin_eval: dict) -> dict:
    """Finding 2's numbers from the Bradley-Terry and ODIN models' held-out evaluations."""
    rho_bt, rho_q = bt_eval["pearson_length"]["mean_utility"], odin_eval["pearson_length"]["quality"]
    return {"rho_bt": rho_bt, "rho_odin_quality": rho_q, "rho_odin_length_head": odin_eval["pearson_length"]["length_head"],
            "abs_rho_bt": abs(rho_bt), "abs_rho_odin_quality": abs(rho_q),
            "accuracy_bt": bt_eval["pair_accuracy"], "accuracy_odin_sum": odin_eval["pair_accuracy_sum"],
            "accuracy_odin_quality": odin_eval["pair_accuracy"],
            "accuracy_gap": odin_eval["pair_accuracy_sum"] - bt_eval["pair_accuracy"]}


def risk_numbers(mean_run: dict, quantile_run: dict) -> dict:
    """Finding 3's numbers from the summaries of the PPO runs with the mean and the quantile reward."""
    def end(run: dict, key: str) -> float:
        return run["eval_end"]["task"][key]

    return {"share_start": mean_run["eval_start"]["task"]["disputed_share"],
            "share_mean_reward": end(mean_run, "disputed_share"), "share_quantile_reward": end(quantile_run, "disputed_share"),
            "share_drop": end(mean_run, "disputed_share") - end(quantile_run, "disputed_share"),
            "gold_mean_reward": end(mean_run, "gold"), "gold_quantile_reward": end(quantile_run, "gold"),
            "words_mean_reward": end(mean_run, "length"), "words_quantile_reward": end(quantile_run, "length")}


def _rm(out: str, policy: str, objective: str, steps: int, seed: int, max_rows: int, eval_pairs: int) -> dict:
    return train_rm(f"{out}/rm-{objective}", [
        f"data.path={DATA}", "data.split=train", "data.eval_split=test", f"data.max_rows={max_rows}", f"rm.eval_max_pairs={eval_pairs}",
        f"run.steps={steps}", f"run.seed={seed}", f"model.path={policy}", f"model.objective={objective}", "rm.group_by=disputed",
        *ODIN_COEFS,
    ])


def _ppo(out: str, policy: str, name: str, rm_path: str, statistic: str, steps: int, seed: int) -> dict:
    return train_ppo(f"{out}/ppo-{name}", [
        f"run.steps={steps}", f"run.seed={seed}", f"policy.path={policy}", "reward.kind=model", f"reward.path={rm_path}",
        f"reward.statistic={statistic}", f"reward.alpha={ALPHA}",
    ])


def seed_chain(out: Path, seed: int, quick: bool) -> dict:
    """One seed's chain (SFT policy, three reward models, two PPO runs) in `out`; each finding's numbers."""
    rm_steps, ppo_steps, max_rows, eval_pairs = ((QUICK_RM_STEPS, QUICK_PPO_STEPS, QUICK_TRAIN_PAIRS, QUICK_EVAL_PAIRS)
                                                 if quick else (RM_STEPS, PPO_STEPS, 0, 0))
    policy = builtin_policy(seed, quick)
    rms = {obj: _rm(str(out), policy, obj, rm_steps, seed, max_rows, eval_pairs) for obj in ("mean_variance", "bradley_terry", "odin")}
    runs = {stat: _ppo(str(out), policy, stat, rms["mean_variance"]["model"], stat, ppo_steps, seed) for stat in ("mean", "quantile")}
    return {"dpl_std_on_disputed_pairs": std_numbers(rms["mean_variance"]["eval"]),
            "odin_length_decorrelation": odin_numbers(rms["bradley_terry"]["eval"], rms["odin"]["eval"]),
            "risk_averse_ppo": risk_numbers(runs["mean"], runs["quantile"]),
            "policy": policy, "train_pairs": rms["mean_variance"]["train_pairs"]}


def report(folder: Path, chains: list, quick: bool) -> dict:
    return {"data": DATA, "train_pairs": chains[0]["train_pairs"], "policies": [c["policy"] for c in chains],
            "rm_steps": QUICK_RM_STEPS if quick else RM_STEPS, "ppo_steps": QUICK_PPO_STEPS if quick else PPO_STEPS}


EXPERIMENT = Seeded(
    name="hidden-context", description="DPL std, ODIN length decorrelation and risk-averse PPO on the built-in data.",
    findings=FINDINGS, chain=seed_chain, numbers=lambda chain: chain,
    summary_line=lambda r: (f"{r['data']}: {r['train_pairs']} training pairs, {r['rm_steps']} reward-model steps of 32 pairs, "
                            f"{r['ppo_steps']} PPO steps, seeds {', '.join(map(str, r['seeds']))}, {r['wall_time_s']:.0f} s"),
    report=report, seeds=SEEDS)


def parser(prog: str | None = None):
    return seeded_parser(EXPERIMENT, prog)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    return seeded_main(EXPERIMENT, argv, prog)


if __name__ == "__main__":
    raise SystemExit(main())
