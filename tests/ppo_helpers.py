"""Shared set-up of the PPO and reward tests: a tiny random-init model folder, a fast config, a test
reward, a saved tiny reward model, a run killed in the middle (`run_killed_at`).

Importable as `ppo_helpers` by the driver (pytest puts tests/ on sys.path) and by Ray workers
(tests/conftest.py puts tests/ on their PYTHONPATH).
"""

from __future__ import annotations

import os
import time

from orchestrator.registry import load_config

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def tiny_model_dir(cache_dir: str) -> str:
    """A 2-layer, 64-wide built-in Llama (random init) saved to a folder; built in a few seconds."""
    from orchestrator.builtin.models import builtin_model_dir

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
    return load_config("ppo", None, overrides)


def read_metrics(out_dir) -> list[dict]:
    """The records of a run's metrics.jsonl, in order."""
    import json

    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def length_reward(prompts, responses, references=None):
    """Words / 10: varies even for a random-init policy, so advantages are never all zero."""
    return [len(r.split()) / 10.0 for r in responses]


def slow_length_reward(prompts, responses, references=None):
    """`length_reward` after a pause of $RLHF_SLOW_REWARD_S seconds: a step slow enough to be killed mid-run."""
    time.sleep(float(os.environ.get("RLHF_SLOW_REWARD_S", "0")))
    return length_reward(prompts, responses, references)


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


def chat_text(tokenizer, prompt: str, response: str) -> str:
    """The conversation through the tokenizer's own chat template, written independently of
    `actors.rendering`: for the built-in template, which ends an assistant turn with its eos and adds
    nothing after it, these are exactly the tokens the rendering gives (prompt, response, eos)."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False)


# ------------------------------------------------------------------ one rendering, every path

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
"""A Qwen2-style (ChatML) template: each turn ends with <|im_end|> AND a newline, so rendering the
conversation with the template gives one token more than generation stops at."""

RENDER_PROMPTS = [
    "Tell me about fruit.",
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What color is a banana?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Talk about music."}],
]
RENDER_CHOSEN = ["The apple and the pear are sweet.", "A banana is yellow.", "The song has a nice melody."]
RENDER_REJECTED = ["The hammer.", "A banana is blue, lol !!", "No."]


def rendering_family(kind: str, root) -> dict:
    """A tiny causal LM folder whose tokenizer renders with a ChatML template (kind="chatml": eos is
    <|im_end|>, as in Qwen2 chat models) or with none (kind="plain"), the preference file of
    RENDER_* (chat prompts included) and a prompt file of the same prompts. Returns the paths."""
    import json

    from actors.modeling import build_causal_lm, tiny_llama_config
    from orchestrator.builtin.models import builtin_tokenizer

    root.mkdir(parents=True, exist_ok=True)
    tok = builtin_tokenizer(cache_dir=str(root / "cache"))
    if kind == "chatml":
        tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        tok.eos_token = "<|im_end|>"
        tok.chat_template = CHATML
    else:
        tok.chat_template = None
    config = tiny_llama_config(tok, "tiny", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=2, num_key_value_heads=2)
    model_dir = root / "model"
    build_causal_lm(config, seed=0).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    pairs, prompts = root / "pairs.jsonl", root / "prompts.jsonl"
    with open(pairs, "w") as f:
        for p, c, r in zip(RENDER_PROMPTS, RENDER_CHOSEN, RENDER_REJECTED):
            f.write(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n")
    with open(prompts, "w") as f:
        for p in RENDER_PROMPTS:
            f.write(json.dumps({"prompt": p} if isinstance(p, str) else {"messages": p}) + "\n")
    return {"model": str(model_dir), "pairs": str(pairs), "prompts": str(prompts), "tokenizer": tok}


def train_rendering_rm(family: dict, out) -> str:
    """`rlhf rm` (mean-variance, 2 steps, local) on the family's pairs; returns the saved model folder."""
    from orchestrator.registry import run

    cfg = load_config("rm", None, [
        f"model.path={family['model']}", f"data.path={family['pairs']}", f"data.eval_path={family['pairs']}",
        f"run.output_dir={out}", "run.mode=local", "run.steps=2", "rm.batch_size=3", "model.micro_batch_size=3",
        "model.warmup_steps=0", "model.objective=mean_variance", "model.head_init_scale=1.0", "model.lr=1e-2",
    ])
    return run("rm", cfg)["model"]


def training_path_scores(folder: str, family: dict):
    """(N, 2) raw mean utility of chosen, rejected of the family's pairs: the training role's forward
    (`RewardModelActor.outputs`) on the data loader's rows, the head kept as saved (init scale 1)."""
    import torch

    from actors.pairs import collate_pairs
    from actors.reward_trainer import RewardModelActor
    from cluster import init_local
    from orchestrator.config import DataConfig
    from orchestrator.data import load_preferences

    init_local()
    cfg = load_config("rm", None, [f"model.path={folder}", "model.objective=mean_variance", "model.head_init_scale=1.0",
                                       "model.micro_batch_size=2", "model.warmup_steps=0"]).model
    actor = RewardModelActor(cfg, model_path=folder, seed=0, total_steps=1, minibatch_size=2)
    rows = load_preferences(DataConfig(path=family["pairs"]), actor.tokenizer)[0].to_list()
    out = actor.outputs(collate_pairs(rows, actor.pad_id))
    return torch.stack([out.chosen[:, 0], out.rejected[:, 0]], dim=1)


def role_processes(role: str | None = None) -> list:
    """The Ray actor processes hosting role replicas (`psutil.Process`), those of `role` only when given
    (the RLHF_ROLE its group sets in each actor's environment)."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info.get("cmdline") or []
        if cmd and cmd[0].startswith("ray::_Replica"):
            try:
                if role is None or p.environ().get("RLHF_ROLE") == role:
                    found.append(p)
            except psutil.Error:
                pass
    return found


def run_killed_at(cfg, step: int, role: str | None = None) -> dict:
    """`rlhf ppo` of `cfg` in a thread; once its metrics record `step`, SIGKILL to one actor process (of `role`,
    which must have exactly one; else the first role actor found); returns the run's summary after it healed
    and finished (its error, if it did not, fails the calling test)."""
    import json
    import signal
    import threading

    from orchestrator.registry import run

    path = os.path.join(cfg.run.output_dir, "metrics.jsonl")
    result: dict = {}

    def target() -> None:
        try:
            result["summary"] = run("ppo", cfg)
        except BaseException as e:  # noqa: BLE001  (reported below)
            result["error"] = e

    worker = threading.Thread(target=target)
    worker.start()
    deadline = time.time() + 600
    while not (os.path.exists(path) and any(json.loads(line)["step"] == step for line in open(path) if line.strip())):
        assert worker.is_alive() and time.time() < deadline, result
        time.sleep(0.02)
    victims = role_processes(role)
    assert victims and (role is None or len(victims) == 1), victims
    os.kill(victims[0].pid, signal.SIGKILL)
    worker.join(timeout=900)
    assert "error" not in result, result.get("error")
    return result["summary"]


class FollowUp:
    """A test environment (env.path=ppo_helpers:FollowUp): asks for more after the first answer (reward 0.1), then
    ends, scoring the second answer by its length in words / 10: every episode has two model turns, whatever a
    random-init policy says."""

    def __init__(self, ask: str = "Tell me more."):
        self.ask = ask

    def reset(self, row):
        self.turn = 0
        return [{"role": "user", "content": row["prompt"]}]

    def step(self, response):
        self.turn += 1
        if self.turn == 1:
            return self.ask, 0.1, False
        return None, len(response.split()) / 10, True
