"""Validating rows: a prompt, preference or SFT row, in any of the layouts docs/your-model-and-data.md lists, becomes
a `Parsed` row (the prompt as a chat, the plain prompt, the answers), or a `DataError` naming the row and
field. `parse_messages` is the one check of a chat list (`rlhf serve reward` uses it too)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Optional

from actors.rendering import HH_ASSISTANT, ROLES
from orchestrator.data.stats import DataError, short, type_name

__all__ = ["Parsed", "PARSERS", "ANSWERS", "QUERY_TYPES", "parse_messages", "prompt_messages"]

QUERY_TYPES = ("open", "closed")
ANSWERS = {"prompt": (), "preference": ("chosen", "rejected"), "sft": ("response",)}
"""The response fields of each kind of data."""
HH_HUMAN = "\n\nHuman:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant|System):")


@dataclass
class Parsed:
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


def parse_messages(where: str, name: str, value: Any) -> list[dict]:
    if not isinstance(value, list):
        raise DataError(where, "must be a list of {role, content} messages", name, f"got {type_name(value)}")
    if not value:
        raise DataError(where, "is empty", name)
    out = []
    for i, m in enumerate(value):
        item = f"{name}[{i}]"
        if not isinstance(m, dict):
            raise DataError(where, "must be a {role, content} object", item, f"got {type_name(m)}")
        if m.get("role") is None:
            raise DataError(where, "is missing", f"{item}.role")
        if m["role"] not in ROLES:
            raise DataError(where, "must be one of " + ", ".join(f"'{r}'" for r in ROLES), f"{item}.role", f"got {short(m['role'])}")
        if m.get("content") is None:
            raise DataError(where, "is missing", f"{item}.content")
        if not isinstance(m["content"], str):
            raise DataError(where, "must be a string", f"{item}.content", f"got {type_name(m['content'])}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def prompt_messages(where: str, name: str, value: Any) -> list[dict]:
    """A prompt given as a string or a chat list, as a chat list whose last turn is the user's."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(where, "is empty", name)
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise DataError(where, "must be a string or a list of messages", name, f"got {type_name(value)}")
    messages = parse_messages(where, name, value)
    if messages[-1]["role"] != "user":
        raise DataError(where, "must end with a user turn", name, f"last role is '{messages[-1]['role']}'")
    return messages


def _last_user(messages: list[dict]) -> str:
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


def _parse_prompt_row(where: str, row: dict) -> Parsed:
    reference = row.get("reference")
    if "messages" in row and row["messages"] is not None:
        name = "messages"
        messages = parse_messages(where, name, row["messages"])
        if messages[-1]["role"] == "assistant":  # SFT-style chat: its answer is the reference
            final = messages.pop()
            reference = reference if reference is not None else final["content"]
        if not messages or messages[-1]["role"] != "user":
            raise DataError(where, "must end with a user turn (or a user turn then one assistant turn)", name)
    elif row.get("prompt") is not None:
        name = "prompt"
        messages = prompt_messages(where, name, row["prompt"])
    else:
        raise DataError(where, "is missing", "prompt", "a prompt row needs 'prompt' or 'messages'")
    # an explicit plain `prompt` string next to `messages` stays the plain prompt
    prompt = row["prompt"] if isinstance(row.get("prompt"), str) and row["prompt"].strip() else _last_user(messages)
    if reference is not None and not isinstance(reference, str):
        raise DataError(where, "must be a string or null", "reference", f"got {type_name(reference)}")
    query_type = row.get("query_type")
    if query_type is not None and query_type not in QUERY_TYPES:
        raise DataError(where, "must be 'open', 'closed' or null", "query_type", f"got {short(query_type)}")
    extras = {k: v for k, v in row.items() if k not in ("prompt", "reference", "query_type")}
    chat_given = name == "messages" or isinstance(row["prompt"], list)
    return Parsed(where, messages, prompt, chat_given, name, extras, reference=reference, query_type=query_type)


def _parse_preference_row(where: str, row: dict) -> Parsed:
    for name in ("chosen", "rejected"):
        if row.get(name) is None:
            raise DataError(where, "is missing", name)
        if not isinstance(row[name], (str, list)):
            raise DataError(where, "must be a string or a list of messages", name, f"got {type_name(row[name])}")
    chosen, rejected = row["chosen"], row["rejected"]
    if row.get("prompt") is not None:
        messages = prompt_messages(where, "prompt", row["prompt"])
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
    return Parsed(where, messages, prompt, chat_given, prompt_field, extras, chosen=chosen, rejected=rejected)


def _parse_sft_row(where: str, row: dict) -> Parsed:
    """prompt + response (or completion), or a chat `messages` list whose last turn is the assistant's answer."""
    if row.get("prompt") is None and isinstance(row.get("messages"), list):
        messages = parse_messages(where, "messages", row["messages"])
        if messages[-1]["role"] != "assistant":
            raise DataError(where, "must end with the assistant turn to learn", "messages", f"last role is '{messages[-1]['role']}'")
        response = messages.pop()["content"]
        if not messages or messages[-1]["role"] not in ("user", "tool"):
            raise DataError(where, "must have a user (or tool) turn right before the final assistant turn", "messages")
        prompt_field = "messages"
    elif row.get("prompt") is not None:
        messages = prompt_messages(where, "prompt", row["prompt"])
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
    return Parsed(where, messages, prompt, chat_given, prompt_field, extras, response=response)


def _response(where: str, name: str, value: str | list, prompt: list[dict]) -> str:
    """A response given as a string, or as a chat list that may repeat the prompt's messages first."""
    if isinstance(value, str):
        return value
    messages = parse_messages(where, name, value)
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
    chosen_m = parse_messages(where, "chosen", chosen)
    rejected_m = parse_messages(where, "rejected", rejected)
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


PARSERS = {"prompt": _parse_prompt_row, "preference": _parse_preference_row, "sft": _parse_sft_row}
"""The row parser of each kind of data."""
