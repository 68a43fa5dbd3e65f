"""The built-in task world: prompts, responses, a gold score, SFT and preference data.

Pure Python and deterministic by seed (every function takes a seed or a `random.Random`; the global
`random` state is never used). It backs the data specs `builtin:prompts`, `builtin:sft` and
`builtin:preferences` (see `orchestrator.builtin.datasets`) and the held-out gold evaluation of PPO and DPO.

The world
---------
* 12 topics (`TOPICS`), each a name plus 16-17 on-topic content words; the vocabularies are disjoint.
* Neutral words (`NEUTRAL_WORDS`): function words, the words of the sentence frames, of the filler
  phrases and of the prompt templates. They carry no topic and are ignored by the gold score.
* Style markers (`CASUAL_WORDS`: "lol", "haha", "omg", written "<marker> !!" at the end of the answer):
  the *disputed* style. One annotator group likes it and the other dislikes it; gold ignores it.
* Fact tables (`FACTS`): 4 attributes (color, legs, sound, taste), 38 facts, each with a short
  reference answer ("What color is a banana?" -> "A banana is yellow.").

Prompts (`prompt_rows`)
-----------------------
Open prompts: 11 templates x 12 topics ("Tell me about fruit.", "Describe the ocean in a few words.").
Closed prompts: 3 question templates per attribute x 38 facts ("What color is a banana?").
The split is a fixed property of the world (it does not depend on `seed`):
* test holds one template x topic combination per topic, every combination of one whole open
  template ("Can you describe {t} for me?"), and one template x fact combination per fact;
* every topic, every fact and all but one open template still appear in train, so the test set measures
  generalisation to new phrasings, not knowledge the training data never had.
Counts: 108 train open + 76 train closed = 184 train prompts; 24 + 38 = 62 test prompts.
Open rows have `reference=None` (no single right answer); closed rows carry the reference answer.

Gold score (`gold_score`)
-------------------------
Words are the lower-cased runs of letters a-z in the response (punctuation and digits are dropped).
    rep = unique word trigrams / word trigrams    (1.0 when the response has fewer than 3 words)
Open prompt (topic T):
    content  = words that are neither neutral words nor style markers
    on_topic = content words in T's vocabulary (the topic name counts, e.g. "fruit")
    gold = (|on_topic| / |content|) * min(|distinct on_topic|, 4) / 4 * rep      (0 if no content)
Closed prompt (reference answer with key word k, an attribute value such as "yellow"):
    gold = [k in words] * [no other value of the same attribute in words] * rep
So gold is in [0, 1] and depends on topicality, coverage of distinct on-topic words, factual correctness
and degenerate repetition. Neutral fillers (length) and the casual marker do not count as content, so for
an answer without repeated trigrams they leave gold unchanged; for an answer that repeats itself, extra
distinct words dilute the repetition ratio slightly (e.g. 0.45 -> 0.47 for two added filler sentences).

Responses (`make_response`)
---------------------------
`quality` in [0, 1] sets the share of on-topic content words and how many distinct ones are used (open),
or the chance of the correct fact (closed; otherwise a wrong value, a hedge with two values, or an
evasion); low quality sometimes repeats a sentence. `length` adds that many neutral filler units
(a leading "In general," or a closing sentence such as "I hope this helps."), so length varies
independently of quality. `casual` ends the answer with "lol !!", "haha !!" or "omg !!".

Preferences (`preference_rows`)
-------------------------------
Each pair is labelled by one annotator, from the formal or the casual group (50/50), with utility
    u = QUALITY_WEIGHT * gold + LENGTH_WEIGHT * words / 10 + s * casual
    s = CASUAL_GROUP_WEIGHT (+4.0) for the casual group, FORMAL_GROUP_WEIGHT (-2.5) for the formal group,
    QUALITY_WEIGHT = 5.0, LENGTH_WEIGHT = 1.0
and a Bradley-Terry draw: the first response is chosen with probability sigmoid(u1 - u2).
So annotators prefer gold quality, also prefer longer answers (length bias), and split on the casual
marker: the casual group picks the casual twin of an answer 98% of the time, the formal group 8%; pooled,
it wins about 53% (a mildly positive mean, a large disagreement: hidden context). A Bradley-Terry
model sees a casual effect near zero; a mean-variance model gives casual answers about twice the std,
so their risk-averse (alpha = 0.1) quantile falls below that of the same answer without the marker.
Pair kinds: independent (35%), casual-only (25%: the same answer with and without the marker),
length-only (20%: the same answer with different fillers), quality-only (20%).

The hidden-context variant (`hidden_context_rows`, data spec `builtin:hidden-context`)
------------------------------------------------------------------------------------
The same world and utilities with parameters (`HIDDEN_CONTEXT`) under which the hidden context, not
label noise, dominates what a reward model sees:
* rationality beta = 3: the label is drawn with sigmoid(3 (u1 - u2)), so the pairs both groups agree
  on are labelled far more consistently;
* 65% of the annotators are casual: the casual twin wins 65% of casual-only pairs, so a scalar reward
  learns a clear preference for the disputed style, which 35% of annotators strongly reject (a
  majority's mild taste against a minority's veto: the DPL paper's setting);
* pair kinds independent 30%, casual-length 30% (the same content with different fillers, one of
  them casual: length, which every annotator rewards, against the disputed marker), length-only 20%,
  quality-only 20%;
* 20000 train pairs, 1000 test pairs.
Each row's `p_chosen` is the pooled probability that chosen wins; the share of test rows with
p_chosen > 0.5 is the accuracy ceiling of any annotator-blind reward (0.7835 on the test split).
"""

from __future__ import annotations

import math
import random
import re
from typing import Iterable, Optional, Sequence

# ---------------------------------------------------------------------------------------------------
# The world's vocabulary
# ---------------------------------------------------------------------------------------------------

TOPICS: dict[str, tuple[str, ...]] = {
    "fruit": ("apple", "banana", "mango", "pear", "grape", "cherry", "lemon", "peach", "plum",
              "melon", "berry", "kiwi", "lime", "apricot", "fig", "coconut", "papaya"),
    "animals": ("dog", "cat", "horse", "cow", "lion", "tiger", "rabbit", "fox", "bear", "wolf",
                "sheep", "duck", "spider", "snake", "elephant", "zebra", "pig", "bee", "ant", "chicken"),
    "colors": ("red", "blue", "green", "yellow", "purple", "pink", "brown", "white", "black",
               "gray", "orange", "gold", "silver", "violet", "paint", "rainbow", "crayon"),
    "weather": ("rain", "snow", "wind", "cloud", "storm", "sunshine", "thunder", "fog", "hail",
                "frost", "breeze", "lightning", "sky", "umbrella", "heat", "drizzle"),
    "music": ("song", "guitar", "piano", "drum", "violin", "melody", "rhythm", "singer", "band",
              "concert", "flute", "trumpet", "chord", "choir", "harp", "lyric"),
    "sports": ("soccer", "tennis", "ball", "goal", "team", "coach", "player", "race", "football",
               "basketball", "baseball", "golf", "referee", "stadium", "medal", "hockey"),
    "space": ("planet", "star", "moon", "rocket", "comet", "galaxy", "orbit", "astronaut",
              "telescope", "asteroid", "mars", "saturn", "nebula", "meteor", "satellite", "gravity"),
    "food": ("bread", "cheese", "soup", "rice", "pasta", "pizza", "salad", "butter", "egg", "cake",
             "cookie", "sandwich", "noodle", "pie", "honey", "sugar", "salt", "coffee", "carrot"),
    "ocean": ("wave", "shark", "coral", "whale", "dolphin", "reef", "tide", "shell", "seaweed",
              "octopus", "crab", "jellyfish", "fish", "beach", "sand", "island", "starfish"),
    "tools": ("hammer", "nail", "saw", "screw", "drill", "wrench", "shovel", "ladder", "rake", "axe",
              "chisel", "pliers", "tape", "glue", "toolbox", "screwdriver"),
    "plants": ("tree", "flower", "leaf", "root", "seed", "grass", "rose", "tulip", "oak", "pine",
               "cactus", "moss", "fern", "garden", "bush", "vine", "daisy"),
    "travel": ("train", "plane", "ticket", "airport", "hotel", "map", "suitcase", "passport", "bus",
               "journey", "tourist", "luggage", "station", "cruise", "taxi", "bridge"),
}
"""Topic name -> its on-topic content words (the name itself is on-topic too)."""

TOPIC_PHRASE: dict[str, str] = {"weather": "the weather", "ocean": "the ocean"}
"""How a topic is named inside a prompt when it is not the bare name."""

# Closed questions. Attribute -> question templates, answer frames (full and short), value words.
# `{s}` is the subject with its article ("a banana", "the sky", "honey"); `{S}` the same capitalised.
ATTRIBUTES: dict[str, dict] = {
    "color": {
        "questions": ("What color is {s}?", "What is the color of {s}?", "Which color does {s} have?"),
        "answer": "{S} is {v}.",
        "short": "It is {v}.",
        "values": ("red", "blue", "green", "yellow", "purple", "white", "gray", "brown", "orange"),
    },
    "legs": {
        "questions": ("How many legs does {s} have?", "What is the number of legs of {s}?",
                      "Count the legs of {s}."),
        "answer": "{S} has {v} legs.",
        "short": "It has {v} legs.",
        "values": ("zero", "two", "four", "six", "eight"),
    },
    "sound": {
        "questions": ("What sound does {s} make?", "What does {s} say?", "Which sound does {s} make?"),
        "answer": "{S} says {v}.",
        "short": "It says {v}.",
        "values": ("woof", "meow", "moo", "quack", "roar", "hiss", "neigh", "buzz", "oink", "baa"),
    },
    "taste": {
        "questions": ("How does {s} taste?", "What does {s} taste like?", "Which taste does {s} have?"),
        "answer": "{S} tastes {v}.",
        "short": "It tastes {v}.",
        "values": ("sweet", "sour", "salty", "bitter"),
    },
}

# (attribute, subject with article, subject's topic, value)
FACTS: tuple[tuple[str, str, str, str], ...] = (
    ("color", "a banana", "fruit", "yellow"), ("color", "a lemon", "fruit", "yellow"),
    ("color", "a cherry", "fruit", "red"), ("color", "a lime", "fruit", "green"),
    ("color", "a grape", "fruit", "purple"), ("color", "grass", "plants", "green"),
    ("color", "the sky", "weather", "blue"), ("color", "snow", "weather", "white"),
    ("color", "an elephant", "animals", "gray"), ("color", "a carrot", "food", "orange"),
    ("color", "a rose", "plants", "red"), ("color", "a bear", "animals", "brown"),
    ("legs", "a dog", "animals", "four"), ("legs", "a horse", "animals", "four"),
    ("legs", "a duck", "animals", "two"), ("legs", "a spider", "animals", "eight"),
    ("legs", "an ant", "animals", "six"), ("legs", "a snake", "animals", "zero"),
    ("legs", "a chicken", "animals", "two"), ("legs", "a crab", "ocean", "eight"),
    ("sound", "a dog", "animals", "woof"), ("sound", "a cat", "animals", "meow"),
    ("sound", "a cow", "animals", "moo"), ("sound", "a duck", "animals", "quack"),
    ("sound", "a lion", "animals", "roar"), ("sound", "a snake", "animals", "hiss"),
    ("sound", "a horse", "animals", "neigh"), ("sound", "a bee", "animals", "buzz"),
    ("sound", "a pig", "animals", "oink"), ("sound", "a sheep", "animals", "baa"),
    ("taste", "a lemon", "fruit", "sour"), ("taste", "a lime", "fruit", "sour"),
    ("taste", "sugar", "food", "sweet"), ("taste", "honey", "food", "sweet"),
    ("taste", "salt", "food", "salty"), ("taste", "coffee", "food", "bitter"),
    ("taste", "cake", "food", "sweet"), ("taste", "a mango", "fruit", "sweet"),
)

OPEN_TEMPLATES: tuple[str, ...] = (
    "Tell me about {t}.",
    "Write a sentence about {t}.",
    "What do you know about {t}?",
    "Say something about {t}.",
    "Describe {t} in a few words.",
    "Give me some words about {t}.",
    "Talk about {t}.",
    "Write a short answer about {t}.",
    "Please tell me about {t}.",
    "Share a few thoughts on {t}.",
    "Can you describe {t} for me?",  # held out entirely: test only
)
HELD_OUT_OPEN_TEMPLATE = len(OPEN_TEMPLATES) - 1

# Sentence frames of open answers: "{}" is a bare content word, "{a}" a content word with "a"/"an".
OPEN_FRAMES: tuple[str, ...] = (
    "I like the {} and the {}.",
    "The {} is next to the {}.",
    "There is {a} near the {}.",
    "You can find {}, {} and {} here.",
    "My favorite is the {}.",
    "The {} is nice.",
    "Look at the {}.",
    "People like the {} and the {}.",
    "Think of the {}, the {} and the {}.",
    "The {} is better than the {}.",
    "Here are a few: {}, {}, {} and {}.",
    "We found {a} and {a} today.",
)
EVASIVE_FRAMES: tuple[str, ...] = ("I am not sure about that.", "I do not know much about it.")
HEDGE_FRAME = "{v1} or maybe {v2}"

PREFIX_FILLERS: tuple[str, ...] = (
    "Well,", "In general,", "To be honest,", "As far as I know,", "If you ask me,", "All in all,",
    "In my opinion,", "Generally speaking,",
)
SUFFIX_FILLERS: tuple[str, ...] = (
    "I hope this helps.", "That is all I can say.", "That is my answer.", "It is a good question.",
    "This is what I think.", "There is more to say.", "I could go on.", "Thanks for asking.",
)
CASUAL_WORDS: tuple[str, ...] = ("lol", "haha", "omg")
"""The disputed style: an answer in casual style ends with '<one of these> !!'."""

_STOP_WORDS = """a an the and or but is are was were be been it its this that these those there here
i me my you your we our they them he she his her of in on at to for with from by as so very too also
some many much more most all any what which who how when where why do does did can could will would
should may might have has had not no yes just like well then than about one few""".split()


def _words(text: str) -> list[str]:
    """Lower-cased runs of letters a-z: the unit of the gold score and of length."""
    return re.findall(r"[a-z]+", text.lower())


NEUTRAL_WORDS: frozenset[str] = frozenset(
    _STOP_WORDS
    + [w for f in OPEN_FRAMES + EVASIVE_FRAMES + PREFIX_FILLERS + SUFFIX_FILLERS for w in _words(f)]
    + [w for t in OPEN_TEMPLATES for w in _words(t.replace("{t}", ""))]
    + [w for a in ATTRIBUTES.values() for q in a["questions"] + (a["answer"], a["short"])
       for w in _words(q.replace("{s}", "").replace("{S}", "").replace("{v}", ""))]
    + _words(HEDGE_FRAME.replace("{v1}", "").replace("{v2}", ""))
)
"""Words that carry no topic: ignored by the gold score (stop words, frame, filler and prompt words)."""

_TOPIC_VOCAB: dict[str, frozenset[str]] = {t: frozenset(ws + (t,)) for t, ws in TOPICS.items()}
_VALUE_TO_ATTRIBUTE: dict[str, str] = {v: a for a, spec in ATTRIBUTES.items() for v in spec["values"]}

# Annotator model of the preference data (see module docstring).
QUALITY_WEIGHT = 5.0
"""Utility per unit of gold score."""
LENGTH_WEIGHT = 1.0
"""Utility per 10 words: the length bias every annotator shares."""
CASUAL_GROUP_WEIGHT = 4.0
"""Utility of the casual marker for the casual annotator group."""
FORMAL_GROUP_WEIGHT = -2.5
"""Utility of the casual marker for the formal annotator group."""
PAIR_KINDS: dict[str, float] = {"independent": 0.35, "casual_only": 0.25, "length_only": 0.20, "quality_only": 0.20}
GROUPS = ("formal", "casual")
"""The annotator groups (index 1 is the casual group)."""
PAIR_KIND_NAMES = ("independent", "casual_only", "casual_length", "length_only", "quality_only")
"""casual_length: the same content with different fillers, one of the two with the casual marker."""

HIDDEN_CONTEXT: dict = {
    "rationality": 3.0,
    "casual_share": 0.65,
    "pair_kinds": {"independent": 0.30, "casual_length": 0.30, "length_only": 0.20, "quality_only": 0.20},
}
"""Annotator pool and pair mix of `builtin:hidden-context` (module docstring)."""
_HIDDEN_CONTEXT_ROWS = {"train": 20000, "test": 1000}

SPLITS = ("train", "test")
_DEFAULT_PREFERENCE_ROWS = {"train": 4000, "test": 1000}
_DEFAULT_SFT_ROWS = {"train": 3000, "test": 500}

# ---------------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------------


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _all_prompt_rows() -> list[dict]:
    """Every prompt of the world in canonical order, each with its split under the key 'split'."""
    rows = []
    n_templates = HELD_OUT_OPEN_TEMPLATE  # templates that also appear in train
    for i, topic in enumerate(TOPICS):
        held_out = (3 * i + 1) % n_templates  # one combination per topic; each template held out 1-2 times
        for j, template in enumerate(OPEN_TEMPLATES):
            split = "test" if j in (held_out, HELD_OUT_OPEN_TEMPLATE) else "train"
            prompt = template.format(t=TOPIC_PHRASE.get(topic, topic))
            rows.append({"prompt": _capitalise(prompt), "query_type": "open", "reference": None,
                         "topic": topic, "split": split})
    for k, (attribute, subject, topic, value) in enumerate(FACTS):
        spec = ATTRIBUTES[attribute]
        reference = spec["answer"].format(S=_capitalise(subject), v=value)
        for j, question in enumerate(spec["questions"]):
            split = "test" if j == k % len(spec["questions"]) else "train"
            rows.append({"prompt": question.format(s=subject), "query_type": "closed",
                         "reference": reference, "topic": topic, "split": split})
    return rows


def prompt_rows(split: str, seed: int = 0, query_type: Optional[str] = None) -> list[dict]:
    """Prompt rows `{"prompt", "query_type", "reference", "topic"}` of one split, shuffled by `seed`;
    only those of `query_type` ('open' or 'closed') when given.

    The split itself is fixed (see the module docstring); `seed` only changes the order.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rows = [{k: v for k, v in r.items() if k != "split"} for r in _all_prompt_rows()
            if r["split"] == split and query_type in (None, r["query_type"])]
    random.Random(f"prompts:{split}:{seed}").shuffle(rows)
    return rows


# ---------------------------------------------------------------------------------------------------
# Gold score
# ---------------------------------------------------------------------------------------------------


def repetition_factor(words: Sequence[str]) -> float:
    """Unique word trigrams / word trigrams; 1.0 for fewer than 3 words."""
    if len(words) < 3:
        return 1.0
    trigrams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    return len(set(trigrams)) / len(trigrams)


def reference_key(reference: str) -> tuple[str, str]:
    """(attribute, key value word) of a closed reference answer, e.g. "A banana is yellow." -> ("color", "yellow")."""
    keys = [w for w in _words(reference) if w in _VALUE_TO_ATTRIBUTE]
    if len(keys) != 1:
        raise ValueError(f"reference {reference!r} must contain exactly one attribute value, found {keys}")
    return _VALUE_TO_ATTRIBUTE[keys[0]], keys[0]


def gold_score(prompt_row: dict, response: str) -> float:
    """Gold score in [0, 1] of `response` to `prompt_row` (a row of `prompt_rows`).

    Words = lower-cased runs of letters a-z; rep = unique word trigrams / word trigrams (1 if < 3 words).
    Open: (on-topic content words / content words) * min(distinct on-topic words, 4) / 4 * rep, where
    content words exclude NEUTRAL_WORDS and CASUAL_WORDS, and 0 when there is no content word.
    Closed: [reference's key value present] * [no other value of that attribute present] * rep.
    Neutral fillers and the casual marker change it only through rep (which is 1 without repetition).
    """
    words = _words(response)
    rep = repetition_factor(words)
    if prompt_row["query_type"] == "closed":
        attribute, key = reference_key(prompt_row["reference"])
        present = set(words)
        others = set(ATTRIBUTES[attribute]["values"]) - {key}
        return float(key in present and not (present & others)) * rep
    vocab = _TOPIC_VOCAB[prompt_row["topic"]]
    content = [w for w in words if w not in NEUTRAL_WORDS and w not in CASUAL_WORDS]
    if not content:
        return 0.0
    on_topic = [w for w in content if w in vocab]
    return len(on_topic) / len(content) * min(len(set(on_topic)), 4) / 4 * rep


def n_words(text: str) -> int:
    """Length in words, as the gold score and the annotators count them (punctuation excluded)."""
    return len(_words(text))


def is_casual(text: str) -> bool:
    """Whether a response carries the disputed casual marker."""
    return any(w in CASUAL_WORDS for w in _words(text))


COPY_THRESHOLD = 0.5
"""`copies_prompt`: the share of the prompt's word trigrams a response must repeat to count as a copy."""
SHORT_WORDS = 3
"""`gold_eval`'s short_share counts responses of at most this many words."""


def copies_prompt(prompt: str, response: str) -> bool:
    """Whether `response` copies the prompt back: at least `COPY_THRESHOLD` of the prompt's distinct word
    trigrams (words as the gold score counts them) occur in the response. A prompt of fewer than three
    words has no trigram and is never copied. (An answer to "What color is a banana?" such as "A
    banana is yellow." shares no trigram with it; "what color is a banana" repeated back shares all.)"""
    p, r = _words(prompt), _words(response)
    prompt_tri = {tuple(p[i:i + 3]) for i in range(len(p) - 2)}
    if not prompt_tri:
        return False
    response_tri = {tuple(r[i:i + 3]) for i in range(len(r) - 2)}
    return len(prompt_tri & response_tri) >= COPY_THRESHOLD * len(prompt_tri)


def closed_correct(prompt_row: dict, response: str) -> bool:
    """A closed prompt's answer states the reference's key value and no other value of its attribute."""
    attribute, key = reference_key(prompt_row["reference"])
    present = set(_words(response))
    return key in present and not (present & (set(ATTRIBUTES[attribute]["values"]) - {key}))


def gold_eval(prompt_rows: Sequence[dict], responses: Sequence[str]) -> dict:
    """Summary of responses to prompt rows: mean gold (all, open, closed), share with the disputed
    casual marker, mean length in words, count, and the reward-hacking signs: copy_share (responses that
    copy the prompt, `copies_prompt`), short_share (at most `SHORT_WORDS` words), repetition (the mean
    share of repeated word trigrams, 1 - `repetition_factor`) and closed_accuracy (closed prompts
    answered correctly, `closed_correct`, whatever the repetition)."""
    if len(prompt_rows) != len(responses):
        raise ValueError(f"{len(prompt_rows)} prompt rows but {len(responses)} responses")
    golds = [gold_score(r, y) for r, y in zip(prompt_rows, responses)]

    def mean(xs: list) -> float:
        return sum(xs) / len(xs) if xs else float("nan")

    return {
        "gold": mean(golds),
        "gold_open": mean([g for g, r in zip(golds, prompt_rows) if r["query_type"] == "open"]),
        "gold_closed": mean([g for g, r in zip(golds, prompt_rows) if r["query_type"] == "closed"]),
        "disputed_share": mean([float(is_casual(y)) for y in responses]),
        "length": mean([n_words(y) for y in responses]),
        "copy_share": mean([float(copies_prompt(r["prompt"], y)) for r, y in zip(prompt_rows, responses)]),
        "short_share": mean([float(n_words(y) <= SHORT_WORDS) for y in responses]),
        "repetition": mean([1.0 - repetition_factor(_words(y)) for y in responses]),
        "closed_accuracy": mean([float(closed_correct(r, y)) for r, y in zip(prompt_rows, responses)
                                 if r["query_type"] == "closed"]),
        "n": len(responses),
    }


_PROMPT_INDEX: dict[str, dict] = {r["prompt"]: r for r in _all_prompt_rows()}


def gold_reward(prompts: Sequence[str], responses: Sequence[str], references: Optional[Sequence] = None) -> list[float]:
    """Function-reward adapter of `gold_score` for prompts of the built-in world (looked up by text).

    An oracle for tests and debugging: a PPO run trained on it can no longer use gold as an
    independent held-out measure.
    """
    out = []
    for prompt, response in zip(prompts, responses):
        row = _PROMPT_INDEX.get(prompt.strip())
        if row is None:
            raise KeyError(f"prompt {prompt!r} is not a prompt of the built-in task")
        out.append(gold_score(row, response))
    return out


def verifiable_reward(prompts: Sequence[str], responses: Sequence[str], references: Optional[Sequence] = None) -> list[float]:
    """A verifiable (rule-checked) reward for the closed questions of the built-in task, 1 or 0:

        r = 1  if the response names the reference's attribute value (e.g. "yellow" for "What color is a
               banana?") and no other value of that attribute (so "yellow or maybe green" scores 0)
        r = 0  otherwise

    The correctness factor of the closed-question gold score, without its repetition factor: what
    RL-from-verifiable-rewards runs optimise (an exact check, no learned model to game). It reads the
    reference answer each prompt row carries (`references`), or the built-in prompt's when none is
    given; an open prompt (no reference) is an error. Use it with `data.path=builtin:closed-prompts`.
    """
    out = []
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        reference = references[i] if references is not None else None
        if reference is None:
            row = _PROMPT_INDEX.get(prompt.strip())
            reference = row["reference"] if row is not None else None
        if reference is None:
            raise ValueError(f"verifiable_reward scores closed questions with a reference answer; prompt {prompt[:80]!r} has none "
                             "(use data.path=builtin:closed-prompts)")
        attribute, key = reference_key(reference)
        present = set(_words(response))
        out.append(float(key in present and not (present & (set(ATTRIBUTES[attribute]["values"]) - {key}))))
    return out


def annotator_reward(prompts: Sequence[str], responses: Sequence[str], references: Optional[Sequence] = None) -> list[float]:
    """The default training reward of `rlhf ppo`: the simulated annotators' mean utility, in gold units.

        r = mean over the two groups of u / QUALITY_WEIGHT = gold + (LENGTH_WEIGHT * words / 10
            + (CASUAL_GROUP_WEIGHT + FORMAL_GROUP_WEIGHT) / 2 * casual) / QUALITY_WEIGHT

    What a perfectly learned reward model of the built-in preference labels would predict: it carries
    the annotators' biases (longer is better; the disputed casual ending scores +0.15 on average
    although the two groups disagree sharply about it). Gold is evaluated separately, on held-out
    prompts; a policy that games the biases (padding, the casual marker) gains reward but no gold,
    which the run's `length/*` and `reward/length_corr` metrics make visible.
    """
    out = []
    for prompt, response in zip(prompts, responses):
        row = _PROMPT_INDEX.get(prompt.strip())
        if row is None:
            raise KeyError(f"prompt {prompt!r} is not a prompt of the built-in task")
        mean_u = sum(annotator_utility(row, response, group) for group in ("formal", "casual")) / 2
        out.append(mean_u / QUALITY_WEIGHT)
    return out


REWARDS = {"annotator": annotator_reward, "verifiable": verifiable_reward, "gold": gold_reward}
"""The built-in reward functions, by the name a config gives them: `reward.function=builtin:<name>`."""


# ---------------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------------


def _with_article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _fill_frame(frame: str, words: Iterable[str]) -> str:
    it = iter(words)
    return re.sub(r"\{a?\}", lambda m: _with_article(next(it)) if m.group() == "{a}" else next(it), frame)


def _n_slots(frame: str) -> int:
    return len(re.findall(r"\{a?\}", frame))


def _open_sentences(row: dict, quality: float, rng: random.Random) -> list[str]:
    topic = row["topic"]
    n_content = rng.randint(4, 5)
    on_words = list(TOPICS[topic])
    rng.shuffle(on_words)
    pool = on_words[: max(1, round(quality * 6))]  # low quality: few distinct on-topic words
    others = [t for t in TOPICS if t != topic]
    off_topics = rng.sample(others, 2)
    off_words = [w for t in off_topics for w in TOPICS[t]]
    chosen, k = [], 0
    for _ in range(n_content):
        if rng.random() < quality:
            chosen.append(pool[k % len(pool)])
            k += 1
        else:
            chosen.append(rng.choice(off_words))
    sentences, used, i = [], set(), 0
    while i < n_content:  # distinct frames, so that only degenerate answers repeat trigrams
        fitting = [f for f in OPEN_FRAMES if _n_slots(f) <= n_content - i]
        frame = rng.choice([f for f in fitting if f not in used] or fitting)
        used.add(frame)
        sentences.append(_capitalise(_fill_frame(frame, chosen[i:i + _n_slots(frame)])))
        i += _n_slots(frame)
    if len(sentences) > 1 and rng.random() < 0.3 * (1 - quality):  # degenerate repetition
        sentences.append(sentences[rng.randrange(len(sentences))])
    return sentences


def _subject(reference: str, attribute: str, key: str) -> str:
    pattern = re.escape(ATTRIBUTES[attribute]["answer"]).replace(r"\{S\}", "(.+)").replace(r"\{v\}", key)
    match = re.fullmatch(pattern, reference)
    if match is None:
        raise ValueError(f"reference {reference!r} does not follow the {attribute} answer frame")
    return match.group(1)


def _closed_sentences(row: dict, quality: float, rng: random.Random) -> list[str]:
    attribute, key = reference_key(row["reference"])
    spec = ATTRIBUTES[attribute]
    wrong = rng.choice([v for v in spec["values"] if v != key])
    subject = _subject(row["reference"], attribute, key)  # "A banana", "The sky", "Honey"
    u = rng.random()
    if u < quality:
        value = key
    else:
        kind = rng.choices(["wrong", "hedge", "evasive"], weights=[2, 1, 1])[0]
        if kind == "evasive":
            return [rng.choice(EVASIVE_FRAMES)]
        value = wrong if kind == "wrong" else HEDGE_FRAME.format(v1=key, v2=wrong)
        if kind == "hedge" and rng.random() < 0.5:
            value = HEDGE_FRAME.format(v1=wrong, v2=key)
    form = rng.choices(["answer", "short", "bare"], weights=[3, 2, 1])[0]
    if form == "bare":
        return [_capitalise(value) + "."]
    return [spec[form].format(S=subject, v=value)]


def make_response(prompt_row: dict, quality: float, length: int, casual: bool, rng: random.Random) -> str:
    """A short English-like answer to `prompt_row`.

    quality: in [0, 1]. Open prompts: each of 4-5 content words is on-topic with probability `quality`
        (else from two other topics), and on-topic words come from round(6 * quality) distinct words;
        with probability 0.3 * (1 - quality) a sentence is repeated. Closed prompts: the right value with
        probability `quality`, else a wrong value (1/2), a hedge naming two values (1/4) or an evasion (1/4).
    length: number of neutral filler units (0-4 is the useful range): a leading "In general,"-style
        phrase and closing sentences such as "I hope this helps.". Gold changes only through the
        repetition ratio of answers that repeat a sentence (see `gold_score`).
    casual: end the answer with "lol !!", "haha !!" or "omg !!" (the disputed style).
    The content is drawn from `rng` before fillers and marker, so the same rng state with a different
    `length` or `casual` gives the same content.
    """
    if not 0.0 <= quality <= 1.0:
        raise ValueError(f"quality must be in [0, 1], got {quality}")
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    if prompt_row["query_type"] == "closed":
        sentences = _closed_sentences(prompt_row, quality, rng)
    else:
        sentences = _open_sentences(prompt_row, quality, rng)
    filler_rng = random.Random(rng.random())  # fillers and marker never shift the content stream
    n_prefix = 1 if length > 0 and filler_rng.random() < 0.5 else 0
    suffixes = filler_rng.sample(SUFFIX_FILLERS, min(length - n_prefix, len(SUFFIX_FILLERS)))
    if n_prefix:
        prefix = filler_rng.choice(PREFIX_FILLERS)
        first = sentences[0] if sentences[0].startswith("I ") else sentences[0][0].lower() + sentences[0][1:]
        sentences[0] = prefix + " " + first
    sentences = sentences + suffixes
    marker = filler_rng.choice(CASUAL_WORDS)
    if casual:
        sentences[-1] = sentences[-1][:-1] + " " + marker + " !!"
    return " ".join(sentences)


# ---------------------------------------------------------------------------------------------------
# SFT and preference data
# ---------------------------------------------------------------------------------------------------


def _sft_quality(rng: random.Random) -> float:
    """Mostly decent but imperfect: 0.25 + 0.6 * Beta(2, 2), mean 0.55, in [0.25, 0.85]."""
    return 0.25 + 0.6 * rng.betavariate(2, 2)


def _sft_length(rng: random.Random) -> int:
    return rng.choices([0, 1, 2, 3], weights=[0.3, 0.3, 0.25, 0.15])[0]


def sft_rows(seed: int = 0, n: Optional[int] = None, split: str = "train") -> list[dict]:
    """Supervised fine-tuning rows `{"prompt", "response"}` built from one split's prompts (train by default).

    Quality 0.25 + 0.6 * Beta(2, 2) (mean 0.55: decent but imperfect, so RL has headroom), 0-3 filler
    units, casual marker on 20% of the responses. Default n: 3000 (train), 500 (test).
    """
    prompts = prompt_rows(split)
    n = _DEFAULT_SFT_ROWS[split] if n is None else n
    rng = random.Random(f"sft:{split}:{seed}")
    rows = []
    for _ in range(n):
        row = rng.choice(prompts)
        response = make_response(row, _sft_quality(rng), _sft_length(rng), rng.random() < 0.2, rng)
        rows.append({"prompt": row["prompt"], "response": response})
    return rows


def annotator_utility(prompt_row: dict, response: str, annotator: str) -> float:
    """u = QUALITY_WEIGHT * gold + LENGTH_WEIGHT * words / 10 + s * casual, s by annotator group."""
    return _utility(gold_score(prompt_row, response), n_words(response), is_casual(response), annotator)


def _utility(gold: float, words: int, casual: bool, annotator: str) -> float:
    if annotator not in ("formal", "casual"):
        raise ValueError(f"annotator must be 'formal' or 'casual', got {annotator!r}")
    s = CASUAL_GROUP_WEIGHT if annotator == "casual" else FORMAL_GROUP_WEIGHT
    return QUALITY_WEIGHT * gold + LENGTH_WEIGHT * words / 10 + s * float(casual)


def _pair(row: dict, kind: str, rng: random.Random) -> tuple[str, str]:
    q1, q2 = rng.random(), rng.random()
    l1, l2 = rng.randint(0, 3), rng.randint(0, 3)
    c1, c2 = rng.random() < 0.35, rng.random() < 0.35
    s1, s2 = rng.random(), rng.random()  # content seeds
    if kind == "casual_only":
        q2, l2, s2, (c1, c2) = q1, l1, s1, rng.choice([(True, False), (False, True)])
    elif kind == "casual_length":
        q2, s2, (c1, c2) = q1, s1, rng.choice([(True, False), (False, True)])
        while l2 == l1:
            l2 = rng.randint(0, 3)
    elif kind == "length_only":
        q2, c2, s2 = q1, c1, s1
        while l2 == l1:
            l2 = rng.randint(0, 3)
    elif kind == "quality_only":
        l2, c2 = l1, c1
    y1 = make_response(row, q1, l1, c1, random.Random(s1))
    y2 = make_response(row, q2, l2, c2, random.Random(s2))
    return y1, y2


def preference_rows(split: str, seed: int = 0, n: Optional[int] = None, *, rationality: float = 1.0,
                    casual_share: float = 0.5, pair_kinds: Optional[dict[str, float]] = None) -> list[dict]:
    """Preference rows of one split (pairs on that split's prompts). Default n: 4000 train, 1000 test.

    rationality: the annotators' Boltzmann rationality beta; the first response wins with probability
    sigmoid(beta * (u1 - u2)). 1.0 is the default data; larger values give less Bradley-Terry label
    noise on the pairs both groups agree on, while the disputed pairs still split between the groups.
    casual_share: the probability that a pair's annotator is from the casual group.
    pair_kinds: weights of the pair kinds (default `PAIR_KINDS`; see `PAIR_KIND_NAMES`).

    Columns: prompt, chosen, rejected; annotator ("formal"|"casual"); disputed (the two responses differ
    in the casual marker, so the groups would disagree); gold_chosen, gold_rejected; len_chosen,
    len_rejected (words); casual_chosen, casual_rejected; pair_kind; query_type; p_chosen, the
    probability that an annotator drawn from the pool prefers chosen (`pooled_win_probability`: what the
    best annotator-blind model predicts; p_chosen > 0.5 is its right answer).
    Labels follow the annotator model of the module docstring. chosen != rejected, never empty.
    """
    if not rationality > 0:
        raise ValueError(f"rationality must be > 0, got {rationality}")
    if not 0 <= casual_share <= 1:
        raise ValueError(f"casual_share must be in [0, 1], got {casual_share}")
    pair_kinds = PAIR_KINDS if pair_kinds is None else pair_kinds
    unknown = sorted(set(pair_kinds) - set(PAIR_KIND_NAMES))
    if unknown or not sum(pair_kinds.values()) > 0 or min(pair_kinds.values()) < 0:
        raise ValueError(f"pair_kinds: need non-negative weights, some positive, of {PAIR_KIND_NAMES}; got {pair_kinds}")
    prompts = prompt_rows(split)
    n = _DEFAULT_PREFERENCE_ROWS[split] if n is None else n
    rng = random.Random(f"preferences:{split}:{seed}")
    kinds, weights = list(pair_kinds), list(pair_kinds.values())
    rows = []
    while len(rows) < n:
        row = rng.choice(prompts)
        kind = rng.choices(kinds, weights=weights)[0]
        y1, y2 = _pair(row, kind, rng)
        if y1 == y2:
            continue
        # equal shares draw one bit, as builtin:preferences always has (its rows stay the same)
        annotator = rng.choice(GROUPS) if casual_share == 0.5 else GROUPS[rng.random() < casual_share]
        (g1, n1, c1), (g2, n2, c2) = [(gold_score(row, y), n_words(y), is_casual(y)) for y in (y1, y2)]
        margin = rationality * (_utility(g1, n1, c1, annotator) - _utility(g2, n2, c2, annotator))
        if rng.random() >= 1 / (1 + math.exp(-margin)):  # Bradley-Terry draw: y1 wins w.p. sigmoid(margin)
            (y1, g1, n1, c1), (y2, g2, n2, c2) = (y2, g2, n2, c2), (y1, g1, n1, c1)
        rows.append({
            "prompt": row["prompt"], "chosen": y1, "rejected": y2,
            "annotator": annotator, "disputed": c1 != c2,
            "gold_chosen": g1, "gold_rejected": g2, "len_chosen": n1, "len_rejected": n2,
            "casual_chosen": c1, "casual_rejected": c2,
            "pair_kind": kind, "query_type": row["query_type"],
            "p_chosen": pooled_win_probability((g1, n1, c1), (g2, n2, c2), rationality, casual_share),
        })
    return rows


def hidden_context_rows(split: str, seed: int = 0, n: Optional[int] = None) -> list[dict]:
    """`builtin:hidden-context`: `preference_rows` with the `HIDDEN_CONTEXT` annotators and pair mix.
    Default n: 20000 train, 1000 test."""
    return preference_rows(split, seed=seed, n=_HIDDEN_CONTEXT_ROWS[split] if n is None else n, **HIDDEN_CONTEXT)


def pooled_win_probability(first: tuple[float, int, bool], second: tuple[float, int, bool],
                           rationality: float = 1.0, casual_share: float = 0.5) -> float:
    """P(first beats second) for an annotator drawn from the pool, each response given as (gold, words, casual):
        casual_share * sigmoid(beta * m_casual) + (1 - casual_share) * sigmoid(beta * m_formal)
    with m_group = u_group(first) - u_group(second) and beta the rationality. A scalar reward cannot know
    the annotator, so predicting `first` iff this exceeds 0.5 is the best it can do (the Bayes ceiling)."""
    p = 0.0
    for group, share in (("casual", casual_share), ("formal", 1.0 - casual_share)):
        m = _utility(*first, group) - _utility(*second, group)
        p += share / (1 + math.exp(-rationality * m))
    return p


def corpus_texts() -> list[str]:
    """Texts for training the built-in tokenizer: every prompt and reference (train and test), every
    word of the world, the fillers and markers, and sample responses to every prompt."""
    texts = []
    rows = _all_prompt_rows()
    texts += [r["prompt"] for r in rows]
    texts += sorted({r["reference"] for r in rows if r["reference"]})
    texts += [" ".join(ws) + " " + t for t, ws in TOPICS.items()]
    texts += [" ".join(a["values"]) for a in ATTRIBUTES.values()]
    texts += list(PREFIX_FILLERS + SUFFIX_FILLERS + EVASIVE_FRAMES) + [f"{m} !!" for m in CASUAL_WORDS]
    texts += [" ".join(sorted(NEUTRAL_WORDS))]
    rng = random.Random("corpus")
    for _ in range(4):
        for r in rows:
            texts.append(make_response(r, rng.random(), rng.randint(0, 3), rng.random() < 0.3, rng))
    return texts


def query_type_accuracy() -> dict:
    """`actors.query_type.accuracy` of the rule-based classifier on the labelled built-in prompts, per
    split and on both together (`python -m orchestrator.builtin.world query-type`)."""
    from actors.query_type import accuracy

    splits = {s: prompt_rows(s) for s in SPLITS}
    report = {s: accuracy(rows) for s, rows in splits.items()}
    report["all"] = accuracy([r for rows in splits.values() for r in rows])
    return report


if __name__ == "__main__":
    import json
    import sys

    if sys.argv[1:] != ["query-type"]:
        raise SystemExit("usage: python -m orchestrator.builtin.world query-type")
    print(json.dumps(query_type_accuracy(), indent=2))
