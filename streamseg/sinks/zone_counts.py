"""Zone occupancy over time as CSV: one row per processed frame, one column per zone and class.

Columns: ``frame`` (0-based source index), ``time`` (stream seconds, 6 decimals), then for each zone, in the
order given, ``<zone>:<class>`` for each class it counts and ``<zone>:total``. A cell is the number of tracked
objects of that class sighted in that frame whose anchor is inside the zone (see :mod:`streamseg.events.rules`;
an object the tracker has lost for a few frames is not counted in them). One row per processed frame rather than
per second: strided or variable-rate sources keep their own times, and per-second figures (max, mean) are one
``groupby`` away. Rows go to disk as written, so the file is complete up to the last processed frame (on a full
disk: up to the last row that fit).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from pathlib import Path
from typing import Mapping, Sequence

from streamseg.sinks.base import LineFile, Sink
from streamseg.types import FrameResult, SourceInfo

__all__ = ["ZoneCountsCsvSink"]

log = logging.getLogger(__name__)


class ZoneCountsCsvSink(Sink):
    """Writes ``FrameResult.occupancy`` of every frame. ``zones``: zone name -> the class names it counts (the
    columns, in order). ``append``: an existing file is continued (see :class:`~streamseg.sinks.base.LineFile`)
    when its header is this one; a file of other zones (a camera whose zones were changed) is kept as
    ``<name>.until-<UTC time>.csv`` and a new one started, so no file mixes two column sets."""

    def __init__(self, path: str | os.PathLike, info: SourceInfo, zones: Mapping[str, Sequence[str]], *,
                 append: bool | None = None):
        self.path = Path(path)
        self.info = info
        self.zones = {str(name): tuple(classes) for name, classes in zones.items()}
        header = ["frame", "time"]
        for name, classes in self.zones.items():
            header += [f"{name}:{c}" for c in classes] + [f"{name}:total"]
        self._file = LineFile(self.path, append)
        if self._file.start and _first_line(self.path) != _csv_line(header):
            self._file.close()
            earlier = self.path.with_name(f"{self.path.stem}.until-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
                                          f"{self.path.suffix}")
            os.replace(self.path, earlier)
            log.info("%s: other zones than its header's: kept as %s, a new file started", self.path, earlier.name)
            self._file = LineFile(self.path, False)
        self._csv = csv.writer(self._file, lineterminator="\n")
        if self._file.start == 0:
            self._csv.writerow(header)
        self.rows_written = 0

    def write(self, result: FrameResult) -> None:
        if self._file.closed:
            raise ValueError(f"write to closed ZoneCountsCsvSink({self.path})")
        occupancy = result.occupancy or {}
        row: list = [int(result.frame.index), f"{float(result.frame.time):.6f}"]
        for name, classes in self.zones.items():
            counts = occupancy.get(name, {})
            values = [int(counts.get(c, 0)) for c in classes]
            row += values + [sum(values)]
        self._csv.writerow(row)
        self.rows_written += 1

    def close(self) -> None:
        self._file.close()


def _csv_line(row: list) -> str:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerow(row)
    return text.getvalue().rstrip("\n")


def _first_line(path: Path) -> str:
    with open(path, encoding="utf-8", errors="replace") as file:
        return file.readline().rstrip("\n")
