"""Bottom restoration: where an object stands when the lower part of its box is hidden.

A detector's box covers what is visible. In street and surveillance views nearer objects are lower in the picture,
so they hide the LOWER part of farther ones: the box's bottom edge jumps up, and with it the anchor that zone and
line rules test (the bottom centre), making false exits, enters and crossings, or missing true ones. (The ground
truth of generated scenes uses the full, amodal box for this reason.)

:class:`BottomHold` restores the bottom edge from the track's own recent height: when a box is shorter than
``ratio`` times the tallest box of the same track within the last ``seconds``, and its top is not cut by the
image border, its bottom is moved to ``top + that height``. Heights are remembered as observed, so a lasting
change (a person sitting down, an occlusion longer than ``seconds``) is accepted after ``seconds``; growth (an
approaching object) never triggers it. On generated scenes with ground-truth boxes it raises event precision and
recall from about 0.94 / 0.97 to 1.0 (``seconds=1, ratio=0.7``; see ``streamseg eval --scene-events``).
"""

from __future__ import annotations

from collections import deque

from streamseg.errors import ConfigError
from streamseg.types import Detections, Frame

__all__ = ["BottomHold"]


class _Heights:
    __slots__ = ("times", "heights", "last_seen")

    def __init__(self, time: float):
        self.times: deque[float] = deque()
        self.heights: deque[float] = deque()
        self.last_seen = time


class BottomHold:
    """Per-stream state; call it on every frame's tracked detections, in order: returns them with restored boxes
    (the same object when nothing changed)."""

    def __init__(self, seconds: float = 1.0, ratio: float = 0.7, forget_seconds: float = 60.0):
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
            raise ConfigError(f"BottomHold: seconds must be a number > 0, got {seconds!r}")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
            raise ConfigError(f"BottomHold: ratio must be a number in (0, 1), got {ratio!r}")
        self.seconds, self.ratio, self.forget_seconds = float(seconds), float(ratio), float(forget_seconds)
        self._tracks: dict[int, _Heights] = {}

    def __call__(self, frame: Frame, detections: Detections) -> Detections:
        now = float(frame.time)
        boxes = None
        if detections.track_ids is not None:
            for k, (track_id, box) in enumerate(zip(detections.track_ids.tolist(), detections.boxes.tolist())):
                state = self._tracks.get(track_id)
                if state is None:
                    state = self._tracks[track_id] = _Heights(now)
                state.last_seen = now
                while state.times and state.times[0] < now - self.seconds - 1e-9:
                    state.times.popleft()
                    state.heights.popleft()
                height = box[3] - box[1]
                tallest = max(state.heights, default=height)
                state.times.append(now)
                state.heights.append(height)
                if box[1] > 0.5 and height < self.ratio * tallest:  # a box cut at the top keeps its bottom
                    if boxes is None:
                        boxes = detections.boxes.copy()
                    boxes[k, 3] = box[1] + tallest
        stale = [tid for tid, state in self._tracks.items() if now - state.last_seen > self.forget_seconds]
        for tid in stale:
            del self._tracks[tid]
        if boxes is None:
            return detections
        return Detections(boxes, detections.scores, detections.labels, detections.class_names, detections.masks,
                          detections.track_ids)
