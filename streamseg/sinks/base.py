"""The one interface every sink implements, and the line-by-line output file of the text sinks."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

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


class LineFile:
    """A text output written a line at a time, each line straight to disk (``tail -f`` sees it at once).

    A line that does not fit (disk full, quota or file-size limit) is cut off again, so the file always ends with
    its last complete line; that, and a file that cannot be created, raise OutputError naming the file.
    ``write`` takes whole lines (as ``csv.writer`` writes its rows).
    """

    def __init__(self, path: Path):
        self.path = path
        try:
            self._file = open(path, "wb", buffering=0)
        except OSError as err:
            raise output_error(path, err) from err
        self._size = 0

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
