"""R^3 shaping: wordpunct tokenisation, length incentive, repetition penalty and their combination."""

import pytest
import torch

from losses.relevance import length_incentive, r3_reward, repetition_penalty, wordpunct_tokenize


def test_wordpunct_tokenize_matches_nltk_regex():
    # \w+ runs and [^\w\s]+ runs: the apostrophe and "!!" are their own tokens.
    assert wordpunct_tokenize("Don't stop!! Now.") == ["Don", "'", "t", "stop", "!!", "Now", "."]
    assert wordpunct_tokenize("  ") == []
    assert wordpunct_tokenize("naïve café, 3.5%") == ["naïve", "café", ",", "3", ".", "5", "%"]


def test_length_incentive_is_words_over_100():
    li = length_incentive(["one two three", "", "a, b."])
    # 3 words, 0 words, and "a , b ." = 4 words.
    torch.testing.assert_close(li, torch.tensor([0.03, 0.0, 0.04]))
    assert li.dtype == torch.float32


def test_repetition_penalty_hand_values():
    texts = [
        "a b c d",  # trigrams (a b c), (b c d): 2 unique of 2 -> 1
        "a b a b a b",  # (a b a), (b a b), (a b a), (b a b): 2 unique of 4 -> 0.5
        "hi there",  # no trigram -> 1.0
        "",  # no trigram -> 1.0
        "x x x x x",  # (x x x) three times: 1 of 3
    ]
    torch.testing.assert_close(repetition_penalty(texts), torch.tensor([1.0, 0.5, 1.0, 1.0, 1 / 3]))


def test_r3_reward_open_and_closed():
    texts = ["a b c d", "a b a b a b", "a b a b a b"]
    relevance = torch.tensor([2.0, 3.0, 100.0])
    closed = torch.tensor([False, False, True])
    reference = torch.tensor([9.0, 9.0, 1.75])
    reward = r3_reward(relevance, texts, closed, reference_relevance=reference, max_new_tokens=400)
    # Open: relevance * LI * RP = 2 * 0.04 * 1 = 0.08 and 3 * 0.06 * 0.5 = 0.09.
    # Closed: F(1.75) * RP = (1.75 / 3.5 * 400 / 100) * 0.5 = 2 * 0.5 = 1.0 (relevance unused).
    torch.testing.assert_close(reward, torch.tensor([0.08, 0.09, 1.0]))


def test_r3_ablations_drop_one_factor_each():
    """The relevance-hacking ablations: without LI the open reward is relevance * RP, without RP it is
    relevance * LI, without both the bare relevance; a closed row keeps F but loses RP when RP is off."""
    texts = ["a b a b a b", "a b a b a b"]  # 6 words: LI 0.06; trigrams aba, bab, aba, bab: RP 0.5
    relevance, closed, reference = torch.tensor([3.0, 100.0]), torch.tensor([False, True]), torch.tensor([9.0, 1.75])

    def r3(**flags):
        return r3_reward(relevance, texts, closed, reference_relevance=reference, max_new_tokens=400, **flags)

    torch.testing.assert_close(r3(use_length_incentive=False), torch.tensor([3.0 * 0.5, 2.0 * 0.5]))
    torch.testing.assert_close(r3(use_repetition_penalty=False), torch.tensor([3.0 * 0.06, 2.0]))
    torch.testing.assert_close(r3(use_length_incentive=False, use_repetition_penalty=False), torch.tensor([3.0, 2.0]))


def test_r3_reference_relevance_is_clipped_to_range():
    texts = ["a b c", "a b c", "a b c"]
    reward = r3_reward(torch.zeros(3), texts, [True, True, True], torch.tensor([-1.0, 3.5, 7.0]), max_new_tokens=200)
    # F clips its input to [0, 3.5]: F(-1) = 0, F(3.5) = F(7) = 200 / 100 = 2.
    torch.testing.assert_close(reward, torch.tensor([0.0, 2.0, 2.0]))


def test_r3_needs_reference_for_closed_prompts_and_checks_shapes():
    with pytest.raises(ValueError, match="reference_relevance"):
        r3_reward(torch.ones(1), ["a"], [True])
    with pytest.raises(ValueError):
        r3_reward(torch.ones(2), ["a"], [False, False])
    # Open-only batches need no reference.
    torch.testing.assert_close(r3_reward(torch.ones(1), ["a b"], [False]), torch.tensor([0.02]))


def test_wordpunct_tokenize_agrees_with_nltk_when_installed():
    nltk_tokenize = pytest.importorskip("nltk.tokenize").wordpunct_tokenize
    for text in ["Don't stop!! Now.", "e-mail: a@b.com -- ok?", "naïve café, 3.5%", "tabs\tand\nnewlines"]:
        assert wordpunct_tokenize(text) == nltk_tokenize(text)
