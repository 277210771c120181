"""Work items and what a worker does with them; plain Python, no Ray (:mod:`streamseg.cluster.actors` wraps it).

A source is cut into :class:`WorkItem` s: keyframe-aligned chunks of a video file
(:mod:`streamseg.cluster.chunks`), runs of ``chunk_images`` images of a folder. Each item is worked on twice:

- :meth:`ChunkWorker.detect`: decode and run the model (a two-node graph, so decoding overlaps the model), giving
  the chunk's results as ``.npz`` bytes (:mod:`streamseg.cluster.results`);
- :meth:`ChunkWorker.encode`: decode again and draw the tracked results (ids, zones, events come from the driver,
  which tracks each source in order) into the chunk's part of the annotated video, on the whole stream's clock,
  so that parts join by stream copy into the video a local run writes.

Either output is committed by one atomic rename (:func:`commit`): a retried item overwrites its own file, a
reader never sees half of one. A worker that can see the driver's probe file writes into the shared work folder
itself; one that cannot sends the bytes back through Ray's object store for the driver to commit.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from streamseg.cluster.chunks import Chunk, ChunkPlan, ChunkSource
from streamseg.cluster.results import pack
from streamseg.config import PipelineConfig
from streamseg.errors import SourceError, StageError, output_error
from streamseg.graph import Node, Pipeline
from streamseg.models.backend import Backend
from streamseg.sources.base import Source
from streamseg.sources.images import ImageFolderSource
from streamseg.sources.video import VideoFileSource
from streamseg.types import FrameResult, SourceInfo


@dataclass(frozen=True)
class WorkItem:
    """One chunk of one source (plain data: sent to workers, recorded in the manifest by ``key``)."""

    source: int
    """Position of the source in the run."""
    source_id: str
    uri: str
    number: int
    """Position of the item in its source."""
    frames: int
    """Frames it yields (after stride and max_frames)."""
    first: int = 0
    """Frames the source yields before this item's (``model.detect_interval`` counts from the source's start;
    image folders: unreadable images of earlier items are counted too, as the plan cannot know them)."""
    plan: ChunkPlan | None = None
    """Video files: the source's chunk plan (``chunk`` is ``plan.chunks[number]``)."""
    image_range: tuple[int, int] | None = None
    """Image folders: the frame indices ``range(*image_range)``; the folder's video is one item of its own."""

    @property
    def key(self) -> str:
        return f"{self.number:05d}"

    @property
    def chunk(self) -> Chunk | None:
        return None if self.plan is None else self.plan.chunks[self.number]


@dataclass
class Outcome:
    """What a worker hands back for one item."""

    key: str
    frames: int = 0
    data: bytes | None = None
    """The output's bytes when the worker could not write to the shared folder (else None: it is committed)."""
    error: str | None = None
    """A source error (a damaged file): the frames before it are in the output."""
    skipped: list[str] = field(default_factory=list)
    """Image folders: unreadable images left out."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Busy seconds per stage (decode, detect, encode) on the worker."""
    node: str = ""


def commit(data_or_path: bytes | Path, final: Path) -> None:
    """Make ``final`` appear whole and at once: write (or move: a copy where the file is on another filesystem,
    as a worker's temporary folder usually is) under a unique temporary name in its folder, then rename over it.
    Concurrent or retried writers of the same item leave one complete copy. A failure is one line naming it."""
    temp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data_or_path, bytes):
            with open(temp, "wb") as out:
                out.write(data_or_path)
                out.flush()
                os.fsync(out.fileno())
        else:
            shutil.move(data_or_path, temp)
        os.replace(temp, final)
    except OSError as err:
        raise output_error(final, err) from err
    finally:
        with suppress(OSError):  # (no folder to clean up in when the write failed for want of one)
            temp.unlink(missing_ok=True)


def open_item(config: PipelineConfig, item: WorkItem) -> Source:
    """The source (not yet open) that yields exactly the item's frames, as the whole source would."""
    options = config.source.source_kwargs()
    if item.image_range is not None:
        return ImageFolderSource(item.uri, source_id=item.source_id, stride=options["stride"],
                                 max_frames=options["max_frames"], index_range=item.image_range)
    if item.plan is not None and len(item.plan.chunks) > 1:
        return ChunkSource(item.plan, item.chunk, source_id=item.source_id, stride=options["stride"],
                           max_frames=options["max_frames"])
    return VideoFileSource(item.uri, source_id=item.source_id, **options)


class ChunkWorker:
    """Holds one model; runs :meth:`detect` and :meth:`encode` on work items (the body of a Ray actor)."""

    def __init__(self, config: PipelineConfig, backend_factory: Callable[[], Backend] | None = None):
        from streamseg.models import build_backend

        self.config = config
        self.backend = backend_factory() if backend_factory else build_backend(config.model, config.backend)
        # Ray runs two calls of this actor at once (one decoding or encoding while the other uses the model: a
        # local run overlaps them the same way, on threads); the model itself takes one call at a time.
        self._model = _OneAtATime(self.backend)

    def detect(self, item: WorkItem, final: str, probe: str | None) -> Outcome:
        """Decode and detect ``item``; its results go to ``final`` (see the module docstring)."""
        from streamseg.pipeline import detect_stage

        outcome = Outcome(item.key, node=_node())
        results: list[FrameResult] = []
        source = open_item(self.config, item)
        try:
            source.open()
        except SourceError as err:
            if item.image_range is None:
                outcome.error = str(err)
            outcome.skipped = [str(p) for p in getattr(source, "skipped", ())]  # no readable image in this run
            source = None
        if source is not None:
            with source:
                nodes = [Node("decode", lambda _: iter(source)),
                         Node("detect", detect_stage(self._model, self.config.model.batch_size,
                                                     self.config.model.detect_interval, item.first),
                              self.config.graph.queue_size),
                         Node("collect", lambda items: (results.append(r) for r in items),
                              self.config.graph.queue_size)]
                try:
                    report = Pipeline(nodes).run()
                    outcome.seconds = {s.name: s.busy_time for s in report.stages if s.name != "collect"}
                except StageError as err:  # a damaged file: what decoded before it went through (the graph drains)
                    if not isinstance(err.original, SourceError):
                        raise
                    outcome.error = str(err.original)
                if item.image_range is not None:
                    outcome.skipped = [str(p) for p in source.skipped]
        outcome.frames = len(results)
        data = pack(results, outcome.error, outcome.skipped)
        outcome.data = self._deliver(data, Path(final), probe)
        return outcome

    def encode(self, item: WorkItem, info: SourceInfo, results: list[FrameResult], final: str,
               probe: str | None) -> Outcome:
        """The annotated video of ``item``'s frames with their settled ``results`` (by frame index), on the whole
        stream's clock; an image folder's item covers the whole folder."""
        from streamseg.events import EventEngine
        from streamseg.stream import annotated_video

        started = time.perf_counter()
        outcome = Outcome(item.key, node=_node())
        by_index = {r.frame.index: r for r in results}
        config = self.config
        engine = EventEngine.from_config(config.events, info.width, info.height) \
            if config.events.enabled and config.tracker.enabled else None
        origin = {} if item.plan is None or len(item.plan.chunks) == 1 else \
            {"time_origin": (item.plan.origin_pts, item.plan.time_base)}
        with tempfile.TemporaryDirectory(prefix="streamseg-part-") as temp:
            path = Path(temp) / "part.mp4"
            sink = annotated_video(config, info, path, engine, **origin)
            try:
                with open_item(config, item).open() as source:
                    for frame in source:
                        result = by_index.get(frame.index)
                        if result is not None:
                            sink.write(replace(result, frame=frame))
                            outcome.frames += 1
                        if outcome.frames == len(by_index):
                            break
            except SourceError:
                pass  # the detect pass reported it; the frames before it are drawn
            finally:
                sink.close()
            outcome.seconds = {"encode": time.perf_counter() - started}
            outcome.data = self._deliver(path, Path(final), probe) if path.exists() else b""
        return outcome

    @staticmethod
    def _deliver(output: bytes | Path, final: Path, probe: str | None) -> bytes | None:
        """Commit ``output`` to ``final`` where this node sees the shared folder (None), else return its bytes."""
        if probe is not None and os.path.exists(probe):
            commit(output, final)
            return None
        return output if isinstance(output, bytes) else output.read_bytes()

    def where(self) -> tuple[str, int]:
        """This actor's host and process id (a process id means something on that host only)."""
        return _node(), os.getpid()

    def class_names(self) -> tuple[str, ...]:
        return tuple(self.backend.class_names)

    def close(self) -> None:
        self.backend.close()


class _OneAtATime:
    """A backend's ``predict`` behind a lock: backends are not promised to be thread-safe."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.class_names = backend.class_names
        self._lock = threading.Lock()

    def predict(self, frames):
        with self._lock:
            return self.backend.predict(frames)


def _node() -> str:
    import socket

    return socket.gethostname()
