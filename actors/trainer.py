"""The one micro-batch trainer of every trainable role: policy, critic, DPO, reward model, SFT.

One call of `train_step` is one optimizer step over this replica's share of a minibatch::

    for micro in micro_batches:
        out = loss_fn(micro)                                     # MicroLoss: per-item loss, mask, metrics
        loss = aggregate(out.per_item, out.mask, N_global)       # sum of this micro-batch's items / N_global
             + out.batch_term * n_micro / N_global               # a batch-level term, by the micro-batch's share
        backward(engine, loss)                                   # DeepSpeed's averaging undone (actors.engine)
    step(engine)                                                 # exactly one optimizer step

Items are tokens (PPO policy and critic, SFT: ``(b, T)`` losses) or sequences (DPO pairs, reward-model
pairs: ``(b,)`` losses). ``N_global`` counts the items of the whole minibatch over every replica (or, for
the policy's sequence-level aggregations, its sequences: `losses.ppo.normalizer`), so
the update equals the one-process, one-micro-batch update however the minibatch is cut (the loss
rule of `actors.engine`, tested in tests/test_engine.py and tests/test_cluster_ray.py). Roles differ
only in their `loss_fn`; none writes its own loop.

Metrics come back as `TrainStats`: means weighted by the items they cover (so a replica's and a
micro-batch's share count by their size) and maxima; `merge_stats` combines replicas exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, TypeVar

import torch

from actors.engine import any_replica, backward, gradient_norms, step, unwrap
from losses.ppo import aggregate


class NonFiniteError(FloatingPointError):
    """A NaN or infinity where training needs finite numbers; the message names its source and says that
    no update was made."""


def _grads_finite(engine) -> bool:
    """Whether every gradient this replica holds is finite (ZeRO 0: the whole gradient; at ZeRO 1-3 the
    gradients live in DeepSpeed's partitions, whose own overflow check skips a non-finite step)."""
    norms = gradient_norms(engine)  # (kept for the step's clipping at ZeRO-0 with one replica)
    if not norms:
        return True
    # one device sync: every norm finite means every entry is
    if bool(torch.isfinite(torch.stack(norms)).all()):
        return True
    # a norm can overflow with finite entries (about 1e19 and up in fp32): then look at the entries
    return bool(torch.stack([torch.isfinite(p.grad).all() for p in unwrap(engine).parameters() if p.grad is not None]).all())

__all__ = ["MicroLoss", "TrainStats", "merge_stats", "train_step"]

M = TypeVar("M")


@dataclass
class MicroLoss:
    """What a role's loss function returns for one micro-batch."""

    per_item: torch.Tensor
    """(b, T) per-token or (b,) per-sequence loss, unreduced; values at masked positions never matter."""
    mask: torch.Tensor
    """Same shape: 1 on the items that count (their number is this micro-batch's weight)."""
    metrics: dict = field(default_factory=dict)
    """name -> 0-dim tensor or float: a mean over this micro-batch's counted items; a name ending in
    ``_max`` is a maximum instead. A name with a '/' is used as is, others get the role's prefix."""
    batch_term: torch.Tensor | None = None
    """A 0-dim term computed over the micro-batch as a whole (ODIN's length decorrelation, a categorical
    entropy bonus), added with the weight n_micro / N_global, as the ODIN and DPL code do per device."""
    aggregation: str = "token_mean"
    """How per-token losses add up (`losses.ppo.aggregate`'s mode; N_global is that mode's normaliser).
    The logged ``<prefix>/loss`` is the per-item mean whatever the mode."""


class TrainStats:
    """Item-weighted metric sums and maxima of one replica; `merge_stats` adds replicas up."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}
        self.maxima: dict[str, float] = {}

    def add(self, name: str, value: float, weight: float) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(value) * float(weight)
        self.weights[name] = self.weights.get(name, 0.0) + float(weight)

    def add_max(self, name: str, value: float) -> None:
        self.maxima[name] = max(self.maxima.get(name, float("-inf")), float(value))

    def as_dict(self) -> dict[str, tuple[float, float] | float]:
        """name -> (weighted sum, weight) for means, name -> value for maxima."""
        return {**{k: (self.sums[k], self.weights[k]) for k in self.sums}, **self.maxima}


def merge_stats(per_replica: list[dict]) -> dict[str, float]:
    """Weighted means (and maxima) over replicas of what `TrainStats.as_dict` returned."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    maxima: dict[str, float] = {}
    for stats in per_replica:
        for k, v in stats.items():
            if isinstance(v, tuple):
                sums[k] = sums.get(k, 0.0) + v[0]
                weights[k] = weights.get(k, 0.0) + v[1]
            else:
                maxima[k] = max(maxima.get(k, float("-inf")), v)
    return {**{k: sums[k] / weights[k] for k in sums if weights[k] > 0}, **maxima}


def train_step(engine, micro_batches: Iterable[M], loss_fn: Callable[[M], MicroLoss], global_count: float, prefix: str,
               stats: TrainStats | None = None, model_prefix: str | None = None) -> TrainStats:
    """One optimizer step over `micro_batches` (this replica's share of a minibatch of `global_count` items).

    Adds to `stats` (a new one when None): ``<prefix>/loss`` (the mean per-item loss plus the batch term
    of each micro-batch, weighted by its items), the metrics of `MicroLoss.metrics`, and
    ``<model_prefix>/lr`` and ``<model_prefix>/grad_norm`` of the step (weight 1; model_prefix defaults
    to prefix: DPO logs its loss as dpo/* and the optimizer of its model as policy/*).
    """
    model_prefix = model_prefix or prefix
    stats = stats if stats is not None else TrainStats()
    for k, micro in enumerate(micro_batches):
        out = loss_fn(micro)
        mask = out.mask.bool()
        count = float(mask.sum())
        loss = aggregate(out.per_item, mask, num_tokens=global_count, mode=out.aggregation)
        if out.batch_term is not None:  # (token_mean items only: DPO, reward-model pairs)
            loss = loss + out.batch_term * (count / global_count)
        if any_replica(not bool(torch.isfinite(loss.detach()).all())):
            raise NonFiniteError(f"{prefix} loss is not finite (micro-batch {k} on some replica); no update was made")
        backward(engine, loss)
        with torch.no_grad():
            mean = aggregate(out.per_item.detach(), mask).item()
            if out.batch_term is not None:
                mean += float(out.batch_term)
            stats.add(f"{prefix}/loss", mean, count)
            for name, value in out.metrics.items():
                key = name if "/" in name else f"{prefix}/{name}"
                if name.endswith("_max"):
                    stats.add_max(key, float(value))
                else:
                    stats.add(key, float(value), count)
    if any_replica(not _grads_finite(engine)):
        raise NonFiniteError(f"{model_prefix} gradients are not finite although the {prefix} loss is; no update was made")
    info = step(engine)
    if info["grad_norm"] != info["grad_norm"] or abs(info["grad_norm"]) == float("inf"):
        if engine.gradient_clipping() > 0:  # a NaN norm with clipping on: the step saw non-finite gradients
            raise NonFiniteError(f"{model_prefix} gradient norm is {info['grad_norm']} (DeepSpeed skips such an update)")
    stats.add(f"{model_prefix}/lr", info["lr"], 1.0)
    stats.add(f"{model_prefix}/grad_norm", info["grad_norm"], 1.0)
    return stats
