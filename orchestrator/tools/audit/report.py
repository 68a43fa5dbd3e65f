"""The audit's files, written into a fresh folder that replaces `--out` in one rename (`write_outputs`):
rows.jsonl, summary.json, report.md, report.html and plots/*.png; and the cleaned copy of the data
(`write_clean`), written to a temporary name and renamed."""

from __future__ import annotations

import html
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["write_outputs", "write_clean", "check_out_dir", "plural", "SHOWN"]

SHOWN = 10
"""Pairs listed in each table of the report."""
CLIP = 220
"""Characters of a text shown in the report."""


OUTPUTS = ("rows.jsonl", "summary.json", "report.md", "report.html", "plots")
"""What an audit folder holds; --out may name an empty folder or one holding only these."""


def plural(count: int, word: str) -> str:
    """'1 row', '2 rows'."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def check_out_dir(out: str | Path) -> None:
    """Refuse an --out that is a file, or a folder holding anything but an earlier audit's files (the folder is
    replaced as a whole)."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"--out {out}: is a file, not a folder")
    other = sorted(p.name for p in out.iterdir() if p.name not in OUTPUTS)
    if other:
        raise ValueError(f"--out {out}: holds files an audit did not write ({', '.join(other[:3])}"
                         f"{', ...' if len(other) > 3 else ''}); the folder would be replaced: name another")


def _json(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _dump(obj) -> str:
    return json.dumps(obj, default=str, allow_nan=False, ensure_ascii=False)


def _clean(obj):
    """NaN and infinities as null, recursively (JSON has neither)."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return _json(obj)


def write_outputs(result, out: str | Path) -> Path:
    """Every output of `result` (an `orchestrator.tools.audit.Audit`) in a new folder, then renamed to `out`
    (an earlier audit there is replaced only once the new one is complete)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's folder is private; the audit folder is an ordinary one
    try:
        with open(tmp / "rows.jsonl", "w") as f:
            for row in result.rows:
                f.write(_dump(_clean(row)) + "\n")
        (tmp / "plots").mkdir()
        plots = _plots(result, tmp / "plots")
        (tmp / "summary.json").write_text(json.dumps(_clean(result.summary), indent=2, allow_nan=False, default=str))
        sections = _sections(result, plots)
        (tmp / "report.md").write_text(_markdown(result, sections))
        (tmp / "report.html").write_text(_html(result, sections))
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_clean(result, path: str | Path, keep: list[int], weight_column: str) -> None:
    """The input rows `keep` as read, each with its weight in `weight_column`, to `path` (.jsonl, or .parquet),
    through a temporary file renamed at the end."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [{**result.pairs[i].fields, weight_column: result.rows[i]["weight"]} for i in keep]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=path.parent)
    os.close(fd)
    try:
        if path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(records), tmp)
        else:
            with open(tmp, "w") as f:
                for r in records:
                    f.write(_dump(_clean(r)) + "\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp) if os.path.exists(tmp) else None
        raise


# ------------------------------------------------------------------------------------------------ plots


def _plots(result, folder: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result.summary
    usable = [r for r in result.rows if r.get("error") is None]
    files = {}

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label, threshold in ((axes[0], "disagreement", "disagreement (annotator types differ)", s["disagreement"]["threshold"]),
                                      (axes[1], "label_flip", "label_flip (the pool prefers the other answer)", s["label_noise"]["threshold"])):
        values = [r[key] for r in usable]
        ax.hist(values, bins=40, range=(0.0, 1.0), color="tab:blue", alpha=0.8)
        ax.axvline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold}")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("pairs")
        ax.legend(fontsize=8)
    files["distributions"] = _save(fig, folder / "distributions.png")

    lb = s["length_bias"]
    diffs = [r["chosen_words"] - r["rejected_words"] for r in usable]
    nonzero = sorted(abs(d) for d in diffs if d)
    if nonzero:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        edges = sorted({nonzero[min(len(nonzero) - 1, int(q * len(nonzero)))] for q in (0, 0.2, 0.4, 0.6, 0.8)}) + [nonzero[-1] + 1]
        xs, ys, ns = [], [], []
        for lo, hi in zip(edges, edges[1:]):
            inside = [d for d in diffs if d and lo <= abs(d) < hi]
            if inside:
                xs.append(sum(abs(d) for d in inside) / len(inside))
                ys.append(sum(d > 0 for d in inside) / len(inside))
                ns.append(len(inside))
        ax.scatter(xs, ys, s=[20 + 200 * n / max(ns) for n in ns], label="data (dot size: pairs)")
        beta = lb["logit_per_10_words"]
        if beta is not None and math.isfinite(beta):
            grid = [nonzero[-1] * k / 50 for k in range(51)]
            ax.plot(grid, [1 / (1 + math.exp(-beta * g / 10)) for g in grid], color="tab:red",
                    label=f"fit: {beta:+.3f} logit per 10 words")
        ax.axhline(0.5, color="gray", linewidth=0.8)
        ax.set_ylim(0, 1)
        ax.set_xlabel("|words(chosen) - words(rejected)|")
        ax.set_ylabel("share where the longer answer is chosen")
        ax.legend(fontsize=8)
        files["length"] = _save(fig, folder / "length.png")

    groups = s.get("groups")
    if groups and groups["values"]:
        names = list(groups["values"])[:30]
        fig, ax = plt.subplots(figsize=(max(5.5, 0.6 * len(names) + 2), 3.6))
        width = 0.27
        for k, (key, label) in enumerate((("mean_p_label", "agreement with the pool (mean p of its label)"),
                                          ("label_noise_share", "share flagged as label errors"),
                                          ("mean_disagreement", "mean disagreement"))):
            ax.bar([i + (k - 1) * width for i in range(len(names))], [groups["values"][n][key] for n in names], width, label=label)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([str(n)[:16] for n in names], rotation=30 if len(names) > 4 else 0, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(f"by {groups['column']}", fontsize=9)
        ax.legend(fontsize=7)
        files["groups"] = _save(fig, folder / "groups.png")
    return {k: f"plots/{v.name}" for k, v in files.items()}


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ report


def _clip(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= CLIP else text[: CLIP - 1] + "…"


def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _pair_table(result, rows: list[dict], score: str) -> dict:
    header = ["row", score, "p (pool picks chosen)", "prompt", "chosen", "rejected"]
    body = []
    for r in rows:
        pair = result.pairs[r["row"]]
        body.append([str(r["row"]), _fmt(r[score]), _fmt(r["p_chosen"]), _clip(pair.context), _clip(pair.chosen), _clip(pair.rejected)])
    return {"header": header, "rows": body}


def _sections(result, plots: dict) -> list[dict]:
    """The report as sections of (title, paragraphs, tables, images), rendered to Markdown and HTML alike."""
    s = result.summary
    usable = [r for r in result.rows if r.get("error") is None]
    dis, noise, dup, lb = s["disagreement"], s["label_noise"], s["duplicates"], s["length_bias"]
    ev = dis["evidence"]
    sections = [{"title": "Findings", "text": [
        f"{s['usable_rows']} usable pairs of {s['n_rows']} rows in {s['data']}; scored by {s['model']['types']} annotator "
        f"type(s) on {s['model']['name']} (layer {s['model']['layer']} of {s['model']['of_layers']}), {s['model']['folds']}-fold "
        f"cross-fitted: every pair scored by heads that never saw it.",
        f"Label noise: {plural(noise['n_rows'], 'pair')} ({_fmt(100 * noise['share'], 1)}%) have label_flip > {noise['threshold']} (the pool "
        f"would pick the other answer with that probability); {_fmt(100 * noise['against_majority_share'], 1)}% are labelled against "
        "the pool's majority.",
        f"Disagreement: {plural(dis['n_rows'], 'pair')} ({_fmt(100 * dis['share'], 1)}%) have disagreement > {dis['threshold']}. "
        + (f"Evidence of annotator types: held-out log-likelihood {ev['gain_per_pair']:+.4f} nats per pair over one Bradley-Terry "
           f"rater (z = {ev['z']:.1f}); {'the data shows hidden context' if ev['seen'] else 'NOT significant: the disagreement scores are not trustworthy on this data'}."
           if ev else "One type (--types 1): disagreement cannot be seen."),
        f"Duplicates: {plural(dup['n_rows'], 'row')} repeat an earlier one ({dup['exact']} exactly, {dup['normalised_only']} after "
        f"normalising case, whitespace and punctuation); {dup['swapped']} rows contradict an earlier one (the same answers swapped).",
        f"Length: the chosen answer is longer in {_fmt(100 * lb['chosen_longer_share'], 1)}% of pairs, shorter in "
        f"{_fmt(100 * lb['rejected_longer_share'], 1)}%; fitted effect {_fmt(lb['logit_per_10_words'])} logit per 10 words "
        f"(95% interval {_fmt(lb['logit_per_10_words_95'][0])}..{_fmt(lb['logit_per_10_words_95'][1])}).",
        f"Over the model's {s['over_max_length']['max_length']} positions (cut when embedded): {s['over_max_length']['n_rows']} rows.",
    ]}]
    sections.append({"title": "Distributions", "images": [plots["distributions"]], "text": [
        "disagreement = 4 Var_k(p_k) over the annotator types' win probabilities p_k: 1 when the pool splits into types certain of "
        "opposite answers, 0 when all types agree, including a toss-up every type shares (that is `tie` in rows.jsonl). "
        "label_flip = 1 - p, p the probability that an annotator drawn from the pool prefers the chosen answer."]})
    top = sorted(usable, key=lambda r: -r["disagreement"])[:SHOWN]
    sections.append({"title": "Most disputed pairs", "tables": [_pair_table(result, top, "disagreement")]})
    top = sorted(usable, key=lambda r: -r["label_flip"])[:SHOWN]
    sections.append({"title": "Likeliest label errors", "tables": [_pair_table(result, top, "label_flip")]})
    sections.append({"title": "Length", "images": [plots["length"]] if "length" in plots else [], "text": [
        f"Mean words: chosen {_fmt(lb['mean_words_chosen'], 1)}, rejected {_fmt(lb['mean_words_rejected'], 1)}; "
        f"of pairs of unequal length the longer answer is chosen in {_fmt(100 * lb['longer_wins'] if lb['longer_wins'] is not None else None, 1)}%. "
        "The fit is a Bradley-Terry model whose only feature is the word count."]})
    all_dups = [r for r in usable if r["duplicate_of"] is not None or r["swapped_of"] is not None]
    dup_rows = all_dups[:SHOWN]
    sections.append({"title": f"Duplicates (the first {len(dup_rows)} of {len(all_dups)}; all in rows.jsonl)" if len(all_dups) > SHOWN
                     else "Duplicates", "tables": [{"header": ["row", "duplicate of", "exact", "swapped copy of", "prompt", "chosen"],
                                                        "rows": [[str(r["row"]), _fmt(r["duplicate_of"]), "yes" if r["duplicate_exact"] else "no",
                                                                  _fmt(r["swapped_of"]), _clip(result.pairs[r["row"]].context),
                                                                  _clip(result.pairs[r["row"]].chosen)] for r in dup_rows]}] if dup_rows else [],
                     "text": [] if dup_rows else ["No duplicates."]})
    groups = s.get("groups")
    if groups:
        table = {"header": [groups["column"], "pairs", "agreement with the pool", "share flagged as label errors", "mean disagreement"],
                 "rows": [[str(k), str(v["rows"]), _fmt(v["mean_p_label"]), _fmt(v["label_noise_share"]), _fmt(v["mean_disagreement"])]
                          for k, v in groups["values"].items()]}
        sections.append({"title": f"Agreement by {groups['column']}", "tables": [table],
                         "images": [plots["groups"]] if "groups" in plots else [],
                         "text": ["agreement with the pool: the mean, over the value's pairs, of the held-out probability that an "
                                  "annotator from the whole pool gives the label this value gave."]})
    if s["over_max_length"]["n_rows"]:
        sections.append({"title": "Rows over the model's length", "text": [
            "Rows (first 20): " + ", ".join(str(i) for i in s["over_max_length"]["rows"][:20])]})
    if s["malformed_rows"]:
        sections.append({"title": "Malformed rows (skipped)", "text": [f"{k}: {v}" for k, v in s["malformed_rows"].items()]})
    return sections


def _markdown(result, sections: list[dict]) -> str:
    lines = [f"# Data audit: {result.summary['data']}", ""]
    for sec in sections:
        lines += [f"## {sec['title']}", ""]
        for t in sec.get("text", []):
            lines += [t, ""]
        for img in sec.get("images", []):
            lines += [f"![{sec['title']}]({img})", ""]
        for table in sec.get("tables", []):
            lines.append("| " + " | ".join(table["header"]) + " |")
            lines.append("|" + "---|" * len(table["header"]))
            for row in table["rows"]:
                lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
            lines.append("")
    return "\n".join(lines)


def _html(result, sections: list[dict]) -> str:
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             f"<title>Data audit: {e(result.summary['data'])}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:4px;vertical-align:top}"
             "th{background:#f2f2f2}img{max-width:100%}</style></head><body>",
             f"<h1>Data audit: {e(result.summary['data'])}</h1>"]
    for sec in sections:
        parts.append(f"<h2>{e(sec['title'])}</h2>")
        parts += [f"<p>{e(t)}</p>" for t in sec.get("text", [])]
        parts += [f"<img src='{e(img)}' alt='{e(sec['title'])}'>" for img in sec.get("images", [])]
        for table in sec.get("tables", []):
            parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in table["header"]) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in table["rows"]]
            parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
