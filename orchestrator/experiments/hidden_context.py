"""Hidden context and length bias on the built-in preference data: what DPL, ODIN and the risk-averse
reward do about them, end to end through `rlhf rm` and `rlhf ppo`.

The data is `builtin:hidden-context` (`orchestrator.task.hidden_context_rows`): each pair is labelled
by one annotator, 65% from a casual group and 35% from a formal group that disagree about a casual
ending ("lol !!", the *disputed* style: +4.0 utility for the casual group, -2.5 for the formal one,
times the rationality 3), and every annotator prefers longer answers (+0.1 utility per word), which
the gold score ignores. The label does not say which group labelled it: that is the hidden context.

Three findings, each with a pass flag:

1. **DPL's std finds the disagreement.** A mean-variance DPL model's mean predicted std over the
   responses of held-out pairs the groups would disagree on (one response casual, one not:
   `disputed`) is at least `STD_RATIO` times that over pairs they agree on.
2. **ODIN's quality head is freed of length.** ODIN's quality head (its RL reward) correlates with
   response length at most half as much as a Bradley-Terry model trained on the same pairs with the
   same steps, while ODIN as a model (the sum of its heads, what it fits to the labels) ranks the
   held-out pairs about as well (accuracy within `ODIN_ACCURACY_GAP` of Bradley-Terry's). The quality
   head's own accuracy is reported too: it is lower by construction, since it ignores the length
   preference that decides a fifth of the pairs.
3. **The risk-averse reward avoids the disputed style.** PPO from the same SFT policy with the DPL
   model's alpha-quantile reward (`reward.statistic=quantile`) ends with a smaller share of casual
   (disputed) answers on the held-out prompts than PPO with its mean reward.

Each reward model is trained by `orchestrator.rm.train` and each policy by `orchestrator.ppo.train`
(local mode: one process per role is not needed for a comparison), so the experiment exercises the
same code as the commands; all outputs (models, reports, plots, metrics) stay under `--out`. A reward
model already trained there (its final checkpoint) is reused (`run.resume=auto`), so a rerun after an
interruption picks up where it stopped.
`rlhf experiment hidden-context [--quick]`; `--quick` is a smoke run (few steps and pairs; findings
not expected to pass).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from typing import Sequence

from orchestrator.config import load_job_config
from orchestrator.experiments import write_findings

__all__ = ["run", "main", "format_findings"]

RM_STEPS, PPO_STEPS = 600, 100
QUICK_RM_STEPS, QUICK_PPO_STEPS, QUICK_TRAIN_PAIRS, QUICK_EVAL_PAIRS = 30, 2, 2000, 200
ALPHA = 0.1
STD_RATIO = 1.2
ODIN_ACCURACY_GAP = 0.03
DATA = "builtin:hidden-context"
# ODIN's length and orthogonality weights: at 1.0 the length terms slow the tiny model's fit (on this
# data after 600 steps: accuracy of the sum of the heads 0.607 against 0.639 at 0.1 and 0.641 for BT).
ODIN_COEFS = ("model.odin_length_coef=0.1", "model.odin_orth_coef=0.1")


def _rm(out: str, objective: str, steps: int, seed: int, max_rows: int, eval_pairs: int) -> dict:
    from orchestrator.rm import train

    cfg = load_job_config("rm", None, [
        f"data.path={DATA}", "data.split=train", "data.eval_split=test", f"data.max_rows={max_rows}", f"rm.eval_max_pairs={eval_pairs}",
        f"run.output_dir={out}/rm-{objective}", f"run.steps={steps}", f"run.seed={seed}", "run.mode=local",
        "run.resume=auto", "run.save_every=0", "run.eval_every=0", f"model.objective={objective}", "rm.group_by=disputed",
        *ODIN_COEFS,
    ])
    return train(cfg)


def _ppo(out: str, name: str, rm_path: str, statistic: str, steps: int, seed: int) -> dict:
    from orchestrator.ppo import train

    cfg = load_job_config("ppo", None, [
        f"run.output_dir={out}/ppo-{name}", f"run.steps={steps}", f"run.seed={seed}", "run.mode=local",
        "run.resume=never", "run.save_every=0", "reward.kind=model", f"reward.path={rm_path}",
        f"reward.statistic={statistic}", f"reward.alpha={ALPHA}",
    ])
    return train(cfg)


def run(out: str, seed: int = 0, quick: bool = False) -> dict:
    os.makedirs(out, exist_ok=True)
    rm_steps, ppo_steps, max_rows, eval_pairs = ((QUICK_RM_STEPS, QUICK_PPO_STEPS, QUICK_TRAIN_PAIRS, QUICK_EVAL_PAIRS)
                                                 if quick else (RM_STEPS, PPO_STEPS, 0, 0))
    t0 = time.time()
    rms = {obj: _rm(out, obj, rm_steps, seed, max_rows, eval_pairs) for obj in ("mean_variance", "bradley_terry", "odin")}
    bt, mv, odin = (rms[k]["eval"] for k in ("bradley_terry", "mean_variance", "odin"))

    by = mv.get("by_group", {})
    std_disputed = by.get("True", {}).get("sigma_mean", float("nan"))
    std_agreed = by.get("False", {}).get("sigma_mean", float("nan"))
    finding1 = {"std_disputed": std_disputed, "std_agreed": std_agreed,
                "pairs_disputed": by.get("True", {}).get("pairs"), "pairs_agreed": by.get("False", {}).get("pairs"),
                "r2": mv.get("r2"), "pair_accuracy": mv["pair_accuracy"],
                "ceiling": mv.get("annotator_blind_ceiling"), "min_ratio": STD_RATIO,
                "passed": std_disputed >= STD_RATIO * std_agreed}

    rho_bt = bt["pearson_length"]["mean_utility"]
    rho_q = odin["pearson_length"]["quality"]
    finding2 = {"rho_length_bt": rho_bt, "rho_length_odin_quality": rho_q,
                "rho_length_odin_length_head": odin["pearson_length"]["length_head"],
                "accuracy_bt": bt["pair_accuracy"], "accuracy_odin_quality": odin["pair_accuracy"],
                "accuracy_odin_sum": odin["pair_accuracy_sum"], "max_accuracy_gap": ODIN_ACCURACY_GAP,
                "passed": abs(rho_q) <= 0.5 * abs(rho_bt)
                and abs(odin["pair_accuracy_sum"] - bt["pair_accuracy"]) <= ODIN_ACCURACY_GAP}

    mv_path = rms["mean_variance"]["model"]
    runs = {stat: _ppo(out, stat, mv_path, stat, ppo_steps, seed) for stat in ("mean", "quantile")}

    def end(stat: str, key: str) -> float:
        return runs[stat]["eval_end"]["task"][key]

    finding3 = {"alpha": ALPHA,
                "disputed_share_start": runs["mean"]["eval_start"]["task"]["disputed_share"],
                "disputed_share_mean_reward": end("mean", "disputed_share"),
                "disputed_share_quantile_reward": end("quantile", "disputed_share"),
                "gold_mean_reward": end("mean", "gold"), "gold_quantile_reward": end("quantile", "gold"),
                "words_mean_reward": end("mean", "length"), "words_quantile_reward": end("quantile", "length"),
                "passed": end("quantile", "disputed_share") < end("mean", "disputed_share")}
    result = {"dpl_std_on_disputed_pairs": finding1, "odin_length_decorrelation": finding2,
              "risk_averse_ppo": finding3, "data": DATA, "train_pairs": rms["mean_variance"]["train_pairs"],
              "rm_steps": rm_steps, "ppo_steps": ppo_steps, "seed": seed, "quick": quick, "wall_time_s": round(time.time() - t0, 1)}
    result["passed"] = all(f["passed"] for f in (finding1, finding2, finding3))
    return result


def format_findings(result: dict) -> list[str]:
    f1, f2, f3 = (result[k] for k in ("dpl_std_on_disputed_pairs", "odin_length_decorrelation", "risk_averse_ppo"))
    flag = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    return [
        f"[{flag(f1['passed'])}] DPL (mean-variance) mean predicted std: disputed pairs {f1['std_disputed']:.4f} "
        f"({f1['pairs_disputed']} pairs) vs agreed pairs {f1['std_agreed']:.4f} ({f1['pairs_agreed']}), ratio "
        f"{f1['std_disputed'] / f1['std_agreed']:.2f} (pass: >= {f1['min_ratio']}); r^2 {f1['r2']:.3f}, held-out accuracy "
        f"{f1['pair_accuracy']:.3f} (annotator-blind ceiling {f1['ceiling']:.3f})",
        f"[{flag(f2['passed'])}] Pearson with length: Bradley-Terry {f2['rho_length_bt']:+.3f} vs ODIN quality head "
        f"{f2['rho_length_odin_quality']:+.3f} (length head {f2['rho_length_odin_length_head']:+.3f}); held-out accuracy "
        f"BT {f2['accuracy_bt']:.3f} vs ODIN {f2['accuracy_odin_sum']:.3f} (quality head alone {f2['accuracy_odin_quality']:.3f})",
        f"[{flag(f3['passed'])}] casual (disputed) share of held-out answers after PPO: mean reward "
        f"{f3['disputed_share_mean_reward']:.3f} vs {f3['alpha']}-quantile reward {f3['disputed_share_quantile_reward']:.3f} "
        f"(SFT start {f3['disputed_share_start']:.3f}); gold {f3['gold_mean_reward']:.3f} vs {f3['gold_quantile_reward']:.3f}",
        f"{result['data']}: {result['train_pairs']} training pairs, {result['rm_steps']} reward-model steps of 32 pairs, "
        f"{result['ppo_steps']} PPO steps, {result['wall_time_s']:.0f} s",
    ]


def exit_code(result: dict) -> int:
    """0 when the run showed what it is for, else 1. A full run: every finding passed. A quick run (a
    smoke test of the chain; its findings are not expected to pass): every number a finding is judged
    on came out finite."""
    if not result["quick"]:
        return 0 if result["passed"] else 1
    numbers = [v for key in ("dpl_std_on_disputed_pairs", "odin_length_decorrelation", "risk_averse_ppo")
               for v in result[key].values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return 0 if numbers and all(math.isfinite(v) for v in numbers) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run, print the findings, write findings.json; the exit code of `exit_code`."""
    parser = argparse.ArgumentParser(prog="rlhf experiment hidden-context",
                                     description="DPL std, ODIN length decorrelation and risk-averse PPO on the built-in data.")
    parser.add_argument("--out", default="runs/hidden-context", help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few steps of each run, for smoke tests")
    args = parser.parse_args(argv)
    result = run(args.out, seed=args.seed, quick=args.quick)
    write_findings(result, format_findings(result), args.out)
    return exit_code(result)


if __name__ == "__main__":
    raise SystemExit(main())
