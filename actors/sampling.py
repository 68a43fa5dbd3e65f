"""Sampled tokens to a `Rollout`, for every engine (HF `generate` in `actors.policy`, vLLM in
`actors.vllm_engine`): the one place that decides where a response ends, which tokens are actions and
what text the reward reads.

A response is its tokens up to and including the first EOS (an action: the policy chose to stop), or up
to and including the token whose text completes one of the stop strings (`policy.stop`; the stop string
stays in the text), whichever comes first, or all `max_new_tokens` of them when it did neither. Both
engines stop sampling there (HF's `stop_strings`, vLLM's `stop`), and this rule, applied to what they
return, decides the end the same way for both. Tokens after the end are padding, outside the action mask,
and their recorded log-probs are 0.
"""

from __future__ import annotations

import torch

from actors.types import PromptBatch, Rollout

__all__ = ["pad_responses", "to_rollout", "stop_length", "episode_rollout"]


def pad_responses(tokens: list[list[int]], logprobs: list[list[float]] | None, width: int, pad_id: int
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Ragged sampled token ids (and their log-probs) as (B, width) tensors, right-padded with `pad_id` (0.0).
    A row longer than `width` is an engine that ignored max_new_tokens: an error, not a silent cut."""
    B = len(tokens)
    ids = torch.full((B, width), pad_id, dtype=torch.long)
    lps = None if logprobs is None else torch.zeros(B, width)
    for i, row in enumerate(tokens):
        if len(row) > width:
            raise ValueError(f"row {i}: the engine returned {len(row)} tokens, max_new_tokens is {width}")
        ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        if lps is not None:
            if len(logprobs[i]) != len(row):
                raise ValueError(f"row {i}: {len(row)} tokens but {len(logprobs[i])} log-probs")
            lps[i, : len(row)] = torch.as_tensor(logprobs[i], dtype=torch.float32)
    return ids, lps


def stop_length(tokens: list[int], stop: tuple[str, ...] | list[str], tokenizer) -> int | None:
    """The number of leading `tokens` up to and including the one whose decoded text first contains one of
    the `stop` strings, or None when their text contains none (decodes log2(len) prefixes)."""
    def hit(n: int) -> bool:
        text = tokenizer.decode(tokens[:n], skip_special_tokens=False)
        return any(s in text for s in stop)

    if not stop or not tokens or not hit(len(tokens)):
        return None
    lo, hi = 1, len(tokens)  # the shortest prefix that contains a stop string is in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if hit(mid) else (mid + 1, hi)
    return lo


def to_rollout(prompts: PromptBatch, response: torch.Tensor, logprobs: torch.Tensor | None, *, eos_id: int,
               pad_id: int, max_new_tokens: int, tokenizer, stop: tuple[str, ...] | list[str] = ()) -> Rollout:
    """The Rollout of `prompts` (left-padded) answered by `response` ((B, n) sampled ids, n <= max_new_tokens,
    anything after a row's end ignored: its first EOS, or the token completing a `stop` string) with the
    log-probs recorded while sampling ((B, n) or None)."""
    B, n = response.shape
    T = max_new_tokens
    is_eos = response == eos_id
    ended = is_eos.any(dim=1)
    first_eos = torch.where(ended, is_eos.float().argmax(dim=1), torch.full((B,), n))
    length = torch.where(ended, first_eos + 1, torch.full((B,), n))
    if stop:  # a stop string completed before the EOS ends the row there (its text keeps the stop string)
        for i in range(B):
            k = stop_length(response[i, : int(length[i]) - int(ended[i])].tolist(), stop, tokenizer)
            if k is not None:
                length[i], first_eos[i], ended[i] = k, k, True
    action_mask = (torch.arange(T).unsqueeze(0) < length.unsqueeze(1)).long()
    padded = torch.full((B, T), pad_id, dtype=torch.long)
    padded[:, :n] = response
    padded = torch.where(action_mask.bool(), padded, torch.full_like(padded, pad_id))
    recorded = None
    if logprobs is not None:
        recorded = torch.zeros(B, T)
        recorded[:, :n] = logprobs.float()
        recorded = recorded * action_mask
    texts = [tokenizer.decode(padded[i, : int(first_eos[i]) if ended[i] else int(length[i])], skip_special_tokens=True)
             for i in range(B)]
    return Rollout(
        sequences=torch.cat([prompts.input_ids, padded], dim=1),
        attention_mask=torch.cat([prompts.attention_mask.long(), action_mask], dim=1),
        action_mask=action_mask,
        ended_with_eos=ended,
        prompts=list(prompts.prompts),
        messages=None if prompts.messages is None else list(prompts.messages),
        responses=texts,
        references=list(prompts.references),
        query_types=list(prompts.query_types),
        logprobs=recorded,
    )


def episode_rollout(prompt_ids: list[list[int]], tokens: list[list[int]], actions: list[list[int]],
                    logprobs: list[list[float]] | None, rewards: list[list[float]], ended: list[bool], *, width: int, pad_id: int,
                    prompts: list, messages: list, responses: list, references: list, query_types: list, episodes: list) -> Rollout:
    """The Rollout of multi-turn episodes (`orchestrator.jobs.episodes`): row i is its first prompt `prompt_ids[i]`
    (left-padded to the longest) then `tokens[i]`, the model's turns and the environment's between them
    (right-padded to `width`, the longest episode's), with `actions[i]` 1 on the model's tokens, `logprobs[i]` the
    sampler's log-probs of them (0 on the environment's) and `rewards[i]` each turn's reward on its last token."""
    B = len(tokens)
    P = max(len(p) for p in prompt_ids)
    sequences = torch.full((B, P + width), pad_id, dtype=torch.long)
    attention = torch.zeros((B, P + width), dtype=torch.long)
    action_mask = torch.zeros((B, width), dtype=torch.long)
    recorded = None if logprobs is None else torch.zeros(B, width)
    turn_rewards = torch.zeros(B, width)
    for i in range(B):
        p, n = len(prompt_ids[i]), len(tokens[i])
        if n > width:
            raise ValueError(f"episode {i}: {n} tokens after its prompt, wider than the rollout's {width}")
        if len(actions[i]) != n or len(rewards[i]) != n or (logprobs is not None and len(logprobs[i]) != n):
            raise ValueError(f"episode {i}: {n} tokens but {len(actions[i])} action flags, {len(rewards[i])} rewards")
        sequences[i, P - p:P] = torch.as_tensor(prompt_ids[i], dtype=torch.long)
        sequences[i, P:P + n] = torch.as_tensor(tokens[i], dtype=torch.long)
        attention[i, P - p:P + n] = 1
        action_mask[i, :n] = torch.as_tensor(actions[i], dtype=torch.long)
        turn_rewards[i, :n] = torch.as_tensor(rewards[i], dtype=torch.float32)
        if recorded is not None:
            recorded[i, :n] = torch.as_tensor(logprobs[i], dtype=torch.float32)
    if recorded is not None:
        recorded = recorded * action_mask
    return Rollout(sequences=sequences, attention_mask=attention, action_mask=action_mask,
                   ended_with_eos=torch.as_tensor(ended, dtype=torch.bool), prompts=list(prompts), messages=list(messages),
                   responses=list(responses), references=list(references), query_types=list(query_types),
                   logprobs=recorded, turn_rewards=turn_rewards * action_mask, episodes=list(episodes))
