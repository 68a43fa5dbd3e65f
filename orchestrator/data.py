"""Prompt, preference and SFT datasets: read, validate, render (`actors.rendering`), tokenize, limit length, collate prompts.

Sources (`DataConfig.path`)
    FILE.jsonl      one JSON object per line; blank lines are skipped; errors name the 1-based line
    FILE.json       a JSON array of objects (errors name the 1-based row), or the JSON-lines layout
    FILE.parquet    one row per record (errors name the 1-based row)
    FOLDER/         every .parquet/.jsonl/.json shard under it (under `data.data_dir` if set), sorted by
                    path; when shard paths name splits as the Hub lays them out (data/train-00000-of-00002.parquet,
                    test/part-0.jsonl), only the shards of `split` are read
    builtin:NAME    the built-in task data (`prompts`, `closed-prompts`, `preferences`, `hidden-context`, `sft`), split `DataConfig.split`
    anything else   a Hugging Face hub dataset or builder: `datasets.load_dataset(name, data.subset,
                    data_files=data.data_files, data_dir=data.data_dir, split=data.split)`; the split
                    may slice, e.g. train[:1000] or train[:10%] (and `json` with data.data_files reads
                    local files through the datasets library)
A local file is one split: `split` applies to folders, builtin and hub data.

Prompt rows (`load_prompts`)
    prompt      a non-empty string, or a chat list (as `messages`)
    messages    a chat list [{"role", "content"}], roles system/user/assistant. If it ends with an
                assistant turn, that turn is removed from the prompt and becomes the row's `reference`
                when the row has none (so an SFT-style chat file works as a prompt set). After that the
                last turn must be the user's.
    reference   optional string or null: an answer, for the relevance reward
    query_type  optional "open" | "closed" | null
  Output columns: prompt (the plain question: the string, or the last user turn), chat (the whole prompt
  as a chat list when it was given as a chat; null for a prompt given as one string), prompt_text, prompt_ids, reference, query_type, then every other input column
  unchanged (e.g. topic, messages).

Preference rows (`load_preferences`)
    prompt + chosen + rejected: prompt a string or chat list; chosen and rejected strings, or chat lists
        ending in one assistant message (a chat list that repeats the prompt's messages first, as in
        UltraFeedback, is fine: the repeated prefix is removed).
    chosen + rejected only, the Anthropic HH-RLHF layout: whole dialogues "\\n\\nHuman: ...\\n\\nAssistant:
        ..." that share a prefix. They are split at the last "\\n\\nAssistant:" of the shared prefix into
        the prompt (a multi-turn chat list) and the two final assistant answers (whitespace-stripped).
        The same holds for two chat lists sharing their leading messages.
  Output columns: prompt (plain: the string or the last user turn), chat, prompt_text, prompt_ids, chosen,
  rejected (the response texts), chosen_ids, rejected_ids (each ending with the eos token), then every
  other input column unchanged. The reward model and DPO collate them with `actors.pairs.collate_pairs`.

SFT rows (`load_sft`)
    prompt (a string or chat list) + response (a string; `completion` is accepted too), or a chat
    `messages` list whose last turn is the assistant's answer (the turns before it are the prompt).
  Output columns: prompt, chat, prompt_text, prompt_ids, response, response_ids (ending with the eos
  token), then every other input column unchanged.

Rendering and tokenizing
    `actors.rendering.Rendering(tokenizer, DataConfig.chat_template)`, the one rendering every model
    input goes through: with a chat template, prompt_text = `apply_chat_template(messages,
    add_generation_prompt=True)` tokenized without added special tokens; without one, a prompt given
    as a string is used verbatim (the tokenizer adds its usual special tokens, e.g. BOS) and a prompt
    given as a chat (messages, a chat list, HH-RLHF dialogues; one turn or many) is written in the
    HH-RLHF layout "\n\nHuman: ...\n\nAssistant:".
    Responses are tokenized alone, without special tokens, and get the eos token appended.

Length limits (`max_prompt_tokens`, `max_response_tokens`, `on_long`)
    drop:     rows whose prompt or either response is too long are dropped.
    truncate: prompts keep their last max_prompt_tokens tokens (the generation prompt survives; the
              prompt_text is re-decoded from the kept ids), responses keep their first
              max_response_tokens tokens (a cut response loses its eos, as it is unfinished). A pair
              whose chosen and rejected ids become identical when cut is dropped (it would teach
              nothing) and counted as dropped_long.

Malformed rows (`on_error`)
    raise: stop with a `DataError`, one line naming file, line/row and field:
           "data/prefs.jsonl line 7: field 'rejected' is missing".
    skip:  drop the row, count it under its reason in `DataStats.skipped`, and log the counts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional, Sequence

if TYPE_CHECKING:  # heavy imports stay inside functions: `rlhf --help` imports this module
    import datasets
    import torch

    from actors.types import PromptBatch

    from orchestrator.config import DataConfig

from actors.config import first_line
from actors.rendering import HH_ASSISTANT, ROLES, Rendering, RenderError

logger = logging.getLogger("rlhf.data")

QUERY_TYPES = ("open", "closed")
ANSWERS = {"prompt": (), "preference": ("chosen", "rejected"), "sft": ("response",)}
"""The response fields of each kind of data."""
HH_HUMAN = "\n\nHuman:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant|System):")
_LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet")

Row = tuple[str, dict]
"""A source row with its label: ("data/prefs.jsonl line 7", {"prompt": ..., ...})."""


# ---------------------------------------------------------------------------------------------
# Errors and statistics


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
    """What loading a dataset did. rows_read == kept + dropped_long + sum(skipped.values())."""

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


# ---------------------------------------------------------------------------------------------
# Reading raw rows


def read_rows(
    path: str,
    split: str = "train",
    *,
    max_rows: int = 0,
    on_error: str = "raise",
    stats: DataStats | None = None,
    subset: str = "",
    data_files: Sequence[str] = (),
    data_dir: str = "",
) -> list[Row]:
    """The rows of a source (see the module doc), each with its label, e.g. ("x.jsonl line 7", {...}).

    Only reading errors are handled here (invalid JSON, a line that is not a JSON object); field
    checks belong to the loaders. max_rows > 0 stops after that many rows. With on_error='skip' bad
    lines are counted in `stats.skipped`; with 'raise' the first one raises `DataError`. Errors that
    make the whole source unreadable (missing file, unreachable hub dataset) always raise. subset,
    data_files and data_dir select within a hub dataset (data_dir also within a local folder).
    """
    stats = stats if stats is not None else DataStats()
    rows: list[Row] = []
    n_read = 0
    for where, value in _source_rows(path, split, subset, tuple(data_files), data_dir):
        if max_rows and n_read >= max_rows:
            break
        n_read += 1
        stats.rows_read += 1
        if not isinstance(value, DataError) and not isinstance(value, dict):
            value = DataError(where, "is not a JSON object", detail=f"got {_type_name(value)}")
        if isinstance(value, DataError):
            if on_error == "raise":
                raise value
            stats.skip(value)
            continue
        rows.append((where, value))
    return rows


def _source_rows(path: str, split: str, subset: str = "", data_files: tuple = (), data_dir: str = "") -> Iterator[tuple[str, Any]]:
    """Yield (label, parsed row or DataError) for every row of the source."""
    if path.startswith("builtin:"):
        yield from _builtin_rows(path, split)
        return
    if not _is_local(path):
        yield from _hub_rows(path, split, subset, data_files, data_dir)
        return
    if os.path.isdir(path):
        for shard in _folder_shards(path, split, data_dir):
            yield from _file_rows(shard)
        return
    if not os.path.exists(path):
        raise DataError(path, "file not found")
    yield from _file_rows(path)


def _file_rows(path: str) -> Iterator[tuple[str, Any]]:
    if path.endswith(".parquet"):
        yield from _parquet_rows(path)
    elif path.endswith((".json", ".jsonl")):
        yield from _json_rows(path)
    else:
        raise DataError(path, "has an unsupported file type; use .json, .jsonl or .parquet")


def _folder_shards(folder: str, split: str, data_dir: str = "") -> list[str]:
    """The data files under `folder` (or its `data_dir`), only those of `split` when paths name splits."""
    root = os.path.join(folder, data_dir) if data_dir else folder
    if not os.path.isdir(root):
        raise DataError(root, "folder not found (data.data_dir)")
    shards = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.endswith(_LOCAL_SUFFIXES))
    if not shards:
        raise DataError(root, "is a folder without .parquet, .jsonl or .json files")
    name = re.escape(split.split("[", 1)[0])
    of_split = [p for p in shards if re.search(rf"(^|[/_.-]){name}([/_.-]|$)", os.path.relpath(p, root))]
    named = [p for p in shards if re.search(r"(^|[/_.-])(train|test|validation|valid|dev|eval)([/_.-]|$)", os.path.relpath(p, root))]
    if of_split:
        return of_split
    if named:
        raise DataError(root, f"has shards named by split but none for split '{split}'",
                        detail=f"e.g. {os.path.relpath(named[0], root)}; set data.split / data.eval_split")
    return shards


def _json_rows(path: str) -> Iterator[tuple[str, Any]]:
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte order mark
        data = data[3:]
    if data.lstrip()[:1] == b"[":
        try:
            rows = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(path, "is not UTF-8 text", detail=f"byte {e.start}") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {e.lineno} column {e.colno}", "invalid JSON", detail=e.msg) from None
        for i, row in enumerate(rows, start=1):
            yield f"{path} row {i}", row
        return
    # JSON lines. Split on b"\n" only: a raw U+2028 is legal inside a JSON string.
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        where = f"{path} line {lineno}"
        try:
            yield where, json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            yield where, DataError(where, "is not UTF-8 text", detail=f"byte {e.start} of the line")
        except json.JSONDecodeError as e:
            yield where, DataError(where, "invalid JSON", detail=f"{e.msg} at column {e.colno}")


def _parquet_rows(path: str) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=4096)
        i = 0
        for batch in batches:
            for row in batch.to_pylist():
                i += 1
                yield f"{path} row {i}", row
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(path, "cannot be read as Parquet", detail=first_line(e)) from None


def _builtin_rows(path: str, split: str) -> Iterator[tuple[str, Any]]:
    name = path[len("builtin:"):]
    try:
        from orchestrator.builtin import builtin_rows
    except ImportError as e:
        raise DataError(path, "built-in data is not available", detail=first_line(e)) from None
    try:
        rows = builtin_rows(name, split)
    except (KeyError, ValueError) as e:
        raise DataError(path, f"unknown built-in dataset or split '{split}'", detail=first_line(e)) from None
    for i, row in enumerate(rows, start=1):
        yield f"{path}[{split}] row {i}", row


def _hub_rows(name: str, split: str, subset: str = "", data_files: tuple = (), data_dir: str = "") -> Iterator[tuple[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(name, subset or None, data_files=list(data_files) or None, data_dir=data_dir or None,
                                   split=split)
    except Exception as e:  # noqa: BLE001  (network, auth, missing split, bad name: all one message)
        chosen = ", ".join(f"{k}={v}" for k, v in (("subset", subset), ("data_dir", data_dir)) if v)
        raise DataError(
            name,
            f"cannot load split '{split}'{f' ({chosen})' if chosen else ''} from the Hugging Face hub",
            detail=f"{type(e).__name__}: {first_line(e)}; a local file needs a .json, .jsonl or .parquet name",
        ) from None
    label = f"{name}{f'/{subset}' if subset else ''}[{split}]"
    for i, row in enumerate(ds, start=1):
        yield f"{label} row {i}", row


# ---------------------------------------------------------------------------------------------
# Validating rows


@dataclass
class _Parsed:
    """A validated row before tokenizing."""

    where: str
    messages: list[dict]  # the prompt as a chat
    prompt: str  # plain prompt: the string, or the last user turn
    chat_given: bool  # the prompt came as a chat (messages, a chat list, HH dialogues), not as one string
    prompt_field: str  # the field the prompt came from (named by template errors)
    extras: dict
    reference: Optional[str] = None
    query_type: Optional[str] = None
    chosen: str = ""
    rejected: str = ""
    response: str = ""


def _parse_messages(where: str, name: str, value: Any) -> list[dict]:
    if not isinstance(value, list):
        raise DataError(where, "must be a list of {role, content} messages", name, f"got {_type_name(value)}")
    if not value:
        raise DataError(where, "is empty", name)
    out = []
    for i, m in enumerate(value):
        item = f"{name}[{i}]"
        if not isinstance(m, dict):
            raise DataError(where, "must be a {role, content} object", item, f"got {_type_name(m)}")
        if m.get("role") is None:
            raise DataError(where, "is missing", f"{item}.role")
        if m["role"] not in ROLES:
            raise DataError(where, "must be one of 'system', 'user', 'assistant'", f"{item}.role", f"got {_short(m['role'])}")
        if m.get("content") is None:
            raise DataError(where, "is missing", f"{item}.content")
        if not isinstance(m["content"], str):
            raise DataError(where, "must be a string", f"{item}.content", f"got {_type_name(m['content'])}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _prompt_value(where: str, name: str, value: Any) -> list[dict]:
    """A prompt given as a string or a chat list, as a chat list whose last turn is the user's."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(where, "is empty", name)
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise DataError(where, "must be a string or a list of messages", name, f"got {_type_name(value)}")
    messages = _parse_messages(where, name, value)
    if messages[-1]["role"] != "user":
        raise DataError(where, "must end with a user turn", name, f"last role is '{messages[-1]['role']}'")
    return messages


def _last_user(messages: list[dict]) -> str:
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


def _parse_prompt_row(where: str, row: dict) -> _Parsed:
    reference = row.get("reference")
    if "messages" in row and row["messages"] is not None:
        name = "messages"
        messages = _parse_messages(where, name, row["messages"])
        if messages[-1]["role"] == "assistant":  # SFT-style chat: its answer is the reference
            final = messages.pop()
            reference = reference if reference is not None else final["content"]
        if not messages or messages[-1]["role"] != "user":
            raise DataError(where, "must end with a user turn (or a user turn then one assistant turn)", name)
    elif row.get("prompt") is not None:
        name = "prompt"
        messages = _prompt_value(where, name, row["prompt"])
    else:
        raise DataError(where, "is missing", "prompt", "a prompt row needs 'prompt' or 'messages'")
    # an explicit plain `prompt` string next to `messages` stays the plain prompt
    prompt = row["prompt"] if isinstance(row.get("prompt"), str) and row["prompt"].strip() else _last_user(messages)
    if reference is not None and not isinstance(reference, str):
        raise DataError(where, "must be a string or null", "reference", f"got {_type_name(reference)}")
    query_type = row.get("query_type")
    if query_type is not None and query_type not in QUERY_TYPES:
        raise DataError(where, "must be 'open', 'closed' or null", "query_type", f"got {_short(query_type)}")
    extras = {k: v for k, v in row.items() if k not in ("prompt", "reference", "query_type")}
    chat_given = name == "messages" or isinstance(row["prompt"], list)
    return _Parsed(where, messages, prompt, chat_given, name, extras, reference=reference, query_type=query_type)


def _parse_preference_row(where: str, row: dict) -> _Parsed:
    for name in ("chosen", "rejected"):
        if row.get(name) is None:
            raise DataError(where, "is missing", name)
        if not isinstance(row[name], (str, list)):
            raise DataError(where, "must be a string or a list of messages", name, f"got {_type_name(row[name])}")
    chosen, rejected = row["chosen"], row["rejected"]
    if row.get("prompt") is not None:
        messages = _prompt_value(where, "prompt", row["prompt"])
        chosen = _response(where, "chosen", chosen, messages)
        rejected = _response(where, "rejected", rejected, messages)
        prompt_field = "prompt"
    elif isinstance(chosen, str) and isinstance(rejected, str):
        if HH_ASSISTANT not in chosen and HH_ASSISTANT not in rejected:
            raise DataError(where, "is missing", "prompt", "and 'chosen'/'rejected' are not HH-RLHF '\\n\\nHuman: ... \\n\\nAssistant: ...' dialogues")
        messages, chosen, rejected = _split_hh(where, chosen, rejected)
        prompt_field = "chosen"
    elif isinstance(chosen, list) and isinstance(rejected, list):
        messages, chosen, rejected = _split_chats(where, chosen, rejected)
        prompt_field = "chosen"
    else:
        raise DataError(where, "is missing", "prompt", "'chosen' and 'rejected' mix a string and a chat list")
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.strip():
            raise DataError(where, "is empty", name)
    if chosen.strip() == rejected.strip():
        raise DataError(where, "is identical to 'chosen'", "rejected")
    extras = {k: v for k, v in row.items() if k not in ("prompt", "chosen", "rejected")}
    prompt = row["prompt"] if isinstance(row.get("prompt"), str) else _last_user(messages)
    chat_given = not isinstance(row.get("prompt"), str)
    return _Parsed(where, messages, prompt, chat_given, prompt_field, extras, chosen=chosen, rejected=rejected)


def _parse_sft_row(where: str, row: dict) -> _Parsed:
    """prompt + response (or completion), or a chat `messages` list whose last turn is the assistant's answer."""
    if row.get("prompt") is None and isinstance(row.get("messages"), list):
        messages = _parse_messages(where, "messages", row["messages"])
        if messages[-1]["role"] != "assistant":
            raise DataError(where, "must end with the assistant turn to learn", "messages", f"last role is '{messages[-1]['role']}'")
        response = messages.pop()["content"]
        if not messages or messages[-1]["role"] != "user":
            raise DataError(where, "must have a user turn right before the final assistant turn", "messages")
        prompt_field = "messages"
    elif row.get("prompt") is not None:
        messages = _prompt_value(where, "prompt", row["prompt"])
        name = "response" if "response" in row or "completion" not in row else "completion"
        if row.get(name) is None:
            raise DataError(where, "is missing", "response", "an SFT row needs 'prompt' + 'response' (or 'completion'), or 'messages'")
        response = _response(where, name, row[name], messages)
        prompt_field = "prompt"
    else:
        raise DataError(where, "is missing", "prompt", "an SFT row needs 'prompt' + 'response' (or 'completion'), or 'messages'")
    if not response.strip():
        raise DataError(where, "is empty", "response")
    extras = {k: v for k, v in row.items() if k not in ("prompt", "response", "completion")}
    prompt = row["prompt"] if isinstance(row.get("prompt"), str) else _last_user(messages)
    chat_given = not isinstance(row.get("prompt"), str)
    return _Parsed(where, messages, prompt, chat_given, prompt_field, extras, response=response)


def _response(where: str, name: str, value: str | list, prompt: list[dict]) -> str:
    """A response given as a string, or as a chat list that may repeat the prompt's messages first."""
    if isinstance(value, str):
        return value
    messages = _parse_messages(where, name, value)
    if messages[: len(prompt)] == prompt:
        messages = messages[len(prompt):]
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        roles = ", ".join(m["role"] for m in messages) or "none"
        raise DataError(where, "must hold exactly one assistant message after the prompt", name, f"got roles: {roles}")
    return messages[0]["content"]


def _split_hh(where: str, chosen: str, rejected: str) -> tuple[list[dict], str, str]:
    """HH-RLHF: split two dialogues at the last '\\n\\nAssistant:' of their shared prefix."""
    if not chosen.strip():
        raise DataError(where, "is empty", "chosen")
    if not rejected.strip():
        raise DataError(where, "is empty", "rejected")
    if chosen == rejected:
        raise DataError(where, "is identical to 'chosen'", "rejected")
    # some copies of HH drop the leading blank lines
    chosen, rejected = (("\n\n" + t) if t.startswith("Human:") else t for t in (chosen, rejected))
    cut = os.path.commonprefix([chosen, rejected]).rfind(HH_ASSISTANT)
    if cut < 0:
        raise DataError(where, "shares no dialogue prefix with 'chosen' that ends in '\\n\\nAssistant:' (HH-RLHF layout)", "rejected")
    prompt_text = chosen[:cut]
    answers = []
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        answer = text[cut + len(HH_ASSISTANT):]
        if HH_HUMAN in answer:
            raise DataError(where, "continues the dialogue after the answer that differs (HH-RLHF layout: only the last turn may differ)", name)
        answers.append(answer.strip())
    parts = _HH_TURN.split(prompt_text)  # [text before the first turn, role, content, role, content, ...]
    if parts[0].strip():
        raise DataError(where, "does not start with a '\\n\\nHuman:' turn (HH-RLHF layout)", "chosen")
    role_of = {"Human": "user", "Assistant": "assistant", "System": "system"}
    messages = [{"role": role_of[r], "content": c.strip()} for r, c in zip(parts[1::2], parts[2::2])]
    if not messages or messages[-1]["role"] != "user":
        raise DataError(where, "has no '\\n\\nHuman:' turn right before the final '\\n\\nAssistant:' (HH-RLHF layout)", "chosen")
    return messages, answers[0], answers[1]


def _split_chats(where: str, chosen: list, rejected: list) -> tuple[list[dict], str, str]:
    """Two chat lists sharing their leading messages: the shared part is the prompt."""
    chosen_m = _parse_messages(where, "chosen", chosen)
    rejected_m = _parse_messages(where, "rejected", rejected)
    if chosen_m == rejected_m:
        raise DataError(where, "is identical to 'chosen'", "rejected")
    n = 0
    while n < min(len(chosen_m), len(rejected_m)) and chosen_m[n] == rejected_m[n]:
        n += 1
    if n == 0:
        raise DataError(where, "shares no prompt messages with 'chosen' (and there is no 'prompt' field)", "rejected")
    prompt = chosen_m[:n]
    if prompt[-1]["role"] != "user":
        raise DataError(where, "must differ from 'chosen' only in the final assistant message", "rejected")
    return prompt, _response(where, "chosen", chosen_m, prompt), _response(where, "rejected", rejected_m, prompt)


# ---------------------------------------------------------------------------------------------
# Loading


def load_prompts(cfg: "DataConfig", tokenizer, *, eval_set: bool = False) -> tuple["datasets.Dataset", DataStats]:
    """The prompt dataset of `cfg`, rendered, tokenized and length-limited.

    eval_set=True reads the evaluation set instead: `eval_path`/`eval_split`, or the `eval_split`
    of `path` when eval_path is empty (a `DataError` for a local file, which has one split only).

    Columns: prompt, chat, prompt_text, prompt_ids, reference, query_type, then the other input columns.
    Raises `DataError` on the first malformed row unless cfg.on_error == 'skip', and when no row is left.
    """
    return _nonempty(*_load("prompt", cfg, tokenizer, eval_set))


def load_preferences(cfg: "DataConfig", tokenizer, *, eval_set: bool = False) -> tuple["datasets.Dataset", DataStats]:
    """The preference dataset of `cfg`, rendered, tokenized and length-limited (eval_set as in `load_prompts`).

    Columns: prompt, chat, prompt_text, prompt_ids, chosen, rejected, chosen_ids, rejected_ids (responses
    end with eos unless truncated), then the other input columns. Errors as in `load_prompts`.
    """
    return _nonempty(*_load("preference", cfg, tokenizer, eval_set))


def load_sft(cfg: "DataConfig", tokenizer, *, eval_set: bool = False) -> tuple["datasets.Dataset", DataStats]:
    """The SFT dataset of `cfg` (prompt + response rows, or chats ending with the answer), rendered,
    tokenized and length-limited (eval_set as in `load_prompts`).

    Columns: prompt, chat, prompt_text, prompt_ids, response, response_ids (ending with eos unless
    truncated), then the other input columns. Errors as in `load_prompts`.
    """
    return _nonempty(*_load("sft", cfg, tokenizer, eval_set))


def _nonempty(dataset: "datasets.Dataset", stats: DataStats) -> tuple["datasets.Dataset", DataStats]:
    if stats.kept == 0:
        raise DataError(stats.source, "has no usable rows", detail=stats.counts())
    return dataset, stats


def _resolve_source(cfg: "DataConfig", eval_set: bool) -> tuple[str, str]:
    if not eval_set:
        return cfg.path, cfg.split
    if cfg.eval_path:
        return cfg.eval_path, cfg.eval_split
    if _is_local(cfg.path) and not os.path.isdir(cfg.path):
        raise DataError(cfg.path, f"is one file with no '{cfg.eval_split}' split; set data.eval_path for evaluation data")
    return cfg.path, cfg.eval_split


def _load(kind: str, cfg: "DataConfig", tokenizer, eval_set: bool) -> tuple["datasets.Dataset", DataStats]:
    path, split = _resolve_source(cfg, eval_set)
    one_file = _is_local(path) and not os.path.isdir(path)
    stats = DataStats(source=path if one_file else f"{path}[{split}]", kind=kind)
    hub = path == cfg.path  # subset, data_files and data_dir select within data.path, not within data.eval_path
    raw = read_rows(path, split, max_rows=cfg.max_rows, on_error=cfg.on_error, stats=stats,
                    subset=cfg.subset if hub else "", data_files=cfg.data_files if hub else (), data_dir=cfg.data_dir if hub else "")
    rendering = Rendering(tokenizer, cfg.chat_template)
    if ANSWERS[kind] and tokenizer.eos_token_id is None:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise DataError(f"tokenizer {name}", f"has no eos token; {kind} responses must end with one")

    parse = {"prompt": _parse_prompt_row, "preference": _parse_preference_row, "sft": _parse_sft_row}[kind]
    answers = ANSWERS[kind]  # the response fields of this kind
    rows: list[_Parsed] = []
    texts: list[str] = []
    for where, fields in raw:
        try:
            row = parse(where, fields)
            texts.append(_render(row, rendering))
        except DataError as e:
            if cfg.on_error == "raise":
                raise
            stats.skip(e)
            continue
        rows.append(row)

    prompt_ids = rendering.prompt_ids(texts)
    answer_ids = {name: rendering.response_ids([getattr(r, name) for r in rows]) for name in answers}
    for name, ids in answer_ids.items():
        setattr(stats, f"{name}_tokens", LengthStats.of([len(x) for x in ids]))
    if kind == "preference" and rows:
        stats.chosen_longer = sum(len(c) > len(r) for c, r in zip(answer_ids["chosen"], answer_ids["rejected"])) / len(rows)
    stats.prompt_tokens = LengthStats.of([len(x) for x in prompt_ids])

    max_p, max_r = cfg.max_prompt_tokens, cfg.max_response_tokens
    columns: dict[str, list] = {"prompt": [], "chat": [], "prompt_text": [], "prompt_ids": []}
    if kind == "prompt":
        columns.update(reference=[], query_type=[])
    for name in answers:
        columns.update({name: [], f"{name}_ids": []})
    kept: list[_Parsed] = []
    for i, row in enumerate(rows):
        p, text = prompt_ids[i], texts[i]
        ids = {name: answer_ids[name][i] for name in answers}
        if len(p) > max_p or any(len(x) > max_r for x in ids.values()):
            if cfg.on_long == "drop":
                stats.dropped_long += 1
                continue
            if len(p) > max_p:
                p = p[-max_p:]  # keep the end: the generation prompt
                text = tokenizer.decode(p, skip_special_tokens=False)
            ids = {name: x[:max_r] for name, x in ids.items()}  # keep the start of each answer
            if kind == "preference" and ids["chosen"] == ids["rejected"]:
                stats.dropped_long += 1
                continue
            stats.truncated += 1
        columns["prompt"].append(row.prompt)
        columns["chat"].append(row.messages if row.chat_given else None)
        columns["prompt_text"].append(text)
        columns["prompt_ids"].append(p)
        if kind == "prompt":
            columns["reference"].append(row.reference)
            columns["query_type"].append(row.query_type)
        for name in answers:
            columns[name].append(getattr(row, name))
            columns[f"{name}_ids"].append(ids[name])
        kept.append(row)
    stats.kept = len(kept)
    dataset = _to_dataset(columns, kept, stats.source)
    stats.log()
    if stats.dropped_long and cfg.on_long == "drop":
        logger.warning(
            "%s: dropped %d of %d rows over the length limits (prompt > %d or response > %d tokens); "
            "raise data.max_prompt_tokens / data.max_response_tokens or set data.on_long=truncate",
            stats.source, stats.dropped_long, stats.rows_read, max_p, max_r,
        )
    elif stats.dropped_long:
        logger.warning(
            "%s: dropped %d of %d pairs whose chosen and rejected became identical when cut to %d tokens",
            stats.source, stats.dropped_long, stats.rows_read, max_r,
        )
    return dataset, stats


def _render(row: _Parsed, rendering: Rendering) -> str:
    """The prompt as the policy sees it (`actors.rendering`); a template failure names the row."""
    try:
        return rendering.prompt_text(row.messages if row.chat_given else row.messages[0]["content"])
    except RenderError as e:
        raise DataError(row.where, "cannot be rendered by the tokenizer's chat template", row.prompt_field, first_line(e)) from None


def _to_dataset(columns: dict[str, list], rows: list[_Parsed], source: str) -> "datasets.Dataset":
    import datasets
    import pyarrow as pa

    ids = pa.list_(pa.int32())
    types = {"prompt": pa.string(), "prompt_text": pa.string(), "prompt_ids": ids, "reference": pa.string(),
             "query_type": pa.string(), "chosen": pa.string(), "rejected": pa.string(), "chosen_ids": ids, "rejected_ids": ids,
             "response": pa.string(), "response_ids": ids,
             "chat": pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))}
    arrays = {name: pa.array(values, type=types[name]) for name, values in columns.items()}
    extra_names: dict[str, None] = {}
    for row in rows:
        extra_names.update(dict.fromkeys(k for k in row.extras if k not in arrays))
    for name in extra_names:
        values = [row.extras.get(name) for row in rows]
        try:
            arrays[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            first = next((type(v) for v in values if v is not None), type(None))
            odd = next((i for i, v in enumerate(values) if v is not None and type(v) is not first), None)
            where = rows[odd].where if odd is not None else source
            raise DataError(where, f"has a different type than in earlier rows ({_TYPE_NAMES.get(first, first.__name__)})", name, first_line(e)) from None
    return datasets.Dataset.from_dict(arrays)


# ---------------------------------------------------------------------------------------------
# Batching


def collate_prompts(rows: Sequence[Mapping], pad_id: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Left-pad the `prompt_ids` of dataset rows into a batch, so every prompt ends at the last column.

    Returns:
        input_ids:      (B, P) long, pad_id then prompt tokens; P = longest prompt
        attention_mask: (B, P) long, 1 on prompt tokens, 0 on padding
    """
    import torch

    if not rows:
        raise ValueError("collate_prompts: no rows")
    seqs = [list(r["prompt_ids"]) for r in rows]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            input_ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            attention_mask[i, width - len(s):] = 1
    return input_ids, attention_mask


def to_prompt_batch(rows: Sequence[Mapping], pad_id: int) -> "PromptBatch":
    """Prompt rows of `load_prompts` -> the `PromptBatch` a policy samples from (left-padded ids, the
    plain prompts, the whole chats, references and query types)."""
    from actors.types import PromptBatch

    input_ids, attention_mask = collate_prompts(rows, pad_id)
    return PromptBatch(
        input_ids=input_ids,
        attention_mask=attention_mask.long(),
        prompts=[r["prompt"] for r in rows],
        messages=[r.get("chat") for r in rows],
        references=[r.get("reference") for r in rows],
        query_types=[r.get("query_type") for r in rows],
    )


# ---------------------------------------------------------------------------------------------
# `rlhf data check`


def add_data_check_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of `rlhf data check` (defaults from DataConfig)."""
    from orchestrator.config import DataConfig

    d = DataConfig()
    parser.add_argument("file", help="a .json/.jsonl/.parquet file, a hub dataset name, or builtin:prompts|builtin:preferences")
    parser.add_argument("--kind", choices=["prompt", "preference", "sft"], required=True, help="what the rows hold")
    parser.add_argument("--tokenizer", default="builtin", metavar="NAME_OR_PATH", help="tokenizer name or folder (default: the built-in one)")
    parser.add_argument("--split", default=d.split, help=f"split of a hub or builtin dataset (default {d.split})")
    parser.add_argument("--max-prompt-tokens", type=_positive_int, default=d.max_prompt_tokens, metavar="N",
                        help=f"longest prompt, in tokens after the chat template (default {d.max_prompt_tokens})")
    parser.add_argument("--max-response-tokens", type=_positive_int, default=d.max_response_tokens, metavar="N",
                        help=f"longest chosen/rejected response, in tokens with eos (default {d.max_response_tokens})")
    parser.add_argument("--on-long", choices=["drop", "truncate"], default=d.on_long, help=f"rows over the limits (default {d.on_long})")
    parser.add_argument("--on-error", choices=["raise", "skip"], default=d.on_error, help=f"malformed rows (default {d.on_error})")
    parser.add_argument("--no-chat-template", action="store_true", help="do not apply the tokenizer's chat template")
    parser.add_argument("--max-rows", type=_non_negative_int, default=0, metavar="N", help="check only the first N rows (0 = all)")


def run_data_check(args: argparse.Namespace) -> int:
    """Validate a whole dataset and print counts and token-length statistics.

    Exit code 0 when it is usable (with --on-error skip, skipped rows are reported, not fatal);
    2 on a malformed row (one line on stderr), an unreadable source or tokenizer, or no usable row.
    """
    from orchestrator.config import DataConfig

    cfg = DataConfig(
        path=args.file, split=args.split, max_prompt_tokens=args.max_prompt_tokens,
        max_response_tokens=args.max_response_tokens, on_long=args.on_long, on_error=args.on_error,
        chat_template=not args.no_chat_template, max_rows=args.max_rows,
    )
    try:
        tokenizer = _load_tokenizer(args.tokenizer)
    except Exception as e:  # noqa: BLE001
        print(f"rlhf: error: cannot load tokenizer '{args.tokenizer}' ({type(e).__name__}: {first_line(e)})", file=sys.stderr)
        return 2
    try:
        dataset, stats = _load(args.kind, cfg, tokenizer, eval_set=False)  # an empty result is reported below
    except DataError as e:
        print(f"rlhf: error: {e}", file=sys.stderr)
        return 2
    template = "on" if cfg.chat_template and getattr(tokenizer, "chat_template", None) else "off"
    print(f"{stats.source}: {args.kind} data, tokenizer {args.tokenizer}, chat template {template}, "
          f"limits prompt {cfg.max_prompt_tokens} / response {cfg.max_response_tokens} tokens (on_long={cfg.on_long})")
    print(stats.table())
    if len(dataset):
        print(f"  first row as the model sees it: {_short(dataset[0]['prompt_text'], 160)}")
    if stats.kept == 0:
        print(f"rlhf: error: {stats.source}: no usable rows ({stats.rows_read} read)", file=sys.stderr)
        return 2
    if stats.n_skipped:
        print(f"WARNING: {stats.n_skipped} of {stats.rows_read} rows were skipped as malformed (reasons above); "
              "they will be missing from training")
    else:
        print(f"OK: {stats.kept} of {stats.rows_read} rows usable")
    return 0


def _load_tokenizer(name: str):
    if name == "builtin":
        from orchestrator.builtin import builtin_tokenizer

        return builtin_tokenizer()
    try:
        from actors.modeling import load_tokenizer
    except ImportError:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    return load_tokenizer(name)


# ---------------------------------------------------------------------------------------------
# Small helpers


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _is_local(path: str) -> bool:
    """A local file (or a path meant as one), as opposed to builtin:NAME or a hub dataset name."""
    if path.startswith("builtin:"):
        return False
    return path.endswith(_LOCAL_SUFFIXES) or os.path.exists(path) or path.startswith(("/", ".", "~"))


def _percentile(sorted_xs: Sequence[int], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of sorted values."""
    pos = (len(sorted_xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


_TYPE_NAMES = {type(None): "null", str: "string", bool: "boolean", int: "number", float: "number", list: "list", dict: "object"}


def _type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(text: str) -> str:
    return " ".join(text.split("\n"))
