"""The scoring contract of reward models (`actors.scoring`): the head pools the last non-pad token of
right-padded sequences (whatever the pad id), transformers' own pooling is available for hub models, training-time scoring (`RewardModelActor`,
`pair_outputs`) equals PPO-time scoring (`ModelScorer`) on the same model, and a saved model reloads
and scores identically. Also the evaluation helpers `rm_eval.annotator_blind_ceiling` and
`losses.common.spearman`. No network, no Ray; caches go to tmp_path through RLHF_CACHE."""

import copy
import math
import random

import pytest
import torch

from actors import modeling
from actors.reward import ModelScorer
from ppo_helpers import chat_text
from actors.reward_trainer import scale_score_head
from actors.scoring import right_pad, sequence_outputs
from orchestrator.builtin import models as builtin, world


@pytest.fixture(autouse=True)
def _no_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_CACHE", str(tmp_path / "cache"))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return builtin.builtin_tokenizer(cache_dir=str(tmp_path_factory.mktemp("cache")))


def _classifier(tok, seed=0, head_scale=1.0):
    config = modeling.tiny_llama_config(tok, "tiny", num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                                        num_attention_heads=2, num_key_value_heads=2)
    model = modeling.build_sequence_classifier(config, num_labels=1, seed=seed)
    scale_score_head(model, head_scale)
    return model.eval()


def _separable_pairs(n, seed):
    """Chosen answers name fruit, rejected ones name tools, in the same random frame; any prompt."""
    rng = random.Random(seed)
    prompts = [r["prompt"] for r in world.prompt_rows("train")]
    rows = []
    for _ in range(n):
        frame = rng.choice(world.OPEN_FRAMES).replace("{a}", "a {}")
        k = frame.count("{}")
        good = frame.format(*rng.sample(world.TOPICS["fruit"], k))
        bad = frame.format(*rng.sample(world.TOPICS["tools"], k))
        rows.append({"prompt": rng.choice(prompts), "chosen": good, "rejected": bad})
    return rows


def _texts(tok, prompts, responses):
    return tok([chat_text(tok, p, r) for p, r in zip(prompts, responses)], add_special_tokens=False).input_ids


def _rewards(model, input_ids, mask):
    return sequence_outputs(model, input_ids, mask)[:, 0]


def test_head_pools_the_last_token_with_right_padding(tok):
    model = _classifier(tok, seed=3)  # full-size head: scores differ visibly between positions
    prompts = ["Tell me about fruit.", "What color is a banana?", "Talk about music."]
    responses = ["I like the apple and the pear.", "Yellow.", "The song is nice. I hope this helps. lol !!"]
    ids = _texts(tok, prompts, responses)
    pad = tok.pad_token_id
    assert model.config.pad_token_id == pad != tok.eos_token_id
    assert all(s[-1] == tok.eos_token_id and pad not in s for s in ids)

    with torch.no_grad():
        alone = torch.stack([_rewards(model, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))[0] for s in ids])
        input_ids, mask = right_pad(ids, pad)
        batched = _rewards(model, input_ids, mask)
        # by hand: the score head on the backbone's hidden state at the last unmasked position (the eos)
        last = mask.sum(1) - 1
        assert (input_ids[torch.arange(3), last] == tok.eos_token_id).all()
        hidden = model.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        by_hand = model.score(hidden[torch.arange(3), last])[:, 0]
        # more padding (a longer neighbour) changes nothing: causal attention never looks right
        wide_ids, wide_mask = right_pad(ids + [ids[0] + ids[2]], pad)
        wide = _rewards(model, wide_ids, wide_mask)[:3]
    assert alone.std() > 1e-3
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(batched, by_hand, atol=1e-5, rtol=0)
    torch.testing.assert_close(wide, batched, atol=1e-5, rtol=0)


def test_last_token_pooling_ignores_the_pad_id_and_model_pooling_is_transformers(tok):
    """last_token reads the head at the last token by the attention mask: garbage in the padding, or a
    pad id equal to the eos id (a tokenizer without a pad token), changes nothing. "model" pooling is
    transformers' own (rightmost token != pad_token_id), which garbage in the padding does move."""
    model = _classifier(tok, seed=3)
    ids = _texts(tok, ["Tell me about fruit.", "Talk about music."], ["Yellow.", "The song is nice. I hope this helps."])
    input_ids, mask = right_pad(ids, tok.pad_token_id)
    assert (mask == 0).any()
    garbage = input_ids.clone()
    garbage[mask == 0] = tok.convert_tokens_to_ids("<|user|>")
    eos_padded, _ = right_pad(ids, tok.eos_token_id)
    with torch.no_grad():
        clean = _rewards(model, input_ids, mask)
        torch.testing.assert_close(_rewards(model, garbage, mask), clean, atol=1e-6, rtol=0)
        torch.testing.assert_close(_rewards(model, eos_padded, mask), clean, atol=1e-6, rtol=0)
        own = sequence_outputs(model, input_ids, mask, pooling="model")[:, 0]
        torch.testing.assert_close(own, model(input_ids=input_ids, attention_mask=mask).logits[:, 0], atol=0, rtol=0)
        torch.testing.assert_close(own, clean, atol=1e-5, rtol=0)  # pad != eos: both read the eos
        moved = sequence_outputs(model, garbage, mask, pooling="model")[:, 0]
    short = mask.sum(1).argmin()
    assert not torch.allclose(moved[short], clean[short])  # why rlhf rm trains with last_token
    with pytest.raises(ValueError, match="right-padded"):
        _rewards(model, input_ids.flip(1), mask.flip(1))
    with pytest.raises(ValueError, match="pooling must be one of"):
        sequence_outputs(model, input_ids, mask, pooling="mean")


def test_training_time_scores_equal_ppo_time_scores_and_reload_is_exact(tmp_path):
    """One model scored three ways: the training role (`RewardModelActor.outputs` on `load_preferences`
    rows, its DeepSpeed engine), `rlhf rm eval` (`pair_outputs` on the exported folder) and the PPO reward
    (`ModelScorer.from_config` on that folder, its frozen engine, other batches): the same outputs."""
    import cluster
    from actors.reward_head import RewardHead
    from actors.pairs import collate_pairs
    from actors.reward_trainer import RewardModelActor, pair_outputs
    from orchestrator.config import DataConfig, RewardConfig, load
    from orchestrator.registry import load_config
    from orchestrator.data import load_preferences
    from orchestrator.jobs.rm_eval import ceiling_report
    from ppo_helpers import tiny_model_dir

    cluster.init_local()
    backbone = tiny_model_dir(str(tmp_path / "cache"))
    tokenizer = modeling.load_tokenizer(backbone)
    dataset, _ = load_preferences(DataConfig(path="builtin:preferences", split="test", max_rows=10), tokenizer)
    rows = dataset.to_list()
    # the training rendering (prompt with the generation prompt, then the response and eos) is the PPO one
    prompts = [r["prompt"] for r in rows] * 2
    responses = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    assert [list(r["prompt_ids"]) + list(r[k]) for k in ("chosen_ids", "rejected_ids") for r in rows] == \
        _texts(tokenizer, prompts, responses)
    assert 0.0 <= ceiling_report(rows)["annotator_blind_ceiling"] <= 1.0  # the built-in columns survive the loader

    cfg = load_config("rm", None, [f"model.path={backbone}", "model.objective=mean_variance",
                                       "model.head_init_scale=1.0", "model.micro_batch_size=4", "model.warmup_steps=0"]).model
    actor = RewardModelActor(cfg, model_path=backbone, seed=0, total_steps=1, minibatch_size=4)
    pairs = collate_pairs(rows, tokenizer.pad_token_id)
    trained = actor.outputs(pairs)
    training = torch.cat([trained.chosen, trained.rejected])  # (20, 2)
    assert training[:, 0].std() > 1e-3

    folder = tmp_path / "rm"
    actor.export(str(folder), RewardHead("mean_variance").to_dict())
    reloaded = modeling.load_sequence_classifier(str(folder), num_labels=2).eval()
    evaluated = pair_outputs(reloaded, collate_pairs(rows, tokenizer.pad_token_id), tokenizer.pad_token_id, "last_token", 7)
    scorer = ModelScorer.from_config(load(RewardConfig, None, ["kind=model", f"path={folder}", "batch_size=3"]))
    ppo = scorer.outputs(prompts, responses)

    torch.testing.assert_close(ppo, training, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat([evaluated.chosen, evaluated.rejected]), training, atol=1e-5, rtol=0)
    assert torch.equal(scorer.outputs(prompts, responses), ppo)  # deterministic, batches of 3 again


def test_annotator_blind_ceiling_by_hand():
    """u = 5 gold + words / 10 + s casual with s = +4 (casual group) or -2.5 (formal group); p_chosen is
    the pool's win probability of chosen, and the ceiling counts p_chosen > 0.5 as right."""
    from orchestrator.jobs.rm_eval import annotator_blind_ceiling, ceiling_report

    assert (world.QUALITY_WEIGHT, world.LENGTH_WEIGHT, world.CASUAL_GROUP_WEIGHT, world.FORMAL_GROUP_WEIGHT) == (5.0, 1.0, 4.0, -2.5)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    p = world.pooled_win_probability
    # both groups: m = 5 x 0.4 = +2
    assert p((0.8, 10, False), (0.4, 10, False)) == pytest.approx(sig(2.0), abs=1e-12)
    # m_casual = +4, m_formal = -2.5: half the pool each at beta 1; 0.65 casual at beta 3
    assert p((0.5, 10, True), (0.5, 10, False)) == pytest.approx(0.5 * sig(4) + 0.5 * sig(-2.5), abs=1e-12)
    assert p((0.5, 10, True), (0.5, 10, False), 3.0, 0.65) == pytest.approx(0.65 * sig(12) + 0.35 * sig(-7.5), abs=1e-12)
    assert p((0.5, 12, False), (0.5, 12, False)) == 0.5
    rows = [{"p_chosen": 0.88}, {"p_chosen": 0.53}, {"p_chosen": 0.47}, {"p_chosen": 0.5}]
    assert annotator_blind_ceiling(rows) == pytest.approx((1 + 1 + 0 + 0.5) / 4)
    assert ceiling_report(rows) == {"annotator_blind_ceiling": 0.625}
    assert ceiling_report([{"prompt": "x"}]) == {}
    built = world.preference_rows("test", n=200, rationality=3.0, casual_share=0.65)
    assert all(r["p_chosen"] == p((r["gold_chosen"], r["len_chosen"], r["casual_chosen"]),
                                  (r["gold_rejected"], r["len_rejected"], r["casual_rejected"]), 3.0, 0.65) for r in built)


def test_spearman_with_ties_by_hand():
    from losses.common import spearman

    x = torch.tensor([1.0, 2.0, 2.0, 3.0])  # ranks 0, 1.5, 1.5, 3 (the tie shares ranks 1 and 2)
    y = torch.tensor([10.0, 30.0, 20.0, 40.0])  # ranks 0, 2, 1, 3
    # centred ranks (-1.5, 0, 0, 1.5) and (-1.5, 0.5, -0.5, 1.5): 4.5 / sqrt(4.5 x 5) = sqrt(0.9)
    assert float(spearman(x, y)) == pytest.approx(math.sqrt(0.9), abs=1e-12)
    assert float(spearman(x.exp(), y)) == pytest.approx(math.sqrt(0.9), abs=1e-12)  # ranks only
    assert float(spearman(y, -y)) == pytest.approx(-1.0, abs=1e-12)
    with pytest.raises(ValueError, match="1-D tensors of one shape"):
        spearman(x, y[:3])


def test_foreign_model_whose_pad_is_its_eos_is_scored_as_transformers_pools_it(tok, tmp_path):
    """A Hub reward model often has pad = eos, so the pad id ends every text. ModelScorer then leaves the
    pooling to transformers (the last token before the trailing eos, as transformers-based trainers
    trained it): batched scores equal each text scored alone, unpadded."""
    from orchestrator.config import RewardConfig, load

    model = _classifier(tok, seed=5)
    model.config.pad_token_id = tok.eos_token_id
    folder = tmp_path / "foreign"
    model.save_pretrained(folder)
    foreign_tok = copy.deepcopy(tok)
    foreign_tok.pad_token = foreign_tok.eos_token
    foreign_tok.save_pretrained(folder)
    prompts = ["Tell me about fruit.", "What color is a banana?", "Talk about music."]
    responses = ["I like the apple and the pear.", "Yellow.", "The song is nice. I hope this helps. lol !!"]
    scorer = ModelScorer.from_config(load(RewardConfig, None, ["kind=model", f"path={folder}", "batch_size=3"]))
    with torch.no_grad():
        alone = torch.cat([model(input_ids=torch.tensor([s])).logits for s in _texts(tok, prompts, responses)])
    assert alone.std() > 1e-3
    torch.testing.assert_close(scorer.outputs(prompts, responses), alone, atol=1e-5, rtol=0)
