"""Video files cut into keyframe-aligned chunks that workers decode on their own, with exactly the frames, indices
and times of one :class:`~streamseg.sources.video.VideoFileSource` pass; and the chunks' videos joined again.

Chunk ``k`` holds the frames whose pts lie in ``[start_pts, end_pts)``, ``start_pts`` being a keyframe's. Its
decoder starts one keyframe earlier (``seek_pts``) and runs on past ``end_pts`` until a frame at or after it
comes out, for two reasons:

- the last frames of a chunk in display order can be B-frames that follow the next keyframe in decode order
  (open GOP): they are decoded from it and from frames of this chunk;
- a keyframe does not always restart decoding: x264's open-GOP keyframes are non-IDR I-frames whose recovery
  point makes every frame from them on decodable, but with periodic intra refresh (low-latency cameras) the
  flagged frames only start a refresh wave, and the decoder gives no frame until the wave is complete. x264's
  wave lasts one keyframe interval, so one keyframe early suffices.
"""

from __future__ import annotations

import bisect
import os
import secrets
import time
from contextlib import ExitStack
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import av
from av.stream import Discard

from streamseg.errors import ConfigError, SourceError
from streamseg.sinks.video import mp4_timescale
from streamseg.sources.video import VideoFileSource, _reason, clockwise, open_container, upright, video_stream
from streamseg.types import Frame, SourceInfo

__all__ = ["Chunk", "ChunkPlan", "ChunkSource", "join_videos", "plan_chunks"]


@dataclass(frozen=True)
class Chunk:
    """One chunk of a :class:`ChunkPlan`: its frames are those with pts in ``[start_pts, end_pts)``."""

    number: int
    """0-based position in :attr:`ChunkPlan.chunks`."""
    first_index: int
    """Global index (display order) of the chunk's first frame: the frames with a pts below ``start_pts``."""
    frames: int
    """Frames decoded in the chunk, before stride and max_frames."""
    start_pts: int | None
    """A keyframe's pts, or the file's first frame's timestamp for chunk 0 (None where it has none)."""
    end_pts: int | None
    """The next chunk's ``start_pts``; None for the last chunk."""
    seek_pts: int | None
    """The keyframe decoding starts at (the one before ``start_pts``); None: the start of the file."""


@dataclass(frozen=True)
class ChunkPlan:
    """How a file is cut (plain data: it is sent to the workers). One chunk covering the whole file is decoded
    by :class:`VideoFileSource` itself; ``reason`` says why the file could not be cut (None: it could)."""

    path: Path
    chunks: tuple[Chunk, ...]
    origin_pts: int | None
    """Timestamp of the file's first frame, where its time is 0 (None where the file has no timestamps)."""
    time_base: Fraction
    frames: int
    """Frames in the file (its video packets; fewer if they cannot all be read), before stride and max_frames."""
    stride: int
    target_fps: float | None
    max_frames: int | None
    reason: str | None = None

    @property
    def time_origin(self) -> tuple[int, Fraction] | None:
        """``time_origin`` for each chunk's :class:`~streamseg.sinks.video.VideoSink`."""
        return None if self.origin_pts is None else (self.origin_pts, self.time_base)


def plan_chunks(
    path: str | os.PathLike,
    chunk_seconds: float,
    *,
    stride: int = 1,
    target_fps: float | None = None,
    max_frames: int | None = None,
) -> ChunkPlan:
    """Cut ``path`` at the first keyframe at or after each ``chunk_seconds`` from the previous cut.

    Keyframes come from the packets, without decoding. The file stays one chunk where chunks could not give the
    frames and times of one pass: ``target_fps`` (it keeps frames by the times of those kept before), timestamps
    VideoFileSource does not use (it times AVI with B-frames by decode order), packets without pts or with equal
    pts, timestamps that jump back (one keyframe's pts below an earlier one's), and a decoder whose first frame is
    not the first packet's. Chunks without a frame that ``stride`` and ``max_frames`` keep are left out.
    Unreadable files raise VideoFileSource's :class:`SourceError`.
    """
    if isinstance(chunk_seconds, bool) or not isinstance(chunk_seconds, (int, float)) or not chunk_seconds > 0:
        raise ConfigError(f"chunk_seconds must be a number > 0, got {chunk_seconds!r}")
    path = Path(path)
    with VideoFileSource(path, stride=stride, target_fps=target_fps, max_frames=max_frames) as probe:
        clock = probe._clock  # what VideoFileSource times frames by, judged from its first decoded frames
        origin = next(iter(probe)).pts
    pts, keys, time_base = _packets(path)
    ordered = sorted(p for p in pts if p is not None)

    reason = None
    if target_fps is not None:
        reason = "target_fps keeps frames by the times of those kept before them"
    elif len(ordered) < len(pts):
        reason = "packets without pts"
    elif len(set(ordered)) < len(ordered):
        reason = "packets with equal pts"
    elif clock != "pts":
        reason = "its pts are out of order: frames are timed by decode order"
    elif any(a >= b for a, b in zip(keys, keys[1:])):
        reason = "its timestamps jump back (recordings joined into one file?)"
    elif origin != ordered[0]:
        reason = "its first packets decode to no frame"
    starts, seeks = [origin], [None]
    if reason is None:
        step, last = Fraction(chunk_seconds), Fraction(0)
        for before, key in zip(keys, keys[1:]):
            if (key - origin) * time_base >= last + step:
                starts.append(key)
                seeks.append(before)
                last = (key - origin) * time_base

    firsts = [0] + [bisect.bisect_left(ordered, start) for start in starts[1:]] + [len(pts)]
    limit = None if max_frames is None else max_frames * stride  # the index after the last kept frame
    chunks = []
    for start, end_pts, seek, first, end in zip(starts, starts[1:] + [None], seeks, firsts, firsts[1:]):
        kept = -(-first // stride) * stride  # the chunk's first index a stride keeps
        if kept < end and (limit is None or kept < limit):
            chunks.append(Chunk(len(chunks), first, end - first, start, end_pts, seek))
    return ChunkPlan(path, tuple(chunks), origin, time_base, len(pts), stride, target_fps, max_frames, reason)


def _packets(path: Path) -> tuple[list[int | None], list[int], Fraction]:
    """The pts of the video stream's packets in file order, the keyframes' among them, and the time base."""
    with open_container(path) as container:
        stream = video_stream(container)
        for other in container.streams:
            if other is not stream:
                other.discard = Discard.all
        pts, keys = [], []
        try:
            for packet in container.demux(stream):
                # skipped: demux's closing empty packet, and samples an MP4 edit list cuts (the decoder drops them)
                if packet.size and not packet.is_discard:
                    pts.append(packet.pts)
                    if packet.is_keyframe and packet.pts is not None:
                        keys.append(packet.pts)
        except av.FFmpegError:
            pass  # a truncated file: the last chunk ends where reading stopped, and reports the damage
        return pts, keys, stream.time_base


class ChunkSource(VideoFileSource):
    """The frames of one chunk of ``plan``, exactly as :class:`VideoFileSource` yields them from the whole file:
    same index, time, pts and pixels, ``stride`` and ``max_frames`` counted on global indices (both must be the
    plan's). ``info`` is the whole file's, as VideoFileSource gives it.

    Ends with a :class:`SourceError` saying "truncated or damaged", after the frames that decoded, where decoding
    failed, the chunk gave other frames than planned, or the last chunk ended clearly before the file's declared
    frame count.
    """

    def __init__(self, plan: ChunkPlan, chunk: Chunk, *, source_id: str | None = None, stride: int = 1,
                 max_frames: int | None = None):
        if (stride, max_frames) != (plan.stride, plan.max_frames):
            raise ConfigError(f"stride {stride} and max_frames {max_frames} differ from the chunk plan's "
                              f"({plan.stride}, {plan.max_frames})")
        super().__init__(plan.path, source_id=source_id, stride=stride, target_fps=plan.target_fps,
                         max_frames=max_frames)
        self.plan, self.chunk = plan, chunk

    def _open(self) -> SourceInfo:
        info = super()._open()  # decodes the file's first frames: they hold the rotation
        if self.chunk.seek_pts is not None:
            self._decoded.close()
            self._head = []
            try:
                self._container.seek(self.chunk.seek_pts, stream=self._stream)  # to that keyframe or one before
            except av.FFmpegError as err:
                raise SourceError(f"{self.path}: cannot seek to chunk {self.chunk.number} ({_reason(err)})") from err
            self._error = None
            self._decoded = self._decode()
        return info

    def _frames(self) -> Iterator[Frame]:
        if self.chunk.seek_pts is None and self.chunk.end_pts is None:
            return super()._frames()  # the whole file
        return self._chunk_frames()

    def _chunk_frames(self) -> Iterator[Frame]:
        chunk, origin, tb = self.chunk, self.plan.origin_pts, self._stream.time_base
        limit = None if self.max_frames is None else self.max_frames * self.stride
        index, last = chunk.first_index, None
        for frame in self._all_decoded():
            pts = frame.pts
            if pts is None or pts < chunk.start_pts:
                continue  # the chunk before's frames, decoded for their references (and none lacks a pts here)
            if chunk.end_pts is not None and pts >= chunk.end_pts:
                break
            if last is not None and pts <= last:
                raise SourceError(f"{self.path}: the decoder gave frames out of order in chunk {chunk.number} "
                                  f"(pts {pts} after {last})")
            last = pts
            if index % self.stride == 0:
                image = upright(frame.to_ndarray(format="rgb24"), clockwise(frame))
                yield Frame(image, self.source_id, index, float((pts - origin) * tb), pts, tb, time.time())
                if limit is not None and index + self.stride >= limit:
                    return  # the last frame max_frames keeps
            index += 1
        decoded, expected = index - chunk.first_index, self._expected
        short = chunk.end_pts is None and expected is not None and index < expected - max(2, expected // 50)
        if decoded != chunk.frames or self._error is not None or short:
            about = f" of about {expected}" if expected else ""
            detail = f" ({_reason(self._error)})" if self._error else ""
            raise SourceError(f"{self.path}: video is truncated or damaged: decoded {index}{about} frames, "
                              f"{decoded} of the {chunk.frames} of chunk {chunk.number}{detail}")


def join_videos(parts: Sequence[str | os.PathLike], output: str | os.PathLike) -> int:
    """Join chunk videos written by :class:`~streamseg.sinks.video.VideoSink` (with the stream's
    ``time_origin``, the same encoder settings) into one MP4 by stream copy; returns the frames written.

    The packets keep their times, so the result times frames like one sink over all of them. It is written
    next to ``output`` under a temporary name and renamed into place: ``output`` is never half-written.
    """
    if not parts:
        raise ValueError("join_videos: no parts to join")
    output = Path(output)
    temp = output.with_name(f".{output.name}.{secrets.token_hex(4)}.part")
    try:
        frames = _remux([Path(part) for part in parts], temp)
        os.replace(temp, output)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return frames


def _remux(parts: list[Path], output: Path) -> int:
    frames, last, wanted, stream = 0, None, None, None
    with ExitStack() as stack:
        for part in parts:
            with open_container(part) as source:
                video = video_stream(source)
                if video is None:
                    raise SourceError(f"{part}: no video stream")
                if stream is None:
                    wanted = _settings(video)
                    # the movie timescale places a first part that starts after 0 exactly (see VideoSink)
                    out = stack.enter_context(av.open(str(output), "w", format="mp4", options={
                        "movflags": "+faststart", "movie_timescale": str(mp4_timescale(video.time_base))}))
                    stream = out.add_stream_from_template(video)
                elif _settings(video) != wanted:
                    raise ValueError(f"{part}: encoded unlike {parts[0]} ({_settings(video)} against {wanted}): "
                                     f"cannot be joined by stream copy")
                for packet in source.demux(video):
                    if not packet.size:
                        continue  # demux's closing empty packet
                    if last is not None and packet.dts <= last:
                        raise ValueError(f"{part}: starts at {float(packet.dts * packet.time_base):.6f} s, before "
                                         f"the part before it ends: parts overlap or are out of order")
                    last = packet.dts
                    packet.stream = stream
                    out.mux(packet)
                    frames += 1
    return frames


def _settings(stream) -> tuple:
    """What stream copy needs to be the same in every part: codec, size, time base and the decoder's setup."""
    context = stream.codec_context
    return context.name, context.width, context.height, stream.time_base, bytes(context.extradata or b"")
