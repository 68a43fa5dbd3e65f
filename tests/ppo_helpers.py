"""Shared set-up of the PPO and reward tests: a tiny random-init model folder, a fast config, a test
reward, a saved tiny reward model.

Importable as `ppo_helpers` by the driver (pytest puts tests/ on sys.path) and by Ray workers
(tests/conftest.py puts tests/ on their PYTHONPATH).
"""

from __future__ import annotations

from orchestrator.config import load_job_config


def tiny_model_dir(cache_dir: str) -> str:
    """A 2-layer, 64-wide built-in Llama (random init) saved to a folder; built in a few seconds."""
    from orchestrator.builtin import builtin_model_dir

    return builtin_model_dir(
        "tiny", cache_dir=cache_dir, seed=0, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4,
    )


def tiny_ppo_config(model_dir: str, out_dir: str, *extra: str):
    overrides = [
        f"policy.path={model_dir}",
        f"run.output_dir={out_dir}",
        "run.mode=local",
        "run.steps=2",
        "ppo.rollout_batch_size=8",
        "ppo.minibatch_size=4",
        "ppo.epochs=2",
        "policy.micro_batch_size=2",
        "critic.micro_batch_size=2",
        "policy.max_new_tokens=8",
        "policy.lr=1e-3",
        "critic.lr=1e-3",
        "policy.num_cpus=0.5",
        "critic.num_cpus=0.5",
        "reference.num_cpus=0.5",
        "reward.num_cpus=0.5",
        "data.max_rows=64",
        "reward.kind=function",
        "reward.function=ppo_helpers:length_reward",
        *extra,
    ]
    return load_job_config("ppo", None, overrides)


def length_reward(prompts, responses, references=None):
    """Words / 10: varies even for a random-init policy, so advantages are never all zero."""
    return [len(r.split()) / 10.0 for r in responses]


def save_reward_model(model_dir: str, folder, head=None, seed: int = 1) -> str:
    """A tiny Llama sequence classifier with the layout of `head` (an `actors.reward_head.RewardHead`; None:
    a plain 1-output classifier without rlhf_reward), its score head scaled up so that the outputs
    spread, saved with the tokenizer."""
    import torch
    from transformers import AutoConfig

    from actors.modeling import build_sequence_classifier, load_tokenizer

    num_labels = head.num_labels if head else 1
    model = build_sequence_classifier(AutoConfig.from_pretrained(model_dir), num_labels=num_labels, seed=seed)
    with torch.no_grad():
        model.score.weight.mul_(30.0)
    if head is not None:
        model.config.rlhf_reward = head.to_dict()
    model.save_pretrained(folder)
    load_tokenizer(model_dir).save_pretrained(folder)
    return str(folder)
