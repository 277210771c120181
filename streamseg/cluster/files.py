"""``streamseg run --cluster``: files and image folders through model actors, with a local run's outputs.

The driver (this process) plans, tracks and writes; actors decode, detect and encode:

1. plan: each source is cut into work items (keyframe chunks of a video, runs of images);
2. detect, in parallel: every item on some actor (:meth:`ChunkWorker.detect`), results into the work folder;
3. track, events and the small outputs, per source in order, here: the results of item k go through the same
   :class:`~streamseg.stream.StreamProcessor` as a local run, once items 0..k-1 have; track ids and zone states
   are therefore continuous across chunks and equal to a local run's (identical frames give identical
   detections, and the tracker sees them in the same order);
4. annotate and encode, in parallel: each item's frames with their settled results
   (:meth:`ChunkWorker.encode`), one video part per item on the whole stream's clock;
5. join the parts by stream copy into ``<id>.mp4`` and move the other outputs into place; the source is done.

Every item's output is committed by rename into the work folder (:mod:`streamseg.cluster.manifest`), so a
retried item never duplicates one and a re-run of the same command resumes where a killed driver stopped.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
import time
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

from tqdm import tqdm

from streamseg.cluster.actors import WorkerPool
from streamseg.cluster.chunks import join_videos, plan_chunks
from streamseg.cluster.connect import connected
from streamseg.cluster.manifest import WorkFolder, fingerprint
from streamseg.cluster.results import read_notes, unpack
from streamseg.cluster.work import Outcome, WorkItem, commit
from streamseg.config import PipelineConfig
from streamseg.errors import ConfigError, StreamsegError, output_error
from streamseg.models.backend import Backend
from streamseg.pipeline import OUTPUT_SUFFIXES, remove_stale
from streamseg.sources import open_source
from streamseg.sinks.shared import RunOutputs
from streamseg.stream import StreamProcessor, warn_unknown_event_classes
from streamseg.types import FrameResult, SourceInfo

log = logging.getLogger(__name__)


@dataclass
class ClusterSource:
    """One source of a cluster run: its plan, and what has come back for it."""

    uri: str
    source_id: str
    info: SourceInfo
    items: list[WorkItem]
    names: list[str] | None = None
    """Image folders: each frame's file, as outputs name them."""
    outputs: dict[str, Path] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    """Output failures (one line each), as :class:`~streamseg.pipeline.SourceRun` has them."""
    source_error: str | None = None
    """A damaged input: the frames before the damage are in the outputs."""
    error_item: str | None = None
    """The first item that met the damage: tracking ends with it."""
    skipped: list[str] = field(default_factory=list)
    frames_written: int = 0
    done: bool = False
    # driver-side progress
    detected: dict[str, Path | None] = field(default_factory=dict)
    parts: set[str] = field(default_factory=set)
    next_track: int = 0
    next_encode: int = 0
    tracked: bool = False
    stream: StreamProcessor | None = None
    settled: list[FrameResult] = field(default_factory=list)

    @property
    def frames(self) -> int:
        return sum(item.frames for item in self.items)

    @property
    def is_images(self) -> bool:
        return self.info.is_image_sequence


@dataclass
class ClusterRun:
    """What :meth:`ClusterRunner.run` produced."""

    sources: list[ClusterSource]
    actors: int
    retried: int
    resumed: bool
    wall_time: float
    stage_seconds: dict[str, float]
    stage_items: dict[str, int]
    reused: int = 0
    """Items whose results an earlier (killed) run of the same command had committed."""
    interrupted: bool = False
    setup_time: float = 0.0
    """Seconds to plan, join the cluster and have every actor's model loaded (part of ``wall_time``)."""

    def table(self) -> str:
        """Per-stage busy time summed over workers (and the driver's own stages)."""
        header = f"{'stage':<16} {'where':<8} {'items':>8} {'busy s':>9} {'ms/item':>9}"
        rows = [header, "-" * len(header)]
        for name, seconds in self.stage_seconds.items():
            items = self.stage_items.get(name, 0)
            where = "driver" if name in ("track+write", "join") else "workers"
            per = f"{1000 * seconds / items:.1f}" if items else "-"
            rows.append(f"{name:<16} {where:<8} {items:>8} {seconds:>9.2f} {per:>9}")
        rows.append(f"wall time {self.wall_time:.2f} s (set-up {self.setup_time:.2f} s) on {self.actors} actor{'s' * (self.actors != 1)}, "
                    f"{sum(len(s.items) for s in self.sources)} work items, {self.reused} reused, {self.retried} retried"
                    + (", resumed" if self.resumed else "") + (", interrupted" if self.interrupted else ""))
        return "\n".join(rows)


class ClusterRunner:
    """Runs files and image folders on the cluster ``config.cluster.address`` (see the module docstring)."""

    def __init__(self, config: PipelineConfig, *, progress: bool = False, actors: int | None = None,
                 backend_factory: Callable[[], Backend] | None = None):
        """``actors`` overrides ``[cluster] actors``; ``backend_factory`` (picklable, called on each actor) gives
        another model than the configured one."""
        if config.cluster.address is None:
            raise ConfigError("cluster.address: needed for a cluster run (--cluster ADDRESS)")
        self.config = config
        self.progress = progress
        self.actors = actors
        self.backend_factory = backend_factory
        self._seconds: dict[str, float] = defaultdict(float)
        self._items: dict[str, int] = defaultdict(int)

    def run(self, uris: Sequence[str]) -> ClusterRun:
        started = time.perf_counter()
        out_dir = Path(self.config.output_dir)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise output_error(out_dir, err, action="create the output folder") from err
        sources = self._plan(uris)
        work = WorkFolder(out_dir, fingerprint(self.config, uris), [s.source_id for s in sources])
        with ExitStack() as stack:
            ray = stack.enter_context(connected(self.config.cluster.address))
            pool = WorkerPool(ray, self.config, self.actors, self.backend_factory)
            setup_time = time.perf_counter() - started
            stack.callback(pool.close)
            class_names = ray.get(pool.actors[0].class_names.remote())
            warn_unknown_event_classes(self.config, class_names)
            bar = stack.enter_context(tqdm(total=sum(s.frames for s in sources), desc="cluster", unit="frame",
                                           disable=not self.progress, dynamic_ncols=True, smoothing=0.1))
            probe = self._probe(work)
            stack.callback(probe.unlink, missing_ok=True)
            scheduler = _Scheduler(self, pool, work, sources, class_names, bar,
                                   None if self.config.cluster.shared_output == "no" else str(probe))
            stack.callback(scheduler.close_streams)
            interrupted = False
            with _sigterm_as_interrupt():
                try:
                    scheduler.run()
                except KeyboardInterrupt:
                    interrupted = True
            if not interrupted:
                work.remove()
            return ClusterRun(sources, pool.count, pool.retried, work.resumed, time.perf_counter() - started,
                              dict(self._seconds), dict(self._items), scheduler.reused, interrupted, setup_time)

    # -- planning ------------------------------------------------------------------------------------------------

    def _plan(self, uris: Sequence[str]) -> list[ClusterSource]:
        cfg, used = self.config, set()
        sources = []
        for number, uri in enumerate(uris):
            with open_source(uri, **cfg.source.source_kwargs()) as source:
                info = source.info
                names = list(source.names) if info.is_image_sequence else None
                total = len(source.paths) if info.is_image_sequence else None
            if info.is_live:
                raise ConfigError(f"{info.uri}: live streams and files cannot be mixed in one cluster run")
            source_id = _unique(info.source_id, used)
            if info.is_image_sequence:
                step = cfg.cluster.chunk_images
                picks = range(0, total, cfg.source.stride)[: cfg.source.max_frames]
                limit = picks[-1] + 1 if picks else 0
                counts = [len([i for i in picks if start <= i < start + step]) for start in range(0, limit, step)]
                items = [WorkItem(number, source_id, uri, k, counts[k], sum(counts[:k]),
                                  image_range=(k * step, (k + 1) * step)) for k in range(len(counts))]
            else:
                plan = plan_chunks(uri, cfg.cluster.chunk_seconds, stride=cfg.source.stride,
                                   target_fps=cfg.source.target_fps, max_frames=cfg.source.max_frames)
                kept = _kept_per_chunk(plan, cfg.source.stride, cfg.source.max_frames)
                items = [WorkItem(number, source_id, uri, k, kept[k], sum(kept[:k]), plan=plan)
                         for k in range(len(plan.chunks))]
            sources.append(ClusterSource(uri, source_id, info, items, names))
        return sources

    @staticmethod
    def _probe(work: WorkFolder) -> Path:
        """A file only nodes that share the output folder can see (a fresh name per run)."""
        probe = work.root / f"probe-{secrets.token_hex(8)}"
        probe.touch()
        return probe

    def time(self, stage: str, seconds: float, items: int) -> None:
        self._seconds[stage] += seconds
        self._items[stage] += items


class _Scheduler:
    """The driver's loop: keeps actors fed (encodes first: they free the driver's memory), tracks each source
    as far as its detected items allow, joins and places finished sources' outputs."""

    def __init__(self, runner: ClusterRunner, pool: WorkerPool, work: WorkFolder, sources: list[ClusterSource],
                 class_names, bar: tqdm, probe: str | None):
        self.runner, self.pool, self.work, self.sources = runner, pool, work, sources
        self.config = runner.config
        self.class_names = class_names
        self.bar, self.probe = bar, probe
        self.out_dir = Path(self.config.output_dir)
        self.video = self.config.sinks.video
        self.reused = 0
        self.shared = RunOutputs(self.config)  # the sources' one event store and MQTT client

    def run(self) -> None:
        for source in self.sources:
            if source.source_id in self.work.done:
                source.done = True
                self.bar.update(source.frames)
                log.info("%s: done in an earlier run (resumed)", source.source_id)
                continue
            for item in source.items:
                path = self.work.detections(source.source_id, item.key)
                if path.exists():
                    self._noted(source, item.key, *read_notes(path))
                    source.detected[item.key] = path
                    self.reused += 1
                else:
                    self.pool.submit("detect", (item, str(path), self.probe),
                                     lambda outcome, s=source, p=path: self._detected(s, p, outcome),
                                     f"{source.source_id} item {item.number}")
                if self.video and self.work.video_part(source.source_id, item.key).exists():
                    source.parts.add(item.key)
        while not all(s.done for s in self.sources):
            progressed = any([self._advance(source) for source in self.sources if not source.done])
            if not progressed:
                if self.pool.idle:
                    raise StreamsegError("cluster run stalled: no work in flight and no source can advance")
                self.pool.poll(timeout=1.0)

    def _detected(self, source: ClusterSource, path: Path, outcome: Outcome) -> None:
        if outcome.data is not None:
            if self.config.cluster.shared_output == "yes":
                raise StreamsegError(f"node {outcome.node} cannot see the output folder {self.out_dir} "
                                     "(cluster.shared_output = yes)")
            commit(outcome.data, path)
        self._noted(source, outcome.key, outcome.error, outcome.skipped)
        source.detected[outcome.key] = path
        for stage, seconds in outcome.seconds.items():
            self.runner.time(stage, seconds, outcome.frames)

    @staticmethod
    def _noted(source: ClusterSource, key: str, error: str | None, skipped: list[str]) -> None:
        if error and (source.error_item is None or key < source.error_item):
            source.source_error, source.error_item = error, key
        source.skipped += skipped

    def _encoded(self, source: ClusterSource, path: Path, frames: int, outcome: Outcome) -> None:
        if outcome.data:
            commit(outcome.data, path)
        source.parts.add(outcome.key)  # (no file: no frame decoded; the source's error says why)
        self.runner.time("encode", outcome.seconds.get("encode", 0.0), outcome.frames)
        self.bar.update(frames)

    # -- per source ---------------------------------------------------------------------------------------------

    def _advance(self, source: ClusterSource) -> bool:
        """Track what can be tracked, submit what can be encoded, finish a source whose parts are all there."""
        progressed = False
        while not source.tracked and source.items[source.next_track].key in source.detected:
            self._track(source, source.items[source.next_track])
            progressed = True
        if self.video and not source.is_images:
            while source.next_encode < len(source.items) and self._encode_ready(source):
                progressed = True
        elif self.video and source.tracked and source.next_encode == 0:
            self._submit_encode(source, WorkItem(source.items[0].source, source.source_id, source.uri, 0,
                                                 source.frames, image_range=(0, 1 << 62)), source.settled)
            source.settled = []
            source.next_encode = 1
            progressed = True
        if source.tracked and self._all_parts(source):
            self._finish(source)
            progressed = True
        return progressed

    def _track(self, source: ClusterSource, item: WorkItem) -> None:
        started = time.perf_counter()
        if source.stream is None:
            config = replace(self.config, sinks=replace(self.config.sinks, video=False))
            folder = self.work.source_dir(source.source_id) / "outputs"
            folder.mkdir(parents=True, exist_ok=True)
            source.stream = StreamProcessor(config, source.info, self.class_names, folder, images=source.names,
                                            source_id=source.source_id, shared=self.shared)
            if not source.stream.outputs and source.stream.engine is None and not self.video:
                raise ConfigError(f"{source.source_id}: nothing to write: every output for this source is switched "
                                  "off ([sinks], --no-video, --no-detections)")
        stream = source.stream
        results = unpack(source.detected[item.key].read_bytes(), source.source_id)
        for result in results:
            for ready in stream.analyze(result):
                self._write(source, ready)
        source.next_track += 1
        last = source.next_track == len(source.items) or item.key == source.error_item
        if last:
            for ready in stream.finish():
                self._write(source, ready)
            source.tracked = True
        self.runner.time("track+write", time.perf_counter() - started, len(results))
        if not self.video:
            self.bar.update(item.frames)

    def _write(self, source: ClusterSource, result: FrameResult) -> None:
        source.stream.write(result)
        source.frames_written += 1
        if self.video:
            source.settled.append(result)

    def _encode_ready(self, source: ClusterSource) -> bool:
        """Submit the next video item's encode once all its frames are settled (a later frame is, or the source is
        tracked to its end); False when not yet."""
        item = source.items[source.next_encode]
        following = source.items[item.number + 1] if item.number + 1 < len(source.items) else None
        end = following.chunk.first_index if following is not None else None
        mine = [r for r in source.settled if end is None or r.frame.index < end]
        later = end is not None and source.settled and source.settled[-1].frame.index >= end
        if not (source.tracked or later or len(mine) == item.frames):  # (all there: no need to wait for item k+1)
            return False
        source.settled = source.settled[len(mine):]
        self._submit_encode(source, item, mine)
        source.next_encode += 1
        return True

    def _submit_encode(self, source: ClusterSource, item: WorkItem, results: list[FrameResult]) -> None:
        if item.key in source.parts or not results:  # done in an earlier run, or nothing to draw
            source.parts.add(item.key)
            self.bar.update(len(results))
            return
        path = self.work.video_part(source.source_id, item.key)
        self.pool.submit_first("encode", (item, source.info, results, str(path), self.probe),
                               lambda outcome, s=source, p=path, n=len(results): self._encoded(s, p, n, outcome),
                               f"{source.source_id} video item {item.number}")

    def _all_parts(self, source: ClusterSource) -> bool:
        if not self.video:
            return True
        wanted = [source.items[0].key] if source.is_images else [item.key for item in source.items]
        return source.next_encode == len(wanted) and all(key in source.parts for key in wanted)

    def _finish(self, source: ClusterSource) -> None:
        """Join the video, close the small outputs and move everything into the output folder."""
        started = time.perf_counter()
        sid = source.source_id
        earlier = [p for p in (self.out_dir / f"{sid}{suffix}" for suffix in OUTPUT_SUFFIXES) if p.exists()]
        stream, source.stream = source.stream, None
        stream.close()
        source.errors = list(stream.errors)
        outputs = {}
        if self.video:
            keys = ["00000"] if source.is_images else [item.key for item in source.items]
            parts = [self.work.video_part(sid, key) for key in keys]
            parts = [part for part in parts if part.exists()]
            if parts:
                outputs["video"] = self.out_dir / f"{sid}.mp4"
                join_videos(parts, outputs["video"])
        for kind, path in stream.outputs.items():
            if path.exists():
                outputs[kind] = self.out_dir / path.name
                os.replace(path, outputs[kind])
        source.outputs = outputs
        remove_stale(sid, outputs, earlier)
        self.runner.time("join", time.perf_counter() - started, 1)
        self.work.mark_done(sid)
        source.done = True

    def close_streams(self) -> None:
        try:
            for source in self.sources:
                if source.stream is not None:
                    source.stream.close()
                    source.stream = None
        finally:
            self.shared.close()


def _unique(name: str, used: set[str]) -> str:
    candidate, n = name, 1
    while candidate in used:
        n += 1
        candidate = f"{name}-{n}"
    used.add(candidate)
    return candidate


def _kept_per_chunk(plan, stride: int, max_frames: int | None) -> list[int]:
    """Frames each chunk yields after stride and max_frames (kept: index % stride == 0, the first max_frames)."""
    kept, left = [], max_frames
    for chunk in plan.chunks:
        first, end = chunk.first_index, chunk.first_index + chunk.frames
        count = len(range(-(-first // stride) * stride, end, stride))
        if left is not None:
            count = min(count, left)
            left -= count
        kept.append(count)
    return kept


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the driver like Ctrl-C: the work folder keeps what is done, for a resume."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
