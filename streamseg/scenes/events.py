"""Ground-truth zone and line events, from each track's anchor point frame by frame.

Rules (the contract an event detector is scored against):
- anchor: bottom-centre ``((x1 + x2) / 2, y2)`` of the track's FULL (amodal) box, i.e. the point where the object
  stands on the ground, also while it is partly hidden or cut by the border;
- a track is considered only in frames where it is in the ground truth (visible enough); gaps are bridged, so
  an object that passes behind a bus and comes out inside the zone still gets one ``enter``;
- zone: inside means inside the polygon (even-odd ray casting; a point exactly on an edge follows that rule's
  half-open convention: on the default zone's top edge it is inside, on its bottom edge outside); the state
  before a track's first ground-truth frame is *outside*, so a
  track that first appears inside the zone makes an ``enter`` in that frame; a track that disappears while
  inside makes no ``exit``;
- line ``A -> B``: the side of a point P is ``cross(B - A, P - A) > 0`` ("right" of A->B as drawn on screen,
  where y points down; zero counts as left). A ``cross`` event happens in the frame where the side changes
  between two consecutive ground-truth frames of the track and the anchor's step meets the segment A-B;
  ``direction`` is ``"in"`` from left to right of A->B and ``"out"`` from right to left. With the default line
  (drawn from the bottom of the picture upwards) ``"in"`` means moving to the right in the image.

Each event is a dict ``{"frame", "time", "track_id", "label", "class", "event" ("enter" | "exit" | "cross"),
"target" ("zone" | "line"), "anchor": [x, y]}`` plus ``"direction"`` for crossings, sorted by frame then track.
"""

from __future__ import annotations

from typing import Iterable

# The geometry lives in streamseg.ops.geometry, shared with the live event rules (streamseg.events); re-exported here.
from streamseg.ops.geometry import line_side, point_in_polygon, segment_crossed

__all__ = ["point_in_polygon", "line_side", "zone_line_events"]


def zone_line_events(samples: Iterable[tuple[int, float, Iterable]], zone, line, class_names) -> list[dict]:
    """Events from ``samples``: ``(frame_index, time, instances)`` in frame order, where each instance has
    ``track_id``, ``label`` and ``anchor`` (see :class:`~streamseg.scenes.GroundTruthInstance`)."""
    zone = [tuple(map(float, p)) for p in zone] if zone else None
    line = tuple(tuple(map(float, p)) for p in line) if line else None
    inside: dict[int, bool] = {}
    last_anchor: dict[int, tuple[float, float]] = {}
    events: list[dict] = []

    def emit(index, time, inst, kind, target, anchor, **extra):
        label = int(inst.label)
        name = class_names[label] if 0 <= label < len(class_names) else str(label)
        events.append({"frame": int(index), "time": round(float(time), 6), "track_id": int(inst.track_id),
                       "label": label, "class": name, "event": kind, "target": target,
                       "anchor": [round(anchor[0], 3), round(anchor[1], 3)], **extra})  # fmt: skip

    for index, time, instances in samples:
        for inst in sorted(instances, key=lambda i: i.track_id):
            tid = int(inst.track_id)
            anchor = tuple(float(v) for v in inst.anchor)
            if zone is not None:
                now = point_in_polygon(anchor, zone)
                if now != inside.get(tid, False):
                    emit(index, time, inst, "enter" if now else "exit", "zone", anchor)
                inside[tid] = now
            if line is not None and tid in last_anchor:
                before = last_anchor[tid]
                side_before, side_now = line_side(before, line), line_side(anchor, line)
                if side_before != side_now and segment_crossed(before, anchor, line):
                    emit(index, time, inst, "cross", "line", anchor, direction="in" if side_now else "out")
            last_anchor[tid] = anchor
    return events
