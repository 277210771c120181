"""The one interface every sink implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from streamseg.types import FrameResult


@runtime_checkable
class Sink(Protocol):
    """Consumes :class:`FrameResult` items in stream order and owns one output file.

    Contract: ``write`` is called once per frame, in order; ``close`` is idempotent and leaves a complete, valid
    file whatever happened before (call it from ``finally`` or use the sink as a context manager). Constructors
    take ``(path, info: SourceInfo, **options)``. Sinks may subclass this Protocol to inherit the context-manager
    methods below.
    """

    def write(self, result: FrameResult) -> None: ...

    def close(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
