"""Metrics: namespaced scalars (`policy/*`, `critic/*`, `reward/*`, `kl/*`, `time/*`, `length/*`, `eval/*`)
to `metrics.jsonl` and the trackers of `run.loggers` (TensorBoard, Weights & Biases), and the end-of-run plot.

Trackers (`run.loggers`):
- `tensorboard` (default): `<output_dir>/tensorboard/`.
- `wandb`: one W&B run per output folder (its id is kept in `<output_dir>/wandb_id`, so a resumed run
  continues the same W&B run), project `run.wandb_project`, the whole config as its config, files
  under `<output_dir>/wandb/`. `WANDB_MODE=offline` works without network (`wandb sync` uploads later).
  W&B cannot delete points: after a resume, the steps between the checkpoint and the interruption
  stay in its history as they were first logged; `metrics.jsonl` is the exact record.

Exactly once: the job skeleton (`orchestrator.core.job`) opens one `MetricsLogger` per run and writes one
record per logged step. A resumed run first drops the records (and hides the TensorBoard events) after
its checkpoint's step, so the file never holds a step twice; a fresh run never finds an old file here
(the skeleton moves an earlier run's outputs aside first).
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from pathlib import Path
from typing import Sequence

log = logging.getLogger("rlhf.metrics")

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


LOGGERS = ("tensorboard", "wandb")


class MetricsLogger:
    """Appends one JSON line per logged step; mirrors every finite scalar to the trackers of `loggers`.

    resume_step: None for a fresh run (the file must not exist yet); else the checkpoint's step: records
    after it are dropped (they belong to the lost part of the run) and TensorBoard hides its events
    after it (`SummaryWriter(purge_step=...)`). `config` (the whole config tree as a dict) and
    `wandb_project` are W&B's.
    """

    def __init__(self, out_dir: Path, resume_step: int | None = None, loggers=("tensorboard",), config: dict | None = None,
                 wandb_project: str = "rlhf"):
        self.path = Path(out_dir) / METRICS_FILE
        if resume_step is None and self.path.exists():
            raise FileExistsError(f"{self.path} exists: a fresh run must start without it (see orchestrator.core.job)")
        if resume_step is not None:
            self.truncate(resume_step)
        self.tb = self.wandb = None
        if "tensorboard" in loggers:
            try:
                from torch.utils.tensorboard import SummaryWriter

                purge = resume_step + 1 if resume_step is not None else None
                self.tb = SummaryWriter(str(Path(out_dir) / TENSORBOARD_DIR), purge_step=purge)
            except Exception as e:  # tensorboard missing or broken: JSONL still has everything
                log.warning("TensorBoard logging off: %s", e)
        if "wandb" in loggers:
            self.wandb = _wandb_run(Path(out_dir), resume_step is not None, config or {}, wandb_project)

    def write(self, step: int, metrics: dict) -> None:
        record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if v is not None and math.isfinite(float(v)):
                    self.tb.add_scalar(k, float(v), step)
            self.tb.flush()
        if self.wandb is not None:
            finite = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
            self.wandb.log(finite, step=step)

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate(self, step: int) -> None:
        """Drop records after `step` (written after the checkpoint a run resumes from)."""
        kept = [r for r in self.read() if r["step"] <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


WANDB_ID_FILE = "wandb_id"


def _wandb_run(out: Path, resumed: bool, config: dict, project: str):
    """The W&B run of output folder `out`: a new one (its id written to `out/wandb_id`), or on resume the
    one whose id is there."""
    import wandb

    id_file = out / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if resumed and id_file.is_file() else uuid.uuid4().hex[:12]
    id_file.write_text(run_id)
    return wandb.init(project=project, id=run_id, resume="allow", dir=str(out), config=config, name=out.name,
                      reinit="finish_previous")


def plot_curves(series: dict[str, list[dict]], panels: Sequence[str | tuple[str, str]], path, *, twin: str | None = None,
                labels: dict[str, str] | None = None) -> None:
    """The one plot of curves: a panel per entry of `panels`, a line per entry of `series`.

    series: label -> records (dicts holding "step" and the plotted keys; a record without a key is
    skipped in that panel); panels: a key plotted over "step", or (x key, y key); twin: a key plotted on a
    second y axis of the first panel (a run's held-out gold); labels: axis labels by key (default the key).
    A legend is drawn when more than one series has a label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = labels or {}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    axes = axes[0]
    for ax, panel in zip(axes, panels):
        x, y = panel if isinstance(panel, tuple) else ("step", panel)
        for name, records in series.items():
            pts = [(r[x], r[y]) for r in records if x in r and y in r]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, lw=1, label=name or None)
        ax.set_title(labels.get(y, y))
        ax.set(xlabel=labels.get(x, x))
        ax.grid(alpha=0.3)
    if sum(bool(name) for name in series) > 1:
        axes[0].legend(fontsize=8)
    for name, records in series.items() if twin else ():
        pts = [(r["step"], r[twin]) for r in records if twin in r]
        if pts:
            ax2 = axes[0].twinx()
            ax2.plot(*zip(*pts), "s--", color="tab:green", label=labels.get(twin, twin))
            ax2.set_ylabel(labels.get(twin, twin))
            ax2.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
