"""Collation of prompt + response rows: preference pairs (the reward-model role and DPO) and single
sequences (SFT).

`collate_pairs` turns dataset rows of `orchestrator.data.load_preferences` (prompt_ids, chosen_ids,
rejected_ids) into `Pairs`, one row per pair, so a row split (`cluster.group` scattering a `Batch`
over replicas, micro-batching) never separates a pair. `Pairs.stacked` is the view for one forward
over both halves: chosen rows then rejected rows, cut to the longest real sequence of these pairs.
Right padding throughout: the models are causal, so trailing padding changes no result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence as Seq

import torch

from actors.scoring import right_pad
from actors.types import Sequences
from cluster.batch import Batch, spec

__all__ = ["Pairs", "PairLogProbs", "collate_pairs", "collate_sequences"]


@dataclass
class Pairs(Batch):
    """B preference pairs, one row per pair (so a row split never separates a pair)."""

    chosen_ids: torch.Tensor = spec("B C", torch.long)  # (B, C) prompt + chosen response, right-padded with the pad id
    chosen_mask: torch.Tensor = spec("B C", torch.long)  # (B, C) 1 on tokens
    rejected_ids: torch.Tensor = spec("B R", torch.long)  # (B, R) prompt + rejected response, right-padded
    rejected_mask: torch.Tensor = spec("B R", torch.long)  # (B, R) 1 on tokens
    prompt_len: torch.Tensor = spec("B", torch.long)  # (B,) prompt tokens (the same prompt starts both sequences)
    chosen_len: torch.Tensor = spec("B", torch.long)  # (B,) response tokens of chosen (ODIN's length)
    rejected_len: torch.Tensor = spec("B", torch.long)  # (B,) response tokens of rejected
    ref_chosen: torch.Tensor = spec("B", torch.float32, optional=True)  # (B,) DPO: log pi_ref(chosen | prompt)
    ref_rejected: torch.Tensor = spec("B", torch.float32, optional=True)  # (B,) DPO: log pi_ref(rejected | prompt)
    weight: torch.Tensor = spec("B", torch.float32, optional=True)  # (B,) per-pair weight w_i * B / sum(w) over the GLOBAL batch (mean 1)

    def weighted(self, losses: torch.Tensor) -> torch.Tensor:
        """(b,) per-pair losses times their weights (unchanged without weights): averaged over the global pair
        count, sum(w * loss) / sum(w) of the global batch, however it is sharded or micro-batched."""
        return losses if self.weight is None else losses * self.weight.to(losses.dtype)

    forward_rows = 2  # chosen and rejected of a pair run in one forward (`stacked`)

    def extents(self) -> torch.Tensor:
        """(B, 1) the longer of chosen and rejected per pair (`cluster.batch.plan_micro_batches`)."""
        return torch.maximum(self.chosen_mask.sum(-1), self.rejected_mask.sum(-1)).unsqueeze(1)

    def trimmed(self) -> "Pairs":
        """Itself: `stacked` cuts a micro-batch to its longest pair."""
        return self

    def stacked(self, pad_id: int) -> Sequences:
        """Chosen then rejected as one (2b, T) batch for a single forward, T the longest real sequence here:
        rows 0..b-1 chosen, rows b..2b-1 rejected (row i and row b+i are one pair; do not cut it by rows,
        select rows of `Pairs` first, then stack).

        Both halves are cut (or right-padded with `pad_id`) to T, so a micro-batch selected from a
        long minibatch carries no padding beyond its own longest pair. response_mask marks positions
        prompt_len .. prompt_len + chosen_len - 1 of a chosen row (rejected_len for a rejected row).
        """
        width = int(max(self.chosen_mask.sum(-1).max(), self.rejected_mask.sum(-1).max()))
        positions = torch.arange(width, device=self.chosen_ids.device)  # (T,)
        start = self.prompt_len[:, None]  # (b, 1)

        def fit(ids: torch.Tensor, mask: torch.Tensor, response_len: torch.Tensor) -> tuple[torch.Tensor, ...]:
            ids, mask = ids[:, :width], mask[:, :width]
            extra = width - ids.shape[1]
            if extra > 0:
                ids = torch.nn.functional.pad(ids, (0, extra), value=pad_id)
                mask = torch.nn.functional.pad(mask, (0, extra), value=0)
            response = ((positions >= start) & (positions < start + response_len[:, None])).long()  # (b, T)
            return ids, mask, response

        chosen = fit(self.chosen_ids, self.chosen_mask, self.chosen_len)
        rejected = fit(self.rejected_ids, self.rejected_mask, self.rejected_len)
        return Sequences(*(torch.cat([c, r]) for c, r in zip(chosen, rejected)))


def collate_pairs(rows: Seq[Mapping], pad_id: int, weight_key: str | None = None) -> Pairs:
    """Rows with prompt_ids / chosen_ids / rejected_ids (`orchestrator.data.load_preferences`) -> `Pairs`.

    weight_key: the rows' weight column (`pair_weight` with data.weight_column), scaled to mean 1 over these
    rows, so collate the whole global batch before scattering it."""
    if not rows:
        raise ValueError("collate_pairs: no rows")
    chosen_ids, chosen_mask = right_pad([list(r["prompt_ids"]) + list(r["chosen_ids"]) for r in rows], pad_id)
    rejected_ids, rejected_mask = right_pad([list(r["prompt_ids"]) + list(r["rejected_ids"]) for r in rows], pad_id)

    def lengths(key: str) -> torch.Tensor:
        return torch.tensor([len(r[key]) for r in rows], dtype=torch.long)  # (B,)

    weight = None
    if weight_key:
        w = torch.tensor([float(r[weight_key]) for r in rows], dtype=torch.float64)  # (B,) > 0: weight-0 rows are not loaded
        weight = (w * len(rows) / w.sum()).float()
    return Pairs(
        chosen_ids=chosen_ids, chosen_mask=chosen_mask, rejected_ids=rejected_ids, rejected_mask=rejected_mask,
        prompt_len=lengths("prompt_ids"), chosen_len=lengths("chosen_ids"), rejected_len=lengths("rejected_ids"),
        weight=weight,
    )


@dataclass
class PairLogProbs(Batch):
    """Sequence log-probs of both answers of B pairs (DPO)."""

    chosen: torch.Tensor = spec("B", torch.float32)  # (B,) log pi(chosen | prompt): sum over its tokens
    rejected: torch.Tensor = spec("B", torch.float32)  # (B,) log pi(rejected | prompt)


def collate_sequences(rows: Seq[Mapping], pad_id: int, answer: str = "response") -> Sequences:
    """Rows with prompt_ids and `<answer>`_ids (`orchestrator.data.load_sft`) -> right-padded `Sequences`,
    the response marked in response_mask."""
    if not rows:
        raise ValueError("collate_sequences: no rows")
    input_ids, attention_mask = right_pad([list(r["prompt_ids"]) + list(r[f"{answer}_ids"]) for r in rows], pad_id)
    positions = torch.arange(input_ids.shape[1])[None, :]  # (1, L)
    start = torch.tensor([len(r["prompt_ids"]) for r in rows])[:, None]  # (B, 1)
    end = start + torch.tensor([len(r[f"{answer}_ids"]) for r in rows])[:, None]
    return Sequences(input_ids, attention_mask, ((positions >= start) & (positions < end)).long())
