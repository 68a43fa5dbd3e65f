"""`rlhf rm` in ray mode: two data-parallel replicas under DeepSpeed ZeRO take the same steps as one
local process (the per-pair loss is divided by the global pair count, so sharding changes nothing)."""

from __future__ import annotations

import pytest

from orchestrator.registry import load_config
from test_rm import _records, _weights, write_setup


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return write_setup(tmp_path_factory.mktemp("rm_ray"), 128, 32)


def _cfg(setup, out, *extra):
    root = setup["root"]
    return load_config("rm", None, [
        f"model.path={setup['model']}", f"data.path={root / 'train.jsonl'}", f"data.eval_path={root / 'test.jsonl'}",
        f"run.output_dir={out}", "run.steps=3", "run.save_every=0", "rm.batch_size=16", "model.micro_batch_size=4",
        "model.lr=3e-3", "model.warmup_steps=1", "model.objective=mean_variance", "rm.norm_pairs=16", "model.num_cpus=0.5", *extra,
    ])


@pytest.fixture(scope="module")
def local_run(setup, tmp_path_factory):
    from orchestrator.registry import run

    out = tmp_path_factory.mktemp("local")
    return run("rm", _cfg(setup, out, "run.mode=local")), out


@pytest.mark.slow  # a 2-replica reward-model run per stage
@pytest.mark.parametrize("stage", [2, 3])
def test_two_zero_replicas_equal_one_local_process(setup, local_run, tmp_path, ray_cluster, stage):
    from orchestrator.registry import run

    local_summary, local_out = local_run
    summary = run("rm", _cfg(setup, tmp_path, "run.mode=ray", "model.replicas=2", f"model.zero_stage={stage}"))
    a, b = _records(local_out), _records(tmp_path)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert rb == pytest.approx(ra, rel=2e-4, abs=1e-5), (ra, rb)
    wa, wb = _weights(local_out), _weights(tmp_path)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4
    assert summary["eval"]["pair_accuracy"] == local_summary["eval"]["pair_accuracy"]
    assert summary["norm_mean"] == pytest.approx(local_summary["norm_mean"], abs=1e-4)
