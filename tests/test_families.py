"""Your model, your data: the model-family matrix (`tests/families.py`: Llama, GPT-2, Qwen2, Mistral, Gemma,
and a hub-style sequence classifier) through `rlhf sft`, `rlhf rm`, `rlhf ppo` (full with GAE, and LoRA critic-free with GRPO; the
reward from the trained reward model), `rlhf dpo`, local mode, 2 steps each; the outputs load in plain
transformers (and peft). The checks before any role starts, each one line naming the key. No Ray, no
network; caches go to tmp_path through RLHF_CACHE."""

import json
from pathlib import Path

import pytest
import torch

from families import FAMILIES, build_families, family_config, family_tokenizer, run_job, sequence_classifier
from orchestrator.config import ConfigError
from orchestrator.registry import load_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RLHF_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    return build_families(tmp_path_factory.mktemp("families"))


def _run(job: str, out: Path, *overrides: str) -> dict:
    return run_job(job, out, "run.mode=local", *overrides)


def _samples(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _scores_three_ways(folder: str, fam: dict):
    """(training role, rlhf rm eval, PPO scorer) head outputs of the family's pairs from the saved reward model."""
    import transformers

    from actors.modeling import load_sequence_classifier
    from actors.pairs import collate_pairs
    from actors.reward import ModelScorer
    from actors.reward_trainer import RewardModelActor, pair_outputs
    from cluster import init_local
    from orchestrator.config import DataConfig, RewardConfig, load
    from orchestrator.data import load_preferences

    init_local()
    cfg = load_config("rm", None, [f"model.path={folder}", "model.head_init_scale=1.0", "model.micro_batch_size=2",
                                       "model.warmup_steps=0"]).model
    actor = RewardModelActor(cfg, model_path=folder, seed=0, total_steps=1, minibatch_size=2)
    rows = load_preferences(DataConfig(path=fam["prefs"]), actor.tokenizer)[0].to_list()[:8]
    trained = actor.outputs(collate_pairs(rows, actor.pad_id))
    training = torch.cat([trained.chosen, trained.rejected])
    hf = load_sequence_classifier(folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    evaluated = pair_outputs(hf, collate_pairs(rows, actor.pad_id), actor.pad_id, "last_token", 3)
    scorer = ModelScorer.from_config(load(RewardConfig, None, ["kind=model", f"path={folder}", "batch_size=5"]))
    prompts = [r["chat"] if r["chat"] is not None else r["prompt"] for r in rows] * 2
    responses = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    return training, torch.cat([evaluated.chosen, evaluated.rejected]), scorer.outputs(prompts, responses), tok


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_family_sft_rm_ppo_lora_dpo(family, families, tmp_path):
    import peft
    import transformers

    fam = families[family]
    small = ["policy.max_new_tokens=8", "policy.micro_batch_size=4"]

    # SFT on the user's chat file (Gemma's with LoRA, merged on export), then the export loads and
    # generates in plain transformers
    lora_sft = ["policy.lora.enabled=true", "policy.lr=1e-2"] if family == "gemma" else []
    out = _run("sft", tmp_path / "sft", f"policy.path={fam['model']}", f"data.path={fam['sft']}", f"data.eval_path={fam['sft']}",
               "sft.batch_size=8", "policy.warmup_steps=0", *small, *lora_sft)
    policy = out["policy"]
    lm = transformers.AutoModelForCausalLM.from_pretrained(policy)
    tok = transformers.AutoTokenizer.from_pretrained(policy)
    ids = tok("Tell me about music.", return_tensors="pt").input_ids
    assert lm.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.eos_token_id).shape[1] == ids.shape[1] + 3
    assert len(_samples(tmp_path / "sft" / "samples_end.jsonl")) == 4  # the 4 distinct held-out prompts

    # a reward model from the SFT policy; it records how it pools and renders
    rm_out = _run("rm", tmp_path / "rm", f"model.path={policy}", f"data.path={fam['prefs']}", f"data.eval_path={fam['prefs']}",
                  "rm.batch_size=8", "model.micro_batch_size=4", "model.warmup_steps=0", "model.head_init_scale=1.0")
    rm_dir = rm_out["model"]
    rm_config = transformers.AutoConfig.from_pretrained(rm_dir)
    assert rm_config.rlhf_reward["pooling"] == "last_token"
    transformers.AutoModelForSequenceClassification.from_pretrained(rm_dir)

    # the same pairs score alike in RM training evaluation, `rlhf rm eval` and PPO (serving: test_families_ray)
    training, evaluated, ppo_time, _ = _scores_three_ways(rm_dir, fam)
    assert training[:, 0].std() > 1e-4
    torch.testing.assert_close(evaluated, training, atol=1e-5, rtol=0)
    torch.testing.assert_close(ppo_time, training, atol=1e-5, rtol=0)

    # PPO (GAE, with its critic), full fine-tuning, reward from the trained reward model; chat prompts reach the samples whole
    ppo_common = [f"data.path={fam['prompts']}", f"data.eval_path={fam['prompts']}", "ppo.rollout_batch_size=8",
                  "ppo.minibatch_size=4", "critic.micro_batch_size=4", *small]
    _run("ppo", tmp_path / "ppo", f"policy.path={policy}", "reward.kind=model", f"reward.path={rm_dir}", *ppo_common)
    transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ppo" / "policy")
    samples = _samples(tmp_path / "ppo" / "samples_end.jsonl")
    assert any(s["messages"] and s["messages"][0]["role"] == "system" for s in samples)
    assert all(isinstance(s["reward"], float) for s in samples)

    # critic-free (GRPO, 4 responses per prompt, KL in the loss against the adapter-free pass) with LoRA on
    # the family's own layer names, adapters saved alone too; Mistral's reward is a sequence classifier as
    # a hub reward model is saved (no rlhf_reward: its own pooling, Bradley-Terry)
    reward = sequence_classifier(family, tmp_path / "hub") if family == "mistral" else rm_dir
    _run("ppo", tmp_path / "lora", f"policy.path={policy}", "policy.lora.enabled=true", "policy.lora.save_adapter=true",
         "reward.kind=model", f"reward.path={reward}", "ppo.advantage_estimator=grpo", "ppo.samples_per_prompt=4",
         "ppo.kl_in_loss=true", *ppo_common)
    merged = tmp_path / "lora" / "policy"
    base = transformers.AutoModelForCausalLM.from_pretrained(policy)
    with_adapter = peft.PeftModel.from_pretrained(base, str(merged) + "_adapter")
    probe = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(with_adapter(probe).logits, transformers.AutoModelForCausalLM.from_pretrained(merged)(probe).logits,
                               atol=1e-4, rtol=0)

    # DPO on the preference file; held-out samples at the start and end
    _run("dpo", tmp_path / "dpo", f"policy.path={policy}", f"data.path={fam['prefs']}", f"data.eval_path={fam['prefs']}",
         "dpo.batch_size=8", *small)
    transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "dpo" / "policy")
    for stage in ("start", "end"):
        rows = _samples(tmp_path / "dpo" / f"samples_{stage}.jsonl")
        assert len(rows) == 4 and all(r["response"] is not None and r["prompt_text"] for r in rows)


# ------------------------------------------------------------------ fast checks per family


@pytest.mark.parametrize("family, want", [
    ("llama", ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]),
    ("gpt2", ["c_attn", "c_fc", "c_proj"]),
    ("gemma", ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]),
])
def test_lora_targets_fit_the_architecture(family, want, tmp_path):
    import transformers

    from actors.modeling import linear_layers, lora_targets

    with torch.device("meta"):
        lm = transformers.AutoModelForCausalLM.from_config(family_config(family, family_tokenizer(family, tmp_path)))
        classifier = transformers.AutoModelForSequenceClassification.from_config(family_config(family, family_tokenizer(family, tmp_path)))
    assert lora_targets(lm, []) == want == lora_targets(lm, ["all-linear"])
    assert "lm_head" not in linear_layers(lm)  # the output embeddings never get adapters
    assert lora_targets(classifier, [], exclude=("score",)) == want
    with pytest.raises(ValueError, match=r"no linear layer named nope in .*; its linear layers are"):
        lora_targets(lm, ["q_proj" if family == "gpt2" else "c_attn", "nope"][1:])


def test_checks_before_any_role_starts_are_one_line_naming_the_key(families, tmp_path, monkeypatch):
    from orchestrator.jobs import ppo, rm
    from orchestrator.registry import run

    def no_roles(*a, **k):
        raise AssertionError("a role started before the check")

    monkeypatch.setattr(ppo.PPOJob, "start", no_roles)
    gpt2 = families["gpt2"]
    base = ["run.mode=local", f"run.output_dir={tmp_path / 'ppo'}", f"data.path={gpt2['prompts']}", f"data.eval_path={gpt2['prompts']}"]
    # the built-in task's reward knows only the built-in prompts
    with pytest.raises(ConfigError, match=r"^config key 'reward.function': is the built-in task's annotator reward"):
        load_config("ppo", None, base)
    base += ["reward.function=ppo_helpers:length_reward"]

    def ppo_error(*extra: str) -> str:
        with pytest.raises(ConfigError) as e:
            run("ppo", load_config("ppo", None, base + [f"policy.path={gpt2['model']}", *extra]))
        assert "\n" not in str(e.value)
        return str(e.value)

    # GPT-2's 96 learned positions: the prompt + generation length is refused, naming the key and the limit
    msg = ppo_error("policy.max_new_tokens=90")
    assert msg.startswith("config key 'policy.max_new_tokens': the longest prompt + policy.max_new_tokens = ")
    assert "position limit" in msg and "(96," in msg
    # Llama's LoRA names on GPT-2
    msg = ppo_error("policy.lora.enabled=true", "policy.lora.target_modules=[q_proj,v_proj]")
    assert msg.startswith("config key 'policy.lora.target_modules': no linear layer named q_proj, v_proj in GPT2LMHeadModel")
    assert "c_attn, c_fc, c_proj" in msg
    # a missing model folder
    with pytest.raises(ConfigError, match=r"^config key 'policy.path': '/no/such/model' is not a readable model folder"):
        run("ppo", load_config("ppo", None, base + ["policy.path=/no/such/model"]))
    # a reference with another vocabulary
    msg = ppo_error(f"reference.path={families['qwen2']['model']}")
    assert msg.startswith("config key 'reference.path':") and "different tokenizer" in msg
    # an RM backbone with 8 positions: the data's longest prompt + response is refused
    import transformers

    short = tmp_path / "short"
    config = transformers.AutoConfig.from_pretrained(gpt2["model"])
    config.n_positions = 8
    config.save_pretrained(short)  # the check reads the config only (the weights are never loaded)
    gpt2["tokenizer"].save_pretrained(short)
    (short / "model.safetensors").write_bytes((Path(gpt2["model"]) / "model.safetensors").read_bytes())
    cfg = load_config("rm", None, ["run.mode=local", f"run.output_dir={tmp_path / 'rm'}", f"model.path={short}",
                                       f"data.path={gpt2['hh']}", f"data.eval_path={gpt2['hh']}"])
    monkeypatch.setattr(rm.RMJob, "start", no_roles)
    with pytest.raises(ConfigError, match=r"^config key 'data.max_prompt_tokens': the longest prompt \+ response .* \(8, "):
        run("rm", cfg)


def test_resume_refuses_a_checkpoint_of_another_model(families, tmp_path, monkeypatch):
    """`run.resume=auto` in an output_dir whose checkpoint was written for Qwen2 now asked to run GPT-2:
    one line before any role starts; the old checkpoint is untouched."""
    from orchestrator.core import checkpoint
    from orchestrator.jobs import ppo
    from orchestrator.registry import run

    monkeypatch.setattr(ppo.PPOJob, "start", lambda *a, **k: pytest.fail("a role started"))
    out = tmp_path / "ppo"
    common = ["run.mode=local", f"run.output_dir={out}", f"data.path={families['gpt2']['prompts']}",
              f"data.eval_path={families['gpt2']['prompts']}", "reward.function=ppo_helpers:length_reward"]
    written = ppo.PPOJob(load_config("ppo", None, common + [f"policy.path={families['qwen2']['model']}"]))
    with checkpoint.atomic_checkpoint(str(out), 5, 2) as folder:
        checkpoint.save_driver_state(folder, {"step": 5, "job": {}, "history": {}, "rng": torch.get_rng_state(),
                                              "fingerprint": written.fingerprint()})
    before = (out / "checkpoints" / "step_000005" / "driver.pt").read_bytes()
    with pytest.raises(ConfigError) as e:
        run("ppo", load_config("ppo", None, common + [f"policy.path={families['gpt2']['model']}"]))
    msg = str(e.value)
    assert msg.startswith("config key 'run.resume': the checkpoint ") and "written for another model" in msg
    assert '"model_type": "qwen2"' in msg and '"model_type": "gpt2"' in msg and "run.resume=never" in msg
    assert (out / "checkpoints" / "step_000005" / "driver.pt").read_bytes() == before
    # the same model resumes past the check (and then needs its roles, which this test does not start)
    with pytest.raises(pytest.fail.Exception, match="a role started"):
        run("ppo", load_config("ppo", None, common + [f"policy.path={families['qwen2']['model']}", "run.steps=6"]))


def test_plain_rendering_gives_hh_dialogues_one_layout(families):
    """A tokenizer without a chat template (GPT-2): HH-RLHF rows of one turn and of several turns both
    keep their Human/Assistant labels; a prompt given as a string stays verbatim."""
    from orchestrator.config import DataConfig
    from orchestrator.data import load_preferences

    gpt2 = families["gpt2"]
    rows = load_preferences(DataConfig(path=gpt2["hh"]), gpt2["tokenizer"])[0].to_list()
    single = next(r for r in rows if len(r["chat"]) == 1)
    multi = next(r for r in rows if len(r["chat"]) > 1)
    assert single["prompt_text"] == f"\n\nHuman: {single['prompt']}\n\nAssistant:"
    assert multi["prompt_text"].startswith("\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: ")
    assert multi["prompt_text"].endswith("\n\nAssistant:")
    plain = load_preferences(DataConfig(path=gpt2["prefs"]), gpt2["tokenizer"])[0].to_list()
    string_row = next(r for r in plain if r["chat"] is None)
    assert string_row["prompt_text"] == string_row["prompt"]
    chat_row = next(r for r in plain if r["chat"] is not None and r["chat"][0]["role"] == "system")
    assert chat_row["prompt_text"] == "\n\nSystem: Answer briefly.\n\nHuman: What color is a banana?\n\nAssistant:"


def messages_reward(prompts, responses, references, messages):
    """A function reward that reads the whole conversation: the number of turns of each prompt."""
    return [float(len(m)) for m in messages]


def test_function_reward_gets_the_whole_conversation():
    from actors.reward import FunctionScorer

    chat = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
            {"role": "user", "content": "Q?"}]
    scores = FunctionScorer(f"{__name__}:messages_reward")([chat, "plain"], ["a", "b"])
    assert scores.reward.tolist() == [4.0, 1.0]
    seen = {}

    def plain_only(prompts, responses, references):
        seen["prompts"] = prompts
        return [0.0] * len(prompts)

    import sys

    sys.modules[__name__].plain_only = plain_only
    FunctionScorer(f"{__name__}:plain_only")([chat], ["a"])
    assert seen["prompts"] == ["Q?"]  # a function without `messages` gets the last user turn, as before


def test_wandb_offline_tracker_follows_the_run_across_a_resume(families, tmp_path, monkeypatch):
    """run.loggers=[tensorboard,wandb] with WANDB_MODE=offline (no network): one W&B run per output
    folder, continued (same id) by a resumed run, holding the metrics the job logged."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    fam, out = families["qwen2"], tmp_path / "sft"
    common = [f"policy.path={fam['model']}", f"data.path={fam['sft']}", f"data.eval_path={fam['sft']}", "sft.batch_size=8",
              "policy.micro_batch_size=8", "policy.warmup_steps=0", "policy.max_new_tokens=4", "run.loggers=[tensorboard,wandb]",
              "run.wandb_project=families"]
    _run("sft", out, *common, "run.save_every=1")
    run_id = (out / "wandb_id").read_text()
    cfg = load_config("sft", None, ["run.mode=local", "run.steps=3", "run.resume=auto", f"run.output_dir={out}", *common])
    from orchestrator.registry import run

    run("sft", cfg)
    assert (out / "wandb_id").read_text() == run_id
    runs = sorted((out / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 2  # the first run and its resumption, one W&B run id
    logged = b"".join(p.read_bytes() for run in runs for p in run.glob("*.wandb"))
    assert b"sft/loss" in logged and b"eval/loss" in logged
    assert (out / "tensorboard").is_dir()
    with pytest.raises(ConfigError, match=r"^config key 'run.loggers': must list tensorboard and/or wandb, got 'mlflow'"):
        load_config("sft", None, ["run.loggers=[mlflow]"])
