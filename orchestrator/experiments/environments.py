"""`rlhf experiment environments`: do PPO and GRPO teach the policy what multi-turn tasks need (a tool call,
a clarifying question) beyond what its SFT warm start does?

Two built-in environments (`orchestrator.builtin.environments`): `lookup`, whose answer is a per-episode color
that only a `look up` tool call reveals, and `clarify`, whose vague request needs a question before the answer
("Which topic do you mean?"). Their rewards are the world's gold (`eval/gold` = the mean held-out episode
return). Per seed s and environment:

1. SFT warm start: `rlhf sft` from the seed's built-in tiny policy on `builtin:<env>-sft` (`SFT_STEPS` steps):
   whole episodes, half of them the right strategy and half a guess, so the SFT policy starts well above zero
   and well below the ceiling;
2. from that policy, with the environment's rewards alone (reward.kind=none): `ppo` (a critic, GAE across the
   turns) and `grpo` (`GROUP` episodes per prompt), the same steps and episodes per step.

Reported over seeds, per environment and algorithm: held-out return (the success rate on lookup, the gold of
the final answer on clarify) of the SFT policy and at the end, the tool calls (lookup) or turns (clarify) per
held-out episode, and the curves. Findings, with pass rules stated before any run and applied to the mean
over seeds: on each environment, both PPO and GRPO raise held-out return by at least `GAIN` over the SFT policy.

Per seed, the chain is its own (the built-in policy of the seed, its SFT runs and PPO runs with seed s), in
this process, local mode, one thread, on the shared skeleton of the experiments
(`orchestrator.experiments.common.Seeded`). Outputs under `--out`: seed<s>/sft-<env>/, seed<s>/<env>-<algo>/,
findings.json, results.md, curves.png. `--quick`: one seed on the cached seed-0 policy, 20 SFT steps and 2 PPO
steps of 16 episodes: a smoke run of the chain.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from orchestrator.experiments.common import (Finding, Seeded, builtin_policy, plot_variant_curves, seeded_main,
                                             seeded_parser, train_ppo, train_sft, variant_table)

__all__ = ["ENVS", "ALGOS", "FINDINGS", "EXPERIMENT", "main"]

ENVS = ("lookup", "clarify")
GROUP = 4
ALGOS: dict[str, list[str]] = {"ppo": [], "grpo": ["ppo.advantage_estimator=grpo", f"ppo.samples_per_prompt={GROUP}"]}
SFT = ["policy.lr=1e-3", "policy.warmup_steps=10"]
SFT_STEPS, PPO_STEPS, EVAL_EVERY, SEEDS = 150, 30, 10, 3
QUICK = {"sft_steps": 20, "ppo_steps": 2, "ppo": ["ppo.rollout_batch_size=16", "ppo.minibatch_size=16", "run.eval_every=0"]}
GAIN = 0.1

FINDINGS = tuple(
    Finding(f"{env}_gain", f"{env}: held-out return at the end minus the SFT policy's, PPO and GRPO",
            f"gain_ppo >= {GAIN} and gain_grpo >= {GAIN}", lambda n: n["gain_ppo"] >= GAIN and n["gain_grpo"] >= GAIN,
            (("gain_ppo", "{:+.3f}"), ("gain_grpo", "{:+.3f}"), ("sft", "{:.3f}"), ("ppo", "{:.3f}"), ("grpo", "{:.3f}")))
    for env in ENVS)
COLUMNS = [("return", "held-out return", "{:.3f}"), ("tool_calls", "tool calls / episode", "{:.2f}"),
           ("turns", "model turns / episode", "{:.2f}"), ("tokens", "episode tokens", "{:.1f}")]


def seed_chain(out: Path, seed: int, quick: bool) -> tuple[dict, dict]:
    """One seed's SFT warm starts and PPO runs in `out`: (table rows {env-variant: numbers}, curves)."""
    base = builtin_policy(seed, quick)
    rows, curves = {}, {}
    for env in ENVS:
        print(f"environments: seed {seed}, SFT warm start on builtin:{env}-sft", flush=True)
        sft_dir = out / f"sft-{env}"
        train_sft(str(sft_dir), [f"policy.path={base}", f"data.path=builtin:{env}-sft", f"run.seed={seed}",
                                 f"run.steps={QUICK['sft_steps'] if quick else SFT_STEPS}", *SFT])
        extra = [f"run.steps={QUICK['ppo_steps']}", *QUICK["ppo"]] if quick else [f"run.steps={PPO_STEPS}", f"run.eval_every={EVAL_EVERY}"]
        for algo, overrides in ALGOS.items():
            print(f"environments: seed {seed}, {algo} on builtin:{env}", flush=True)
            run_dir = out / f"{env}-{algo}"
            summary = train_ppo(str(run_dir), [f"policy.path={sft_dir / 'policy'}", f"env.path=builtin:{env}", f"data.path=builtin:{env}",
                                               "reward.kind=none", f"run.seed={seed}", *extra, *overrides])
            rows.setdefault(f"{env}-sft", _numbers(summary["eval_start"]))
            rows[f"{env}-{algo}"] = _numbers(summary["eval_end"])
            records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
            evals = [r for r in records if "eval/return" in r]
            curves[f"{env}-{algo}"] = {"step": [r["step"] for r in evals], "gold": [r["eval/return"] for r in evals],
                                       "length": [r["eval/tokens"] for r in evals]}
    return rows, curves


def _numbers(evaluation: dict) -> dict:
    task = evaluation["task"]
    return {"return": task["return"], "tool_calls": task["tool_calls"], "turns": task["turns"], "tokens": task["tokens"]}


def finding_numbers(rows: dict) -> dict:
    out = {}
    for env in ENVS:
        sft, ppo, grpo = (rows[f"{env}-{k}"]["return"] for k in ("sft", "ppo", "grpo"))
        out[f"{env}_gain"] = {"sft": sft, "ppo": ppo, "grpo": grpo, "gain_ppo": ppo - sft, "gain_grpo": grpo - sft}
    return out


def report(folder: Path, chains: list, quick: bool) -> dict:
    """The table over seeds (results.md) and the held-out return curves (curves.png)."""
    tables, curves = [rows for rows, _ in chains], [c for _, c in chains]
    summary, table = variant_table(tables, COLUMNS)
    (folder / "results.md").write_text(table + "\n")
    print(table)
    variants = list(curves[0])
    if all(len(c[v]["step"]) > 1 for c in curves for v in variants):
        plot_variant_curves(curves, variants, str(folder / "curves.png"))
    return {"sft_steps": QUICK["sft_steps"] if quick else SFT_STEPS, "ppo_steps": QUICK["ppo_steps"] if quick else PPO_STEPS,
            "table": summary, "per_seed": tables, "curves": curves}


EXPERIMENT = Seeded(
    name="environments", description=__doc__.split("\n\n")[0], findings=FINDINGS, chain=seed_chain,
    numbers=lambda chain: finding_numbers(chain[0]),
    summary_line=lambda r: (f"builtin:lookup and builtin:clarify: {r['sft_steps']} SFT steps, {r['ppo_steps']} PPO steps per "
                            f"algorithm, seeds {', '.join(map(str, r['seeds']))}, {r['wall_time_s']:.0f} s"),
    report=report, seeds=SEEDS, quick_help="one seed, a few steps of every run")


def parser(prog: str | None = None):
    return seeded_parser(EXPERIMENT, prog)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    return seeded_main(EXPERIMENT, argv, prog)


if __name__ == "__main__":
    raise SystemExit(main())
