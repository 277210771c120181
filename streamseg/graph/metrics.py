"""Per-stage counters: live ones written by each node's thread, and the plain snapshots handed to callers."""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

LATENCY_SAMPLES = 4096
"""Latencies kept per stage: a bounded reservoir, so a week-long run does not grow memory."""


@dataclass
class StageMetrics:
    """One stage's numbers at one moment. Latencies are service times in seconds: time spent in the stage's own code
    per output item, not counting waits on its inbox or on the next one (None before the first output)."""

    name: str
    policy: str
    queue_capacity: int
    """Capacity of the stage's inbox (0 for the first stage, which has none)."""
    queue_depth: int
    queue_high_water: int
    dropped: int
    """Items discarded from this stage's inbox by the ``drop_oldest`` policy."""
    items_in: int
    items_out: int
    busy_time: float
    busy_fraction: float
    """busy_time / wall time of the run: near 1 marks the bottleneck."""
    latency_p50: float | None
    latency_p99: float | None
    latency_samples: int
    """How many service times the percentiles come from: the most recent ones, at most :data:`LATENCY_SAMPLES`."""


@dataclass
class GraphReport:
    """What :meth:`Pipeline.run` returns."""

    stages: list[StageMetrics]
    wall_time: float
    interrupted: bool
    """True when :meth:`Pipeline.stop` ended the run (a graceful drain or an abort)."""

    def table(self) -> str:
        """Fixed-width summary, one row per stage."""
        header = f"{'stage':<16} {'policy':<11} {'queue':>9} {'dropped':>8} {'in':>8} {'out':>8} {'busy':>5} " \
                 f"{'p50 ms':>8} {'p99 ms':>8}"
        rows = [header, "-" * len(header)]
        for s in self.stages:
            rows.append(
                f"{s.name[:16]:<16} {s.policy:<11} {f'{s.queue_high_water}/{s.queue_capacity}':>9} {s.dropped:>8} "
                f"{s.items_in:>8} {s.items_out:>8} {s.busy_fraction:>5.0%} {_ms(s.latency_p50):>8} "
                f"{_ms(s.latency_p99):>8}"
            )
        rows.append(f"wall time {self.wall_time:.2f} s" + (", interrupted" if self.interrupted else ""))
        return "\n".join(rows)


class StageClock:
    """Live counters of one stage: written by the stage's thread, read by ``Pipeline.metrics()`` from any other."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items_in = 0
        self.items_out = 0
        self.busy_time = 0.0
        self._waited_in_step = 0.0
        self._latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)

    def took(self, count: int, waited: float) -> None:
        """The stage took ``count`` items from its inbox after waiting ``waited`` seconds for them."""
        with self._lock:
            self.items_in += count
            self._waited_in_step += waited

    def step_done(self, elapsed: float, produced: bool) -> None:
        """One call into the stage's code took ``elapsed`` seconds; the inbox waits inside it are not service time."""
        with self._lock:
            service = max(0.0, elapsed - self._waited_in_step)
            self._waited_in_step = 0.0
            self.busy_time += service
            if produced:
                self.items_out += 1
                self._latencies.append(service)

    def read(self) -> tuple[int, int, float, float | None, float | None, int]:
        """``(items_in, items_out, busy_time, p50, p99, latency samples)``."""
        with self._lock:
            samples = sorted(self._latencies)
            return (self.items_in, self.items_out, self.busy_time, _percentile(samples, 0.5),
                    _percentile(samples, 0.99), len(samples))


def _percentile(sorted_samples: list[float], q: float) -> float | None:
    """Nearest-rank percentile; exact on small samples, unlike interpolating estimators."""
    if not sorted_samples:
        return None
    rank = max(1, math.ceil(len(sorted_samples) * q))
    return sorted_samples[rank - 1]


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"
