"""The audit's model, cross-fitted: every pair is scored by heads that never saw it.

Features (`features`): a frozen encoder (`actors.embedding.TextEncoder`) embeds each prompt and each answer
once; an answer's features are [e(answer), e(prompt) * e(answer), log(1 + words)], standardised with the
training folds' statistics.

Heads (`crossfit`): K annotator types, each a Bradley-Terry rater with a linear utility on the features,
mixed by learned weights pi (`losses.preference.annotator_types_loss`; K = 1 is plain Bradley-Terry).
The rows are split into folds by duplicate group (a row and its copies, or its swapped copy, always
share a fold); for each fold the heads are trained on the other folds (AdamW, early stopping on a tenth
of those rows) and score the fold. `crossfit` checks that no row was scored by heads trained on it.

What a row gets (`losses.preference.annotator_types_split`): p, the probability that an annotator drawn
from the pool prefers the chosen answer; disagreement, how much the types differ about the pair; tie,
how unsure each type is on its own; and the held-out negative log-likelihood of its label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from losses.preference import annotator_types_loss, annotator_types_split

__all__ = ["FitConfig", "Fit", "features", "fold_split", "crossfit", "FoldLeak"]


@dataclass
class FitConfig:
    types: int = 2
    """Annotator types K (1 = Bradley-Terry: no disagreement can be seen)."""
    folds: int = 5
    seed: int = 0
    epochs: int = 30
    """Most passes over a training split; early stopping usually ends sooner."""
    patience: int = 3
    """Epochs without a better held-out loss before stopping."""
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 256
    objective: str = "types"
    """types (above), or a reward-model objective of `actors.reward_head` (mean_variance, categorical, mixture)
    whose per-answer spread is read as disagreement: the comparison `rlhf experiment data-audit` reports."""
    num_atoms: int = 11
    num_components: int = 2


class FoldLeak(RuntimeError):
    """A row was scored by heads that were trained on it."""


@dataclass
class Fit:
    p: torch.Tensor  # (N,) held-out P(an annotator from the pool prefers chosen)
    disagreement: torch.Tensor  # (N,) in [0, 1] for types
    tie: torch.Tensor  # (N,) in [0, 1] for types (nan for other objectives)
    nll: torch.Tensor  # (N,) held-out -log P(the given label)
    fold: torch.Tensor  # (N,) the fold that scored the row
    type_weights: list = field(default_factory=list)  # per fold: pi
    epochs: list = field(default_factory=list)  # per fold: epochs trained
    trained_on: list = field(default_factory=list)  # per fold: (n_f,) the rows its heads were trained on


def features(encoder, contexts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str],
             progress: Optional[Callable[[int], None]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2D + 1) features of the chosen and of the rejected answers (module docstring); each distinct
    text is embedded once."""
    from orchestrator.tools.audit.scan import words

    texts = list(dict.fromkeys([*contexts, *chosen, *rejected]))
    index = {t: i for i, t in enumerate(texts)}
    emb = encoder.embed(texts, progress=progress)  # (U, D)
    ctx = emb[[index[t] for t in contexts]]

    def side(answers: Sequence[str]) -> torch.Tensor:
        e = emb[[index[t] for t in answers]]
        n_words = torch.tensor([math.log1p(words(t)) for t in answers], dtype=torch.float32)[:, None]
        return torch.cat([e, ctx * e, n_words], dim=-1)

    return side(chosen), side(rejected)


def fold_split(groups: Sequence[int], folds: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(train rows, test rows) per fold: the distinct groups in a seeded random order, dealt round-robin,
    so rows of one group share a fold."""
    groups_t = torch.as_tensor(list(groups))
    unique = torch.unique(groups_t)
    order = unique[torch.randperm(len(unique), generator=torch.Generator().manual_seed(seed))]
    fold_of_group = {int(g): k % folds for k, g in enumerate(order)}
    fold = torch.tensor([fold_of_group[int(g)] for g in groups_t])
    return [((fold != f).nonzero().squeeze(1), (fold == f).nonzero().squeeze(1)) for f in range(folds)]


class _Heads(torch.nn.Module):
    """A linear utility per output on the features, and the types' mixing logits."""

    def __init__(self, dim: int, outputs: int, types: int):
        super().__init__()
        self.linear = torch.nn.Linear(dim, outputs)
        self.mix = torch.nn.Parameter(torch.zeros(types))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def _head(cfg: FitConfig):
    from actors.reward_head import RewardHead

    if cfg.objective == "types":
        return None
    return RewardHead(cfg.objective, num_atoms=cfg.num_atoms if cfg.objective == "categorical" else 0,
                      num_components=cfg.num_components if cfg.objective == "mixture" else 0)


def _pair_loss(model: _Heads, head, out_c: torch.Tensor, out_r: torch.Tensor) -> torch.Tensor:
    if head is None:
        return annotator_types_loss(out_c, out_r, F.log_softmax(model.mix, -1))
    return head.loss(out_c, out_r).pair


def _fit_fold(xc: torch.Tensor, xr: torch.Tensor, train: torch.Tensor, cfg: FitConfig, seed: int) -> tuple[_Heads, int]:
    """Heads trained on the rows `train` (xc, xr already standardised); early stopping on a tenth of them."""
    head = _head(cfg)
    outputs = cfg.types if head is None else head.num_labels
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _Heads(xc.shape[1], outputs, cfg.types)
    shuffled = train[torch.randperm(len(train), generator=g)]
    n_val = max(1, len(train) // 10)
    val, fit = shuffled[:n_val], shuffled[n_val:]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best, best_state, stale, epoch = math.inf, None, 0, 0
    for epoch in range(1, cfg.epochs + 1):
        order = fit[torch.randperm(len(fit), generator=g)]
        for start in range(0, len(order), cfg.batch_size):
            b = order[start:start + cfg.batch_size]
            loss = _pair_loss(model, head, model(xc[b]), model(xr[b])).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            val_loss = float(_pair_loss(model, head, model(xc[val]), model(xr[val])).mean())
        if val_loss < best - 1e-5:
            best, best_state, stale = val_loss, {k: v.clone() for k, v in model.state_dict().items()}, 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    model.load_state_dict(best_state)
    return model, epoch


def crossfit(xc: torch.Tensor, xr: torch.Tensor, groups: Sequence[int], cfg: FitConfig,
             log: Optional[Callable[[str], None]] = None) -> Fit:
    """Score every row with heads trained on the other folds (module docstring). xc, xr: (N, F) raw
    features of chosen and rejected; groups: (N,) duplicate group of each row."""
    n = len(xc)
    head = _head(cfg)
    p, dis, tie, nll = (torch.full((n,), math.nan) for _ in range(4))
    fold_of = torch.full((n,), -1, dtype=torch.long)
    fit = Fit(p, dis, tie, nll, fold_of)
    for f, (train, test) in enumerate(fold_split(groups, cfg.folds, cfg.seed)):
        both = torch.cat([xc[train], xr[train]])
        mean, std = both.mean(0), both.std(0).clamp_min(1e-6)
        zc, zr = (xc - mean) / std, (xr - mean) / std
        model, epochs = _fit_fold(zc, zr, train, cfg, seed=cfg.seed * 1000 + f)
        with torch.no_grad():
            out_c, out_r = model(zc[test]), model(zr[test])
            nll[test] = _pair_loss(model, head, out_c, out_r).float()
            if head is None:
                log_pi = F.log_softmax(model.mix, -1)
                p[test], dis[test], tie[test] = (t.float() for t in annotator_types_split(out_c, out_r, log_pi))
                fit.type_weights.append([round(float(w), 4) for w in log_pi.exp()])
            else:
                p[test] = torch.exp(-nll[test])
                spread_c, spread_r = head.std(out_c), head.std(out_r)
                dis[test] = (spread_c.square() + spread_r.square()).sqrt().float()
        if bool((fold_of[test] >= 0).any()):
            raise FoldLeak(f"fold split: row {int(test[(fold_of[test] >= 0)][0])} is scored by two folds")
        fold_of[test] = f
        fit.epochs.append(epochs)
        fit.trained_on.append(train)
        if log:
            log(f"fold {f + 1}/{cfg.folds}: trained on {len(train)} pairs for {epochs} epochs, held-out loss "
                f"{float(nll[test].mean()):.4f} on {len(test)} pairs"
                + (f", type weights {fit.type_weights[-1]}" if head is None else ""))
    check_no_leak(fit, groups)
    return fit


def check_no_leak(fit: Fit, groups: Sequence[int]) -> None:
    """Raise `FoldLeak` unless every row was scored once, by heads that saw neither it nor a row of its group."""
    if bool((fit.fold < 0).any()):
        raise FoldLeak(f"fold split: row {int((fit.fold < 0).nonzero()[0])} was never scored")
    groups_t = torch.as_tensor(list(groups))
    for f, train in enumerate(fit.trained_on):
        seen = set(groups_t[train].tolist())
        scored = (fit.fold == f).nonzero().squeeze(1)
        for row in scored.tolist():
            if int(groups_t[row]) in seen:
                raise FoldLeak(f"fold split leaks: row {row} is scored by heads trained on it or on a copy of it "
                               f"(fold {f + 1})")
