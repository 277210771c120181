"""Precision and recall of events against ground truth: one-to-one matching within a time tolerance.

A predicted event matches a ground-truth event with the same key ``(kind, region, direction)`` whose time is
within ``tolerance`` seconds (inclusive); each event matches at most once, and the matching maximises the number
of pairs (then minimises the summed time differences), so the order in which events were emitted does not matter.
Track ids and classes are not compared: a tracker's ids are its own, and a crossing counted under the wrong
identity still counts the crossing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

from streamseg.errors import ConfigError
from streamseg.types import Event

__all__ = ["EventScores", "TimedEvent", "match_events", "timed"]


class TimedEvent(NamedTuple):
    """What matching compares: ``kind`` (``enter``, ``exit``, ``cross`` ...), ``region`` (zone or line name),
    ``direction`` (None unless a crossing) and ``time`` in seconds."""

    kind: str
    region: str
    direction: str | None
    time: float


def timed(event: Event) -> TimedEvent:
    return TimedEvent(event.kind, event.region, event.direction, float(event.time))


@dataclass(frozen=True)
class EventScores:
    """Matching counts; ratios are NaN where their denominator is 0 (no predictions, no ground truth)."""

    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0

    @property
    def predicted(self) -> int:
        return self.true_positives + self.false_positives

    @property
    def truth(self) -> int:
        return self.true_positives + self.false_negatives

    @property
    def precision(self) -> float:
        return self.true_positives / self.predicted if self.predicted else float("nan")

    @property
    def recall(self) -> float:
        return self.true_positives / self.truth if self.truth else float("nan")

    @property
    def f1(self) -> float:
        total = self.predicted + self.truth
        return 2 * self.true_positives / total if total else float("nan")

    def __add__(self, other: "EventScores") -> "EventScores":
        return EventScores(self.true_positives + other.true_positives, self.false_positives + other.false_positives,
                           self.false_negatives + other.false_negatives)


def match_events(predicted: Iterable[TimedEvent | Event], truth: Iterable[TimedEvent | Event],
                 tolerance: float = 0.5) -> dict[str, EventScores]:
    """Scores per event kind (``{"enter": ..., "exit": ..., "cross": ...}``, kinds of either side) and ``"all"``."""
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0):
        raise ConfigError(f"match_events: tolerance must be a number >= 0, got {tolerance!r}")
    groups: dict[tuple, tuple[list[float], list[float]]] = {}
    for side, events in enumerate((predicted, truth)):
        for event in events:
            e = timed(event) if isinstance(event, Event) else TimedEvent(*event)
            groups.setdefault((e.kind, e.region, e.direction), ([], []))[side].append(e.time)
    scores: dict[str, EventScores] = {}
    for (kind, _, _), (times_p, times_t) in sorted(groups.items(), key=lambda item: tuple(map(str, item[0]))):
        pairs = _pairs(np.array(times_p), np.array(times_t), float(tolerance))
        part = EventScores(pairs, len(times_p) - pairs, len(times_t) - pairs)
        scores[kind] = scores.get(kind, EventScores()) + part
    scores["all"] = sum(scores.values(), EventScores())
    return scores


def _pairs(predicted: np.ndarray, truth: np.ndarray, tolerance: float) -> int:
    """Most one-to-one pairs with ``|dt| <= tolerance``."""
    if predicted.size == 0 or truth.size == 0:
        return 0
    gap = np.abs(predicted[:, None] - truth[None, :])
    feasible = gap <= tolerance + 1e-9
    # An infeasible pair costs more than all feasible ones together, so the minimum total cost first maximises
    # the number of feasible pairs.
    big = (tolerance + 1.0) * (min(gap.shape) + 1)
    rows, cols = linear_sum_assignment(np.where(feasible, gap, big))
    return int(feasible[rows, cols].sum())

