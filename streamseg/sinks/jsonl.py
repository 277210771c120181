"""Detections as JSON Lines: one UTF-8 JSON object per frame, one frame per line, in stream order.

Each line is written with a single ``write`` and flushed, so an interrupted run leaves only complete lines
(:func:`read_detections_jsonl` skips a torn last line, with a warning, should the process die mid-write); a line
that does not fit on a full disk is cut off again (:class:`~streamseg.sinks.base.LineFile`).

Schema ``streamseg.detections/1`` (a new version string is issued for any change that breaks readers; new
optional fields may be added within a version):

=================  ===============  ============================================================================
field              type             meaning
=================  ===============  ============================================================================
schema             str              always ``"streamseg.detections/1"``
source             str              ``SourceInfo.source_id`` / ``Frame.source_id``
frame              int              0-based index of the frame in the source (strided frames keep their index)
file               str              image sources only: the image's path relative to its folder (a glob: to
                                    the folder part before the first wildcard), ``/``-separated
time               float            seconds since the stream's first frame (``Frame.time``), 6 decimals
pts                int | null       container timestamp in ``time_base`` units; null for images
time_base          str | null       ``"num/den"`` seconds per pts tick; null for images
width, height      int              frame size in pixels (upright), the coordinate space of boxes and masks
predicted          bool             ``true`` on frames the model did not run on (``model.detect_interval``):
                                    the detections are the tracker's confirmed tracks at their predicted boxes,
                                    masks moved with them; omitted on frames the model saw
detections         list[object]     one per instance, possibly empty; fields below
  box              [float x4]       ``[x1, y1, x2, y2]`` pixels, rounded to 0.01; continuous coordinates: the
                                    image spans ``[0, width] x [0, height]``, a box over pixel column 0 only has
                                    ``x1 = 0, x2 = 1``
  score            float            confidence in [0, 1], 4 decimals
  label            int              class index in the model's vocabulary (COCO category id for COCO models)
  class            str              class name (``str(label)`` when the vocabulary has none)
  mask             object           COCO compressed RLE ``{"size": [height, width], "counts": str}`` over the
                                    full frame (column-major, pycocotools format); omitted when the model
                                    produced no masks
  track_id         int or null      tracker identity, stable across frames; null while the detection has no
                                    confirmed track (files: back-filled from the track's first frame, as in the
                                    tracks file); omitted when not tracked
=================  ===============  ============================================================================
"""

from __future__ import annotations

import json
import os
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

from streamseg.ops.masks import masks_to_rle
from streamseg.sinks.base import LineFile, Sink
from streamseg.types import UNTRACKED, FrameResult, SourceInfo

__all__ = ["DetectionsJsonlSink", "read_detections_jsonl", "SCHEMA"]

SCHEMA = "streamseg.detections/1"


class DetectionsJsonlSink(Sink):
    """Appends one ``streamseg.detections/1`` record per frame to ``path`` (created or truncated here; ``append``:
    continued, see :class:`~streamseg.sinks.base.LineFile`). ``files`` (image sources) names the file of each frame
    index, so that every record says which image it describes."""

    def __init__(self, path: str | os.PathLike, info: SourceInfo, *, files: Sequence[str] | None = None,
                 append: bool | None = None):
        self.path = Path(path)
        self.info = info
        self.files = files
        self._file = LineFile(self.path, append)
        self.frames_written = 0

    def write(self, result: FrameResult) -> None:
        if self._file.closed:
            raise ValueError(f"write to closed DetectionsJsonlSink({self.path})")
        file = None if self.files is None else self.files[result.frame.index]
        line = json.dumps(frame_record(result, file), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        self._file.write(line + "\n")
        self.frames_written += 1

    def close(self) -> None:
        self._file.close()  # idempotent; every line is already flushed


def frame_record(result: FrameResult, file: str | None = None) -> dict:
    """The ``streamseg.detections/1`` record of one frame, as plain JSON-ready Python values; ``file`` names the
    image it came from (image sources)."""
    frame, dets = result.frame, result.detections
    names = dets.names
    rles = masks_to_rle(dets.masks) if dets.masks is not None else None
    detections = []
    for i in range(len(dets)):
        item = {
            "box": [round(float(v), 2) for v in dets.boxes[i]],
            "score": round(float(dets.scores[i]), 4),
            "label": int(dets.labels[i]),
            "class": names[i],
        }
        if rles is not None:
            item["mask"] = rles[i]
        if dets.track_ids is not None:
            track_id = int(dets.track_ids[i])
            item["track_id"] = None if track_id == UNTRACKED else track_id
        detections.append(item)
    time_base = None if frame.time_base is None else Fraction(frame.time_base)
    return {
        "schema": SCHEMA,
        "source": frame.source_id,
        "frame": int(frame.index),
        **({} if file is None else {"file": file}),
        "time": round(float(frame.time), 6),
        "pts": None if frame.pts is None else int(frame.pts),
        "time_base": None if time_base is None else f"{time_base.numerator}/{time_base.denominator}",
        "width": frame.width,
        "height": frame.height,
        **({"predicted": True} if result.predicted else {}),
        "detections": detections,
    }


def read_detections_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Yield the records of a detections file in order; raises ValueError on another schema or a corrupt line."""
    return read_jsonl(path, SCHEMA)


def read_jsonl(path: str | os.PathLike, schema: str) -> Iterator[dict]:
    """Yield the records of a streamseg JSON Lines file whose every record carries ``schema``, in order.

    A torn last line (an interrupted write) is skipped with a warning; a corrupt line or another schema raises
    ValueError naming the file and line."""
    path = Path(path)
    with open(path, encoding="utf-8", newline="\n") as file:
        for number, line in enumerate(file, start=1):
            if not line.endswith("\n"):
                warnings.warn(f"{path}:{number}: skipping an incomplete last line (interrupted write)", stacklevel=2)
                return
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not a JSON record: {err}") from None
            found = record.get("schema") if isinstance(record, dict) else None
            if found != schema:
                raise ValueError(f"{path}:{number}: expected schema {schema!r}, got {found!r}")
            yield record
