"""Tracking a whole MOTChallenge detections file at once: what ``streamseg track`` runs.

MOTChallenge boxes are 1-based pixel coordinates; :meth:`MotRows.boxes_xyxy` and :meth:`MotRows.from_detections`
convert to streamseg's 0-based boxes and back by the same 1 px, so written tracks use the file's own convention and
IoU-based scores are unaffected.

The MOT15 setting (evalkit TUD-Campus and TUD-Stadtmitte, public DPM detections), one for both sequences::

    streamseg track det.txt -o tracks.txt --scores minmax --high-threshold 0.25 --max-distance 0.7 \\
        --max-lost 7 --smooth-boxes

i.e. ``TrackerConfig(high_threshold=0.25, max_distance=0.7, max_lost=7, smooth_boxes=True)`` with min-max rescaled
scores and every bridged gap filled. Why these: DPM scores are unbounded (about -0.2 to 120) so they are rescaled to
``[0, 1]`` per sequence, after which a quarter of the range separates people from clutter; DPM boxes jitter between
a few fixed scales, which the Kalman-filtered boxes smooth out; pedestrians walking side by side swap identities when
lost tracks coast too long (7 frames = 0.28 s at 25 fps) or pair too loosely (IoU >= 0.3). Neighbouring values
(``high_threshold`` 0.25-0.275, ``low_threshold`` 0.1-0.15, ``max_lost`` 5-8, ``max_distance`` 0.65-0.7) all still
beat the reference tracker on both sequences; ``tests/test_tracker.py`` keeps the numbers.
"""

from __future__ import annotations

import numpy as np

from streamseg.errors import ConfigError
from streamseg.tracking.mot_io import MotRows
from streamseg.tracking.tracker import Tracker, TrackerConfig
from streamseg.types import Detections

SCORE_MODES = ("raw", "minmax")


def rescale_scores(scores: np.ndarray, mode: str = "raw") -> np.ndarray:
    """``"raw"``: scores as they are. ``"minmax"``: mapped linearly onto ``[0, 1]`` over the given scores (all 1
    where they are all equal), for detectors whose scores are not probabilities (DPM's run from about -0.2 to 120).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if mode == "raw":
        return scores
    if mode != "minmax":
        raise ConfigError(f"scores must be one of {SCORE_MODES}, got {mode!r}")
    if scores.size == 0:
        return scores
    low, high = scores.min(), scores.max()
    if high == low:
        return np.ones_like(scores)
    return (scores - low) / (high - low)


def track_rows(
    detections: MotRows,
    config: TrackerConfig | None = None,
    *,
    scores: str = "raw",
    max_gap: int | None = None,
    live: bool = False,
) -> MotRows:
    """Track one sequence of MOTChallenge detection rows (ids ignored) into track rows, sorted by frame and id.

    Every frame from 1 to the last one with a detection is one tracker step, empty frames included. ``scores``:
    see :func:`rescale_scores`; the written ``conf`` is the score the tracker saw. ``max_gap``: see
    :meth:`Tracker.history` (None fills every bridged gap, 0 none). ``live``: write what :meth:`Tracker.update`
    returns frame by frame instead (no back-fill, no gap filling): what a live pipeline would have shown.
    """
    if not isinstance(detections, MotRows):
        raise ConfigError(f"track_rows: expected MotRows, got {type(detections).__name__}")
    tracker = Tracker(config, keep_history=not live)
    confidences = rescale_scores(detections.confidences, scores)
    boxes = detections.boxes_xyxy()
    order = np.argsort(detections.frames, kind="stable")
    frames = detections.frames[order]
    last = int(frames[-1]) if len(frames) else 0
    starts = np.searchsorted(frames, np.arange(1, last + 2))
    parts = []
    for frame in range(1, last + 1):
        rows = order[starts[frame - 1] : starts[frame]]
        tracked = tracker.update(Detections(boxes[rows], confidences[rows], np.zeros(len(rows))), frame - 1)
        if live and len(tracked):
            parts.append(MotRows.from_detections(frame - 1, tracked))
    if not live:
        parts = [MotRows.from_detections(index, tracked) for index, tracked in tracker.history(max_gap)]
    out = MotRows.concatenate(parts)
    return out[np.lexsort((out.ids, out.frames))]
