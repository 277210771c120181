"""What every source shares: open/close as a context manager, one pass of frames, option checks."""

from __future__ import annotations

from typing import Iterator

from streamseg.errors import ConfigError
from streamseg.types import Frame, SourceInfo


class Source:
    """A context-managed, single-pass iterator of :class:`Frame`.

    ``open()`` (or ``with``) reads enough to fill :attr:`info`; iterating yields frames; ``close()`` releases
    files and decoders at once, also when iteration stopped early. Subclasses implement ``_open() -> SourceInfo``,
    ``_frames() -> Iterator[Frame]`` and ``_release()``.
    """

    def __init__(self, source_id: str, *, stride: int = 1, max_frames: int | None = None):
        if not (_is_int(stride) and stride >= 1):
            raise ConfigError(f"stride must be an integer >= 1, got {stride!r}")
        if max_frames is not None and not (_is_int(max_frames) and max_frames >= 1):
            raise ConfigError(f"max_frames must be None or an integer >= 1, got {max_frames!r}")
        self.source_id = source_id
        self.stride = stride
        self.max_frames = max_frames
        self._info: SourceInfo | None = None
        self._iterator: Iterator[Frame] | None = None

    @property
    def info(self) -> SourceInfo:
        if self._info is None:
            raise RuntimeError(f"source '{self.source_id}' is not open: use `with source:` or call open() first")
        return self._info

    @property
    def closed(self) -> bool:
        return self._info is None

    def open(self) -> "Source":
        """Open the input and fill :attr:`info`; a no-op when already open. Cleans up after itself on failure."""
        if self._info is None:
            try:
                self._info = self._open()
            except BaseException:
                self._release()
                raise
        return self

    def close(self) -> None:
        """Stop any running iteration and release the input now (never left to the garbage collector)."""
        if self._iterator is not None:
            self._iterator.close()  # runs the generator's cleanup before its input goes away
            self._iterator = None
        self._release()
        self._info = None

    def __enter__(self) -> "Source":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        if self._info is None:
            raise RuntimeError(f"source '{self.source_id}' is not open: use `with source:` or call open() first")
        if self._iterator is not None:
            raise RuntimeError(f"source '{self.source_id}' can be iterated once per open()")
        self._iterator = self._frames()
        return self._iterator

    def _kept_count(self, total: int | None) -> int | None:
        """Frames left from ``total`` after striding and ``max_frames``."""
        if total is None:
            return None
        kept = -(-total // self.stride)
        return kept if self.max_frames is None else min(kept, self.max_frames)

    def _open(self) -> SourceInfo:
        raise NotImplementedError

    def _frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class StreamClock:
    """Seconds on a stream's own clock for its decoded frames, one call per frame in decoding order: the single
    place where files and cameras turn container timestamps into :attr:`Frame.time`.

    - time 0 is the first timestamped frame (``offset`` later after :meth:`restart`);
    - a frame without a timestamp follows the previous one by its ``duration`` or one frame at the average rate;
    - time never goes backwards: a repeated or reordered timestamp gets 1 ms after the previous frame;
    - with ``max_jump`` (seconds; cameras), a timestamp that leaps that far ahead of the previous frame, or more
      than a second back (a camera rebooted without a disconnect, its clock reset), re-anchors the clock one frame
      after the previous frame instead of stalling or leaping. Files keep their gaps: there a gap is real.
    """

    def __init__(self, time_base, rate=None, *, max_jump: float | None = None):
        self.time_base = time_base
        self.step = 1 / float(rate) if rate else 0.0
        self.max_jump = max_jump
        self._t0 = None
        self._start = 0.0
        self._last: float | None = None  # this session's previous time, before the monotonic repair
        self._previous: float | None = None  # the previous time handed out

    @property
    def now(self) -> float:
        """The time of the last frame (0 before any)."""
        return self._previous or 0.0

    def restart(self, offset: float) -> None:
        """A new session (a camera reconnected): its timestamps start over, its time continues at ``offset``."""
        self._t0, self._start, self._last = None, offset, None

    def __call__(self, timestamp: int | None, duration: int | None = None) -> float:
        step = float(duration * self.time_base) if duration and self.time_base else self.step
        if timestamp is not None and self._t0 is None:
            # the clock starts here: right after any frames that came without a timestamp
            self._t0 = timestamp
            self._start = self._start if self._last is None else self._last + step
        if timestamp is not None:
            seconds = self._start + float((timestamp - self._t0) * self.time_base)
            if self.max_jump is not None and self._last is not None and \
                    not self._last - 1.0 < seconds < self._last + self.max_jump:
                self._t0, self._start = timestamp, self._last + step
                seconds = self._start
        else:
            seconds = self._start if self._last is None else self._last + step
        self._last = seconds
        if self._previous is not None and seconds <= self._previous:
            seconds = self._previous + 1e-3
        self._previous = seconds
        return seconds
