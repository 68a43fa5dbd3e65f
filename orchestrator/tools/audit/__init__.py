"""`rlhf data audit DATA --out DIR`: where a preference dataset hides disagreement, label errors, length bias
and duplicates, before anyone trains on it (docs/data-audit.md).

    pairs  = read_pairs(DATA)                               # what rlhf rm reads, every row in input order
    dups   = duplicates(pairs); bias = length_bias(...)     # no model needed (scan.py)
    xc, xr = features(TextEncoder(--model, --layers), ...)  # a frozen encoder, each text embedded once
    fit    = crossfit(xc, xr, groups, FitConfig(...))       # K annotator types, K folds (crossfit.py)
    write_outputs(...)                                       # rows.jsonl, summary.json, report.md/.html (report.py)

Exit codes: 0 done; 1 a `--fail-on` rule holds (the outputs are written: they are the evidence); 2 bad
input (a malformed row names file, row and field; a bad option names it), with nothing written.
"""

from __future__ import annotations

import argparse
import math
import re
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from orchestrator.data.stats import DataError
from orchestrator.tools.args import non_negative_int, positive_int

__all__ = ["HELP", "DESCRIPTION", "add_args", "run", "AuditConfig", "Audit", "audit", "parse_rules", "failed_rules",
           "METRICS"]

HELP = "find disagreement, label errors, length bias and duplicates in preference data"
DESCRIPTION = ("Cross-fitted annotator-type model on a frozen encoder; writes rows.jsonl, summary.json, report.md and "
               "report.html into --out (docs/data-audit.md). Exit 1 when a --fail-on rule holds, 2 on bad input.")
WEIGHT_COLUMN = "audit_weight"
"""The column `--write-clean` adds: what `data.weight_column` of `rlhf rm` and `rlhf dpo` reads."""


@dataclass
class AuditConfig:
    data: str
    split: str = "train"
    subset: str = ""
    data_files: list = field(default_factory=list)
    data_dir: str = ""
    max_rows: int = 0
    on_error: str = "raise"
    model: str = "builtin:minilm"
    layers: int = 0
    """The encoder block read (0: half of the model's blocks, rounded up; 3 of MiniLM's 6)."""
    types: int = 2
    folds: int = 5
    seed: int = 0
    disagreement_threshold: float = 0.5
    flip_threshold: float = 0.8
    group_by: str = ""
    batch_size: int = 64
    trust_remote_code: bool = False
    objective: str = "types"


@dataclass
class Audit:
    pairs: list
    rows: list  # one dict per input row (rows.jsonl)
    summary: dict
    fit: object = None
    baseline: object = None  # the one-type (Bradley-Terry) `Fit` on the same folds, behind the evidence (types > 1)


METRICS = {
    "label_noise": lambda s: s["label_noise"]["share"],
    "label_errors": lambda s: s["label_noise"]["n_rows"],
    "disagreement": lambda s: s["disagreement"]["share"],
    "disputed": lambda s: s["disagreement"]["n_rows"],
    "duplicates": lambda s: s["duplicates"]["n_rows"],
    "duplicates_share": lambda s: s["duplicates"]["share"],
    "swapped": lambda s: s["duplicates"]["swapped"],
    "chosen_longer_share": lambda s: s["length_bias"]["chosen_longer_share"],
    "length_effect": lambda s: s["length_bias"]["logit_per_10_words"],
    "over_length": lambda s: s["over_max_length"]["n_rows"],
    "malformed": lambda s: s["n_rows"] - s["usable_rows"],
}
"""What `--fail-on` rules may name: shares in [0, 1] or counts of rows (docs/data-audit.md)."""
_RULE = re.compile(r"^\s*([a-z_]+)\s*(>=|<=|>|<|==)\s*([-+0-9.eE]+)\s*$")
_OPS = {">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
        "==": lambda a, b: a == b}


def parse_rules(text: str) -> list[tuple[str, str, float]]:
    """'label_noise>0.1,duplicates>0' -> [(metric, op, value)]; a ValueError names the bad rule."""
    rules = []
    for part in filter(str.strip, text.split(",")):
        m = _RULE.match(part)
        if not m:
            raise ValueError(f"--fail-on: cannot read rule {part.strip()!r}; write METRIC>VALUE (or >=, <, <=, ==), "
                             "comma-separated")
        name, op, value = m.groups()
        if name not in METRICS:
            raise ValueError(f"--fail-on: unknown metric {name!r} in {part.strip()!r}; one of {', '.join(METRICS)}")
        try:
            rules.append((name, op, float(value)))
        except ValueError:
            raise ValueError(f"--fail-on: {value!r} in {part.strip()!r} is not a number") from None
    return rules


def failed_rules(summary: dict, rules: list[tuple[str, str, float]]) -> list[str]:
    """The rules that hold, each as 'name=value > limit'."""
    out = []
    for name, op, limit in rules:
        value = METRICS[name](summary)
        if value is not None and _OPS[op](value, limit):
            out.append(f"{name}={value:.4g} {op} {limit:g}")
    return out


def audit(cfg: AuditConfig, log: Callable[[str], None] = print, progress: bool = True, encoder=None) -> Audit:
    """Read, scan, embed, cross-fit and summarise (the module docstring); raises DataError / ValueError on
    bad input before any model work where it can. `encoder`: a `TextEncoder` to use instead of loading
    cfg.model (`rlhf experiment data-audit` shares one, with its cache, between audits of the same texts)."""
    import torch

    from actors.embedding import TextEncoder
    from orchestrator.tools.audit.crossfit import FitConfig, crossfit, features
    from orchestrator.tools.audit.scan import GROUP_COLUMNS, duplicates, length_bias, read_pairs, words

    if cfg.folds < 2:
        raise ValueError(f"--folds {cfg.folds}: cross-fitting needs at least 2 folds")
    t0 = time.perf_counter()
    pairs, stats = read_pairs(cfg.data, cfg.split, on_error=cfg.on_error, max_rows=cfg.max_rows, subset=cfg.subset,
                              data_files=cfg.data_files, data_dir=cfg.data_dir)
    usable = [p for p in pairs if p.ok]
    if len(usable) < 2 * cfg.folds or len(usable) < 20:
        raise DataError(cfg.data, f"has {len(usable)} usable pairs; an audit with --folds {cfg.folds} needs at least "
                                  f"{max(20, 2 * cfg.folds)}")
    group_col = cfg.group_by or next((c for c in GROUP_COLUMNS if any(c in p.fields for p in usable)), "")
    if cfg.group_by and not any(cfg.group_by in p.fields for p in usable):
        raise ValueError(f"--group-by {cfg.group_by}: no row of {cfg.data} has that column "
                         f"(columns: {', '.join(sorted(usable[0].fields))})")
    dups = duplicates(pairs)
    words_c = [words(p.chosen) for p in usable]
    words_r = [words(p.rejected) for p in usable]
    bias = length_bias(words_c, words_r)
    t_read = time.perf_counter() - t0
    log(f"read {len(pairs)} rows of {stats.source} ({len(usable)} usable) in {t_read:.1f} s")

    t1 = time.perf_counter()
    encoder = encoder or TextEncoder(cfg.model, layers=cfg.layers or None, batch_size=cfg.batch_size,
                                     trust_remote_code=cfg.trust_remote_code)
    contexts, chosen, rejected = [p.context for p in usable], [p.chosen for p in usable], [p.rejected for p in usable]
    distinct = len(set(contexts) | set(chosen) | set(rejected))
    cached = len({*contexts, *chosen, *rejected} & encoder.cache.keys()) if encoder.cache is not None else 0
    log(f"embedding {distinct} distinct texts with {cfg.model} (layer {encoder.layer} of {encoder.total_layers})"
        + (f", {cached} of them cached" if cached else ""))
    bar = _bar(distinct, progress)
    xc, xr = features(encoder, contexts, chosen, rejected, progress=bar.update if bar else None)
    if bar:
        bar.close()
    tok_c, tok_r = encoder.token_counts(chosen), encoder.token_counts(rejected)
    tok_p = encoder.token_counts(contexts)
    over = [a or b or c for a, b, c in zip(encoder.over_length(tok_p), encoder.over_length(tok_c), encoder.over_length(tok_r))]
    t_embed = time.perf_counter() - t1

    t2 = time.perf_counter()
    position = {p.row: i for i, p in enumerate(usable)}
    groups = []
    for p in usable:  # a row's group: the first row of its duplicate (or swapped-copy) chain
        first = dups.duplicate_of[p.row] if dups.duplicate_of[p.row] is not None else dups.swapped_of[p.row]
        groups.append(groups[position[first]] if first is not None else p.row)
    fit_cfg = FitConfig(types=cfg.types, folds=cfg.folds, seed=cfg.seed, objective=cfg.objective)
    fit = crossfit(xc, xr, groups, fit_cfg, log=log)
    evidence = base = None
    if cfg.types > 1 and cfg.objective == "types":
        base = crossfit(xc, xr, groups, FitConfig(types=1, folds=cfg.folds, seed=cfg.seed))
        gain = base.nll.double() - fit.nll.double()  # (N,) per pair
        se = float(gain.std() / math.sqrt(len(gain))) if len(gain) > 1 else math.inf
        mean_gain = float(gain.mean())
        z = mean_gain / se if se > 0 else math.inf
        evidence = {"nll_types": float(fit.nll.mean()), "nll_bradley_terry": float(base.nll.mean()),
                    "gain_per_pair": mean_gain, "gain_se": se, "z": z, "seen": bool(z > 2.0)}
    t_fit = time.perf_counter() - t2

    p_chosen = fit.p.tolist()
    disagreement, tie = fit.disagreement.tolist(), fit.tie.tolist()
    rows: list[dict] = []
    for p in pairs:
        if not p.ok:
            rows.append({"row": p.row, "error": p.error, "disagreement": None, "label_flip": None, "tie": None,
                         "p_chosen": None, "duplicate_of": None, "duplicate_exact": False, "swapped_of": None,
                         "chosen_tokens": None, "rejected_tokens": None, "chosen_words": None, "rejected_words": None,
                         "over_length": None, "weight": 0.0, "fold": None})
            continue
        i = position[p.row]
        dup = dups.duplicate_of[p.row]
        rows.append({
            "row": p.row, "disagreement": disagreement[i], "label_flip": 1.0 - p_chosen[i], "tie": tie[i],
            "p_chosen": p_chosen[i], "duplicate_of": dup, "duplicate_exact": dups.exact[p.row],
            "swapped_of": dups.swapped_of[p.row], "chosen_tokens": tok_c[i], "rejected_tokens": tok_r[i],
            "chosen_words": words_c[i], "rejected_words": words_r[i], "over_length": over[i],
            "weight": 0.0 if dup is not None else round(p_chosen[i], 6), "fold": int(fit.fold[i]), "error": None})
    ok_rows = [r for r in rows if r["error"] is None]
    n = len(ok_rows)
    flagged_flip = [r["row"] for r in ok_rows if r["label_flip"] > cfg.flip_threshold]
    flagged_dis = [r["row"] for r in ok_rows if r["disagreement"] > cfg.disagreement_threshold]
    n_dup = sum(r["duplicate_of"] is not None for r in ok_rows)
    n_exact = sum(r["duplicate_exact"] for r in ok_rows)
    summary = {
        "data": stats.source, "split": cfg.split, "n_rows": len(pairs), "usable_rows": n,
        "malformed_rows": dict(stats.skipped),
        "model": {"name": cfg.model, "layer": encoder.layer, "of_layers": encoder.total_layers, "max_length": encoder.max_length,
                  "objective": cfg.objective, "types": cfg.types, "folds": cfg.folds, "seed": cfg.seed,
                  "epochs_per_fold": fit.epochs},
        "length_bias": bias,
        "duplicates": {"n_rows": n_dup, "exact": n_exact, "normalised_only": n_dup - n_exact, "share": n_dup / n,
                       "swapped": sum(r["swapped_of"] is not None for r in ok_rows),
                       "rule": "same prompt, chosen and rejected after case folding, removing punctuation and symbols, "
                               "and collapsing whitespace; the first occurrence is kept"},
        "disagreement": {"threshold": cfg.disagreement_threshold, "n_rows": len(flagged_dis), "share": len(flagged_dis) / n,
                         "mean": float(fit.disagreement.mean()), "evidence": evidence,
                         "type_weights": [round(sum(w[k] for w in fit.type_weights) / len(fit.type_weights), 4)
                                          for k in range(cfg.types)] if fit.type_weights else None},
        "label_noise": {"threshold": cfg.flip_threshold, "n_rows": len(flagged_flip), "share": len(flagged_flip) / n,
                        "against_majority_share": sum(r["label_flip"] > 0.5 for r in ok_rows) / n,
                        "mean_label_flip": sum(r["label_flip"] for r in ok_rows) / n},
        "over_max_length": {"max_length": encoder.max_length, "n_rows": sum(over),
                            "rows": [r["row"] for r in ok_rows if r["over_length"]][:100]},
        "groups": _by_group(usable, ok_rows, group_col, cfg.flip_threshold) if group_col else None,
        "timing_s": {"read": round(t_read, 2), "embed": round(t_embed, 2), "fit": round(t_fit, 2),
                     "total": round(time.perf_counter() - t0, 2)},
        "texts_embedded": distinct,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch_threads": torch.get_num_threads(),
    }
    return Audit(pairs, rows, summary, fit, base)


def _bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="text", desc="embedding", mininterval=1.0 if sys.stderr.isatty() else 15.0)


def _by_group(pairs, rows, column: str, flip_threshold: float) -> dict:
    values: dict = {}
    for p, r in zip(pairs, rows):
        key = p.fields.get(column)
        key = "(none)" if key is None else str(key)
        values.setdefault(key, []).append(r)
    ordered = sorted(values.items(), key=lambda kv: -len(kv[1]))
    return {"column": column, "values": {k: {
        "rows": len(rs),
        "mean_p_label": sum(r["p_chosen"] for r in rs) / len(rs),
        "label_noise_share": sum(r["label_flip"] > flip_threshold for r in rs) / len(rs),
        "mean_disagreement": sum(r["disagreement"] for r in rs) / len(rs)} for k, rs in ordered[:200]}}


def clean_rows(result: Audit) -> tuple[list[int], dict]:
    """The rows --write-clean keeps (usable, not a duplicate, label_flip at most the threshold), and counts. A
    swapped copy is kept with its original when neither is a likely error: the two labels may be a real
    disagreement (`contradictions_kept` counts such pairs)."""
    threshold = result.summary["label_noise"]["threshold"]
    keep, dup, flip = [], 0, 0
    for r in result.rows:
        if r["error"] is not None:
            continue
        if r["duplicate_of"] is not None:
            dup += 1
        elif r["label_flip"] > threshold:
            flip += 1
        else:
            keep.append(r["row"])
    kept = set(keep)
    contradictions = sum(1 for r in result.rows if r["row"] in kept and r["swapped_of"] in kept)
    return keep, {"rows_kept": len(keep), "removed_duplicates": dup, "removed_label_errors": flip,
                  "contradictions_kept": contradictions,
                  "removed_malformed": sum(r["error"] is not None for r in result.rows),
                  "label_flip_threshold": threshold, "weight_column": WEIGHT_COLUMN}


# ------------------------------------------------------------------------------------------------ CLI


def _unit(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def add_args(parser: argparse.ArgumentParser) -> None:
    d = AuditConfig(data="")
    parser.add_argument("data", help="what rlhf rm reads: a .json/.jsonl/.parquet file or folder, a hub dataset, builtin:preferences, ...")
    parser.add_argument("--out", default="runs/audit", help="output folder (replaced when it holds an earlier audit; default runs/audit)")
    parser.add_argument("--split", default=d.split, help=f"split of a folder, hub or builtin dataset (default {d.split})")
    parser.add_argument("--subset", default="", help="hub datasets: the configuration name")
    parser.add_argument("--max-rows", type=non_negative_int, default=0, metavar="N", help="audit only the first N rows (0 = all)")
    parser.add_argument("--on-error", choices=["raise", "skip"], default=d.on_error,
                        help="malformed rows: stop naming file, row and field (default), or keep them as unusable rows")
    parser.add_argument("--model", default=d.model, metavar="NAME_OR_PATH",
                        help=f"frozen encoder: any Hugging Face encoder or decoder (default {d.model}, the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--layers", type=non_negative_int, default=d.layers, metavar="L",
                        help="read the output of encoder block L, running only blocks 1..L (default 0: half of the blocks, rounded up)")
    parser.add_argument("--types", type=positive_int, default=d.types, metavar="K", help=f"annotator types (default {d.types}; 1 = Bradley-Terry)")
    parser.add_argument("--folds", type=positive_int, default=d.folds, metavar="K", help=f"cross-fitting folds (default {d.folds})")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"seed of the fold split and the heads (default {d.seed})")
    parser.add_argument("--disagreement-threshold", type=_unit, default=d.disagreement_threshold, metavar="T",
                        help=f"a pair with disagreement above T counts as disputed (default {d.disagreement_threshold})")
    parser.add_argument("--flip-threshold", type=_unit, default=d.flip_threshold, metavar="T",
                        help=f"a pair with label_flip above T counts as a likely label error (default {d.flip_threshold})")
    parser.add_argument("--group-by", default="", metavar="COLUMN",
                        help="report agreement per value of this column (default: the first of annotator, group, source, ... present)")
    parser.add_argument("--write-clean", default="", metavar="FILE",
                        help=f"write the rows without duplicates and likely label errors to FILE (.jsonl or .parquet), with a "
                             f"'{WEIGHT_COLUMN}' column for data.weight_column")
    parser.add_argument("--fail-on", default="", metavar="RULES",
                        help="exit 1 when a rule holds, e.g. 'label_noise>0.1,duplicates>0' (metrics: " + ", ".join(METRICS) + ")")
    parser.add_argument("--batch-size", type=positive_int, default=d.batch_size, help=f"texts per encoder batch (default {d.batch_size})")
    parser.add_argument("--trust-remote-code", action="store_true", help="let the encoder's folder run its own code (off by default)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from orchestrator.tools.audit.report import check_out_dir, write_clean, write_outputs

    try:
        rules = parse_rules(args.fail_on)
        check_out_dir(args.out)
        if args.write_clean and not args.write_clean.endswith((".jsonl", ".parquet")):
            raise ValueError(f"--write-clean {args.write_clean}: name a .jsonl or .parquet file")
        cfg = AuditConfig(data=args.data, split=args.split, subset=args.subset, max_rows=args.max_rows, on_error=args.on_error,
                          model=args.model, layers=args.layers, types=args.types, folds=args.folds, seed=args.seed,
                          disagreement_threshold=args.disagreement_threshold, flip_threshold=args.flip_threshold,
                          group_by=args.group_by, batch_size=args.batch_size, trust_remote_code=args.trust_remote_code)
        result = audit(cfg, log=lambda m: print(m, flush=True), progress=not args.quiet)
    except (ValueError, OSError) as e:  # DataError is a ValueError; a model that does not load is an OSError
        print(f"rlhf: error: {e}", file=sys.stderr)
        return 2
    if args.write_clean:
        keep, info = clean_rows(result)
        write_clean(result, args.write_clean, keep, WEIGHT_COLUMN)
        result.summary["clean"] = {"path": args.write_clean, **info}
    failed = failed_rules(result.summary, rules)
    if rules:
        result.summary["fail_on"] = {"rules": args.fail_on, "failed": failed}
    out = write_outputs(result, args.out)
    _print_summary(result.summary, out)
    if failed:
        print(f"rlhf: audit failed: {'; '.join(failed)} (--fail-on {args.fail_on}; report in {out})", file=sys.stderr)
        return 1
    return 0


def _print_summary(s: dict, out: Path) -> None:
    from orchestrator.tools.audit.report import plural

    noise, dis, dup, lb = s["label_noise"], s["disagreement"], s["duplicates"], s["length_bias"]
    ev = dis["evidence"]
    print(f"\naudit of {s['data']}: {s['usable_rows']} usable pairs of {s['n_rows']} rows in {s['timing_s']['total']:.0f} s "
          f"(embedding {s['timing_s']['embed']:.0f} s, {s['texts_embedded']} texts; peak memory {s['peak_rss_mb']:.0f} MB)")
    print(f"  label noise:  {noise['share']:.1%} of pairs have label_flip > {noise['threshold']} ({noise['n_rows']} rows); "
          f"{noise['against_majority_share']:.1%} labelled against the pool's majority")
    line = f"  disagreement: {dis['share']:.1%} of pairs above {dis['threshold']} ({plural(dis['n_rows'], 'row')})"
    if ev:
        line += (f"; annotator types {'seen' if ev['seen'] else 'NOT seen'}: {ev['gain_per_pair']:+.4f} nats/pair over "
                 f"Bradley-Terry (z = {ev['z']:.1f}), weights {dis['type_weights']}")
    print(line)
    copies = "1 swapped copy" if dup["swapped"] == 1 else f"{dup['swapped']} swapped copies"
    print(f"  duplicates:   {plural(dup['n_rows'], 'row')} ({dup['exact']} exact), {copies}")
    beta = lb["logit_per_10_words"]
    print(f"  length:       chosen longer in {lb['chosen_longer_share']:.1%} of pairs, shorter in {lb['rejected_longer_share']:.1%}; "
          f"{'n/a' if beta is None or not math.isfinite(beta) else f'{beta:+.3f}'} logit per 10 words")
    if s["over_max_length"]["n_rows"]:
        print(f"  over the encoder's {s['over_max_length']['max_length']} positions: {plural(s['over_max_length']['n_rows'], 'row')} (cut when embedded)")
    if s.get("clean"):
        c = s["clean"]
        print(f"  clean copy:   {c['path']}: {c['rows_kept']} rows kept, {c['removed_duplicates']} duplicates and "
              f"{c['removed_label_errors']} likely label errors removed; weights in column '{c['weight_column']}'")
    print(f"  outputs:      {out}/rows.jsonl, summary.json, report.md, report.html")
