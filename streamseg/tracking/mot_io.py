"""MOTChallenge text files: ``frame,id,x,y,w,h,conf,...`` rows in, the same rows out.

Hand-written rather than taken from motmetrics: motmetrics 1.4.0 (the newest on the package index) calls
``np.asfarray``, removed in numpy 2, so its loaders and metrics fail under numpy>=2.

File contract (MOT15 "2D" format, also what trackers submit for MOT16/17/20):

- one object per line, comma- or whitespace-separated: ``frame, id, bb_left, bb_top, bb_width, bb_height, conf``
  and usually three more columns (MOT15: world x, y, z; MOT16+ ground truth: class, visibility). Only the first
  seven are read; a line needs at least six (a missing ``conf`` reads as 1).
- frames are 1-based; ids are -1 for detections that carry no identity;
- boxes are MATLAB-style pixel coordinates: the image's top-left pixel is ``(1, 1)``. :meth:`MotRows.boxes_xyxy` and
  :meth:`MotRows.from_detections` convert to and from streamseg's 0-based continuous ``x1, y1, x2, y2``
  (motmetrics shifts by the same 1 when loading). IoU does not change when both sides use the same origin, but
  does when they differ: ``streamseg.scenes`` exports write 0-based boxes (``mot_box_origin: 0`` in scene.json),
  so pass ``box_origin=0`` for tracker output scored against them.
- the 7th column means different things: a detector score in ``det.txt`` and tracker outputs, a 0/1 "consider this
  entry" flag in MOT16+ ``gt.txt`` and always 1 in MOT15 ``gt.txt``. Reading ground truth with
  ``min_confidence=1`` (what motmetrics' evaluation apps do) drops the 0-flagged entries and keeps every MOT15 row.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from streamseg.errors import ConfigError, SourceError, output_error
from streamseg.types import Detections

_SPLIT = re.compile(r"[,\s]+")
_COLUMNS = ("frame", "id", "x", "y", "w", "h", "conf")


@dataclass(frozen=True, eq=False)
class MotRows:
    """Rows of a MOTChallenge file as parallel arrays, in file order (no sorting, no grouping).

    Index with a boolean or integer array to select rows: ``rows[rows.frames == 1]``.
    """

    frames: np.ndarray
    """``(N,)`` int64, 1-based frame numbers."""
    ids: np.ndarray
    """``(N,)`` int64 object / track ids; -1 for detections without identity."""
    boxes: np.ndarray
    """``(N, 4)`` float64 ``x, y, w, h`` in the file's 1-based pixel convention."""
    confidences: np.ndarray
    """``(N,)`` float64: detector score, or the ground-truth "consider" flag."""

    def __post_init__(self):
        fields = {
            "frames": np.asarray(self.frames, dtype=np.int64).reshape(-1),
            "ids": np.asarray(self.ids, dtype=np.int64).reshape(-1),
            "boxes": np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4),
            "confidences": np.asarray(self.confidences, dtype=np.float64).reshape(-1),
        }
        for name, value in fields.items():
            object.__setattr__(self, name, value)
        n = len(self.frames)
        for name in ("ids", "boxes", "confidences"):
            if len(fields[name]) != n:
                raise ConfigError(f"MotRows.{name} has {len(fields[name])} entries, frames has {n}")

    @classmethod
    def empty(cls) -> "MotRows":
        return cls(np.zeros(0), np.zeros(0), np.zeros((0, 4)), np.zeros(0))

    @classmethod
    def from_detections(cls, frame_index: int, detections: Detections, *, box_origin: int = 1) -> "MotRows":
        """Rows for one frame of the pipeline. ``frame_index`` is 0-based (``Frame.index``) and becomes
        ``frame_index + 1``; ids come from ``detections.track_ids`` (-1 where None), conf from ``scores``.
        ``box_origin``: 1 for MOTChallenge files, 0 to compare with ``streamseg.scenes`` ground truth.

        Coordinates are rounded to 1e-4 px: the boxes are float32, whose extra digits are noise, not precision.
        """
        n = len(detections)
        xyxy = detections.boxes.astype(np.float64)
        tlwh = np.concatenate([xyxy[:, :2] + float(box_origin), xyxy[:, 2:] - xyxy[:, :2]], axis=1)
        ids = detections.track_ids if detections.track_ids is not None else np.full(n, -1)
        scores = np.round(detections.scores.astype(np.float64), 6)
        return cls(np.full(n, int(frame_index) + 1), ids, np.round(tlwh, 4), scores)

    @classmethod
    def concatenate(cls, parts: Iterable["MotRows"]) -> "MotRows":
        parts = list(parts)
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.frames for p in parts]),
            np.concatenate([p.ids for p in parts]),
            np.concatenate([p.boxes for p in parts]),
            np.concatenate([p.confidences for p in parts]),
        )

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index) -> "MotRows":
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return MotRows(self.frames[index], self.ids[index], self.boxes[index], self.confidences[index])

    def boxes_xyxy(self, *, box_origin: int = 1) -> np.ndarray:
        """``(N, 4)`` float64 ``x1, y1, x2, y2`` in streamseg's 0-based continuous coordinates; ``box_origin`` is
        the file's (1 for MOTChallenge, 0 for ``streamseg.scenes`` exports)."""
        x1y1 = self.boxes[:, :2] - float(box_origin)
        return np.concatenate([x1y1, x1y1 + self.boxes[:, 2:]], axis=1)


def read_mot(path: str | os.PathLike, *, min_confidence: float | None = None) -> MotRows:
    """Read a MOTChallenge file (``gt.txt``, ``det.txt`` or a tracker's output).

    ``min_confidence``: keep rows with ``conf >= min_confidence`` (None keeps all). Use 1 for ground truth, as
    motmetrics' ``loadtxt(..., min_confidence=1)``. (motmetrics' own default is -1, which would silently drop
    detections scored below -1; None here drops nothing.)

    Raises :class:`SourceError` naming the file and line for an unreadable file, a non-numeric value, fewer than six
    values, a fractional or < 1 frame, a fractional id, a non-finite value, a negative size, or an id repeated
    within a frame (ids >= 0 only: detections repeat -1). An empty file gives empty rows.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SourceError(f"MOT file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SourceError(f"cannot read MOT file {path}: {err}") from None

    values, line_numbers = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        fields = _SPLIT.split(line)
        if len(fields) < 6:
            raise SourceError(f"{path}:{number}: expected at least 6 values (frame,id,x,y,w,h), got {len(fields)}")
        row = []
        for name, field in zip(_COLUMNS, fields):
            try:
                row.append(float(field))
            except ValueError:
                raise SourceError(f"{path}:{number}: column '{name}' is not a number: {field!r}") from None
        if len(row) == 6:
            row.append(1.0)
        bad = [name for name, value in zip(_COLUMNS, row) if not np.isfinite(value)]
        if bad:
            raise SourceError(f"{path}:{number}: column '{bad[0]}' is not finite: {line!r}")
        frame, track_id, _, _, w, h, _ = row
        if frame != int(frame) or frame < 1:
            raise SourceError(f"{path}:{number}: frame must be an integer >= 1 (MOT frames are 1-based), got {frame:g}")
        if track_id != int(track_id):
            raise SourceError(f"{path}:{number}: id must be an integer, got {track_id:g}")
        if w < 0 or h < 0:
            raise SourceError(f"{path}:{number}: negative box size w={w:g}, h={h:g}")
        values.append(row)
        line_numbers.append(number)

    table = np.asarray(values, dtype=np.float64).reshape(-1, 7)
    rows = MotRows(table[:, 0], table[:, 1], table[:, 2:6], table[:, 6])
    _check_unique(rows, path, np.asarray(line_numbers, dtype=np.int64))
    if min_confidence is not None:
        rows = rows[rows.confidences >= float(min_confidence)]
    return rows


def _check_unique(rows: MotRows, path: Path, line_numbers: np.ndarray) -> None:
    """A (frame, id) pair names one object: a repeat makes identity metrics meaningless, so it is a file error."""
    keep = rows.ids >= 0
    frames, ids, lines = rows.frames[keep], rows.ids[keep], line_numbers[keep]
    order = np.lexsort((lines, ids, frames))
    same = (frames[order][1:] == frames[order][:-1]) & (ids[order][1:] == ids[order][:-1])
    if same.any():
        k = int(np.flatnonzero(same)[0])
        first, second = lines[order][k], lines[order][k + 1]
        raise SourceError(
            f"{path}:{second}: frame {frames[order][k]} id {ids[order][k]} already appears on line {first}"
        )


def write_mot(path: str | os.PathLike, rows: MotRows) -> None:
    """Write ``frame,id,x,y,w,h,conf,-1,-1,-1`` lines in the order given (MOTChallenge submissions are any order).

    Numbers are written in their shortest exact form, so :func:`read_mot` gives back the same floats.
    Raises :class:`ConfigError` for a missing folder, a frame < 1 (pass 1-based frames) or a non-finite box, and
    :class:`~streamseg.errors.OutputError` for a file that cannot be written (disk full), which is then removed
    rather than left cut short.
    """
    path = Path(path)
    if not isinstance(rows, MotRows):
        raise ConfigError(f"write_mot: rows must be MotRows, got {type(rows).__name__}")
    if not path.parent.is_dir():
        raise ConfigError(f"write_mot: folder {str(path.parent)!r} does not exist")
    if len(rows) and rows.frames.min() < 1:
        raise ConfigError(f"write_mot: frames must be 1-based (>= 1), got {int(rows.frames.min())}")
    finite = np.isfinite(rows.boxes).all(axis=1) & np.isfinite(rows.confidences)
    if not finite.all():
        k = int(np.flatnonzero(~finite)[0])
        raise ConfigError(f"write_mot: row {k} (frame {rows.frames[k]}, id {rows.ids[k]}) has a non-finite value")
    lines = []
    for frame, track_id, box, conf in zip(rows.frames.tolist(), rows.ids.tolist(), rows.boxes.tolist(),
                                          rows.confidences.tolist()):
        numbers = ",".join(_number(v) for v in (*box, conf))
        lines.append(f"{frame},{track_id},{numbers},-1,-1,-1\n")
    try:
        with open(path, "w", encoding="utf-8") as file:
            file.writelines(lines)
    except OSError as err:
        path.unlink(missing_ok=True)
        raise output_error(path, err, "; the tracks file was not written") from err


def _number(value: float) -> str:
    """Shortest text that reads back as the same float; integral values without a trailing '.0'."""
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)
