"""Comparing two detectors' outputs on the same frame (backend parity, export checks).

Backends may order instances differently, so element-wise comparison is meaningless: instances are first matched
one-to-one by label and box overlap (Hungarian assignment on 1 - IoU, scipy), then compared.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from streamseg.types import Detections, InstanceMasks


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``(len(a), len(b))`` of xyxy boxes."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def mask_iou(a: InstanceMasks, i: int, b: InstanceMasks, j: int) -> float:
    """IoU of mask ``i`` of ``a`` and mask ``j`` of ``b``, computed over the union of their crops only."""
    (ax, ay), (bx, by) = a.origins[i], b.origins[j]
    ca, cb = a.crops[i], b.crops[j]
    x0, y0 = min(ax, bx), min(ay, by)
    x1, y1 = max(ax + ca.shape[1], bx + cb.shape[1]), max(ay + ca.shape[0], by + cb.shape[0])
    canvas_a = np.zeros((y1 - y0, x1 - x0), bool)
    canvas_b = np.zeros_like(canvas_a)
    canvas_a[ay - y0 : ay - y0 + ca.shape[0], ax - x0 : ax - x0 + ca.shape[1]] = ca
    canvas_b[by - y0 : by - y0 + cb.shape[0], bx - x0 : bx - x0 + cb.shape[1]] = cb
    union = np.logical_or(canvas_a, canvas_b).sum()
    return 1.0 if union == 0 else float(np.logical_and(canvas_a, canvas_b).sum() / union)


@dataclass
class Matching:
    """Result of matching ``reference`` instances to ``candidate`` instances."""

    pairs: np.ndarray
    """``(K, 2)`` indices (reference, candidate)."""
    unmatched_reference: np.ndarray
    unmatched_candidate: np.ndarray
    box_deviation: np.ndarray
    """Per pair: max absolute coordinate difference in pixels."""
    score_deviation: np.ndarray
    mask_iou: np.ndarray
    """Per pair; empty where either side has no masks."""

    @property
    def unmatched(self) -> int:
        return len(self.unmatched_reference) + len(self.unmatched_candidate)


def match_detections(reference: Detections, candidate: Detections, min_iou: float = 0.5) -> Matching:
    """Match instances with the same label by box IoU (>= ``min_iou``), maximizing total IoU."""
    iou = box_iou(reference.boxes, candidate.boxes)
    iou[reference.labels[:, None] != candidate.labels[None, :]] = 0.0
    rows, cols = linear_sum_assignment(-iou) if iou.size else (np.zeros(0, int), np.zeros(0, int))
    good = iou[rows, cols] >= min_iou
    rows, cols = rows[good], cols[good]
    pairs = np.stack([rows, cols], axis=1).astype(np.int64).reshape(-1, 2)
    both_masks = reference.masks is not None and candidate.masks is not None
    return Matching(
        pairs=pairs,
        unmatched_reference=np.setdiff1d(np.arange(len(reference)), rows),
        unmatched_candidate=np.setdiff1d(np.arange(len(candidate)), cols),
        box_deviation=np.abs(reference.boxes[rows] - candidate.boxes[cols]).max(axis=1, initial=0.0),
        score_deviation=np.abs(reference.scores[rows] - candidate.scores[cols]),
        mask_iou=np.array(
            [mask_iou(reference.masks, r, candidate.masks, c) for r, c in pairs] if both_masks else [], np.float64
        ),
    )
