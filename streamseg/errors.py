"""Errors a user can cause and fix.

Every class subclasses both :class:`StreamsegError` (so the CLI turns it into a one-line message and a non-zero
exit) and the builtin it refines (so callers that catch ``ValueError`` or ``OSError`` keep working).
"""

from __future__ import annotations

import errno
import os


class StreamsegError(Exception):
    """Base of every error streamseg raises on purpose. ``str(err)`` is a complete one-line message."""


class ConfigError(StreamsegError, ValueError):
    """A pipeline file or option is wrong: unknown key, bad type, value out of range."""


class SourceError(StreamsegError, OSError):
    """A source cannot be opened or read: missing file, not a video, empty folder, broken stream."""


class OutputError(StreamsegError, OSError):
    """An output cannot be written: disk full, a quota or file-size limit reached, no permission, not a folder."""


_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the size limit of the process or the file system",
    errno.EACCES: "permission denied",
    errno.EROFS: "read-only file system",
    errno.EEXIST: "a file of that name is in the way",
    errno.ENOTDIR: "part of the path is a file, not a folder",
}


def output_error(path: str | os.PathLike, err: OSError, detail: str = "", action: str = "write") -> OutputError:
    """The one line for ``err`` met writing ``path``: the file, the reason in words, and ``detail`` (what the file
    holds now)."""
    reason = _REASONS.get(err.errno) or " ".join((err.strerror or str(err)).split())
    return OutputError(f"cannot {action} {path}: {reason}{detail}")


class WeightsError(StreamsegError, FileNotFoundError):
    """Model weights are missing or do not fit the requested architecture."""


class StageError(StreamsegError, RuntimeError):
    """An exception inside a graph stage, re-raised in the caller with the stage it came from.

    The original exception is kept as ``__cause__`` and as :attr:`original`.
    """

    def __init__(self, stage: str, original: BaseException):
        self.stage = stage
        self.original = original
        text = (str(original).strip().splitlines() or [""])[0]  # one line: the CLI prints it as is
        detail = text if isinstance(original, StreamsegError) else f"{type(original).__name__}: {text}"
        super().__init__(f"stage '{stage}' failed: {detail}")
