"""Query-type classifier: is a prompt open-ended ('open') or a closed question with one right answer?

R^3 scores the two kinds differently (actors/relevance.py). The data's `query_type` field decides when a
row has one; this classifier decides otherwise. It is rule-based, on the prompt's words (lower-cased):

1. 'open' when the prompt asks for free text about a subject: it contains an open cue, e.g. "tell me
   about", "talk about", "describe", "write", "what do you know about", "thoughts on", "explain",
   "say something", "give me some words", "opinion", "story", "poem", "essay", "summarize", "what do you
   think" (OPEN_CUES);
2. else 'closed' when it asks for a fact: it ends with '?', or starts with a question word or an
   auxiliary verb (what, which, who, when, where, how, is, does, can, ...), or with a fact verb
   (count, name, calculate, compute, spell, translate, convert, list) (CLOSED_STARTS);
3. else 'open' (an instruction without a question).

Accuracy on the labelled built-in prompts (both splits): `python -m orchestrator.task query-type`.
"""

from __future__ import annotations

import re
from typing import Sequence

OPEN_CUES = (
    "tell me about", "talk about", "describe", "write", "what do you know about", "thoughts on", "thoughts about",
    "explain", "say something", "give me some words", "opinion", "story", "poem", "essay", "summarize", "summarise",
    "discuss", "share", "what do you think", "how do you feel", "suggest", "ideas",
)
CLOSED_STARTS = (
    "what", "which", "who", "whom", "whose", "when", "where", "why", "how", "is", "are", "was", "were", "do",
    "does", "did", "can", "could", "will", "would", "should", "has", "have", "count", "name", "calculate",
    "compute", "spell", "translate", "convert", "list",
)
QUERY_TYPES = ("open", "closed")

_OPEN_RE = re.compile(r"\b(?:" + "|".join(re.escape(c) for c in OPEN_CUES) + r")\b")
_WORD_RE = re.compile(r"[a-z']+")


def classify(prompt: str) -> str:
    """'open' or 'closed' by the rules of the module docstring."""
    text = prompt.strip().lower()
    if _OPEN_RE.search(text):
        return "open"
    words = _WORD_RE.findall(text)
    if text.endswith("?") or (words and words[0] in CLOSED_STARTS):
        return "closed"
    return "open"


def accuracy(rows: Sequence[dict]) -> dict:
    """Accuracy of `classify` on rows with 'prompt' and a 'query_type' label, overall and per label."""
    out = {"n": len(rows), "accuracy": sum(classify(r["prompt"]) == r["query_type"] for r in rows) / max(len(rows), 1)}
    for label in QUERY_TYPES:
        sub = [r for r in rows if r["query_type"] == label]
        out[f"n_{label}"] = len(sub)
        out[f"recall_{label}"] = sum(classify(r["prompt"]) == label for r in sub) / max(len(sub), 1)
    out["errors"] = [r["prompt"] for r in rows if classify(r["prompt"]) != r["query_type"]]
    return out
