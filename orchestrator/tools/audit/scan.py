"""What an audit finds without a model: the pairs in input order (`read_pairs`), duplicates after
normalising case, whitespace and punctuation (`duplicates`), answer lengths in words, and the effect of
length on the label (`length_bias`)."""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Optional, Sequence

from orchestrator.data.rows import PARSERS
from orchestrator.data.sources import read_rows
from orchestrator.data.stats import DataError, DataStats

__all__ = ["Pair", "read_pairs", "normalise", "words", "duplicates", "length_bias", "GROUP_COLUMNS"]

GROUP_COLUMNS = ("annotator", "annotator_id", "worker", "worker_id", "labeler", "labeller", "rater", "group", "source")
"""Columns an audit reports agreement by, the first one present (`--group-by` names another)."""


@dataclass
class Pair:
    """One input row of preference data."""

    row: int  # 0-based position among the rows read
    where: str  # "prefs.jsonl line 7"
    context: str = ""  # the prompt as plain text; a chat as "role: content" lines
    chosen: str = ""
    rejected: str = ""
    fields: dict = field(default_factory=dict)  # the row as read
    error: Optional[str] = None  # why the row is unusable (--on-error skip), else None

    @property
    def ok(self) -> bool:
        return self.error is None


def read_pairs(path: str, split: str = "train", *, on_error: str = "raise", max_rows: int = 0, subset: str = "",
               data_files: Sequence[str] = (), data_dir: str = "") -> tuple[list[Pair], DataStats]:
    """Every row of a preference source in input order, parsed as `rlhf rm` parses it
    (`orchestrator.data.rows`). A malformed row raises the `DataError` of `rlhf data check` (file, row,
    field) with on_error='raise'; with 'skip' it stays in its place with `error` set."""
    stats = DataStats(source=path, kind="preference")
    raw = read_rows(path, split, max_rows=max_rows, on_error=on_error, stats=stats, subset=subset,
                    data_files=data_files, data_dir=data_dir, keep_errors=True)
    parse = PARSERS["preference"]
    pairs = []
    for i, (where, value) in enumerate(raw):
        try:
            if isinstance(value, DataError):
                raise value
            parsed = parse(where, value)
        except DataError as e:
            if on_error == "raise":
                raise
            stats.skip(e)
            pairs.append(Pair(i, where, fields=value if isinstance(value, dict) else {}, error=str(e)))
            continue
        context = parsed.messages[0]["content"] if len(parsed.messages) == 1 else "\n".join(
            f"{m['role']}: {m['content']}" for m in parsed.messages)
        pairs.append(Pair(i, where, context, parsed.chosen, parsed.rejected, value))
    stats.kept = sum(p.ok for p in pairs)
    return pairs, stats


_WORD = re.compile(r"\w+")


def words(text: str) -> int:
    """Words of a text: runs of letters, digits or underscores (Unicode `\\w+`)."""
    return len(_WORD.findall(text))


def normalise(text: str) -> str:
    """Case folded, punctuation and symbols removed, whitespace runs made one space: the text duplicates are
    compared by ("Hello,  World!" and "hello world" are the same)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if ch.isspace() else ch for ch in text if not unicodedata.category(ch)[0] in "PS")
    return " ".join(text.split())


@dataclass
class Duplicates:
    duplicate_of: list  # per row: index of the first earlier row with the same normalised (prompt, chosen, rejected), else None
    exact: list  # per row: that earlier row is identical before normalising too
    swapped_of: list  # per row: index of the first earlier row with the same prompt and the two answers swapped, else None


def duplicates(pairs: Sequence[Pair]) -> Duplicates:
    """Duplicates by hand-checkable rules: a row is a duplicate of the FIRST earlier usable row whose
    prompt, chosen and rejected are equal after `normalise`; `exact` when they are equal as given.
    A row whose prompt matches an earlier row's with chosen and rejected swapped is a contradiction
    (`swapped_of`), not a duplicate."""
    first: dict[tuple, int] = {}
    first_exact: dict[tuple, int] = {}
    dup, exact, swapped = [], [], []
    for p in pairs:
        if not p.ok:
            dup.append(None), exact.append(False), swapped.append(None)
            continue
        key = (normalise(p.context), normalise(p.chosen), normalise(p.rejected))
        raw = (p.context, p.chosen, p.rejected)
        earlier = first.get(key)
        dup.append(earlier)
        exact.append(earlier is not None and first_exact.get(raw) is not None)
        swapped.append(first.get((key[0], key[2], key[1])) if key[1] != key[2] else None)
        first.setdefault(key, p.row)
        first_exact.setdefault(raw, p.row)
    return Duplicates(dup, exact, swapped)


def length_bias(chosen_words: Sequence[int], rejected_words: Sequence[int]) -> dict:
    """How answer length goes with the label.

    - chosen_longer_share: rows whose chosen answer has more words than the rejected one (of all rows);
      rejected_longer_share and equal_share the rest.
    - longer_wins: of the rows with unequal lengths, the share where the longer answer was chosen.
    - logit_per_10_words (and a 95% interval): the maximum-likelihood beta of the Bradley-Terry model
      whose only feature is length, P(chosen) = sigmoid(beta * (w_c - w_r) / 10), found by Newton's
      method; its standard error from the Fisher information. beta = 0: length does not move the label.
    """
    n = len(chosen_words)
    diffs = [(c - r) / 10.0 for c, r in zip(chosen_words, rejected_words)]
    longer = sum(d > 0 for d in diffs)
    shorter = sum(d < 0 for d in diffs)
    out = {"rows": n, "chosen_longer_share": longer / n if n else math.nan,
           "rejected_longer_share": shorter / n if n else math.nan,
           "equal_share": (n - longer - shorter) / n if n else math.nan,
           "longer_wins": longer / (longer + shorter) if longer + shorter else math.nan,
           "mean_words_chosen": sum(chosen_words) / n if n else math.nan,
           "mean_words_rejected": sum(rejected_words) / n if n else math.nan}
    beta, se = _logistic_no_intercept([d for d in diffs if d])
    out.update({"logit_per_10_words": beta, "logit_per_10_words_se": se,
                "logit_per_10_words_95": [beta - 1.96 * se, beta + 1.96 * se] if math.isfinite(se) else [math.nan, math.nan]})
    return out


def _logistic_no_intercept(x: Sequence[float], iters: int = 50) -> tuple[float, float]:
    """MLE of beta in P(y=1) = sigmoid(beta x) with every y = 1 (the chosen side), and its standard error.
    Diverges (returns +-inf) when every x has one sign: the longer answer always won, or always lost."""
    if not x:
        return math.nan, math.nan
    if all(v > 0 for v in x) or all(v < 0 for v in x):
        return (math.inf if x[0] > 0 else -math.inf), math.inf
    beta = 0.0
    for _ in range(iters):
        grad = hess = 0.0
        for v in x:
            p = 1.0 / (1.0 + math.exp(-beta * v)) if beta * v > -700 else 0.0
            grad += (1.0 - p) * v
            hess += p * (1.0 - p) * v * v
        step = grad / hess
        beta += step
        if abs(step) < 1e-12 * max(1.0, abs(beta)):
            break
    info = sum(v * v / (2.0 + math.exp(beta * v) + math.exp(-beta * v)) for v in x)
    return beta, 1.0 / math.sqrt(info) if info > 0 else math.inf
