"""How busy a search keeps its workers (the goal: no idle slots): the time workers spend in
trials over workers x the search's wall time, from the first trial's submission to the last
trial's end. Idle time is what a batch barrier, a slow ask/tell between trials, a worker's
start-up or a lone last trial costs.

A trial's time in a worker is the span its worker reports on the job's return
(:data:`SPAN_ATTR`, set by the project's launcher from the job's arrival in the worker to its
return); a launcher that reports none is timed from submission to result, which counts the
wait for a free worker as busy (an upper bound).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

#: The attribute of a job's ``JobReturn`` holding ``(start, end)`` (``time.time()``) of the job
#: in its worker.
SPAN_ATTR = "worker_span"


@dataclass
class Occupancy:
    """The trials' spans in the workers of one search."""

    workers: int
    started: float | None = None
    spans: list[tuple[float, float]] = field(default_factory=list)

    def submitted(self) -> float:
        """A trial is submitted now (the first one starts the search's wall time)."""
        now = time.time()
        if self.started is None:
            self.started = now
        return now

    def ended(self, ret: Any, submitted_at: float) -> None:
        """A trial's job returned ``ret``; it was submitted at ``submitted_at``."""
        span = getattr(ret, SPAN_ATTR, None)
        start, end = span if span is not None else (submitted_at, time.time())
        self.spans.append((max(start, submitted_at), end))

    @property
    def wall(self) -> float:
        if self.started is None or not self.spans:
            return 0.0
        return max(end for _, end in self.spans) - self.started

    @property
    def busy(self) -> float:
        return sum(end - start for start, end in self.spans)

    def utilisation(self) -> float | None:
        """Busy over workers x wall (None before any trial ended)."""
        wall = self.wall
        return self.busy / (self.workers * wall) if wall > 0 else None
