"""Events as JSON Lines: one UTF-8 JSON object per event, in the order the events stage emitted them.

Each line is written with a single ``write`` and flushed, so a live consumer (``tail -f``) sees an event as soon as
it happens and an interrupted run leaves only complete lines (:func:`read_events_jsonl` skips a torn last line);
a line that does not fit on a full disk is cut off again (:class:`~streamseg.sinks.base.LineFile`).
A run without events leaves an empty file.

Schema ``streamseg.events/1`` (a new version string is issued for any change that breaks readers; new optional
fields may be added within a version):

=============  ================  =================================================================================
field          type              meaning
=============  ================  =================================================================================
schema         str               always ``"streamseg.events/1"``
source         str               source id (``Frame.source_id``)
kind           str               ``enter`` / ``exit`` (zone), ``dwell`` (zone, once per visit that lasts the
                                 zone's ``dwell_seconds``), ``cross`` (line), ``forward_collision`` (ego lane)
frame          int               0-based index of the frame in the source in which the event happened
time           float             stream time of that frame in seconds (``Frame.time``), 6 decimals
wall_time      float             wall-clock time of that frame (``Frame.capture_time``: when it was decoded or
                                 received), Unix seconds, 6 decimals
track_id       int               tracker identity of the object
label          int               class index in the model's vocabulary
class          str               class name
region         str               name of the zone, line or ego lane (unique within a pipeline)
direction      str | null        ``"in"`` (left to right of the line A -> B as drawn on screen, y down) or
                                 ``"out"``; null except for ``cross``
dwell          float | null      seconds inside the zone since the enter, 3 decimals: for ``exit`` (the visit's
                                 length) and ``dwell``; null otherwise
box            [float x4]        the object's ``[x1, y1, x2, y2]`` in that frame, pixels, 0.01
anchor         [float x2]        the point of the box the rule tested (default bottom centre), pixels, 0.01
extras         object            kind-specific numbers, ``{}`` when none; ``forward_collision``: ``ttc`` (seconds,
                                 estimated time to collision) and ``scale_rate`` (1/s, d ln(height) / dt)
=============  ================  =================================================================================

An event can be dated a few frames before the line that reports it is written: with a zone's or line's
``min_frames > 1`` a change is reported once it has held, dated to its first frame.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

from streamseg.sinks.base import LineFile, Sink
from streamseg.sinks.jsonl import read_jsonl
from streamseg.types import Event, FrameResult, SourceInfo

__all__ = ["EVENTS_SCHEMA", "EventsJsonlSink", "event_record", "read_events_jsonl"]

EVENTS_SCHEMA = "streamseg.events/1"


def event_record(event: Event) -> dict:
    """The ``streamseg.events/1`` record of one event, as plain JSON-ready Python values."""
    return {
        "schema": EVENTS_SCHEMA,
        "source": event.source_id,
        "kind": event.kind,
        "frame": int(event.frame),
        "time": round(float(event.time), 6),
        "wall_time": round(float(event.wall_time), 6),
        "track_id": int(event.track_id),
        "label": int(event.label),
        "class": event.class_name,
        "region": event.region,
        "direction": event.direction,
        "dwell": None if event.dwell is None else round(float(event.dwell), 3),
        "box": [round(float(v), 2) for v in event.box],
        "anchor": [round(float(v), 2) for v in event.anchor],
        "extras": {str(k): float(v) for k, v in event.extras.items()},
    }


class EventsJsonlSink(Sink):
    """Appends one ``streamseg.events/1`` record per event of each result to ``path`` (created or truncated;
    ``append``: continued, see :class:`~streamseg.sinks.base.LineFile`)."""

    def __init__(self, path: str | os.PathLike, info: SourceInfo, *, append: bool | None = None):
        self.path = Path(path)
        self.info = info
        self._file = LineFile(self.path, append)
        self.events_written = 0

    def write(self, result: FrameResult) -> None:
        if self._file.closed:
            raise ValueError(f"write to closed EventsJsonlSink({self.path})")
        for event in result.events:
            line = json.dumps(event_record(event), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
            self._file.write(line + "\n")
            self.events_written += 1

    def close(self) -> None:
        self._file.close()  # idempotent; every line is already flushed


def read_events_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Yield the records of an events file in order; raises ValueError on another schema or a corrupt line."""
    return read_jsonl(path, EVENTS_SCHEMA)
