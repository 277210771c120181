"""Composition: the one place where sources, models, trackers, event rules and sinks meet.

Each source runs as a graph ``decode -> detect [-> track] [-> events] -> write``, joined by bounded queues; the
``track`` node runs when ``[tracker]`` is enabled, ``events`` when ``[events]`` has rules. The model is built once
and shared by the sources of a run, which are processed one after another; tracker and rules are built afresh for
each source (identities and zone states belong to one stream).

Outputs per source ``<id>`` under ``output_dir`` (each one switchable under ``[sinks]``): ``<id>.mp4`` (annotated;
with the tracker, confirmed tracks are coloured and labelled by track id, other detections by class),
``<id>.detections.jsonl`` (every detection; ``track_id`` set with the tracker, null without a confirmed track),
``<id>.coco.json`` and ``<id>.coco.categories.json`` (image folders); with the tracker ``<id>.tracks.txt``
(MOTChallenge, written at the end from the tracker's back-filled history, bridged gaps filled) and
``<id>.summary.png``; with events ``<id>.events.jsonl`` (``streamseg.events/1``, every event also logged on the
``streamseg.events`` logger) and, with zones, ``<id>.zone_counts.csv``.

>>> from streamseg.config import build_config
>>> with Runner(build_config({"model": {"weights": "model.pth"}})) as runner:  # doctest: +SKIP
...     result = runner.process("clip.mp4")
"""

from __future__ import annotations

import logging
from collections import deque
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from streamseg.config import PipelineConfig
from streamseg.errors import ConfigError, output_error
from streamseg.events import CollisionRule, EventEngine, describe_event
from streamseg.graph import GraphReport, Node, Pipeline
from streamseg.models import Backend, build_backend
from streamseg.sinks import (Annotator, CocoResultsSink, DetectionsJsonlSink, EventsJsonlSink, Overlay, SummarySink,
                             VideoSink, ZoneCountsCsvSink)
from streamseg.sinks.base import close_after
from streamseg.sources import open_source
from streamseg.tracking import MotRows, Tracker, write_mot
from streamseg.types import Frame, FrameResult, SourceInfo

log = logging.getLogger(__name__)
event_log = logging.getLogger("streamseg.events")


@dataclass
class SourceRun:
    """What one source's run produced."""

    source_id: str
    info: SourceInfo
    outputs: dict[str, Path] = field(default_factory=dict)
    report: GraphReport | None = None
    skipped: list[Path] = field(default_factory=list)
    """Image sources: the unreadable images that were left out (each also logged as a warning)."""

    @property
    def frames_written(self) -> int:
        return self.report.stages[-1].items_out if self.report else 0

    @property
    def interrupted(self) -> bool:
        return bool(self.report and self.report.interrupted)


def detect_stage(backend: Backend, batch_size: int) -> Callable[[Iterable[Frame]], Iterator[FrameResult]]:
    """Frames in, results out; batches frames that are already waiting, never waits to fill a batch."""

    def detect(frames) -> Iterator[FrameResult]:
        for first in frames:
            batch = [first, *frames.take_ready(batch_size - 1)] if batch_size > 1 else [first]
            for frame, detections in zip(batch, backend.predict(batch)):
                yield FrameResult(frame, detections)

    return detect


def track_stage(tracker: Tracker, lookahead: int = 0) -> Callable[[Iterable[FrameResult]], Iterator[FrameResult]]:
    """Results in, the same detections with ``track_ids`` out: a confirmed track's id, else ``UNTRACKED`` (no
    detection is ever removed). Every frame is one tracker step, empty ones included.

    ``lookahead`` frames (files: ``min_hits - 1``, by when a tentative track is either confirmed or dropped) hold
    results back so that a track gets its id from its first frame on, as in the back-filled tracks file; live
    streams use 0 and show an id from confirmation on."""

    def track(results) -> Iterator[FrameResult]:
        pending: deque[FrameResult] = deque()
        for result in results:
            frame = result.frame
            detections = tracker.update(result.detections, frame.index, frame.time, keep_all=True,
                                        image_size=(frame.height, frame.width))
            pending.append(replace(result, detections=detections))
            while len(pending) > lookahead:
                yield _resolved(pending.popleft(), tracker)
        while pending:
            yield _resolved(pending.popleft(), tracker)

    return track


def _resolved(result: FrameResult, tracker: Tracker) -> FrameResult:
    return replace(result, detections=tracker.resolve(result.detections))


def events_stage(engine: EventEngine) -> Callable[[Iterable[FrameResult]], Iterator[FrameResult]]:
    """Tracked results in, results with their ``events`` and zone ``occupancy`` out; each event is also logged,
    one line, on the ``streamseg.events`` logger."""

    def events(results) -> Iterator[FrameResult]:
        for result in results:
            found = engine.update(result.frame, result.detections.tracked())
            for event in found:
                event_log.info("%s", describe_event(event))
            yield replace(result, events=tuple(found), occupancy=engine.occupancy)

    return events


def write_tracks(path: Path, tracker: Tracker) -> None:
    """The tracker's back-filled history as a MOTChallenge file (frame = source index + 1, bridged gaps filled by
    interpolation, as ``streamseg track`` writes them)."""
    rows = MotRows.concatenate(MotRows.from_detections(index, dets) for index, dets in tracker.history(max_gap=None))
    write_mot(path, rows[np.lexsort((rows.ids, rows.frames))])


def write_stage(sinks: Sequence, on_result: Callable[[FrameResult], None] | None = None):
    """Hand every result to every sink, in order; the sinks themselves are closed by whoever opened them."""

    def write(results) -> Iterator[FrameResult]:
        for result in results:
            for sink in sinks:
                sink.write(result)
            if on_result is not None:
                on_result(result)
            yield result

    return write


class Runner:
    """Runs sources through one shared model into per-source outputs under ``config.output_dir``."""

    def __init__(self, config: PipelineConfig, backend: Backend | None = None, *, progress: bool = False):
        self.config = config
        self.progress = progress
        self.backend = backend if backend is not None else build_backend(config.model, config.backend)
        log.info("model: %s backend, weights %s", self.backend.name, getattr(self.backend, "origin", "?"))
        warn_unknown_event_classes(config, self.backend.class_names)
        self._pipeline: Pipeline | None = None
        self._used_ids: set[str] = set()

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.backend.close()

    def stop(self, drain: bool = True) -> None:
        """Stop the source being processed (thread-safe): queued frames drain unless ``drain`` is False."""
        if self._pipeline is not None:
            self._pipeline.stop(drain=drain)

    def process(self, uri: str, *, source_id: str | None = None, handle_signals: bool = False) -> SourceRun:
        """Process one source to the end (or until stopped). Outputs written so far stay valid on any error.
        ``source_id`` names the outputs (default: the file or folder name)."""
        cfg = self.config
        out_dir = Path(cfg.output_dir)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # a file in the way, no permission: one line, not a traceback
            raise output_error(out_dir, err, action="create the output folder") from err
        with ExitStack() as stack:
            kwargs = _source_kwargs(cfg) | ({"source_id": source_id} if source_id else {})
            source = stack.enter_context(open_source(uri, **kwargs))
            info = source.info
            run = SourceRun(self._unique_id(info.source_id), info)
            earlier = [out_dir / f"{run.source_id}{suffix}" for suffix in OUTPUT_SUFFIXES]
            earlier = [path for path in earlier if path.exists()]
            tracker = Tracker(cfg.tracker.config, keep_history=cfg.sinks.tracks, history_masks=False) \
                if cfg.tracker.enabled else None
            engine = EventEngine.from_config(cfg.events, info.width, info.height) if cfg.events.enabled else None
            sinks = []
            if cfg.sinks.video:
                run.outputs["video"] = out_dir / f"{run.source_id}.mp4"
                sinks.append(stack.enter_context(VideoSink(
                    run.outputs["video"], info, codec=cfg.sinks.codec, preset=cfg.sinks.preset, crf=cfg.sinks.crf,
                    annotator=Annotator(overlays=_overlays(engine)),
                )))
            images = source.names if info.is_image_sequence else None  # each frame's file, as outputs name it
            if cfg.sinks.detections:
                run.outputs["detections"] = out_dir / f"{run.source_id}.detections.jsonl"
                sinks.append(stack.enter_context(DetectionsJsonlSink(run.outputs["detections"], info, files=images)))
            if cfg.sinks.coco and images is not None:
                run.outputs["coco"] = out_dir / f"{run.source_id}.coco.json"
                coco = stack.enter_context(CocoResultsSink(
                    run.outputs["coco"], info, images=images, class_names=_vocabulary(self.backend.class_names),
                    annotations=cfg.sinks.coco_annotations,
                ))
                run.outputs["coco_categories"] = coco.categories_path
                sinks.append(coco)
            if tracker is not None:
                self._tracking_outputs(run, tracker, engine, sinks, stack)
            if not run.outputs:
                raise ConfigError(f"{run.source_id}: nothing to write: every output for this source is switched off "
                                  f"([sinks], --no-video, --no-detections)")
            _remove_stale(run, earlier)
            bar = stack.enter_context(_progress_bar(info, enabled=self.progress))
            graph = cfg.graph
            if graph.policy != "block":
                log.info("%s: graph.policy = %s applies to live sources only; every frame of a file is processed",
                         run.source_id, graph.policy)
            nodes = [
                Node("decode", lambda _: iter(source)),
                Node("detect", detect_stage(self.backend, cfg.model.batch_size), graph.queue_size, "block"),
            ]
            if tracker is not None:
                lookahead = cfg.tracker.config.min_hits - 1
                nodes.append(Node("track", track_stage(tracker, lookahead), graph.queue_size, "block"))
            if engine is not None:
                nodes.append(Node("events", events_stage(engine), graph.queue_size, "block"))
            nodes.append(Node("write", write_stage(sinks, lambda _: bar.update(1)), graph.queue_size, "block"))
            self._pipeline = Pipeline(nodes)
            try:
                run.report = self._pipeline.run(handle_signals=handle_signals)
            finally:
                self._pipeline = None
            if not run.report.interrupted and bar.total is not None and bar.n != bar.total:
                bar.total = bar.n  # the container's frame count was an estimate: a finished source ends at 100%
                bar.refresh()
            if info.is_image_sequence:
                run.skipped = list(source.skipped)
        return run

    def _tracking_outputs(self, run: SourceRun, tracker: Tracker, engine: EventEngine | None, sinks: list,
                          stack: ExitStack) -> None:
        """The tracks file and the sinks of the tracker's and the rules' outputs (appended to ``sinks``)."""
        cfg, out_dir, info = self.config, Path(self.config.output_dir), run.info
        if cfg.sinks.tracks:
            run.outputs["tracks"] = out_dir / f"{run.source_id}.tracks.txt"
            # written when the source's outputs are closed, after the graph has finished: also after an error
            tracks = run.outputs["tracks"]
            stack.push(lambda exc_type, exc, tb: close_after(lambda: write_tracks(tracks, tracker), exc))
        events = cfg.events
        if engine is not None and cfg.sinks.events:
            run.outputs["events"] = out_dir / f"{run.source_id}.events.jsonl"
            sinks.append(stack.enter_context(EventsJsonlSink(run.outputs["events"], info)))
        if engine is not None and engine.zones and cfg.sinks.zone_counts:
            run.outputs["zone_counts"] = out_dir / f"{run.source_id}.zone_counts.csv"
            vocabulary = _vocabulary(self.backend.class_names)
            columns = {z.name: z.config.classes or vocabulary for z in engine.zones}
            sinks.append(stack.enter_context(ZoneCountsCsvSink(run.outputs["zone_counts"], info, columns)))
        if cfg.sinks.summary:
            run.outputs["summary"] = out_dir / f"{run.source_id}.summary.png"
            sinks.append(stack.enter_context(SummarySink(
                run.outputs["summary"], info, zones=[z.name for z in events.zones],
                lines=[line.name for line in events.lines], collision=events.collision is not None,
            )))

    def _unique_id(self, source_id: str) -> str:
        """Two sources with the same stem must not overwrite each other's outputs."""
        candidate, n = source_id, 1
        while candidate in self._used_ids:
            n += 1
            candidate = f"{source_id}-{n}"
        self._used_ids.add(candidate)
        return candidate


OUTPUT_SUFFIXES = (".mp4", ".detections.jsonl", ".coco.json", ".coco.categories.json", ".tracks.txt",
                   ".events.jsonl", ".zone_counts.csv", ".summary.png")
"""What :meth:`Runner.process` may write per source, after the source id."""


def _remove_stale(run: SourceRun, earlier: list[Path]) -> None:
    """An earlier run's outputs of this source that this run does not write are removed (a tracks file next to a
    new video would describe another run); one line says what was replaced and what was removed."""
    written = set(run.outputs.values())
    stale = [path for path in earlier if path not in written]
    for path in stale:
        path.unlink(missing_ok=True)
    if earlier:
        replaced = [path.name for path in earlier if path in written]
        log.info("%s: outputs of an earlier run in %s: replaced %s; removed %s (not written by this run)",
                 run.source_id, earlier[0].parent, ", ".join(replaced) or "none",
                 ", ".join(path.name for path in stale) or "none")


def _overlays(engine: EventEngine | None) -> list[Overlay]:
    """The rules' zones, lines (arrows A -> B: "in" is to their right) and ego lane, for the annotated video."""
    if engine is None:
        return []
    overlays = [Overlay(z.name, z.config.polygon) for z in engine.zones]
    overlays += [Overlay(line.name, line.config.points, "arrow") for line in engine.lines]
    overlays += [Overlay(r.name, r.config.ego_lane) for r in engine.rules if isinstance(r, CollisionRule)]
    return overlays


def warn_unknown_event_classes(config: PipelineConfig, class_names: Sequence[str]) -> None:
    """One warning line naming the classes that event rules ask for and the model does not know (a COCO pipeline
    with the demo model: truck, bus); nothing for a model without classes (``backend = none``)."""
    vocabulary = _vocabulary(class_names)
    unknown = config.events.unknown_classes(vocabulary) if vocabulary and config.events.enabled else {}
    if unknown:
        named = "; ".join(f"{rule}: {', '.join(classes)}" for rule, classes in unknown.items())
        log.warning("event rules name classes the model does not know (%s); it knows %s", named,
                    ", ".join(vocabulary))


def _vocabulary(class_names: Sequence[str]) -> tuple[str, ...]:
    """A model's real class names: without the background and COCO's unused ``N/A`` slots, each once."""
    skip = {"", "__background__", "background", "N/A"}
    return tuple(dict.fromkeys(name for name in class_names if name not in skip))


def _source_kwargs(cfg: PipelineConfig) -> dict:
    opts = cfg.source
    kwargs = {"stride": opts.stride, "max_frames": opts.max_frames}
    if opts.target_fps is not None:
        kwargs["target_fps"] = opts.target_fps
    return kwargs


def _progress_bar(info: SourceInfo, enabled: bool) -> tqdm:
    """frames done / total, fps and ETA on stderr; total unknown for containers without a frame count."""
    return tqdm(
        total=info.frame_count, desc=info.source_id, unit="frame", disable=not enabled, dynamic_ncols=True,
        smoothing=0.1,
    )
