"""What loading a dataset found: `DataError` (a malformed row or an unreadable source, one line naming
the place) and `DataStats` (rows read, kept, dropped, truncated, skipped by reason; token lengths)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

logger = logging.getLogger("rlhf.data")

__all__ = ["DataError", "DataStats", "LengthStats", "type_name", "short"]


class DataError(ValueError):
    """A malformed row or an unreadable source. The message is one line and names the place.

    `where` is the file with line or row ("data/prefs.jsonl line 7") or the source; `field` the field
    at fault (None for e.g. invalid JSON); `reason` the message without place and details, used as
    the key of skip counts ("field 'rejected' is missing").
    """

    def __init__(self, where: str, problem: str, field: str | None = None, detail: str | None = None):
        self.where, self.problem, self.field, self.detail = where, problem, field, detail
        # counts group by field name, not by list position: messages[3].role -> messages[*].role
        key = re.sub(r"\[\d+\]", "[*]", field) if field else None
        self.reason = f"field '{key}' {problem}" if key else problem
        text = f"field '{field}' {problem}" if field else problem
        super().__init__(_one_line(f"{where}: {text}" + (f" ({detail})" if detail else "")))

    def __reduce__(self):  # picklable across Ray despite the custom __init__
        return (DataError, (self.where, self.problem, self.field, self.detail))


@dataclass
class LengthStats:
    """Token lengths of one field over the valid rows, before the length limit is applied."""

    count: int = 0
    min: int = 0
    mean: float = 0.0
    p50: float = 0.0
    p95: float = 0.0
    max: int = 0

    @classmethod
    def of(cls, lengths: Sequence[int]) -> "LengthStats":
        if not lengths:
            return cls()
        xs = sorted(lengths)
        return cls(len(xs), xs[0], sum(xs) / len(xs), _percentile(xs, 50), _percentile(xs, 95), xs[-1])


@dataclass
class DataStats:
    """What loading a dataset did. rows_read == kept + dropped_long + dropped_weight + sum(skipped.values())."""

    source: str = ""
    """Where the rows came from, e.g. 'data/prefs.jsonl' or 'builtin:preferences[train]'."""
    kind: str = ""
    """'prompt', 'preference' or 'sft'."""
    rows_read: int = 0
    """Rows in the source (JSONL: non-blank lines), up to max_rows."""
    kept: int = 0
    """Rows in the returned dataset."""
    dropped_long: int = 0
    """Rows removed by the length limit (see the module doc for truncate mode)."""
    dropped_weight: int = 0
    """Rows of weight 0 in data.weight_column, removed."""
    truncated: int = 0
    """Kept rows whose prompt or a response was cut to the limit."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Malformed rows skipped with on_error=skip, counted by reason."""
    prompt_tokens: LengthStats = field(default_factory=LengthStats)
    """Prompt length (after the chat template) over valid rows, before the length limit."""
    chosen_tokens: Optional[LengthStats] = None
    """Preference data: chosen response length (with eos), before the limit."""
    rejected_tokens: Optional[LengthStats] = None
    """Preference data: rejected response length (with eos), before the limit."""
    response_tokens: Optional[LengthStats] = None
    """SFT data: response length (with eos), before the limit."""
    chosen_longer: Optional[float] = None
    """Preference data: share of valid pairs whose chosen response has more tokens (a length-bias hint)."""

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip(self, error: DataError) -> None:
        self.skipped[error.reason] = self.skipped.get(error.reason, 0) + 1

    def counts(self) -> str:
        """The counts and skip reasons, one line."""
        text = (
            f"read {self.rows_read}, kept {self.kept}, dropped as too long {self.dropped_long}, "
            f"truncated {self.truncated}, skipped {self.n_skipped}"
        )
        if self.dropped_weight:
            text += f", dropped with weight 0 {self.dropped_weight}"
        if self.skipped:
            text += " [" + "; ".join(f"{r}: {n}" for r, n in sorted(self.skipped.items(), key=lambda kv: -kv[1])) + "]"
        return text

    def summary(self) -> str:
        """One line: source, kind, counts and skip reasons."""
        return f"{self.source} ({self.kind}): {self.counts()}"

    def table(self) -> str:
        """Counts and token-length statistics as a small text table (used by `rlhf data check`)."""
        lines = [
            f"  rows read           {self.rows_read:>8}",
            f"  kept                {self.kept:>8}",
            f"  dropped (too long)  {self.dropped_long:>8}",
            f"  truncated           {self.truncated:>8}",
            *([f"  dropped (weight 0)  {self.dropped_weight:>8}"] if self.dropped_weight else []),
            f"  skipped (malformed) {self.n_skipped:>8}",
        ]
        for reason, n in sorted(self.skipped.items(), key=lambda kv: -kv[1]):
            lines.append(f"    {n:>6}  {reason}")
        lines += ["", "  tokens (valid rows, before the length limit)", f"  {'':<10}{'min':>7}{'mean':>9}{'p50':>8}{'p95':>8}{'max':>7}"]
        for name in ("prompt", "chosen", "rejected", "response"):
            s = getattr(self, f"{name}_tokens")
            if s is not None and s.count:
                lines.append(f"  {name:<10}{s.min:>7}{s.mean:>9.1f}{s.p50:>8.1f}{s.p95:>8.1f}{s.max:>7}")
        if self.chosen_longer is not None:
            lines.append(f"  chosen has more tokens than rejected in {100 * self.chosen_longer:.0f}% of pairs")
        return "\n".join(lines)

    def log(self) -> None:
        logger.info(self.summary())
        if self.skipped:
            logger.warning("%s: skipped %d malformed rows of %d (on_error=skip)", self.source, self.n_skipped, self.rows_read)


def _percentile(sorted_xs: Sequence[int], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of sorted values."""
    pos = (len(sorted_xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


TYPE_NAMES = {type(None): "null", str: "string", bool: "boolean", int: "number", float: "number", list: "list", dict: "object"}


def type_name(value: Any) -> str:
    return TYPE_NAMES.get(type(value), type(value).__name__)


def short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(text: str) -> str:
    return " ".join(text.split("\n"))
