"""Live recordings by stream copy (no re-encoding): rolling MP4 segments and event clips from a pre-event buffer.

Both are packet taps of a :class:`~streamseg.sources.LiveSource`: they receive every compressed video packet in the
source's reader thread, with the wall-clock time of its receipt, and remux packets into MP4 files as the camera
sent them (full frame rate and quality, a few percent of one core). A file always starts at a keyframe.

- :class:`SegmentRecorder`: ``<dir>/<id>-YYYYmmddTHHMMSSZ.mp4`` files of about ``segment_seconds`` each (cut at
  the first keyframe after that much stream time); a reconnect (possibly with a new resolution) starts a new segment.
- :class:`EventClipper`: ``trigger(wall_time, name)`` asks for a clip from ``pre`` seconds before ``wall_time``
  to ``post`` after; packets of the last ``pre`` seconds (from the keyframe before them) are kept in memory, so the
  clip shows what led to the event. A clip is written once its end has been received, or cut short when the stream
  goes down or the run ends. Memory is bounded by ``pre + post`` seconds of compressed video.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Packet:
    wall: float
    pts: int
    dts: int
    keyframe: bool
    data: bytes


class _Copier:
    """Plain data of packets (the PyAV objects belong to the demuxer), one session at a time.

    A packet without any timestamp gets the previous one's plus a tick (0 at the start of a session): FFmpeg's RTSP
    client hands over the first keyframe of a session without one, and dropping it would leave the recording
    without a start until the next keyframe (many seconds with long-GOP cameras)."""

    def __init__(self):
        self.last: int | None = None

    def reset(self) -> None:
        self.last = None

    def __call__(self, packet: av.Packet, wall: float) -> _Packet | None:
        if packet.size == 0:
            return None
        pts = packet.pts if packet.pts is not None else packet.dts
        if pts is None:
            pts = 0 if self.last is None else self.last + 1
        dts = packet.dts if packet.dts is not None else pts
        self.last = max(pts, dts) if self.last is None else max(self.last, pts, dts)
        return _Packet(wall, pts, dts, bool(packet.is_keyframe), bytes(packet))


class _Mp4:
    """One MP4 file written from copied packets, timestamps rebased to start at 0 and kept increasing."""

    def __init__(self, path: Path, template: av.video.stream.VideoStream):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._container = av.open(str(path), "w", format="mp4")
        self._stream = self._container.add_stream_from_template(template)
        self._time_base: Fraction = template.time_base
        self._base: int | None = None
        self._last_dts: int | None = None
        self.first_wall: float | None = None
        self.last_wall: float | None = None
        self.packets = 0

    def add(self, p: _Packet) -> None:
        if self._base is None:
            self._base = min(p.pts, p.dts)
            self.first_wall = p.wall
        dts = p.dts - self._base
        if self._last_dts is not None and dts <= self._last_dts:
            dts = self._last_dts + 1  # a camera's timestamps may stall or jump back; MP4 needs increasing dts
        pts = max(p.pts - self._base, dts)
        packet = av.Packet(p.data)
        packet.pts, packet.dts, packet.time_base = pts, dts, self._time_base
        packet.is_keyframe = p.keyframe
        packet.stream = self._stream
        self._container.mux(packet)
        self._last_dts = dts
        self.last_wall = p.wall
        self.packets += 1

    def elapsed(self, p: _Packet) -> float:
        """Stream seconds from this file's first packet to ``p`` (the camera's clock: bursts after a connect
        arrive at once but still count at their own rate)."""
        return 0.0 if self._base is None else float((p.pts - self._base) * self._time_base)

    def close(self) -> None:
        try:
            self._container.close()
        finally:
            if self.packets == 0:
                self.path.unlink(missing_ok=True)


def utc_stamp(wall: float) -> str:
    """``YYYYmmddTHHMMSSmmmZ``: a file-name-safe UTC time with milliseconds."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(wall)) + f"{wall % 1:.3f}"[1:].replace(".", "") + "Z"


class SegmentRecorder:
    """Rolling recording of one stream: MP4 segments of about ``segment_seconds`` under ``folder``.

    ``keep`` (optional) deletes the oldest segments beyond that many, so disk use stays bounded on a long run.
    """

    def __init__(self, folder: str | Path, source_id: str, segment_seconds: float, *, keep: int | None = None):
        if not segment_seconds > 0:
            raise ValueError(f"segment_seconds: expected > 0, got {segment_seconds!r}")
        self.folder = Path(folder)
        self.source_id = source_id
        self.segment_seconds = float(segment_seconds)
        self.keep = keep
        self.segments: list[Path] = []
        """Finished segment files, oldest first."""
        self._template = None
        self._current: _Mp4 | None = None
        self._copy = _Copier()
        self._lock = threading.Lock()

    def session(self, stream) -> None:
        with self._lock:
            self._finish()
            self._template = stream
            self._copy.reset()

    def packet(self, packet: av.Packet, wall_time: float) -> None:
        p = self._copy(packet, wall_time)
        if p is None:
            return
        with self._lock:
            if self._template is None:
                return
            current = self._current
            if current is not None and p.keyframe and current.elapsed(p) >= self.segment_seconds:
                self._finish()
                current = None
            if current is None:
                if not p.keyframe:
                    return  # a segment must start at a keyframe to play on its own
                self._current = current = _Mp4(self.folder / f"{self.source_id}-{utc_stamp(p.wall)}.mp4",
                                               self._template)
            current.add(p)

    def end_session(self) -> None:
        with self._lock:
            self._finish()
            self._template = None

    def close(self) -> None:
        self.end_session()

    def _finish(self) -> None:
        if self._current is None:
            return
        current, self._current = self._current, None
        current.close()
        if current.packets:
            self.segments.append(current.path)
            log.info("segment_written source=%s path=%s packets=%d", self.source_id, current.path, current.packets)
        if self.keep is not None:
            while len(self.segments) > self.keep:
                self.segments.pop(0).unlink(missing_ok=True)


@dataclass
class _Clip:
    name: str
    start: float
    end: float
    event_wall: float


class EventClipper:
    """Event clips of one stream from a pre-event buffer (see the module docstring)."""

    def __init__(self, folder: str | Path, source_id: str, pre: float, post: float, *, max_pending: int = 32):
        if pre < 0 or post < 0:
            raise ValueError(f"pre and post: expected seconds >= 0, got {pre!r}, {post!r}")
        self.folder = Path(folder)
        self.source_id = source_id
        self.pre, self.post = float(pre), float(post)
        self.max_pending = max_pending
        self.clips: list[Path] = []
        """Written clip files, in the order they were finished."""
        self._ring: deque[_Packet] = deque()
        self._pending: list[_Clip] = []
        self._template = None
        self._copy = _Copier()
        self._lock = threading.Lock()

    def trigger(self, wall_time: float, name: str = "event") -> None:
        """Ask for a clip around ``wall_time`` (a frame's ``capture_time``); thread-safe."""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "event"
        with self._lock:
            if len(self._pending) >= self.max_pending:
                log.warning("clip_skipped source=%s name=%s (too many pending clips)", self.source_id, safe)
                return
            self._pending.append(_Clip(safe, wall_time - self.pre, wall_time + self.post, wall_time))

    def session(self, stream) -> None:
        with self._lock:
            self._flush(force=True)
            self._ring.clear()
            self._template = stream
            self._copy.reset()

    def packet(self, packet: av.Packet, wall_time: float) -> None:
        p = self._copy(packet, wall_time)
        if p is None:
            return
        with self._lock:
            if self._template is None:
                return
            self._ring.append(p)
            self._flush(force=False)
            self._trim(p.wall)

    def end_session(self) -> None:
        with self._lock:
            self._flush(force=True)
            self._ring.clear()
            self._template = None

    def close(self) -> None:
        self.end_session()
        with self._lock:
            for clip in self._pending:
                log.warning("clip_lost source=%s name=%s (stream ended before any of it was received)",
                            self.source_id, clip.name)
            self._pending.clear()

    def _trim(self, now: float) -> None:
        """Drop packets no clip can need: keep from the last keyframe at or before the oldest start wanted."""
        horizon = min([now - self.pre] + [c.start for c in self._pending])
        keyframes = [i for i, p in enumerate(self._ring) if p.keyframe and p.wall <= horizon]
        if keyframes and keyframes[-1] > 0:
            for _ in range(keyframes[-1]):
                self._ring.popleft()

    def _flush(self, force: bool) -> None:
        if not self._pending or self._template is None or not self._ring:
            return
        newest = self._ring[-1].wall
        done = [c for c in self._pending if force or newest >= c.end]
        for clip in done:
            self._pending.remove(clip)
            self._write(clip)

    def _write(self, clip: _Clip) -> None:
        packets = list(self._ring)
        first = max((i for i, p in enumerate(packets) if p.keyframe and p.wall <= clip.start), default=None)
        if first is None:
            first = next((i for i, p in enumerate(packets) if p.keyframe), None)
        if first is None:
            return
        chosen = [p for p in packets[first:] if p.wall <= clip.end]
        path = self.folder / f"{self.source_id}-{utc_stamp(clip.event_wall)}-{clip.name}.mp4"
        mp4 = _Mp4(path, self._template)
        try:
            for p in chosen:
                mp4.add(p)
        finally:
            mp4.close()
        if mp4.packets:
            self.clips.append(path)
            log.info("clip_written source=%s path=%s from=%.2fs to=%.2fs", self.source_id, path,
                     chosen[0].wall - clip.event_wall, chosen[-1].wall - clip.event_wall)


RECORDING_TIME_BASE = Fraction(1, 90000)


class RollingVideoSink:
    """The annotated video of an endless stream as MP4 files of ``seconds`` of stream time each
    (``<folder>/<id>-<UTC time>.mp4``), and a new file when the picture size changes: one growing MP4 would keep
    its whole index in memory and be unplayable until closed. ``make_sink(path)`` opens one file's sink (a
    :class:`~streamseg.sinks.VideoSink`).

    Frames go to that sink with pts taken from ``Frame.time`` (1/90000 s): a camera's pts restart at every
    reconnect, while a video needs times that keep increasing.
    """

    def __init__(self, folder: Path, source_id: str, seconds: float, make_sink: Callable[[Path], object]):
        self.folder, self.source_id, self.seconds, self.make_sink = Path(folder), source_id, seconds, make_sink
        self.folder.mkdir(parents=True, exist_ok=True)
        self.files: list[Path] = []
        self._sink = None
        self._start: float = 0.0
        self._size: tuple[int, int] | None = None

    def write(self, result) -> None:
        frame = result.frame
        size = (frame.width, frame.height)
        if self._sink is not None and (frame.time - self._start >= self.seconds or size != self._size):
            self.close()
        if self._sink is None:
            path = self.folder / f"{self.source_id}-{utc_stamp(frame.capture_time)}.mp4"
            if path in self.files:
                path = path.with_name(f"{path.stem}-{len(self.files)}.mp4")
            self._sink, self._start, self._size = self.make_sink(path), frame.time, size
            self.files.append(path)
        timed = replace(frame, pts=round(frame.time / RECORDING_TIME_BASE), time_base=RECORDING_TIME_BASE)
        self._sink.write(replace(result, frame=timed))

    def close(self) -> None:
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.close()

    def __enter__(self) -> "RollingVideoSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
