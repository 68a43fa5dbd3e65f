"""Reproduction of the 1-D synthetic experiment of the DPL paper (arXiv 2312.08358) and its figure.

Setup (the paper's running example of hidden context): alternatives ``a ~ U[0, 1]``, utility

    u(a, z) = a          if a < 0.8
    u(a, z) = 2 a z      otherwise,          z ~ Bernoulli(1/2)

so alternatives above 0.8 are either the worst (u = 0) or the best (u = 2a >= 1.6), with mean
utility a everywhere. A comparison draws two alternatives and an independent z for each (as the
paper's code does); the higher utility is chosen, a tie (both 0) is decided by a fair coin.

Three small MLPs are trained on the same stream of comparisons with the losses of
``losses.preference``:

1. Bradley-Terry (one output). The paper shows that preference learning with hidden context
   aggregates like the Borda count ``BC(a) = P(a beats b), b ~ U[0, 1]``, here ``a + 0.1`` for a < 0.8 and ``0.275 + 0.25 a``
   for a >= 0.8, so it ranks a = 0.75 (BC 0.85) above a = 0.95 (BC 0.5125) though 0.95 has the
   larger expected utility.
2. Mean-variance DPL (mean, raw std): its std is far larger for a >= 0.8, where hidden context
   makes the comparisons noisy.
3. Categorical DPL (20 atoms, as in the paper's code, with the DPL code's entropy bonus on the
   batch-mean distribution, which spreads the alternatives over the atoms instead of letting the
   softmax saturate early): for a >= 0.8 the learned distribution is bimodal, with about half of its
   mass below and half above the utilities of the alternatives a < 0.8.

``run`` trains the three models once per seed (`--seeds`, 3 by default: initialisation and comparison
stream by seed), computes each finding's numbers per seed and judges each finding on their mean over
the seeds (``orchestrator.experiments.common.judge``; the rules are ``FINDINGS``, fixed in advance), and
writes the paper's three-panel figure for the first seed. ``main`` is the command line (``rlhf
experiment dpl-synthetic``, or ``python -m orchestrator.experiments.dpl_synthetic --out DIR``).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Sequence

import torch
from torch import Tensor, nn

from losses.common import spearman
from losses.preference import (
    bradley_terry_loss,
    categorical_atoms,
    categorical_loss,
    mean_variance_loss,
    mean_variance_std,
)
from orchestrator.experiments.common import Finding, format_finding, judge, one_thread, write_findings

__all__ = ["run", "main", "utility", "borda_count", "sample_comparisons", "FINDINGS"]

THRESHOLD = 0.8  # alternatives at or above it carry hidden context
NUM_ATOMS = 20  # C-DPL atoms for the 1-D task, as in the paper's code
HIDDEN = 64
BATCH_SIZE = 256
FULL_STEPS = 2000
QUICK_STEPS = 600
LR_START, LR_END = 3e-3, 1e-4  # exponential decay, as in the paper's code (which decays to 1e-5)
CDPL_ENTROPY_COEF = 0.1  # the DPL code's default entropy_coef for categorical reward models

# Pass criteria of the findings.
MV_STD_RATIO_MIN = 3.0  # "far larger": mean std for a >= 0.8 at least 3x that for a < 0.8
CDPL_SIDE_MASS_MIN = 0.25  # bimodal: at least this mass below, and above, the a < 0.8 utilities (ideal 0.5)
MODE_MIN_PROB = 0.05  # a mode is a run of consecutive atoms each with at least this probability
CDPL_BIMODAL_FRAC_MIN = 0.75  # bimodal: at least this fraction of the grid a >= 0.8 has >= 2 modes
SPLIT_ALTERNATIVE = 0.4  # u(0.4) = 0.4 lies between u = 0 and u = 2a >= 1.6 of the alternatives a >= 0.8
SEEDS = 3

FINDINGS = (
    Finding("bt_orders_like_borda", "1. Bradley-Terry orders alternatives like the Borda count (BC(0.75) = 0.85 > "
            "BC(0.95) = 0.5125), not like the expected utility: u_BT(0.75) - u_BT(0.95)",
            "bt_margin > 0", lambda n: n["bt_margin"] > 0,
            (("bt_margin", "{:+.3f}"), ("spearman_bt_borda", "{:.3f}"), ("spearman_bt_expected", "{:.3f}"))),
    Finding("mv_std_larger_above_0.8", "2. MV-DPL's mean std for a >= 0.8 over that for a < 0.8",
            f"ratio >= {MV_STD_RATIO_MIN:g}", lambda n: n["ratio"] >= MV_STD_RATIO_MIN,
            (("ratio", "{:.1f}"), ("std_above", "{:.3f}"), ("std_below", "{:.3f}"))),
    Finding("cdpl_bimodal_above_0.8", "3. C-DPL is bimodal for a >= 0.8: its mass below and above its utility of a = 0.4, "
            "and the share of a >= 0.8 with 2+ modes",
            f"mass_low >= {CDPL_SIDE_MASS_MIN} and mass_high >= {CDPL_SIDE_MASS_MIN} and frac_bimodal >= {CDPL_BIMODAL_FRAC_MIN}",
            lambda n: n["mass_low"] >= CDPL_SIDE_MASS_MIN and n["mass_high"] >= CDPL_SIDE_MASS_MIN
            and n["frac_bimodal"] >= CDPL_BIMODAL_FRAC_MIN,
            (("mass_low", "{:.3f}"), ("mass_high", "{:.3f}"), ("frac_bimodal", "{:.2f}"), ("frac_unimodal_below", "{:.2f}"))),
)


def utility(a: Tensor, z: Tensor) -> Tensor:
    """``u(a, z) = a`` for a < 0.8, else ``2 a z`` (DPL paper's 1-D example). Shapes ``(N,)``."""
    return torch.where(a < THRESHOLD, a, 2.0 * a * z)


def borda_count(a: Tensor) -> Tensor:
    """Borda count ``BC(a) = P(u(a, z) > u(b, z')) + P(tie) / 2`` for ``b ~ U[0, 1]``, independent z, z'.

    For a < 0.8: beats b < a (prob a) and b >= 0.8 with z' = 0 (prob 0.2 * 0.5): ``a + 0.1``.
    For a >= 0.8: with z = 1 (u = 2a >= 1.6) beats every b < 0.8 (0.8), every b >= 0.8 with z' = 0
    (0.1) and b in [0.8, a) with z' = 1 ((a - 0.8) / 2); with z = 0 (u = 0) only ties b >= 0.8 with
    z' = 0 (counted 1/2: 0.05). Averaging over z: ``0.5 * (0.9 + (a - 0.8) / 2) + 0.5 * 0.05 =
    0.275 + 0.25 a``.
    """
    return torch.where(a < THRESHOLD, a + 0.1, 0.275 + 0.25 * a)


def sample_comparisons(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Draw n comparisons; returns ``(a_chosen, a_rejected)``, each ``(n, 1)``."""
    a = torch.rand(n, generator=generator)  # (n,)
    b = torch.rand(n, generator=generator)  # (n,)
    z_a = (torch.rand(n, generator=generator) < 0.5).float()
    z_b = (torch.rand(n, generator=generator) < 0.5).float()
    u_a, u_b = utility(a, z_a), utility(b, z_b)
    coin = torch.rand(n, generator=generator) < 0.5
    a_wins = (u_a > u_b) | ((u_a == u_b) & coin)  # (n,)
    chosen = torch.where(a_wins, a, b)
    rejected = torch.where(a_wins, b, a)
    return chosen[:, None], rejected[:, None]


def _mlp(out_dim: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(1, HIDDEN), nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
        nn.Linear(HIDDEN, out_dim),
    )


def _features(a: Tensor) -> Tensor:
    return 2.0 * a - 1.0  # centre the input on [-1, 1]


def _train(steps: int, seed: int) -> dict[str, nn.Module]:
    """Train the BT, MV-DPL and C-DPL MLPs on one shared stream of comparisons."""
    torch.manual_seed(seed)
    models = {"bt": _mlp(1), "mv": _mlp(2), "cat": _mlp(NUM_ATOMS)}
    generator = torch.Generator().manual_seed(seed + 1)
    params = [p for m in models.values() for p in m.parameters()]
    optimizer = torch.optim.Adam(params, lr=LR_START)  # the models share no parameter: one Adam is three
    decay = (LR_END / LR_START) ** (1.0 / max(1, steps))
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=decay)
    for _ in range(steps):
        chosen, rejected = sample_comparisons(BATCH_SIZE, generator)  # (N, 1) each
        x = _features(torch.cat([chosen, rejected]))  # (2N, 1)
        bt_c, bt_r = models["bt"](x).squeeze(-1).chunk(2)  # (N,) each
        mv_c, mv_r = models["mv"](x).chunk(2)  # (N, 2) each
        cat_c, cat_r = models["cat"](x).chunk(2)  # (N, K) each
        cat_losses, cat_entropy_loss = categorical_loss(cat_c, cat_r, entropy_coef=CDPL_ENTROPY_COEF)
        loss = (
            bradley_terry_loss(bt_c, bt_r).mean()
            + mean_variance_loss(mv_c, mv_r).mean()
            + cat_losses.mean()
            + cat_entropy_loss
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return models


def _count_modes(p: Tensor) -> int:
    """Modes of a distribution over atoms: maximal runs of consecutive atoms with p >= MODE_MIN_PROB.

    Counting runs rather than local maxima keeps a flat or slightly noisy peak one mode.
    """
    above = (p >= MODE_MIN_PROB).int()
    starts = above[0] + (above[1:] - above[:-1]).clamp_min(0).sum()
    return int(starts)


def _evaluate(models: dict[str, nn.Module], grid: Tensor) -> dict:
    """Model outputs on the grid of alternatives ``(G,)``."""
    with torch.no_grad():
        x = _features(grid[:, None])
        bt = models["bt"](x).squeeze(-1)  # (G,)
        mv = models["mv"](x)  # (G, 2)
        cat = torch.softmax(models["cat"](x), dim=-1)  # (G, K)
        probe_points = [SPLIT_ALTERNATIVE, 0.5, 0.75, 0.9, 0.95]
        probes = _features(torch.tensor(probe_points)[:, None])
        bt_probe = models["bt"](probes).squeeze(-1)
        cat_probe = torch.softmax(models["cat"](probes), dim=-1)
    return {
        "bt": bt, "mv_mean": mv[:, 0], "mv_std": mean_variance_std(mv), "cat": cat,
        "bt_probe": dict(zip(probe_points, bt_probe.tolist())),
        "cat_probe": dict(zip(probe_points, cat_probe)),
    }


def _findings(ev: dict, grid: Tensor) -> dict[str, dict]:
    """Each finding's numbers for one trained seed."""
    above = grid >= THRESHOLD
    atoms = categorical_atoms(NUM_ATOMS)
    borda = borda_count(grid)

    bt_075, bt_095 = ev["bt_probe"][0.75], ev["bt_probe"][0.95]
    bt_finding = {"bt_u(0.75)": bt_075, "bt_u(0.95)": bt_095, "bt_margin": bt_075 - bt_095,
                  "spearman_bt_borda": float(spearman(ev["bt"], borda)), "spearman_bt_expected": float(spearman(ev["bt"], grid))}

    std_below = float(ev["mv_std"][~above].mean())
    std_above = float(ev["mv_std"][above].mean())
    mv_finding = {"std_below": std_below, "std_above": std_above, "ratio": std_above / max(std_below, 1e-12)}

    # C-DPL is identified only up to an increasing map of the atoms, so "low" and "high" are measured
    # against the model's own utility of a middle alternative: split = its mean at a = 0.4. For
    # a >= 0.8 the true utility is 0 (below u(0.4)) or 2a (above) with probability 1/2 each.
    split = float((ev["cat_probe"][SPLIT_ALTERNATIVE] * atoms).sum())
    dist_above = ev["cat"][above].mean(0)  # (K,) mean distribution over a >= 0.8
    modes = torch.tensor([_count_modes(p) for p in ev["cat"]])  # (G,)
    cat_finding = {
        "split_atom": split, "mass_low": float(dist_above[atoms < split].sum()),
        "mass_high": float(dist_above[atoms > split].sum()), "frac_bimodal": float((modes[above] >= 2).float().mean()),
        "frac_unimodal_below": float((modes[~above] == 1).float().mean()),
        "modes_at_0.9": _count_modes(ev["cat_probe"][0.9]), "modes_at_0.5": _count_modes(ev["cat_probe"][0.5]),
    }
    return {"bt_orders_like_borda": bt_finding, "mv_std_larger_above_0.8": mv_finding,
            "cdpl_bimodal_above_0.8": cat_finding}


def _plot(ev: dict, grid: Tensor, path: str) -> None:
    from matplotlib.colors import PowerNorm
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    fig = Figure(figsize=(13, 3.8), layout="constrained")
    ax1, ax2, ax3 = fig.subplots(1, 3)
    g = grid.numpy()

    ax1.set_title("Bradley-Terry (normal preference learning)")
    ax1.plot(g, ev["bt"].numpy(), color="k", label=r"learned $\hat u(a)$")
    ax1.set_xlabel("alternative $a$")
    ax1.set_ylabel(r"learned utility $\hat u(a)$")
    twin = ax1.twinx()
    twin.plot(g, borda_count(grid).numpy(), color="tab:blue", label="Borda count BC$(a)$")
    twin.plot(g, g, color="tab:red", ls="--", label=r"expected utility $\bar u(a) = a$")
    twin.set_ylabel("BC$(a)$,  $\\bar u(a)$")
    for a, marker in ((0.75, "o"), (0.95, "s")):
        u = ev["bt_probe"][a]
        ax1.plot([a], [u], marker=marker, color="k", ls="none", label=f"$\\hat u({a})$ = {u:.2f}")
    ax1.axvline(THRESHOLD, color="grey", lw=0.8, ls=":")
    lines = ax1.get_lines()[:3] + twin.get_lines()
    ax1.legend(lines, [ln.get_label() for ln in lines], loc="upper left", fontsize=8, frameon=False)

    ax2.set_title("DPL (mean and variance)")
    mean, std = ev["mv_mean"].numpy(), ev["mv_std"].numpy()
    ax2.plot(g, mean, color="k", label=r"$\hat\mu(a)$")
    ax2.fill_between(g, mean - std, mean + std, color="k", alpha=0.2, label=r"$\hat\mu(a) \pm \hat\sigma(a)$")
    ax2.axvline(THRESHOLD, color="grey", lw=0.8, ls=":")
    pad = 0.5 * (mean.max() - mean.min()) + 1.0  # as in the paper: the band is cut, the means stay visible
    ax2.set_ylim(mean.min() - pad, mean.max() + pad)
    ax2.set_xlabel("alternative $a$")
    ax2.set_ylabel(r"$\hat\mu(a) \pm \hat\sigma(a)$")
    ax2.legend(loc="upper left", fontsize=8, frameon=False)

    ax3.set_title("DPL (categorical)")
    half = 0.5 / (NUM_ATOMS - 1)
    image = ax3.imshow(
        ev["cat"].T.numpy(), origin="lower", aspect="auto", cmap="Greys",
        extent=(0.0, 1.0, -half, 1.0 + half), interpolation="nearest",
        norm=PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0),  # square-root scale: split modes stay visible
    )
    fig.colorbar(image, ax=ax3, label=r"$\hat p(\mathrm{atom} \mid a)$")
    for a, color in ((0.5, "tab:blue"), (0.9, "tab:orange")):
        ax3.axvline(a, color=color, lw=1.0, ls="--")
        p = ev["cat_probe"][a].numpy()
        atoms = categorical_atoms(NUM_ATOMS).numpy()
        label = f"$\\hat p(\\cdot \\mid a={a})$"
        ax3.plot(a + 0.08 * p / max(p.max(), 1e-9), atoms, color=color, lw=1.2, label=label)
    ax3.set_xlim(0.0, 1.0)
    ax3.set_xlabel("alternative $a$")
    ax3.set_ylabel("utility atom")
    ax3.legend(loc="upper left", fontsize=8, frameon=True)

    fig.suptitle(r"Hidden context: $u(a,z)=a$ for $a<0.8$, else $2az$, $z\sim\mathrm{Bernoulli}(1/2)$", fontsize=10)
    fig.savefig(path, dpi=120)


def run(out_dir: str, seed: int = 0, steps: int = FULL_STEPS, quick: bool = False, seeds: int = SEEDS) -> dict:
    """Train the three models for each of `seeds` seeds (seed, seed+1, ...), write ``dpl_synthetic.png``
    (the first seed's) into ``out_dir``, return the findings judged over the seeds.

    Args:
        out_dir: directory for the figure (created if missing).
        seed: the first seed; each seeds model initialisation and the comparison stream.
        steps: optimiser steps (each on a fresh batch of BATCH_SIZE comparisons).
        quick: use ``QUICK_STEPS`` instead of ``steps`` (for tests).
        seeds: how many seeds.

    Returns:
        ``{finding key: judge verdict, "passed": bool, "figure": path, "seeds", "steps", "seconds"}``.
    """
    start = time.perf_counter()
    steps = QUICK_STEPS if quick else steps
    os.makedirs(out_dir, exist_ok=True)
    seed_list = [seed + i for i in range(seeds)]
    figure = os.path.join(out_dir, "dpl_synthetic.png")
    per_seed = []
    # One thread: these matmuls are too small to gain much from a second one, and with two threads a
    # busy machine slows training ~10x (measured here: 10-17 ms/step vs 100-380 ms/step under load).
    with one_thread():
        for s in seed_list:
            with torch.random.fork_rng(devices=[]):  # leaves the caller's global RNG untouched
                models = _train(steps, s)
            grid = torch.linspace(0.0, 1.0, 201)
            ev = _evaluate(models, grid)
            per_seed.append(_findings(ev, grid))
            if s == seed_list[0]:
                _plot(ev, grid, figure)
    result = {f.key: judge(f, [p[f.key] for p in per_seed]) for f in FINDINGS}
    result.update({"passed": all(result[f.key]["passed"] for f in FINDINGS), "figure": figure, "seeds": seed_list,
                   "steps": steps, "seconds": round(time.perf_counter() - start, 2)})
    return result


def format_findings(result: dict) -> list[str]:
    """Readable lines, one per finding."""
    return [f"DPL synthetic experiment (arXiv 2312.08358): seeds {', '.join(map(str, result['seeds']))}, "
            f"{result['steps']} steps, {result['seconds']:.1f} s; figure (seed {result['seeds'][0]}) {result['figure']}"] + [
        format_finding(f, result[f.key]) for f in FINDINGS]


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The options of `rlhf experiment dpl-synthetic`."""
    p = argparse.ArgumentParser(
        prog=prog or "rlhf experiment dpl-synthetic",
        description="Reproduce the DPL paper's 1-D synthetic experiment (BT vs mean-variance vs categorical DPL).",
    )
    p.add_argument("--out", default="runs/dpl_synthetic", help="output directory (figure, findings.json)")
    p.add_argument("--seed", type=int, default=0, help="the first seed; seeds are seed, seed+1, ...")
    p.add_argument("--seeds", type=int, default=SEEDS, help=f"seeds (default {SEEDS})")
    p.add_argument(
        "--steps", type=int, default=FULL_STEPS, help=f"optimiser steps (batch of {BATCH_SIZE} comparisons)"
    )
    p.add_argument("--quick", action="store_true", help=f"{QUICK_STEPS} steps, for smoke tests")
    return p


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Command line: run the experiment, print the findings, write ``findings.json``; exit 1 on a FAIL."""
    args = parser(prog).parse_args(argv)

    result = run(args.out, seed=args.seed, steps=args.steps, quick=args.quick, seeds=args.seeds)
    write_findings(result, format_findings(result), args.out)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
