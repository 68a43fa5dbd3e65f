"""Critic-free estimators in the PPO job (GRPO, Dr. GRPO, RLOO, REINFORCE++), local mode: the experience
they make (hand-computed), their config checks, the verifiable reward, and runs with no critic role."""

from __future__ import annotations

import math

import pytest
import torch

from actors.types import LogProbs, Rollout, Scores
from losses.common import RunningMoments
from losses.kl import KLController
from orchestrator.config import ConfigError
from orchestrator.registry import load_config
from orchestrator.jobs.experience import make_experience, schedule
from ppo_helpers import read_metrics as _records, tiny_model_dir, tiny_ppo_config

S = 1 / math.sqrt(2)  # GRPO advantage of the two scores {1, 0}: +-0.5 / std, std = sqrt(0.5)


def _rollout(lengths=(2, 1, 2, 3), T=3):
    B = len(lengths)
    action_mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()
    return Rollout(
        sequences=torch.ones(B, 1 + T, dtype=torch.long), attention_mask=torch.cat([torch.ones(B, 1, dtype=torch.long), action_mask], 1),
        action_mask=action_mask, ended_with_eos=torch.ones(B, dtype=torch.bool), prompts=["p"] * B, responses=["r"] * B,
        references=[None] * B, query_types=[None] * B,
    )


def _experience(estimator, *extra, kl_per_token=0.0, scores=(1.0, 0.0, 0.5, 0.5)):
    """make_experience on 4 responses (2 prompts x 2) whose k1 KL is `kl_per_token` on every token."""
    cfg = load_config("ppo", None, [f"ppo.advantage_estimator={estimator}", "ppo.samples_per_prompt=2", "ppo.kl_coef=0.1", *extra])
    rollout = _rollout()
    mask = rollout.action_mask.float()
    old = LogProbs(logprobs=-1.0 * mask)
    ref = LogProbs(logprobs=(-1.0 - kl_per_token) * mask)
    kl_ctl = KLController(cfg.ppo.kl_coef)
    return make_experience(rollout, Scores(reward=torch.tensor(scores)), ref, old, None, cfg.ppo, kl_ctl, RunningMoments())


def test_grpo_advantages_spread_over_the_response_by_hand():
    exp, metrics = _experience("grpo")
    expected = torch.tensor([[S, S, 0], [-S, 0, 0], [0, 0, 0], [0, 0, 0]])
    torch.testing.assert_close(exp.advantages, expected, rtol=1e-5, atol=1e-6)  # eps 1e-6 in the std
    assert exp.old_values is None and exp.returns is None and exp.ref_logprobs is None
    assert metrics["grpo/zero_std_groups"] == 1.0 and metrics["grpo/zero_std_share"] == 0.5
    assert metrics["reward/group_std"] == pytest.approx(S / 2, rel=1e-9)  # mean of std(1, 0) and std(.5, .5)
    assert not any(k.startswith("critic/") for k in metrics)


def test_dr_grpo_and_rloo_by_hand():
    exp, _ = _experience("grpo", "ppo.grpo_scale_by_std=false")
    torch.testing.assert_close(exp.advantages, torch.tensor([[0.5, 0.5, 0], [-0.5, 0, 0], [0, 0, 0], [0, 0, 0]]))
    exp, _ = _experience("rloo")  # r_i - r_other: 1 - 0, 0 - 1, 0.5 - 0.5
    torch.testing.assert_close(exp.advantages, torch.tensor([[1.0, 1.0, 0], [-1.0, 0, 0], [0, 0, 0], [0, 0, 0]]))


def test_kl_in_the_reward_adds_its_returns_to_go_and_in_the_loss_leaves_the_advantages():
    # k1 KL 0.2 per token, beta 0.1: token t of a row loses 0.02 per token from t to the row's end
    exp, metrics = _experience("grpo", kl_per_token=0.2)
    expected = torch.tensor([[S - 0.04, S - 0.02, 0], [-S - 0.02, 0, 0], [-0.04, -0.02, 0], [-0.06, -0.04, -0.02]])
    torch.testing.assert_close(exp.advantages, expected, rtol=1e-5, atol=1e-6)
    assert metrics["kl/mean"] == pytest.approx(0.2 * 2, rel=1e-5)  # the mean per-sequence KL: 0.2 x 2 tokens
    exp, metrics = _experience("grpo", "ppo.kl_in_loss=true", "ppo.kl_loss_coef=0.3", kl_per_token=0.2)
    torch.testing.assert_close(exp.advantages, torch.tensor([[S, S, 0], [-S, 0, 0], [0, 0, 0], [0, 0, 0]]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(exp.ref_logprobs, -1.2 * exp.action_mask.float())
    assert metrics["kl/coef"] == 0.3


def test_reinforce_pp_whitens_the_kl_shaped_returns_over_the_batch():
    exp, _ = _experience("reinforce_pp", kl_per_token=0.2)
    mask = exp.action_mask.bool()
    # returns-to-go: score - 0.02 x (tokens from t on); then whitened over the 8 valid tokens
    g = torch.tensor([[1 - 0.04, 1 - 0.02, 0], [0 - 0.02, 0, 0], [0.5 - 0.04, 0.5 - 0.02, 0], [0.5 - 0.06, 0.5 - 0.04, 0.5 - 0.02]])
    valid = g[mask]
    expected = torch.where(mask, (g - valid.mean()) / valid.std(), torch.zeros(()))
    torch.testing.assert_close(exp.advantages, expected, rtol=1e-5, atol=1e-6)


def test_schedule_stamps_the_normaliser_of_the_aggregation():
    exp, _ = _experience("grpo")
    g = torch.Generator().manual_seed(0)
    for mode, n in (("token_mean", 8.0), ("seq_mean_token_mean", 4.0), ("seq_mean_token_sum_norm", 12.0)):
        plan = schedule(exp, epochs=1, minibatch_size=4, replicas=2, generator=g, aggregation=mode)
        assert plan.mb_tokens.tolist() == [n] * 4, mode


@pytest.mark.parametrize("overrides, message", [
    (["ppo.advantage_estimator=grpo"], "'ppo.samples_per_prompt': must be >= 2 with advantage_estimator=grpo"),
    (["ppo.advantage_estimator=rloo", "ppo.samples_per_prompt=3"],
     "'ppo.rollout_batch_size': counts responses per step and must be divisible by ppo.samples_per_prompt=3"),
    (["ppo.kl_in_loss=true", "ppo.kl_target=6"], "'ppo.kl_target': adapts the KL coefficient of the reward"),
    (["ppo.advantage_estimator=grpo", "ppo.samples_per_prompt=4", "reward.colocate_with=critic"],
     "'reward.colocate_with': names the critic, which ppo.advantage_estimator=grpo does not start"),
    (["reward.function=builtin:verifiable"], "use data.path=builtin:closed-prompts"),
    (["ppo.advantage_estimator=grpo", "ppo.samples_per_prompt=4", "ppo.loss_agg=sum"], "'ppo.loss_agg': 'sum' is not one of"),
])
def test_config_errors_are_one_line(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config("ppo", None, overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_critic_settings_do_not_matter_without_a_critic():
    # 3 critic replicas would not divide the 64 responses; without a critic nothing checks them
    cfg = load_config("ppo", None, ["ppo.advantage_estimator=grpo", "ppo.samples_per_prompt=4", "critic.replicas=3"])
    assert set(cfg.hosted_roles()) == {"policy", "reference", "reward"}
    with pytest.raises(ConfigError, match="'ppo.rollout_batch_size': \\(64 responses\\) must be divisible by critic.replicas=3"):
        load_config("ppo", None, ["critic.replicas=3"])


def test_verifiable_reward_checks_the_fact():
    from orchestrator.builtin.world import prompt_rows, verifiable_reward

    closed = prompt_rows("test", query_type="closed")
    assert len(closed) == 38 and all(r["query_type"] == "closed" for r in closed)
    banana = next(r for r in prompt_rows("train", query_type="closed") if "banana" in r["prompt"])
    answers = ["A banana is yellow.", "Yellow!", "It is yellow or maybe green.", "A banana is green.", "I am not sure.",
               "banana banana banana"]
    assert verifiable_reward([banana["prompt"]] * 6, answers) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert verifiable_reward(["anything"], ["yellow"], [banana["reference"]]) == [1.0]  # the row's reference decides
    open_row = prompt_rows("train", query_type="open")[0]
    with pytest.raises(ValueError, match="has none \\(use data.path=builtin:closed-prompts\\)"):
        verifiable_reward([open_row["prompt"]], ["x"])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(str(tmp_path_factory.mktemp("cache")))


CRITIC_FREE = ("ppo.advantage_estimator=grpo", "ppo.samples_per_prompt=4")


def test_a_critic_free_run_starts_no_critic_and_checkpoints_without_one(model_dir, tmp_path):
    from orchestrator.jobs.ppo import PPOJob
    from orchestrator.registry import run

    cfg = tiny_ppo_config(model_dir, str(tmp_path / "run"), *CRITIC_FREE, "ppo.kl_in_loss=true", "critic.path=/does/not/exist",
                          "run.profile=true")
    job = PPOJob(cfg)
    assert set(job.role_configs()) == {"policy", "reference", "reward"} and "critic" not in job.infos
    summary = run("ppo", cfg)
    records = _records(tmp_path / "run")
    step = records[1]
    assert "time/update/policy_update" in step and not any(k.startswith("critic/") or "critic_update" in k for k in step)
    assert "time/forward/values" not in step and "time/forward/score" in step
    assert {"grpo/zero_std_groups", "reward/group_std", "policy/kl_loss"} <= step.keys()
    assert set(summary["roles"]) == {"policy", "reference", "reward"}
    ckpt = tmp_path / "run" / "checkpoints" / "step_000002"
    assert (ckpt / "policy").is_dir() and not any("critic" in p.name for p in ckpt.iterdir())
    # a GAE run cannot resume it (it has no critic to load): refused by the fingerprint, before any role starts
    with pytest.raises(ConfigError, match="run.resume.*none \\(a critic-free ppo.advantage_estimator\\)"):
        run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "run"), "run.steps=3"))


@pytest.mark.parametrize("mode", ["seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_sequence_aggregations_do_not_depend_on_the_micro_batch(model_dir, tmp_path, mode):
    from orchestrator.registry import run

    runs = {}
    for micro in (1, 4):
        out = tmp_path / f"micro{micro}"
        run("ppo", tiny_ppo_config(model_dir, str(out), *CRITIC_FREE, f"ppo.loss_agg={mode}", f"policy.micro_batch_size={micro}",
                              "run.steps=1", "ppo.epochs=1"))
        runs[micro] = _records(out)[1]
    for key in ("policy/grad_norm", "policy/loss", "policy/approx_kl", "eval/reward"):
        assert runs[1][key] == pytest.approx(runs[4][key], rel=1e-5), key


@pytest.mark.slow  # three critic-free runs
def test_critic_free_resume_equals_uninterrupted(model_dir, tmp_path):
    from orchestrator.registry import run

    extra = (*CRITIC_FREE, "ppo.loss_agg=seq_mean_token_sum_norm", "ppo.grpo_scale_by_std=false")
    run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "full"), *extra, "run.steps=4"))
    run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "split"), *extra, "run.steps=2"))
    run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "split"), *extra, "run.steps=4"))
    a, b = _records(tmp_path / "full"), _records(tmp_path / "split")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 1, 2, 3, 4]
    for ra, rb in zip(a, b):
        for key, value in ra.items():
            if not key.startswith("time/"):
                assert rb[key] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), (ra["step"], key)


def test_critic_free_with_lora_hosts_two_roles(model_dir, tmp_path):
    """A LoRA policy without reference.path is its own reference (adapters off): GRPO then runs on the
    policy and reward roles alone, with the KL in the loss read from the adapter-free pass."""
    from orchestrator.jobs.ppo import PPOJob
    from orchestrator.registry import run

    cfg = tiny_ppo_config(model_dir, str(tmp_path / "lora"), *CRITIC_FREE, "ppo.kl_in_loss=true", "policy.lora.enabled=true")
    assert set(PPOJob(cfg).role_configs()) == {"policy", "reward"}
    summary = run("ppo", cfg)
    assert set(summary["roles"]) == {"policy", "reward"}
    first, second = _records(tmp_path / "lora")[1:3]
    # the adapters start as a no-op (LoRA's B = 0), so the KL to the adapter-free pass starts at 0 and grows
    assert 0 <= first["policy/kl_loss"] < second["policy/kl_loss"]
