"""`rlhf experiment scaling --quick` as docs/experiments.md gives it, its ZeRO axis narrowed to 0 and 3:
four ray-mode PPO runs (policy replicas 1, 2 x ZeRO 0, 3), each on its own local Ray cluster, into the
table, CSV, Parquet and plots. Replicas at ZeRO 2 are checked against one replica in tests/test_ppo_ray.py."""

from __future__ import annotations

import csv

import pytest


@pytest.mark.slow  # four ray-mode PPO runs (~3 min on 2 cores)
def test_quick_sweep_writes_the_table_the_csv_and_the_plots(tmp_path, capsys):
    from orchestrator.cli import main

    out = tmp_path / "quick"
    # the --quick preset with its ZeRO axis narrowed by an argument (the preset's 6 points cost 4.5 min)
    assert main(["experiment", "scaling", "--quick", "--out", str(out), "policy.zero_stage=0,3"]) == 0
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["policy.replicas"], r["policy.zero_stage"]) for r in rows] == [
        ("1", "0"), ("1", "3"), ("2", "0"), ("2", "3")]
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    for r in rows:
        assert int(r["replicas/policy"]) == int(r["policy.replicas"])  # the point's layout was the run's
        assert float(r["step_s"]) > 0 and float(r["memory_mb/policy"]) > 0 and float(r["startup_s"]) > 0
        assert float(r["phase/generate"]) < float(r["step_s"])
        assert "comm_s/policy" in r and float(r["comm_mb/policy"]) > 0  # DeepSpeed's collectives were timed
    two = [r for r in rows if r["policy.replicas"] == "2"]
    assert all(float(r["comm_mb/policy"]) > 0 for r in two)
    for name in ("results.md", "results.parquet", "throughput.png", "efficiency.png", "memory.png", "phases.png"):
        assert (out / name).stat().st_size > 0, name
    assert "| policy.replicas | policy.zero_stage | status |" in (out / "results.md").read_text()
