"""What the experiments share: findings judged over seeds, and the one skeleton of an experiment over
seeds (`Seeded`, `run_seeded`, `seeded_main`): per seed its whole chain, then the findings, then its
tables and plots; each prints its findings with pass flags and writes them to `<out>/findings.json`.

Findings over seeds (`Finding`, `judge`, `format_finding`): an experiment runs its whole chain once per
seed (the SFT policy, the reward models and the PPO runs all change with the seed) and computes, per
seed, the numbers each finding is judged on. A finding's pass rule is stated in advance, as code and as
text, and applied to the mean of those numbers over the seeds; the spread (min..max) and the number of
seeds in which the rule holds on their own are reported with it, so a finding that passes on the mean
but not seed by seed is visible as such.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

__all__ = ["write_findings", "Finding", "Seeded", "spread", "judge", "format_finding", "finite_numbers", "one_thread",
           "train_ppo", "train_rm", "train_sft", "builtin_policy", "variant_table", "variant_report", "answer_numbers", "ppo_outcome", "plot_variant_curves",
           "findings_exit_code", "run_seeded", "add_seeded_args", "seeded_parser", "seeded_main"]


def write_findings(result: dict, lines: list[str], out: str) -> str:
    """Print `lines` (the formatted findings) and write `result` to `<out>/findings.json`; returns that path."""
    for line in lines:
        print(line)
    path = os.path.join(out, "findings.json")
    with open(path, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"findings written to {path}")
    return path


@dataclass(frozen=True)
class Finding:
    """A claim and its pass rule, judged on the per-seed numbers `judge` is given."""

    key: str
    """Its key in findings.json."""
    claim: str
    """What it says, printed before the numbers."""
    rule: str
    """The pass rule in words (printed), e.g. 'mean ratio >= 1.2'."""
    holds: Callable[[dict], bool]
    """The pass rule on a dict of numbers: one seed's, or their means over the seeds."""
    show: tuple[tuple[str, str], ...]
    """(number key, format) of the numbers printed with the verdict, e.g. (('ratio', '{:.2f}'),)."""


def spread(values: Sequence[float]) -> dict:
    """Mean, sample std (0 for one value), min, max and the values themselves; all NaN when a value is
    not finite (a number a run could not measure)."""
    values = [float(v) for v in values]
    if not all(math.isfinite(v) for v in values):
        nan = float("nan")
        return {"mean": nan, "sd": nan, "min": nan, "max": nan, "values": values}
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "values": values}


def judge(finding: Finding, per_seed: Sequence[dict]) -> dict:
    """The verdict of `finding` over seeds: each number's spread, the rule on the means (`passed`) and
    in how many seeds the rule holds on that seed's numbers alone (`seeds_passed` of `seeds`)."""
    keys = [k for k, v in per_seed[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    numbers = {k: spread([s[k] for s in per_seed]) for k in keys}
    means = {k: v["mean"] for k, v in numbers.items()}
    return {"claim": finding.claim, "rule": finding.rule, "numbers": numbers,
            "passed": bool(finding.holds(means)), "seeds": len(per_seed),
            "seeds_passed": sum(bool(finding.holds(s)) for s in per_seed), "per_seed": list(per_seed)}


def format_finding(finding: Finding, verdict: dict) -> str:
    """One line: [PASS]/[FAIL], the claim, each shown number as mean (min..max), the rule, seeds passing."""
    def show(key: str, fmt: str) -> str:
        v = verdict["numbers"][key]
        if verdict["seeds"] == 1:
            return f"{key} {fmt.format(v['mean'])}"
        return f"{key} {fmt.format(v['mean'])} ({fmt.format(v['min'])}..{fmt.format(v['max'])})"

    flag = "PASS" if verdict["passed"] else "FAIL"
    numbers = ", ".join(show(k, f) for k, f in finding.show)
    return (f"[{flag}] {finding.claim}: {numbers}; pass: {finding.rule} (on the mean over seeds); "
            f"holds in {verdict['seeds_passed']} of {verdict['seeds']} seed(s)")


def finite_numbers(verdicts: Sequence[dict]) -> bool:
    """Whether every number of every seed of every verdict is finite (a smoke run's success)."""
    values = [v for verdict in verdicts for s in verdict["per_seed"] for v in s.values()
              if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return bool(values) and all(math.isfinite(v) for v in values)


def findings_exit_code(result: dict, findings: Sequence[Finding]) -> int:
    """0 when a run showed what it is for, else 1. A full run: every finding passed. A quick run (a
    smoke test of the chain; its findings are not expected to pass): every number a finding is judged
    on came out finite."""
    if not result["quick"]:
        return 0 if result["passed"] else 1
    return 0 if finite_numbers([result[f.key] for f in findings]) else 1


@dataclass(frozen=True)
class Seeded:
    """An experiment over seeds, as the shared skeleton (`run_seeded`, `main`) runs it: per seed, its whole
    chain (`chain(folder, seed, quick)`: the SFT policy, the reward models, the PPO runs); then each finding
    judged on the chains' numbers; then the experiment's own tables and plots (`report`)."""

    name: str
    """Its name after `rlhf experiment`."""
    description: str
    findings: tuple
    chain: Callable[[Path, int, bool], Any]
    """One seed's whole chain, its outputs under the folder given; returns what it measured."""
    numbers: Callable[[Any], dict]
    """A chain's numbers for each finding: {finding key: {number: value}}."""
    summary_line: Callable[[dict], str]
    """The last line of the findings (data, steps, seeds, time) from the result."""
    report: Callable[[Path, list, bool], dict] = lambda folder, chains, quick: {}
    """The experiment's own result fields (tables, curves; files written into the folder) from the chains."""
    seeds: int = 3
    """Seeds of a full run (a quick run: 1)."""
    quick_help: str = "a few steps of every run, for smoke tests (findings computed, not expected to pass)"
    single_thread: bool = True
    """Run under one torch thread (`one_thread`: trained numbers the same on any core count). False for an
    experiment whose numbers are AUCs over thousands of rows, which a thread count cannot move, and whose
    encoder passes take minutes (`data-audit`)."""


ENGINE: list[str] = []
"""Overrides every PPO run of the running experiment gets (`--engine vllm`: generator.engine=vllm), set by
`run_seeded` for its duration and read by `train_ppo`."""


def run_seeded(exp: Seeded, out: str, seed: int = 0, quick: bool = False, seeds: int | None = None,
               engine: str = "hf") -> dict:
    """`exp` over seeds seed, seed+1, ... (`seeds`, default `exp.seeds`; quick: 1) under one thread, every PPO
    run sampling with `engine` (generator.engine); the result: each finding's verdict, the experiment's
    report, the seeds, quick, the engine, the wall time and passed."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    seed_list = [seed + i for i in range(seeds or (1 if quick else exp.seeds))]
    t0 = time.time()
    chains = []
    ENGINE[:] = [f"generator.engine={engine}"] if engine != "hf" else []
    try:
        with one_thread() if exp.single_thread else contextlib.nullcontext():
            for s in seed_list:
                print(f"{exp.name}: seed {s} ({len(chains) + 1} of {len(seed_list)})", flush=True)
                chains.append(exp.chain(folder / f"seed{s}", s, quick))
    finally:
        ENGINE.clear()
    result = {f.key: judge(f, [exp.numbers(c)[f.key] for c in chains]) for f in exp.findings}
    result.update(exp.report(folder, chains, quick))
    result.update(seeds=seed_list, quick=quick, engine=engine, wall_time_s=round(time.time() - t0, 1))
    result["passed"] = all(result[f.key]["passed"] for f in exp.findings)
    return result


def add_seeded_args(p: argparse.ArgumentParser, exp: Seeded) -> None:
    """The options of an experiment over seeds: --out --seed --seeds --quick --engine."""
    p.add_argument("--out", default=f"runs/{exp.name}", help="output directory")
    p.add_argument("--seed", type=int, default=0, help="the first seed; seeds are seed, seed+1, ...")
    p.add_argument("--seeds", type=int, help=f"seeds (default {exp.seeds}; --quick 1)")
    p.add_argument("--quick", action="store_true", help=exp.quick_help)
    p.add_argument("--engine", choices=["hf", "vllm"], default="hf", help="what samples in the PPO runs (generator.engine)")


def seeded_parser(exp: Seeded, prog: str | None = None) -> argparse.ArgumentParser:
    """The options of an experiment over seeds (`add_seeded_args`)."""
    parser = argparse.ArgumentParser(prog=prog or f"rlhf experiment {exp.name}", description=exp.description)
    add_seeded_args(parser, exp)
    return parser


def seeded_main(exp: Seeded, argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """The command line of an experiment over seeds: run it, print the findings, write findings.json; 0
    when it showed what it is for (`findings_exit_code`)."""
    args = seeded_parser(exp, prog).parse_args(argv)
    result = run_seeded(exp, args.out, seed=args.seed, quick=args.quick, seeds=args.seeds, engine=args.engine)
    lines = [format_finding(f, result[f.key]) for f in exp.findings] + [exp.summary_line(result)]
    write_findings(result, lines, os.fspath(args.out))
    return findings_exit_code(result, exp.findings)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one intra-op thread while the experiment's in-process runs train: the same numbers on
    any machine of the kind, whatever its core count (the order of a reduction follows the threads)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_ppo(out_dir: str, overrides: Sequence[str]) -> dict:
    """`rlhf ppo` in this process (local mode, a fresh run in `out_dir`, no checkpoints); its summary.
    A run that already finished in `out_dir` with the same config (its summary.json is written last,
    and its config.yaml is the one this call resolves) is not repeated: an interrupted experiment,
    run again, picks up where it stopped."""
    from orchestrator.builtin.policy import resolve
    from orchestrator.config import to_yaml
    from orchestrator.registry import load_config, run

    cfg = load_config("ppo", None, [f"run.output_dir={out_dir}", "run.mode=local", "run.resume=never", "run.save_every=0",
                                    *ENGINE, *overrides])
    done, written = os.path.join(out_dir, "summary.json"), os.path.join(out_dir, "config.yaml")
    if os.path.exists(done) and os.path.exists(written):
        with open(written) as fh:
            same = fh.read() == to_yaml(resolve(cfg))
        if same:
            print(f"{out_dir}: finished earlier with the same config; not repeated", flush=True)
            with open(done) as fh:
                return json.load(fh)
    return run("ppo", cfg)


def train_rm(out_dir: str, overrides: Sequence[str]) -> dict:
    """`rlhf rm` in this process (local mode; a model already trained in `out_dir` is reused through
    run.resume=auto); its summary."""
    from orchestrator.registry import load_config, run

    return run("rm", load_config("rm", None, [f"run.output_dir={out_dir}", "run.mode=local", "run.resume=auto",
                                              "run.save_every=0", "run.eval_every=0", *overrides]))


def train_sft(out_dir: str, overrides: Sequence[str]) -> dict:
    """`rlhf sft` in this process (local mode; a model already trained in `out_dir` is reused through
    run.resume=auto); its summary (the exported policy: `<out_dir>/policy`)."""
    from orchestrator.registry import load_config, run

    return run("sft", load_config("sft", None, [f"run.output_dir={out_dir}", "run.mode=local", "run.resume=auto",
                                                "run.save_every=0", *overrides]))


def builtin_policy(seed: int, quick: bool) -> str:
    """The SFT-warm-started built-in tiny policy of `seed` (a quick run: seed 0's, cached)."""
    from orchestrator.builtin.policy import builtin_policy_dir

    return builtin_policy_dir("tiny", seed=0 if quick else seed)


def variant_table(per_seed: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> tuple[dict, str]:
    """Per-variant numbers over seeds: `per_seed` holds one {variant: {number: value}} per seed;
    `columns` (key, title, format). Returns ({variant: {key: spread}}, a markdown table whose cells are
    the mean with the min..max over seeds)."""
    variants = list(per_seed[0])
    summary = {v: {k: spread([s[v][k] for s in per_seed]) for k, _, _ in columns} for v in variants}
    lines = ["| variant | " + " | ".join(t for _, t, _ in columns) + " |", "|---|" + "---|" * len(columns)]
    for v in variants:
        cells = []
        for k, _, fmt in columns:
            x = summary[v][k]
            if math.isnan(x["mean"]):  # not measured for this row (e.g. the start's training reward)
                cells.append("-")
                continue
            cells.append(fmt.format(x["mean"]) + (f" ({fmt.format(x['min'])}..{fmt.format(x['max'])})" if len(per_seed) > 1 else ""))
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return summary, "\n".join(lines)


def variant_report(folder: Path, tables: Sequence[dict], curves: Sequence[dict], columns, variants: Sequence[str],
                   frontier: bool = False) -> dict:
    """The per-variant table over seeds (`variant_table`), written to results.md and printed, and the
    held-out curves (`plot_variant_curves`, curves.png, when every run evaluated more than once); returns
    the table's numbers."""
    summary, table = variant_table(tables, columns)
    (folder / "results.md").write_text(table + "\n")
    if all(len(c[v]["step"]) > 1 for c in curves for v in variants):
        plot_variant_curves(curves, list(variants), str(folder / "curves.png"), frontier=frontier)
    print(table)
    return summary


def answer_numbers(samples: Sequence[dict]) -> dict:
    """Held-out answer numbers of the built-in task from sample rows (the plain `prompt` and the
    `response`, as samples_start.jsonl / samples_end.jsonl hold them): gold, words, disputed share and
    the reward-hacking signs of `orchestrator.builtin.world.gold_eval` (copy, short, repetition, closed accuracy),
    and `hacked`, the share of responses that copy the prompt or have at most `world.SHORT_WORDS` words."""
    from orchestrator.builtin import world

    index = {r["prompt"]: r for split in world.SPLITS for r in world.prompt_rows(split)}
    rows = [index[s["prompt"]] for s in samples]
    responses = [s["response"] for s in samples]
    ev = world.gold_eval(rows, responses)
    hacked = [world.copies_prompt(r["prompt"], y) or world.n_words(y) <= world.SHORT_WORDS for r, y in zip(rows, responses)]
    return {"gold": ev["gold"], "words": ev["length"], "disputed": ev["disputed_share"], "copy": ev["copy_share"],
            "short": ev["short_share"], "hacked": sum(hacked) / len(hacked), "repetition": ev["repetition"],
            "closed_accuracy": ev["closed_accuracy"]}


def ppo_outcome(run_dir: str, last: int = 10) -> dict:
    """What a finished PPO run in `run_dir` did: `start` and `end` (`answer_numbers` of its held-out
    samples), `reward_last` (the mean training score over its last `last` steps) and `curve` (held-out
    gold and length in tokens at each evaluation, from metrics.jsonl)."""
    def read(name: str) -> list[dict]:
        with open(os.path.join(run_dir, name)) as fh:
            return [json.loads(ln) for ln in fh if ln.strip()]

    records = read("metrics.jsonl")
    scores = [r["reward/score"] for r in records if "reward/score" in r][-last:]
    evals = [r for r in records if "eval/gold" in r]
    return {"start": answer_numbers(read("samples_start.jsonl")), "end": answer_numbers(read("samples_end.jsonl")),
            "reward_last": statistics.fmean(scores),
            "curve": {"step": [r["step"] for r in evals], "gold": [r["eval/gold"] for r in evals],
                      "length": [r["eval/length"] for r in evals]}}


def plot_variant_curves(curves: Sequence[dict], variants: Sequence[str], path: str, frontier: bool = False) -> None:
    """Held-out gold and length (tokens) over training, the mean over seeds per variant (`curves`: one
    {variant: curve} per seed, curves as `ppo_outcome` gives them), drawn by the one curve plot
    (`orchestrator.core.metrics.plot_curves`); with `frontier`, a third panel of gold against length (each
    variant's path through the quality-length plane)."""
    from orchestrator.core.metrics import plot_curves

    series = {}
    for name in variants:
        n = min(len(c[name]["step"]) for c in curves)
        series[name] = [{"step": curves[0][name]["step"][i], **{key: statistics.fmean(c[name][key][i] for c in curves)
                                                               for key in ("gold", "length")}} for i in range(n)]
    panels = ["gold", "length"] + ([("length", "gold")] if frontier else [])
    plot_curves(series, panels, path, labels={"step": "PPO step", "gold": "held-out gold (mean over seeds)",
                                             "length": "held-out length (tokens)"})
