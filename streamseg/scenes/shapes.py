"""Silhouettes of street users as filled polygons, and their rasterisation into one sprite per object.

Every builder returns *ops*: ``(rgb, contours)`` pairs in image coordinates (continuous pixels, float ``(N, 2)``
arrays), painted in order. One op with several contours is filled even-odd (that is how a tyre gets its hole);
overlapping parts of one colour are separate ops. :func:`rasterize` paints the ops into an RGBA canvas whose
alpha marks the object's pixels, so the mask and the colours come from the same fill calls and cannot disagree.

People and two-wheelers are drawn in a vertical plane (a :class:`PlaneProjector`): people in a billboard facing
the camera, bicycles in their plane of travel (so their wheels foreshorten into ellipses); cars, buses and trucks
are boxes projected face by face. Sizes are metres; thin parts keep a minimum width in pixels so that distant
objects stay segmentable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from streamseg.scenes.geometry import StreetLayout

__all__ = [
    "PlaneProjector",
    "PersonLook",
    "BicycleLook",
    "VehicleLook",
    "person_ops",
    "bicycle_ops",
    "rider_ops",
    "vehicle_ops",
    "rasterize",
]

Color = tuple[int, int, int]
Op = tuple[Color, list[np.ndarray]]

_SHIFT = 4  # cv2 fixed-point bits: polygons keep 1/16 px precision, so slow motion is smooth, not stepwise
_CIRCLE = np.stack([np.cos(np.linspace(0, 2 * np.pi, 14, endpoint=False)),
                    np.sin(np.linspace(0, 2 * np.pi, 14, endpoint=False))], axis=1)  # fmt: skip


def shade(color, k: float) -> Color:
    return tuple(int(min(255, max(0, round(c * k)))) for c in color)


def circle(center, radius: float) -> np.ndarray:
    return np.asarray(center, float) + radius * _CIRCLE


_HALF = np.linspace(-np.pi / 2, np.pi / 2, 5)
# the caps of a unit-width stadium along +x: five points around the end, then five around the start
_STADIUM = np.concatenate([np.stack([np.cos(_HALF), np.sin(_HALF)], 1), np.stack([-np.cos(_HALF), -np.sin(_HALF)], 1)])


def stadium(p, q, width: float) -> np.ndarray:
    """Convex outline of a segment ``p-q`` of ``width`` with round caps (a limb, a tube)."""
    px, py = float(p[0]), float(p[1])
    qx, qy = float(q[0]), float(q[1])
    length = math.hypot(qx - px, qy - py)
    c, s = ((qx - px) / length, (qy - py) / length) if length > 1e-12 else (1.0, 0.0)
    r = 0.5 * width
    out = _STADIUM @ np.array([[c * r, s * r], [-s * r, c * r]])  # rotate and scale the template
    out[:5] += (qx, qy)
    out[5:] += (px, py)
    return out


def _two_bone(root, target, l1: float, l2: float, bend: float) -> np.ndarray:
    """Middle joint of a two-segment limb reaching from ``root`` towards ``target`` (knee, elbow); ``bend`` +1
    or -1 picks the side the joint points to."""
    root, target = np.asarray(root, float), np.asarray(target, float)
    delta = target - root
    dist = float(np.clip(np.hypot(*delta), 1e-6, l1 + l2 - 1e-6))
    cos_a = np.clip((l1 * l1 + dist * dist - l2 * l2) / (2 * l1 * dist), -1.0, 1.0)
    angle = math.atan2(delta[1], delta[0]) + bend * math.acos(cos_a)
    return root + l1 * np.array([math.cos(angle), math.sin(angle)])


class PlaneProjector:
    """Maps points ``(x, y)`` of a vertical plane (metres; ``x`` along ``axis``, ``y`` up) through the ground
    point ``origin`` (camera ``(X, Z)``) to image pixels, with full perspective. ``scale`` is pixels per metre
    at the origin, used to keep thin parts at least a few pixels wide."""

    def __init__(self, layout: StreetLayout, origin, axis):
        self.layout = layout
        self.origin = np.asarray(origin, float)
        self.axis = np.asarray(axis, float)
        self.scale = layout.focal / self.origin[1]

    def __call__(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, float)
        x = self.origin[0] + points[:, 0] * self.axis[0]
        z = self.origin[1] + points[:, 0] * self.axis[1]
        u, v = self.layout.project(x, points[:, 1], np.maximum(z, 0.05))
        return np.stack([u, v], axis=1)


def _project(ops: list[Op], project) -> list[Op]:
    """Project every contour of ``ops`` in one vectorised call (numpy per op would dominate the render time)."""
    contours = [c for _, cs in ops for c in cs]
    if not contours:
        return []
    flat = project(np.concatenate(contours))
    out, start = [], 0
    for color, cs in ops:
        projected = []
        for c in cs:
            projected.append(flat[start : start + len(c)])
            start += len(c)
        out.append((color, projected))
    return out


# ----------------------------------------------------------------------------------------------------- people
SKIN = ((255, 219, 172), (241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 58, 36))
HAIR = ((20, 15, 10), (60, 40, 25), (110, 75, 40), (200, 160, 90), (150, 150, 150), (90, 30, 20))
PANTS = ((40, 50, 90), (30, 30, 35), (70, 75, 80), (150, 130, 95), (95, 60, 40), (60, 80, 60), (25, 40, 70))
SHOES = ((25, 25, 25), (60, 40, 30), (200, 200, 200), (90, 90, 100))


def _bright_color(rng: np.random.Generator, saturation=(0.3, 0.9), value=(0.35, 0.95)) -> Color:
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(*saturation) * 255, rng.uniform(*value) * 255]]], np.uint8)
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


@dataclass(frozen=True)
class PersonLook:
    height: float
    build: float
    """Width factor around 1."""
    skin: Color
    hair: Color
    shirt: Color
    pants: Color
    shoes: Color
    backpack: Color | None

    @classmethod
    def random(cls, rng: np.random.Generator) -> "PersonLook":
        child = rng.random() < 0.08
        return cls(
            height=float(rng.uniform(1.1, 1.45) if child else rng.normal(1.72, 0.09)),
            build=float(rng.uniform(0.85, 1.2)),
            skin=SKIN[rng.integers(len(SKIN))],
            hair=HAIR[rng.integers(len(HAIR))],
            shirt=_bright_color(rng, value=(0.25, 0.95)),
            pants=PANTS[rng.integers(len(PANTS))],
            shoes=SHOES[rng.integers(len(SHOES))],
            backpack=_bright_color(rng, value=(0.2, 0.7)) if rng.random() < 0.25 else None,
        )


def person_ops(project: PlaneProjector, look: PersonLook, phase: float, view: str) -> list[Op]:
    """A walking person, feet on the plane's ground line at ``x = 0``. ``view`` is ``"side"`` (walking towards
    +x), ``"front"`` (towards the camera) or ``"back"``; ``phase`` (radians) drives the leg and arm swing."""
    s = look.height / 1.75
    b = look.build
    min_w = 2.0 / project.scale  # metres that make 2 pixels
    w = lambda m: max(m * s, min_w)  # noqa: E731
    ops: list[Op] = []
    if view == "side":
        thigh, shin, ankle_h = 0.45 * s, 0.43 * s, 0.07 * s
        legs = []
        for leg_phase in (phase + math.pi, phase):  # far leg first
            swing = 0.45 * math.sin(leg_phase)
            knee_bend = 0.1 + 0.7 * max(0.0, math.cos(leg_phase)) ** 2  # the swinging leg folds
            knee = np.array([thigh * math.sin(swing), -thigh * math.cos(swing)])
            ankle = knee + shin * np.array([math.sin(swing - knee_bend), -math.cos(swing - knee_bend)])
            legs.append((knee, ankle))
        hip_y = max(-ankle[1] for _, ankle in legs) + ankle_h  # the lower foot touches the ground: the body bobs
        hip = np.array([0.0, hip_y])
        shoulder = np.array([0.02 * s, hip_y + 0.5 * s])
        for i, ((knee, ankle), arm_phase) in enumerate(zip(legs, (phase, phase + math.pi))):
            k = 0.78 if i == 0 else 1.0
            knee, ankle = hip + knee, hip + ankle
            arm_swing = 0.4 * math.sin(arm_phase)
            elbow = shoulder + 0.3 * s * np.array([math.sin(arm_swing), -math.cos(arm_swing)])
            fore = arm_swing + 0.25 + 0.35 * max(0.0, math.sin(arm_phase))
            hand = elbow + 0.26 * s * np.array([math.sin(fore), -math.cos(fore)])
            foot = np.array([ankle + [-0.05 * s, -ankle_h], ankle + [0.17 * s, -ankle_h],
                             ankle + [0.14 * s, -0.025 * s], ankle + [0.02 * s, 0.03 * s]])  # fmt: skip
            leg = [(shade(look.pants, k), [stadium(hip, knee, w(0.15))]),
                   (shade(look.pants, k), [stadium(knee, ankle, w(0.12))]),
                   (shade(look.shoes, k), [foot])]  # fmt: skip
            arm = [(shade(look.shirt, k), [stadium(shoulder, elbow, w(0.09))]),
                   (shade(look.shirt, k), [stadium(elbow, hand, w(0.08))]),
                   (shade(look.skin, k), [circle(hand, max(0.045 * s, min_w / 2))])]  # fmt: skip
            if i == 0:
                ops += arm + leg
                if look.backpack is not None:
                    pack = np.array([[-0.1 * b, 0.12], [-0.28 * b, 0.15], [-0.28 * b, 0.45], [-0.1 * b, 0.5]])
                    pack = pack * s + [0.0, hip_y]
                    ops.append((look.backpack, [pack]))
                torso = np.array([[-0.11 * b, 0.05], [0.13 * b, 0.03], [0.14 * b, -0.12],
                                  [0.1 * b, -0.5], [-0.1 * b, -0.52], [-0.13 * b, -0.1]]) * s + shoulder  # fmt: skip
                ops.append((look.shirt, [torso]))
            else:
                ops += leg + arm
        head = shoulder + [0.04 * s, 0.2 * s]
        ops.append((look.skin, [stadium(shoulder, shoulder + [0.02 * s, 0.12 * s], w(0.09))]))
        ops.append((look.hair, [circle(head, 0.115 * s)]))
        ops.append((look.skin, [circle(head + [0.025 * s, -0.02 * s], 0.1 * s)]))
        return _project(ops, project)

    # front or back: legs side by side, the stepping leg shortens as its knee comes towards or away from us
    hip_y = 0.93 * s
    shoulder_y = hip_y + 0.5 * s
    for side, leg_phase in ((-1, phase), (1, phase + math.pi)):
        lift = 0.1 * s * max(0.0, math.sin(leg_phase))
        hip = np.array([side * 0.09 * b * s, hip_y])
        ankle = np.array([side * 0.1 * b * s, 0.07 * s + lift])
        ops.append((look.pants, [stadium(hip, ankle, w(0.14))]))
        foot = np.array([[-0.06, -0.07], [0.06, -0.07], [0.05, 0.0], [-0.05, 0.0]]) * s + ankle
        ops.append((look.shoes, [foot]))
    torso = np.array([[-0.2 * b, 0.02], [0.2 * b, 0.02], [0.23 * b, -0.06], [0.17 * b, -0.53],
                      [-0.17 * b, -0.53], [-0.23 * b, -0.06]]) * s + [0.0, shoulder_y]  # fmt: skip
    ops.append((look.shirt, [torso]))
    for side, arm_phase in ((-1, phase + math.pi), (1, phase)):  # arms hang beside the torso
        shoulder = np.array([side * 0.225 * b * s, shoulder_y - 0.05 * s])
        hand = np.array([side * 0.28 * b * s, shoulder_y - (0.56 - 0.05 * math.sin(arm_phase)) * s])
        ops.append((shade(look.shirt, 0.88), [stadium(shoulder, hand, w(0.085))]))
        ops.append((look.skin, [circle(hand, max(0.045 * s, min_w / 2))]))
    if view == "back" and look.backpack is not None:
        pack = np.array([[-0.15 * b, -0.08], [0.15 * b, -0.08], [0.15 * b, -0.4], [-0.15 * b, -0.4]]) * s
        ops.append((look.backpack, [pack + [0.0, shoulder_y]]))
    neck = np.array([0.0, shoulder_y])
    head = np.array([0.0, shoulder_y + 0.21 * s])
    ops.append((look.skin, [stadium(neck, neck + [0.0, 0.1 * s], w(0.09))]))
    if view == "front":
        ops.append((look.hair, [circle(head + [0.0, 0.01 * s], 0.115 * s)]))
        ops.append((look.skin, [circle(head - [0.0, 0.015 * s], 0.1 * s)]))
    else:
        ops.append((look.hair, [circle(head, 0.115 * s)]))
    return _project(ops, project)


# ------------------------------------------------------------------------------------------------ two-wheelers
@dataclass(frozen=True)
class BicycleLook:
    motor: bool
    """False: a bicycle; True: a motorcycle (heavier frame, engine block, fairing)."""
    wheel_radius: float
    wheelbase: float
    color: Color
    tyre: Color

    @classmethod
    def random(cls, rng: np.random.Generator, motor: bool = False) -> "BicycleLook":
        return cls(
            motor=motor,
            wheel_radius=float(rng.uniform(0.3, 0.34) if motor else rng.uniform(0.32, 0.36)),
            wheelbase=float(rng.uniform(1.35, 1.5) if motor else rng.uniform(0.98, 1.08)),
            color=_bright_color(rng, saturation=(0.5, 1.0), value=(0.4, 1.0)),
            tyre=(28, 28, 30),
        )

    def key_points(self, phase: float) -> dict[str, np.ndarray]:
        """Points the rider holds on to (plane coordinates, metres): saddle, bar, and left/right feet."""
        r, half = self.wheel_radius, self.wheelbase / 2
        if self.motor:
            peg = np.array([-0.02, r + 0.02])
            return {"saddle": np.array([-0.32, r + 0.62]), "bar": np.array([half - 0.32, r + 0.74]),
                    "feet": (peg, peg + [0.04, 0.0])}  # fmt: skip
        crank = np.array([-0.02, r - 0.06])
        pedal = 0.17 * np.array([math.cos(phase), math.sin(phase)])
        return {"saddle": np.array([-0.22, r + 0.58]), "bar": np.array([half - 0.18, r + 0.62]),
                "feet": (crank - pedal, crank + pedal), "crank": crank}  # fmt: skip


def bicycle_ops(project: PlaneProjector, look: BicycleLook, phase: float) -> list[Op]:
    """A bicycle or motorcycle in its plane of travel, front towards +x, wheels on the ground."""
    r, half = look.wheel_radius, look.wheelbase / 2
    min_w = 3.0 / project.scale
    tube = max(0.07 if look.motor else 0.045, min_w)
    tyre = max(0.11 if look.motor else 0.075, min_w)
    rear, front = np.array([-half, r]), np.array([half, r])
    keys = look.key_points(phase)
    ops: list[Op] = []
    for hub in (rear, front):  # tyre = outer and inner circle filled even-odd: a ring with a see-through hole
        ops.append((look.tyre, [circle(hub, r), circle(hub, r - tyre)[::-1]]))
        ops.append(((150, 150, 155), [circle(hub, max(0.35 * r if look.motor else 0.05, min_w / 2))]))
    color = look.color
    if look.motor:
        head = np.array([half - 0.22, r + 0.62])
        ops.append(((120, 120, 125), [stadium(front, head, tube)]))  # fork
        ops.append(((95, 95, 100), [stadium([-0.1, r - 0.05], [-half - 0.05, r + 0.08], tube)]))  # exhaust
        ops.append(((60, 60, 65), [np.array([[-0.25, r - 0.12], [0.25, r - 0.12], [0.32, r + 0.25], [-0.3, r + 0.3]])]))
        ops.append((color, [np.array([[-0.1, r + 0.28], [0.4, r + 0.33], [0.44, r + 0.55], [0.0, r + 0.6],
                                      [-0.15, r + 0.5]])]))  # tank  # fmt: skip
        ops.append((color, [np.array([[-0.15, r + 0.32], [-half - 0.1, r + 0.45], [-half - 0.05, r + 0.58],
                                      [-0.15, r + 0.55]])]))  # tail  # fmt: skip
        seat = np.array([[-0.62, r + 0.55], [-0.05, r + 0.58], [-0.05, r + 0.67], [-0.57, r + 0.65]])
        ops.append(((35, 35, 35), [seat]))
        ops.append(((60, 60, 65), [stadium(head, keys["bar"], tube)]))
        return _project(ops, project)
    crank, saddle, bar = keys["crank"], keys["saddle"], keys["bar"]
    seat_top = saddle + [0.02, -0.05]
    head_top, head_bottom = np.array([half - 0.14, r + 0.5]), np.array([half - 0.1, r + 0.36])
    for p, q in ((rear, crank), (rear, seat_top), (seat_top, crank), (seat_top, head_top),
                 (crank, head_bottom), (head_top, head_bottom), (head_bottom, front)):  # fmt: skip
        ops.append((color, [stadium(p, q, tube)]))
    ops.append(((50, 50, 55), [stadium(head_top, bar, tube)]))
    ops.append(((30, 30, 30), [stadium(saddle + [-0.08, 0.0], saddle + [0.08, 0.01], max(0.06, min_w))]))
    ops.append(((70, 70, 75), [circle(crank, max(0.09, min_w / 2))]))
    for foot in keys["feet"]:
        ops.append(((40, 40, 40), [stadium(crank, foot, max(0.03, min_w))]))
    return _project(ops, project)


def rider_ops(project: PlaneProjector, look: PersonLook, bike: BicycleLook, phase: float) -> list[Op]:
    """A person riding ``bike``: hips on the saddle, hands on the bar, feet on the pedals (or foot pegs)."""
    s = look.height / 1.75
    min_w = 2.0 / project.scale
    w = lambda m: max(m * s, min_w)  # noqa: E731
    keys = bike.key_points(phase)
    hip = keys["saddle"] + [0.0, 0.07]
    lean = math.radians(20 if bike.motor else 35)
    shoulder = hip + 0.5 * s * np.array([math.sin(lean), math.cos(lean)])
    head = shoulder + 0.21 * s * np.array([math.sin(lean * 0.6), math.cos(lean * 0.6)])
    ops: list[Op] = []
    for k, foot in zip((0.78, 1.0), keys["feet"]):  # far leg, torso, near leg
        knee = _two_bone(hip, foot, 0.45 * s, 0.45 * s, bend=+1)
        if knee[0] < hip[0]:  # take the solution with the knee in front of the hip
            knee = _two_bone(hip, foot, 0.45 * s, 0.45 * s, bend=-1)
        ankle = foot + [0.0, 0.05 * s]
        shoe = np.array([[-0.06, -0.04], [0.12, -0.04], [0.1, 0.02], [-0.04, 0.04]]) * s + foot
        ops += [(shade(look.pants, k), [stadium(hip, knee, w(0.15))]),
                (shade(look.pants, k), [stadium(knee, ankle, w(0.12))]),
                (shade(look.shoes, k), [shoe])]  # fmt: skip
        if k == 1.0:
            continue
        torso_dir = (shoulder - hip) / np.hypot(*(shoulder - hip))
        normal = np.array([torso_dir[1], -torso_dir[0]])  # points forward-down
        if look.backpack is not None:
            pack = np.array([hip + 0.1 * s * torso_dir - 0.1 * s * normal,
                             shoulder - 0.05 * s * torso_dir - 0.1 * s * normal,
                             shoulder - 0.05 * s * torso_dir - 0.28 * s * normal,
                             hip + 0.1 * s * torso_dir - 0.26 * s * normal])  # fmt: skip
            ops.append((look.backpack, [pack]))
        torso = np.array([hip - 0.1 * s * normal, hip + 0.11 * s * normal,
                          shoulder + 0.12 * s * normal + 0.03 * s * torso_dir,
                          shoulder - 0.11 * s * normal + 0.04 * s * torso_dir])  # fmt: skip
        ops.append((look.shirt, [torso]))
    bar = keys["bar"]
    elbow = _two_bone(shoulder, bar, 0.3 * s, 0.3 * s, bend=-1)
    ops.append((look.shirt, [stadium(shoulder, elbow, w(0.09))]))
    ops.append((look.shirt, [stadium(elbow, bar, w(0.08))]))
    ops.append((look.skin, [circle(bar, max(0.045 * s, min_w / 2))]))
    ops.append((look.skin, [stadium(shoulder, shoulder + (head - shoulder) * 0.5, w(0.09))]))
    ops.append((look.hair, [circle(head, 0.115 * s)]))
    ops.append((look.skin, [circle(head + [0.025 * s, -0.02 * s], 0.1 * s)]))
    return _project(ops, project)


# ----------------------------------------------------------------------------------------------------- vehicles
CAR_COLORS = ((235, 235, 235), (190, 192, 196), (35, 35, 38), (150, 25, 30), (30, 60, 140), (95, 100, 105),
              (30, 75, 50), (220, 180, 40), (120, 70, 40), (200, 90, 30))  # fmt: skip
GLASS = (40, 52, 66)
LIGHT_DIRECTION = np.array([-0.35, 0.85, -0.4]) / np.linalg.norm([-0.35, 0.85, -0.4])


@dataclass(frozen=True)
class VehicleLook:
    kind: str
    """``"car"``, ``"bus"`` or ``"truck"``."""
    length: float
    width: float
    height: float
    color: Color
    cargo_color: Color
    wheel_radius: float
    cabin: tuple[float, float, float, float]
    """Cars: where the cabin starts (bottom rear, top rear, top front, bottom front), metres from the rear."""
    body_top: float

    @classmethod
    def random(cls, rng: np.random.Generator, kind: str) -> "VehicleLook":
        color = CAR_COLORS[rng.integers(len(CAR_COLORS))] if rng.random() < 0.8 else _bright_color(rng)
        if kind == "bus":
            length, width, height = rng.uniform(9.5, 12.0), 2.5, rng.uniform(2.9, 3.2)
            return cls(kind, length, width, height, color, color, 0.5, (0, 0, 0, 0), height)
        if kind == "truck":
            length, width, height = rng.uniform(6.5, 8.5), 2.4, rng.uniform(3.0, 3.5)
            cargo = ((230, 230, 230), (200, 200, 200), (160, 40, 30), (40, 80, 150))[rng.integers(4)]
            return cls(kind, length, width, height, color, cargo, 0.48, (0, 0, 0, 0), height)
        suv = rng.random() < 0.3
        length = rng.uniform(4.2, 4.9) if suv else rng.uniform(3.8, 4.7)
        height = rng.uniform(1.65, 1.85) if suv else rng.uniform(1.38, 1.55)
        body_top = rng.uniform(0.95, 1.1) if suv else rng.uniform(0.82, 0.95)
        rear = rng.uniform(0.05, 0.3) if (suv or rng.random() < 0.4) else rng.uniform(0.5, 0.9)  # hatch or boot
        front = length - rng.uniform(1.1, 1.5)
        cabin = (rear, rear + rng.uniform(0.3, 0.5), front - rng.uniform(0.6, 0.9), front)
        return cls("car", length, rng.uniform(1.72, 1.9), height, color, color,
                   rng.uniform(0.3, 0.36), cabin, body_top)  # fmt: skip

    @property
    def ground_clearance(self) -> float:
        return 0.35 if self.kind == "car" else 0.45


_FACES = ("front", "rear", "left", "right", "top")


def _box_faces(a0, a1, b0, b1, y0, y1, top=None) -> np.ndarray:
    """Faces of a hexahedron in vehicle coordinates (a forward, b left, y up) as ``(5, 4, 3)``, in ``_FACES``
    order; ``top`` optionally gives the top rectangle's own ``(a0, a1, b0, b1)`` to make a frustum. Corners are
    ordered (s, t) = (0,0), (1,0), (1,1), (0,1) with t going up on side faces, so details can be placed by
    fractions of a face. The bottom face is left out: the camera is never below a vehicle."""
    ta0, ta1, tb0, tb1 = top if top is not None else (a0, a1, b0, b1)
    return np.array([
        [(a1, b0, y0), (a1, b1, y0), (ta1, tb1, y1), (ta1, tb0, y1)],
        [(a0, b1, y0), (a0, b0, y0), (ta0, tb0, y1), (ta0, tb1, y1)],
        [(a1, b1, y0), (a0, b1, y0), (ta0, tb1, y1), (ta1, tb1, y1)],
        [(a0, b0, y0), (a1, b0, y0), (ta1, tb0, y1), (ta0, tb0, y1)],
        [(ta0, tb0, y1), (ta1, tb0, y1), (ta1, tb1, y1), (ta0, tb1, y1)],
    ], float)  # fmt: skip


def _sub_quad(corners: np.ndarray, s0, s1, t0, t1) -> np.ndarray:
    """The part of a quad face between fractions ``s0..s1`` and ``t0..t1`` (bilinear)."""
    s = np.array([s0, s1, s1, s0])[:, None]
    t = np.array([t0, t0, t1, t1])[:, None]
    p00, p10, p11, p01 = corners
    return (1 - s) * (1 - t) * p00 + s * (1 - t) * p10 + s * t * p11 + (1 - s) * t * p01


def _vehicle_parts(look: VehicleLook, cab_nearer: bool):
    """Boxes as ``(faces, colour, glass {face: (s0, s1, t0, t1)}, lamps (t0, t1) or None)`` in painting order,
    and the axle positions. Left faces run front to rear, right faces rear to front."""
    half_l, half_w = look.length / 2, look.width / 2
    clearance = look.ground_clearance
    if look.kind == "car":
        r0, r1, f1, f0 = (c - half_l for c in look.cabin)
        cabin = _box_faces(r0, f0, -half_w + 0.06, half_w - 0.06, look.body_top, look.height,
                           top=(r1, f1, -half_w + 0.22, half_w - 0.22))  # fmt: skip
        side = (0.1, 0.9, 0.12, 0.85)
        boxes = [(_box_faces(-half_l, half_l, -half_w, half_w, clearance, look.body_top), look.color, {}, (0.55, 0.8)),
                 (cabin, look.color, {"left": side, "right": side, "front": (0.08, 0.92, 0.1, 0.9), "rear": side},
                  None)]  # fmt: skip
        return boxes, (-half_l + 0.8, half_l - 0.85)
    if look.kind == "bus":
        side = (0.04, 0.96, 0.45, 0.88)
        glass = {"left": side, "right": side, "front": (0.06, 0.94, 0.35, 0.92), "rear": (0.15, 0.85, 0.6, 0.85)}
        body = _box_faces(-half_l, half_l, -half_w, half_w, clearance, look.height)
        return [(body, look.color, glass, (0.05, 0.15))], (-half_l + 2.4, half_l - 2.3)
    cab0 = half_l - 2.1  # truck: cab in front, cargo box behind
    glass = {"left": (0.1, 0.55, 0.5, 0.88), "right": (0.45, 0.9, 0.5, 0.88), "front": (0.08, 0.92, 0.5, 0.9)}
    cab = (_box_faces(cab0, half_l, -half_w, half_w, clearance, look.height - 0.5), look.color, glass, (0.05, 0.15))
    cargo = (_box_faces(-half_l, cab0 - 0.15, -half_w, half_w, clearance + 0.35, look.height),
             look.cargo_color, {}, (0.03, 0.1))  # fmt: skip
    return ([cargo, cab] if cab_nearer else [cab, cargo]), (-half_l + 1.2, -half_l + 2.3, half_l - 1.2)


def vehicle_ops(layout: StreetLayout, center, heading, look: VehicleLook) -> list[Op]:
    """A car, bus or truck standing on camera ground point ``center`` and facing ``heading`` (unit ``(X, Z)``):
    its boxes painted face by face (back faces culled), glass and lights on the visible faces, wheels on the
    near side in front of the body and on the far side behind it."""
    cx, cz = float(center[0]), float(center[1])
    hx, hz = float(heading[0]), float(heading[1])
    # vehicle (a, b, y) -> camera (X, Y, Z): an affine map, one matrix product for all points
    to_world = np.array([[hx, 0.0, hz], [-hz, 0.0, hx], [0.0, 1.0, 0.0]])
    offset = np.array([cx, 0.0, cz])
    camera = np.array([0.0, layout.camera_height, 0.0])
    to_camera = camera - offset
    half_w = look.width / 2
    near_b = half_w if -hz * to_camera[0] + hx * to_camera[2] > 0 else -half_w  # the side the camera sees
    boxes, axles = _vehicle_parts(look, cab_nearer=hx * to_camera[0] + hz * to_camera[2] > 0)

    r = look.wheel_radius
    wheels = []
    for b in (-near_b * 0.98, near_b * 1.02):
        for a in axles:
            for radius, bb in ((r, b), (0.55 * r, b * 1.01)):  # tyre, then hub
                wheels.append(np.stack([a + radius * _CIRCLE[:, 0], np.full(14, bb), r + radius * _CIRCLE[:, 1]], 1))
    wheels = np.stack(wheels) @ to_world + offset  # (2 * axles * 2, 14, 3)
    n_far = 2 * len(axles)

    def wheel_ops(part: np.ndarray, k: float) -> list[Op]:
        return [(shade((25, 25, 27) if i % 2 == 0 else (165, 165, 170), k), [pts]) for i, pts in enumerate(part)]

    ops3d: list[Op] = wheel_ops(wheels[:n_far], 0.6)  # far wheels show under the body
    for faces, color, glass, lamps in boxes:
        corners = faces @ to_world + offset  # (5, 4, 3)
        centers = corners.mean(axis=1)
        normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 3] - corners[:, 0])
        outward = np.einsum("ij,ij->i", normals, centers - centers.mean(axis=0))
        normals *= np.where(outward < 0, -1.0, 1.0)[:, None] / np.linalg.norm(normals, axis=1, keepdims=True)
        facing = np.einsum("ij,ij->i", normals, camera - corners[:, 0]) > 0  # back faces are culled
        light = 0.62 + 0.5 * np.maximum(0.0, normals @ LIGHT_DIRECTION)
        for index in np.flatnonzero(facing):
            name, quad, k = _FACES[index], corners[index], float(light[index])
            ops3d.append((shade(color, k), [quad]))
            if name in glass:
                ops3d.append((shade(GLASS, 0.8 + 0.3 * k), [_sub_quad(quad, *glass[name])]))
                if look.kind == "car" and name in ("left", "right"):  # the door pillar splits the side window
                    ops3d.append((shade(color, k), [_sub_quad(quad, 0.47, 0.53, 0.1, 0.9)]))
            if lamps is not None and name in ("front", "rear"):
                lamp = (255, 240, 200) if name == "front" else (200, 20, 20)
                ops3d.append((lamp, [_sub_quad(quad, 0.04, 0.2, *lamps)]))
                ops3d.append((lamp, [_sub_quad(quad, 0.8, 0.96, *lamps)]))
    ops3d += wheel_ops(wheels[n_far:], 1.0)

    def project(points):
        x, y = layout.project(points[:, 0], points[:, 1], np.maximum(points[:, 2], 0.05))
        return np.stack([x, y], axis=1)

    return _project(ops3d, project)


# -------------------------------------------------------------------------------------------------- rasterising
def rasterize(ops: list[Op]) -> tuple[np.ndarray, int, int]:
    """Paint ``ops`` into the smallest canvas holding them: ``(rgba (h, w, 4) uint8, x0, y0)`` where canvas pixel
    ``(i, j)`` is image pixel ``(y0 + i, x0 + j)`` and alpha 255 marks the object (also parts off the image)."""
    points = np.concatenate([c for _, cs in ops for c in cs])
    x0, y0 = (int(v) - 1 for v in np.floor(points.min(axis=0)))
    x1, y1 = (int(v) + 2 for v in np.ceil(points.max(axis=0)))
    canvas = np.zeros((y1 - y0, x1 - x0, 4), np.uint8)
    # continuous coordinate p lies in pixel floor(p); cv2 puts integer coordinates on pixel centres
    fixed = np.round((points - [x0 + 0.5, y0 + 0.5]) * (1 << _SHIFT)).astype(np.int32)
    start = 0
    for color, contours in ops:
        parts = []
        for c in contours:
            parts.append(fixed[start : start + len(c)])
            start += len(c)
        cv2.fillPoly(canvas, parts, (*color, 255), cv2.LINE_8, _SHIFT)
    return canvas, x0, y0
