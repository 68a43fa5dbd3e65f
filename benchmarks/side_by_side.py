"""This project against TRL on the same spec, in one run, alternating: episodes/s (PPO) or pairs/s (DPO)
and the ratios.

    pip install -e '.[bench]'        # trl==1.12.0 (its PPOTrainer is in trl.experimental.ppo up to 1.12)
    python -m benchmarks.side_by_side ppo [--rounds 3] [--short 2] [--long 16] [--variants NAME-PREFIX ...]
    python -m benchmarks.side_by_side dpo

Both systems run as whole commands (`rlhf ppo ...` / `rlhf dpo ...` and `python -m benchmarks.trl_run
...`) on the same model folder (a size spec built by `orchestrator.tools.synth`, random init) and the same
synthesised data. Each variant runs a short and a long command; its rate is the difference of steps x
batch over the difference of wall times, so start-up, the reference pre-computation over the dataset
and the first/last evaluations cancel. Every round runs every variant once, in an order rotated per
round, so drift on a shared machine spreads over all of them. Printed: each variant's mean rate and
its min..max over rounds, and its ratio to the baseline variant (the first TRL one) with the min..max
of the per-round ratios. Written: results.json in --out.

Spec (the issue's): Llama, vocab 8192, hidden 256, intermediate 704, 4 layers, 4 heads (~7.4M
parameters) for every role; PPO rollouts of 32 prompts of 32 tokens, 32 new tokens at T=1 (no
top-k/top-p), one epoch of 4 minibatches of 8; DPO pairs of 32 + 32 tokens, batch 8, beta 0.1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

SPEC = "llama:vocab=8192,hidden=256,intermediate=704,layers=4,heads=4"
ROWS = 512
PROMPT_LEN = RESPONSE_LEN = 32


def variants(job: str, model: str, data: str, held_out: str, out: Path) -> dict[str, tuple[list[str], int]]:
    """name -> (command without the step count, units per step); a '{steps}' placeholder takes the count.
    The first TRL variant is the baseline."""
    rlhf = [sys.executable, "-m", "orchestrator.cli"]
    trl = [sys.executable, "-m", "benchmarks.trl_run", job, "--model", model, "--data", data, "--steps", "{steps}"]
    if job == "ppo":
        ours = [*rlhf, "ppo", f"policy.path={model}", "reward.kind=model", f"reward.path={model}/reward",
                f"data.path={data}", f"data.eval_path={held_out}", "ppo.rollout_batch_size=32", "ppo.minibatch_size=8",
                "ppo.epochs=1", f"policy.max_new_tokens={RESPONSE_LEN}", "run.save_every=0", "run.resume=never", "run.steps={steps}"]
        auto = [f"{r}.dtype=auto" for r in ("policy", "reference", "critic", "reward")]
        rollout = ["ppo.old_logprobs=rollout"]
        ahead = ["ppo.max_staleness=1"]  # a generator actor samples the next rollout while this step trains
        return {
            "trl fp32": (trl, 32),
            "trl bf16 (autocast)": ([*trl, "--bf16"], 32),
            "rlhf fp32, defaults (ray, 4 actors)": ([*ours, f"run.output_dir={out / 'rlhf_ray'}"], 32),
            "rlhf fp32, local": ([*ours, "run.mode=local", f"run.output_dir={out / 'rlhf_local'}"], 32),
            "rlhf fp32, local, old log-probs from the rollout": ([*ours, "run.mode=local", *rollout, f"run.output_dir={out / 'rlhf_local_rollout'}"], 32),
            "rlhf auto (bf16 here), local, rollout log-probs": ([*ours, "run.mode=local", *rollout, *auto, f"run.output_dir={out / 'rlhf_local_auto'}"], 32),
            "rlhf auto (bf16 here), ray, rollout log-probs": ([*ours, *rollout, *auto, f"run.output_dir={out / 'rlhf_ray_auto'}"], 32),
            "rlhf fp32, ray, rollout log-probs": ([*ours, *rollout, f"run.output_dir={out / 'rlhf_ray_rollout'}"], 32),
            "rlhf fp32, ray, rollout log-probs, one step off-policy": ([*ours, *rollout, *ahead, f"run.output_dir={out / 'rlhf_ray_ahead'}"], 32),
            "rlhf auto (bf16 here), ray, one step off-policy": ([*ours, *rollout, *auto, *ahead, f"run.output_dir={out / 'rlhf_ray_auto_ahead'}"], 32),
        }
    # run.eval_every=0: DPO evaluates every 25 steps by default, which the long command would do once more than
    # the short one (TRL's run evaluates nowhere); the evaluations at the start and the end are in both and cancel
    ours = [*rlhf, "dpo", f"policy.path={model}", f"data.path={data}", f"data.eval_path={held_out}", "dpo.batch_size=8",
            "policy.micro_batch_size=8", "dpo.beta=0.1", "run.save_every=0", "run.eval_every=0", "run.resume=never",
            "run.steps={steps}"]
    return {
        "trl fp32, precomputed ref": ([*trl, "--batch", "8"], 8),
        "trl defaults (bf16 + grad ckpt), precomputed ref": ([*trl, "--batch", "8", "--bf16", "--gradient-checkpointing"], 8),
        "rlhf defaults (fp32, local)": ([*ours, f"run.output_dir={out / 'rlhf_dpo'}"], 8),
        "rlhf policy.dtype=auto (bf16 here)": ([*ours, "policy.dtype=auto", f"run.output_dir={out / 'rlhf_dpo_auto'}"], 8),
    }


def timed(cmd: list[str], steps: int, log: Path) -> float:
    cmd = [c.replace("{steps}", str(steps)) for c in cmd]
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"side_by_side: {' '.join(cmd[:4])} ... exited {rc}; see {log}")
    return seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("job", choices=["ppo", "dpo"])
    p.add_argument("--model", default=SPEC, help="a size spec (orchestrator.tools.synth) or a folder with reward/ inside")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--short", type=int, default=2, help="steps of the short command")
    p.add_argument("--long", type=int, help="steps of the long command (default: 16 for ppo, 100 for dpo: the difference "
                                            "then lasts 15-30 s, against start-up times that vary by about a second)")
    p.add_argument("--variants", nargs="*", help="names (or unique prefixes) to run; default: all")
    p.add_argument("--out", default="runs/side_by_side")
    a = p.parse_args(argv)
    a.long = a.long or (16 if a.job == "ppo" else 100)
    if a.long <= a.short:
        raise SystemExit("side_by_side: --long must be more than --short")

    from actors.modeling import load_tokenizer
    from orchestrator.tools.synth import is_spec, spec_model_dir, synth_rows, write_rows

    out = Path(a.out) / a.job
    out.mkdir(parents=True, exist_ok=True)
    model = spec_model_dir(a.model) if is_spec(a.model) else a.model
    kind = "prompt" if a.job == "ppo" else "preference"
    rows = synth_rows(kind, load_tokenizer(model), ROWS + 16, PROMPT_LEN, RESPONSE_LEN, seed=0)
    data, held_out = write_rows(out / f"{kind}.jsonl", rows[:ROWS]), write_rows(out / f"{kind}-eval.jsonl", rows[ROWS:])
    table = variants(a.job, model, data, held_out, out)
    if a.variants:
        chosen = {n for want in a.variants for n in table if n.startswith(want)}
        table = {n: v for n, v in table.items() if n in chosen}
    names = list(table)
    if any(n.startswith("trl") for n in names):
        import importlib.util

        if importlib.util.find_spec("trl") is None:
            raise SystemExit("side_by_side: TRL is not installed; pip install -e '.[bench]' (trl==1.12.0), "
                             "or --variants rlhf to run this project's variants only")
    if not names:
        raise SystemExit(f"side_by_side: --variants matched none of: {' | '.join(variants(a.job, model, data, held_out, out))}")
    log = out / "commands.log"
    rates: dict[str, list[float]] = {n: [] for n in names}
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for r in range(a.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            cmd, units = table[name]
            pair = (a.short, a.long) if r % 2 == 0 else (a.long, a.short)
            t = {steps: timed(cmd, steps, log) for steps in pair}
            times[name].append((t[a.short], t[a.long]))
            if t[a.long] <= t[a.short]:
                print(f"side_by_side: {name}: the long command was not slower than the short one; the difference is "
                      "within the noise, raise --long", file=sys.stderr)
            rates[name].append((a.long - a.short) * units / (t[a.long] - t[a.short]))
            print(f"round {r + 1}: {name:<50} {rates[name][-1]:7.2f} {'episodes' if a.job == 'ppo' else 'pairs'}/s "
                  f"({a.short} steps {t[a.short]:.1f} s, {a.long} steps {t[a.long]:.1f} s)", flush=True)
    base = next((n for n in names if n.startswith("trl")), names[0])
    unit = "episodes/s" if a.job == "ppo" else "pairs/s"
    result = {"job": a.job, "model": a.model, "rounds": a.rounds, "short": a.short, "long": a.long, "baseline": base,
              "unit": unit, "variants": {}}
    print(f"\n{a.job}: {a.model}, {a.rounds} rounds alternating, rate = ({a.long} - {a.short}) steps / time difference")
    print(f"{'variant':<50}{unit:>12}{'min..max':>16}{'vs ' + base:>34}")
    for n in names:
        ratios = [x / b for x, b in zip(rates[n], rates[base])]
        mean = statistics.mean(rates[n])
        result["variants"][n] = {"rates": rates[n], "seconds_short_long": times[n], "mean": mean, "ratio": mean / statistics.mean(rates[base]), "round_ratios": ratios}
        print(f"{n:<50}{mean:>12.2f}{f'{min(rates[n]):.2f}..{max(rates[n]):.2f}':>16}"
              f"{f'{mean / statistics.mean(rates[base]):.2f}x ({min(ratios):.2f}..{max(ratios):.2f})':>34}")
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(f"written {out / 'results.json'} (commands and their output: {log})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
