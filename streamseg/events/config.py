"""What the event rules are told: zones, lines and the forward-collision warning, as validated settings.

These are the ``[events]`` part of a pipeline file (:mod:`streamseg.config` reads the TOML)::

    [events]
    units = "pixels"                 # or "relative": every coordinate is a fraction of the frame's width / height
    occlusion_hold = 1.0             # seconds (>= 0); restores the hidden bottom of occluded boxes (0: off)
    occlusion_ratio = 0.7            # (0, 1): a box shorter than this fraction of its remembered height is cut

    [[events.zones]]                 # one table per zone
    name = "entrance"
    polygon = [[100, 300], [400, 300], [420, 470], [80, 470]]
    classes = ["person"]             # empty or absent: every class
    dwell_seconds = 10.0             # optional (> 0): a "dwell" event once per visit that lasts this long

    [[events.lines]]                 # one table per directed line A -> B
    name = "counter"
    points = [[320, 470], [320, 200]]
    classes = ["car", "truck"]

    [events.collision]               # forward-collision warning (dashcams)
    ego_lane = [[150, 540], [440, 320], [500, 320], [880, 540]]
    ttc_seconds = 2.0                # > 0; also window_seconds (> 0), min_samples (>= 2), min_height (>= 0),
                                     # rearm_factor (>= 1), classes, name, anchor: see CollisionConfig

Every rule also takes ``anchor`` (see :data:`~streamseg.ops.geometry.ANCHORS`, default ``"bottom_center"``: the
point where an object stands) and zones and lines take ``min_frames`` (default 1): a change of inside/outside or of
side counts once it has held for this many consecutive frames of the track, and is then dated back to its first
frame. 1 is the ground truth's rule; 2-3 suppress the flicker of a jittery detector's box at an edge.

Every value is checked when the rule is made (:mod:`streamseg.checks`): one line naming the field, what is allowed
and the value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from streamseg.checks import bad, choice, integer, names, number, text
from streamseg.errors import ConfigError
from streamseg.ops.geometry import ANCHORS

__all__ = ["CollisionConfig", "EventsConfig", "LineConfig", "UNITS", "ZoneConfig", "VEHICLES_AND_PEOPLE"]

UNITS = ("pixels", "relative")
VEHICLES_AND_PEOPLE = ("person", "bicycle", "car", "motorcycle", "bus", "truck")
"""COCO names of what a forward-collision warning watches by default."""

Point = tuple[float, float]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _points(value: Any, what: str, minimum: int, exactly: bool = False) -> tuple[Point, ...]:
    """``[[x, y], ...]`` -> a tuple of float pairs, or a ConfigError that shows what was wrong."""
    ok = isinstance(value, (list, tuple)) and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(_number(v) for v in p) for p in value
    )
    count = len(value) if ok else 0
    if not ok or count < minimum or (exactly and count != minimum):
        amount = f"exactly {minimum}" if exactly else f"at least {minimum}"
        raise ConfigError(f"{what}: expected {amount} [x, y] points, got {value!r}")
    return tuple((float(x), float(y)) for x, y in value)


def _check_common(owner, what: str) -> None:
    choice(f"{what}.anchor", owner.anchor, ANCHORS)
    object.__setattr__(owner, "classes", names(f"{what}.classes", owner.classes))


@dataclass(frozen=True)
class ZoneConfig:
    """A polygon zone: ``enter`` / ``exit`` events, occupancy per class and, with ``dwell_seconds``, loitering."""

    name: str
    polygon: tuple[Point, ...]
    """At least 3 ``(x, y)`` points (even-odd rule, so a self-intersecting outline still has a defined inside)."""
    classes: tuple[str, ...] = ()
    """Class names the zone watches; empty: every class."""
    dwell_seconds: float | None = None
    """A ``dwell`` event when one visit lasts this long (stream seconds); None: no dwell events."""
    anchor: str = "bottom_center"
    min_frames: int = 1

    def __post_init__(self):
        what = f"zone {self.name!r}"
        text("zone.name", self.name)
        object.__setattr__(self, "polygon", _points(self.polygon, f"{what}.polygon", 3))
        _check_common(self, what)
        number(f"{what}.dwell_seconds", self.dwell_seconds, above=0, optional=True)
        integer(f"{what}.min_frames", self.min_frames, 1)


@dataclass(frozen=True)
class LineConfig:
    """A directed line ``A -> B``: ``cross`` events, ``"in"`` from its left to its right as drawn on screen."""

    name: str
    points: tuple[Point, Point]
    classes: tuple[str, ...] = ()
    anchor: str = "bottom_center"
    min_frames: int = 1

    def __post_init__(self):
        what = f"line {self.name!r}"
        text("line.name", self.name)
        points = _points(self.points, f"{what}.points", 2, exactly=True)
        if points[0] == points[1]:
            raise ConfigError(f"{what}.points: expected two distinct points, got {self.points!r}")
        object.__setattr__(self, "points", points)
        _check_common(self, what)
        integer(f"{what}.min_frames", self.min_frames, 1)


@dataclass(frozen=True)
class CollisionConfig:
    """Forward-collision warning from the looming cue: an object ahead that grows fast is close in time.

    For an object approaching at constant speed its image height ``h`` is proportional to ``1 / distance``, so
    ``h / (dh/dt) = distance / closing speed``: the time to collision, measured without knowing either. The
    scale rate ``d ln(h) / dt`` is the least-squares slope of ``ln(h)`` over the track's last ``window_seconds``
    (smoothing the detector's jitter); ``TTC = 1 / rate``. A ``forward_collision`` event fires when an object of
    ``classes`` whose anchor is inside ``ego_lane`` has ``TTC <= ttc_seconds``, once per approach: it re-arms when
    the TTC rises above ``ttc_seconds * rearm_factor``, the object stops approaching or leaves the lane.
    """

    ego_lane: tuple[Point, ...]
    ttc_seconds: float = 2.0
    classes: tuple[str, ...] = VEHICLES_AND_PEOPLE
    window_seconds: float = 1.0
    min_samples: int = 5
    """Observations inside the window needed before a TTC is estimated."""
    min_height: float = 20.0
    """Pixels: smaller boxes are too far (and their relative jitter too large) for a meaningful scale rate."""
    rearm_factor: float = 1.5
    name: str = "ego_lane"
    anchor: str = "bottom_center"

    def __post_init__(self):
        what = "collision"
        text(f"{what}.name", self.name)
        object.__setattr__(self, "ego_lane", _points(self.ego_lane, f"{what}.ego_lane", 3))
        _check_common(self, what)
        for name in ("ttc_seconds", "window_seconds"):
            number(f"{what}.{name}", getattr(self, name), above=0)
        number(f"{what}.min_height", self.min_height, 0)
        number(f"{what}.rearm_factor", self.rearm_factor, 1)
        integer(f"{what}.min_samples", self.min_samples, 2)


@dataclass(frozen=True)
class EventsConfig:
    """Every rule of one pipeline. Names must be unique across zones, lines and the ego lane (events name them)."""

    zones: tuple[ZoneConfig, ...] = ()
    lines: tuple[LineConfig, ...] = ()
    collision: CollisionConfig | None = None
    units: str = "pixels"
    """``"pixels"`` of the upright frame, or ``"relative"``: x as a fraction of the width, y of the height (one
    file then fits any resolution, e.g. a camera whose size is not known in advance)."""
    occlusion_hold: float = 1.0
    """Seconds a track's recent full height is remembered to restore the bottom of its box when a nearer object
    hides it (:mod:`streamseg.events.occlusion`); 0 turns it off (zones and lines then see the boxes as detected)."""
    occlusion_ratio: float = 0.7
    """A box counts as cut from below when shorter than this fraction of that remembered height."""

    def __post_init__(self):
        choice("events.units", self.units, UNITS)
        number("events.occlusion_hold", self.occlusion_hold, 0)
        number("events.occlusion_ratio", self.occlusion_ratio, above=0, below=1)
        for key, kind in (("zones", ZoneConfig), ("lines", LineConfig)):
            rules = getattr(self, key)
            if not isinstance(rules, (list, tuple)) or not all(isinstance(rule, kind) for rule in rules):
                raise bad(f"events.{key}", f"a list of {kind.__name__}", rules)
            object.__setattr__(self, key, tuple(rules))
        if self.collision is not None and not isinstance(self.collision, CollisionConfig):
            raise bad("events.collision", "a CollisionConfig or None", self.collision)
        names = [z.name for z in self.zones] + [line.name for line in self.lines]
        if self.collision is not None:
            names.append(self.collision.name)
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"events: names must be unique across zones, lines and the ego lane, repeated: "
                              f"{', '.join(repr(n) for n in repeated)}")

    @property
    def enabled(self) -> bool:
        """Whether any rule is configured."""
        return bool(self.zones or self.lines or self.collision is not None)

    def unknown_classes(self, vocabulary: Sequence[str]) -> dict[str, tuple[str, ...]]:
        """Per rule name, the classes it names that ``vocabulary`` (a model's class names) lacks: such a rule
        part can never fire, which a user should hear about once rather than find out from an empty log."""
        rules = [*self.zones, *self.lines, *([self.collision] if self.collision is not None else [])]
        known = set(vocabulary)
        unknown = {rule.name: tuple(c for c in rule.classes if c not in known) for rule in rules}
        return {name: classes for name, classes in unknown.items() if classes}
