"""Annotated video output: H.264 in MP4 through PyAV, keeping the source's own timestamps.

Timing contract:
- frames with ``pts`` and ``time_base``: output pts = ``frame.pts - first.pts`` in the first frame's time base
  (frames in another time base are rescaled exactly), so variable-frame-rate sources keep their irregular times;
  with ``time_origin=(pts, time_base)`` (the stream's first frame, for a sink that writes a later part of the stream:
  a cluster's chunk), ``frame.pts - pts`` in that time base, so parts joined by stream copy time like one sink's file;
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

A full disk leaves a playable file with the frames that fit. FFmpeg cannot recover from a failed write (it never
writes the index, and an MP4 without its index does not play), so the sink holds room back for the index in a
spare file on the same file system. The first write that finds the disk full gives the spare up and completes in
its room; no frame is added after it, the file is finished at once (before other outputs take the room), and
``write`` raises :class:`~streamseg.errors.OutputError` saying how many frames the file holds. Under a file-size
limit of the process (``ulimit -f``) frames stop early enough for the index to fit as well. A file that cannot be
finished (a write error no room cures) is removed, and the error says so. Encoder options are checked when the sink is made, before any file is created.
"""

from __future__ import annotations

import errno
import os
import resource
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from streamseg.checks import bad, choice, integer, text
from streamseg.errors import ConfigError, output_error
from streamseg.sinks.annotate import Annotator
from streamseg.sinks.base import Sink
from streamseg.types import Frame, FrameResult, SourceInfo

__all__ = ["VideoSink"]

X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")
X264_CODECS = ("libx264", "libx265")
"""Encoders that take :data:`X264_PRESETS` and a crf of 0..51 (the 8-bit scale: yuv420p is what is written; 0 is
lossless for libx264, 51 the worst quality)."""
BUFFER = 32768
"""Bytes FFmpeg collects before it writes them to the file."""
SPARE_BYTES = 4 * BUFFER
"""Room held back for the end of the file: the write that found the disk full, FFmpeg's buffer, the index's fixed
part (about 1 KB)."""
SPARE_PER_FRAME = 16
"""Index bytes per frame held back on top (sample size, chunk offset, sync and time entries; about 5 measured)."""


class VideoSink(Sink):
    """Writes annotated frames to an H.264 MP4 (yuv420p) at ``path``.

    The container is opened here, so an unwritable path fails before the first frame; the video stream is
    added at the first frame, whose size and time base define the output. Pass ``annotator=None`` for the
    default :class:`Annotator`; ``Annotator(masks=False, boxes=False, labels=False)`` writes frames as they are.
    ``time_origin`` puts a part of a stream on the whole stream's clock (see the timing contract above).
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
        time_origin: tuple[int, Fraction] | None = None,
    ):
        check_encoder(codec, preset, crf)
        self.path = Path(path)
        self.info = info
        self.annotator = Annotator() if annotator is None else annotator
        default_fps = Fraction(default_fps).limit_denominator(1001 * 1000)
        if default_fps <= 0:
            raise ValueError(f"default_fps: expected > 0, got {default_fps}")
        self.fps = Fraction(info.fps) if info.fps else default_fps
        """Stream rate written to the container (``info.fps``, else ``default_fps``)."""
        self._codec = codec
        self._options = _encoder_options(preset, crf)
        # (pts, time base) at output pts 0: time_origin, else the first frame's; None for frames without pts
        self._origin = None if time_origin is None else (int(time_origin[0]), Fraction(time_origin[1]))
        self._origin_time = 0.0  # Frame.time of the origin
        options = {"movflags": "+faststart"}
        if time_origin is not None:
            # A part that starts later than 0 begins with an empty edit, whose length is written in the movie
            # timescale (1000 by default: rounded to the millisecond, the part would move when joined). In the
            # track's own timescale it is exact.
            options["movie_timescale"] = str(mp4_timescale(self._origin[1]))
        self._out = _Output(self.path, max(info.frame_count or 0, 1024))
        self._container = av.open(self._out, mode="w", format="mp4", options=options,
                                  buffer_size=BUFFER, io_open=self._reopen)
        self._stream = None
        self._size: tuple[int, int] | None = None  # (H, W) of the first frame, before even-padding
        self._time_base: Fraction | None = None
        self._first: Frame | None = None
        self._pending: tuple[np.ndarray, int] | None = None  # (image, pts) waiting for its duration
        self._last_pts: int | None = None
        self._last_delta: int | None = None
        self._durations: dict[int, int] = {}  # pts -> duration of frames inside the encoder
        self.frames_written = 0
        """Frames accepted by ``write``; all of them are in the file once ``close`` returns (on a full disk: those
        that fit, ``frames_in_file``)."""
        self.frames_in_file = 0
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
        self._out.hold(self.frames_written)
        if self._out.full is not None or self._out.failed is not None:
            self._finish()
            kept = self.frames_in_file
            raise output_error(self.path, self._out.full, f"; the video holds the {kept} frames that fit" if kept
                               else "; no frame fit, the video was removed")

    def close(self) -> None:
        """Encode the held frame, flush the encoder and finish the file; safe to call again or after errors."""
        if not self._closed:
            self._finish()

    def _finish(self) -> None:
        """Finish the file: with the frames the encoder still holds while there is room, then the index, in the
        room held back for it. A file that holds no frame, or cannot be finished, is removed (the latter raises)."""
        self._closed = True
        try:
            if self._out.writing and self._pending is not None:
                self._encode(*self._pending, duration=self._last_duration())
            if self._out.writing and self._stream is not None:
                self._mux(self._stream.encode(None))
        finally:
            self._pending = None
            self._out.release()
            try:
                self._container.close()
            except (OSError, av.FFmpegError) as err:
                self._out.failed = self._out.failed or err
            self._out.close()
            if self.frames_in_file == 0 or self._out.failed is not None:  # no frame, or no index: unplayable
                self.path.unlink(missing_ok=True)
        if self._out.failed is not None:
            raise output_error(self.path, self._out.failed, "; the video could not be finished and was removed") \
                from self._out.failed

    def _open_stream(self, frame: Frame) -> None:
        height, width = frame.image.shape[:2]
        self._size = (height, width)
        self._first = frame
        if self._origin is None and frame.pts is not None and frame.time_base:
            self._origin, self._origin_time = (frame.pts, Fraction(frame.time_base)), frame.time
        self._time_base = self._origin[1] if self._origin else 1 / self.fps
        stream = self._container.add_stream(self._codec, rate=self.fps)
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = self._time_base
        stream.time_base = self._time_base
        stream.options = dict(self._options)
        self._stream = stream

    def _pts(self, frame: Frame) -> int:
        if self._origin is None:
            return frame.index - self._first.index
        pts, time_base = self._origin
        if frame.pts is not None and frame.time_base:
            seconds = frame.pts * Fraction(frame.time_base) - pts * time_base
        else:  # a frame without pts in a timed stream: fall back to its float time
            seconds = Fraction(frame.time - self._origin_time)
        return round(seconds / self._time_base)

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
            if self._out.writing and not self._out.fits(packet.size):
                self._out.full = OSError(errno.EFBIG, os.strerror(errno.EFBIG))
            if not self._out.writing:
                continue  # no room: the frames after the first one that did not fit are left out
            # libx264 does not carry frame durations to packets; MP4 needs them for the last sample's length.
            packet.duration = self._durations.pop(packet.pts, 0)
            self._container.mux(packet)
            self.frames_in_file += 1

    def _reopen(self, url: str, flags: int, options: dict):
        """The file read back by FFmpeg's second pass, which moves the index to the front (``+faststart``)."""
        return open(self.path, "rb")


def mp4_timescale(time_base: Fraction) -> int:
    """The track timescale FFmpeg's MP4 muxer gives a video stream in ``time_base``: its denominator, doubled until
    it is at least 10000."""
    scale = Fraction(time_base).denominator
    while scale < 10000:
        scale *= 2
    return scale


def check_encoder_options(codec: str, preset: str, crf: int) -> None:
    """``sinks.codec``, ``preset`` and ``crf`` by type and range, without FFmpeg: libx264 takes a crf of 99 and
    silently clamps it to 51, so the range is checked here rather than left to the encoder."""
    text("sinks.codec", codec)
    if codec in X264_CODECS:
        choice("sinks.preset", preset, X264_PRESETS)
        integer("sinks.crf", crf, 0, 51)
    else:  # other encoders have their own presets and scales (libvpx-vp9: crf 0..63): the encoder judges
        text("sinks.preset", preset)
        integer("sinks.crf", crf, 0)


def _encoder_options(preset: str, crf: int) -> dict[str, str]:
    return {"preset": preset, "crf": str(crf), "bf": "0"}


def check_encoder(codec: str, preset: str, crf: int) -> None:
    """:func:`check_encoder_options`, then open the encoder once on a tiny picture: a codec this FFmpeg lacks or
    an option it rejects fails here, before any output exists (and, from the pipeline config, before the model
    loads)."""
    check_encoder_options(codec, preset, crf)
    try:
        context = av.CodecContext.create(codec, "w")
    except ValueError as err:  # UnknownCodecError
        raise bad("sinks.codec", "an encoder this FFmpeg has (such as libx264)", codec) from err
    context.width, context.height, context.pix_fmt, context.time_base = 64, 64, "yuv420p", Fraction(1, 25)
    context.options = _encoder_options(preset, crf)
    try:
        context.open()
    except av.FFmpegError as err:
        raise ConfigError(f"sinks: the {codec} encoder rejects preset {preset!r} with crf {crf} "
                          f"({err.strerror})") from err


class _Output:
    """The MP4's bytes on their way to ``path`` (a file object for PyAV), with room held back for the file's end.

    Errors are never raised to FFmpeg, which could not finish the file after one: ``full`` is set when the disk
    fills (the write completes in the spare's room) or the spare cannot grow, ``failed`` on any other write error
    (later bytes are dropped: the file is lost). ``fits`` keeps the file under the process's file-size limit, which
    no spare can lift.
    """

    def __init__(self, path: Path, frames: int):
        self.full: OSError | None = None
        self.failed: BaseException | None = None
        self._end = 0
        self._spare = None
        self._spare_size = 0
        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        self._limit = None if soft == resource.RLIM_INFINITY else soft
        try:
            self._file = open(path, "wb", buffering=0)
        except OSError as err:
            raise output_error(path, err) from err
        try:
            self._spare = tempfile.TemporaryFile(dir=path.parent)  # unnamed where the OS can: gone with the process
            self.hold(frames)
        except OSError as err:
            self.failed = err
        if not self.writing:
            self.close()
            path.unlink(missing_ok=True)
            raise output_error(path, self.full or self.failed)

    def hold(self, frames: int) -> None:
        """Hold room for the end of a file of at least ``frames`` frames; grows in doublings, sets ``full`` when
        it cannot (the disk has no more room)."""
        if self._spare is None or SPARE_BYTES + SPARE_PER_FRAME * frames <= self._spare_size:
            return
        size = SPARE_BYTES + SPARE_PER_FRAME * 2 * frames
        try:
            os.posix_fallocate(self._spare.fileno(), 0, size)
        except OSError as err:
            self.full = err
            return
        self._spare_size = size

    @property
    def writing(self) -> bool:
        """Whether frames may still be added."""
        return self.full is None and self.failed is None

    def fits(self, size: int) -> bool:
        """Whether ``size`` more bytes leave room for the file's end under the file-size limit."""
        return self._limit is None or self._end + BUFFER + size + self._spare_size <= self._limit

    def write(self, data) -> int:
        view = memoryview(data)
        while view and self.failed is None:
            try:
                view = view[self._file.write(view):]  # one system call may write part of it
            except OSError as err:
                if err.errno in (errno.ENOSPC, errno.EDQUOT) and self._spare is not None:
                    self.full = self.full or err
                    self.release()  # the rest of this write, and the index, go into the spare's room
                else:
                    self.failed = err
        self._end = max(self._end, self._file.tell())
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def release(self) -> None:
        """Give the held room back to the file system (for the file's end)."""
        if self._spare is not None:
            self._spare.close()
            self._spare = None

    def close(self) -> None:
        self.release()
        self._file.close()
