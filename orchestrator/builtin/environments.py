"""The built-in environments (`env.path=builtin:lookup`, `builtin:clarify`), their prompt data and the SFT data
that warm-starts a policy on them. Plain classes with `reset(row)` and `step(response)`, as a user would write
them (`orchestrator.jobs.episodes`), on the built-in world's words (`orchestrator.builtin.world`).

Both draw their hidden fact from the row's `episode_seed` (the same for the episodes of one prompt in a
group), so the fact changes from episode to episode: a policy cannot learn it, only how to find it out.

lookup (a tool is needed)
    "What color is my kite?": the color is drawn per episode from the world's 9 color values, and only the
    `look up` tool knows it. A turn that says "look up" (e.g. "Look up my kite.") is a tool call: the
    environment answers with a tool message "Your kite is red." (reward 0, not done). Any other turn is the
    answer: reward 1 if it names the episode's color and no other color, else 0; done. A guess is right 1 time
    in 9. Objects: 24, of which 6 are held out (test only).

clarify (a second turn is needed)
    "Tell me about it.": the topic is drawn per episode from the world's 12 topics. A turn that asks a question
    (it ends with "?") gets the user's answer "I mean fruit." (reward 0, not done). Any other turn is the
    answer: its reward is the world's gold score of an open answer on the episode's topic (`world.gold_score`:
    the share of on-topic content words times their coverage), done. An answer without asking is on the right
    topic 1 time in 12. Vague templates: 10, of which 2 are held out.

The rewards are the world's gold, so a run's held-out `eval/gold` is the mean episode return on held-out rows.

Warm-start data (`builtin:lookup-sft`, `builtin:clarify-sft`): SFT rows whose chats hold whole episodes, half
of them the right strategy (look up then answer / ask then answer) and half a guess, so that the SFT policy
starts above zero and well below the ceiling. Rows with earlier assistant turns are rendered as an episode's
context is (`actors.rendering.Rendering.episode_ids`), so SFT trains on the tokens RL samples.
"""

from __future__ import annotations

import random
import re

from orchestrator.builtin import world

__all__ = ["Lookup", "Clarify", "environment_rows", "ENV_DATASETS"]

COLORS = world.ATTRIBUTES["color"]["values"]
OBJECTS = ("kite", "ball", "drum", "guitar", "suitcase", "umbrella", "ticket", "toolbox", "ladder", "shell", "rocket",
           "cookie", "flower", "bus", "taxi", "train", "map", "hammer", "bridge", "boat", "piano", "cake", "hotel", "rake")
HELD_OUT_OBJECTS = OBJECTS[-6:]
LOOKUP_QUESTIONS = ("What color is my {o}?", "Which color does my {o} have?", "What is the color of my {o}?")

VAGUE = ("Tell me about it.", "Say something about it.", "Talk about that.", "Describe it in a few words.",
         "Give me some words about it.", "Write a sentence about that.", "Please tell me about it.",
         "Share a few thoughts on it.", "Can you describe it for me?", "What do you know about that?")
HELD_OUT_VAGUE = VAGUE[-2:]
CLARIFYING = ("Which topic do you mean?", "What do you mean?", "Which one do you mean?")

_LOOK_UP = re.compile(r"\blook\s*up\b", re.IGNORECASE)
_ROWS = {"train": 4, "test": 8}  # copies of each item per split: each copy is its own episode seed

ENV_DATASETS = ("lookup", "clarify", "lookup-sft", "clarify-sft")
"""The built-in data specs of this module (`builtin:<name>`)."""


class Lookup:
    """A per-episode color that only a `look up` tool call reveals (module doc)."""

    def __init__(self, n_colors: int = len(COLORS)):
        self.colors = COLORS[:n_colors]

    def reset(self, row: dict) -> list[dict]:
        self.object = row["object"]
        self.color = random.Random(row["episode_seed"]).choice(self.colors)
        return [{"role": "user", "content": row["prompt"]}]

    def step(self, response: str):
        if _LOOK_UP.search(response):
            return [{"role": "tool", "content": f"Your {self.object} is {self.color}."}], 0.0, False
        words = set(re.findall(r"[a-z]+", response.lower()))
        right = self.color in words and not (words & (set(self.colors) - {self.color}))
        return None, float(right), True


class Clarify:
    """A vague request whose topic only a clarifying question reveals (module doc)."""

    def reset(self, row: dict) -> list[dict]:
        self.topic = random.Random(row["episode_seed"]).choice(list(world.TOPICS))
        return [{"role": "user", "content": row["prompt"]}]

    def step(self, response: str):
        if response.rstrip().endswith("?"):
            return f"I mean {world.TOPIC_PHRASE.get(self.topic, self.topic)}.", 0.0, False
        return None, world.gold_score({"query_type": "open", "topic": self.topic}, response), True


def environment_rows(name: str, split: str, seed: int = 0) -> list[dict]:
    """The rows of `builtin:<name>` (`ENV_DATASETS`) for split train or test."""
    if name == "lookup":
        return _lookup_rows(split)
    if name == "clarify":
        return _clarify_rows(split)
    if name == "lookup-sft":
        return _lookup_sft(split, seed)
    if name == "clarify-sft":
        return _clarify_sft(split, seed)
    raise ValueError(f"unknown built-in environment dataset {name!r}")


def _lookup_items(split: str) -> list[tuple[str, str]]:
    objects = [o for o in OBJECTS if (o in HELD_OUT_OBJECTS) == (split == "test")]
    return [(q.format(o=o), o) for o in objects for q in LOOKUP_QUESTIONS]


def _lookup_rows(split: str) -> list[dict]:
    return [{"prompt": q, "object": o} for _ in range(_ROWS[split]) for q, o in _lookup_items(split)]


def _clarify_items(split: str) -> list[str]:
    return [v for v in VAGUE if (v in HELD_OUT_VAGUE) == (split == "test")]


def _clarify_rows(split: str) -> list[dict]:
    return [{"prompt": v} for _ in range(_ROWS[split] * 6) for v in _clarify_items(split)]


def _lookup_sft(split: str, seed: int, n: int = 2000) -> list[dict]:
    """Whole episodes as SFT rows: one row per assistant turn, its chat so far as the prompt."""
    rng = random.Random(f"lookup-sft:{split}:{seed}")
    items = _lookup_items(split)
    rows = []
    while len(rows) < n:
        question, obj = rng.choice(items)
        user = {"role": "user", "content": question}
        if rng.random() < 0.5:  # the right strategy: look it up, then answer with what the tool said
            color = rng.choice(COLORS)
            call = {"role": "assistant", "content": f"Look up my {obj}."}
            rows.append({"messages": [user, call]})
            rows.append({"messages": [user, call, {"role": "tool", "content": f"Your {obj} is {color}."},
                                      {"role": "assistant", "content": f"Your {obj} is {color}."}]})
        else:  # a guess
            rows.append({"messages": [user, {"role": "assistant", "content": f"Your {obj} is {rng.choice(COLORS)}."}]})
    return rows[:n]


def _clarify_sft(split: str, seed: int, n: int = 2000) -> list[dict]:
    rng = random.Random(f"clarify-sft:{split}:{seed}")
    items = _clarify_items(split)
    rows = []
    while len(rows) < n:
        user = {"role": "user", "content": rng.choice(items)}
        topic = rng.choice(list(world.TOPICS))
        answer = world.make_response({"query_type": "open", "topic": topic}, 0.6 + 0.4 * rng.random(), 0, False, rng)
        if rng.random() < 0.5:  # the right strategy: ask, then answer on the topic the user names
            ask = {"role": "assistant", "content": rng.choice(CLARIFYING)}
            rows.append({"messages": [user, ask]})
            rows.append({"messages": [user, ask, {"role": "user", "content": f"I mean {world.TOPIC_PHRASE.get(topic, topic)}."},
                                      {"role": "assistant", "content": answer}]})
        else:  # an answer on a topic of its own choosing
            rows.append({"messages": [user, {"role": "assistant", "content": answer}]})
    return rows[:n]
