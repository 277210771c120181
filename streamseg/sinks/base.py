"""The one interface every sink implements, and the line-by-line output file of the text sinks."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Callable, Iterator, Protocol, runtime_checkable

from streamseg.errors import StreamsegError, output_error
from streamseg.types import FrameResult

log = logging.getLogger(__name__)


@runtime_checkable
class Sink(Protocol):
    """Consumes :class:`FrameResult` items in stream order and owns one output file.

    Contract: ``write`` is called once per frame, in order; ``close`` is idempotent and leaves a complete, valid
    file whatever happened before (call it from ``finally`` or use the sink as a context manager). Constructors
    take ``(path, info: SourceInfo, **options)``. Sinks may subclass this Protocol to inherit the context-manager
    methods below. An output that cannot be written raises :class:`~streamseg.errors.OutputError` naming it.
    """

    def write(self, result: FrameResult) -> None: ...

    def close(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        close_after(self.close, exc)


def close_after(close: Callable[[], None], error: BaseException | None) -> None:
    """Run ``close``. When an ``error`` is already on its way to the user and closing fails too (the disk that
    filled has no room for this file either), log the close's one line and let the first error be the one
    reported."""
    try:
        close()
    except StreamsegError as err:
        if error is None:
            raise
        log.warning("%s", err)


_APPEND: ContextVar[bool] = ContextVar("streamseg_append_outputs", default=False)


@contextmanager
def appending(enabled: bool = True) -> Iterator[None]:
    """Line outputs (:class:`LineFile`: detections and events JSONL, zone-count CSV) opened in this block, in this
    thread, continue an existing file instead of replacing it: a camera whose process was restarted
    (:mod:`streamseg.cluster.cameras`) goes on writing the same files."""
    token = _APPEND.set(enabled)
    try:
        yield
    finally:
        _APPEND.reset(token)


class LineFile:
    """A text output written a line at a time, each line straight to disk (``tail -f`` sees it at once).

    A line that does not fit (disk full, quota or file-size limit) is cut off again, so the file always ends with
    its last complete line; that, and a file that cannot be created, raise OutputError naming the file.
    ``write`` takes whole lines (as ``csv.writer`` writes its rows).

    ``append`` (default: inside :func:`appending`, else False) continues an existing file: a torn last line (the
    writer was killed mid-line) is cut off first, so the file still ends with a complete line; :attr:`start` is
    the size it had then (0: a new or empty file, which a CSV writer gives its header).
    """

    def __init__(self, path: Path, append: bool | None = None):
        self.path = path
        append = _APPEND.get() if append is None else append
        try:
            self._file = open(path, "ab" if append else "wb", buffering=0)
            if append:
                size = self._file.seek(0, os.SEEK_END)
                keep = complete_length(path, size)
                if keep < size:
                    self._file.truncate(keep)
                    log.warning("%s: cut off an incomplete last line (its writer was interrupted)", path)
                self.start = keep
            else:
                self.start = 0
        except OSError as err:
            raise output_error(path, err) from err
        self._size = self.start

    @property
    def closed(self) -> bool:
        return self._file.closed

    def write(self, text: str) -> None:
        data = memoryview(text.encode("utf-8"))
        try:
            while data:
                data = data[self._file.write(data):]  # one system call may write part of it
        except OSError as err:
            self._file.truncate(self._size)
            self._file.close()
            raise output_error(self.path, err, "; it ends with the last line that fit") from err
        self._size = self._file.tell()

    def close(self) -> None:
        self._file.close()


def complete_length(path: str | os.PathLike, size: int | None = None) -> int:
    """The length of ``path``'s text up to and including its last newline (0 for a missing or empty file, or one
    without any complete line)."""
    try:
        with open(path, "rb") as file:
            return _after_newline(file, file.seek(0, os.SEEK_END) if size is None else size)
    except FileNotFoundError:
        return 0


def last_line(path: str | os.PathLike) -> str | None:
    """The last complete line of a text file, without its newline (None: no such file or no complete line)."""
    end = complete_length(path)
    if end == 0:
        return None
    with open(path, "rb") as file:
        start = _after_newline(file, end - 1)  # the line before the last newline
        file.seek(start)
        return file.read(end - 1 - start).decode("utf-8", errors="replace")


def _after_newline(file, end: int) -> int:
    """The position just after the last newline in ``file`` before ``end`` (0: none), read backwards in blocks."""
    pos = end
    while pos > 0:
        step = min(65536, pos)
        file.seek(pos - step)
        newline = file.read(step).rfind(b"\n")
        if newline >= 0:
            return pos - step + newline + 1
        pos -= step
    return 0
