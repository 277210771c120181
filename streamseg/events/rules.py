"""Event rules: small objects with one method, ``update(frame, detections) -> list[Event]``.

Each rule is fed every processed frame of ONE stream, in order, with that frame's TRACKED detections
(``detections.track_ids`` set, e.g. by :class:`streamseg.tracking.Tracker`), and keeps per-track state between
calls. Frames without detections must be passed too: they move the clock. Rules watch only the classes they are
given (by name; empty: every class) and see each object through one anchor point of its box
(:data:`~streamseg.ops.geometry.ANCHORS`; default the bottom centre, where it stands on the ground).

Semantics of zones and lines are those of the generated scenes' ground truth (:mod:`streamseg.scenes.events`,
the same geometry functions), so with ``min_frames=1`` a rule fed exact boxes and identities emits exactly the
ground-truth events:

- zone: before a track's first frame it is outside; ``enter`` in the frame its anchor is first inside, ``exit``
  in the frame it is first outside again; a track that vanishes inside makes no exit. Frames where a track is
  missing (occlusion, a missed detection) are bridged: its state waits for its next frame;
- line ``A -> B``: ``cross`` when the anchor's side changes between two consecutive frames of the track AND the
  step between them passes within the segment (not around an end); ``"in"`` from left to right of A -> B as drawn
  on screen (y down), ``"out"`` back;
- ``min_frames = k > 1``: a change counts only once the new state has held for k consecutive frames of the
  track (a jittery box near an edge flickers, the object does not), and the event is dated to the first of them.

Per-track state is forgotten after ``forget_seconds`` of stream time without a sighting (tracker ids are never
reused, so this only bounds memory on endless streams).

Example::

    door = ZoneRule("door", [(100, 300), (400, 300), (420, 470), (80, 470)], classes=("person",), dwell_seconds=10)
    for frame, tracked in stream:                 # tracked: Detections with track_ids
        for event in door.update(frame, tracked):
            print(event.kind, event.track_id, event.time)
        print(door.occupancy)                     # {"person": 2}
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from streamseg.errors import ConfigError
from streamseg.events.config import VEHICLES_AND_PEOPLE, CollisionConfig, LineConfig, ZoneConfig
from streamseg.ops.geometry import anchor_points, line_side, point_in_polygon, segment_crossed
from streamseg.types import Detections, Event, Frame

__all__ = ["CollisionRule", "FORGET_SECONDS", "LineRule", "Rule", "Sighting", "ZoneRule", "sightings"]

FORGET_SECONDS = 60.0
"""Default stream seconds after which a track not seen is forgotten by a rule."""

_EPS = 1e-9  # stream times are sums of float frame durations: compare thresholds with a little slack


class Rule(Protocol):
    """What every rule implements (the engine and the pipeline know rules only through this)."""

    name: str

    def update(self, frame: Frame, detections: Detections) -> list[Event]: ...


@dataclass(frozen=True, slots=True)
class Sighting:
    """One tracked object in one frame, as the rules see it."""

    source_id: str
    frame: int
    time: float
    wall_time: float
    track_id: int
    label: int
    class_name: str
    box: tuple[float, float, float, float]
    anchor: tuple[float, float]

    def event(self, kind: str, region: str, **fields) -> Event:
        return Event(kind, self.source_id, self.frame, self.time, self.wall_time, self.track_id, self.label,
                     self.class_name, region, self.box, self.anchor, **fields)


def sightings(frame: Frame, detections: Detections, classes: Sequence[str], anchor: str) -> list[Sighting]:
    """The objects of ``classes`` (all when empty) in ``detections``, sorted by track id."""
    if not isinstance(detections, Detections):
        raise ConfigError(f"event rules: expected Detections, got {type(detections).__name__}")
    if detections.track_ids is None:
        raise ConfigError("event rules need tracked detections (track_ids set): run a tracker before the rules")
    if len(detections) == 0:
        return []
    names = detections.names
    keep = [i for i, name in enumerate(names) if not classes or name in classes]
    if not keep:
        return []
    points = anchor_points(detections.boxes[keep], anchor).tolist()
    boxes = detections.boxes[keep].astype(np.float64).tolist()
    out = [
        Sighting(frame.source_id, int(frame.index), float(frame.time), float(frame.capture_time),
                 int(detections.track_ids[i]), int(detections.labels[i]), names[i], tuple(box), tuple(point))
        for i, box, point in zip(keep, boxes, points)
    ]
    out.sort(key=lambda s: s.track_id)
    return out


class _TrackStates(dict):
    """Per-track state objects with the stream time each was last seen; forgets stale ones."""

    def __init__(self, forget_seconds: float):
        super().__init__()
        if not (isinstance(forget_seconds, (int, float)) and forget_seconds > 0):
            raise ConfigError(f"forget_seconds: expected a number > 0, got {forget_seconds!r}")
        self.forget_seconds = float(forget_seconds)

    def forget(self, now: float) -> None:
        stale = [tid for tid, state in self.items() if now - state.last_seen > self.forget_seconds]
        for tid in stale:
            del self[tid]


class _ZoneTrack:
    __slots__ = ("inside", "pending", "count", "since", "dwelt", "last_seen")

    def __init__(self, time: float):
        self.inside = False  # confirmed state
        self.pending: Sighting | None = None  # first sighting of an unconfirmed change
        self.count = 0
        self.since = 0.0  # time of the current visit's enter
        self.dwelt = False
        self.last_seen = time


class ZoneRule:
    """A polygon zone: ``enter`` / ``exit`` events, per-class :attr:`occupancy` and, with ``dwell_seconds``, one
    ``dwell`` event per visit that lasts that long (loitering; a visit runs from an enter to its exit)."""

    def __init__(self, name: str, polygon, *, classes: Sequence[str] = (), dwell_seconds: float | None = None,
                 anchor: str = "bottom_center", min_frames: int = 1, forget_seconds: float = FORGET_SECONDS):
        self.config = ZoneConfig(name, polygon, tuple(classes), dwell_seconds, anchor, min_frames)
        self.name = self.config.name
        self._tracks = _TrackStates(forget_seconds)
        self.occupancy: dict[str, int] = dict.fromkeys(self.config.classes, 0)
        """Class name -> objects of this class inside the zone in the latest frame (sighted in that frame)."""

    @classmethod
    def from_config(cls, config: ZoneConfig, **kwargs) -> "ZoneRule":
        return cls(config.name, config.polygon, classes=config.classes, dwell_seconds=config.dwell_seconds,
                   anchor=config.anchor, min_frames=config.min_frames, **kwargs)

    def update(self, frame: Frame, detections: Detections) -> list[Event]:
        cfg = self.config
        events: list[Event] = []
        occupancy = dict.fromkeys(cfg.classes, 0)
        for s in sightings(frame, detections, cfg.classes, cfg.anchor):
            state = self._tracks.get(s.track_id)
            if state is None:
                state = self._tracks[s.track_id] = _ZoneTrack(s.time)
            state.last_seen = s.time
            if point_in_polygon(s.anchor, cfg.polygon) == state.inside:
                state.pending, state.count = None, 0
            else:
                if state.pending is None:
                    state.pending = s
                state.count += 1
                if state.count >= cfg.min_frames:
                    first = state.pending
                    state.inside, state.pending, state.count = not state.inside, None, 0
                    if state.inside:
                        state.since, state.dwelt = first.time, False
                        events.append(first.event("enter", self.name))
                    else:
                        events.append(first.event("exit", self.name, dwell=first.time - state.since))
            if state.inside:
                occupancy[s.class_name] = occupancy.get(s.class_name, 0) + 1
                stay = s.time - state.since
                if cfg.dwell_seconds is not None and not state.dwelt and stay >= cfg.dwell_seconds - _EPS:
                    state.dwelt = True
                    events.append(s.event("dwell", self.name, dwell=stay))
        self._tracks.forget(float(frame.time))
        self.occupancy = occupancy
        return events


class _LineTrack:
    __slots__ = ("side", "last_anchor", "pending", "pending_side", "count", "last_seen")

    def __init__(self, side: bool, anchor: tuple[float, float], time: float):
        self.side = side  # confirmed side: True is the right of A -> B
        self.last_anchor = anchor
        self.pending: Sighting | None = None
        self.pending_side = side
        self.count = 0
        self.last_seen = time


class LineRule:
    """A directed line ``A -> B``: ``cross`` events with ``direction`` ``"in"`` (left to right of A -> B as drawn
    on screen) or ``"out"``, and running :attr:`counts`."""

    def __init__(self, name: str, points, *, classes: Sequence[str] = (), anchor: str = "bottom_center",
                 min_frames: int = 1, forget_seconds: float = FORGET_SECONDS):
        self.config = LineConfig(name, points, tuple(classes), anchor, min_frames)
        self.name = self.config.name
        self._tracks = _TrackStates(forget_seconds)
        self.counts: dict[str, dict[str, int]] = {"in": {}, "out": {}}
        """Direction -> class name -> crossings so far."""

    @classmethod
    def from_config(cls, config: LineConfig, **kwargs) -> "LineRule":
        return cls(config.name, config.points, classes=config.classes, anchor=config.anchor,
                   min_frames=config.min_frames, **kwargs)

    def update(self, frame: Frame, detections: Detections) -> list[Event]:
        cfg = self.config
        line = cfg.points
        events: list[Event] = []
        for s in sightings(frame, detections, cfg.classes, cfg.anchor):
            side = line_side(s.anchor, line)
            state = self._tracks.get(s.track_id)
            if state is None:  # a first sighting has no step to cross with
                self._tracks[s.track_id] = _LineTrack(side, s.anchor, s.time)
                continue
            state.last_seen = s.time
            if state.pending is not None:
                if side == state.pending_side:
                    state.count += 1
                else:  # back on the confirmed side before the change held: no crossing
                    state.pending, state.count = None, 0
            elif side != state.side:
                if segment_crossed(state.last_anchor, s.anchor, line):
                    state.pending, state.pending_side, state.count = s, side, 1
                else:  # went round an end of the segment: a new side, no crossing
                    state.side = side
            if state.pending is not None and state.count >= cfg.min_frames:
                first, state.side = state.pending, state.pending_side
                state.pending, state.count = None, 0
                direction = "in" if state.side else "out"
                by_class = self.counts[direction]
                by_class[first.class_name] = by_class.get(first.class_name, 0) + 1
                events.append(first.event("cross", self.name, direction=direction))
            state.last_anchor = s.anchor
        self._tracks.forget(float(frame.time))
        return events


class _Approach:
    __slots__ = ("times", "log_heights", "armed", "last_seen")

    def __init__(self, time: float):
        self.times: deque[float] = deque()
        self.log_heights: deque[float] = deque()
        self.armed = True
        self.last_seen = time


class CollisionRule:
    """Forward-collision warning from the growth of a tracked box (the monocular looming cue): see
    :class:`~streamseg.events.config.CollisionConfig` for the estimate and every setting.

    :attr:`ttc` holds the latest frame's estimates (seconds; ``inf`` for objects not approaching) of the objects
    whose anchor is inside the ego lane, by track id.
    """

    def __init__(self, ego_lane, *, ttc_seconds: float = 2.0, classes: Sequence[str] = VEHICLES_AND_PEOPLE,
                 window_seconds: float = 1.0, min_samples: int = 5, min_height: float = 20.0,
                 rearm_factor: float = 1.5, name: str = "ego_lane", anchor: str = "bottom_center",
                 forget_seconds: float = FORGET_SECONDS):
        self.config = CollisionConfig(ego_lane, ttc_seconds, tuple(classes), window_seconds, min_samples,
                                      min_height, rearm_factor, name, anchor)
        self.name = self.config.name
        self._tracks = _TrackStates(forget_seconds)
        self.ttc: dict[int, float] = {}

    @classmethod
    def from_config(cls, config: CollisionConfig, **kwargs) -> "CollisionRule":
        return cls(config.ego_lane, ttc_seconds=config.ttc_seconds, classes=config.classes,
                   window_seconds=config.window_seconds, min_samples=config.min_samples,
                   min_height=config.min_height, rearm_factor=config.rearm_factor, name=config.name,
                   anchor=config.anchor, **kwargs)

    def update(self, frame: Frame, detections: Detections) -> list[Event]:
        cfg = self.config
        events: list[Event] = []
        ttc_now: dict[int, float] = {}
        for s in sightings(frame, detections, cfg.classes, cfg.anchor):
            state = self._tracks.get(s.track_id)
            if state is None:
                state = self._tracks[s.track_id] = _Approach(s.time)
            state.last_seen = s.time
            height = s.box[3] - s.box[1]
            if height >= max(cfg.min_height, 1e-6):
                state.times.append(s.time)
                state.log_heights.append(math.log(height))
            while state.times and state.times[0] < s.time - cfg.window_seconds - _EPS:
                state.times.popleft()
                state.log_heights.popleft()
            in_lane = point_in_polygon(s.anchor, cfg.ego_lane)
            rate = self._scale_rate(state)
            ttc = 1.0 / rate if rate is not None and rate > 0 else None
            if in_lane:
                ttc_now[s.track_id] = math.inf if ttc is None else ttc
            if in_lane and ttc is not None and ttc <= cfg.ttc_seconds:
                if state.armed:
                    state.armed = False
                    events.append(s.event("forward_collision", self.name,
                                          extras={"ttc": round(ttc, 4), "scale_rate": round(rate, 5)}))
            elif not in_lane or ttc is None or ttc > cfg.ttc_seconds * cfg.rearm_factor:
                state.armed = True
        self._tracks.forget(float(frame.time))
        self.ttc = ttc_now
        return events

    def _scale_rate(self, state: _Approach) -> float | None:
        """Least-squares slope of ``ln(height)`` over the window (1/s), or None with too few observations: at
        least ``min_samples`` spanning at least half the window."""
        n = len(state.times)
        if n < self.config.min_samples:
            return None
        t = np.fromiter(state.times, np.float64, n)
        y = np.fromiter(state.log_heights, np.float64, n)
        t -= t.mean()
        spread = float(t @ t)
        if t[-1] - t[0] < 0.5 * self.config.window_seconds - _EPS or spread <= 0:
            return None
        return float(t @ (y - y.mean())) / spread
