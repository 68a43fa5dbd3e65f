"""Metrics: namespaced scalars (`policy/*`, `critic/*`, `reward/*`, `kl/*`, `time/*`, `length/*`)
to `metrics.jsonl` and TensorBoard, and the end-of-run plot."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

log = logging.getLogger("rlhf.metrics")


class MetricsLogger:
    """Appends one JSON line per logged step; mirrors every scalar to TensorBoard when available."""

    def __init__(self, out_dir: Path, resume: bool = False):
        self.path = Path(out_dir) / "metrics.jsonl"
        if not resume and self.path.exists():
            self.path.unlink()
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
        except Exception as e:  # tensorboard missing or broken: JSONL still has everything
            log.warning("TensorBoard logging off: %s", e)

    def write(self, step: int, metrics: dict) -> None:
        record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if v is not None and math.isfinite(float(v)):
                    self.tb.add_scalar(k, float(v), step)
            self.tb.flush()

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate(self, step: int) -> None:
        """On resume: drop records after the checkpoint's step (they belong to the lost run)."""
        kept = [r for r in self.read() if r["step"] <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_curves(records: list[dict], path: Path, keys=("reward/score", "kl/mean", "length/mean")) -> None:
    """One panel per key over the steps (plus eval/gold and eval/reward points when logged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.4))
    for ax, key in zip(axes, keys):
        pts = [(r["step"], r[key]) for r in records if key in r]
        if pts:
            ax.plot(*zip(*pts), marker=".", lw=1)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    evals = [(r["step"], r["eval/gold"]) for r in records if "eval/gold" in r]
    if evals:
        twin = axes[0].twinx()
        twin.plot(*zip(*evals), "s--", color="tab:green", label="held-out gold")
        twin.set_ylabel("held-out gold")
        twin.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
