"""`rlhf experiment data-audit`: does `rlhf data audit` find what the built-in data is known to hide?

The built-in world records, per pair, whether its two answers differ in the disputed style (`disputed`: the
annotator groups would disagree) and `p_chosen`, the probability that an annotator drawn from the pool
prefers chosen. Per seed s, on `builtin:hidden-context` (20000 pairs) and `builtin:preferences` (4000),
each drawn with seed s and written to JSONL (the audit reads them as a user's file), the audit runs with
its defaults (fold seed s) and is scored against that truth:

- disagreement: AUC of `disagreement` for disputed pairs against agreed ones, and against near-ties (not
  disputed, |p_chosen - 0.5| < 0.1: a toss-up for everyone). Beside it, what a model without annotator
  types offers: Bradley-Terry's uncertainty 1 - |2p - 1| (the one-type fit behind the audit's evidence) and mean-variance DPL's spread
  sqrt(s_c^2 + s_r^2) (the per-answer std, objective mean_variance);
- label errors: a copy with `FLIP_SHARE` of the rows' answers swapped at random; AUC of `label_flip` for
  the swapped rows against the rest, over all rows and over the clear ones (|p_chosen - 0.5| > 0.3), next
  to the ceiling of a model that knew p_chosen exactly (natural label noise caps it);
- duplicates: a copy with `DUP_SHARE` of the rows inserted again later, half verbatim and half with
  case, whitespace and punctuation changed; precision and recall of `duplicate_of` (truth: the planted
  rows and the rows that already repeated an earlier one verbatim);
- length: `chosen_longer_share` against the share the world's own word counts give (equal, exactly).

Findings, pass rules fixed before any run (the issue's aims), applied to the mean over seeds. One encoder
serves every audit of a seed, its cache shared, so a copy's texts are embedded once. Outputs under --out:
seed<s>/*.jsonl and audits, findings.json, results.md. --quick: one seed, 3000 and 1000 pairs.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Sequence

import torch

from orchestrator.experiments.common import Finding, Seeded, seeded_main, seeded_parser, variant_table

__all__ = ["FINDINGS", "EXPERIMENT", "main", "auc"]

FLIP_SHARE = 0.1
DUP_SHARE = 0.05
TIE = 0.1
CLEAR = 0.3
AIM_DISAGREEMENT, AIM_FLIPS = 0.8, 0.9
DATASETS = {"hidden-context": 20000, "preferences": 4000}
QUICK_ROWS = {"hidden-context": 3000, "preferences": 1000}


def auc(score: Sequence[float], positive: Sequence[bool], negative: Sequence[bool]) -> float:
    """P(score of a random positive > score of a random negative), ties counted 1/2 (Mann-Whitney U)."""
    s = torch.tensor(score, dtype=torch.float64)
    pos, neg = s[torch.tensor(positive)], s[torch.tensor(negative)]
    if not len(pos) or not len(neg):
        return float("nan")
    both = torch.cat([pos, neg])
    ranks = _average_ranks(both)
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(x)
    ranks = torch.empty_like(x)
    values = x[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _flipped(rows: list[dict], seed: int) -> tuple[list[dict], list[bool]]:
    rng = random.Random(f"flip:{seed}")
    out, flipped = [], []
    for r in rows:
        f = rng.random() < FLIP_SHARE
        out.append({**r, "chosen": r["rejected"], "rejected": r["chosen"], "p_chosen": 1 - r["p_chosen"]} if f else r)
        flipped.append(f)
    return out, flipped


def _variant(text: str, rng: random.Random) -> str:
    """The same text after a change the duplicate rule ignores: case, spacing, punctuation."""
    pick = rng.randrange(3)
    if pick == 0:
        return text.upper()
    if pick == 1:
        return "  " + text.replace(" ", "   ") + " "
    return text.rstrip(".!?") + " !!" if not text.endswith("!!") else text.replace("!!", "").strip()


def _with_duplicates(rows: list[dict], seed: int) -> tuple[list[dict], list[bool]]:
    rng = random.Random(f"dup:{seed}")
    out, planted = list(rows), [False] * len(rows)
    for k in range(int(DUP_SHARE * len(rows))):
        i = rng.randrange(len(out))
        while planted[i]:
            i = rng.randrange(len(out))
        src = out[i]
        copy = dict(src) if k % 2 == 0 else {**src, "prompt": _variant(src["prompt"], rng),
                                             "chosen": _variant(src["chosen"], rng), "rejected": src["rejected"].lower()}
        at = rng.randrange(i + 1, len(out) + 1)  # after its source: the copy is the later one
        out.insert(at, copy)
        planted.insert(at, True)
    return out, planted


def _verbatim_repeats(rows: list[dict]) -> list[bool]:
    seen, out = set(), []
    for r in rows:
        key = (r["prompt"], r["chosen"], r["rejected"])
        out.append(key in seen)
        seen.add(key)
    return out


def _scores(result) -> list[dict]:
    return [r for r in result.rows if r["error"] is None]


def seed_chain(out: Path, seed: int, quick: bool) -> dict:
    """The audits of one seed: {dataset: numbers}."""
    from actors.embedding import TextEncoder
    from orchestrator.builtin import world
    from orchestrator.tools.audit import AuditConfig, audit
    from orchestrator.tools.audit.scan import duplicates, read_pairs

    out.mkdir(parents=True, exist_ok=True)
    encoder = TextEncoder(AuditConfig(data="").model)
    encoder.cache = {}
    numbers = {}
    for name, n in DATASETS.items():
        n = QUICK_ROWS[name] if quick else n
        rows = (world.hidden_context_rows if name == "hidden-context" else world.preference_rows)("train", seed=seed, n=n)
        log = lambda m, name=name: print(f"data-audit: seed {seed}, {name}: {m}", flush=True)  # noqa: E731
        base = AuditConfig(data=_write(out / f"{name}.jsonl", rows), seed=seed)
        types = audit(base, log=log, progress=False, encoder=encoder)
        mv = audit(AuditConfig(**{**base.__dict__, "objective": "mean_variance", "types": 1}), log=log, progress=False,
                   encoder=encoder)
        disputed = [bool(r["disputed"]) for r in rows]
        agreed = [not d for d in disputed]
        ties = [not d and abs(r["p_chosen"] - 0.5) < TIE for r, d in zip(rows, disputed)]
        dis = [r["disagreement"] for r in _scores(types)]
        unc = [1 - abs(2 * p - 1) for p in types.baseline.p.tolist()]  # the evidence's Bradley-Terry fit, same folds
        spread = [r["disagreement"] for r in _scores(mv)]
        ev = types.summary["disagreement"]["evidence"]
        nums = {"auc_vs_agreed": auc(dis, disputed, agreed), "auc_vs_ties": auc(dis, disputed, ties),
                "bt_auc_vs_agreed": auc(unc, disputed, agreed), "bt_auc_vs_ties": auc(unc, disputed, ties),
                "mv_auc_vs_agreed": auc(spread, disputed, agreed), "mv_auc_vs_ties": auc(spread, disputed, ties),
                "evidence_z": ev["z"], "gain_per_pair": ev["gain_per_pair"], "near_ties": sum(ties), "disputed": sum(disputed),
                "audit_s": types.summary["timing_s"]["total"], "embed_s": types.summary["timing_s"]["embed"],
                "peak_rss_mb": types.summary["peak_rss_mb"]}

        flipped_rows, flipped = _flipped(rows, seed)
        fl = audit(AuditConfig(**{**base.__dict__, "data": _write(out / f"{name}-flipped.jsonl", flipped_rows)}), log=log,
                   progress=False, encoder=encoder)
        flip = [r["label_flip"] for r in _scores(fl)]
        oracle = [1 - r["p_chosen"] for r in flipped_rows]
        clear = [abs(r["p_chosen"] - 0.5) > CLEAR for r in rows]
        kept = [not f for f in flipped]
        nums.update({"flip_auc": auc(flip, flipped, kept), "flip_auc_ceiling": auc(oracle, flipped, kept),
                     "flip_auc_clear": auc(flip, [f and c for f, c in zip(flipped, clear)], [k and c for k, c in zip(kept, clear)]),
                     "flip_auc_clear_ceiling": auc(oracle, [f and c for f, c in zip(flipped, clear)],
                                                   [k and c for k, c in zip(kept, clear)])})

        dup_rows, planted = _with_duplicates(rows, seed)
        pairs, _ = read_pairs(_write(out / f"{name}-duplicated.jsonl", dup_rows))
        found = [d is not None for d in duplicates(pairs).duplicate_of]
        truth = [p or v for p, v in zip(planted, _verbatim_repeats(dup_rows))]
        hits = sum(f and t for f, t in zip(found, truth))
        nums.update({"dup_precision": hits / max(1, sum(found)), "dup_recall": hits / max(1, sum(truth)),
                     "dup_planted": sum(planted)})

        world_share = sum(r["len_chosen"] > r["len_rejected"] for r in rows) / len(rows)
        nums.update({"chosen_longer_share": types.summary["length_bias"]["chosen_longer_share"],
                     "chosen_longer_share_world": world_share,
                     "length_share_error": abs(types.summary["length_bias"]["chosen_longer_share"] - world_share)})
        numbers[name] = nums
    return numbers


def _finding_numbers(chain: dict) -> dict:
    out = {}
    for name in DATASETS:
        n = chain[name]
        out[f"{name}_disagreement"] = {k: n[k] for k in ("auc_vs_agreed", "auc_vs_ties", "bt_auc_vs_ties", "mv_auc_vs_ties", "evidence_z")}
        out[f"{name}_flips"] = {k: n[k] for k in ("flip_auc", "flip_auc_ceiling", "flip_auc_clear", "flip_auc_clear_ceiling")}
        out[f"{name}_duplicates"] = {k: n[k] for k in ("dup_precision", "dup_recall", "length_share_error")}
    return out


FINDINGS = tuple(f for name in DATASETS for f in (
    Finding(f"{name}_disagreement", f"{name}: disagreement separates disputed pairs from agreed ones and from near-ties",
            f"auc_vs_agreed >= {AIM_DISAGREEMENT} and auc_vs_ties >= {AIM_DISAGREEMENT}",
            lambda n: n["auc_vs_agreed"] >= AIM_DISAGREEMENT and n["auc_vs_ties"] >= AIM_DISAGREEMENT,
            (("auc_vs_agreed", "{:.3f}"), ("auc_vs_ties", "{:.3f}"), ("bt_auc_vs_ties", "{:.3f}"), ("mv_auc_vs_ties", "{:.3f}"),
             ("evidence_z", "{:.1f}"))),
    Finding(f"{name}_flips", f"{name}: label_flip finds answers swapped in {FLIP_SHARE:.0%} of the rows (all rows; clear pairs)",
            f"flip_auc >= {AIM_FLIPS}", lambda n: n["flip_auc"] >= AIM_FLIPS,
            (("flip_auc", "{:.3f}"), ("flip_auc_ceiling", "{:.3f}"), ("flip_auc_clear", "{:.3f}"), ("flip_auc_clear_ceiling", "{:.3f}"))),
    Finding(f"{name}_duplicates", f"{name}: planted duplicates found; chosen_longer_share equals the world's",
            "dup_precision == 1 and dup_recall == 1 and length_share_error == 0",
            lambda n: n["dup_precision"] == 1 and n["dup_recall"] == 1 and n["length_share_error"] == 0,
            (("dup_precision", "{:.3f}"), ("dup_recall", "{:.3f}"), ("length_share_error", "{:.1g}"))),
))

COLUMNS = [("auc_vs_agreed", "disagreement AUC: disputed vs agreed", "{:.3f}"),
           ("auc_vs_ties", "disagreement AUC: disputed vs near-ties", "{:.3f}"),
           ("bt_auc_vs_ties", "Bradley-Terry uncertainty AUC vs near-ties", "{:.3f}"),
           ("mv_auc_vs_ties", "mean-variance DPL spread AUC vs near-ties", "{:.3f}"),
           ("evidence_z", "evidence of types (z)", "{:.1f}"),
           ("flip_auc", "label_flip AUC, planted flips", "{:.3f}"), ("flip_auc_ceiling", "(ceiling: true p)", "{:.3f}"),
           ("flip_auc_clear", "label_flip AUC, clear pairs", "{:.3f}"), ("flip_auc_clear_ceiling", "(ceiling)", "{:.3f}"),
           ("dup_precision", "duplicates precision", "{:.3f}"), ("dup_recall", "duplicates recall", "{:.3f}"),
           ("length_share_error", "chosen_longer_share error", "{:.1g}"),
           ("audit_s", "audit seconds (types + evidence)", "{:.0f}"), ("peak_rss_mb", "peak memory MB", "{:.0f}")]


def report(folder: Path, chains: list, quick: bool) -> dict:
    summary, table = variant_table(chains, COLUMNS)
    (folder / "results.md").write_text(table + "\n")
    print(table)
    return {"table": summary, "per_seed": chains, "rows": QUICK_ROWS if quick else DATASETS}


EXPERIMENT = Seeded(
    name="data-audit", description=__doc__.split("\n\n")[0], findings=FINDINGS, chain=seed_chain, numbers=_finding_numbers,
    summary_line=lambda r: (f"builtin:hidden-context ({r['rows']['hidden-context']} pairs) and builtin:preferences "
                            f"({r['rows']['preferences']}), seeds {', '.join(map(str, r['seeds']))}, {r['wall_time_s']:.0f} s"),
    report=report, seeds=3, quick_help="one seed, 3000 and 1000 pairs", single_thread=False)


def parser(prog: str | None = None):
    return seeded_parser(EXPERIMENT, prog)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    return seeded_main(EXPERIMENT, argv, prog)


if __name__ == "__main__":
    raise SystemExit(main())
