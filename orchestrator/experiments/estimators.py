"""`rlhf experiment estimators`: PPO with a critic (GAE) against the critic-free estimators (GRPO,
Dr. GRPO, GRPO with the KL in the loss, RLOO, REINFORCE++) on the built-in task, at the same number of
generated responses.

Every variant is a real `rlhf ppo` run (ray mode: one actor per role, so the peak memory of each role
is its own process's) from the same SFT policy, with the same reward (the built-in annotator reward,
which favours length and the disputed casual ending, see `orchestrator.builtin.world`), the same steps, the same
`ppo.rollout_batch_size` (responses per step), minibatches and epochs. Only the advantage estimator
and what it needs differ (`VARIANTS`): the group estimators answer each prompt `GROUP` times, so they
see `rollout_batch_size / GROUP` prompts per step where GAE and REINFORCE++ see `rollout_batch_size`.

Reported per variant, as the mean and the spread (min..max) over seeds: held-out gold at the end (and
its change from the SFT policy), the training reward and the KL to the reference over the last 10
steps, the held-out answer length (tokens, words) and the share of the disputed ending, step time,
and the peak memory of each role. Outputs in `--out`: results.json (every run and the summary),
results.md (the table), curves.png (held-out gold and length over training), and each run's own
folder under points/ (its metrics.jsonl, summary.json, log). Each run goes through
`orchestrator.experiments.scaling.run_point`, the same runner as the scaling sweep; a run with a result
is not repeated, so an interrupted experiment picks up where it stopped.

There is no pass/fail rule: the experiment measures, and says which estimator did best and worst on
held-out gold.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Sequence

__all__ = ["VARIANTS", "run", "summarise", "format_table", "main"]

GROUP = 4
"""Responses per prompt of the group estimators (grpo, dr_grpo, grpo_kl_loss, rloo)."""

VARIANTS: dict[str, dict[str, str]] = {
    "gae": {"ppo.advantage_estimator": "gae"},
    "grpo": {"ppo.advantage_estimator": "grpo", "ppo.samples_per_prompt": str(GROUP)},
    "dr_grpo": {"ppo.advantage_estimator": "grpo", "ppo.samples_per_prompt": str(GROUP), "ppo.grpo_scale_by_std": "false",
                "ppo.loss_agg": "seq_mean_token_sum_norm"},
    "grpo_kl_loss": {"ppo.advantage_estimator": "grpo", "ppo.samples_per_prompt": str(GROUP), "ppo.kl_in_loss": "true",
                     "ppo.loss_agg": "seq_mean_token_mean"},
    "rloo": {"ppo.advantage_estimator": "rloo", "ppo.samples_per_prompt": str(GROUP)},
    "reinforce_pp": {"ppo.advantage_estimator": "reinforce_pp"},
}
"""What each variant sets; everything else is `BASE` and the defaults of `rlhf ppo`."""

BASE = {"run.mode": "ray", "run.eval_every": "20"}
FULL = {"steps": 100, "seeds": 3}
QUICK = {"steps": 6, "seeds": 1, "fixed": {"ppo.rollout_batch_size": "16", "ppo.minibatch_size": "8", "run.eval_every": "3"}}
LAST = 10
"""Training metrics are averaged over the last LAST steps."""


def run(out: Path, steps: int, seeds: Sequence[int], fixed: dict[str, str], variants: Sequence[str],
        timeout_s: float = 3600.0) -> list[dict]:
    """One `rlhf ppo` run per variant and seed (skipping those already measured); returns their rows."""
    from orchestrator.experiments import scaling
    from orchestrator.registry import load_config

    spec = {"job": "ppo", "warmup": 1, "steps": steps - 1, "fixed": {**BASE, **fixed}}
    for name in variants:  # every run's config resolves before the first starts
        load_config("ppo", None, [f"{k}={v}" for k, v in {**spec["fixed"], **VARIANTS[name]}.items()])
    rows = []
    todo = [(name, seed) for seed in seeds for name in variants]
    for i, (name, seed) in enumerate(todo):
        folder = out / "points" / f"{name}_seed{seed}"
        done = folder / "result.json"
        row = json.loads(done.read_text()) if done.exists() else None
        if row is None or row.get("status") != "ok" or "gold_end" not in row:
            print(f"[{i + 1}/{len(todo)}] {name} seed {seed}: running", flush=True)
            row = scaling.run_point(spec, {**VARIANTS[name], "run.seed": str(seed)}, folder, timeout_s)
            if row["status"] == "ok":
                row.update(outcome(folder / "run"))
            done.write_text(json.dumps(row, indent=1))
        row.update(variant=name, seed=seed)
        status = (f"gold {row['gold_start']:.4f} -> {row['gold_end']:.4f}, {row['step_s']:.2f} s/step"
                  if row["status"] == "ok" else f"FAILED: {row['error']}")
        print(f"[{i + 1}/{len(todo)}] {name} seed {seed}: {status}", flush=True)
        rows.append(row)
    return rows


def outcome(run_dir: Path) -> dict:
    """What a finished run learned: held-out gold, length and disputed share at the start and end, the
    training reward and KL over the last `LAST` steps, and the held-out curves."""
    records = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    summary = json.loads((run_dir / "summary.json").read_text())
    steps = [r for r in records if "reward/score" in r][-LAST:]
    start, end = summary["eval_start"], summary["eval_end"]
    evals = [r for r in records if "eval/gold" in r]
    return {
        "gold_start": start["gold"], "gold_end": end["gold"],
        "length_tokens_end": end["length_tokens"], "length_words_end": end["task"]["length"],
        "disputed_end": end["task"]["disputed_share"],
        "train_reward_last": statistics.mean(r["reward/score"] for r in steps),
        "kl_last": statistics.mean(r["kl/mean"] for r in steps),
        "curve_steps": [r["step"] for r in evals], "curve_gold": [r["eval/gold"] for r in evals],
        "curve_length": [r["eval/length"] for r in evals],
    }


COLUMNS = [("gold_end", "held-out gold", "{:.3f}"), ("gold_gain", "gold gain", "{:+.3f}"),
           ("train_reward_last", "train reward", "{:.3f}"), ("kl_last", "KL", "{:.2f}"),
           ("length_tokens_end", "length (tokens)", "{:.1f}"), ("disputed_end", "disputed ending", "{:.0%}"),
           ("step_s", "s/step", "{:.2f}")]


def summarise(rows: list[dict]) -> dict:
    """Per variant: mean, min and max over seeds of each `COLUMNS` number and of each role's peak memory."""
    out = {}
    for name in dict.fromkeys(r["variant"] for r in rows):
        ok = [r for r in rows if r["variant"] == name and r["status"] == "ok"]
        if not ok:
            out[name] = {"runs": 0}
            continue
        for r in ok:
            r["gold_gain"] = r["gold_end"] - r["gold_start"]
        keys = [k for k, _, _ in COLUMNS] + sorted({k for r in ok for k in r if k.startswith("memory_mb/")})
        out[name] = {"runs": len(ok), **{k: {"mean": statistics.mean(r[k] for r in ok if k in r),
                                             "min": min(r[k] for r in ok if k in r), "max": max(r[k] for r in ok if k in r)}
                                         for k in keys if any(k in r for r in ok)}}
    return out


def format_table(summary: dict) -> str:
    """results.md: one row per variant, each cell the mean over seeds with its range when there are several."""
    roles = sorted({k.split("/", 1)[1] for s in summary.values() for k in s if k.startswith("memory_mb/")})
    head = ["estimator", "runs"] + [title for _, title, _ in COLUMNS] + [f"peak MB {role}" for role in roles]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in summary.items():
        cells = [name, str(s["runs"])]
        for key, _, fmt in COLUMNS + [(f"memory_mb/{role}", "", "{:.0f}") for role in roles]:
            if key not in s:
                cells.append("-")
                continue
            v = s[key]
            cells.append(fmt.format(v["mean"]) + (f" ({fmt.format(v['min'])}..{fmt.format(v['max'])})" if s["runs"] > 1 else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Held-out gold and length over training, the mean over seeds per variant (the one curve plot,
    `orchestrator.core.metrics.plot_curves`)."""
    from orchestrator.core.metrics import plot_curves

    series = {}
    for name in dict.fromkeys(r["variant"] for r in rows):
        ok = [r for r in rows if r["variant"] == name and r["status"] == "ok"]
        if ok:
            n = min(len(r["curve_steps"]) for r in ok)
            series[name] = [{"step": ok[0]["curve_steps"][i], **{key: statistics.mean(r[key][i] for r in ok)
                                                                  for key in ("curve_gold", "curve_length")}} for i in range(n)]
    plot_curves(series, ["curve_gold", "curve_length"], path, labels={
        "step": "PPO step", "curve_gold": "held-out gold (mean over seeds)", "curve_length": "held-out answer length (tokens)"})


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The options of `rlhf experiment estimators`."""
    p = argparse.ArgumentParser(prog=prog or "rlhf experiment estimators", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/estimators")
    p.add_argument("--seed", type=int, default=0, help="the first seed; seeds are seed, seed+1, ...")
    p.add_argument("--seeds", type=int, help=f"seeds per variant (default {FULL['seeds']}; --quick {QUICK['seeds']})")
    p.add_argument("--quick", action="store_true", help=f"{QUICK['steps']} steps of 16 responses per variant, one seed")
    p.add_argument("--variants", help="comma-separated subset of " + ", ".join(VARIANTS))
    p.add_argument("--engine", choices=["hf", "vllm"], default="hf", help="what samples the rollouts (generator.engine)")
    return p


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = parser(prog).parse_args(argv)
    mode = QUICK if args.quick else FULL
    variants = args.variants.split(",") if args.variants else list(VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        from orchestrator.config import ConfigError

        raise ConfigError(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    seeds = [args.seed + i for i in range(args.seeds or mode["seeds"])]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"rlhf experiment estimators: {len(variants)} estimator(s) x {len(seeds)} seed(s), {mode['steps']} steps each, "
          f"into {out}", flush=True)
    t0 = time.perf_counter()
    fixed = {**mode.get("fixed", {}), **({"generator.engine": args.engine} if args.engine != "hf" else {})}
    rows = run(out, mode["steps"], seeds, fixed, variants)
    summary = summarise(rows)
    table = format_table(summary)
    (out / "results.json").write_text(json.dumps({"steps": mode["steps"], "seeds": seeds, "variants": {v: VARIANTS[v] for v in variants},
                                                  "runs": rows, "summary": summary}, indent=1))
    (out / "results.md").write_text(table + "\n")
    if any(r["status"] == "ok" for r in rows):
        plot(rows, out / "curves.png")
    print(table)
    ranked = sorted((s["gold_end"]["mean"], name) for name, s in summary.items() if s["runs"])
    if ranked:
        print(f"best held-out gold: {ranked[-1][1]} ({ranked[-1][0]:.3f}); worst: {ranked[0][1]} ({ranked[0][0]:.3f})")
    failed = sum(r["status"] != "ok" for r in rows)
    print(f"written {out / 'results.json'}, {out / 'results.md'}, {out / 'curves.png'} ({time.perf_counter() - t0:.0f} s)"
          + (f"; {failed} run(s) failed" if failed else ""))
    return 0 if not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
