"""Distances between tracks and detections, and the assignment that pairs them.

A *distance* is any callable ``distance(tracks, detections) -> (T, M) float array`` where ``tracks`` is a
:class:`~streamseg.types.Detections` of the tracks' predicted boxes (with ``track_ids``, the last matched scores and
labels, and masks moved to the predicted position when the detections carry masks) and ``detections`` are the
frame's candidates. Values are in ``[0, 1]``, 0 for a perfect fit; ``inf`` or NaN forbids a pair. Built-in ones, by
name (:func:`get_distance`):

- ``"iou"``: ``1 - IoU`` of the boxes;
- ``"mask_iou"``: ``1 - IoU`` of the instance masks where both sides carry a non-empty mask, else ``1 - box IoU``.
  Masks are compared on the overlap of their crops only, never as full frames (see :func:`mask_iou`).

Assignment (:func:`assign`) pairs rows and columns with the least total distance among pairs whose distance is
``<= max_distance``; leaving a row and a column unpaired costs ``max_distance`` (half each), so a pair is only
formed when it beats leaving both free. ``scipy`` (default) and ``lap`` solve the same problem.
"""

from __future__ import annotations

from typing import Callable, Union

import numpy as np
from scipy.optimize import linear_sum_assignment

from streamseg.errors import ConfigError
from streamseg.types import Detections, InstanceMasks

Distance = Callable[[Detections, Detections], np.ndarray]
DistanceLike = Union[str, Distance]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N, M)`` IoU of ``(N, 4)`` and ``(M, 4)`` xyxy boxes (float64); 0 where the union is empty."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(w, 0.0, None) * np.clip(h, 0.0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def mask_iou(a: InstanceMasks, b: InstanceMasks) -> np.ndarray:
    """``(N, M)`` IoU of two sets of instance masks; NaN where either mask is empty (no pixel set).

    Only pairs whose crops overlap are computed, and each on the overlap of the two crops: the intersection can
    only lie there, and the union is ``area_a + area_b - intersection``. Cost scales with the overlap area, not the
    frame.
    """
    area_a, area_b = a.areas(), b.areas()
    out = np.zeros((len(a), len(b)))
    out[area_a == 0, :] = np.nan
    out[:, area_b == 0] = np.nan
    if len(a) == 0 or len(b) == 0:
        return out
    size_a = np.array([c.shape[::-1] for c in a.crops], dtype=np.int64).reshape(-1, 2)  # (w, h)
    size_b = np.array([c.shape[::-1] for c in b.crops], dtype=np.int64).reshape(-1, 2)
    low = np.maximum(a.origins[:, None, :], b.origins[None, :, :])
    high = np.minimum((a.origins + size_a)[:, None, :], (b.origins + size_b)[None, :, :])
    overlaps = (high > low).all(axis=2) & (area_a[:, None] > 0) & (area_b[None, :] > 0)
    for i, j in zip(*np.nonzero(overlaps)):
        (x0, y0), (x1, y1) = low[i, j], high[i, j]
        ax, ay = a.origins[i]
        bx, by = b.origins[j]
        inter = np.count_nonzero(
            a.crops[i][y0 - ay : y1 - ay, x0 - ax : x1 - ax] & b.crops[j][y0 - by : y1 - by, x0 - bx : x1 - bx]
        )
        out[i, j] = inter / (area_a[i] + area_b[j] - inter)
    return out


def iou_distance(tracks: Detections, detections: Detections) -> np.ndarray:
    """``1 - IoU`` of the boxes."""
    return 1.0 - box_iou(tracks.boxes, detections.boxes)


def mask_iou_distance(tracks: Detections, detections: Detections) -> np.ndarray:
    """``1 - mask IoU`` where both sides have a non-empty mask, ``1 - box IoU`` elsewhere."""
    box = 1.0 - box_iou(tracks.boxes, detections.boxes)
    if tracks.masks is None or detections.masks is None:
        return box
    masks = 1.0 - mask_iou(tracks.masks, detections.masks)
    return np.where(np.isnan(masks), box, masks)


DISTANCES: dict[str, Distance] = {"iou": iou_distance, "mask_iou": mask_iou_distance}


def get_distance(distance: DistanceLike) -> Distance:
    """A distance by name (``"iou"``, ``"mask_iou"``) or the callable itself."""
    if callable(distance):
        return distance
    try:
        return DISTANCES[distance]
    except (KeyError, TypeError):
        raise ConfigError(f"distance must be one of {sorted(DISTANCES)} or a callable, got {distance!r}") from None


def _assign_scipy(cost: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray]:
    # Clipping every cost to the limit makes "pair at the limit" as good as "leave both free", so the rectangular
    # solver's fixed number of pairs stops mattering: the pairs kept below are the optimum of the thresholded problem.
    rows, cols = linear_sum_assignment(np.minimum(cost, limit))
    return rows, cols


def _assign_lap(cost: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray]:
    import lap

    _, x, _ = lap.lapjv(np.minimum(cost, limit), extend_cost=True, cost_limit=limit)
    rows = np.flatnonzero(x >= 0)
    return rows, x[rows]


ASSIGNERS = {"scipy": _assign_scipy, "lap": _assign_lap}


def check_assigner(name: str) -> str:
    if name not in ASSIGNERS:
        raise ConfigError(f"assignment must be one of {sorted(ASSIGNERS)}, got {name!r}")
    if name == "lap":
        try:
            import lap  # noqa: F401
        except ImportError:
            raise ConfigError("assignment='lap' needs the lap package: pip install lap") from None
    return name


def assign(cost: np.ndarray, max_distance: float, method: str = "scipy") -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(rows, cols)`` of ``cost`` (``(T, M)``) with the least total cost among entries ``<= max_distance``.

    NaN and ``inf`` entries are never paired. Returns two int64 arrays of equal length, sorted by row.
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty
    limit = float(max_distance) + 1e-9  # a forbidden pair costs a hair more than the worst allowed one
    cost = np.where(np.isnan(cost), np.inf, cost)
    rows, cols = ASSIGNERS[method](cost, limit)
    keep = cost[rows, cols] <= max_distance
    rows, cols = rows[keep].astype(np.int64), cols[keep].astype(np.int64)
    order = np.argsort(rows, kind="stable")
    return rows[order], cols[order]
