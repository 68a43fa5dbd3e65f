"""What a reward model learned: held-out metrics, a JSON report and PNG plots (`rlhf rm eval`, and the end of `rlhf rm`).

From the score-head outputs of held-out pairs (`actors.reward_trainer.PairOutputs`) and the response
lengths, with the model's `RewardHead`:

- pairwise accuracy: the share of pairs whose chosen response has the higher mean utility (ties 1/2;
  ODIN: the quality head, its RL reward; `pair_accuracy_sum` ranks by the sum of the heads, as its loss does);
- every model: the Pearson correlation of the mean utility with response length (tokens);
- distributional models (mean_variance, categorical, mixture): the share of variance explained
  ``r^2 = Var(mu) / (Var(mu) + E[sigma^2])`` over all held-out responses (the DPL paper's measure of
  how much of the utility's spread the prompt-response pair explains; 1 = no hidden context), and the
  spread of sigma (mean, std, quantiles), and its correlation with length;
- ODIN: the Pearson correlation of each head, and of their sum, with response length.
- on the built-in preference rows (which carry `p_chosen`, the pooled probability that chosen wins):
  `annotator_blind_ceiling`, the accuracy of the best predictor blind to the annotator group (what a
  scalar reward can reach on those labels, in expectation).

Plots: `reward_hist.png` (mean utility of chosen vs rejected), `std_vs_length.png` (distributional),
`head_vs_length.png` (ODIN: both heads; other models: the mean utility). Values are the raw head
statistics, not normalised: normalisation is an affine map and changes none of these numbers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch

from actors.reward_head import RewardHead
from losses.common import pearson
from orchestrator.config import ConfigError
from orchestrator.data import load_preferences

log = logging.getLogger("rlhf.rm_eval")

__all__ = ["evaluate_outputs", "annotator_blind_ceiling", "ceiling_report", "write_report", "eval_saved_model",
           "print_report", "group_labels"]

QUANTILES = (0.1, 0.5, 0.9)


def _f(x: torch.Tensor) -> float:
    return round(float(x), 6)


def _spread(x: torch.Tensor) -> dict:
    x = x.double()
    out = {"mean": _f(x.mean()), "std": _f(x.std()) if len(x) > 1 else 0.0, "min": _f(x.min()), "max": _f(x.max())}
    for q in QUANTILES:
        out[f"p{int(q * 100)}"] = _f(torch.quantile(x, q))
    return out


def _accuracy(mean_c: torch.Tensor, mean_r: torch.Tensor) -> float:
    return _f(((mean_c > mean_r).double() + 0.5 * (mean_c == mean_r).double()).mean())


def evaluate_outputs(head: RewardHead, chosen: torch.Tensor, rejected: torch.Tensor, chosen_len: torch.Tensor,
                     rejected_len: torch.Tensor, groups: list | None = None) -> tuple[dict, dict]:
    """(report, arrays): the metrics of the module docstring, and the per-response values for the plots.

    chosen, rejected: (B, K) head outputs; chosen_len, rejected_len: (B,) response tokens;
    groups: optional (B,) labels to break accuracy (and predicted std) down by.
    """
    if chosen.shape != rejected.shape or chosen.shape[0] != len(chosen_len):
        raise ValueError(f"evaluate_outputs: shapes {tuple(chosen.shape)}, {tuple(rejected.shape)}, {len(chosen_len)} disagree")
    b = chosen.shape[0]
    mean_c, mean_r = head.mean(chosen).double(), head.mean(rejected).double()
    mu = torch.cat([mean_c, mean_r])
    length = torch.cat([chosen_len, rejected_len]).double()
    report: dict = {
        "objective": head.objective,
        "pairs": b,
        "pair_accuracy": _accuracy(mean_c, mean_r),
        "mean_utility": {"chosen": _spread(mean_c), "rejected": _spread(mean_r), "margin_mean": _f((mean_c - mean_r).mean())},
        "pearson_length": {"mean_utility": _f(pearson(mu, length))},
        "response_tokens": _spread(length),
    }
    arrays: dict = {"mean_chosen": mean_c, "mean_rejected": mean_r, "mu": mu, "length": length}
    sigma = None
    if head.distributional:
        sigma = torch.cat([head.std(chosen), head.std(rejected)]).double()
        var_mu = mu.var(unbiased=False)
        report["r2"] = _f(var_mu / (var_mu + (sigma**2).mean()))
        report["sigma"] = _spread(sigma)
        report["pearson_length"]["sigma"] = _f(pearson(sigma, length))
        arrays["sigma"] = sigma
    if head.objective == "odin":
        both = torch.cat([chosen, rejected]).double()  # (2B, 2): quality, length
        report["pearson_length"].update({
            "quality": _f(pearson(both[:, 0], length)),
            "length_head": _f(pearson(both[:, 1], length)),
            "sum": _f(pearson(both[:, 0] + both[:, 1], length)),
        })
        arrays["quality"], arrays["length_head"] = both[:, 0], both[:, 1]
        report["pair_accuracy_sum"] = _accuracy(chosen.sum(-1).double(), rejected.sum(-1).double())  # what ODIN's loss ranks
    if groups is not None:
        if len(groups) != b:
            raise ValueError(f"evaluate_outputs: {len(groups)} group labels for {b} pairs")
        by: dict = {}
        for g in sorted({str(x) for x in groups}):
            idx = torch.tensor([str(x) == g for x in groups])
            entry = {"pairs": int(idx.sum()), "pair_accuracy": _accuracy(mean_c[idx], mean_r[idx])}
            if sigma is not None:
                entry["sigma_mean"] = _f(torch.cat([sigma[:b][idx], sigma[b:][idx]]).mean())
            by[g] = entry
        report["by_group"] = by
    return report, arrays


def annotator_blind_ceiling(rows: list[dict]) -> float:
    """Pair accuracy of the Bayes predictor that does not know the annotator (all a scalar reward can be):
    it says "chosen" iff the row's `p_chosen` (the pooled probability that chosen wins,
    `orchestrator.builtin.world.pooled_win_probability`) exceeds 0.5; a tie counts one half."""
    if not rows:
        raise ValueError("annotator_blind_ceiling: no rows")
    return sum(1.0 if r["p_chosen"] > 0.5 else 0.5 if r["p_chosen"] == 0.5 else 0.0 for r in rows) / len(rows)


def ceiling_report(rows: list[dict]) -> dict:
    """{"annotator_blind_ceiling": value} when `rows` carry `p_chosen` (the built-in preferences), else {}."""
    if not rows or "p_chosen" not in rows[0]:
        return {}
    return {"annotator_blind_ceiling": round(annotator_blind_ceiling(rows), 6)}


def write_report(report: dict, arrays: dict, out_dir: str | Path) -> list[Path]:
    """report.json and the PNG plots into `out_dir`; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "report.json"]
    files[0].write_text(json.dumps(report, indent=2))
    title = f"{report['objective']}, {report['pairs']} held-out pairs"

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    lo = float(min(arrays["mean_chosen"].min(), arrays["mean_rejected"].min()))
    hi = float(max(arrays["mean_chosen"].max(), arrays["mean_rejected"].max()))
    bins = torch.linspace(lo, hi if hi > lo else lo + 1e-6, 31).tolist()
    ax.hist(arrays["mean_chosen"].tolist(), bins=bins, alpha=0.6, label="chosen")
    ax.hist(arrays["mean_rejected"].tolist(), bins=bins, alpha=0.6, label="rejected")
    ax.set_xlabel("mean utility (raw head)")
    ax.set_ylabel("responses")
    ax.set_title(f"{title}: accuracy {report['pair_accuracy']:.3f}", fontsize=9)
    ax.legend()
    files.append(_save(fig, out / "reward_hist.png"))

    length = arrays["length"].tolist()
    if "sigma" in arrays:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        ax.scatter(length, arrays["sigma"].tolist(), s=6, alpha=0.5)
        ax.set_xlabel("response tokens")
        ax.set_ylabel("predicted std of the utility")
        ax.set_title(f"{title}: r^2 {report['r2']:.3f}, pearson {report['pearson_length']['sigma']:+.3f}", fontsize=9)
        files.append(_save(fig, out / "std_vs_length.png"))

    heads = [("quality", "quality head"), ("length_head", "length head")] if "quality" in arrays else [("mu", "mean utility")]
    fig, axes = plt.subplots(1, len(heads), figsize=(5.0 * len(heads), 3.6), squeeze=False)
    for ax, (key, label) in zip(axes[0], heads):
        ax.scatter(length, arrays[key].tolist(), s=6, alpha=0.5)
        r = report["pearson_length"]["mean_utility" if key == "mu" else key]
        ax.set_xlabel("response tokens")
        ax.set_ylabel(label)
        ax.set_title(f"{label} vs length: pearson {r:+.3f}", fontsize=9)
    files.append(_save(fig, out / "head_vs_length.png"))
    return files


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def group_labels(rows: list[dict], column: str, source: str) -> list | None:
    """The `group_by` column of the evaluation rows (None without one); a missing column is a ConfigError."""
    if not column:
        return None
    if rows and column not in rows[0]:
        raise ConfigError(f"group_by={column!r}: the evaluation data {source} has no such column "
                          f"(columns: {', '.join(sorted(rows[0]))})")
    return [r[column] for r in rows]


def eval_saved_model(cfg) -> tuple[dict, dict]:
    """`rlhf rm eval`: load a saved folder (`RMEvalConfig.path`), score `cfg.data`, write the report and
    plots; returns (report, arrays) as `evaluate_outputs` does."""
    import transformers

    from actors.modeling import load_sequence_classifier, load_tokenizer
    from actors.pairs import collate_pairs
    from actors.reward_trainer import pair_outputs

    if not cfg.path:
        raise ConfigError("config key 'path': must name a saved reward model folder (rlhf rm eval --path DIR)")
    folder = Path(cfg.path)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"path={cfg.path!r}: not a saved model folder (no config.json)")
    config = transformers.AutoConfig.from_pretrained(cfg.path, trust_remote_code=cfg.trust_remote_code)
    try:
        head = RewardHead.from_config(config)
    except ValueError as e:
        raise ConfigError(f"path={cfg.path!r}: {e}") from None
    tokenizer = load_tokenizer(cfg.path, trust_remote_code=cfg.trust_remote_code)
    model = load_sequence_classifier(cfg.path, num_labels=head.num_labels, trust_remote_code=cfg.trust_remote_code).eval()
    # the pairs are rendered the way the model was trained (its rlhf_reward records it), as PPO scores them
    dataset, stats = load_preferences(dataclasses.replace(cfg.data, chat_template=head.chat_template), tokenizer)
    rows = dataset.to_list()[: cfg.max_pairs or None]
    groups = group_labels(rows, cfg.group_by, stats.source)
    pairs = collate_pairs(rows, tokenizer.pad_token_id)
    outs = pair_outputs(model, pairs, tokenizer.pad_token_id, head.pooling, cfg.batch_size)
    report, arrays = evaluate_outputs(head, outs.chosen, outs.rejected, pairs.chosen_len, pairs.rejected_len, groups)
    report.update({**ceiling_report(rows), "model": str(folder), "data": stats.source})
    out_dir = Path(cfg.output_dir) if cfg.output_dir else folder / "eval"
    write_report(report, arrays, out_dir)
    print_report(report, out_dir)
    return report, arrays


def print_report(report: dict, out_dir: Path | str) -> None:
    pl = report["pearson_length"]
    ceiling = f" (annotator-blind ceiling {report['annotator_blind_ceiling']:.4f})" if "annotator_blind_ceiling" in report else ""
    print(f"{report['objective']} on {report['pairs']} held-out pairs: pair accuracy {report['pair_accuracy']:.4f}{ceiling}  "
          f"pearson(mean utility, length) {pl['mean_utility']:+.4f}")
    if "r2" in report:
        s = report["sigma"]
        print(f"  r^2 = Var(mu) / (Var(mu) + E[sigma^2]) = {report['r2']:.4f}; sigma mean {s['mean']:.4f} std {s['std']:.4f} "
              f"p10 {s['p10']:.4f} p50 {s['p50']:.4f} p90 {s['p90']:.4f}; pearson(sigma, length) {pl['sigma']:+.4f}")
    if "quality" in pl:
        print(f"  pearson with length: quality head {pl['quality']:+.4f}  length head {pl['length_head']:+.4f}  "
              f"sum {pl['sum']:+.4f}; pair accuracy of the sum of the heads {report['pair_accuracy_sum']:.4f}")
    for g, e in (report.get("by_group") or {}).items():
        extra = f"  sigma mean {e['sigma_mean']:.4f}" if "sigma_mean" in e else ""
        print(f"  {g}: {e['pairs']} pairs, accuracy {e['pair_accuracy']:.4f}{extra}")
    print(f"  report and plots: {out_dir}")
