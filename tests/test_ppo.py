"""PPO driver in local mode (no Ray): it learns something, resumes exactly, updates the right
parameters, and never publishes a half-written checkpoint."""

from __future__ import annotations

import pytest
import torch

from orchestrator.core import checkpoint as ckpt
from ppo_helpers import read_metrics as _metrics, tiny_model_dir, tiny_ppo_config


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(str(tmp_path_factory.mktemp("cache")))


def test_two_steps_write_everything(model_dir, tmp_path):
    from orchestrator.registry import run

    cfg = tiny_ppo_config(model_dir, str(tmp_path / "run"))
    summary = run("ppo", cfg)
    out = tmp_path / "run"
    records = _metrics(out)
    assert [r["step"] for r in records] == [0, 1, 2]  # the start evaluation, then one record per step
    for key in ("policy/loss", "policy/clipfrac", "policy/approx_kl", "policy/ratio_max", "critic/loss", "critic/clipfrac",
                "reward/score", "reward/length_corr", "kl/mean", "kl/coef", "length/mean", "time/generate", "time/forward", "time/update"):
        assert key in records[1], key
    assert {"eval/reward", "eval/gold", "eval/length"} <= records[0].keys() & records[2].keys()
    assert records[1]["policy/ratio_max"] >= records[1]["policy/ratio_mean"]
    assert summary["eval_end"]["gold"] is not None and summary["eval_end"]["gold"] == records[2]["eval/gold"]
    for name in ("curves.png", "samples_start.jsonl", "samples_end.jsonl", "summary.json", "config.yaml"):
        assert (out / name).is_file(), name
    # the exported policy loads with plain transformers
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "policy")
    assert sum(p.numel() for p in model.parameters()) > 0
    assert [p.name for p in ckpt.complete_checkpoints(str(out))] == ["step_000002"]
    assert list((out / "tensorboard").iterdir())


@pytest.mark.slow  # three PPO runs; DPO and SFT resume tests stay in the fast loop
def test_resume_equals_uninterrupted(model_dir, tmp_path):
    from orchestrator.registry import run

    full = tmp_path / "full"
    run("ppo", tiny_ppo_config(model_dir, str(full), "run.steps=4"))

    split = tmp_path / "split"
    run("ppo", tiny_ppo_config(model_dir, str(split), "run.steps=2"))
    # a second invocation with more steps continues from the step-2 checkpoint (resume=auto)
    run("ppo", tiny_ppo_config(model_dir, str(split), "run.steps=4"))

    a, b = _metrics(full), _metrics(split)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 1, 2, 3, 4]
    for ra, rb in zip(a, b):
        for key, value in ra.items():
            if key.startswith("time/"):
                continue
            assert rb[key] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), (ra["step"], key)


@pytest.mark.parametrize("lora", [False, True])
def test_bf16_roles_resume_exactly(model_dir, tmp_path, lora):
    """bf16 policy, critic and reference: the trained roles run DeepSpeed's bf16 optimizer (fp32 master
    weights, fp32 gradient accumulation; stage 1 even at zero_stage=0), whose checkpoint resumes exactly."""
    from orchestrator.registry import run

    bf16 = ["policy.dtype=bf16", "critic.dtype=bf16", "reference.dtype=bf16", *(["policy.lora.enabled=true"] if lora else [])]
    run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "full"), *bf16, "run.steps=3"))
    run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "split"), *bf16, "run.steps=2"))
    run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "split"), *bf16, "run.steps=3"))
    a, b = _metrics(tmp_path / "full"), _metrics(tmp_path / "split")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 1, 2, 3]
    for ra, rb in zip(a, b):  # (the split run also evaluates at its first end, step 2)
        assert {k: v for k, v in ra.items() if not k.startswith("time/")} == {k: rb[k] for k in ra if not k.startswith("time/")}


def test_a_checkpoint_resumes_only_in_its_dtype(model_dir, tmp_path):
    """A bf16 role checkpoints DeepSpeed's bf16 optimizer, an fp32 one its plain optimizer: resuming in the
    other dtype is refused before any role starts, by the keys that differ."""
    from orchestrator.config.tree import ConfigError
    from orchestrator.registry import run

    run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "run"), "run.steps=1"))
    with pytest.raises(ConfigError, match=r"run\.resume.*policy_layout.*\"dtype\": \"bf16\""):
        run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "run"), "run.steps=2", "policy.dtype=bf16"))


def test_update_changes_every_trainable_param_and_not_the_reference(model_dir):
    from orchestrator.jobs.ppo import PPOJob

    job = PPOJob(tiny_ppo_config(model_dir, "unused"))
    job.start()
    roles = {"policy": job.roles.policy, "critic": job.roles.critic, "reference": job.roles.reference}

    def snapshot(group):
        return {n: p.detach().clone() for n, p in group.role.engine.module.named_parameters()}

    before = {name: snapshot(g) for name, g in roles.items()}
    job.ppo_step(0)
    after = {name: snapshot(g) for name, g in roles.items()}
    job.shutdown()
    for role in ("policy", "critic"):
        unchanged = [n for n, p in before[role].items() if torch.equal(p, after[role][n])]
        assert not unchanged, f"{role}: parameters not updated: {unchanged}"
    changed = [n for n, p in before["reference"].items() if not torch.equal(p, after["reference"][n])]
    assert not changed, f"reference changed: {changed}"


def test_interrupted_checkpoint_keeps_the_last_good_one(tmp_path):
    out = str(tmp_path)
    with ckpt.atomic_checkpoint(out, 2, keep=2) as folder:
        ckpt.save_driver_state(folder, {"step": 2})
    with pytest.raises(KeyboardInterrupt):
        with ckpt.atomic_checkpoint(out, 4, keep=2) as folder:
            (folder / "policy").mkdir()
            (folder / "policy" / "partial.bin").write_bytes(b"half")
            raise KeyboardInterrupt  # the crash, mid-write
    assert [p.name for p in ckpt.complete_checkpoints(out)] == ["step_000002"]
    assert ckpt.resolve_resume("auto", out).name == "step_000002"
    assert ckpt.load_driver_state(ckpt.latest_checkpoint(out)) == {"step": 2}
    # a temp folder left by a hard kill (no cleanup ran) is never taken for a checkpoint
    (ckpt.checkpoint_root(out) / ".tmp-step_000006-x").mkdir()
    assert ckpt.latest_checkpoint(out).name == "step_000002"
    # rotation keeps the newest `keep`
    for step in (4, 6):
        with ckpt.atomic_checkpoint(out, step, keep=2) as folder:
            ckpt.save_driver_state(folder, {"step": step})
    assert [p.name for p in ckpt.complete_checkpoints(out)] == ["step_000004", "step_000006"]


def test_lora_policy_and_critic_reference_is_the_policy_without_adapters(model_dir, tmp_path):
    """With LoRA there is no reference role: reference log-probs come from the policy with its adapters
    disabled, and they must equal a separate frozen copy of the initial model, even after updates."""
    import cluster
    from actors.policy import PolicyActor
    from actors.reference import ReferenceActor
    from orchestrator.registry import run

    out = tmp_path / "lora"
    cfg = tiny_ppo_config(model_dir, str(out), "policy.lora.enabled=true", "critic.lora.enabled=true", "policy.lora.r=4")
    summary = run("ppo", cfg)
    assert summary["steps"] == 2
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out / "policy")  # adapters merged into plain weights
    assert not any("lora" in n for n, _ in merged.named_parameters())

    cluster.init_local()
    kw = dict(seed=0, total_steps=2, minibatch_size=cfg.ppo.minibatch_size)
    policy = cluster.LocalGroup(PolicyActor, cfg.policy, name="policy", kwargs=dict(model_path=model_dir, **kw))
    policy.role.load_checkpoint(str(ckpt.latest_checkpoint(str(out))))
    reference = cluster.LocalGroup(
        ReferenceActor, cfg.reference, name="reference", kwargs=dict(model_path=model_dir, temperature=1.0, micro_batch_size=2)
    )
    from orchestrator.data import to_prompt_batch
    from orchestrator.data import load_prompts
    from actors.modeling import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    data, _ = load_prompts(cfg.data, tokenizer)
    rollout = policy.role.generate(to_prompt_batch([data[i] for i in range(4)], tokenizer.pad_token_id), seed=3)
    without_adapters = policy.role.reference_logprobs(rollout).logprobs
    frozen = reference.role.logprobs(rollout).logprobs
    with_adapters = policy.role.logprobs(rollout).logprobs
    torch.testing.assert_close(without_adapters, frozen, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(with_adapters, frozen, atol=1e-4)  # the adapters did learn something


def test_reward_model_from_a_folder_and_critic_from_it(model_dir, tmp_path):
    """reward.kind=model: a sequence classifier saved with save_pretrained scores the rollouts, its
    scores equal a direct forward pass of transformers on the same text, and the critic can start
    from its backbone (critic.init_from=reward)."""
    from transformers import AutoModelForSequenceClassification

    from actors.modeling import build_sequence_classifier, load_tokenizer
    from actors.reward import RewardActor
    from ppo_helpers import chat_text
    from actors.types import Rollout
    import cluster

    tokenizer = load_tokenizer(model_dir)
    rm = build_sequence_classifier(AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1).config, seed=1)
    rm_dir = tmp_path / "rm"
    rm.save_pretrained(rm_dir)
    tokenizer.save_pretrained(rm_dir)

    out = tmp_path / "run"
    train_summary = __import__("orchestrator.registry", fromlist=["run"]).run("ppo", 
        tiny_ppo_config(model_dir, str(out), "reward.kind=model", f"reward.path={rm_dir}", "critic.init_from=reward", "run.steps=1")
    )
    assert train_summary["steps"] == 1

    cluster.init_local()
    cfg = tiny_ppo_config(model_dir, str(out), "reward.kind=model", f"reward.path={rm_dir}")
    actor = RewardActor(cfg.reward)
    prompts = ["Tell me about fruit.", "What color is a banana?"]
    responses = ["Apples and pears.", "A banana is yellow, I think, and long."]
    n = 2
    rollout = Rollout(
        sequences=torch.zeros(n, 3, dtype=torch.long), attention_mask=torch.ones(n, 3, dtype=torch.long),
        action_mask=torch.ones(n, 1, dtype=torch.long), ended_with_eos=torch.ones(n, dtype=torch.bool),
        prompts=prompts, responses=responses, references=[None, None], query_types=["open", "closed"],
    )
    got = actor.score(rollout).reward
    reference_model = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    with torch.no_grad():
        want = torch.stack([
            reference_model(**tokenizer(chat_text(tokenizer, p, r), return_tensors="pt", add_special_tokens=False)).logits[0, 0]
            for p, r in zip(prompts, responses)
        ])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_checkpoint_holds_hf_weights(model_dir, tmp_path):
    from orchestrator.registry import run
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    run("ppo", tiny_ppo_config(model_dir, str(out), "run.steps=1"))
    last = ckpt.latest_checkpoint(str(out))
    assert (last / "policy_hf" / "model.safetensors").is_file()
    assert (last / "critic_hf" / "value_head.safetensors").is_file()
    exported = AutoModelForCausalLM.from_pretrained(out / "policy")
    in_ckpt = AutoModelForCausalLM.from_pretrained(last / "policy_hf")
    for (n, a), (_, b) in zip(exported.named_parameters(), in_ckpt.named_parameters()):
        assert torch.equal(a, b), n


def test_entropy_bonus_reaches_the_policy_update(model_dir, tmp_path):
    """policy.entropy_coef > 0: the policy loss carries -c H (losses.ppo.policy_loss) and the entropy is
    logged; the same run without it has no entropy metric and another loss."""
    from orchestrator.registry import run

    run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "plain"), "run.steps=1"))
    run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "bonus"), "run.steps=1", "policy.entropy_coef=0.5"))
    plain, bonus = _metrics(tmp_path / "plain")[1], _metrics(tmp_path / "bonus")[1]
    assert "policy/entropy" not in plain and bonus["policy/entropy"] > 0.1
    # the first minibatch is the same in both runs: its loss differs by -c x (token-mean entropy) on average
    assert bonus["policy/loss"] < plain["policy/loss"]


def test_old_logprobs_from_the_rollout_equal_a_recompute(model_dir, tmp_path):
    """ppo.old_logprobs=rollout skips the policy's no-grad forward (no old_logprobs call in the forward
    phase, timed alone with run.profile=true) and gives the same first update as recompute, to float
    rounding: the same samples, rewards, KL and losses."""
    from orchestrator.registry import run

    runs = {}
    for mode in ("recompute", "rollout"):
        out = tmp_path / mode
        run("ppo", tiny_ppo_config(model_dir, str(out), "run.steps=1", f"ppo.old_logprobs={mode}", "run.profile=true"))
        runs[mode] = _metrics(out)[1]
    a, b = runs["recompute"], runs["rollout"]
    assert "time/forward/old_logprobs" in a and "time/forward/old_logprobs" not in b
    assert {"time/forward/score", "time/forward/reference", "time/forward/values"} <= a.keys() & b.keys()
    for key in ("reward/score", "length/mean", "kl/mean", "policy/loss", "critic/loss", "policy/approx_kl", "policy/grad_norm"):
        assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
