"""One stream's work after the model, the same for video files, image folders, live cameras and evaluation.

A :class:`StreamProcessor` is built from the pipeline config and the stream's :class:`~streamseg.types.SourceInfo`
and owns what belongs to that stream alone: its tracker, its event rules and its outputs. Callers feed it the
model's results in stream order through three steps, which a graph can run as separate nodes
(:meth:`StreamProcessor.stages`) or one caller can chain (:meth:`StreamProcessor.analyze` then ``write``):

- ``track``: the tracker gives every detection a ``track_id`` (``UNTRACKED`` until its track is confirmed; no
  detection is ever removed). Files hold results back ``min_hits - 1`` frames so a confirmed track has its id from
  its first frame on, as the back-filled tracks file does; live streams show an id from its confirmation on;
- ``events``: the rules see the confirmed tracks and add ``events`` and zone ``occupancy``;
- ``write``: every output gets the result.

Failure policy for outputs (files and cameras alike): when one output fails (a full disk, a lost mount), it is
closed as far as it can be, its one-line error (naming the file) is logged once and kept in :attr:`errors`, and
the other outputs keep writing; what was written stays valid. When no output is left, :attr:`exhausted` is True
and the caller stops feeding the stream. Whoever runs the stream reports :attr:`errors` and exits non-zero.

>>> with StreamProcessor(config, info, backend.class_names, "out") as stream:  # doctest: +SKIP
...     for result in results:
...         for ready in stream.analyze(result):
...             stream.write(ready)
...     for ready in stream.finish():
...         stream.write(ready)
"""

from __future__ import annotations

import logging
from collections import deque
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from streamseg.config import PipelineConfig
from streamseg.errors import StreamsegError
from streamseg.events import CollisionRule, EventEngine, describe_event
from streamseg.sinks import (Annotator, CocoResultsSink, DetectionsJsonlSink, EventsJsonlSink, Overlay, SummarySink,
                             VideoSink, ZoneCountsCsvSink)
from streamseg.sinks.recording import RollingVideoSink
from streamseg.sinks.event_store import EventStoreSink
from streamseg.sinks.event_store import store_path as event_store_path
from streamseg.sinks.mqtt import MqttEventsSink
from streamseg.sinks.shared import RunOutputs
from streamseg.tracking import MotRows, Tracker, write_mot
from streamseg.types import FrameResult, SourceInfo

log = logging.getLogger(__name__)
event_log = logging.getLogger("streamseg.events")

DEFAULT_ANNOTATED_MINUTES = 10.0
"""Length of each annotated-video file of a live stream when ``live.segment_minutes`` is not set."""


class StreamProcessor:
    """Tracker, event rules and outputs of one stream; see the module docstring.

    ``output_dir`` None: no outputs (evaluation reads :attr:`tracker` and the results' events). ``live``: outputs
    of an endless stream (annotated video in files of ``live.segment_minutes``, no tracks file or summary, which
    would need the whole history) and no lookahead. ``images``: each frame's file name, for image sequences (JSONL
    ``file``, COCO ``image_id``). ``source_id`` names the outputs (default ``info.source_id``). ``log_events``:
    each event is also a line on the ``streamseg.events`` logger (off for bulk scoring). ``shared``: the run's
    event store and MQTT publisher, which its other streams write to too (default: this stream's own, closed with
    it).
    """

    def __init__(self, config: PipelineConfig, info: SourceInfo, class_names: Sequence[str],
                 output_dir: str | Path | None, *, live: bool = False, images: Sequence[str] | None = None,
                 source_id: str | None = None, log_events: bool = True, shared: RunOutputs | None = None):
        self.config, self.info, self.live, self.log_events = config, info, live, log_events
        self.source_id = source_id or info.source_id
        self.vocabulary = vocabulary(class_names)
        self.outputs: dict[str, Path] = {}
        self.errors: list[str] = []
        """One line per output that failed (live streams also log it when it happens)."""
        self.processed = 0
        """Results written."""
        keep_history = bool(output_dir is not None and not live and config.sinks.tracks) or output_dir is None
        self.tracker = Tracker(config.tracker.config, keep_history=keep_history, history_masks=False) \
            if config.tracker.enabled else None
        self.lookahead = 0 if live or self.tracker is None else \
            (config.tracker.config.min_hits - 1) * config.model.detect_interval  # frames to min_hits model runs
        self.engine = EventEngine.from_config(config.events, info.width, info.height) \
            if config.events.enabled and self.tracker is not None else None
        self._pending: deque[FrameResult] = deque()
        self._sinks: list = []
        self._stack = ExitStack()
        self._state_sinks: list[MqttEventsSink] = []
        if shared is None and output_dir is not None:
            shared = self._stack.enter_context(RunOutputs(config))  # closes last, after this stream's sinks
        self.shared = shared
        if output_dir is not None:
            try:
                self._open_outputs(Path(output_dir), images)
            except BaseException:
                self._stack.close()
                raise

    # -- outputs ------------------------------------------------------------------------------------------------------

    def _open_outputs(self, out_dir: Path, images: Sequence[str] | None) -> None:
        cfg, info, sid, stack = self.config, self.info, self.source_id, self._stack
        sinks = cfg.sinks

        def video(path: Path) -> VideoSink:
            return annotated_video(cfg, info, path, self.engine)

        if sinks.video and self.live:
            minutes = cfg.live.segment_minutes or DEFAULT_ANNOTATED_MINUTES
            self._add("video", out_dir / sid / "annotated", RollingVideoSink(out_dir / sid / "annotated", sid,
                                                                              minutes * 60, video))
        elif sinks.video:
            self._add("video", out_dir / f"{sid}.mp4", video(out_dir / f"{sid}.mp4"))
        if sinks.detections:
            path = out_dir / f"{sid}.detections.jsonl"
            self._add("detections", path, DetectionsJsonlSink(path, info, files=images))
        if sinks.coco and images is not None:
            path = out_dir / f"{sid}.coco.json"
            coco = self._add("coco", path, CocoResultsSink(path, info, images=images, class_names=self.vocabulary,
                                                           annotations=sinks.coco_annotations))
            self.outputs["coco_categories"] = coco.categories_path
        if self.tracker is None:
            return
        if sinks.tracks and not self.live:
            path = self.outputs["tracks"] = out_dir / f"{sid}.tracks.txt"
            stack.callback(self._write_tracks, path)  # when the outputs close, after the last result
        events = cfg.events
        if self.engine is not None and sinks.events:
            path = out_dir / f"{sid}.events.jsonl"
            self._add("events", path, EventsJsonlSink(path, info))
        store = event_store_path(cfg)
        if self.engine is not None and store is not None:  # one file for the run's streams; not in outputs (shared)
            self._attach(EventStoreSink(self.shared.event_store(store), sid, replace=not self.live))
        if self.engine is not None and cfg.mqtt.enabled:  # the run's one client (streamseg.sinks.mqtt)
            self._state_sinks.append(self._attach(MqttEventsSink(self.shared.publisher(), sid)))
        if self.engine is not None and self.engine.zones and sinks.zone_counts:
            path = out_dir / f"{sid}.zone_counts.csv"
            columns = {z.name: z.config.classes or self.vocabulary for z in self.engine.zones}
            self._add("zone_counts", path, ZoneCountsCsvSink(path, info, columns))
        if sinks.summary and not self.live:
            path = out_dir / f"{sid}.summary.png"
            self._add("summary", path, SummarySink(path, info, zones=[z.name for z in events.zones],
                                                   lines=[line.name for line in events.lines],
                                                   collision=events.collision is not None))

    def _add(self, kind: str, path: Path, sink):
        self.outputs[kind] = path
        return self._attach(sink)

    def _attach(self, sink):
        self._stack.callback(lambda: sink in self._sinks and self._close_sink(sink))
        self._sinks.append(sink)
        return sink

    def stream_state(self, up: bool) -> None:
        """A live stream went up or down (its reconnects): outputs that publish a state follow."""
        for sink in self._state_sinks:
            if sink in self._sinks:
                sink.state(up)

    def _write_tracks(self, path: Path) -> None:
        """The tracker's back-filled history as a MOTChallenge file (frame = source index + 1, bridged gaps
        filled by interpolation, as ``streamseg track`` writes them)."""
        history = self.tracker.history(max_gap=None)
        rows = MotRows.concatenate(MotRows.from_detections(index, dets) for index, dets in history)
        try:
            write_mot(path, rows[np.lexsort((rows.ids, rows.frames))])
        except StreamsegError as err:
            self._record(None, err)

    # -- steps --------------------------------------------------------------------------------------------------------

    def track(self, result: FrameResult) -> list[FrameResult]:
        """One tracker step; returns the results whose ids are settled (up to ``lookahead`` frames later)."""
        if self.tracker is None:
            return [result]
        frame = result.frame
        if result.predicted:  # model.detect_interval: a frame the model skipped, filled by the tracker's prediction
            detections = self.tracker.predict(frame.index, frame.time, image_size=(frame.height, frame.width))
        else:
            detections = self.tracker.update(result.detections, frame.index, frame.time, keep_all=True,
                                             image_size=(frame.height, frame.width))
        self._pending.append(replace(result, detections=detections))
        ready = []
        while len(self._pending) > self.lookahead:
            ready.append(self._settled(self._pending.popleft()))
        return ready

    def finish(self) -> list[FrameResult]:
        """The results still held back for the tracker's lookahead, at the end of the stream (events applied)."""
        return [self.events(result) for result in self._settled_pending()]

    def events(self, result: FrameResult) -> FrameResult:
        """The rules on the confirmed tracks: ``events`` (each also logged, one line) and zone ``occupancy``."""
        if self.engine is None:
            return result
        found = tuple(self.engine.update(result.frame, result.detections.tracked()))
        for event in found if self.log_events else ():
            event_log.info("%s", describe_event(event))
        return replace(result, events=found, occupancy=self.engine.occupancy)

    def analyze(self, result: FrameResult) -> list[FrameResult]:
        """``track`` then ``events``: the results ready to write."""
        return [self.events(ready) for ready in self.track(result)]

    def write(self, result: FrameResult) -> None:
        """Every output gets ``result``; one that fails is dropped (see the module docstring)."""
        for sink in list(self._sinks):
            try:
                sink.write(result)
            except Exception as err:  # noqa: BLE001 - any failure of one output must not stop the others
                self._failed(sink, err)
        self.processed += 1

    def _failed(self, sink, err: BaseException) -> None:
        self._sinks.remove(sink)
        self._close_sink(sink)  # finalize what it has: a video with the frames written so far
        self._record(sink, err)

    def _close_sink(self, sink) -> None:
        try:
            sink.close()
        except Exception as err:  # noqa: BLE001 - recorded, the other outputs still close
            self._record(sink, err)

    def _record(self, sink, err: BaseException) -> None:
        """Keep ``err``'s one line (once per output); live streams also log it at once, since their run has no end
        to report it at."""
        path = getattr(sink, "path", None) or getattr(sink, "folder", None)
        if any(str(path) in line for line in self.errors if path is not None):
            return  # its close after a failed write fails the same way: one line per output
        message = str(err) if isinstance(err, StreamsegError) else f"{path}: {type(err).__name__}: {err}"
        message = " ".join(message.split())
        self.errors.append(message)
        if self.live:
            log.error("output_failed source=%s error=%s (the other outputs go on)", self.source_id, message)

    @property
    def exhausted(self) -> bool:
        """Every output has failed: feeding more results would only run the model for nothing."""
        return bool(self.errors) and not self._sinks and "tracks" not in self.outputs

    def restart(self, width: int, height: int) -> None:
        """A new picture size (a camera reconnected at another resolution): identities and zone geometry start
        again at that size; the outputs go on."""
        if self.tracker is not None:
            self._pending.clear()
            self.tracker.reset()
        if self.engine is not None:
            self.engine = EventEngine.from_config(self.config.events, width, height)

    # -- as graph nodes -------------------------------------------------------------------------------------------

    def stages(self, on_written: Callable[[FrameResult], None] | None = None,
               on_exhausted: Callable[[], None] | None = None) \
            -> list[tuple[str, Callable[[Iterable[FrameResult]], Iterator[FrameResult]]]]:
        """``(name, function)`` graph nodes after ``detect``: ``track`` and ``events`` where configured, then
        ``write``. Once :attr:`exhausted`, ``write`` calls ``on_exhausted`` (once: stop the source) and passes
        nothing on."""
        stages = []
        if self.tracker is not None:
            def track(results):
                for result in results:
                    yield from self.track(result)
                yield from self._settled_pending()

            stages.append(("track", track))
        if self.engine is not None:
            stages.append(("events", lambda results: map(self.events, results)))

        def write(results):
            told = False
            for result in results:
                if self.exhausted:
                    if not told and on_exhausted is not None:
                        on_exhausted()
                    told = True
                    continue  # the queued results have nowhere to go
                self.write(result)
                if on_written is not None:
                    on_written(result)
                yield result

        stages.append(("write", write))
        return stages

    def _settled_pending(self) -> list[FrameResult]:
        ready = [self._settled(result) for result in self._pending]
        self._pending.clear()
        return ready

    def _settled(self, result: FrameResult) -> FrameResult:
        return replace(result, detections=self.tracker.resolve(result.detections))

    # -- lifetime -------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Finish every output (idempotent): videos finalized, files flushed, the tracks file written. An output
        that cannot be finished adds its line to :attr:`errors` instead of raising."""
        self._stack.close()

    def __enter__(self) -> "StreamProcessor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ModelRunner:
    """What file runs and camera runs share: one model for all their streams, loaded once, closed with the
    runner (use it as a context manager)."""

    def __init__(self, config: PipelineConfig, backend=None):
        from streamseg.models import build_backend  # torch: only where a model is built

        self.config = config
        self.backend = backend if backend is not None else build_backend(config.model, config.backend)
        log.info("model: %s backend, weights %s", self.backend.name, getattr(self.backend, "origin", "?"))
        warn_unknown_event_classes(config, self.backend.class_names)
        self._used_ids: set[str] = set()
        self.shared = RunOutputs(config)
        """The event store and MQTT publisher its streams share (``shared.mqtt``: ``delivered``, ``dropped``)."""

    def unique_id(self, name: str) -> str:
        """``name``, or ``name-2``, ``name-3``...: two streams of a run with the same name must not write to the
        same outputs."""
        candidate, n = name, 1
        while candidate in self._used_ids:
            n += 1
            candidate = f"{name}-{n}"
        self._used_ids.add(candidate)
        return candidate

    def close(self) -> None:
        try:
            self.backend.close()
        finally:
            self.shared.close()  # after the streams: buffered events sent to MQTT, queued ones stored

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def error_line(errors: Sequence[str]) -> str:
    """A stream's output errors as one line: the first in full, the others by count."""
    more = f" (and {len(errors) - 1} more output{'s' if len(errors) > 2 else ''} failed)" if len(errors) > 1 else ""
    return errors[0] + more


def vocabulary(class_names: Sequence[str]) -> tuple[str, ...]:
    """A model's real class names: without the background and COCO's unused ``N/A`` slots, each once."""
    skip = {"", "__background__", "background", "N/A"}
    return tuple(dict.fromkeys(name for name in class_names if name not in skip))


def warn_unknown_event_classes(config: PipelineConfig, class_names: Sequence[str]) -> None:
    """One warning line naming the classes that event rules ask for and the model does not know (a COCO pipeline
    with the demo model: truck, bus); nothing for a model without classes (``backend = none``)."""
    known = vocabulary(class_names)
    unknown = config.events.unknown_classes(known) if known and config.events.enabled else {}
    if unknown:
        named = "; ".join(f"{rule}: {', '.join(classes)}" for rule, classes in unknown.items())
        log.warning("event rules name classes the model does not know (%s); it knows %s", named, ", ".join(known))


def annotated_video(config: PipelineConfig, info: SourceInfo, path: Path, engine: EventEngine | None = None,
                    **options) -> VideoSink:
    """The annotated-video sink of a stream (with the event rules' zones and lines drawn); ``options`` go to
    :class:`VideoSink` (a cluster's chunk encoders pass the stream's time origin)."""
    sinks = config.sinks
    return VideoSink(path, info, codec=sinks.codec, preset=sinks.preset, crf=sinks.crf,
                     annotator=Annotator(overlays=overlays_of(engine)), **options)


def overlays_of(engine: EventEngine | None) -> list[Overlay]:
    """The rules' zones, lines (arrows A -> B: "in" is to their right) and ego lane, for the annotated video."""
    if engine is None:
        return []
    overlays = [Overlay(z.name, z.config.polygon) for z in engine.zones]
    overlays += [Overlay(line.name, line.config.points, "arrow") for line in engine.lines]
    overlays += [Overlay(r.name, r.config.ego_lane) for r in engine.rules if isinstance(r, CollisionRule)]
    return overlays
