"""The batches that cross role boundaries, one class per stage, checked at every crossing.

PPO: `PromptBatch` -> `Rollout` -> `Scores`, `LogProbs`, `Values` -> `Experience`. Rollout sequences
are `prompt (left-padded to P) + response (right-padded to T = max_new_tokens; for multi-turn episodes, whose
response holds the model's turns and the environment's between them, T = the batch's longest episode)`: every shard of a
rollout has the same P and T, so shards concatenate without re-padding. SFT and preference pairs:
`Sequences` (right-padded prompt + response; `actors.pairs` for pairs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cluster.batch import Batch, spec


def _prompt_response_extents(batch) -> torch.Tensor:
    """(B, 2): real prompt tokens (the prompt is left-padded to P) and response tokens (right-padded to T; in a
    multi-turn episode the model's and the environment's) per row."""
    P = batch.prompt_len
    return torch.stack([batch.attention_mask[:, :P].sum(-1), batch.attention_mask[:, P:].sum(-1)], dim=1)


def _prompt_response_trimmed(batch):
    """The rows cut to their own padding: the prompt columns no row uses (left) and the response columns
    after the longest response (right). Every real token keeps its position (`actors.lm.position_ids`)."""
    extents = _prompt_response_extents(batch)
    P = batch.prompt_len
    prompt, response = int(extents[:, 0].max()), max(1, int(extents[:, 1].max()))
    return batch.cut(L=slice(P - prompt, P + response), T=slice(0, response))


@dataclass
class PromptBatch(Batch):
    input_ids: torch.Tensor = spec("B P", torch.long)  # (B, P) prompt tokens, left-padded
    attention_mask: torch.Tensor = spec("B P", torch.long)  # (B, P) 1 on prompt tokens
    prompts: list = None  # (B,) plain prompt text: the question (the string, or the chat's last user turn)
    messages: list = None  # (B,) the whole prompt as a chat list [{role, content}] (what a reward model renders)
    references: list = None  # (B,) reference answer or None
    query_types: list = None  # (B,) 'open' | 'closed' | None
    seeds: torch.Tensor = spec("B", torch.long, optional=True)  # (B,) a sampling seed per row (the vLLM engine's; HF seeds the call)
    rows: list = None  # (B,) multi-turn (env.path): each prompt's data row, all of its columns, for the environment's reset


@dataclass
class Rollout(Batch):
    sequences: torch.Tensor = spec("B L", torch.long)  # (B, P+T) prompt + response tokens
    attention_mask: torch.Tensor = spec("B L", torch.long)  # (B, P+T) 1 on real tokens
    action_mask: torch.Tensor = spec("B T", torch.long)  # (B, T) 1 on the tokens the policy sampled (EOS included); 0 on an episode's environment tokens
    ended_with_eos: torch.Tensor = spec("B", torch.bool)  # (B,) response stopped at EOS or a stop string (policy.stop), not at max_new_tokens; an episode: the environment said done
    prompts: list = None  # (B,) plain prompt text (as in PromptBatch)
    messages: list = None  # (B,) the whole prompt as a chat list
    responses: list = None  # (B,) decoded response text (without EOS)
    references: list = None  # (B,) reference answer or None
    query_types: list = None  # (B,) 'open' | 'closed' | None
    logprobs: torch.Tensor = spec("B T", torch.float32, optional=True)  # (B, T) behaviour log-probs recorded while sampling (0 after the end)
    weight_version: torch.Tensor = spec("B", torch.long, optional=True)  # (B,) the generator's weight version each row was sampled with
    turn_rewards: torch.Tensor = spec("B T", torch.float32, optional=True)  # (B, T) an episode's per-turn rewards, each on the last token of its turn (0 elsewhere)
    episodes: list = None  # (B,) multi-turn only: the episode turn by turn ([{role, content, reward?}]) and its counts (`orchestrator.jobs.episodes`)

    @property
    def prompt_len(self) -> int:
        return self.sequences.shape[1] - self.action_mask.shape[1]

    def extents(self) -> torch.Tensor:
        """(B, 2) real prompt and response tokens per row (`cluster.batch.plan_micro_batches`)."""
        return _prompt_response_extents(self)

    def trimmed(self):
        """These rows without the padding none of them needs (a micro-batch of a token budget)."""
        return _prompt_response_trimmed(self)


@dataclass
class Scores(Batch):
    reward: torch.Tensor = spec("B", torch.float32)  # (B,) scalar reward per sequence
    std: torch.Tensor = spec("B", torch.float32, optional=True)  # (B,) predicted reward std (distributional RMs)
    components: torch.Tensor = spec("B K", torch.float32, optional=True)  # (B, K) unweighted rewards of a weighted sum's K terms


@dataclass
class Experience(Batch):
    sequences: torch.Tensor = spec("B L", torch.long)  # (B, P+T)
    attention_mask: torch.Tensor = spec("B L", torch.long)  # (B, P+T)
    action_mask: torch.Tensor = spec("B T", torch.long)  # (B, T)
    old_logprobs: torch.Tensor = spec("B T", torch.float32)  # (B, T) log pi_old(a_t | s_t)
    advantages: torch.Tensor = spec("B T", torch.float32)  # (B, T) advantages of the estimator (GAE whitened, or critic-free)
    mb_tokens: torch.Tensor = spec("B", torch.float32)  # (B,) the loss normaliser of the GLOBAL minibatch this row is in (its valid tokens for token_mean)
    old_values: torch.Tensor = spec("B T", torch.float32, optional=True)  # (B, T) V_old(s_t); None without a critic
    returns: torch.Tensor = spec("B T", torch.float32, optional=True)  # (B, T) A + V_old: the critic's target; None without a critic
    ref_logprobs: torch.Tensor = spec("B T", torch.float32, optional=True)  # (B, T) log pi_ref(a_t | s_t) for a KL in the loss, else None
    is_weights: torch.Tensor = spec("B T", torch.float32, optional=True)  # (B, T) truncated importance weights pi_old / pi_sampler (ppo.tis_cap), else None

    @property
    def prompt_len(self) -> int:
        return self.sequences.shape[1] - self.action_mask.shape[1]

    def extents(self) -> torch.Tensor:
        """(B, 2) real prompt and response tokens per row (`cluster.batch.plan_micro_batches`)."""
        return _prompt_response_extents(self)

    def trimmed(self):
        """These rows without the padding none of them needs (a micro-batch of a token budget)."""
        return _prompt_response_trimmed(self)


@dataclass
class Sequences(Batch):
    """Prompt + response sequences, right-padded (prompts of different lengths in one block): SFT rows,
    and preference pairs stacked for one forward (`actors.pairs.Pairs.stacked`)."""

    input_ids: torch.Tensor = spec("B L", torch.long)  # (B, L) prompt + response tokens, right-padded with the pad id
    attention_mask: torch.Tensor = spec("B L", torch.long)  # (B, L) 1 on tokens, 0 on padding
    response_mask: torch.Tensor = spec("B L", torch.long)  # (B, L) 1 on response tokens (positions of input_ids, not shifted)
    position_ids: torch.Tensor = spec("B L", torch.long, optional=True)  # (B, L) packed rows only: positions restart at 0 for each example

    def extents(self) -> torch.Tensor:
        """(B, 1) real tokens per row (`cluster.batch.plan_micro_batches`)."""
        return self.attention_mask.sum(-1, keepdim=True)

    def trimmed(self) -> "Sequences":
        """The same rows cut to their longest real sequence (a micro-batch carries no padding beyond its own)."""
        width = int(self.attention_mask.sum(-1).max())
        positions = None if self.position_ids is None else self.position_ids[:, :width]
        return Sequences(self.input_ids[:, :width], self.attention_mask[:, :width], self.response_mask[:, :width], positions)

    def packed(self, length: int, pad_id: int) -> "Sequences":
        """The examples of these rows packed, in order, into rows of at most `length` tokens (a row is closed
        when the next example does not fit), each example keeping its tokens and response mask and its
        positions restarting at 0, so that a packed forward (block-diagonal causal attention,
        `actors.lm.response_logprobs`) gives every token the log-prob it has alone."""
        lengths = self.attention_mask.sum(-1).tolist()
        if max(lengths) > length:
            raise ValueError(f"an example of {max(lengths)} tokens does not fit a packed row of {length}")
        rows: list[list[int]] = [[]]
        used = 0
        for i, n in enumerate(lengths):
            if used + n > length:
                rows.append([])
                used = 0
            rows[-1].append(i)
            used += n
        width = max(sum(lengths[i] for i in r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask, response, positions = (torch.zeros((len(rows), width), dtype=torch.long) for _ in range(3))
        for j, members in enumerate(rows):
            at = 0
            for i in members:
                n = lengths[i]
                ids[j, at:at + n] = self.input_ids[i, :n]
                response[j, at:at + n] = self.response_mask[i, :n]
                positions[j, at:at + n] = torch.arange(n)
                mask[j, at:at + n] = 1
                at += n
            positions[j, at:] = torch.arange(width - at)  # the padding: a segment of its own
        return Sequences(ids, mask, response, positions)


@dataclass
class LogProbs(Batch):
    logprobs: torch.Tensor = spec("B T", torch.float32)  # (B, T) log pi(a_t | s_t) of each response token, 0 off the mask


@dataclass
class Values(Batch):
    values: torch.Tensor = spec("B T", torch.float32)  # (B, T) V(s_t) before each response token, 0 off the mask
