"""Who moves where and when: every street user's path, speed and look, planned once from the scene's seed.

A :class:`Mover` follows a polyline on the ground (road coordinates ``(u, d)``, metres) at constant speed, so its
state at any time is a closed-form lookup: frames can be rendered in any order. Paths start and end outside the
picture, so every track enters and leaves through an image border. Planning is a Poisson stream of candidates,
each accepted only if it keeps at most ``max_objects`` movers on screen and never overlaps another mover's
footprint on the ground (cars queue instead of driving through each other; pedestrians cross between cars).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from streamseg.scenes.geometry import StreetLayout
from streamseg.scenes.shapes import BicycleLook, PersonLook, VehicleLook

__all__ = ["Mover", "plan_movers", "SPAWN_WEIGHTS"]

SPAWN_WEIGHTS = {"person": 0.24, "car": 0.46, "bicycle": 0.3, "motorcycle": 0.14, "bus": 0.06, "truck": 0.08}
"""Relative frequency of each class among new movers (renormalised over the configured classes)."""

_SPEEDS = {"person": (1.0, 1.7), "bicycle": (3.0, 6.0), "motorcycle": (5.0, 10.0), "car": (3.5, 8.5),
           "bus": (4.0, 7.5), "truck": (4.0, 8.0)}  # fmt: skip


@dataclass
class Mover:
    """One street user (a bicycle and its rider are one mover with two track ids)."""

    kind: str
    path: np.ndarray
    """``(K, 2)`` waypoints ``(u, d)``."""
    start_time: float
    """Seconds at which the mover is at ``path[0]``."""
    speed: float
    look: object
    rider: PersonLook | None = None
    half_length: float = 0.3
    half_width: float = 0.3
    height: float = 1.8
    alive: tuple[float, float] = (0.0, 0.0)
    """Times during which (a conservative box around) the mover overlaps the picture."""
    track_id: int = 0
    rider_track_id: int = 0
    _cum: np.ndarray = field(default=None, repr=False)

    def __post_init__(self):
        steps = np.hypot(*np.diff(self.path, axis=0).T)
        self._cum = np.concatenate([[0.0], np.cumsum(steps)])

    @property
    def length(self) -> float:
        return float(self._cum[-1])

    def state(self, t):
        """Position ``(u, d)``, unit heading ``(du, dd)`` and distance walked at time(s) ``t``, as arrays."""
        dist = np.clip((np.asarray(t, float) - self.start_time) * self.speed, 0.0, self.length)
        seg = np.clip(np.searchsorted(self._cum, dist, side="right") - 1, 0, len(self.path) - 2)
        p0, p1 = self.path[seg], self.path[seg + 1]
        seg_len = np.maximum(self._cum[seg + 1] - self._cum[seg], 1e-9)
        frac = ((dist - self._cum[seg]) / seg_len)[..., None]
        return p0 + frac * (p1 - p0), (p1 - p0) / seg_len[..., None], dist

    def footprint(self, t) -> tuple[np.ndarray, np.ndarray]:
        """Centre ``(u, d)`` and half extents along ``(u, d)`` of the ground rectangle covered at time(s) ``t``."""
        pos, heading, _ = self.state(t)
        along_u = np.abs(heading[..., 0:1]) > 0.5
        ext = np.where(along_u, [self.half_length, self.half_width], [self.half_width, self.half_length])
        return pos, ext


def _corner_boxes(layout: StreetLayout, mover: Mover, times: np.ndarray) -> np.ndarray:
    """Image boxes ``(T, 4)`` bounding the mover's 3-D bounding box (its silhouette lies inside) at ``times``."""
    pos, ext = mover.footprint(times)
    corners = np.array([[-1, -1], [-1, 1], [1, -1], [1, 1]], float)
    u = pos[:, None, 0] + corners[None, :, 0] * ext[:, None, 0]
    d = pos[:, None, 1] + corners[None, :, 1] * ext[:, None, 1]
    x, z = layout.to_camera(u, d)
    z = np.maximum(z, 0.05)
    xs = layout.cx + layout.focal * x / z
    y_ground = layout.horizon + layout.focal * layout.camera_height / z
    y_top = layout.horizon + layout.focal * (layout.camera_height - mover.height) / z
    return np.stack([xs.min(1), y_top.min(1), xs.max(1), y_ground.max(1)], axis=1)


def _alive_interval(layout: StreetLayout, mover: Mover) -> tuple[float, float] | None:
    step = 0.15 / mover.speed  # 15 cm of travel
    times = mover.start_time + np.arange(0.0, mover.length / mover.speed + step, step)
    boxes = _corner_boxes(layout, mover, times)
    inside = (boxes[:, 2] > 0) & (boxes[:, 0] < layout.width) & (boxes[:, 3] > 0) & (boxes[:, 1] < layout.height)
    hits = np.flatnonzero(inside)
    if hits.size == 0:
        return None
    if hits[0] == 0 or hits[-1] == len(times) - 1:
        raise RuntimeError(f"a {mover.kind} path starts or ends inside the picture; widen its margins")
    return float(times[hits[0] - 1]), float(times[hits[-1] + 1])


def _sidewalk_d(layout: StreetLayout, near: bool, rng) -> float:
    if near:
        return layout.near_curb - rng.uniform(0.5, 1.8)
    return rng.uniform(layout.far_curb + 0.6, layout.building_line - 0.7)


def _candidate(kind: str, layout: StreetLayout, rng: np.random.Generator, t: float, rider_ok: bool,
               rider_probability: float) -> Mover:  # fmt: skip
    speed = float(rng.uniform(*_SPEEDS[kind]))
    margin = 6.0
    if kind == "person":
        look = PersonLook.random(rng)
        near = rng.random() < 0.5
        d0 = _sidewalk_d(layout, near, rng)
        direction = rng.choice([-1.0, 1.0])
        lo, hi = layout.visible_u_range(d0, margin)
        start = lo if direction > 0 else hi
        if rng.random() < 0.35:  # walk to the zebra crossing, cross, walk off along the other sidewalk
            d1 = _sidewalk_d(layout, not near, rng)
            uc = layout.crosswalk_u + rng.uniform(-0.35, 0.35) * layout.crosswalk_width
            lo1, hi1 = layout.visible_u_range(d1, margin)
            end = hi1 if rng.random() < 0.5 else lo1
            path = [(start, d0), (uc, d0), (uc, d1), (end, d1)]
        else:
            path = [(start, d0), (hi if direction > 0 else lo, d0)]
        return Mover(kind, np.array(path), t, speed, look, half_length=0.45, half_width=0.45,
                     height=look.height + 0.05)  # fmt: skip
    direction = float(rng.choice([-1.0, 1.0]))
    two_wheeler = kind in ("bicycle", "motorcycle")
    d = layout.lane_d(direction, "bicycle" if kind == "bicycle" else "car")
    if kind == "motorcycle":
        d += rng.uniform(-0.5, 0.5)
    if two_wheeler:
        look = BicycleLook.random(rng, motor=kind == "motorcycle")
        ridden = rider_ok and (kind == "motorcycle" or rng.random() < rider_probability)
        rider = PersonLook.random(rng) if ridden else None
        half_length = look.wheelbase / 2 + look.wheel_radius + 0.05
        size = dict(half_length=half_length, half_width=0.35, height=2.05 if rider is not None else 1.25)
    else:
        look = VehicleLook.random(rng, kind)
        rider = None
        size = dict(half_length=look.length / 2, half_width=look.width / 2, height=look.height)
    lo, hi = layout.visible_u_range(d, margin + size["half_length"])
    path = np.array([(lo, d), (hi, d)] if direction > 0 else [(hi, d), (lo, d)])
    return Mover(kind, path, t, speed, look, rider=rider, **size)


def _conflicts(a: Mover, b: Mover) -> bool:
    """True if the two movers' ground footprints ever come closer than a small gap while both are alive."""
    t0, t1 = max(a.alive[0], b.alive[0]), min(a.alive[1], b.alive[1])
    if t0 > t1:
        return False
    times = np.arange(t0, t1 + 0.05, 0.05)
    pa, ea = a.footprint(times)
    pb, eb = b.footprint(times)
    # a person's footprint is padded to bound the billboard's swinging limbs; the body itself is narrower
    ea = ea - 0.2 if a.kind == "person" else ea
    eb = eb - 0.2 if b.kind == "person" else eb
    gap = 0.05 if a.kind == b.kind == "person" else 0.4
    overlap = np.all(np.abs(pa - pb) < ea + eb + gap, axis=1)
    return bool(overlap.any())


def plan_movers(layout: StreetLayout, rng: np.random.Generator, *, duration: float, warmup: float, classes,
                spawn_rate: float, max_objects: int, rider_probability: float) -> list[Mover]:  # fmt: skip
    """Movers seen during ``[0, duration]`` seconds, with track ids 1, 2, ... in order of appearance (a rider's id
    follows its bicycle's). Candidates arrive from ``-warmup`` on, so the street is already busy at time 0. A
    candidate's fate depends only on earlier ones, so a longer ``duration`` keeps every earlier decision."""
    weights = np.array([SPAWN_WEIGHTS[c] for c in classes], float)
    weights /= weights.sum()
    rider_ok = "person" in classes
    accepted: list[Mover] = []
    t = -warmup
    while spawn_rate > 0:
        t += rng.exponential(1.0 / spawn_rate)
        if t > duration:
            break
        kind = str(classes[rng.choice(len(classes), p=weights)])
        for attempt in range(3):  # a blocked candidate waits 1.5 s and retries with a fresh lane, speed or look
            mover = _candidate(kind, layout, rng, t + 1.5 * attempt, rider_ok, rider_probability)
            alive = _alive_interval(layout, mover)
            if alive is None or alive[1] < 0.0:
                break  # never on screen while the video runs
            mover.alive = alive
            overlapping = [m for m in accepted if m.alive[0] <= alive[1] and alive[0] <= m.alive[1]]
            # the most movers on screen during the new interval is reached at its start or at a later arrival
            points = [alive[0]] + [m.alive[0] for m in overlapping if m.alive[0] > alive[0]]
            if max(sum(m.alive[0] <= p <= m.alive[1] for m in overlapping) for p in points) >= max_objects:
                break
            if not any(_conflicts(mover, m) for m in overlapping):
                accepted.append(mover)
                break
    # movers arriving after the end still took part in the checks above, so that a longer scene with the same
    # seed plans the same movers for the same times; they are just not shown
    accepted = sorted((m for m in accepted if m.alive[0] <= duration), key=lambda m: m.alive[0])
    next_id = 1
    for mover in accepted:
        mover.track_id = next_id
        next_id += 1
        if mover.rider is not None:
            mover.rider_track_id = next_id
            next_id += 1
    return accepted


def walk_phase(mover: Mover, distance) -> float:
    """Gait phase (radians) after ``distance`` metres: one stride (two steps) every ~1.4 m scaled by height."""
    if mover.kind == "person":
        return 2 * math.pi * distance / (1.45 * mover.look.height / 1.75)
    return 2 * math.pi * distance / 2.2  # pedalling: one crank turn per 2.2 m
