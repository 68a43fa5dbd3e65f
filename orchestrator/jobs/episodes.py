"""Multi-turn rollouts: the policy talks to an environment (`env.path`), one episode per prompt row.

The environment is a plain Python class that never imports us::

    class MyEnv:
        def __init__(self, **kwargs): ...                        # env.kwargs
        def reset(self, row: dict) -> str | list[dict]: ...      # the first user message, or chat messages
        def step(self, response: str) -> tuple[str | list[dict] | None, float, bool]:
            ...                                                  # (next message(s) or None, this turn's reward, done)

One object per episode. `reset` gets the prompt's data row (all of its columns) plus `row_index` (its place in
the data) and `episode_seed`, an int
fixed by the run's seed, the step and the prompt, the same for the `ppo.samples_per_prompt` episodes of one
prompt (a group sees one task) and different across prompts and steps: an environment that draws from it is
reproducible, resumes exactly and gives the same numbers in local and ray modes.

An episode (`EpisodeRunner.run`): the first message(s) rendered as a prompt (`actors.rendering`); then each
model turn is sampled by the rollout engine (the policy's HF `generate`, or the generator's HF or vLLM engine;
every episode still running is one row of one batched call per turn) until EOS, a stop string
(`policy.stop`), `policy.max_new_tokens`, or the room left under `env.max_tokens`; `step` gets the turn's
text; its reward goes on the turn's last token; its message(s) are appended as the tokens the rendering adds
for them (`Rendering.turn_ids`), never re-tokenising what the model sampled; until the environment says done,
`env.max_turns` model turns, or `env.max_tokens` tokens. The result is one `Rollout` row per episode whose
action mask covers the model's tokens only (`actors.sampling.episode_rollout`): environment tokens are
context, never trained on, outside the KL, the entropy and the critic's GAE steps (`losses.advantages.gae`
skips them). A reward model (any `reward.kind`) scores the whole conversation: its chat up to the last model
turn, and that turn as the response.

Concurrency: the `reset` and `step` calls of different episodes run at once in at most `env.workers` threads
of the driver (one episode's calls in order); a call running longer than `env.step_timeout_s` fails its
episode (its daemon thread is left to finish on its own: Python cannot stop a thread, and a daemon one cannot
keep the process from exiting). A failure (the call raised, returned the wrong
types, or timed out) is one line naming the class, the method, the prompt row and the turn; with
`run.on_env_error=skip` the episode is dropped instead (no token of it is an action: it adds nothing to the
loss; with a group estimator its zero score still counts in its group's baseline) and counted in `env/errors`.

Metrics: `env/return` (the episodes' summed turn rewards), `env/turns`, `env/tokens` (per episode, its first
prompt left out), `env/tool_calls` (messages of role tool), `env/done` (the share the environment ended),
`env/errors`; `time/env` is the driver's wait for the environment's calls.
"""

from __future__ import annotations

import importlib
import math
import numbers
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from actors.rendering import ROLES, Rendering, RenderError, as_messages, plain_prompt
from actors.sampling import episode_rollout
from actors.types import PromptBatch, Rollout

__all__ = ["BUILTIN_ENVS", "EnvError", "env_class", "EpisodeRunner", "episode_rows", "episode_metrics"]

BUILTIN_ENVS = {"builtin:lookup": "orchestrator.builtin.environments:Lookup",
                "builtin:clarify": "orchestrator.builtin.environments:Clarify"}
"""The built-in environments (`orchestrator.builtin.environments`) and the data they read."""

_INTERNAL = ("prompt_ids", "prompt_text")  # columns the data loader adds: not the user's


class EnvError(RuntimeError):
    """An environment call failed: raised, returned the wrong types, or timed out (one line)."""


def env_class(path: str) -> type:
    """The class `env.path` names ('module:Class' or a built-in name); `ValueError` naming the key if it does not import."""
    spec = BUILTIN_ENVS.get(path, path)
    if path.startswith("builtin:") and path not in BUILTIN_ENVS:
        raise ValueError(f"config key 'env.path': unknown built-in environment {path!r}; built-in: {', '.join(BUILTIN_ENVS)}")
    module, _, name = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except Exception as e:  # noqa: BLE001  (whatever the user's module raises on import)
        raise ValueError(f"config key 'env.path': cannot import {spec!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                         ) from None
    missing = [m for m in ("reset", "step") if not callable(getattr(cls, m, None))]
    if not isinstance(cls, type) or missing:
        raise ValueError(f"config key 'env.path': {spec!r} is not an environment class (needs reset(row) and step(response); "
                         f"missing: {', '.join(missing) or 'a class'})")
    return cls


@dataclass
class _Episode:
    """One episode as it runs (`EpisodeRunner.run`)."""

    index: int  # the row of the batch
    row: dict  # the prompt's data row (with episode_seed)
    env: Any = None
    prompt_ids: list = field(default_factory=list)  # its first prompt
    first: Any = None  # the first message(s), as reset returned them
    tokens: list = field(default_factory=list)  # after the prompt: model turns and environment messages
    actions: list = field(default_factory=list)  # 1 on the model's tokens
    logprobs: list = field(default_factory=list)
    rewards: list = field(default_factory=list)  # each turn's reward on its last token
    turns: list = field(default_factory=list)  # [{role, content, reward?}] after the first message(s)
    tool_calls: int = 0
    done: bool = False  # the environment said done
    over: bool = False  # no more model turns
    failed: str | None = None
    step_result: tuple = ()  # the last step's (messages, reward, done), checked


class EpisodeRunner:
    """Runs the episodes of one batch of prompt rows with an engine's `sample` (module doc)."""

    def __init__(self, cfg, *, env_cls: type, rendering: Rendering, on_error: str, pad_id: int):
        """`cfg`: the `EnvConfig`; `on_error`: run.on_env_error. Each model turn is at most the engine's
        policy.max_new_tokens."""
        self.cfg, self.env_cls, self.rendering, self.on_error, self.pad_id = cfg, env_cls, rendering, on_error, pad_id
        self.name = env_cls.__name__

    # ------------------------------------------------------------------ the loop
    def run(self, batch: PromptBatch, seed: int, sample: Callable[[PromptBatch, int], Rollout],
            timed: Callable[[str], Any]) -> Rollout:
        """The episodes of `batch`'s rows (`batch.rows`, whose `episode_seed` each reset reads): each turn,
        `sample(prompts, turn)` samples one model turn for every episode still running. `timed(name)` times a
        block as a phase (`Phases.timed`): `env` for the driver's wait on the environment's calls."""
        episodes = [_Episode(i, row) for i, row in enumerate(batch.rows)]
        self.recorded = True  # whether the engine recorded the log-probs of every turn it sampled
        with timed("env"):
            self._call_all(episodes, "reset", turn=0)
        self._raise_first(episodes)
        for turn in range(self.cfg.max_turns):
            live = [e for e in episodes if not e.over and e.failed is None]
            if not live:
                break
            rollout = sample(self._prompts(live, seed, turn), turn)
            texts = self._take_turn(live, rollout)
            with timed("env"):
                self._call_all(live, "step", turn=turn, texts=texts)
            for e in live:
                if e.failed is None:
                    self._after_step(e, turn)
            self._raise_first(episodes)
        return self._rollout(episodes)

    def _prompts(self, live: list[_Episode], seed: int, turn: int) -> PromptBatch:
        """The next model turn's contexts (left-padded) and a seed per row (an episode's own, by turn)."""
        contexts = [e.prompt_ids + e.tokens for e in live]
        width = max(len(c) for c in contexts)
        ids = torch.full((len(live), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(live), width), dtype=torch.long)
        for i, c in enumerate(contexts):
            ids[i, width - len(c):] = torch.as_tensor(c, dtype=torch.long)
            mask[i, width - len(c):] = 1
        seeds = torch.tensor([(seed * 65_537 + e.index) * 1_009 + turn for e in live], dtype=torch.long)
        return PromptBatch(input_ids=ids, attention_mask=mask, prompts=[""] * len(live), messages=[None] * len(live),
                           references=[None] * len(live), query_types=[None] * len(live), seeds=seeds)

    def _take_turn(self, live: list[_Episode], rollout: Rollout) -> list[str]:
        """Append each episode's sampled turn (cut to the room left under env.max_tokens); its text."""
        P = rollout.prompt_len
        texts = []
        for r, e in enumerate(live):
            n = int(rollout.action_mask[r].sum())
            tokens = rollout.sequences[r, P:P + n].tolist()
            lps = rollout.logprobs[r, :n].tolist() if rollout.logprobs is not None else [0.0] * n
            self.recorded = self.recorded and rollout.logprobs is not None
            room = self.cfg.max_tokens - len(e.prompt_ids) - len(e.tokens)
            text = rollout.responses[r]
            if n > room:  # the episode's budget ends inside this turn
                tokens, lps, e.over = tokens[:room], lps[:room], True
                text = self.rendering.tokenizer.decode(tokens, skip_special_tokens=True)
            ended = bool(tokens) and tokens[-1] == self.rendering.eos_id  # (not at a stop string: no EOS was sampled)
            e.tokens += tokens
            e.actions += [1] * len(tokens)
            e.logprobs += lps
            e.rewards += [0.0] * len(tokens)
            e.turns.append({"role": "assistant", "content": text, "ended": ended})
            texts.append(text)
        return texts

    def _after_step(self, e: _Episode, turn: int) -> None:
        """Reward on the turn's last token; the environment's message appended, unless the episode is over."""
        reply, reward, done = e.step_result
        e.rewards[-1] += reward
        e.turns[-1]["reward"] = reward
        ended = e.turns[-1].pop("ended")
        e.done = done
        if done or e.over or turn == self.cfg.max_turns - 1:
            e.over = True
            return
        try:
            ids = self.rendering.turn_ids(reply, after_eos=ended)
        except RenderError as err:
            self._fail(e, "step", turn, f"its message cannot be rendered: {err}")
            return
        e.turns += [dict(m) for m in reply]
        e.tool_calls += sum(m["role"] == "tool" for m in reply)
        if len(e.prompt_ids) + len(e.tokens) + len(ids) >= self.cfg.max_tokens:  # no room for another model turn
            e.over = True
            return
        e.tokens += ids
        e.actions += [0] * len(ids)
        e.logprobs += [0.0] * len(ids)
        e.rewards += [0.0] * len(ids)

    # ------------------------------------------------------------------ environment calls
    def _call_all(self, episodes: list[_Episode], method: str, turn: int, texts: list[str] | None = None) -> None:
        """`method` of every episode's environment at once (reset builds it first), in at most env.workers daemon
        threads (a call that never returns cannot keep the process alive); each call checked and timed out on its
        own; a failure is `_fail`ed."""
        slots = threading.Semaphore(self.cfg.workers)
        started: dict[int, float] = {}

        def call(k: int, e: _Episode, future: Future) -> None:
            with slots:
                started[k] = time.monotonic()
                try:
                    if method == "reset":
                        e.env = self.env_cls(**self.cfg.kwargs)
                        future.set_result(e.env.reset(dict(e.row)))
                    else:
                        future.set_result(e.env.step(texts[k]))
                except BaseException as error:  # noqa: BLE001  (the user's code: reported by _fail)
                    future.set_exception(error)

        futures: dict[Future, tuple[int, _Episode]] = {}
        for k, e in enumerate(episodes):
            future: Future = Future()
            futures[future] = (k, e)
            threading.Thread(target=call, args=(k, e, future), daemon=True, name=f"env-{method}-{k}").start()
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.05, return_when=FIRST_COMPLETED)
            for f in done:
                k, e = futures[f]
                error = f.exception()
                if error is not None:
                    self._fail(e, method, turn, f"raised {type(error).__name__}: {_first_line(error)}")
                    continue
                try:
                    self._accept(e, method, f.result())
                except EnvError as bad:
                    self._fail(e, method, turn, str(bad))
            now = time.monotonic()
            for f in list(pending):
                k, e = futures[f]
                if k in started and now - started[k] > self.cfg.step_timeout_s:
                    pending.discard(f)
                    self._fail(e, method, turn, f"took longer than env.step_timeout_s={self.cfg.step_timeout_s:g} s")

    def _accept(self, e: _Episode, method: str, value: Any) -> None:
        """A call's result, checked: reset -> the first prompt; step -> e.step_result. `EnvError` on wrong types."""
        if method == "reset":
            messages = _messages(value, "a string or a list of {role, content} messages")
            if messages[-1]["role"] == "assistant":
                raise EnvError("returned messages that end with an assistant turn (the model speaks next)")
            first = value if isinstance(value, str) else messages
            try:
                e.prompt_ids = self.rendering.prompt_ids([self.rendering.prompt_text(first)])[0]
            except RenderError as err:
                raise EnvError(f"its first message cannot be rendered by the chat template: {err}") from None
            if len(e.prompt_ids) >= self.cfg.max_tokens:
                raise EnvError(f"its first message is {len(e.prompt_ids)} tokens, no room left under env.max_tokens={self.cfg.max_tokens}")
            e.first = first
            return
        if not isinstance(value, tuple) or len(value) != 3:
            raise EnvError(f"returned {_kind(value)}, expected a tuple of 3: (next message(s) or None, reward, done)")
        reply, reward, done = value
        if not isinstance(done, (bool,)) and type(done).__name__ != "bool_":
            raise EnvError(f"returned done={done!r} ({_kind(done)}), expected a bool")
        if isinstance(reward, bool) or not isinstance(reward, numbers.Real) or not math.isfinite(float(reward)):
            raise EnvError(f"returned reward={reward!r}, expected a finite number")
        done = bool(done)
        if reply is None:
            if not done:
                raise EnvError("returned no next message (None) with done=False")
            messages = []
        else:
            messages = _messages(reply, "None, a string or a list of {role, content} messages")
            if any(m["role"] == "assistant" for m in messages):
                raise EnvError("returned an assistant message (the model's turns are the model's)")
        e.step_result = (messages, float(reward), done)

    def _raise_first(self, episodes: list[_Episode]) -> None:
        """run.on_env_error=raise: the failure of the first episode of the batch that failed (whichever call
        finished first), as one line."""
        failed = [e.failed for e in episodes if e.failed is not None]
        if failed and self.on_error == "raise":
            raise EnvError(failed[0])

    def _fail(self, e: _Episode, method: str, turn: int, problem: str) -> None:
        where = e.row.get("row_index", e.index)
        e.failed, e.over = f"environment {self.name}.{method} on prompt row {where} (turn {turn}): {problem}", True

    # ------------------------------------------------------------------ the result
    def _rollout(self, episodes: list[_Episode]) -> Rollout:
        rows = []
        for e in episodes:
            if e.failed is not None:  # dropped (run.on_env_error=skip): context only, nothing to learn from
                e.actions = [0] * len(e.tokens)
                e.rewards = [0.0] * len(e.tokens)
                if not e.prompt_ids:
                    e.prompt_ids = [self.pad_id]
            first = as_messages(e.first) if e.first is not None else []
            model_turns = [i for i, t in enumerate(e.turns) if t["role"] == "assistant"]
            last = model_turns[-1] if model_turns else None
            before = first + [{"role": t["role"], "content": t["content"]} for t in e.turns[:last]] if last is not None else first
            rows.append({
                "response": e.turns[last]["content"] if last is not None else "",
                "messages": before or None,
                "prompt": plain_prompt(first) if first else "",
                "episode": {"first": first, "turns": [{k: v for k, v in t.items() if k != "ended"} for t in e.turns], "return": sum(t.get("reward", 0.0) for t in e.turns),
                            "tool_calls": e.tool_calls, "done": e.done, "error": e.failed},
            })
        return episode_rollout([e.prompt_ids for e in episodes], [e.tokens for e in episodes], [e.actions for e in episodes],
                               [e.logprobs for e in episodes] if self.recorded else None, [e.rewards for e in episodes],
                               [e.done for e in episodes],
                               width=max(1, *(len(e.tokens) for e in episodes)), pad_id=self.pad_id, prompts=[r["prompt"] for r in rows],
                               messages=[r["messages"] for r in rows], responses=[r["response"] for r in rows],
                               references=[e.row.get("reference") for e in episodes],
                               query_types=[e.row.get("query_type") for e in episodes], episodes=[r["episode"] for r in rows])


def episode_metrics(rollout: Rollout) -> dict:
    """The env/* metrics of a rollout of episodes (module doc); {} for a single-turn rollout."""
    if rollout.episodes is None:
        return {}
    ok = [i for i, e in enumerate(rollout.episodes) if e["error"] is None]
    n = max(len(ok), 1)
    P = rollout.prompt_len
    tokens = rollout.attention_mask[:, P:].sum(-1).tolist()
    episodes = rollout.episodes
    return {
        "env/return": sum(episodes[i]["return"] for i in ok) / n,
        "env/turns": sum(sum(t["role"] == "assistant" for t in episodes[i]["turns"]) for i in ok) / n,
        "env/tokens": sum(tokens[i] for i in ok) / n,
        "env/tool_calls": sum(episodes[i]["tool_calls"] for i in ok) / n,
        "env/done": sum(bool(episodes[i]["done"]) for i in ok) / n,
        "env/errors": float(len(episodes) - len(ok)),
    }


def episode_rows(rows: list[dict], indices: list[int], seed: int, draw: int) -> list[dict]:
    """The data rows an environment's reset reads, one per prompt (not repeated per sample): the user's columns,
    `row_index` (the row's place in the data, which error lines name) and `episode_seed` (module doc) from the
    run's `seed` and `draw`, the place of the first of these prompts in the run's stream of prompts."""
    out = []
    for i, (row, index) in enumerate(zip(rows, indices)):
        clean = {k: v for k, v in row.items() if k not in _INTERNAL}
        clean["row_index"] = int(index)
        clean["episode_seed"] = (seed * 1_000_003 + draw + i) % (2**62)
        out.append(clean)
    return out


def _messages(value: Any, expected: str) -> list[dict]:
    """A string (one user message) or a list of {role, content} messages, checked; else `EnvError`."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise EnvError(f"returned {_kind(value)}, expected {expected}")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            raise EnvError(f"returned a message [{i}] that is not a {{role, content}} dict with role one of "
                           f"{', '.join(ROLES)} and string content: {str(m)[:80]}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _kind(value: Any) -> str:
    if isinstance(value, tuple):
        return f"a tuple of {len(value)}"
    return "an empty list" if value == [] else type(value).__name__


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""
