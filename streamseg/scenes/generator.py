"""Procedural street scenes with exact ground truth: what :class:`Scene` renders and what it knows.

Per frame, the movers alive at that time are rasterised one sprite each (a bicycle and its rider are two), then
painted far to near (by the distance of their ground contact point, i.e. by the image row where they stand), with
an owner map recording which sprite painted each pixel last. The visible mask of an instance is exactly its
pixels in that owner map, so the masks of one frame are disjoint and match the painted pixels; its box is the
visible mask's extent. Lighting drift, shadows and sensor noise are applied after painting and leave the ground
truth unchanged.

Instances below ``min_visibility`` (visible area over full silhouette area, where the full silhouette includes
parts hidden by nearer objects AND parts cut off by the image border) or ``min_area`` visible pixels are still
painted but left out of the ground truth: they are listed in :attr:`SceneFrame.hidden`. A detector that finds
one scores a false positive, which is why the default thresholds are small.

Determinism: everything comes from ``numpy.random.Generator`` objects seeded by ``config.seed`` (the plan when the
scene is built, per-frame noise from ``(seed, frame index)``), so frames can be rendered in any order and the
same seed gives the same pixels on every run. The first ``n`` frames of a scene do not depend on ``frames``:
a longer scene with the same seed (and other settings) starts with exactly the same pictures and ground truth.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterator

import cv2
import numpy as np

from streamseg.errors import ConfigError
from streamseg.scenes.background import render_background
from streamseg.scenes.events import zone_line_events
from streamseg.scenes.geometry import StreetLayout
from streamseg.scenes.motion import SPAWN_WEIGHTS, Mover, plan_movers, walk_phase
from streamseg.scenes.shapes import PlaneProjector, bicycle_ops, person_ops, rasterize, rider_ops, vehicle_ops
from streamseg.types import Detections, InstanceMasks

__all__ = ["SceneConfig", "Scene", "SceneFrame", "GroundTruthInstance", "SceneTrack", "SUPPORTED_CLASSES"]

SUPPORTED_CLASSES = tuple(SPAWN_WEIGHTS)
"""Class names a scene can draw (COCO spelling)."""

_NOISE_PAD = 48


@dataclass(frozen=True)
class SceneConfig:
    """Everything that defines a scene; the same config always renders the same frames.

    ``zone`` (polygon) and ``line`` (segment ``A -> B``) are in pixels; when None they default to a trapezoid on the
    road in the lower middle of the picture and a line across the road at mid-width, drawn upwards (see
    :mod:`streamseg.scenes.events` for what "in" means). Rates are per second except ``shadow_rate`` (per minute).
    """

    width: int = 640
    height: int = 360
    fps: float = 10.0
    frames: int = 100
    seed: int = 0
    max_objects: int = 6
    """Movers on screen at once, at most (a bicycle with its rider counts once)."""
    spawn_rate: float = 0.8
    """New movers per second (Poisson), before the ``max_objects`` and collision checks."""
    classes: tuple[str, ...] = ("person", "car", "bicycle")
    """Labels are 1-based indices into this tuple. Riders are labelled ``person`` (when present) as in COCO."""
    rider_probability: float = 0.7
    noise: float = 3.0
    """Sensor noise standard deviation in grey levels (0: none)."""
    lighting: float = 0.12
    """Amplitude of the slow brightness/contrast/tint drift (0: constant light)."""
    shadow_rate: float = 2.0
    """Passing cloud shadows per minute (0: none)."""
    min_visibility: float = 0.15
    min_area: int = 30
    warmup: float = 30.0
    """Seconds simulated before frame 0, so that the street is already busy when the video starts."""
    zone: tuple[tuple[float, float], ...] | None = None
    line: tuple[tuple[float, float], tuple[float, float]] | None = None

    def __post_init__(self):
        def check(ok: bool, name: str, expected: str):
            if not ok:
                raise ConfigError(f"SceneConfig.{name}: expected {expected}, got {getattr(self, name)!r}")

        check(isinstance(self.width, int) and self.width >= 64, "width", "an integer >= 64")
        check(isinstance(self.height, int) and self.height >= 64, "height", "an integer >= 64")
        check(self.fps > 0, "fps", "a number > 0")
        check(isinstance(self.frames, int) and self.frames >= 0, "frames", "an integer >= 0")
        check(isinstance(self.seed, (int, np.integer)) and self.seed >= 0, "seed", "an integer >= 0")
        object.__setattr__(self, "seed", int(self.seed))  # numpy integers would not survive json.dumps
        check(isinstance(self.max_objects, int) and 1 <= self.max_objects <= 100, "max_objects",
              "an integer in [1, 100]")  # fmt: skip
        for name in ("spawn_rate", "noise", "lighting", "shadow_rate", "warmup"):
            check(getattr(self, name) >= 0, name, "a number >= 0")
        check(0 <= self.rider_probability <= 1, "rider_probability", "a number in [0, 1]")
        check(0 <= self.min_visibility <= 1, "min_visibility", "a number in [0, 1]")
        check(self.min_area >= 0, "min_area", "a number >= 0")
        classes = (self.classes,) if isinstance(self.classes, str) else tuple(self.classes)
        object.__setattr__(self, "classes", classes)
        unknown = [c for c in classes if c not in SUPPORTED_CLASSES]
        check(bool(classes) and not unknown and len(set(classes)) == len(classes), "classes",
              f"distinct names among {SUPPORTED_CLASSES}")  # fmt: skip
        w, h = self.width, self.height
        zone = self.zone
        if zone is None:
            zone = ((0.36 * w, 0.6 * h), (0.64 * w, 0.6 * h), (0.72 * w, 0.86 * h), (0.28 * w, 0.86 * h))
        zone = tuple((float(x), float(y)) for x, y in zone)
        check(len(zone) >= 3, "zone", "a polygon of at least 3 (x, y) points")
        line = self.line
        if line is None:
            line = ((0.5 * w, 0.87 * h), (0.5 * w, 0.53 * h))
        line = tuple((float(x), float(y)) for x, y in line)
        check(len(line) == 2 and line[0] != line[1], "line", "two distinct (x, y) points")
        object.__setattr__(self, "zone", zone)
        object.__setattr__(self, "line", line)

    @property
    def class_names(self) -> tuple[str, ...]:
        return ("__background__", *self.classes)

    def to_dict(self) -> dict:
        """JSON-ready (tuples become lists); ``SceneConfig.from_dict(cfg.to_dict()) == cfg``."""
        data = asdict(self)
        data["classes"] = list(self.classes)
        data["zone"] = [list(p) for p in self.zone]
        data["line"] = [list(p) for p in self.line]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "SceneConfig":
        data = dict(data)
        for key in ("zone", "line"):
            if data.get(key) is not None:
                data[key] = tuple(tuple(p) for p in data[key])
        if "classes" in data:
            data["classes"] = tuple(data["classes"])
        return cls(**data)


@dataclass(frozen=True, eq=False)
class GroundTruthInstance:
    """One visible object in one frame. Coordinates follow :mod:`streamseg.types` (continuous pixels)."""

    track_id: int
    label: int
    """1-based index into ``classes`` (0 is the background)."""
    box: np.ndarray
    """``(4,)`` float32 ``x1, y1, x2, y2`` of the visible mask."""
    mask: np.ndarray
    """Visible pixels, ``bool`` crop of shape ``(y2 - y1, x2 - x1)`` placed at ``origin``."""
    origin: tuple[int, int]
    """``(x0, y0)`` of the crop in the frame."""
    visibility: float
    """Visible area / full silhouette area (occlusion and border truncation both count)."""
    area: int
    """Visible pixels."""
    amodal_box: np.ndarray
    """``(4,)`` float32 box of the full silhouette, hidden and off-image parts included (may exceed the image)."""

    @property
    def anchor(self) -> tuple[float, float]:
        """Bottom-centre of the amodal box: where the object stands (the point zone and line events use)."""
        x1, _, x2, y2 = (float(v) for v in self.amodal_box)
        return (0.5 * (x1 + x2), y2)


@dataclass(frozen=True, eq=False)
class SceneFrame:
    index: int
    time: float
    """``index / fps`` seconds."""
    image: np.ndarray
    """``(H, W, 3)`` uint8 RGB."""
    instances: tuple[GroundTruthInstance, ...]
    """Ground truth, sorted by track id."""
    hidden: tuple[GroundTruthInstance, ...] = ()
    """Painted but below ``min_visibility`` or ``min_area``: not ground truth (their masks may be empty)."""


@dataclass(frozen=True)
class SceneTrack:
    track_id: int
    label: int
    class_name: str
    start_time: float
    end_time: float
    """Seconds during which the object may be on screen (a conservative bound)."""
    parent_id: int | None = None
    """For a rider: the track id of the bicycle it rides."""


@dataclass
class _Sprite:
    track_id: int
    label: int
    depth: float
    order: int
    rgba: np.ndarray = field(repr=False)
    x0: int
    y0: int
    amodal: np.ndarray | None = None
    full_area: int = 0
    window: tuple[int, int, int, int] = (0, 0, 0, 0)
    """The part of the frame the sprite's canvas covers: ``(x0, y0, x1, y1)``."""


class _Lighting:
    """Slow global brightness/contrast/tint drift plus passing cloud shadows, as per-frame lookup tables."""

    def __init__(self, config: SceneConfig, rng: np.random.Generator):
        self.amplitude = config.lighting
        self.periods = rng.uniform([6.0, 2.5, 8.0, 10.0, 12.0, 14.0], [20.0, 6.0, 25.0, 30.0, 30.0, 30.0])
        self.phases = rng.uniform(0, 2 * np.pi, 6)
        self.shadows = []
        duration = config.frames / config.fps
        t = 0.0
        while config.shadow_rate > 0:
            t += rng.exponential(60.0 / config.shadow_rate)
            if t > duration:
                break
            w, h = config.width, config.height
            angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
            radii = rng.uniform(0.7, 1.0, 9)[:, None] * [rng.uniform(0.25, 0.5) * w, rng.uniform(0.2, 0.45) * h]
            outline = np.stack([np.cos(angles), np.sin(angles)], 1) * radii
            center = rng.uniform([0.1 * w, 0.3 * h], [0.9 * w, 0.9 * h])
            velocity = rng.uniform(15.0, 50.0) * np.array([rng.choice([-1.0, 1.0]), rng.uniform(-0.3, 0.3)])
            self.shadows.append((t, t + rng.uniform(3.0, 8.0), outline, center, velocity, rng.uniform(0.55, 0.8)))

    def lut(self, t: float, darkness: float = 1.0) -> np.ndarray:
        w = 2 * np.pi * t / self.periods + self.phases
        a = self.amplitude
        gain = 1 + a * (0.7 * math.sin(w[0]) + 0.3 * math.sin(w[1]))
        contrast = 1 + 0.5 * a * math.sin(w[2])
        tint = 1 + 0.25 * a * np.sin(w[3:6])
        v = np.arange(256, dtype=np.float32)[:, None]
        out = ((v - 128) * contrast + 128) * gain * tint[None, :] * darkness
        return np.clip(out + 0.5, 0, 255).astype(np.uint8).reshape(256, 1, 3)

    def apply(self, image: np.ndarray, t: float) -> np.ndarray:
        if self.amplitude == 0 and not self.shadows:
            return image
        out = cv2.LUT(image, self.lut(t))
        for t0, t1, outline, center, velocity, darkness in self.shadows:
            if not t0 <= t <= t1:
                continue
            ramp = min(1.0, (t - t0) / 0.6, (t1 - t) / 0.6)  # clouds fade in and out over 0.6 s
            mask = np.zeros(image.shape[:2], np.uint8)
            points = np.round((outline + center + velocity * (t - t0)) * 16).astype(np.int32)
            cv2.fillPoly(mask, [points], 255, cv2.LINE_8, 4)
            cv2.copyTo(cv2.LUT(image, self.lut(t, 1 - (1 - darkness) * ramp)), mask, out)
        return out


class Scene:
    """A street scene: ``render(i)`` for any frame, ``iter(scene)`` for all of them, ``events()`` for the zone and
    line ground truth. Building it draws the layout, background, movers and lighting (about 0.1-0.2 s).

    Example::

        scene = Scene(SceneConfig(seed=3, frames=200))
        frame = scene.render(42)                      # SceneFrame: image + ground-truth instances
        dets = scene.ground_truth_detections(frame)   # the same as streamseg Detections (score 1, track ids)
    """

    def __init__(self, config: SceneConfig | None = None):
        self.config = config if config is not None else SceneConfig()
        cfg = self.config
        # one generator per part: the street does not change with the traffic settings, and a shorter scene is
        # exactly the start of a longer one with the same seed (lighting and noise do not depend on how many
        # movers were planned)
        streams = np.random.SeedSequence(int(cfg.seed)).spawn(5)
        layout_rng, background_rng, motion_rng, light_rng, noise_rng = (np.random.default_rng(s) for s in streams)
        self.layout = StreetLayout.random(cfg.width, cfg.height, layout_rng)
        self.background = render_background(self.layout, background_rng)
        """The empty street, ``(H, W, 3)`` uint8 RGB, before lighting and noise (read-only)."""
        self.background.setflags(write=False)
        self._movers: list[Mover] = plan_movers(
            self.layout, motion_rng, duration=cfg.frames / cfg.fps, warmup=cfg.warmup, classes=cfg.classes,
            spawn_rate=cfg.spawn_rate, max_objects=cfg.max_objects, rider_probability=cfg.rider_probability,
        )  # fmt: skip
        self._lighting = _Lighting(cfg, light_rng)
        self._noise = None
        if cfg.noise > 0:
            noise = noise_rng.normal(0.0, cfg.noise, (cfg.height + _NOISE_PAD, cfg.width + _NOISE_PAD, 3))
            noise = np.clip(np.round(noise), -255, 255)
            # two saturating uint8 passes (add the positive part, subtract the negative) beat int16 arithmetic
            self._noise = (np.maximum(noise, 0).astype(np.uint8), np.maximum(-noise, 0).astype(np.uint8))

    # --------------------------------------------------------------------------------------------- descriptions
    @property
    def class_names(self) -> tuple[str, ...]:
        return self.config.class_names

    def _label(self, kind: str) -> int:
        return self.config.classes.index(kind) + 1

    @property
    def tracks(self) -> list[SceneTrack]:
        """Every track the scene may show, by id (riders right after their bicycle)."""
        out = []
        for m in self._movers:
            out.append(SceneTrack(m.track_id, self._label(m.kind), m.kind, *m.alive))
            if m.rider is not None:
                out.append(SceneTrack(m.rider_track_id, self._label("person"), "person", *m.alive, m.track_id))
        return out

    def __len__(self) -> int:
        return self.config.frames

    def __iter__(self) -> Iterator[SceneFrame]:
        for index in range(self.config.frames):
            yield self.render(index)

    # ------------------------------------------------------------------------------------------------ rendering
    def _sprites(self, mover: Mover, t: float) -> list[_Sprite]:
        layout = self.layout
        pos, heading, dist = mover.state(t)
        x, z = layout.to_camera(pos[0], pos[1])
        hx, hz = layout.to_camera(heading[0], heading[1])  # a rotation: directions map like points
        phase = walk_phase(mover, float(dist))
        if mover.kind == "person":
            ray = np.array([x, z]) / math.hypot(x, z)
            lateral = hx * ray[1] - hz * ray[0]  # sine of the angle between the heading and the line of sight
            axis = np.array([ray[1], -ray[0]])  # image-right, in a plane facing the camera
            if abs(lateral) >= 0.55:
                view = "side"
                if hx * z - x * hz < 0:  # walking to the left in the image: mirror the billboard
                    axis = -axis
            else:
                view = "front" if hx * ray[0] + hz * ray[1] < 0 else "back"
            ops = person_ops(PlaneProjector(layout, (x, z), axis), mover.look, phase, view)
            return [_Sprite(mover.track_id, self._label("person"), z, 0, *rasterize(ops))]
        if mover.kind in ("bicycle", "motorcycle"):
            plane = PlaneProjector(layout, (x, z), (hx, hz))
            ops = bicycle_ops(plane, mover.look, phase)
            sprites = [_Sprite(mover.track_id, self._label(mover.kind), z, 0, *rasterize(ops))]
            if mover.rider is not None:  # the rider sits on top: painted right after its bicycle
                ops = rider_ops(plane, mover.rider, mover.look, phase)
                sprites.append(_Sprite(mover.rider_track_id, self._label("person"), z, 1, *rasterize(ops)))
            return sprites
        ops = vehicle_ops(layout, (x, z), (hx, hz), mover.look)
        return [_Sprite(mover.track_id, self._label(mover.kind), z, 0, *rasterize(ops))]

    def render(self, index: int) -> SceneFrame:
        """Frame ``index`` (0-based, ``< config.frames``) with its ground truth."""
        return self._render(index, paint=True)

    def _render(self, index: int, paint: bool) -> SceneFrame:
        cfg = self.config
        if not isinstance(index, (int, np.integer)) or not 0 <= index < cfg.frames:
            raise IndexError(f"frame index: expected an integer in [0, {cfg.frames}), got {index!r}")
        index = int(index)
        t = index / cfg.fps
        height, width = cfg.height, cfg.width
        sprites: list[_Sprite] = []
        for mover in self._movers:
            if mover.alive[0] <= t <= mover.alive[1]:
                sprites.extend(self._sprites(mover, t))
        sprites.sort(key=lambda s: (-s.depth, s.order))  # far to near: nearer objects cover farther ones
        image = self.background.copy() if paint else None
        owner = np.zeros((height, width), np.uint8)
        painted = []  # (sprite, frame window, full area, amodal box)
        for sprite in sprites:
            mask = sprite.rgba[..., 3] != 0
            h, w = mask.shape
            fx0, fy0 = max(sprite.x0, 0), max(sprite.y0, 0)
            fx1, fy1 = min(sprite.x0 + w, width), min(sprite.y0 + h, height)
            if fx0 >= fx1 or fy0 >= fy1:
                continue
            window = (slice(fy0 - sprite.y0, fy1 - sprite.y0), slice(fx0 - sprite.x0, fx1 - sprite.x0))
            inside = mask[window]
            if not inside.any():
                continue
            painted.append(sprite)
            owner[fy0:fy1, fx0:fx1][inside] = len(painted)
            if paint:
                np.copyto(image[fy0:fy1, fx0:fx1], sprite.rgba[window][..., :3], where=inside[..., None])
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            sprite.amodal = np.array([sprite.x0 + cols[0], sprite.y0 + rows[0], sprite.x0 + cols[-1] + 1,
                                      sprite.y0 + rows[-1] + 1], np.float32)  # fmt: skip
            sprite.full_area = int(np.count_nonzero(mask))
            sprite.window = (fx0, fy0, fx1, fy1)
        instances, hidden = [], []
        for k, sprite in enumerate(painted, start=1):
            fx0, fy0, fx1, fy1 = sprite.window
            visible = owner[fy0:fy1, fx0:fx1] == k
            area = int(np.count_nonzero(visible))
            if area:
                rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
                crop = np.ascontiguousarray(visible[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
                origin = (fx0 + int(cols[0]), fy0 + int(rows[0]))
            else:
                crop, origin = np.zeros((0, 0), bool), (0, 0)
            box = np.array([origin[0], origin[1], origin[0] + crop.shape[1], origin[1] + crop.shape[0]], np.float32)
            visibility = area / sprite.full_area
            instance = GroundTruthInstance(sprite.track_id, sprite.label, box, crop, origin, visibility, area,
                                           sprite.amodal)  # fmt: skip
            keep = area > 0 and visibility >= cfg.min_visibility and area >= cfg.min_area
            (instances if keep else hidden).append(instance)
        instances.sort(key=lambda i: i.track_id)
        hidden.sort(key=lambda i: i.track_id)
        if paint:
            image = self._lighting.apply(image, t)
            if self._noise is not None:
                rng = np.random.default_rng([int(cfg.seed), index])
                y1, x1, y2, x2 = (int(v) for v in rng.integers(0, _NOISE_PAD, 4))  # a fresh window per frame
                plus, minus = self._noise
                cv2.add(image, plus[y1 : y1 + height, x1 : x1 + width], dst=image)
                cv2.subtract(image, minus[y2 : y2 + height, x2 : x2 + width], dst=image)
        else:
            image = np.zeros((0, 0, 3), np.uint8)
        return SceneFrame(index, t, image, tuple(instances), tuple(hidden))

    # ------------------------------------------------------------------------------------------- ground truth
    def ground_truth_detections(self, frame: SceneFrame) -> Detections:
        """``frame``'s ground truth as :class:`~streamseg.types.Detections` (scores 1, track ids set)."""
        size = (self.config.height, self.config.width)
        if not frame.instances:
            empty = Detections.empty(self.class_names, size)
            return empty.with_track_ids(np.zeros(0, np.int64))
        instances = frame.instances
        masks = InstanceMasks([i.mask for i in instances], np.array([i.origin for i in instances]), size)
        return Detections(
            boxes=np.stack([i.box for i in instances]),
            scores=np.ones(len(instances)),
            labels=np.array([i.label for i in instances]),
            class_names=self.class_names,
            masks=masks,
            track_ids=np.array([i.track_id for i in instances]),
        )

    def events(self) -> list[dict]:
        """Zone ``enter``/``exit`` and line ``cross`` events over all frames (rules in
        :mod:`streamseg.scenes.events`). Walks every frame's ground truth without painting pixels."""
        samples = ((f.index, f.time, f.instances) for f in (self._render(i, False) for i in range(len(self))))
        return zone_line_events(samples, self.config.zone, self.config.line, self.class_names)
