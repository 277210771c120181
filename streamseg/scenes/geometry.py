"""The street and the camera that looks at it: a pinhole camera above a flat ground plane.

Coordinates:
- camera frame, metres: ``X`` to the right, ``Y`` up from the ground, ``Z`` forward (depth); the camera sits at
  ``(0, camera_height, 0)`` with a level optical axis, its principal point shifted down so the horizon lies at
  image row ``horizon`` (a shift lens: vertical lines stay vertical, which keeps sprites upright);
- road frame, metres on the ground: ``u`` along the road, ``d`` across it (distance from the camera's foot along
  the road normal, growing away from the camera); the road direction makes angle ``yaw`` with the image x axis,
  so with ``yaw > 0`` the road recedes towards the right and objects shrink as they drive right;
- image: continuous pixel coordinates as in :mod:`streamseg.types` (pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``).

Bands across the road, nearest first: near sidewalk ``d < near_curb``, lanes up to ``far_curb``, far sidewalk up to
``building_line``, where the facades stand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["StreetLayout"]

LANE_WIDTH = 3.5
"""Metres; the road has two lanes, one per direction."""


@dataclass(frozen=True)
class StreetLayout:
    """Camera intrinsics, pose and the street's bands; :meth:`random` draws one whose road lands in the same
    image rows for every seed (so a zone or line given in pixels stays on the road)."""

    width: int
    height: int
    focal: float
    """Pixels."""
    horizon: float
    """Image row (continuous) of the horizon."""
    camera_height: float
    yaw: float
    """Radians between the image x axis and the road direction (towards depth)."""
    near_curb: float
    far_curb: float
    building_line: float
    crosswalk_u: float
    """Centre of the zebra crossing along the road."""
    crosswalk_width: float
    right_hand_traffic: bool
    """True: the near lane drives towards +u."""

    @classmethod
    def random(cls, width: int, height: int, rng: np.random.Generator) -> "StreetLayout":
        """A layout with the horizon at 28-36 % of the height and, at the image centre, the near curb at 82-87 %
        and the far curb at 55-59 %; focal length, yaw and camera height follow from those and a 7 m road."""
        focal = width * rng.uniform(0.7, 0.85)
        horizon = height * rng.uniform(0.28, 0.36)
        y_near = height * rng.uniform(0.82, 0.87)
        y_far = height * rng.uniform(0.55, 0.59)
        yaw = float(rng.choice([-1.0, 1.0]) * math.radians(rng.uniform(4.0, 16.0)))
        # At the image centre a ground line at distance d projects to row horizon + k / d, k = focal*height*cos(yaw).
        k = 2 * LANE_WIDTH / (1.0 / (y_far - horizon) - 1.0 / (y_near - horizon))
        near_curb, far_curb = k / (y_near - horizon), k / (y_far - horizon)
        d_mid = 0.5 * (near_curb + far_curb)
        crosswalk_u = d_mid * math.tan(yaw) + rng.uniform(-0.15, 0.15) * width * d_mid / focal
        return cls(
            width=int(width),
            height=int(height),
            focal=float(focal),
            horizon=float(horizon),
            camera_height=float(k / (focal * math.cos(yaw))),
            yaw=yaw,
            near_curb=float(near_curb),
            far_curb=float(far_curb),
            building_line=float(far_curb + rng.uniform(3.0, 4.5)),
            crosswalk_u=float(crosswalk_u),
            crosswalk_width=float(rng.uniform(3.0, 4.0)),
            right_hand_traffic=bool(rng.random() < 0.5),
        )

    @property
    def cx(self) -> float:
        return self.width / 2.0

    @property
    def road_direction(self) -> np.ndarray:
        """Unit vector of +u in camera ``(X, Z)``."""
        return np.array([math.cos(self.yaw), math.sin(self.yaw)])

    @property
    def road_normal(self) -> np.ndarray:
        """Unit vector of +d in camera ``(X, Z)``."""
        return np.array([-math.sin(self.yaw), math.cos(self.yaw)])

    def to_camera(self, u, d):
        """Road ``(u, d)`` -> camera ground ``(X, Z)`` (arrays broadcast)."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        return u * c - d * s, u * s + d * c

    def to_road(self, x, z):
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        return x * c + z * s, -x * s + z * c

    def project(self, x, y, z):
        """Camera ``(X, Y, Z)`` -> image ``(x, y)``, continuous pixels; ``Z`` must be positive."""
        return self.cx + self.focal * x / z, self.horizon + self.focal * (self.camera_height - y) / z

    def ground_to_image(self, u, d):
        x, z = self.to_camera(u, d)
        return self.project(x, 0.0, z)

    def lane_d(self, direction: int, vehicle: str) -> float:
        """Distance across the road of the path a vehicle driving towards ``direction * u`` keeps: cars 2 m in
        from the curb on their side, bicycles 0.5 m, so cars pass cyclists without touching them."""
        near = (direction > 0) == self.right_hand_traffic
        inset = 0.5 if vehicle == "bicycle" else 2.0
        return self.near_curb + inset if near else self.far_curb - inset

    def visible_u_range(self, d: float, margin: float = 0.0) -> tuple[float, float]:
        """Where the ground line at distance ``d`` crosses the left and right image edges, widened by ``margin`` m."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        ends = []
        for a in (-self.cx / self.focal, (self.width - self.cx) / self.focal):  # X / Z at the image edges
            ends.append(d * (a * c + s) / (c - a * s))
        return min(ends) - margin, max(ends) + margin
