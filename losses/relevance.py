"""R^3 reward shaping: relevance x length incentive x repetition penalty.

Source: arXiv 2402.03469 (the R^3 reward, "relevance, length incentive, repetition penalty"), which
builds a reward without preference data from an embedding model's query-response relevance, and
uses a reference answer's relevance for closed questions.

Words follow nltk's ``wordpunct_tokenize``: the regex ``\\w+|[^\\w\\s]+`` (runs of word characters, or
runs of punctuation; Python's ``re`` is Unicode-aware for ``str``). Words keep their case.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import Tensor

__all__ = [
    "wordpunct_tokenize",
    "length_incentive",
    "repetition_penalty",
    "r3_reward",
    "REFERENCE_RELEVANCE_MAX",
]

_WORDPUNCT = re.compile(r"\w+|[^\w\s]+")

# Upper end of the reference-relevance range that F maps linearly onto [0, max_new_tokens / 100].
REFERENCE_RELEVANCE_MAX = 3.5


def wordpunct_tokenize(text: str) -> list[str]:
    """Split ``text`` like nltk's ``wordpunct_tokenize``: ``re.findall(r"\\w+|[^\\w\\s]+", text)``.

    Example: ``"Don't stop!!"`` -> ``["Don", "'", "t", "stop", "!!"]``.
    """
    return _WORDPUNCT.findall(text)


def length_incentive(texts: Sequence[str]) -> Tensor:
    """Length incentive of each text: ``LI = number of words / 100``.

    Source: arXiv 2402.03469 (R^3's length incentive). Words per ``wordpunct_tokenize``.

    Args:
        texts: B response strings.

    Returns:
        ``(B,)`` float32.
    """
    return torch.tensor([len(wordpunct_tokenize(t)) / 100.0 for t in texts], dtype=torch.float32)


def _repetition(text: str) -> float:
    words = wordpunct_tokenize(text)
    trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    if not trigrams:
        return 1.0
    return len(set(trigrams)) / len(trigrams)


def repetition_penalty(texts: Sequence[str]) -> Tensor:
    """Repetition penalty of each text: ``RP = unique word trigrams / word trigrams``.

    Source: arXiv 2402.03469 (R^3's repetition penalty). A text of n words has n - 2 trigrams
    (consecutive word triples); RP is 1.0 when there is no trigram (fewer than 3 words), and tends
    to 0 as a text repeats itself. Words per ``wordpunct_tokenize``, case-sensitive.

    Args:
        texts: B response strings.

    Returns:
        ``(B,)`` float32 in (0, 1].
    """
    return torch.tensor([_repetition(t) for t in texts], dtype=torch.float32)


def r3_reward(
    relevance: Tensor,
    texts: Sequence[str],
    closed: Tensor | Sequence[bool],
    reference_relevance: Tensor | None = None,
    max_new_tokens: int = 512,
    *,
    use_length_incentive: bool = True,
    use_repetition_penalty: bool = True,
) -> Tensor:
    """The R^3 reward of each response.

    Source: arXiv 2402.03469 (R^3). With ``LI = length_incentive``, ``RP = repetition_penalty``:

        open-ended prompt:   reward = relevance * LI * RP
        closed prompt:       reward = F(reference_relevance) * RP
        F(x) = clip(x, 0, 3.5) / 3.5 * max_new_tokens / 100

    F maps the reference relevance range [0, 3.5] linearly onto [0, max_new_tokens / 100], the top of
    which is the LI of a response that fills its ``max_new_tokens`` budget at one word per token, so
    closed answers are scored on the scale of open ones without being paid for length.

    Clamping: the input of F is clipped to [0, 3.5] (scores outside the range saturate at 0 or
    ``max_new_tokens / 100``).

    Args:
        relevance: ``(B,)`` relevance of each response to its prompt (unused for closed prompts).
        texts: B response strings.
        closed: ``(B,)`` True where the prompt is closed (has a reference answer).
        reference_relevance: ``(B,)`` relevance of each response to its reference answer; required
            when any prompt is closed (unused for open prompts).
        max_new_tokens: the generation length limit; sets the top of F's range.
        use_length_incentive, use_repetition_penalty: False drops that factor (LI or RP is then 1):
            the ablations of `rlhf experiment relevance-hacking`; the paper's reward keeps both.

    Returns:
        ``(B,)`` rewards, float32 (or the dtype of ``relevance`` if wider), on ``relevance``'s device.
    """
    dtype = torch.promote_types(relevance.dtype, torch.float32)
    device = relevance.device
    relevance = relevance.to(dtype)
    closed_t = torch.as_tensor(closed, dtype=torch.bool, device=device)
    if closed_t.shape != relevance.shape or len(texts) != relevance.shape[0]:
        raise ValueError(
            f"r3_reward needs relevance (B,), B texts and closed (B,); got {tuple(relevance.shape)}, "
            f"{len(texts)} texts, {tuple(closed_t.shape)}"
        )
    ones = torch.ones(len(texts), dtype=dtype, device=device)
    rp = repetition_penalty(texts).to(device=device, dtype=dtype) if use_repetition_penalty else ones  # (B,)
    li = length_incentive(texts).to(device=device, dtype=dtype) if use_length_incentive else ones  # (B,)
    open_reward = relevance * li * rp  # (B,)
    if not bool(closed_t.any()):
        return open_reward
    if reference_relevance is None:
        raise ValueError("r3_reward: closed prompts need reference_relevance")
    ref = reference_relevance.to(device=device, dtype=dtype)
    mapped = ref.clamp(0.0, REFERENCE_RELEVANCE_MAX) / REFERENCE_RELEVANCE_MAX * (max_new_tokens / 100.0)
    return torch.where(closed_t, mapped * rp, open_reward)
