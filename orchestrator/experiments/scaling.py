"""`rlhf experiment scaling`: how a job's step scales with replicas, ZeRO stage, colocation, dtype,
model size or batch, measured by real runs of the job's own command.

A grid is given on the command line (``policy.replicas=1,2,4 policy.zero_stage=0,3``: a key with
several comma-separated values is an axis, a key with one value is fixed for every point) or in a
YAML file (``--grid FILE``: ``job``, ``warmup``, ``steps``, ``fixed: {key: value}``, ``grid: {key:
[values]}``; the command line adds to it). Every point of the grid's cross product is one run of
``rlhf <job>`` in a subprocess (``python -m orchestrator.cli``), with the point's overrides, in its own
folder ``<out>/points/<id>``: ``warmup`` steps that are not counted, then ``steps`` measured steps.
In ray mode each point joins the cluster this command runs on (``RAY_ADDRESS`` under ``ray job
submit``, or ``run.ray_address=``), or starts a local one.

Per point (from the run's metrics.jsonl and summary.json): step time (mean and spread over the
measured steps) and each phase's time (`orchestrator.core.phases`: generate, forward, advantages, update, ...),
samples/s, response tokens/s over the step and in generation, role start-up time, peak memory of each
replica of each role (max RSS on CPU, max allocated on GPU), collective-communication time per step
and role (DeepSpeed's comms logger, ``run.profile_comm=true``; averaged over every step of the run,
warm-up and the final save included), and whether the run failed (the error's line, the sweep goes on).

Outputs in ``--out``: results.csv and results.parquet (one row per point), results.md (a table),
and plots: throughput vs replicas with the ideal-scaling line, efficiency (speed-up / replicas),
peak memory per replica vs ZeRO stage per role, stacked phase times per point. A rerun skips the
points that already have a result (failed points are retried); ``--predict`` adds the cost model's
prediction of each point (`orchestrator.tools.costmodel`) calibrated on the others (leave one out).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import logging
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from orchestrator.registry import JOBS

log = logging.getLogger("rlhf.scaling")

SAMPLES_KEY = {name: e.batch_key for name, e in JOBS.items() if e.batch_key}
"""The samples axis of each job: its batch-size key (`orchestrator.registry`)."""
"""The config key of the samples (prompts, pairs, demonstrations) one step of each job consumes."""

QUICK = {
    "job": "ppo",
    "warmup": 1,
    "steps": 3,
    "fixed": {"run.mode": "ray", "policy.path": "builtin:tiny-base", "ppo.rollout_batch_size": 32,
              "ppo.minibatch_size": 16, "policy.max_new_tokens": 24, "policy.micro_batch_size": 4,
              "critic.micro_batch_size": 4, "data.max_rows": 64},
    "grid": {"policy.replicas": [1, 2], "policy.zero_stage": [0, 2, 3]},
}
"""`--quick`: 6 points of ray-mode PPO on the random-init built-in tiny Llama (about 3 minutes on 2 cores)."""

NOT_PHASES = ("time/step", "time/tokens_per_s", "time/pairs_per_s")


# --------------------------------------------------------------------------------------------- grid


def split_values(text: str) -> list[str]:
    """'1,2,[a,b],null' -> ['1', '2', '[a,b]', 'null']: commas inside brackets or braces do not split."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [v.strip() for v in out]


def load_grid(path: str | None, args: Sequence[str], quick: bool) -> dict:
    """The sweep: {'job', 'warmup', 'steps', 'fixed': {key: value}, 'grid': {key: [values]}} from the
    `--quick` preset or a YAML file, then `args` (key=v1,v2,...) added on top. Values stay strings as on
    the command line (YAML scalars are written back as YAML) and go to the job as overrides."""
    import yaml

    from orchestrator.config import ConfigError

    spec = {"job": "ppo", "warmup": 1, "steps": 3, "fixed": {}, "grid": {}}
    if quick:
        spec.update(json.loads(json.dumps(QUICK)))
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"--grid {path}: cannot read a YAML grid ({str(e).splitlines()[0]})") from None
        unknown = set(loaded) - set(spec)
        if not isinstance(loaded, dict) or unknown:
            raise ConfigError(f"--grid {path}: top-level keys must be among {', '.join(spec)}; got {sorted(unknown or ['a non-mapping'])}")
        for k in ("job", "warmup", "steps"):
            spec[k] = loaded.get(k, spec[k])
        spec["fixed"].update(loaded.get("fixed") or {})
        for key, values in (loaded.get("grid") or {}).items():
            spec["grid"][key] = values if isinstance(values, list) else [values]
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"grid argument {arg!r}: expected key=value or key=v1,v2,...")
        key, text = arg.split("=", 1)
        values = split_values(text)
        if len(values) == 1:
            spec["fixed"][key] = values[0]
            spec["grid"].pop(key, None)
        else:
            spec["grid"][key] = values
            spec["fixed"].pop(key, None)
    if spec["job"] not in SAMPLES_KEY:
        raise ConfigError(f"grid job must be one of {', '.join(SAMPLES_KEY)}, got {spec['job']!r}")
    for k in ("warmup", "steps"):
        if not isinstance(spec[k], int) or spec[k] < (0 if k == "warmup" else 1):
            raise ConfigError(f"grid {k} must be an integer >= {0 if k == 'warmup' else 1}, got {spec[k]!r}")
    spec["fixed"] = {k: _text(v) for k, v in spec["fixed"].items()}
    spec["grid"] = {k: [_text(v) for v in vs] for k, vs in spec["grid"].items()}
    return spec


def _text(value) -> str:
    """A YAML value as a command-line override value."""
    if isinstance(value, str):
        return value
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def points(spec: dict) -> list[dict[str, str]]:
    """The grid's cross product, first axis slowest: [{key: value}]."""
    keys = list(spec["grid"])
    return [dict(zip(keys, combo)) for combo in itertools.product(*(spec["grid"][k] for k in keys))]


def point_key(spec: dict, point: dict[str, str]) -> str:
    """What identifies a measurement: the job, its warm-up and measured steps, and every override of the
    point (fixed keys and axes alike, in any order): a short hash. Reruns find a point by it, so growing
    the grid, or moving a key between fixed and axis, keeps what was measured."""
    blob = {"job": spec["job"], "warmup": spec["warmup"], "steps": spec["steps"],
            "overrides": sorted({**spec["fixed"], **point}.items())}
    return hashlib.sha256(json.dumps(blob).encode()).hexdigest()[:8]


def point_id(spec: dict, point: dict[str, str]) -> str:
    """A point's folder name: its axis values (filesystem-safe) and its `point_key`."""
    text = "_".join(f"{k.split('.')[0][:3]}.{k.split('.')[-1]}={v}" for k, v in point.items()) or "base"
    return f"{re.sub(r'[^A-Za-z0-9._=+-]', '-', text)[:80]}_{point_key(spec, point)}"


def check_overrides(spec: dict) -> None:
    """Every point's config resolves (unknown keys, bad values) before the first run starts."""
    from orchestrator.registry import load_config

    for point in points(spec) or [{}]:
        load_config(spec["job"], None, [f"{k}={v}" for k, v in {**spec["fixed"], **point}.items()])


# ---------------------------------------------------------------------------------------- one point


def run_point(spec: dict, point: dict[str, str], folder: Path, timeout_s: float) -> dict:
    """One real run of the job at `point` in `folder`; returns its result row (also written to
    folder/result.json). A failed run gives a row with status 'failed' and the error's line."""
    folder.mkdir(parents=True, exist_ok=True)
    warmup, steps = spec["warmup"], spec["steps"]
    overrides = [f"{k}={v}" for k, v in {**spec["fixed"], **point}.items()]
    overrides += [f"run.output_dir={folder / 'run'}", f"run.steps={warmup + steps}", "run.save_every=0",
                  "run.resume=never", "run.loggers=[]", "run.profile_comm=true", "run.max_restarts=0"]
    cmd = [sys.executable, "-m", "orchestrator.cli", spec["job"], *overrides]
    (folder / "command.txt").write_text(" ".join(cmd[2:]) + "\n")
    t0 = time.perf_counter()
    with open(folder / "log.txt", "w") as logf:
        try:
            proc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, timeout=timeout_s, env=_child_env())
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = None
    wall = time.perf_counter() - t0
    row = {"point": folder.name, **point, "status": "ok", "error": "", "wall_s": round(wall, 1)}
    if code != 0:
        row.update(status="failed", error=_failure(folder / "log.txt", code, timeout_s))
    else:
        try:
            row.update(measure(folder / "run", spec["job"], warmup))
        except (OSError, ValueError, KeyError) as e:
            row.update(status="failed", error=f"the run finished but its outputs could not be read: {e}")
    (folder / "result.json").write_text(json.dumps(row, indent=1))
    return row


def _child_env() -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the points import this checkout, installed or not
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _failure(log_path: Path, code: int | None, timeout_s: float) -> str:
    """The one line that says why a point's run failed."""
    if code is None:
        return f"timed out after {timeout_s:.0f} s"
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    lines = [ln for ln in text.splitlines() if ln.startswith("rlhf: error:")]
    if code < 0 or code == 137:
        why = f"killed by signal {-code if code < 0 else 9}" + (" (out of memory?)" if code in (-9, 137) else "")
        return why + (f"; {lines[-1]}" if lines else "")
    oom = re.search(r"(CUDA out of memory|OutOfMemoryError|MemoryError|out of memory)", text)
    line = lines[-1].removeprefix("rlhf: error: ") if lines else (text.strip().splitlines() or ["no output"])[-1]
    return ("OOM: " if oom else "") + f"exit {code}: {line}"[:400]


def measure(run_dir: Path, job: str, warmup: int) -> dict:
    """The measured numbers of one finished run: its steps after `warmup`, its summary's roles."""
    import yaml

    records = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    steps = sorted((r for r in records if "time/step" in r), key=lambda r: r["step"])[warmup:]
    if not steps:
        raise ValueError(f"{run_dir / 'metrics.jsonl'} has no step after the {warmup} warm-up step(s)")
    summary = json.loads((run_dir / "summary.json").read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    section, key = SAMPLES_KEY[job].split(".")
    samples = float(config[section][key])
    step_times = [r["time/step"] for r in steps]
    step_s = statistics.mean(step_times)
    phases = sorted({k for r in steps for k in r if k.startswith("time/") and k not in NOT_PHASES})
    row = {
        "step_s": _sig(step_s),
        "step_s_spread": _sig(max(step_times) - min(step_times)),
        "samples_per_step": samples,
        "samples_per_s": _sig(samples / step_s),
        "startup_s": summary.get("startup_s"),
        "steps_measured": len(steps),
    }
    if "time/tokens_per_s" in steps[0]:
        tokens = statistics.mean(r["time/tokens_per_s"] * r["time/step"] for r in steps)
        row["tokens_per_step"] = _sig(tokens)
        row["tokens_per_s"] = _sig(tokens / step_s)
        for key, name in (("length/prompt_padded", "prompt_len"), ("length/response_padded", "response_len")):
            if key in steps[0]:
                row[name] = _sig(statistics.mean(r[key] for r in steps))
        if "time/generate" in steps[0]:
            row["gen_tokens_per_s"] = _sig(tokens / statistics.mean(r["time/generate"] for r in steps))
        if "env/turns" in steps[0]:  # multi-turn episodes: model turns and environment tokens per episode
            row["turns"] = _sig(statistics.mean(r["env/turns"] for r in steps))
            row["env_tokens"] = _sig(statistics.mean(r["env/tokens"] - r["length/mean"] for r in steps))
    for p in phases:
        row[f"phase/{p[len('time/'):]}"] = _sig(statistics.mean(r.get(p, 0.0) for r in steps))
    total_steps = max(r["step"] for r in records)
    for role, hosts in (summary.get("roles") or {}).items():
        row[f"replicas/{role}"] = len(hosts)
        row[f"memory_mb/{role}"] = max(h.get("peak_memory_mb", math.nan) for h in hosts)
        row[f"nodes/{role}"] = len({h.get("node_id") or h.get("hostname") for h in hosts})
        if any("comm_s" in h for h in hosts):
            row[f"comm_s/{role}"] = _sig(max(h.get("comm_s", 0.0) for h in hosts) / max(total_steps, 1))
            row[f"comm_mb/{role}"] = _sig(max(h.get("comm_mb", 0.0) for h in hosts) / max(total_steps, 1))
    return row


def _sig(x: float) -> float:
    """A measured number to 5 significant digits (what the machine's noise leaves of it)."""
    return float(f"{x:.5g}")


# ------------------------------------------------------------------------------------------ the sweep


def sweep(spec: dict, out: Path, timeout_s: float) -> list[dict]:
    """Every point of `spec`, each run once: a point with a result.json of status 'ok' is read, not rerun."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "grid.json").write_text(json.dumps(spec, indent=1))
    rows = []
    grid = points(spec) or [{}]
    for i, point in enumerate(grid):
        key = point_key(spec, point)
        earlier = sorted((out / "points").glob(f"*_{key}"))
        folder = earlier[0] if earlier else out / "points" / point_id(spec, point)
        done = folder / "result.json"
        if done.exists():
            row = json.loads(done.read_text())
            if row.get("status") == "ok":
                print(f"[{i + 1}/{len(grid)}] {folder.name}: measured before, skipped", flush=True)
                rows.append({**row, **point})
                continue
        print(f"[{i + 1}/{len(grid)}] {folder.name}: running {' '.join(f'{k}={v}' for k, v in point.items()) or '(base)'}", flush=True)
        row = run_point(spec, point, folder, timeout_s)
        status = (f"{row['step_s']:.2f} s/step, {row['samples_per_s']:.2f} samples/s" if row["status"] == "ok"
                  else f"FAILED: {row['error']}")
        print(f"[{i + 1}/{len(grid)}] {folder.name}: {status} ({row['wall_s']:.0f} s)", flush=True)
        rows.append(row)
    return rows


def write_tables(rows: list[dict], spec: dict, out: Path) -> None:
    """results.csv, results.parquet and results.md."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow(r)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([{c: _cell(r.get(c)) for c in columns} for r in rows]), out / "results.parquet")
    except ImportError:  # pragma: no cover  (datasets depends on pyarrow)
        log.warning("pyarrow is not installed: results.parquet not written")
    axes = list(spec["grid"])
    shown = axes + ["status", "step_s", "samples_per_s", "tokens_per_s", "gen_tokens_per_s", "startup_s"]
    shown += sorted(c for c in columns if c.startswith(("phase/", "memory_mb/", "comm_s/", "nodes/")))
    shown += [c for c in columns if c.startswith("predicted")]
    shown = [c for c in shown if c in columns]
    lines = [f"# Scaling sweep: rlhf {spec['job']}, {spec['warmup']} warm-up + {spec['steps']} measured steps per point",
             "", "Fixed: " + (", ".join(f"`{k}={v}`" for k, v in spec["fixed"].items()) or "nothing"), "",
             "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for r in rows:
        lines.append("| " + " | ".join(_md(r.get(c, "")) for c in shown) + " |")
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        lines += ["", "Failed points:"] + [f"- {r['point']}: {r['error']}" for r in failed]
    lines += ["", "Times in seconds (mean over the measured steps), memory in MB (peak of the largest replica), "
              "comm_s/<role>: seconds per step inside DeepSpeed collectives on the busiest replica.",
              "Plots (those the grid has axes for): throughput.png, efficiency.png, memory.png, phases.png."]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def _cell(v):
    return v if isinstance(v, (int, float, str)) or v is None else str(v)


def _md(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v).replace("|", "/")


def _replica_axis(spec: dict) -> str | None:
    return next((k for k in spec["grid"] if k.endswith(".replicas")), None)


def _others(spec: dict, axis: str | None, row: dict) -> str:
    return ", ".join(f"{k.split('.')[0]}.{k.split('.')[-1]}={row.get(k)}" for k in spec["grid"] if k != axis) or "all"


def plot(rows: list[dict], spec: dict, out: Path) -> list[str]:
    """The four plots (those that the grid has the axes for); returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return []
    written = []
    axis = _replica_axis(spec)
    if axis:
        series: dict[str, list[tuple[int, float]]] = {}
        for r in ok:
            series.setdefault(_others(spec, axis, r), []).append((int(r[axis]), r["samples_per_s"]))
        for name, kind in (("throughput.png", "throughput"), ("efficiency.png", "efficiency")):
            fig, ax = plt.subplots(figsize=(6, 4))
            for label, pts in series.items():
                pts.sort()
                n0, s0 = pts[0]
                xs = [n for n, _ in pts]
                if kind == "throughput":
                    ax.plot(xs, [s for _, s in pts], "o-", label=label)
                    ax.plot(xs, [s0 * n / n0 for n in xs], ":", color=ax.lines[-1].get_color(), alpha=0.6)
                else:
                    ax.plot(xs, [(s / s0) / (n / n0) for n, s in pts], "o-", label=label)
            if kind == "throughput":
                ax.set_ylabel("samples / s (dotted: ideal linear scaling)")
                ax.set_title(f"rlhf {spec['job']}: throughput vs {axis}")
            else:
                ax.axhline(1.0, color="grey", ls=":")
                ax.set_ylabel("efficiency = speed-up / replica ratio")
                ax.set_ylim(bottom=0)
                ax.set_title(f"rlhf {spec['job']}: scaling efficiency vs {axis}")
            ax.set_xlabel(axis)
            ax.set_xticks(sorted({int(r[axis]) for r in ok}))
            ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(out / name, dpi=110)
            plt.close(fig)
            written.append(name)
    roles = sorted({c.split("/", 1)[1] for r in ok for c in r if c.startswith("memory_mb/")})
    if roles:
        fig, axes = plt.subplots(1, len(roles), figsize=(3.2 * len(roles), 3.6), squeeze=False)
        for ax, role in zip(axes[0], roles):
            zkey = f"{role}.zero_stage" if f"{role}.zero_stage" in spec["grid"] else None
            if zkey:
                series = {}
                for r in ok:
                    series.setdefault(_others(spec, zkey, r), []).append((int(r[zkey]), r.get(f"memory_mb/{role}", math.nan)))
                for label, pts in series.items():
                    pts.sort()
                    ax.plot([z for z, _ in pts], [m for _, m in pts], "o-", label=label)
                ax.set_xlabel(f"{role}.zero_stage")
                ax.set_xticks(sorted({int(r[zkey]) for r in ok}))
                ax.legend(fontsize=6)
            else:
                ax.bar(range(len(ok)), [r.get(f"memory_mb/{role}", math.nan) for r in ok])
                ax.set_xticks(range(len(ok)), [str(i + 1) for i in range(len(ok))])
                ax.set_xlabel("point (row of results.md)")
            ax.set_title(role, fontsize=9)
            ax.set_ylabel("peak MB per replica")
        fig.suptitle("peak memory of the largest replica per role")
        fig.tight_layout()
        fig.savefig(out / "memory.png", dpi=110)
        plt.close(fig)
        written.append("memory.png")
    phases = sorted({c for r in ok for c in r if c.startswith("phase/")})
    if not phases:  # a job that logs no phases (DPO, RM, SFT: one training call per step)
        return written
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(ok) + 2), 4))
    bottom = [0.0] * len(ok)
    for p in phases:
        vals = [r.get(p, 0.0) for r in ok]
        ax.bar(range(len(ok)), vals, bottom=bottom, label=p[len("phase/"):])
        bottom = [b + v for b, v in zip(bottom, vals)]
    labels = [("\n".join(f"{k.split('.')[0][:3]}.{k.split('.')[-1]}={r.get(k)}" for k in spec["grid"]) or r["point"]) for r in ok]
    ax.set_xticks(range(len(ok)), labels, fontsize=6)
    ax.set_ylabel("seconds per step")
    ax.set_title(f"rlhf {spec['job']}: phases per point")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "phases.png", dpi=110)
    plt.close(fig)
    written.append("phases.png")
    return written


# ---------------------------------------------------------------------------------------- command line


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The options of `rlhf experiment scaling`."""
    p = argparse.ArgumentParser(prog=prog or "rlhf experiment scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/scaling", help="output folder (points/, results.*, plots)")
    p.add_argument("--grid", help="YAML file: job, warmup, steps, fixed: {key: value}, grid: {key: [values]}")
    p.add_argument("--job", choices=sorted(SAMPLES_KEY), help="the job to sweep (default ppo, or the grid file's)")
    p.add_argument("--warmup", type=int, help="steps per point not measured (default 1)")
    p.add_argument("--steps", type=int, help="measured steps per point (default 3; --quick 2)")
    p.add_argument("--quick", action="store_true", help="6 points of ray-mode PPO on builtin:tiny-base (~3 min on 2 cores)")
    p.add_argument("--predict", action="store_true", help="add the cost model's predictions (leave-one-out calibration)")
    p.add_argument("--point-timeout", type=float, default=1800.0, help="seconds before a point's run is stopped and recorded as failed")
    p.add_argument("axes", nargs="*", metavar="key=v1,v2", help="grid axes and fixed keys")
    return p


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = parser(prog).parse_args(argv)
    spec = load_grid(args.grid, args.axes, args.quick)
    for k in ("job", "warmup", "steps"):
        if getattr(args, k) is not None:
            spec[k] = getattr(args, k)
    check_overrides(spec)
    out = Path(args.out)
    n = len(points(spec) or [{}])
    print(f"rlhf experiment scaling: {n} point(s) of rlhf {spec['job']} ({spec['warmup']} warm-up + {spec['steps']} measured steps) "
          f"into {out}", flush=True)
    t0 = time.perf_counter()
    rows = sweep(spec, out, args.point_timeout)
    if args.predict:
        from orchestrator.tools import costmodel

        report = costmodel.calibrate_on_sweep(rows, spec, out)
        print(report["text"])
    write_tables(rows, spec, out)
    plots = plot(rows, spec, out)
    print((out / "results.md").read_text())
    print(f"written {out / 'results.csv'}, {out / 'results.parquet'}, {out / 'results.md'}, "
          + ", ".join(str(out / p) for p in plots) + f" ({time.perf_counter() - t0:.0f} s)")
    failed = sum(r["status"] != "ok" for r in rows)
    if failed:
        print(f"{failed} of {len(rows)} point(s) failed (recorded; see results.md)")
    return 0 if failed < len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
