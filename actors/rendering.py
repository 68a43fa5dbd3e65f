"""The one text rendering: a (prompt, response) pair -> the exact text and token ids a model sees.

Every path that turns text into model input goes through `Rendering`: data loading (prompts for the
policy, preference pairs for reward models and DPO, SFT rows), reward-model training and evaluation
(which read the loader's ids), PPO-time scoring (`actors.reward.ModelScorer`) and `rlhf serve
reward` (the same scorer). So a reward model scores, in PPO and behind an endpoint, exactly the tokens
it was trained on, for chat-template and plain tokenizers alike.

Prompt: a string (one user turn) or a chat list ``[{"role", "content"}, ...]`` ending with a user turn.

- Chat template (the tokenizer has one and ``chat_template`` is true): the text is
  ``apply_chat_template(messages, add_generation_prompt=True)`` and its ids are the tokenizer's ids of
  that text without added special tokens (the template writes them).
- Plain: a string is used verbatim; a chat list (one turn or many) is written in the HH-RLHF layout
  ``"\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nAssistant:"`` (system turns as ``"\\n\\nSystem: ..."``), so
  HH-RLHF dialogues and chat data render one way whatever their number of turns; the ids are the
  tokenizer's ids with its usual special tokens (e.g. BOS). The data loader keeps a prompt's form
  (its `chat` column is null for a string prompt) and PPO scoring passes it on, so a reward model
  sees the layout it was trained on.

Conversations with model turns (multi-turn episodes, `orchestrator.jobs.episodes`, and SFT rows whose chat has
assistant turns before the answer, so that SFT warm-starts multi-turn RL on the tokens RL samples): token in,
token out. The leading messages are a prompt as above; each
assistant turn is its response ids (below: content, then EOS), as the policy samples it; each run of other
messages after it (user or tool turns) is `turn_ids`: the tokens the rendering adds for them, ending with the
cue for the next model turn. With a chat template that is the template's text after an assistant turn's
content (its end-of-turn token left out where the model's EOS already is it), for these messages, with the
generation prompt; plain, the HH layout ``"\n\nHuman: ...\n\nAssistant:"`` (tool turns as
``"\n\nTool: ..."``). A conversation is never decoded and re-tokenised as a whole: the ids a policy sampled
are the ids it is trained on, and SFT data with earlier turns is assembled the same way (`episode_ids`; with a
plain tokenizer that puts the EOS after each earlier assistant turn, as the policy ends its turns; prompt and
preference rows keep the text rendering above: their earlier turns are history, not the policy's samples).

Response: the tokenizer's ids of the response text alone (no special tokens) followed by the EOS id:
the tokens a policy generates before it stops. A conversation is prompt ids + response ids, nothing in
between and nothing after the EOS (a chat template's trailing newline after its end-of-turn token is
not part of it: generation stops at EOS).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

__all__ = ["Prompt", "ROLES", "HH_ASSISTANT", "as_messages", "plain_prompt", "Rendering", "RenderError"]

Prompt = Union[str, list]
"""A prompt: a string (one user turn) or a chat list of {"role", "content"} messages ending with a user turn."""

ROLES = ("system", "user", "assistant", "tool")
HH_ASSISTANT = "\n\nAssistant:"
_HH_LABEL = {"system": "System", "user": "Human", "assistant": "Assistant", "tool": "Tool"}
_SENTINEL = "RLHF-TURN-SENTINEL"  # stands for a model turn's content when the template's text around one is read
_ENCODE_CHUNK = 1024


class RenderError(ValueError):
    """The tokenizer's chat template failed on a prompt (Jinja raises whatever its author chose)."""


def as_messages(prompt: Prompt) -> list[dict]:
    """The prompt as a chat list (a string is one user turn)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def plain_prompt(prompt: Prompt) -> str:
    """The prompt as plain text for rewards that read the question only: the string, or the last user turn."""
    if isinstance(prompt, str):
        return prompt
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")


def _hh_text(messages: Sequence[dict]) -> str:
    """A chat in the HH-RLHF layout, ending with the assistant cue: the plain rendering of a multi-turn prompt."""
    return "".join(f"\n\n{_HH_LABEL[m['role']]}: {m['content']}" for m in messages) + HH_ASSISTANT


@dataclass
class Rendering:
    """How one model sees text: its tokenizer, and whether its chat template is applied."""

    tokenizer: object
    chat_template: bool = True
    """Apply the tokenizer's chat template when it has one (`data.chat_template`; saved with reward models)."""

    @property
    def templated(self) -> bool:
        """Whether prompts go through the chat template (the flag is on and the tokenizer has one)."""
        return bool(self.chat_template and getattr(self.tokenizer, "chat_template", None))

    @property
    def eos_id(self) -> int:
        eos = self.tokenizer.eos_token_id
        if eos is None:
            name = getattr(self.tokenizer, "name_or_path", "") or type(self.tokenizer).__name__
            raise ValueError(f"tokenizer {name} has no eos token; responses must end with one")
        return eos

    # ------------------------------------------------------------------ prompts

    def prompt_text(self, prompt: Prompt) -> str:
        """The prompt as the policy sees it (module docstring); `RenderError` if the template fails."""
        messages = as_messages(prompt)
        if self.templated:
            try:
                return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception as e:  # noqa: BLE001  (Jinja raises whatever the template author chose)
                raise RenderError(str(e)) from None
        if isinstance(prompt, str):
            return prompt
        return _hh_text(messages)

    def prompt_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of rendered prompt texts (`prompt_text`): special tokens as the rendering says."""
        return self._encode(list(texts), add_special_tokens=not self.templated)

    # ------------------------------------------------------------------ responses

    def response_ids(self, responses: Sequence[str]) -> list[list[int]]:
        """Token ids of each response alone, then the EOS id."""
        eos = self.eos_id
        return [ids + [eos] for ids in self._encode(list(responses), add_special_tokens=False)]

    # ------------------------------------------------------------------ conversations

    def conversation_ids(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[list[int]]:
        """Prompt ids + response ids of each pair: what a reward model reads (in training and scoring)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        prompt_ids = self.prompt_ids([self.prompt_text(p) for p in prompts])
        return [p + r for p, r in zip(prompt_ids, self.response_ids(responses))]

    # ------------------------------------------------------------------ episodes

    def turn_ids(self, messages: Sequence[dict], after_eos: bool = True) -> list[int]:
        """The tokens that follow a model turn for the environment's `messages` (user, tool or system turns),
        ending with the cue for the next model turn (module docstring). `after_eos`: the model's turn ended with
        its EOS token (else it was cut: a template's end-of-turn text is then written in full).
        `RenderError` if the template fails or is not append-only (it rewrites earlier turns)."""
        if not messages:
            raise RenderError("an environment turn needs at least one message")
        if not self.templated:
            return self._encode([_hh_text(messages)], add_special_tokens=False)[0]
        base = [{"role": "user", "content": "RLHF-USER"}, {"role": "assistant", "content": _SENTINEL}]
        try:
            before = self.tokenizer.apply_chat_template(base, tokenize=False)
            after = self.tokenizer.apply_chat_template(base + [{"role": m["role"], "content": m["content"]} for m in messages],
                                                       tokenize=False, add_generation_prompt=True)
        except Exception as e:  # noqa: BLE001  (Jinja raises whatever the template author chose)
            raise RenderError(str(e)) from None
        if not after.startswith(before) or _SENTINEL not in before:
            raise RenderError("the chat template is not append-only: it rewrites earlier turns when a "
                              f"{messages[0]['role']} message follows an assistant turn")
        close = before[before.rindex(_SENTINEL) + len(_SENTINEL):]  # what the template writes after a turn's content
        eos = self.tokenizer.eos_token or ""
        if after_eos and eos and close.startswith(eos):  # the model sampled that token itself
            close = close[len(eos):]
        return self._encode([close + after[len(before):]], add_special_tokens=False)[0]

    def episode_ids(self, messages: Sequence[dict]) -> list[int]:
        """A conversation with assistant turns before its end (it ends with another role's message) as an
        episode's context holds it: the messages before the first assistant turn as a prompt, each assistant
        turn as its response ids (content, then EOS), each run of other messages as `turn_ids`."""
        first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        if first == 0:
            raise RenderError("a conversation must start with a message before the first assistant turn")
        ids = self.prompt_ids([self.prompt_text(list(messages[:first]))])[0]
        i = first
        while i < len(messages):
            if messages[i]["role"] == "assistant":
                ids += self.response_ids([messages[i]["content"]])[0]
                i += 1
                continue
            j = i
            while j < len(messages) and messages[j]["role"] != "assistant":
                j += 1
            ids += self.turn_ids(messages[i:j])
            i = j
        return ids

    def _encode(self, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
        out: list[list[int]] = []
        for start in range(0, len(texts), _ENCODE_CHUNK):
            out += self.tokenizer(texts[start:start + _ENCODE_CHUNK], add_special_tokens=add_special_tokens)["input_ids"]
        return [list(ids) for ids in out]
