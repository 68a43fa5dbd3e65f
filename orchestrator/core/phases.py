"""The phases of a step, timed: one runner that overlaps a phase's calls, or serialises them to time
each on its own.

A phase is a name and the role calls it issues (`name -> zero-argument function returning a Pending`,
e.g. `forward`: the reward's score, the reference's and the policy's log-probs, the critic's values).
`run` issues them together and gathers them with one `get`, so they overlap across roles; its wall
time is the metric `time/<phase>`. With `profile` (`run.profile=true`, which `rlhf bench` sets) the calls
run one after another, each timed as `time/<phase>/<call>`, and `time/<phase>` is their sum: the numbers
trained on are the same, the step is slower. Driver-side work is timed with `timed(name)`; `time/step`
is the sum of the phases.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from cluster import Pending, get

__all__ = ["Phases"]


class Phases:
    """The timed phases of one step (see the module doc)."""

    def __init__(self, profile: bool = False):
        self.profile = profile
        self.times: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.times[name] = self.times.get(name, 0.0) + seconds

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Time the block as (part of) phase `name`."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)

    def run(self, name: str, **calls: Callable[[], Pending]) -> dict[str, Any]:
        """Phase `name`: issue `calls` and gather them; {call: its value}."""
        if self.profile:
            out = {}
            for call, make in calls.items():
                t0 = time.perf_counter()
                out[call] = get(make())
                seconds = time.perf_counter() - t0
                self.add(f"{name}/{call}", seconds)
                self.add(name, seconds)
            return out
        with self.timed(name):
            pending = [make() for make in calls.values()]
            values = get(*pending)
        return dict(zip(calls, values if len(pending) > 1 else (values,)))

    def issue(self, name: str, make: Callable[[], Pending]) -> Pending:
        """Issue one call without waiting for it (its issuing timed as part of phase `name`)."""
        with self.timed(name):
            return make()

    def wait(self, name: str, pending: Pending) -> Any:
        """Wait for a call issued earlier (the wait timed as part of phase `name`)."""
        with self.timed(name):
            return get(pending)

    def metrics(self) -> dict[str, float]:
        """time/<phase> (and time/<phase>/<call> when profiling), and time/step: the sum of the phases."""
        out = {f"time/{k}": v for k, v in self.times.items()}
        out["time/step"] = sum(v for k, v in self.times.items() if "/" not in k)
        return out
