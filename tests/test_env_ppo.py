"""Multi-turn PPO end to end in local mode: a user's environment class in a file outside the repository, selected
with env.path, trains with PPO (critic and GAE across turns) and GRPO through `rlhf ppo`; a resumed run equals
an uninterrupted one; a built-in environment's preflight."""

from __future__ import annotations

import inspect
import json

import pytest

from ppo_helpers import FollowUp, read_metrics, tiny_model_dir, tiny_ppo_config

pytestmark = pytest.mark.usefixtures("one_thread")

TIMINGS = ("time/", "run/", "sync/")  # timings, and the sync a resumed run's first rollout did not need


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def user_env(tmp_path, monkeypatch):
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "my_env.py").write_text(inspect.getsource(FollowUp))  # the class alone, as a user's file holds it
    monkeypatch.syspath_prepend(str(folder))
    return "my_env:FollowUp"


ENV = ("reward.kind=none", "env.max_turns=3", "env.max_tokens=64")


@pytest.mark.parametrize("estimator", [(), ("ppo.advantage_estimator=grpo", "ppo.samples_per_prompt=4")], ids=["ppo", "grpo"])
def test_a_user_environment_outside_the_repo_trains_through_rlhf_ppo(model_dir, tmp_path, user_env, estimator, capsys):
    from orchestrator.cli import main

    out = tmp_path / "run"
    args = ["ppo", f"policy.path={model_dir}", f"run.output_dir={out}", "run.mode=local", "run.steps=2", "data.max_rows=16",
            "ppo.rollout_batch_size=8", "ppo.minibatch_size=8", "policy.max_new_tokens=8", f"env.path={user_env}",
            "env.kwargs={ask: Say more.}", *ENV, *estimator]
    assert main(args) == 0, capsys.readouterr().err
    records = [r for r in read_metrics(out) if "env/turns" in r]
    assert len(records) == 2
    for r in records:
        assert r["env/turns"] == 2.0 and r["env/done"] == 1.0 and r["env/errors"] == 0.0 and r["env/tool_calls"] == 0.0
        assert r["env/return"] >= 0.1 and r["time/env"] > 0 and r["length/mean"] < r["env/tokens"]
        assert "policy/loss" in r and (("critic/loss" in r) == (not estimator))
    sample = json.loads(open(out / "samples_end.jsonl").readline())
    assert [t["role"] for t in sample["conversation"]] == ["user", "assistant", "user", "assistant"]
    assert sample["conversation"][2]["content"] == "Say more." and sample["conversation"][1]["reward"] == 0.1
    assert sample["return"] == pytest.approx(0.1 + len(sample["response"].split()) / 10)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_end"]["task"]["turns"] == 2.0
    printed = capsys.readouterr().out
    assert "training episode return" in printed and "held-out episode return" in printed


@pytest.mark.parametrize("staleness", [0, 1])
def test_episodes_resumed_mid_run_equal_an_uninterrupted_run(model_dir, tmp_path, user_env, staleness):
    """Resumed from the step-2 checkpoint (with ppo.max_staleness=1 it holds the episodes sampled ahead for step 3),
    the run trains on the episodes and numbers of an uninterrupted one."""
    from orchestrator.registry import run

    common = (f"env.path={user_env}", *ENV, "run.steps=4", "run.save_every=2", "run.keep_checkpoints=4",
              f"ppo.max_staleness={staleness}", *(("ppo.old_logprobs=rollout",) if staleness else ()))
    run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "whole"), *common))
    run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "half"), *common, "run.steps=2"))
    run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "half"), *common))
    whole, half = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "half")
    assert [r["step"] for r in whole] == [r["step"] for r in half] == [0, 1, 2, 3, 4]
    for a, b in zip(whole, half):  # (the half run's step 2 also holds its first invocation's end evaluation)
        for key, value in a.items():
            if not key.startswith(TIMINGS):
                assert b[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (a["step"], key)
    assert whole[4]["env/turns"] == 2.0


@pytest.mark.parametrize("overrides,message", [
    (("env.path=builtin:lookup", "data.path=builtin:prompts", "reward.kind=none"),
     "config key 'data.path': must be builtin:lookup for env.path=builtin:lookup (its prompts), got 'builtin:prompts'"),
    (("env.path=builtin:lookup", "data.path=builtin:lookup"),
     "config key 'reward.function': is the built-in task's annotator reward (builtin:annotator), which scores single answers"),
    (("reward.kind=none",), "config key 'reward.kind': none needs env.path"),
    (("env.path=no_such_module:Env", "reward.kind=none"), "config key 'env.path': cannot import 'no_such_module:Env'"),
    (("env.path=not-a-path",), "config key 'env.path': must look like 'module:Class'"),
    (("env.path=ppo_helpers:FollowUp", "reward.kind=none", "env.kwargs.question=Why?"),
     "config key 'env.kwargs': FollowUp(**{'question': 'Why?'}) does not fit its __init__: got an unexpected keyword argument 'question'"),
])
def test_bad_environment_settings_fail_before_anything_starts(overrides, message, capsys):
    from orchestrator.cli import main

    assert main(["ppo", "--dry-run", *overrides]) != 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("rlhf:")]
    assert len(lines) == 1 and message in lines[0], err


def test_token_budget_micro_batches_train_on_episodes_as_row_micro_batches_do(model_dir, tmp_path, user_env):
    """micro_batch_tokens cuts an episode rollout by its real tokens (the environment's count: they are context of
    every forward) and trims each micro-batch to its own padding: the step's numbers are those of row micro-batches."""
    from orchestrator.registry import run

    common = (f"env.path={user_env}", *ENV, "run.steps=1")
    run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "rows"), *common))
    run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "tokens"), *common, "policy.micro_batch_tokens=96", "critic.micro_batch_tokens=96"))
    a, b = read_metrics(tmp_path / "rows")[-1], read_metrics(tmp_path / "tokens")[-1]
    assert a["env/turns"] == 2.0
    for key, value in a.items():
        if not key.startswith(TIMINGS):
            assert b[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
