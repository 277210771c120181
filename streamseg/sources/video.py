"""Video files through PyAV (anything the bundled FFmpeg reads): upright RGB frames with their own timestamps."""

from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np
from av.stream import Discard, Disposition

from streamseg.errors import ConfigError, SourceError
from streamseg.sources.base import Source, StreamClock
from streamseg.types import Frame, SourceInfo

LOOKAHEAD = 8
"""Frames decoded by open(): enough to learn the rotation and to see whether the container's pts run in order."""


def clockwise(frame: av.VideoFrame) -> int:
    """Degrees (0, 90, 180, 270) to turn ``frame`` clockwise to show it upright.

    PyAV reports the display matrix as a counterclockwise angle (FFmpeg's ``av_display_rotation_get``); FFmpeg's
    own player and CLI turn the picture by its negation, and so do we. Mirroring in the matrix is ignored.
    """
    return -round(frame.rotation / 90) * 90 % 360


def upright(image: np.ndarray, degrees_clockwise: int) -> np.ndarray:
    """``image`` turned clockwise by a multiple of 90 degrees, as a C-contiguous array."""
    return np.ascontiguousarray(np.rot90(image, k=-degrees_clockwise // 90))


def video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    """The first real video stream: cover art in audio files is a one-picture "video" stream and is skipped."""
    return next((s for s in container.streams.video if not s.disposition & Disposition.attached_pic), None)


def open_container(path: Path) -> av.container.InputContainer:
    """``av.open`` for a local file, with FFmpeg's and the OS's errors turned into one-line SourceErrors."""
    if not path.exists():
        raise SourceError(f"{path}: no such file")
    if not path.is_file():
        raise SourceError(f"{path}: not a file")
    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError) as err:
        raise SourceError(f"{path}: cannot read as media ({_reason(err)}); not a video, or damaged/truncated") from err


def _reason(err: BaseException) -> str:
    return " ".join(str(getattr(err, "strerror", None) or err).split())


class VideoFileSource(Source):
    """Frames of the first video stream of a media file; other streams are neither demuxed nor decoded.

    Each :class:`Frame` carries the picture upright (display-matrix rotation applied) as ``(H, W, 3)`` uint8 RGB,
    its ``index`` among decoded frames, and its own ``pts``/``time_base``: variable frame rates are kept, and
    ``time = (pts - first pts) * time_base``. ``pts`` is the container's presentation timestamp, or the decode
    timestamp where the container's pts run out of order (AVI with B-frames), or None where neither is usable
    (time then comes from the index and the average rate).

    ``stride`` keeps every k-th decoded frame; ``target_fps`` then keeps frames by their times so the output runs
    at about that rate (works for variable frame rates); ``max_frames`` caps the frames yielded.

    ``open()`` decodes the first few frames: PyAV shows the display matrix only on decoded frames, and they tell
    whether the pts can be trusted. ``info.frame_count`` is exact where the container indexes its frames (mp4,
    avi), estimated from duration x rate otherwise (mkv), None when neither is known (webm from a recorder).

    Iteration ends with a :class:`SourceError` saying "truncated" when decoding hit corrupt data or the stream
    ended clearly before the frame count or duration the container declares, after every frame that did decode
    has been yielded, so downstream stages can finish what they received.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        source_id: str | None = None,
        stride: int = 1,
        target_fps: float | None = None,
        max_frames: int | None = None,
    ):
        self.path = Path(path)
        super().__init__(source_id or self.path.stem, stride=stride, max_frames=max_frames)
        if target_fps is not None and (isinstance(target_fps, bool) or not target_fps > 0):
            raise ConfigError(f"target_fps must be None or a number > 0, got {target_fps!r}")
        self.target_fps = target_fps
        self._container: av.container.InputContainer | None = None
        self._decoded: Iterator[av.VideoFrame] | None = None
        self._head: list[av.VideoFrame] = []
        self._error: BaseException | None = None

    def _open(self) -> SourceInfo:
        self._container = container = open_container(self.path)
        stream = video_stream(container)
        if stream is None:
            kinds = ", ".join(s.type for s in container.streams) or "none"
            raise SourceError(f"{self.path}: no video stream (streams: {kinds})")
        for other in container.streams:
            if other is not stream:
                other.discard = Discard.all  # the demuxer skips their packets: a broken audio track cannot stop us
        self._stream, self._error = stream, None
        self._decoded = self._decode()
        self._head = [frame for _, frame in zip(range(LOOKAHEAD), self._decoded)]
        if not self._head:
            detail = f" ({_reason(self._error)})" if self._error else ""
            raise SourceError(f"{self.path}: no video frame could be decoded{detail}")

        # Timestamps: the container's pts if they increase, else the decode timestamps (AVI stores no pts).
        self._clock = next((a for a in ("pts", "dts") if _increasing([getattr(f, a) for f in self._head])), None)
        self._rate, duration, self._expected = _declared(container, stream)
        fps, count = self._output_rate(self._expected)
        turn = clockwise(self._head[0])
        width, height = self._head[0].width, self._head[0].height
        return SourceInfo(
            source_id=self.source_id,
            uri=str(self.path),
            width=height if turn % 180 else width,
            height=width if turn % 180 else height,
            fps=fps,
            time_base=stream.time_base,
            frame_count=count,
            duration=duration,
            rotation=turn,
            codec=stream.codec_context.name,
            container=container.format.name,
        )

    def _output_rate(self, expected: int | None) -> tuple[Fraction | None, int | None]:
        """Frame rate and frame count after stride, target_fps and max_frames (a target_fps count is estimated)."""
        fps = self._rate / self.stride if self._rate else None
        count = -(-expected // self.stride) if expected else None
        if self.target_fps is not None:
            target = Fraction(self.target_fps).limit_denominator(1_000_000)
            if fps is None or target < fps:
                count = -(-count * target // fps) if count and fps else None
                fps = target
        if count is not None and self.max_frames is not None:
            count = min(count, self.max_frames)
        return fps, count

    def _decode(self) -> Iterator[av.VideoFrame]:
        """Decoded frames of the video stream. A read or decode error is remembered, not raised, so the frames
        before it (and those the decoder still holds) reach the caller first."""
        packets = self._container.demux(self._stream)
        try:
            while True:
                try:
                    packet = next(packets)
                except StopIteration:
                    return  # demux ends with empty packets that already flushed the decoder
                except av.FFmpegError as err:
                    self._error = err
                    break
                try:
                    frames = packet.decode()
                except av.FFmpegError as err:
                    self._error = err  # skip the bad packet; a truncated file ends right after it anyway
                    continue
                yield from frames
        finally:
            packets.close()
        try:
            yield from self._stream.codec_context.decode(None)
        except av.FFmpegError:
            pass

    def _all_decoded(self) -> Iterator[av.VideoFrame]:
        while self._head:
            yield self._head.pop(0)
        yield from self._decoded

    def _frames(self) -> Iterator[Frame]:
        keep = _Keep(self.stride, self.target_fps)
        tb, decoded, yielded, last_ts = self._stream.time_base, 0, 0, None
        step = round(1 / (self._rate * tb)) if self._rate else None  # one frame in time_base units
        clock = StreamClock(tb, self._rate or 1)  # no rate known: one second a frame
        for frame in self._all_decoded():
            index, decoded = decoded, decoded + 1
            ts = getattr(frame, self._clock) if self._clock else None
            if ts is None and last_ts is not None and (frame.duration or step):
                ts = last_ts + (frame.duration or step)  # frames flushed from the decoder at the end carry no dts
            last_ts = ts
            seconds = clock(ts, frame.duration)
            if not keep(index, seconds):
                continue
            image = upright(frame.to_ndarray(format="rgb24"), clockwise(frame))
            yield Frame(image, self.source_id, index, seconds, ts, tb if ts is not None else None, time.time())
            yielded += 1
            if self.max_frames is not None and yielded >= self.max_frames:
                return
        short = self._expected is not None and decoded < self._expected - max(2, self._expected // 50)
        if self._error is not None or short:
            about = f" of about {self._expected}" if self._expected else ""
            detail = f" ({_reason(self._error)})" if self._error else ""
            raise SourceError(f"{self.path}: video is truncated or damaged: decoded {decoded}{about} frames{detail}")

    def _release(self) -> None:
        self._head = []
        if self._decoded is not None:
            self._decoded.close()
            self._decoded = None
        if self._container is not None:
            self._container.close()
            self._container = None


def _declared(container, stream) -> tuple[Fraction | None, float | None, int | None]:
    """Average frame rate, duration (s) and frame count as the container declares them; the count is exact where
    the container indexes its frames (mp4, avi), else estimated as duration x rate, else None (live-made webm)."""
    rate = stream.average_rate or stream.guessed_rate or None
    if stream.duration:
        duration = float(stream.duration * stream.time_base)
    else:
        duration = container.duration / av.time_base if container.duration else None
    estimate = round(duration * rate) if duration and rate else None
    if stream.frames:
        if estimate and container.format.name.startswith("mov"):
            # An MP4 edit list that trims frames (clips cut by copy) leaves the header counting every sample while
            # the stream's duration is the edited one: decoding yields the smaller number. (Elsewhere a short
            # duration means a cut file, whose header count is what was lost.)
            return rate, duration, min(stream.frames, estimate)
        return rate, duration, stream.frames
    return rate, duration, estimate


def _increasing(values: list) -> bool:
    return None not in values and all(a < b for a, b in zip(values, values[1:]))


class _Keep:
    """Which decoded frames to yield: every ``stride``-th one, then at most one per ``1/target_fps`` seconds.

    Slots advance on a fixed schedule (not from the last kept frame), so the long-run rate is the target even
    when frame times jitter; a frame up to a tenth of a slot early still counts, and gaps skip empty slots.
    """

    def __init__(self, stride: int, target_fps: float | None):
        self.stride = stride
        self.period = 1.0 / target_fps if target_fps else None
        self.next_time: float | None = None

    def __call__(self, index: int, seconds: float) -> bool:
        if index % self.stride:
            return False
        if self.period is None:
            return True
        if self.next_time is None:
            self.next_time = seconds
        elif seconds < self.next_time - 0.1 * self.period:
            return False
        while self.next_time <= seconds + 0.1 * self.period:
            self.next_time += self.period
        return True
