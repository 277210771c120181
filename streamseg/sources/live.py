"""Live streams through PyAV: RTSP cameras (TCP or UDP), HTTP/HLS URLs and webcams (v4l2), one source kind.

A reader thread per stream receives packets at the camera's pace and decodes them into a tiny drop-oldest buffer,
so whoever consumes frames always gets the freshest one and nothing queues up behind a slow model (latency cannot
creep); frames replaced before anyone took them are counted in :attr:`LiveSource.dropped`. When the stream fails
(read error, read timeout, end of stream) the source reports ``stream_down``, reconnects with exponential backoff
and jitter (:class:`Reconnect`) and reports ``stream_up`` once frames flow again; a new resolution after a
reconnect is reported on that event and simply shows in the frames' size. URLs are redacted (``streamseg.redact``)
in every message, event and id.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Callable, Iterator, Protocol, Sequence
from urllib.parse import urlsplit

import av
from av.stream import Discard

from streamseg.errors import ConfigError, SourceError
from streamseg.redact import redact, redact_url, secrets_of
from streamseg.sources.base import Source, StreamClock
from streamseg.sources.video import clockwise, upright
from streamseg.types import Frame, SourceInfo

log = logging.getLogger(__name__)

LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "srt", "udp", "tcp", "v4l2")
TRANSPORTS = ("tcp", "udp")
MAX_PTS_JUMP = 60.0
"""Seconds a stream's timestamps may leap forward between two frames before it counts as a clock reset."""


def is_live_input(uri: str) -> bool:
    """True for network stream URLs (rtsp://, http(s)://, ...), ``v4l2://`` and ``/dev/video*`` devices."""
    uri = str(uri)
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    return scheme in LIVE_SCHEMES or bool(re.fullmatch(r"/dev/video\d+", uri))


def live_source_id(uri: str) -> str:
    """A stable, credential-free name for a stream: the last path component (``rtsp://h/cam1`` -> ``cam1``), else
    the host and port; ``/dev/video0`` -> ``video0``."""
    uri = str(uri)
    if uri.startswith("/dev/"):
        return PurePosixPath(uri).name
    parts = urlsplit(uri)
    name = PurePosixPath(parts.path).stem if parts.path not in ("", "/") else ""
    if not name:
        name = f"{parts.hostname or 'stream'}" + (f"_{parts.port}" if parts.port else "")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "stream"


@dataclass(frozen=True)
class Reconnect:
    """When to try again after a stream failed: attempt ``k`` (1-based) waits
    ``min(maximum, initial * factor**(k-1))``, scaled by a random factor in ``[1 - jitter, 1 + jitter]`` so that
    many cameras behind one failed switch do not reconnect in lockstep. ``max_attempts`` failed attempts in a row
    end the source with a :class:`SourceError`; None retries forever (a camera left running for weeks)."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.2
    max_attempts: int | None = None

    def __post_init__(self):
        if not (self.initial > 0 and self.maximum >= self.initial and self.factor >= 1 and 0 <= self.jitter < 1):
            raise ConfigError(f"reconnect: need initial > 0, maximum >= initial, factor >= 1, 0 <= jitter < 1; "
                              f"got {self}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ConfigError(f"reconnect.max_attempts: expected None or >= 1, got {self.max_attempts}")

    def delay(self, attempt: int, rng: random.Random) -> float:
        base = min(self.maximum, self.initial * self.factor ** max(0, attempt - 1))
        return min(self.maximum * (1 + self.jitter), base * rng.uniform(1 - self.jitter, 1 + self.jitter))


@dataclass(frozen=True)
class StreamStatus:
    """A change of a live stream's state: ``stream_down`` (it failed; the reason is redacted), ``stream_up``
    (frames flow again after a (re)connect; ``width``/``height`` are the new picture size, ``resized`` says whether
    it differs from before) or ``stream_failed`` (``max_attempts`` reconnects in a row failed: given up)."""

    kind: str
    source_id: str
    wall_time: float
    reason: str = ""
    attempts: int = 0
    """Connection attempts this change took (``stream_up``) or the failed ones so far (``stream_down``)."""
    reconnects: int = 0
    """Successful reconnects of this source so far (the first connection is not one)."""
    width: int | None = None
    height: int | None = None
    resized: bool = False

    def record(self) -> dict:
        return {"schema": "streamseg.stream_events/1", "source": self.source_id, "kind": self.kind,
                "wall_time": round(self.wall_time, 6), "reason": self.reason, "attempts": self.attempts,
                "reconnects": self.reconnects, "width": self.width, "height": self.height, "resized": self.resized}


class PacketTap(Protocol):
    """Receives every compressed video packet in the reader thread (stream copy recording, event clips).
    ``session`` is called at each (re)connect with the new input stream, before its packets; ``end_session`` when
    that connection ends, while its stream is still valid (a tap finishes its files then)."""

    def session(self, stream: av.video.stream.VideoStream) -> None: ...

    def packet(self, packet: av.Packet, wall_time: float) -> None: ...

    def end_session(self) -> None: ...


@dataclass(frozen=True)
class _Decoded:
    """A decoded picture waiting in the buffer with what its :class:`Frame` will carry. It becomes RGB (turned
    upright by its display matrix, like a file's frames) only when taken: with a model slower than the camera most
    pictures are dropped unseen, and converting each would cost a few ms of CPU per 1080p picture for nothing."""

    picture: av.VideoFrame
    source_id: str
    index: int
    time: float
    pts: int | None
    time_base: object
    received: float

    def frame(self) -> Frame:
        image = upright(self.picture.to_ndarray(format="rgb24"), clockwise(self.picture))
        return Frame(image, self.source_id, self.index, self.time, self.pts, self.time_base, self.received)


class LatestFrames:
    """A bounded buffer that never blocks its producer: when full, the oldest frame is discarded and counted."""

    def __init__(self, capacity: int, wakeup: threading.Event | None = None):
        self._frames: deque[_Decoded] = deque()
        self._capacity = capacity
        self._changed = threading.Condition()
        self._ended = False
        self._wakeup = wakeup
        self.dropped = 0
        self.received = 0

    def put(self, frame: _Decoded) -> None:
        with self._changed:
            if len(self._frames) >= self._capacity:
                self._frames.popleft()
                self.dropped += 1
            self._frames.append(frame)
            self.received += 1
            self._changed.notify_all()
        if self._wakeup is not None:
            self._wakeup.set()

    def take(self, timeout: float | None = None) -> _Decoded | None:
        """The oldest buffered frame, waiting up to ``timeout`` (forever: None) for one; None on timeout or end."""
        with self._changed:
            if not self._frames and not self._ended:
                self._changed.wait_for(lambda: self._frames or self._ended, timeout)
            return self._frames.popleft() if self._frames else None

    def take_latest(self) -> _Decoded | None:
        """The newest frame without waiting; older buffered ones are dropped (and counted)."""
        with self._changed:
            if not self._frames:
                return None
            frame = self._frames.pop()
            self.dropped += len(self._frames)
            self._frames.clear()
            return frame

    def end(self) -> None:
        with self._changed:
            self._ended = True
            self._changed.notify_all()
        if self._wakeup is not None:
            self._wakeup.set()

    @property
    def ended(self) -> bool:
        with self._changed:
            return self._ended and not self._frames

    def depth(self) -> int:
        with self._changed:
            return len(self._frames)


class LiveSource(Source):
    """Frames of a live stream, freshest first, surviving disconnects.

    ``open()`` connects (up to ``connect_attempts`` tries with the backoff of ``reconnect``; then a one-line
    :class:`SourceError`), starts the reader thread and fills :attr:`info` (``is_live``). Iterating yields
    frames in arrival order from a buffer of ``buffer`` frames (drop-oldest); :meth:`take_latest` hands the newest
    frame to a consumer that multiplexes several streams. Each :class:`Frame` carries ``index`` (frames received
    since open, never reset by reconnects), ``time`` (seconds on the stream's clock, continued across reconnects
    by the wall-clock gap), the stream's own ``pts``/``time_base`` and ``capture_time`` (wall clock at receipt).

    ``transport``: RTSP over ``tcp`` (default) or ``udp``. ``connect_timeout`` / ``read_timeout`` (seconds):
    longest wait for a connection, and for data once connected (a silent camera counts as down after it).
    ``on_status(StreamStatus)`` is called from the reader thread for ``stream_down`` / ``stream_up``; ``taps``
    receive the compressed packets (recording). Iteration ends when the source is closed, ``max_frames`` were
    received, or the reconnect attempts ran out (then with a :class:`SourceError`).

    ``first_index`` / ``first_time``: the first frame's ``index`` and ``time`` (default 0): a camera whose process
    was restarted continues the numbering and the clock of its earlier outputs (:mod:`streamseg.cluster.cameras`).
    """

    def __init__(
        self,
        uri: str,
        *,
        source_id: str | None = None,
        transport: str = "tcp",
        connect_timeout: float = 5.0,
        read_timeout: float = 5.0,
        connect_attempts: int = 3,
        reconnect: Reconnect | None = None,
        buffer: int = 1,
        on_status: Callable[[StreamStatus], None] | None = None,
        taps: Sequence[PacketTap] = (),
        wakeup: threading.Event | None = None,
        stride: int = 1,
        max_frames: int | None = None,
        seed: int | None = None,
        first_index: int = 0,
        first_time: float = 0.0,
    ):
        self.uri = str(uri)
        self.secrets = secrets_of(self.uri)
        self.display_uri = redact_url(self.uri)
        super().__init__(source_id or live_source_id(self.uri), stride=stride, max_frames=max_frames)
        if transport not in TRANSPORTS:
            raise ConfigError(f"transport: expected one of {TRANSPORTS}, got {transport!r}")
        for name, value in (("connect_timeout", connect_timeout), ("read_timeout", read_timeout)):
            if isinstance(value, bool) or not value > 0:
                raise ConfigError(f"{name}: expected seconds > 0, got {value!r}")
        if not (isinstance(connect_attempts, int) and connect_attempts >= 1):
            raise ConfigError(f"connect_attempts: expected an integer >= 1, got {connect_attempts!r}")
        if not (isinstance(buffer, int) and buffer >= 1):
            raise ConfigError(f"buffer: expected an integer >= 1, got {buffer!r}")
        if not (isinstance(first_index, int) and first_index >= 0) or not first_time >= 0:
            raise ConfigError(f"first_index, first_time: expected values >= 0, got {first_index!r}, {first_time!r}")
        self.first_index = first_index
        self.first_time = float(first_time)
        self.transport = transport
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.connect_attempts = connect_attempts
        self.reconnect = reconnect or Reconnect()
        self.buffer_size = buffer
        self.on_status = on_status
        self.taps = tuple(taps)
        self._wakeup = wakeup
        self._rng = random.Random(seed)
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._container: av.container.InputContainer | None = None
        self._buffer = LatestFrames(buffer, wakeup)
        self._failure: SourceError | None = None
        self._lock = threading.Lock()
        self.reconnects = 0
        """Successful reconnects since open."""
        self.up = False
        """Whether frames are flowing now."""
        self.decode_errors = 0
        self.last_frame_wall: float | None = None
        self._last_attempts = 0

    # -- counters read by metrics, from any thread ------------------------------------------------------------------

    @property
    def dropped(self) -> int:
        """Frames received but replaced by newer ones before a consumer took them (drop-oldest)."""
        return self._buffer.dropped

    @property
    def received(self) -> int:
        return self._buffer.received

    def buffer_depth(self) -> int:
        return self._buffer.depth()

    @property
    def failure(self) -> SourceError | None:
        """The error that ended the source (reconnect attempts exhausted), once it has."""
        return self._failure

    @property
    def finished(self) -> bool:
        """No frame will come any more (closed, attempts exhausted or ``max_frames`` reached) and none is queued."""
        return self._buffer.ended

    def take_latest(self) -> Frame | None:
        """The newest received frame that nobody took yet (older ones are dropped and counted), or None."""
        decoded = self._buffer.take_latest()
        return None if decoded is None else decoded.frame()

    # -- Source ------------------------------------------------------------------------------------------------------

    def _open(self) -> SourceInfo:
        self._closing.clear()
        self._buffer = LatestFrames(self.buffer_size, self._wakeup)
        self._failure = None
        container, attempts, reason = None, 0, ""
        while container is None:
            attempts += 1
            try:
                container = self._connect()
            except SourceError as err:
                reason = str(err)
                if attempts >= self.connect_attempts:
                    raise SourceError(f"{self.display_uri}: cannot connect after {attempts} attempt"
                                      f"{'s' if attempts > 1 else ''} ({reason})") from None
                log.warning("stream_connect_failed source=%s attempt=%d reason=%s", self.source_id, attempts, reason)
                if self._closing.wait(self.reconnect.delay(attempts, self._rng)):
                    raise SourceError(f"{self.display_uri}: closed while connecting") from None
        self._container = container
        stream = container.streams.video[0]
        info = SourceInfo(
            source_id=self.source_id, uri=self.display_uri, width=stream.codec_context.width,
            height=stream.codec_context.height, fps=stream.average_rate or stream.guessed_rate or None,
            time_base=stream.time_base, codec=stream.codec_context.name, container=container.format.name,
            is_live=True,
        )
        self.up = True
        self._status("stream_up", attempts=attempts, width=info.width, height=info.height)
        self._thread = threading.Thread(target=self._read_loop, name=f"streamseg:live:{self.source_id}", daemon=True)
        self._thread.start()
        return info

    def _frames(self) -> Iterator[Frame]:
        kept = 0
        while True:
            decoded = self._buffer.take(timeout=None)
            if decoded is None:
                break
            if (decoded.index - self.first_index) % self.stride:
                continue
            yield decoded.frame()
            kept += 1
            if self.max_frames is not None and kept >= self.max_frames:
                return
        if self._failure is not None:
            raise self._failure

    def _release(self) -> None:
        self._closing.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            # the reader notices within one packet, or after at most one connect/read timeout
            thread.join(self.connect_timeout + self.read_timeout + 2.0)
            if thread.is_alive():
                log.warning("stream_reader_stuck source=%s (left to finish its timeout)", self.source_id)
        self._close_container()
        self._buffer.end()

    # -- reader thread -------------------------------------------------------------------------------------------------

    def _connect(self) -> av.container.InputContainer:
        """One connection attempt: open the URL with the timeouts, find the video stream."""
        options = {}
        scheme = self.uri.split("://", 1)[0].lower() if "://" in self.uri else ""
        if scheme in ("rtsp", "rtsps"):
            options["rtsp_transport"] = self.transport
            options["timeout"] = str(int(self.read_timeout * 1e6))  # socket I/O timeout, microseconds
        elif scheme in ("http", "https"):
            options["rw_timeout"] = str(int(self.read_timeout * 1e6))
        url, fmt = self.uri, None
        if scheme == "v4l2":
            url, fmt = self.uri[len("v4l2://"):], "video4linux2"
        elif self.uri.startswith("/dev/video"):
            fmt = "video4linux2"
        started = time.monotonic()
        try:
            container = av.open(url, format=fmt, options=options, timeout=(self.connect_timeout, self.read_timeout))
        except Exception as err:  # FFmpeg, OS and PyAV's own errors alike: all mean "not reachable now"
            reason, waited = self._clean(err), time.monotonic() - started
            if waited >= 0.9 * min(self.connect_timeout, self.read_timeout) and reason != "timed out":
                reason = f"timed out: no answer within {waited:.1f} s; {reason}"  # FFmpeg words it vaguely
            raise SourceError(reason) from None
        if not container.streams.video:
            container.close()
            raise SourceError("no video stream")
        for other in container.streams:
            if other.type != "video" or other is not container.streams.video[0]:
                other.discard = Discard.all
        return container

    def _read_loop(self) -> None:
        index, size, clock = self.first_index, None, None
        try:
            while not self._closing.is_set():
                container = self._container
                stream = container.streams.video[0]
                for tap in self.taps:
                    self._tap(tap.session, stream)
                if clock is None:
                    clock = StreamClock(stream.time_base, stream.average_rate or 25, max_jump=MAX_PTS_JUMP)
                    if self.first_time:
                        clock.restart(self.first_time)
                reason = "end of stream"
                try:
                    for packet in container.demux(stream):
                        if self._closing.is_set():
                            return
                        if packet.size == 0:
                            continue  # the flush packet at the end of a stream
                        wall = time.time()
                        for tap in self.taps:
                            self._tap(tap.packet, packet, wall)
                        try:
                            decoded = packet.decode()
                        except av.FFmpegError:
                            self.decode_errors += 1  # damaged packet (UDP loss): the next keyframe repairs it
                            continue
                        for picture in decoded:
                            received = time.time()
                            pts = picture.pts
                            seconds = clock(pts)  # the same clock as files, plus the jump repair
                            size = (picture.width, picture.height)
                            self.last_frame_wall = received
                            self._buffer.put(_Decoded(picture, self.source_id, index, seconds, pts,
                                                      stream.time_base, received))
                            index += 1
                            if self.max_frames is not None and \
                                    index - self.first_index >= self.max_frames * self.stride:
                                return
                except Exception as err:  # read error or timeout: the camera is down
                    reason = self._clean(err)
                if self._closing.is_set():
                    return
                # Down: report, then reconnect with backoff until it works or the attempts run out.
                self.up = False
                down_at = time.time()
                for tap in self.taps:
                    self._tap(tap.end_session)
                self._close_container()
                self._status("stream_down", reason=reason)
                container = self._reconnect(reason)
                if container is None:
                    return
                self._container = container
                clock.restart(clock.now + (time.time() - down_at))  # time goes on through the gap
                new_stream = container.streams.video[0]
                new_size = (new_stream.codec_context.width, new_stream.codec_context.height)
                self.reconnects += 1
                self.up = True
                self._status("stream_up", attempts=self._last_attempts, width=new_size[0], height=new_size[1],
                             resized=size is not None and new_size != size)
        finally:
            for tap in self.taps:
                self._tap(tap.end_session)  # before _release closes the container their files were made from
            self._buffer.end()

    def _reconnect(self, reason: str) -> av.container.InputContainer | None:
        attempt = 0
        while True:
            attempt += 1
            if self._closing.wait(self.reconnect.delay(attempt, self._rng)):
                return None
            try:
                container = self._connect()
            except SourceError as err:
                reason = str(err)
                log.info("stream_reconnect_failed source=%s attempt=%d reason=%s", self.source_id, attempt, reason)
                if self.reconnect.max_attempts is not None and attempt >= self.reconnect.max_attempts:
                    self._failure = SourceError(f"{self.display_uri}: stream lost and {attempt} reconnect attempt"
                                                f"{'s' if attempt > 1 else ''} failed ({reason})")
                    self._status("stream_failed", reason=reason, attempts=attempt)
                    return None
                continue
            if self._closing.is_set():
                container.close()
                return None
            self._last_attempts = attempt
            return container

    def _close_container(self) -> None:
        with self._lock:
            container, self._container = self._container, None
        if container is not None:
            try:
                container.close()
            except Exception:  # closing a broken connection may fail; nothing is left to release
                pass

    def _tap(self, method, *args) -> None:
        try:
            method(*args)
        except Exception as err:  # a failing recorder must not take the camera down
            log.error("packet_tap_failed source=%s error=%s", self.source_id, self._clean(err))

    def _status(self, kind: str, **fields) -> None:
        status = StreamStatus(kind, self.source_id, time.time(), reconnects=self.reconnects, **fields)
        level = logging.WARNING if kind != "stream_up" else logging.INFO
        log.log(level, "%s source=%s uri=%s reconnects=%d attempts=%d%s%s", kind, self.source_id, self.display_uri,
                status.reconnects, status.attempts,
                f" size={status.width}x{status.height}" if status.width else "",
                f" reason={status.reason!r}" if status.reason else "")
        if self.on_status is not None:
            try:
                self.on_status(status)
            except Exception as err:
                log.error("stream_status_handler_failed source=%s error=%s", self.source_id, self._clean(err))

    def _clean(self, err: BaseException) -> str:
        """A one-line, credential-free description of ``err``."""
        text = " ".join(str(getattr(err, "strerror", None) or err).split()) or type(err).__name__
        if isinstance(err, av.error.ExitError) or "Immediate exit requested" in text:
            text = "timed out"
        return redact(text, self.secrets)
