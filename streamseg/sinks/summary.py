"""A PNG summary of a tracked run, drawn when the sink closes: counts per class over time and a dwell histogram.

Panels, top to bottom (a panel appears only when the run has what it shows):

1. tracked objects per class in each frame;
2. zone occupancy per zone and class (``FrameResult.occupancy``), when zones are configured;
3. cumulative line crossings per line, direction and class, when lines are configured;
4. histogram of the dwell time of completed zone visits (``exit`` events: enter to exit), when zones are
   configured.

The header gives the source, frames, duration, number of tracks and, with a collision rule, the number of
forward-collision warnings.

Drawn with OpenCV rather than matplotlib on purpose: cv2 is already a dependency, three plain charts do not need
a plotting library's ~8 extra packages (and its font cache built on first import), and the output is the same
pixels on every machine.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from streamseg.errors import output_error
from streamseg.sinks.annotate import DEFAULT_PALETTE
from streamseg.sinks.base import Sink
from streamseg.types import FrameResult, SourceInfo

__all__ = ["SummarySink"]

WIDTH, PANEL_HEIGHT, HEADER = 1000, 250, 40
MAX_POINTS = 8192
"""Points per curve kept at most: once there are twice as many, neighbours merge pairwise (the larger count wins)
and later frames go two to a point, and so on; memory stays bounded on endless streams, and a 700-pixel axis
shows no more anyway."""
LEFT, RIGHT, TOP, BOTTOM = 60, 230, 30, 36  # panel margins: y labels left, legend right, title top, x labels below
MAX_SERIES = 10
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_INK, _GRID, _PAPER = (30, 30, 30), (225, 225, 225), (255, 255, 255)


class SummarySink(Sink):
    """Collects per-frame counts and events; writes the PNG in :meth:`close` (also after an interrupted run).

    ``zones`` and ``lines``: names of the configured zones and lines (their panels are drawn even when empty);
    ``collision``: whether a forward-collision rule runs (its warnings are counted in the header).
    """

    def __init__(self, path: str | os.PathLike, info: SourceInfo, *, zones: Sequence[str] = (),
                 lines: Sequence[str] = (), collision: bool = False):
        self.path = Path(path)
        self.info = info
        self.zones, self.lines, self.collision = tuple(zones), tuple(lines), bool(collision)
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"SummarySink: folder {str(self.path.parent)!r} does not exist")
        self._times: list[float] = []
        self._objects: list[Counter] = []
        self._occupancy: list[dict] = []
        self._crossings: list[tuple[float, str, str, str]] = []
        self._visits: list[tuple[str, float]] = []
        self._warnings = 0
        self._tracks: set[int] = set()
        self._stride, self._fill = 1, 1  # frames per point, frames in the latest point
        self._frames, self._last_time = 0, 0.0
        self._closed = False

    def write(self, result: FrameResult) -> None:
        if self._closed:
            raise ValueError(f"write to closed SummarySink({self.path})")
        self._frames += 1
        self._last_time = float(result.frame.time)
        dets = result.detections
        if dets.track_ids is not None:
            self._tracks.update(dets.tracked().track_ids.tolist())
        objects = Counter(dets.names)
        occupancy = {z: dict(c) for z, c in (result.occupancy or {}).items()} if self.zones else {}
        if self._fill < self._stride:  # this frame joins the latest point
            self._objects[-1] = Counter(_max(self._objects[-1], objects))
            if self.zones:
                self._occupancy[-1] = _max_nested(self._occupancy[-1], occupancy)
            self._fill += 1
        else:
            self._times.append(float(result.frame.time))
            self._objects.append(objects)
            if self.zones:
                self._occupancy.append(occupancy)
            self._fill = 1
        if self._fill == self._stride and len(self._times) >= 2 * MAX_POINTS:  # merge full points only
            self._halve()
        for event in result.events:
            if event.kind == "cross":
                self._crossings.append((event.time, event.region, event.direction or "", event.class_name))
            elif event.kind == "exit" and event.dwell is not None:
                self._visits.append((event.region, float(event.dwell)))
            elif event.kind == "forward_collision":
                self._warnings += 1

    def close(self) -> None:
        """Draw and write the PNG; one that does not fit (disk full) is removed and raises OutputError."""
        if self._closed:
            return
        self._closed = True
        _, png = cv2.imencode(".png", cv2.cvtColor(self.render(), cv2.COLOR_RGB2BGR))
        try:
            self.path.write_bytes(png.tobytes())
        except OSError as err:
            self.path.unlink(missing_ok=True)
            raise output_error(self.path, err, "; the summary was not written") from err

    def _halve(self) -> None:
        """Merge neighbouring points pairwise (the first one's time, each count's larger value)."""
        self._times = self._times[::2]
        self._objects = [Counter(_max(a, b)) for a, b in zip(self._objects[::2], self._objects[1::2])]
        if self.zones:
            self._occupancy = [_max_nested(a, b) for a, b in zip(self._occupancy[::2], self._occupancy[1::2])]
        self._stride *= 2
        self._fill = self._stride  # the latest point is full: the next frame starts a new one

    # ----------------------------------------------------------------------------------------------- drawing
    def render(self) -> np.ndarray:
        """The summary as an ``(H, W, 3)`` uint8 RGB image."""
        times = np.asarray(self._times, dtype=np.float64)
        panels = [("Tracked objects per class", self._series_objects(), "line")]
        if self.zones:
            panels.append(("Zone occupancy (objects inside)", self._series_occupancy(), "line"))
        if self.lines:
            panels.append(("Line crossings (cumulative)", self._series_crossings(times), "line"))
        if self.zones:
            panels.append(("Dwell per completed zone visit (s)", None, "histogram"))
        image = np.full((HEADER + PANEL_HEIGHT * len(panels), WIDTH, 3), _PAPER, np.uint8)
        duration = self._last_time - float(times[0]) if times.size else 0.0
        header = f"{self.info.source_id}: {self._frames} frames, {duration:.1f} s, {len(self._tracks)} tracks"
        if self.collision:
            header += f", {self._warnings} forward-collision warnings"
        cv2.putText(image, header, (LEFT, 26), _FONT, 0.6, _INK, 1, cv2.LINE_AA)
        # One colour per class in every panel; outward crossings in a lighter tint of it.
        classes = sorted({label.rsplit(": ", 1)[-1] for _, series, _ in panels for label in (series or {})})
        hue = {name: DEFAULT_PALETTE[k % len(DEFAULT_PALETTE)] for k, name in enumerate(classes)}

        def color_of(label: str) -> tuple:
            color = hue[label.rsplit(": ", 1)[-1]]
            if label.split(": ")[0].endswith(" out"):
                color = tuple((c + p) // 2 for c, p in zip(color, _PAPER))
            return color

        for k, (title, series, kind) in enumerate(panels):
            top = HEADER + k * PANEL_HEIGHT
            if kind == "line":
                _line_chart(image, top, title, times, series, color_of)
            else:
                _histogram(image, top, title, self._visits, self.zones)
        return image

    def _series_objects(self) -> dict[str, np.ndarray]:
        names = sorted({name for counts in self._objects for name in counts})
        return {name: np.array([c.get(name, 0) for c in self._objects], np.float64) for name in names}

    def _series_occupancy(self) -> dict[str, np.ndarray]:
        keys = sorted({(z, c) for frame in self._occupancy for z, counts in frame.items() for c in counts})
        return {f"{z}: {c}": np.array([f.get(z, {}).get(c, 0) for f in self._occupancy], np.float64)
                for z, c in keys}

    def _series_crossings(self, times: np.ndarray) -> dict[str, np.ndarray]:
        series: dict[str, np.ndarray] = {}
        for key in sorted({(line, d, c) for _, line, d, c in self._crossings}):
            when = np.sort([t for t, *rest in self._crossings if tuple(rest) == key])
            series[f"{key[0]} {key[1]}: {key[2]}"] = np.searchsorted(when, times, side="right").astype(np.float64)
        return series


def _max(a: dict, b: dict) -> dict:
    return {k: max(a.get(k, 0), b.get(k, 0)) for k in a.keys() | b.keys()}


def _max_nested(a: dict, b: dict) -> dict:
    return {z: _max(a.get(z, {}), b.get(z, {})) for z in a.keys() | b.keys()}


def _nice_step(span: float, count: int = 5) -> float:
    raw = max(span, 1e-9) / count
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _frame(image, top: int, title: str, x_max: float, y_max: float, x_label: str, integer_y: bool = True):
    """Draw a panel's title, axes, grid and tick labels; return the plot's pixel mapping."""
    x0, x1 = LEFT, WIDTH - RIGHT
    y0, y1 = top + TOP, top + PANEL_HEIGHT - BOTTOM
    cv2.putText(image, title, (x0, top + 20), _FONT, 0.5, _INK, 1, cv2.LINE_AA)
    x_max, y_max = max(x_max, 1e-6), max(y_max, 1.0)
    y_step = max(1.0, _nice_step(y_max)) if integer_y else _nice_step(y_max)
    y_top = y_step * math.ceil(y_max / y_step)
    x_step = _nice_step(x_max)
    x_top = x_step * math.ceil(x_max / x_step)

    def px(x, y):
        return (x0 + (np.asarray(x) / x_top) * (x1 - x0), y1 - (np.asarray(y) / y_top) * (y1 - y0))

    for value in np.arange(0, y_top + y_step / 2, y_step):
        _, y = px(0, value)
        cv2.line(image, (x0, int(y)), (x1, int(y)), _GRID, 1)
        cv2.putText(image, f"{value:g}", (8, int(y) + 4), _FONT, 0.4, _INK, 1, cv2.LINE_AA)
    for value in np.arange(0, x_top + x_step / 2, x_step):
        x, _ = px(value, 0)
        cv2.putText(image, f"{value:g}", (int(x) - 8, y1 + 16), _FONT, 0.4, _INK, 1, cv2.LINE_AA)
    cv2.rectangle(image, (x0, y0), (x1, y1), _INK, 1)
    cv2.putText(image, x_label, ((x0 + x1) // 2 - 20, y1 + 32), _FONT, 0.4, _INK, 1, cv2.LINE_AA)
    return px


def _legend(image, top: int, entries: list[tuple[str, tuple]], hidden: int) -> None:
    x = WIDTH - RIGHT + 12
    for k, (label, color) in enumerate(entries):
        y = top + TOP + 12 + 17 * k
        cv2.rectangle(image, (x, y - 8), (x + 14, y + 2), color, cv2.FILLED)
        cv2.putText(image, label[:26], (x + 20, y), _FONT, 0.4, _INK, 1, cv2.LINE_AA)
    if hidden:
        y = top + TOP + 12 + 17 * len(entries)
        cv2.putText(image, f"+{hidden} more", (x + 20, y), _FONT, 0.4, _INK, 1, cv2.LINE_AA)


def _empty(image, top: int, text: str) -> None:
    cv2.putText(image, text, (LEFT + 20, top + PANEL_HEIGHT // 2), _FONT, 0.5, (120, 120, 120), 1, cv2.LINE_AA)


def _line_chart(image, top: int, title: str, times: np.ndarray, series: dict[str, np.ndarray], color_of) -> None:
    start = float(times[0]) if times.size else 0.0
    x = times - start
    y_max = max((float(v.max()) for v in series.values() if v.size), default=0.0)
    px = _frame(image, top, title, float(x[-1]) if x.size else 1.0, y_max, "seconds")
    if not series or not times.size:
        _empty(image, top, "nothing to show")
        return
    ranked = sorted(series.items(), key=lambda item: -float(item[1].max()))[:MAX_SERIES]
    step = max(1, x.size // 4000)  # a few thousand points per curve is all a 700-pixel axis can show
    entries = []
    for label, values in ranked:
        color = color_of(label)
        xs, ys = px(x[::step], values[::step])
        # counts change in steps: draw horizontal-then-vertical segments rather than slopes
        points = np.stack([np.repeat(xs, 2)[1:], np.repeat(ys, 2)[:-1]], axis=1)
        cv2.polylines(image, [np.round(points).astype(np.int32)], False, color, 2, cv2.LINE_AA)
        entries.append((label, color))
    _legend(image, top, entries, len(series) - len(ranked))


def _histogram(image, top: int, title: str, visits: list[tuple[str, float]], zones: Sequence[str]) -> None:
    values = np.array([v for _, v in visits], np.float64)
    if not values.size:
        _frame(image, top, title, 1.0, 1.0, "seconds in zone")
        _empty(image, top, "no completed visits")
        return
    edges = np.histogram_bin_edges(values, bins=min(20, max(5, int(math.sqrt(values.size)))),
                                   range=(0.0, max(float(values.max()), 1e-3)))
    per_zone = {z: np.histogram([v for name, v in visits if name == z], edges)[0] for z in zones}
    total = sum(per_zone.values())
    px = _frame(image, top, title, float(edges[-1]), float(total.max()), "seconds in zone")
    base = np.zeros(len(edges) - 1)
    entries = []
    for k, (zone, counts) in enumerate(per_zone.items()):
        color = DEFAULT_PALETTE[k % len(DEFAULT_PALETTE)]
        for i, count in enumerate(counts):
            if count:
                (left, right), _ = px(edges[i : i + 2], 0)
                _, (low, high) = px(0, [base[i], base[i] + count])
                cv2.rectangle(image, (int(left) + 1, int(high)), (int(right) - 1, int(low)), color, cv2.FILLED)
        base += counts
        entries.append((f"{zone} ({int(counts.sum())})", color))
    _legend(image, top, entries, 0)
