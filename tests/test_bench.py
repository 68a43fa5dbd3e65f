"""`rlhf bench ppo|dpo|rm|sft` run end to end (local mode, one measured step) on a size spec and on a
built-in model, and write numbers that add up: the benchmarks stay runnable as the code under them changes."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def _metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

SPEC = "llama:vocab=512,hidden=32,intermediate=64,layers=2,heads=2"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_CACHE", str(tmp_path / "cache"))


@pytest.mark.slow  # four roles started for one measured step
def test_bench_ppo_reports_every_phase(tmp_path, capsys):
    from orchestrator.cli import main

    assert main(["bench", "ppo", "--model", SPEC, "--steps", "1", "--rows", "16", "--prompt-len", "6", "--response-len", "5",
                 "--out", str(tmp_path), "run.mode=local", "ppo.rollout_batch_size=8", "ppo.minibatch_size=8"]) == 0
    r = json.loads((tmp_path / "bench_ppo_local.json").read_text())
    assert r["steps_measured"] == 1 and r["max_new_tokens"] == 5 and r["padded_prompt_len"] == 6
    # model FLOPs count real tokens: the spec's word-level prompts are exact, responses may stop at EOS
    assert r["prompt_len_mean"] == 6 and 1 <= r["response_len_mean"] <= 5
    assert set(r["phase_s"]) == {"generate", "score", "reference", "old_logprobs", "values", "advantages",
                                 "critic_update", "policy_update", "driver"}
    # the step's wall time (the bench's hook) against the phases the job timed itself (metrics.jsonl): two clocks
    (measured,) = [m for m in _metrics(tmp_path / "run_ppo") if m["step"] == 2]
    assert r["step_s"] == pytest.approx(measured["time/step"], rel=0.05)
    assert r["step_s"] == pytest.approx(sum(r["phase_s"].values()), rel=0.05)
    assert r["samples_per_s"] == pytest.approx(8 / measured["time/step"], rel=0.05)
    assert set(r["phase_mfu"]) == {"generate", "score", "reference", "old_logprobs", "values", "critic_update", "policy_update"}
    assert 0 < r["mfu"] < 1 and all(0 < v < 1 for v in r["phase_mfu"].values())
    assert set(r["peak_memory_mb"]) == {"policy", "reference", "critic", "reward"}
    # each role's time inside its methods (measured in the role) against the driver's timing of its calls
    assert set(r["roles_s"]) == {"policy", "reference", "critic", "reward"}
    phases, roles = r["phase_s"], r["roles_s"]
    assert roles["policy"] == pytest.approx(phases["generate"] + phases["old_logprobs"] + phases["policy_update"], rel=0.05)
    assert roles["critic"] == pytest.approx(phases["values"] + phases["critic_update"], rel=0.05)
    assert roles["reference"] <= phases["reference"] and roles["reward"] <= phases["score"]
    assert 0 <= r["overhead_s"] < 0.05 * r["step_s"]
    assert "episodes/s" in capsys.readouterr().out


@pytest.mark.parametrize("job", ["dpo", "rm", "sft"])
def test_bench_trains_at_the_synthesised_lengths(job, tmp_path):
    """The word-level tokenizer of a spec makes the lengths exact: tokens per step = batch x sequences x
    (prompt + response), and MFU = 3 x the cost model's forward FLOPs / time / the measured peak."""
    from orchestrator.cli import main
    from orchestrator.tools.costmodel import ModelShape

    batch = {"dpo": "dpo.batch_size=4", "rm": "rm.batch_size=4", "sft": "sft.batch_size=4"}[job]
    micro = "model.micro_batch_size=4" if job == "rm" else "policy.micro_batch_size=4"
    assert main(["bench", job, "--model", SPEC, "--steps", "1", "--rows", "8", "--prompt-len", "6", "--response-len", "5",
                 "--out", str(tmp_path), "run.mode=local", batch, micro]) == 0
    r = json.loads((tmp_path / f"bench_{job}_local.json").read_text())
    seqs = 1 if job == "sft" else 2
    eos = r["tokens_per_step"] / (4 * seqs) - 11  # a job may end each response with EOS
    assert eos in (0, 1)
    shape = ModelShape(layers=2, hidden=32, intermediate=64, vocab=512, heads=2, kv_heads=2)
    L = 11 + eos
    flops = 3 * shape.forward_flops(4 * seqs * L, L / 2, lm_head=job != "rm")
    # mfu is stored to 4 decimals: at a tiny MFU (0.0038) that rounding is over 1%
    assert r["mfu"] == pytest.approx(flops / r["step_s"] / (r["peak_flops"]["fp32"] * 1e9), rel=0.01, abs=5e-5)
    # the rate against the step time the job measured itself (metrics.jsonl), not against the bench's own clock
    (measured,) = [m for m in _metrics(tmp_path / f"run_{job}") if m["step"] == 2]
    assert r["samples_per_s"] == pytest.approx(4 / measured["time/step"], rel=0.05)
    if job == "dpo":
        assert r["reference_pass"]["pairs"] == 8 + 16  # train rows + the held-out file


def test_bench_on_a_builtin_model_and_bad_spec(tmp_path, capsys):
    import re

    from orchestrator.cli import main

    assert main(["bench", "sft", "--model", "builtin:tiny-base", "--steps", "1", "--rows", "8", "--out", str(tmp_path),
                 "run.mode=local", "sft.batch_size=4", "policy.micro_batch_size=4"]) == 0
    assert json.loads((tmp_path / "bench_sft_local.json").read_text())["parameters"] > 0
    for bad, words in [("llama:vocab=64,foo=1", "rlhf bench --model: size spec .* foo is not a key"),
                       (str(tmp_path / "nowhere"), "rlhf bench --model: .*no such folder"),
                       ("builtin:huge", "rlhf bench --model: unknown built-in model")]:
        capsys.readouterr()
        assert main(["bench", "sft", "--model", bad, "--out", str(tmp_path)]) == 2  # one line, no traceback
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and re.search(words, err), err


def test_forward_flops_count_the_lm_head_only_when_asked():
    from orchestrator.tools.costmodel import ModelShape

    m = ModelShape(layers=1, hidden=4, intermediate=8, vocab=10, heads=1, kv_heads=1)
    # attention 4 x 16 + SwiGLU 3 x 32 = 160 matmul weights per layer, LM head 40; attention scores 4 x 1 x 4 x context
    assert m.forward_flops(3, 2) == 3 * (2 * 200 + 16 * 2)
    assert m.forward_flops(3, 2, lm_head=False) == 3 * (2 * 160 + 16 * 2)


def test_replica_threads_policy(monkeypatch):
    import os

    from cluster.group import replica_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert replica_threads("ray", 1.0) == 1  # a role of PPO: its num_cpus
    assert replica_threads("ray", 2.5) == 2
    assert replica_threads("ray", 1.0, alone=True) == 8  # sft/dpo/rm alone on the node: every core
    assert replica_threads("ray", 1.0, alone=True, replicas=3) == 2
    assert replica_threads("ray", 1.0, alone=True, replicas=16) == 1
    assert replica_threads("ray", 1.0, threads=3, alone=True) == 3  # set by the user


def test_alone_threads_lend_a_replica_the_cores_for_a_call_then_give_them_back(monkeypatch):
    import torch

    import cluster.group as group

    before = torch.get_num_threads()
    with group.alone_threads():  # not in a Ray replica: nothing changes
        assert torch.get_num_threads() == before
    monkeypatch.setattr(group, "_ALONE_THREADS", before + 1)
    with group.alone_threads():
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before


def test_bench_ppo_on_a_user_folder_builds_its_reward_model(tmp_path):
    """A GPT-2 folder (no pad token, learned positions, no reward/ inside): PPO's reward role gets the same
    backbone with a fresh one-output head, saved as a hub reward model is."""
    from orchestrator.cli import main
    from tests.families import build_family

    model = build_family("gpt2", tmp_path / "gpt2")["model"]
    assert main(["bench", "ppo", "--model", model, "--steps", "1", "--warmup", "0", "--rows", "8", "--prompt-len", "6",
                 "--response-len", "4", "--out", str(tmp_path / "out"), "run.mode=local", "ppo.rollout_batch_size=4",
                 "ppo.minibatch_size=4", "policy.micro_batch_size=4", "critic.micro_batch_size=4"]) == 0
    r = json.loads((tmp_path / "out" / "bench_ppo_local.json").read_text())
    assert r["samples_per_s"] > 0 and r["max_new_tokens"] == 4
    (reward,) = (tmp_path / "out" / "reward_model").iterdir()
    assert reward.name.startswith("model-")
    assert json.loads((reward / "config.json").read_text())["architectures"] == ["GPT2ForSequenceClassification"]


@pytest.mark.slow  # four whole `rlhf dpo` commands
def test_side_by_side_runs_whole_commands_and_rates_them_by_difference(tmp_path):
    """benchmarks.side_by_side without TRL (CI does not install the [bench] extra): this project's DPO
    variants as whole commands, short and long, rated by the difference."""
    from benchmarks.side_by_side import main

    assert main(["dpo", "--model", SPEC, "--variants", "rlhf", "--rounds", "1", "--short", "1", "--long", "3",
                 "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "dpo" / "results.json").read_text())
    assert set(r["variants"]) == {"rlhf defaults (fp32, local)", "rlhf policy.dtype=auto (bf16 here)"}
    for name, folder in (("rlhf defaults (fp32, local)", "rlhf_dpo"), ("rlhf policy.dtype=auto (bf16 here)", "rlhf_dpo_auto")):
        (short, long_), = r["variants"][name]["seconds_short_long"]
        # the long command ran last (round 1 runs short, then long): its run folder's own record of its
        # wall time lies inside the time the benchmark measured around the whole command
        summary = json.loads((tmp_path / "dpo" / folder / "summary.json").read_text())
        assert summary["steps"] == 3 and summary["wall_time_s"] < long_ < summary["wall_time_s"] + 60
        assert 0 < short < 60 + summary["wall_time_s"]


def test_bench_takes_length_ranges_and_a_token_budget(tmp_path, capsys):
    """--prompt-len / --response-len LO:HI synthesise rows of varied lengths (DPO here, with a token
    budget); PPO refuses a response range (its responses are sampled up to max_new_tokens)."""
    from orchestrator.cli import main

    assert main(["bench", "dpo", "--model", SPEC, "--steps", "1", "--rows", "8", "--prompt-len", "2:6", "--response-len", "1:9",
                 "--out", str(tmp_path), "run.mode=local", "dpo.batch_size=4", "policy.micro_batch_size=4",
                 "policy.micro_batch_tokens=40"]) == 0
    r = json.loads((tmp_path / "bench_dpo_local.json").read_text())
    assert r["prompt_len"] == [2, 6] and r["response_len"] == [1, 9]
    assert 3 <= r["tokens_per_step"] / 8 <= 15  # mean real tokens per sequence, prompt + response (+ EOS)
    assert r["micro_batch_tokens"] == 40
    assert "micro-batches of up to 40 tokens, prompts 2..6 + responses 1..9 tokens" in capsys.readouterr().out
    assert main(["bench", "ppo", "--model", SPEC, "--response-len", "4:8", "--out", str(tmp_path)]) == 2
    assert "rlhf: error: rlhf bench ppo: --response-len is policy.max_new_tokens" in capsys.readouterr().err


@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_bench_generate_counts_the_tokens_each_engine_samples(engine, tmp_path, capsys):
    """`rlhf bench generate`: at fixed lengths every answer has --response-len tokens in either engine (EOS held
    back), and the one printed line and the JSON give tokens/s over the timed calls; at spread lengths answers
    end at EOS (the built-in SFT policy's, well before the cap)."""
    from orchestrator.cli import main

    common = ["bench", "generate", "--engine", engine, "--model", "builtin:tiny", "--rows", "4", "--prompt-len", "8",
              "--steps", "2", "--warmup", "0", "--threads", "1", "--out", str(tmp_path), "generator.kv_cache_gb=0.05"]
    assert main([*common, "--response-len", "12"]) == 0
    result = json.loads((tmp_path / f"bench_generate_{engine}.json").read_text())
    assert result["mean_response_tokens"] == 12.0 and len(result["call_s"]) == 2 and result["threads"] == 1
    lo, hi = result["tokens_per_s_spread"]
    assert 0 < lo <= result["tokens_per_s"] <= hi
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("rlhf bench generate:")]
    assert len(line) == 1 and f": {result['tokens_per_s']:.0f} tokens/s (min" in line[0], line
    assert main([*common, "--response-len", "120", "--lengths", "spread"]) == 0
    assert json.loads((tmp_path / f"bench_generate_{engine}.json").read_text())["mean_response_tokens"] < 120
