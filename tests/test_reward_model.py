"""The Bradley-Terry reward model trainer (`orchestrator.reward_model`): it learns a separable
preference, the head pools the last non-pad token, training-time and PPO-time scoring agree, saved
models reload and score identically, the built-in folder is cached and self-describing.
No network, no Ray; caches go to tmp_path through RLHF_CACHE. About 15 s on 2 busy cores."""

import json
import random

import pytest
import torch

from actors import modeling
from actors.reward import ModelScorer
from actors.reward_head import RewardHead
from orchestrator import builtin, reward_model, task
from orchestrator.reward_model import RMRecipe


@pytest.fixture(autouse=True)
def _no_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models on a shared 2-core machine: 2 threads under contention ran 20x slower than 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return builtin.builtin_tokenizer(cache_dir=str(tmp_path_factory.mktemp("cache")))


def _classifier(tok, seed=0, head_scale=1.0):
    config = modeling.tiny_llama_config(tok, "tiny", num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                                        num_attention_heads=2, num_key_value_heads=2)
    model = modeling.build_sequence_classifier(config, num_labels=1, seed=seed)
    reward_model.scale_score_head(model, head_scale)
    return model.eval()


def _separable_pairs(n, seed):
    """Chosen answers name fruit, rejected ones name tools, in the same random frame; any prompt."""
    rng = random.Random(seed)
    prompts = [r["prompt"] for r in task.prompt_rows("train")]
    rows = []
    for _ in range(n):
        frame = rng.choice(task.OPEN_FRAMES).replace("{a}", "a {}")
        k = frame.count("{}")
        good = frame.format(*rng.sample(task.TOPICS["fruit"], k))
        bad = frame.format(*rng.sample(task.TOPICS["tools"], k))
        rows.append({"prompt": rng.choice(prompts), "chosen": good, "rejected": bad})
    return rows


@pytest.fixture(scope="module")
def trained(tok):
    torch.manual_seed(0)
    model = _classifier(tok, head_scale=0.01)
    assert reward_model.pair_accuracy(model, tok, _separable_pairs(200, seed=2)) < 0.8  # not solved at init
    curve = reward_model.train_bradley_terry(
        model, tok, _separable_pairs(800, seed=1), RMRecipe(steps=150, batch_size=16, lr=3e-3, warmup=10, bf16=False))
    return model, curve


def test_learns_a_separable_preference(tok, trained):
    model, curve = trained
    last = sum(c["loss"] for c in curve[-20:]) / 20
    assert abs(curve[0]["loss"] - 0.693) < 0.01 and last < 0.1, (curve[0], last)  # log 2 at the near-constant initial head
    held_out = _separable_pairs(200, seed=2)
    assert reward_model.pair_accuracy(model, tok, held_out) > 0.8
    assert not model.training


def _texts(tok, prompts, responses):
    from actors.reward import _chat_text

    ids = tok([_chat_text(tok, p, r) for p, r in zip(prompts, responses)], add_special_tokens=False).input_ids
    return ids


def test_head_pools_the_last_non_pad_token_with_right_padding(tok):
    model = _classifier(tok, seed=3)  # full-size head: scores differ visibly between positions
    prompts = ["Tell me about fruit.", "What color is a banana?", "Talk about music."]
    responses = ["I like the apple and the pear.", "Yellow.", "The song is nice. I hope this helps. lol !!"]
    ids = _texts(tok, prompts, responses)
    pad = tok.pad_token_id
    assert model.config.pad_token_id == pad != tok.eos_token_id
    assert all(s[-1] == tok.eos_token_id and pad not in s for s in ids)

    with torch.no_grad():
        alone = torch.stack([reward_model.sequence_rewards(model, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))[0]
                             for s in ids])
        input_ids, mask = reward_model._right_pad(ids, pad)
        batched = reward_model.sequence_rewards(model, input_ids, mask)
        # by hand: the score head on the backbone's hidden state at the last unmasked position (the eos)
        last = mask.sum(1) - 1
        assert (input_ids[torch.arange(3), last] == tok.eos_token_id).all()
        hidden = model.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        by_hand = model.score(hidden[torch.arange(3), last])[:, 0]
        # more padding (a longer neighbour) changes nothing: causal attention never looks right
        wide_ids, wide_mask = reward_model._right_pad(ids + [ids[0] + ids[2]], pad)
        wide = reward_model.sequence_rewards(model, wide_ids, wide_mask)[:3]
    assert alone.std() > 1e-3
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(batched, by_hand, atol=1e-5, rtol=0)
    torch.testing.assert_close(wide, batched, atol=1e-5, rtol=0)


def test_pad_position_garbage_is_refused_because_transformers_pools_by_pad_id(tok):
    """transformers pools the rightmost token != pad_token_id and ignores the attention mask, so
    garbage under mask 0 would be read instead of the eos: sequence_rewards refuses such input."""
    model = _classifier(tok, seed=3)
    ids = _texts(tok, ["Tell me about fruit.", "Talk about music."], ["Yellow.", "The song is nice. I hope this helps."])
    input_ids, mask = reward_model._right_pad(ids, tok.pad_token_id)
    assert (mask == 0).any()
    garbage = input_ids.clone()
    garbage[mask == 0] = tok.convert_tokens_to_ids("<|user|>")
    with torch.no_grad():
        clean = reward_model.sequence_rewards(model, input_ids, mask)
        hf_on_garbage = model(input_ids=garbage, attention_mask=mask).logits[:, 0]
    short = mask.sum(1).argmin()
    assert not torch.allclose(hf_on_garbage[short], clean[short])  # the reason for the guard
    with pytest.raises(ValueError, match="pad ids must sit exactly on the masked positions"):
        reward_model.sequence_rewards(model, garbage, mask)
    left_ids, left_mask = input_ids.flip(1), mask.flip(1)
    with pytest.raises(ValueError, match="right-padded"):
        reward_model.sequence_rewards(model, left_ids, left_mask)


class _Engine:
    """Stand-in for the frozen ZeRO-0 fp32 DeepSpeed engine of ModelScorer: it only forwards."""

    def __init__(self, module):
        self.module = module

    def __call__(self, **kwargs):
        return self.module(**kwargs)


def test_ppo_time_scores_equal_training_forward_and_reload_is_exact(tok, trained, tmp_path):
    model, _ = trained
    folder = tmp_path / "rm"
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    reloaded = modeling.load_sequence_classifier(str(folder), num_labels=1).eval()

    rows = builtin.builtin_rows("preferences", "test")[:10]
    prompts = [r["prompt"] for r in rows] * 2
    responses = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]

    # the PPO reward's own scoring code (kind=model), on the saved folder, loaded as from_config loads it;
    # batches of 3 are cut differently from the training path
    scorer = ModelScorer(_Engine(reloaded), modeling.load_tokenizer(str(folder)), RewardHead.from_config(reloaded.config),
                         batch_size=3)
    ppo_scores = scorer(prompts, responses).reward

    r_chosen, r_rejected = reward_model.pair_rewards(model, tok, rows)  # the training path: encode + collate
    torch.testing.assert_close(torch.cat([r_chosen, r_rejected]), ppo_scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(reward_model.response_rewards(model, tok, prompts, responses), ppo_scores, atol=1e-5, rtol=0)

    # save / reload: identical scores, same batches
    assert torch.equal(reward_model.response_rewards(reloaded, tok, prompts, responses),
                       reward_model.response_rewards(model, tok, prompts, responses))


def test_encode_pairs_matches_the_preference_loader(tok):
    """`load_preferences` (the loader of DPO and of a later `rlhf rm`) yields the same token sequences as
    the PPO-time rendering that `encode_pairs` uses."""
    from orchestrator.config import DataConfig
    from orchestrator.data import load_preferences

    dataset, _ = load_preferences(DataConfig(path="builtin:preferences", split="test", max_rows=40), tok)
    loaded = [dataset[i] for i in range(len(dataset))]
    ours = reward_model.encode_pairs(tok, builtin.builtin_rows("preferences", "test")[:40])
    passthrough = reward_model.encode_pairs(tok, loaded)
    assert len(loaded) == 40
    for mine, theirs, same in zip(ours, loaded, passthrough):
        assert mine["prompt_ids"] + mine["chosen_ids"] == theirs["prompt_ids"] + theirs["chosen_ids"]
        assert mine["prompt_ids"] + mine["rejected_ids"] == theirs["prompt_ids"] + theirs["rejected_ids"]
        assert same["chosen_ids"] == list(theirs["chosen_ids"])


def test_builtin_reward_model_dir_is_cached_and_self_describing(tok, tmp_path, monkeypatch):
    backbone = tmp_path / "policy"
    config = modeling.tiny_llama_config(tok, "tiny", num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                                        num_attention_heads=2, num_key_value_heads=2)
    modeling.build_causal_lm(config, seed=0).save_pretrained(backbone, safe_serialization=True)
    tok.save_pretrained(backbone)
    calls = []
    monkeypatch.setattr("orchestrator.sft.builtin_policy_dir", lambda size, cache_dir=None: calls.append(size) or str(backbone))
    monkeypatch.setattr(builtin, "builtin_rows", lambda name, split, seed=0: task.preference_rows(split, seed, n=64))

    recipe = RMRecipe(steps=3, batch_size=8, warmup=1)
    path = reward_model.builtin_reward_model_dir("tiny", recipe)
    assert path.startswith(str(tmp_path / "cache" / "builtin" / "rm-tiny-"))
    with open(f"{path}/config.json") as f:
        saved = json.load(f)
    info = saved["rlhf_reward"]
    assert info["objective"] == "bradley_terry" and info["trained_on"] == "builtin:preferences"
    assert 0.0 <= info["pair_accuracy"] <= 1.0 and info["recipe"]["steps"] == 3
    model = modeling.load_sequence_classifier(path)
    assert model.config.num_labels == 1 and model.config.rlhf_reward == info
    # the head started at 0.01 x its init (std 2e-4) and took 3 steps of lr 1e-3; unscaled it would be ~0.05
    assert model.score.weight.abs().max() < 0.01

    mtime = (tmp_path / "cache" / "builtin").stat().st_mtime_ns
    assert reward_model.builtin_reward_model_dir("tiny", recipe) == path  # cached: not rebuilt
    assert (tmp_path / "cache" / "builtin").stat().st_mtime_ns == mtime
    assert reward_model.builtin_reward_model_dir("tiny", RMRecipe(steps=4, batch_size=8, warmup=1)) != path
