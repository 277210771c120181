"""Annotated video output: H.264 in MP4 through PyAV, keeping the source's own timestamps.

Timing contract:
- frames with ``pts`` and ``time_base``: output pts = ``frame.pts - first.pts`` in the first frame's time base
  (frames in another time base are rescaled exactly), so variable-frame-rate sources keep their irregular times;
- frames without pts (image sequences): frame ``i`` is shown at ``(i - first index) / fps``, where fps is
  ``info.fps`` or ``default_fps``;
- each frame lasts until the next one; the last lasts ``1 / info.fps`` (when unknown: as long as the one before,
  or ``1 / default_fps`` for a single frame), so the output's duration matches the input's;
- timestamps that do not increase (a broken source) are bumped by one tick: MP4 needs strictly increasing times.

B-frames are off: with B-frames the encoder derives decode times by reordering, and on VFR input the MP4 track
duration (summed from decode times) comes out short. Frames encode one write late, because a frame's duration
is known only when the next frame arrives.

Size: the first frame's size, padded by edge replication to even width and height (yuv420p needs both even);
later frames of another size (image folders) are resized to the first frame's size, aspect ratio not kept.

A run with zero frames leaves NO file: an MP4 without a video stream is not playable.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from streamseg.sinks.annotate import Annotator
from streamseg.sinks.base import Sink
from streamseg.types import Frame, FrameResult, SourceInfo

__all__ = ["VideoSink"]


class VideoSink(Sink):
    """Writes annotated frames to an H.264 MP4 (yuv420p) at ``path``.

    The container is opened here, so an unwritable path fails before the first frame; the video stream is
    added at the first frame, whose size and time base define the output. Pass ``annotator=None`` for the
    default :class:`Annotator`; ``Annotator(masks=False, boxes=False, labels=False)`` writes frames as they are.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        info: SourceInfo,
        *,
        codec: str = "libx264",
        preset: str = "veryfast",
        crf: int = 23,
        annotator: Annotator | None = None,
        default_fps: Fraction | float = 25,
    ):
        if not 0 <= int(crf) <= 51:
            raise ValueError(f"crf: expected an integer in [0, 51], got {crf}")
        self.path = Path(path)
        self.info = info
        self.annotator = Annotator() if annotator is None else annotator
        default_fps = Fraction(default_fps).limit_denominator(1001 * 1000)
        if default_fps <= 0:
            raise ValueError(f"default_fps: expected > 0, got {default_fps}")
        self.fps = Fraction(info.fps) if info.fps else default_fps
        """Stream rate written to the container (``info.fps``, else ``default_fps``)."""
        self._codec = codec
        self._options = {"preset": str(preset), "crf": str(int(crf)), "bf": "0"}
        self._container = av.open(str(self.path), mode="w", format="mp4", options={"movflags": "+faststart"})
        self._stream = None
        self._size: tuple[int, int] | None = None  # (H, W) of the first frame, before even-padding
        self._time_base: Fraction | None = None
        self._first: Frame | None = None
        self._pending: tuple[np.ndarray, int] | None = None  # (image, pts) waiting for its duration
        self._last_pts: int | None = None
        self._last_delta: int | None = None
        self._durations: dict[int, int] = {}  # pts -> duration of frames inside the encoder
        self.frames_written = 0
        """Frames accepted by ``write``; all of them are in the file once ``close`` returns."""
        self._closed = False

    def write(self, result: FrameResult) -> None:
        if self._closed:
            raise ValueError(f"write to closed VideoSink({self.path})")
        frame = result.frame
        if self._stream is None:
            self._open_stream(frame)
        image = self._fit(self.annotator.annotate(frame.image.copy(), result.detections))
        pts = self._pts(frame)
        if self._last_pts is not None and pts <= self._last_pts:
            pts = self._last_pts + 1
        if self._pending is not None:
            self._last_delta = pts - self._pending[1]
            self._encode(*self._pending, duration=self._last_delta)
        self._pending = (image, pts)
        self._last_pts = pts
        self.frames_written += 1

    def close(self) -> None:
        """Encode the held frame, flush the encoder and finish the file; safe to call again or after errors."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._pending is not None:
                self._encode(*self._pending, duration=self._last_duration())
                self._pending = None
            if self._stream is not None:
                self._mux(self._stream.encode(None))
        finally:
            self._container.close()
            if self.frames_written == 0:  # header never written: an empty, unplayable file
                self.path.unlink(missing_ok=True)

    def _open_stream(self, frame: Frame) -> None:
        height, width = frame.image.shape[:2]
        self._size = (height, width)
        self._first = frame
        if frame.pts is not None and frame.time_base:
            self._time_base = Fraction(frame.time_base)
        else:
            self._time_base = 1 / self.fps
        stream = self._container.add_stream(self._codec, rate=self.fps)
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = self._time_base
        stream.time_base = self._time_base
        stream.options = dict(self._options)
        self._stream = stream

    def _pts(self, frame: Frame) -> int:
        first, tb = self._first, self._time_base
        if first.pts is None or not first.time_base:
            return frame.index - first.index
        if frame.pts is not None and frame.time_base:
            seconds = frame.pts * Fraction(frame.time_base) - first.pts * Fraction(first.time_base)
        else:  # a frame without pts in a timed stream: fall back to its float time
            seconds = Fraction(frame.time - first.time)
        return round(seconds / tb)

    def _last_duration(self) -> int:
        if self.info.fps or self._last_delta is None:
            return max(1, round(1 / (self.fps * self._time_base)))
        return self._last_delta

    def _fit(self, image: np.ndarray) -> np.ndarray:
        height, width = self._size
        if image.shape[:2] != (height, width):
            shrink = image.shape[0] * image.shape[1] > height * width
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        if height % 2 or width % 2:
            image = cv2.copyMakeBorder(image, 0, height % 2, 0, width % 2, cv2.BORDER_REPLICATE)
        return image

    def _encode(self, image: np.ndarray, pts: int, *, duration: int) -> None:
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = pts
        frame.time_base = self._time_base
        self._durations[pts] = max(1, duration)
        self._mux(self._stream.encode(frame))

    def _mux(self, packets) -> None:
        for packet in packets:
            # libx264 does not carry frame durations to packets; MP4 needs them for the last sample's length.
            packet.duration = self._durations.pop(packet.pts, 0)
            self._container.mux(packet)
