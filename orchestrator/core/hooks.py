"""`Hook`: code that watches a run from the job skeleton (`orchestrator.core.job.run(..., hooks=...)`)
without being part of it, e.g. `rlhf bench`'s measurements."""

from __future__ import annotations

__all__ = ["Hook"]


class Hook:
    """Watches a run from the skeleton without being part of it (`rlhf bench`'s measurements); every
    method is called in the driver, between the calls of the job (`orchestrator.core.job.Job`) it is given."""

    def started(self, job) -> None:
        """The roles are up and a resumed run restored (again after a restart), before the first step."""

    def before_step(self, job, step: int) -> None:
        """Right before `job.step(step)`."""

    def after_step(self, job, step: int, metrics: dict) -> None:
        """Right after `job.step(step)` returned `metrics` (before any evaluation or checkpoint)."""

    def finished(self, job, summary: dict) -> None:
        """The run is done (summary written), the roles not yet shut down."""
