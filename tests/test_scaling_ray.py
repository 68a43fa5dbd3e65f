"""`rlhf experiment scaling --quick` as docs/experiments.md gives it, its ZeRO axis narrowed to 0 and 3:
four ray-mode PPO runs (policy replicas 1, 2 x ZeRO 0, 3), each on its own local Ray cluster, into the
table, CSV, Parquet and plots. Replicas at ZeRO 2 are checked against one replica in tests/test_ppo_ray.py."""

from __future__ import annotations

import csv

import pytest


@pytest.mark.slow  # two ray-mode PPO runs (~2 min on 2 cores)
def test_quick_sweep_writes_the_table_the_csv_and_the_plots(tmp_path, capsys):
    from orchestrator.cli import main

    out = tmp_path / "quick"
    # the --quick preset with its ZeRO axis narrowed by an argument to ZeRO-3 (the preset's 6 points cost 4.5 min;
    # every stage's equality is tested in test_cluster_ray.py and test_ppo_ray.py)
    assert main(["experiment", "scaling", "--quick", "--out", str(out), "policy.zero_stage=3"]) == 0
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["policy.replicas"] for r in rows] == ["1", "2"]  # one value is a fixed key, not an axis
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
    assert "| policy.replicas | status |" in (out / "results.md").read_text()
