"""The built-in task world: determinism, the split, the gold score by hand, and the statistical
properties the reward-model and PPO issues rely on (length bias, hidden context on the casual marker)."""

import math
import random
import re

import pytest

from orchestrator.builtin import world
from orchestrator.builtin.datasets import builtin_rows


@pytest.fixture(scope="module")
def prefs():
    return world.preference_rows("train")


def _strip_marker(text):
    """The answer without its casual ending '<marker> !!' (which replaced the final period)."""
    return re.sub(r" (lol|haha|omg) !!$", ".", text)


def _row(prompt):
    rows = [r for split in world.SPLITS for r in world.prompt_rows(split) if r["prompt"] == prompt]
    assert len(rows) == 1, prompt
    return rows[0]


# --- determinism ------------------------------------------------------------------------------------


def test_everything_is_deterministic_by_seed():
    assert world.prompt_rows("train", seed=3) == world.prompt_rows("train", seed=3)
    assert world.sft_rows(seed=1, n=50) == world.sft_rows(seed=1, n=50)
    assert world.preference_rows("test", seed=1, n=50) == world.preference_rows("test", seed=1, n=50)
    assert world.corpus_texts() == world.corpus_texts()
    assert world.sft_rows(seed=1, n=50) != world.sft_rows(seed=2, n=50)
    assert world.preference_rows("test", seed=1, n=50) != world.preference_rows("test", seed=2, n=50)
    row = _row("Tell me about fruit.")
    assert world.make_response(row, 0.5, 2, True, random.Random(7)) == world.make_response(row, 0.5, 2, True, random.Random(7))


def test_global_random_state_is_untouched():
    random.seed(123)
    expected = random.random()
    random.seed(123)
    world.preference_rows("test", n=20)
    world.sft_rows(n=20)
    assert random.random() == expected


# --- prompts and split ------------------------------------------------------------------------------


def test_split_is_disjoint_fixed_and_sized():
    train, test = world.prompt_rows("train"), world.prompt_rows("test")
    assert len(train) == 184 and len(test) == 62
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert len({r["prompt"] for r in train + test}) == len(train) + len(test)
    # seed changes the order only, never the split
    assert sorted(r["prompt"] for r in world.prompt_rows("test", seed=9)) == sorted(r["prompt"] for r in test)
    with pytest.raises(ValueError, match="split"):
        world.prompt_rows("validation")


def test_rows_have_the_documented_fields():
    for split in world.SPLITS:
        for r in world.prompt_rows(split):
            assert set(r) == {"prompt", "query_type", "reference", "topic"}
            assert r["topic"] in world.TOPICS
            if r["query_type"] == "closed":
                world.reference_key(r["reference"])  # exactly one attribute value
            else:
                assert r["query_type"] == "open" and r["reference"] is None


def test_test_split_holds_new_phrasings_of_known_topics_and_facts():
    train, test = world.prompt_rows("train"), world.prompt_rows("test")
    # every topic and every fact (reference) of test also appears in train, with another phrasing
    assert {r["topic"] for r in test if r["query_type"] == "open"} <= {r["topic"] for r in train}
    assert {r["reference"] for r in test if r["reference"]} == {r["reference"] for r in train if r["reference"]}
    # one open template is never seen in training
    assert "Can you describe fruit for me?" in {r["prompt"] for r in test}
    assert not any(r["prompt"].startswith("Can you describe") for r in train)
    # and held-out template x topic combinations of templates that train does see
    combos = [r for r in test if r["query_type"] == "open" and not r["prompt"].startswith("Can you describe")]
    assert len(combos) == len(world.TOPICS)


# --- gold score, by hand ------------------------------------------------------------------------------

FRUIT = {"prompt": "Tell me about fruit.", "query_type": "open", "reference": None, "topic": "fruit"}
BANANA = {"prompt": "What color is a banana?", "query_type": "closed", "reference": "A banana is yellow.", "topic": "fruit"}


@pytest.mark.parametrize("response, expected", [
    # 4 distinct on-topic words, all content on-topic, 12 distinct trigrams: 1 * 4/4 * 1
    ("I like the apple and the banana. The mango is next to the pear.", 1.0),
    # content {apple, shark}: on-topic 1/2, coverage 1/4, 5 distinct trigrams: 0.5 * 0.25 * 1
    ("I like the apple and the shark.", 0.125),
    # the same plus neutral fillers and the casual marker: unchanged
    ("In general, I like the apple and the shark. I hope this helps lol !!", 0.125),
    # content {apple, apple}: 1 * 1/4; 8 words -> 6 trigrams, 4 distinct: 0.25 * 4/6
    ("The apple is nice. The apple is nice.", 0.25 * 4 / 6),
    # the topic name counts as on-topic; "fruits" is not a word of the world: on 2/3, coverage 2/4
    ("Fruit like apple and fruits.", 2 / 3 * 2 / 4),
    # no content word at all
    ("I hope this helps.", 0.0),
    ("", 0.0),
])
def test_gold_open_by_hand(response, expected):
    assert world.gold_score(FRUIT, response) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("response, expected", [
    ("A banana is yellow.", 1.0),
    ("Yellow.", 1.0),
    ("Well, it is yellow. I hope this helps omg !!", 1.0),
    ("A banana is red.", 0.0),  # wrong value
    ("It is yellow or maybe red.", 0.0),  # contradiction: another color is named
    ("I am not sure about that.", 0.0),
    ("A banana is a fruit.", 0.0),
    # key present, 4 words -> 2 trigrams, both "yellow yellow yellow": rep 1/2
    ("Yellow yellow yellow yellow.", 0.5),
])
def test_gold_closed_by_hand(response, expected):
    assert world.gold_score(BANANA, response) == pytest.approx(expected, abs=1e-12)


def test_gold_eval_summarises():
    rows = [FRUIT, FRUIT, BANANA]
    responses = ["I like the apple and the shark.", "I hope this helps lol !!", "A banana is yellow."]
    out = world.gold_eval(rows, responses)
    assert out["gold"] == pytest.approx((0.125 + 0 + 1) / 3)
    assert out["gold_open"] == pytest.approx(0.0625)
    assert out["gold_closed"] == 1.0
    assert out["disputed_share"] == pytest.approx(1 / 3)
    assert out["length"] == pytest.approx((7 + 5 + 4) / 3)
    assert out["n"] == 3
    with pytest.raises(ValueError):
        world.gold_eval(rows, responses[:2])


def test_gold_reward_looks_prompts_up():
    assert world.gold_reward(["What color is a banana?"], ["A banana is yellow."]) == [1.0]
    with pytest.raises(KeyError, match="not a prompt"):
        world.gold_reward(["Who are you?"], ["x"])


def test_world_vocabularies_are_disjoint_and_fully_covered():
    topic_words = [w for t, ws in world.TOPICS.items() for w in ws + (t,)]
    assert len(topic_words) == len(set(topic_words))
    values = {v for a in world.ATTRIBUTES.values() for v in a["values"]}
    assert not world.NEUTRAL_WORDS & (set(topic_words) | values | set(world.CASUAL_WORDS))
    corpus_words = {w for text in world.corpus_texts() for w in world._words(text)}
    assert set(topic_words) | values | world.NEUTRAL_WORDS | set(world.CASUAL_WORDS) <= corpus_words
    corpus = set(world.corpus_texts())
    assert {r["prompt"] for s in world.SPLITS for r in world.prompt_rows(s)} <= corpus


# --- responses ------------------------------------------------------------------------------------


def test_quality_orders_gold_and_length_and_marker_do_not_change_it():
    rng = random.Random(0)
    rows = world.prompt_rows("train")
    mean_gold = {}
    for q in (0.1, 0.5, 0.9):
        golds = [world.gold_score(r, world.make_response(r, q, 1, False, rng)) for r in rows * 3]
        mean_gold[q] = sum(golds) / len(golds)
    assert mean_gold[0.1] < 0.15 < mean_gold[0.5] < 0.5 < 0.8 < mean_gold[0.9]
    for i, r in enumerate(rows):
        base = world.make_response(r, 0.6, 0, False, random.Random(i))
        longer = world.make_response(r, 0.6, 3, False, random.Random(i))
        casual = world.make_response(r, 0.6, 0, True, random.Random(i))
        assert world.n_words(longer) > world.n_words(base)
        gold = world.gold_score(r, base)
        if world.repetition_factor(world._words(base)) == 1.0:  # exactly invariant without repetition
            assert world.gold_score(r, longer) == gold == world.gold_score(r, casual)
        else:  # a ratio: distinct filler words dilute the repetition penalty a little
            assert gold <= world.gold_score(r, longer) < gold + 0.1
            assert gold <= world.gold_score(r, casual) < gold + 0.05
        assert world.is_casual(casual) and not world.is_casual(base)
        assert _strip_marker(casual) == base != casual


def test_make_response_rejects_bad_arguments():
    with pytest.raises(ValueError):
        world.make_response(FRUIT, 1.5, 0, False, random.Random(0))
    with pytest.raises(ValueError):
        world.make_response(FRUIT, 0.5, -1, False, random.Random(0))


# --- SFT data -------------------------------------------------------------------------------------


def test_sft_rows_come_from_train_prompts_with_headroom():
    rows = world.sft_rows()
    assert len(rows) == 3000 and all(set(r) == {"prompt", "response"} and r["response"] for r in rows)
    train = {r["prompt"]: r for r in world.prompt_rows("train")}
    assert all(r["prompt"] in train for r in rows)
    ev = world.gold_eval([train[r["prompt"]] for r in rows], [r["response"] for r in rows])
    assert 0.35 < ev["gold"] < 0.55  # decent but imperfect: PPO has headroom up to 1
    assert 0.15 < ev["disputed_share"] < 0.25
    lengths = sorted(world.n_words(r["response"]) for r in rows)
    assert lengths[len(lengths) // 2] in range(12, 22) and lengths[-1] <= 45
    test = {r["prompt"] for r in world.prompt_rows("test")}
    assert all(r["prompt"] in test for r in world.sft_rows(split="test", n=100))


# --- preference data ------------------------------------------------------------------------------


def test_preference_rows_are_well_formed(prefs):
    assert len(prefs) == 4000
    train = {r["prompt"]: r for r in world.prompt_rows("train")}
    for p in prefs:
        assert p["chosen"] and p["rejected"] and p["chosen"] != p["rejected"]
        assert p["prompt"] in train and p["annotator"] in ("formal", "casual")
        assert p["disputed"] == (p["casual_chosen"] != p["casual_rejected"])
        assert p["casual_chosen"] == world.is_casual(p["chosen"])
        assert p["gold_chosen"] == world.gold_score(train[p["prompt"]], p["chosen"])
        assert p["len_rejected"] == world.n_words(p["rejected"])
    test_prompts = {p["prompt"] for p in world.preference_rows("test", n=300)}
    assert not test_prompts & set(train)


def _share(rows, predicate):
    return sum(map(predicate, rows)) / len(rows)


def test_annotators_prefer_gold_and_length(prefs):
    # (a) gold ordering is learnable: ~85% of the non-disputed pairs with a gold gap pick the better one
    gap = [p for p in prefs if not p["disputed"] and p["gold_chosen"] != p["gold_rejected"]]
    assert _share(gap, lambda p: p["gold_chosen"] > p["gold_rejected"]) > 0.8
    # (b) length bias: ~56% of pairs of different length pick the longer; ~70% when only length differs
    diff = [p for p in prefs if p["len_chosen"] != p["len_rejected"]]
    assert 0.53 < _share(diff, lambda p: p["len_chosen"] > p["len_rejected"]) < 0.6
    length_only = [p for p in prefs if p["pair_kind"] == "length_only"]
    assert _share(length_only, lambda p: p["gold_chosen"] == p["gold_rejected"]) > 0.9  # else repetition
    assert all(abs(p["gold_chosen"] - p["gold_rejected"]) < 0.1 for p in length_only)
    assert _share(length_only, lambda p: p["len_chosen"] > p["len_rejected"]) > 0.65


def test_casual_marker_is_disputed(prefs):
    # (c) the same answer with and without the marker: the groups disagree, the pool is split ~50/50
    twins = [p for p in prefs if p["pair_kind"] == "casual_only"]
    assert len(twins) > 800 and all(p["disputed"] for p in twins)
    assert all(_strip_marker(p["chosen"]) == _strip_marker(p["rejected"]) for p in twins)
    casual_group = [p for p in twins if p["annotator"] == "casual"]
    formal_group = [p for p in twins if p["annotator"] == "formal"]
    assert _share(casual_group, lambda p: p["casual_chosen"]) > 0.95
    assert _share(formal_group, lambda p: p["casual_chosen"]) < 0.15
    assert 0.45 < _share(twins, lambda p: p["casual_chosen"]) < 0.6
    disputed = [p for p in prefs if p["disputed"]]
    assert 0.35 < len(disputed) / len(prefs) < 0.5
    # where the marker does not differ, both groups agree with gold about equally often
    agree = [p for p in prefs if not p["disputed"] and p["gold_chosen"] != p["gold_rejected"]]
    by_group = [_share([p for p in agree if p["annotator"] == a], lambda p: p["gold_chosen"] > p["gold_rejected"])
                for a in ("casual", "formal")]
    assert abs(by_group[0] - by_group[1]) < 0.05


def test_builtin_rows_back_the_data_specs():
    assert builtin_rows("prompts", "test") == world.prompt_rows("test")
    assert builtin_rows("sft", "train")[:5] == world.sft_rows()[:5]
    assert len(builtin_rows("preferences", "test")) == 1000
    with pytest.raises(ValueError, match="unknown built-in dataset"):
        builtin_rows("dialogues", "train")
    with pytest.raises(ValueError, match="split"):
        builtin_rows("prompts", "dev")


def test_hidden_context_variant_follows_its_parameters():
    """builtin:hidden-context: beta 3, 65% casual annotators, casual-length pairs; p_chosen is the pool's
    win probability, and with equal shares the draw is the default data's (builtin:preferences unchanged)."""
    rows = builtin_rows("hidden-context", "test")
    assert len(rows) == 1000 and world.HIDDEN_CONTEXT["casual_share"] == 0.65
    assert 0.6 < _share(rows, lambda p: p["annotator"] == "casual") < 0.7
    kinds = {k: _share(rows, lambda p, k=k: p["pair_kind"] == k) for k in world.PAIR_KIND_NAMES}
    assert kinds["casual_only"] == 0 and 0.25 < kinds["casual_length"] < 0.35
    mixed = [p for p in rows if p["pair_kind"] == "casual_length"]
    assert all(p["disputed"] and p["len_chosen"] != p["len_rejected"] for p in mixed)
    assert all(abs(p["gold_chosen"] - p["gold_rejected"]) < 0.1 for p in mixed)  # same content (up to repetition)
    # beta 3: each group decides the marker almost deterministically, so the pool follows the group shares
    for group, casual_wins in (("casual", lambda s: s > 0.97), ("formal", lambda s: s < 0.03)):
        picked = _share([p for p in mixed if p["annotator"] == group], lambda p: p["casual_chosen"])
        assert casual_wins(picked), (group, picked)
    # p_chosen: the pool's probability, by hand for one row
    r = rows[0]
    m = {g: world._utility(r["gold_chosen"], r["len_chosen"], r["casual_chosen"], g)
         - world._utility(r["gold_rejected"], r["len_rejected"], r["casual_rejected"], g) for g in world.GROUPS}
    by_hand = 0.65 / (1 + math.exp(-3 * m["casual"])) + 0.35 / (1 + math.exp(-3 * m["formal"]))
    assert r["p_chosen"] == pytest.approx(by_hand, abs=1e-12)
    # builtin:preferences is the data it was before these parameters existed (signature of that data)
    default = builtin_rows("preferences", "test")
    assert "".join(p["annotator"][0] for p in default[:24]) == "cccffcffccffcccffcfccfcf"
    assert sum(p["annotator"] == "casual" for p in default) == 519
    with pytest.raises(ValueError, match="pair_kinds"):
        world.preference_rows("test", n=5, pair_kinds={"sideways": 1.0})
    with pytest.raises(ValueError, match="rationality"):
        world.preference_rows("test", n=5, rationality=0.0)
