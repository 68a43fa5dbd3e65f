"""`rlhf experiment scaling` without Ray: the grid (command line and YAML), the numbers read from a run's
outputs, the tables and plots, and an end-to-end sweep of real local-mode PPO runs with a point that
fails (recorded, the sweep goes on), a rerun that skips what was measured, and the cost model's
held-out calibration."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from orchestrator.config.tree import ConfigError
from orchestrator.experiments import scaling


def test_values_split_on_commas_outside_brackets():
    assert scaling.split_values("1,2,4") == ["1", "2", "4"]
    assert scaling.split_values("[q_proj,v_proj],[o_proj]") == ["[q_proj,v_proj]", "[o_proj]"]
    assert scaling.split_values("null,policy") == ["null", "policy"]


def test_grid_from_yaml_and_command_line(tmp_path):
    f = tmp_path / "grid.yaml"
    f.write_text("job: ppo\nwarmup: 2\nsteps: 4\nfixed: {run.mode: local}\n"
                 "grid: {policy.zero_stage: [0, 3], reference.colocate_with: [null, policy]}\n")
    spec = scaling.load_grid(str(f), ["policy.replicas=1,2", "ppo.epochs=2"], quick=False)
    assert (spec["warmup"], spec["steps"]) == (2, 4)
    assert spec["fixed"] == {"run.mode": "local", "ppo.epochs": "2"}
    assert spec["grid"] == {"policy.zero_stage": ["0", "3"], "reference.colocate_with": ["null", "policy"],
                            "policy.replicas": ["1", "2"]}
    pts = scaling.points(spec)
    assert len(pts) == 8 and pts[0] == {"policy.zero_stage": "0", "reference.colocate_with": "null", "policy.replicas": "1"}
    ids = [scaling.point_id(spec, p) for p in pts]
    assert len(set(ids)) == 8 and all("/" not in i for i in ids)
    # a measurement is found again when the grid grows or a key moves between fixed and axis
    moved = scaling.load_grid(str(f), ["policy.replicas=1,2", "ppo.epochs=2,3"], quick=False)
    assert scaling.point_key(moved, {**pts[0], "ppo.epochs": "2"}) == scaling.point_key(spec, pts[0])
    scaling.check_overrides(spec)  # every point's config resolves
    with pytest.raises(ConfigError, match="policy.zero_stag"):
        scaling.check_overrides(scaling.load_grid(None, ["policy.zero_stag=0,3"], quick=False))
    with pytest.raises(ConfigError, match="top-level keys"):
        (tmp_path / "bad.yaml").write_text("axes: {a: [1]}\n")
        scaling.load_grid(str(tmp_path / "bad.yaml"), [], quick=False)
    quick = scaling.load_grid(None, [], quick=True)
    assert len(scaling.points(quick)) == 6 and quick["fixed"]["run.mode"] == "ray"


def _fake_run(folder: Path, step_times: list[float], roles: dict) -> None:
    folder.mkdir(parents=True)
    records = [{"step": 0, "eval/gold": 0.1}]
    for i, t in enumerate(step_times, start=1):
        records.append({"step": i, "time/step": t, "time/generate": t / 2, "time/update": t / 2,
                        "time/tokens_per_s": 100.0 / t, "length/prompt_padded": 20.0, "length/response_padded": 10.0})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "summary.json").write_text(json.dumps({"startup_s": 7.5, "roles": roles}))
    (folder / "config.yaml").write_text("ppo:\n  rollout_batch_size: 32\n")


def test_measure_skips_warmup_and_reads_roles(tmp_path):
    roles = {"policy": [{"node_id": "a", "peak_memory_mb": 500.0, "comm_s": 0.8, "comm_mb": 40.0},
                        {"node_id": "b", "peak_memory_mb": 520.0, "comm_s": 1.2, "comm_mb": 40.0}],
             "critic": [{"node_id": "a", "peak_memory_mb": 480.0}]}
    _fake_run(tmp_path / "run", [9.0, 2.0, 4.0], roles)
    row = scaling.measure(tmp_path / "run", "ppo", warmup=1)
    assert row["step_s"] == pytest.approx(3.0, rel=1e-3) and row["step_s_spread"] == pytest.approx(2.0, rel=1e-3)
    assert row["samples_per_s"] == pytest.approx(32 / 3.0, rel=1e-3)
    assert row["tokens_per_s"] == pytest.approx(100 / 3.0, rel=1e-3)  # 100 response tokens per step
    assert row["gen_tokens_per_s"] == pytest.approx(100 / 1.5, rel=1e-3)
    assert row["phase/generate"] == pytest.approx(1.5, rel=1e-3)
    assert (row["prompt_len"], row["response_len"], row["startup_s"]) == (20.0, 10.0, 7.5)
    assert row["memory_mb/policy"] == 520.0 and row["nodes/policy"] == 2 and row["replicas/policy"] == 2
    assert row["comm_s/policy"] == pytest.approx(1.2 / 3, rel=1e-3)  # the busiest replica, over all 3 steps
    assert "comm_s/critic" not in row
    with pytest.raises(ValueError, match="warm-up"):
        scaling.measure(tmp_path / "run", "ppo", warmup=3)


def test_tables_and_plots(tmp_path):
    spec = scaling.load_grid(None, ["policy.replicas=1,2", "policy.zero_stage=0,3"], quick=False)
    rows = []
    for i, p in enumerate(scaling.points(spec)):
        r, z = int(p["policy.replicas"]), int(p["policy.zero_stage"])
        rows.append({"point": scaling.point_id(spec, p), **p, "status": "ok", "error": "", "step_s": 1.0 / r + 0.1 * z,
                     "samples_per_s": 32 / (1.0 / r + 0.1 * z), "phase/generate": 0.5, "phase/update": 0.5,
                     "memory_mb/policy": 600.0 - 50 * z, "memory_mb/critic": 500.0})
    rows[-1] = {"point": rows[-1]["point"], **scaling.points(spec)[-1], "status": "failed", "error": "OOM: exit 1: ..."}
    scaling.write_tables(rows, spec, tmp_path)
    plots = scaling.plot(rows, spec, tmp_path)
    assert set(plots) == {"throughput.png", "efficiency.png", "memory.png", "phases.png"}
    assert all((tmp_path / p).stat().st_size > 1000 for p in plots)
    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and table[-1]["status"] == "failed"
    md = (tmp_path / "results.md").read_text()
    assert "| policy.replicas | policy.zero_stage | status |" in md and "OOM: exit 1" in md
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "results.parquet").num_rows == 4


def test_failure_lines(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("...\nrlhf: error: config key 'policy.path': '/x' is not a readable model folder\n")
    assert scaling._failure(log, 2, 60) == "exit 2: config key 'policy.path': '/x' is not a readable model folder"
    log.write_text("RuntimeError: CUDA out of memory. Tried to allocate\nrlhf: error: role 'policy' ... OutOfMemoryError\n")
    assert scaling._failure(log, 1, 60).startswith("OOM: exit 1: role 'policy'")
    assert scaling._failure(log, -9, 60).startswith("killed by signal 9 (out of memory?)")
    assert scaling._failure(log, None, 60) == "timed out after 60 s"


@pytest.mark.slow  # five real local-mode PPO runs in subprocesses (~1.5 min)
def test_a_local_sweep_records_a_failure_resumes_and_calibrates(tmp_path, capsys):
    from orchestrator.cli import main

    args = ["experiment", "scaling", "--out", str(tmp_path / "sweep"), "--warmup", "1", "--steps", "2",
            "run.mode=local", "policy.path=builtin:tiny-base", "ppo.rollout_batch_size=8,16", "ppo.minibatch_size=8",
            "policy.max_new_tokens=8,16", "data.max_rows=32"]
    assert main(args) == 0
    out = capsys.readouterr().out
    with open(tmp_path / "sweep" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows), rows
    for r in rows:  # the point's overrides reached the run
        summary = json.loads(next((tmp_path / "sweep" / "points").glob(f"{r['point']}/run/summary.json")).read_text())
        assert summary["steps"] == 3 and float(r["response_len"]) <= int(r["policy.max_new_tokens"])
        assert float(r["samples_per_step"]) == float(r["ppo.rollout_batch_size"])
    assert "written" in out and (tmp_path / "sweep" / "phases.png").exists()

    # a rerun with one more axis value that fails after its config was accepted: the measured points
    # are skipped, the failure is recorded with its line, the sweep goes on, and the cost model calibrates
    args[-1:] = ["data.max_rows=32", "policy.path=builtin:tiny-base,/no/such/model"]
    assert main(args + ["--predict"]) == 0
    out = capsys.readouterr().out
    assert out.count("measured before, skipped") == 4
    with open(tmp_path / "sweep" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(rows) == 8 and len(failed) == 4
    assert "policy.path" in failed[0]["error"] and "/no/such/model" in failed[0]["error"]
    calibration = json.loads((tmp_path / "sweep" / "calibration.json").read_text())
    assert calibration["points"] == 4 and calibration["held_out_abs_error_mean"] >= 0
    assert all(r["predicted_step_s"] for r in rows if r["status"] == "ok")
    assert "held-out step-time error" in out
