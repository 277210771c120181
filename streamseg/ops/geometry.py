"""Points, polygons and directed segments in image coordinates: the geometry that zone and line events share.

One implementation serves both the ground truth of generated scenes (:mod:`streamseg.scenes.events`) and the live
event rules (:mod:`streamseg.events`), so a detector fed exact boxes reproduces the ground-truth events exactly.

Coordinates are continuous pixels as in :mod:`streamseg.types`: ``x`` to the right, ``y`` DOWN.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["ANCHORS", "anchor_points", "line_side", "point_in_polygon", "segment_crossed"]

ANCHORS = ("bottom_center", "center")
"""Where a box touches a zone or line: ``bottom_center`` ``((x1 + x2) / 2, y2)``, the point where an object stands
on the ground (the default everywhere, and the ground truth's rule); ``center`` the box centre (top-down views)."""


def anchor_points(boxes: np.ndarray, anchor: str = "bottom_center") -> np.ndarray:
    """``(N, 2)`` float64 anchor points of ``(N, 4)`` ``x1, y1, x2, y2`` boxes (see :data:`ANCHORS`)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x = 0.5 * (boxes[:, 0] + boxes[:, 2])
    if anchor == "bottom_center":
        y = boxes[:, 3]
    elif anchor == "center":
        y = 0.5 * (boxes[:, 1] + boxes[:, 3])
    else:
        raise ValueError(f"anchor: expected one of {ANCHORS}, got {anchor!r}")
    return np.stack([x, y], axis=1)


def point_in_polygon(point, polygon: Sequence[Sequence[float]]) -> bool:
    """Even-odd ray casting towards +x. A point exactly on an edge follows the rule's half-open convention (on
    a horizontal top edge it is inside, on a horizontal bottom edge outside), so neighbouring zones never share a
    point."""
    x, y = float(point[0]), float(point[1])
    inside = False
    n = len(polygon)
    for i in range(n):
        x1, y1 = polygon[i]
        x2, y2 = polygon[(i + 1) % n]
        if (y1 > y) != (y2 > y):
            x_at = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
            if x < x_at:
                inside = not inside
    return inside


def line_side(point, line) -> bool:
    """True if ``point`` is on the right of ``A -> B`` as seen on screen (``cross(B - A, P - A) > 0``; y points
    down, so "right" is clockwise from the direction of travel). Zero, on the line, counts as left."""
    (ax, ay), (bx, by) = line
    return (bx - ax) * (float(point[1]) - ay) - (by - ay) * (float(point[0]) - ax) > 0


def segment_crossed(p, q, line) -> bool:
    """Whether the step ``p -> q``, whose ends lie on different sides of the (infinite) line ``A -> B``, passes
    within the segment A-B (ends included) rather than around one of its ends."""
    (ax, ay), (bx, by) = line
    ex, ey = bx - ax, by - ay
    cp = ex * (p[1] - ay) - ey * (p[0] - ax)
    cq = ex * (q[1] - ay) - ey * (q[0] - ax)
    if cp == cq:
        return False
    t = cp / (cp - cq)
    x, y = p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])
    lam = ((x - ax) * ex + (y - ay) * ey) / (ex * ex + ey * ey)
    return 0.0 <= lam <= 1.0
