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

Accuracy on the labelled built-in prompts (both splits): `python -m orchestrator.builtin.world query-type`.
Accuracy on prompts it was not written for (`HELD_OUT`: questions and requests of everyday topics,
phrased in ways the rules did not see): `python -m actors.query_type`; docs/reward-models.md states the number.

The R^3 paper classifies with an LLM; `reward.query_classifier` plugs in any classifier
(`load_classifier`): builtin:rules (this module), a Python function 'module:function' called as
f(prompts) -> ['open' | 'closed', ...], or a sequence-classifier folder (or hub name) whose config's
id2label names the labels open and closed (any case).
"""

from __future__ import annotations

import importlib
import os
import re
from typing import Callable, Sequence

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


Classifier = Callable[[list[str]], list[str]]
"""A query-type classifier: prompts -> 'open' or 'closed' for each."""

BUILTIN_RULES = "builtin:rules"


def rules(prompts: Sequence[str]) -> list[str]:
    """`classify` over a batch (the builtin:rules classifier)."""
    return [classify(p) for p in prompts]


def load_classifier(spec: str, trust_remote_code: bool = False) -> Classifier:
    """The classifier `reward.query_classifier` names (see the module docstring). A spec that names
    nothing usable raises ValueError in one line naming the key."""
    key = f"reward.query_classifier={spec!r}"
    if spec == BUILTIN_RULES:
        return rules
    if ":" in spec and not os.path.exists(spec):
        module, _, name = spec.partition(":")
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"{key} cannot be imported: {e}") from None
        if not callable(fn):
            raise ValueError(f"{key} is not callable")
        return _checked(fn, key)
    return _checked(_SequenceClassifier(spec, key, trust_remote_code), key)


def _checked(fn: Callable, key: str) -> Classifier:
    def classify_batch(prompts: list[str]) -> list[str]:
        labels = list(fn(list(prompts)))
        if len(labels) != len(prompts):
            raise ValueError(f"{key} returned {len(labels)} labels for {len(prompts)} prompts")
        bad = [x for x in labels if x not in QUERY_TYPES]
        if bad:
            raise ValueError(f"{key} returned {bad[0]!r}; labels must be one of {QUERY_TYPES}")
        return labels

    return classify_batch


class _SequenceClassifier:
    """A Hugging Face sequence classifier whose id2label has 'open' and 'closed' (any case)."""

    def __init__(self, path: str, key: str, trust_remote_code: bool):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            self.model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=trust_remote_code).eval()
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"{key} is not 'builtin:rules', an importable 'module:function' or a sequence classifier: {first}") from None
        names = {i: str(label).lower() for i, label in self.model.config.id2label.items()}
        if set(QUERY_TYPES) - set(names.values()):
            raise ValueError(f"{key}: the classifier's id2label {self.model.config.id2label} must name the labels open and closed")
        self.labels = names
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def __call__(self, prompts: list[str]) -> list[str]:
        import torch

        if not prompts:
            return []
        with torch.no_grad():
            batch = self.tokenizer(prompts, return_tensors="pt", padding=True, truncation=True)
            logits = self.model(**batch).logits
        # only the open and closed columns compete (a classifier may have other labels)
        allowed = torch.tensor([self.labels[i] in QUERY_TYPES for i in range(logits.shape[-1])])
        best = logits.masked_fill(~allowed, float("-inf")).argmax(-1)
        return [self.labels[int(i)] for i in best]


def accuracy(rows: Sequence[dict], classifier: Classifier = rules) -> dict:
    """Accuracy of `classifier` on rows with 'prompt' and a 'query_type' label, overall and per label."""
    predicted = classifier([r["prompt"] for r in rows])
    out = {"n": len(rows), "accuracy": sum(p == r["query_type"] for p, r in zip(predicted, rows)) / max(len(rows), 1)}
    for label in QUERY_TYPES:
        sub = [p for p, r in zip(predicted, rows) if r["query_type"] == label]
        out[f"n_{label}"] = len(sub)
        out[f"recall_{label}"] = sum(p == label for p in sub) / max(len(sub), 1)
    out["errors"] = [{"prompt": r["prompt"], "label": r["query_type"], "predicted": p}
                     for p, r in zip(predicted, rows) if p != r["query_type"]]
    return out


HELD_OUT: tuple[tuple[str, str], ...] = (
    # closed: one right, short answer
    ("What is the capital of Japan?", "closed"), ("In which year did the Berlin Wall fall?", "closed"),
    ("Who painted the Mona Lisa?", "closed"), ("How many legs does a spider have?", "closed"),
    ("Give me the boiling point of water in Celsius.", "closed"), ("Tell me the chemical symbol for gold.", "closed"),
    ("I'd like to know the tallest mountain on Earth.", "closed"), ("Quick question: what's 12 times 12", "closed"),
    ("The largest ocean on the planet is which one?", "closed"), ("Which planet is closest to the sun", "closed"),
    ("Capital of Australia?", "closed"), ("Please state the speed of light in vacuum.", "closed"),
    ("Do spiders have six legs or eight?", "closed"), ("Is a tomato a fruit or a vegetable?", "closed"),
    ("How many continents are there?", "closed"), ("Whose face is on the US one-dollar bill?", "closed"),
    ("Find the square root of 144.", "closed"), ("Identify the author of Pride and Prejudice.", "closed"),
    ("Which gas do plants absorb from the air?", "closed"), ("Can you tell me what year the first moon landing was?", "closed"),
    ("What's the freezing point of water in Fahrenheit?", "closed"), ("Give the plural of mouse.", "closed"),
    ("Translate 'thank you' into French.", "closed"), ("Spell the word necessary backwards.", "closed"),
    ("Which is heavier, a kilogram of feathers or a kilogram of iron?", "closed"),
    ("Who discovered penicillin?", "closed"), ("At what temperature does iron melt?", "closed"),
    ("Define the word photosynthesis in one sentence.", "closed"), ("The currency of the United Kingdom is called what?", "closed"),
    ("How many minutes are in a day?", "closed"), ("What does DNA stand for?", "closed"),
    ("Was Napoleon French or Italian by birth?", "closed"), ("Roughly how far is the moon from the earth?", "closed"),
    ("Which instrument has 88 keys?", "closed"), ("Tell me who wrote the Odyssey.", "closed"),
    ("Convert 5 miles to kilometres.", "closed"), ("Name the longest river in Africa.", "closed"),
    ("Is the sun a star?", "closed"), ("What language is spoken in Brazil?", "closed"), ("Count the vowels in 'banana'.", "closed"),
    # open: free text about a subject
    ("Why do people enjoy music so much?", "open"), ("How would you spend a perfect Sunday?", "open"),
    ("What makes a good friend?", "open"), ("Could you paint a picture in words of a rainy city street?", "open"),
    ("I'm curious about the history of chess.", "open"), ("Give me a few tips for learning to cook.", "open"),
    ("Compose a limerick about a cat.", "open"), ("Let's chat about the ocean.", "open"),
    ("Any advice for someone starting to run?", "open"), ("How can I become a better writer?", "open"),
    ("What are the pros and cons of working from home?", "open"), ("Imagine a world without electricity.", "open"),
    ("Can you help me plan a birthday party?", "open"), ("What is it like to live in a big city?", "open"),
    ("Paint me a picture of autumn in the mountains.", "open"), ("Is it better to rent or to buy a house?", "open"),
    ("Why is the sky so fascinating to poets?", "open"), ("Brainstorm names for a bakery.", "open"),
    ("How should I prepare for a job interview?", "open"), ("Compare cats and dogs as pets.", "open"),
    ("I'd love to hear your view on modern art.", "open"), ("What would you do with a million dollars?", "open"),
    ("Outline a weekend trip to the seaside.", "open"), ("Do you have any thoughts about climate change?", "open"),
    ("Walk me through how bread is made.", "open"), ("Reflect on what makes a city livable.", "open"),
    ("How do bees make honey?", "open"), ("What is the meaning of friendship to you?", "open"),
    ("Recommend some hobbies for a rainy day.", "open"), ("Argue for or against school uniforms.", "open"),
    ("Let me hear a short tale about a dragon.", "open"), ("Why do we dream?", "open"),
    ("Create a haiku about the sea.", "open"), ("What are your favourite things about winter?", "open"),
    ("Help me understand how vaccines work.", "open"), ("Gardening for beginners, please.", "open"),
    ("Can you give me an overview of the Roman Empire?", "open"), ("How might cities look in a hundred years?", "open"),
    ("Please elaborate on the benefits of reading.", "open"), ("Sketch out a plan to learn a new language.", "open"),
)
"""Labelled prompts the rules were not written for (`held_out_accuracy`): 40 closed (a single short
right answer) and 40 open (free text), of everyday topics outside the built-in world, phrased unlike its
templates (questions without a question word, requests in the first person, open 'why' and 'how'
questions). Written after the rules and not used to change them."""


def held_out_accuracy(classifier: Classifier = rules) -> dict:
    """`accuracy` of `classifier` on `HELD_OUT`."""
    return accuracy([{"prompt": p, "query_type": t} for p, t in HELD_OUT], classifier)


if __name__ == "__main__":
    import json
    import sys

    spec = sys.argv[1] if len(sys.argv) > 1 else BUILTIN_RULES
    print(json.dumps(held_out_accuracy(load_classifier(spec)), indent=2))
