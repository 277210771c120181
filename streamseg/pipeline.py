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
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from tqdm import tqdm

from streamseg.config import PipelineConfig
from streamseg.errors import ConfigError, output_error
from streamseg.graph import GraphReport, Node, Pipeline
from streamseg.models import Backend
from streamseg.sources import open_source
from streamseg.stream import ModelRunner, StreamProcessor
from streamseg.types import Detections, Frame, FrameResult, SourceInfo

log = logging.getLogger(__name__)


@dataclass
class SourceRun:
    """What one source's run produced."""

    source_id: str
    info: SourceInfo
    outputs: dict[str, Path] = field(default_factory=dict)
    report: GraphReport | None = None
    skipped: list[Path] = field(default_factory=list)
    """Image sources: the unreadable images that were left out (each also logged as a warning)."""
    errors: list[str] = field(default_factory=list)
    """One line per output that failed; the others kept writing (:mod:`streamseg.stream`)."""
    stopped_by_errors: bool = False
    """Every output failed, so the source was stopped early."""

    @property
    def frames_written(self) -> int:
        return self.report.stages[-1].items_out if self.report else 0

    @property
    def interrupted(self) -> bool:
        """Stopped by :meth:`Runner.stop` or a signal (not by failed outputs)."""
        return bool(self.report and self.report.interrupted) and not self.stopped_by_errors


def detect_stage(backend: Backend, batch_size: int, interval: int = 1, start: int = 0) \
        -> Callable[[Iterable[Frame]], Iterator[FrameResult]]:
    """Frames in, results out; batches frames that are already waiting, never waits to fill a batch. With
    ``interval`` N > 1 (``model.detect_interval``) only every N-th frame goes to the model (see
    :func:`detect_every`), counted from the source's first frame: ``start`` is how many frames of the source come
    before these (a cluster's chunk)."""

    def detect(frames) -> Iterator[FrameResult]:
        count = start
        for first in frames:
            batch = [first, *frames.take_ready(batch_size - 1)] if batch_size > 1 else [first]
            yield from detect_every(backend, batch, [(count + k) % interval == 0 for k in range(len(batch))])
            count += len(batch)

    return detect


def detect_every(backend: Backend, frames: list[Frame], run_model: list[bool]) -> list[FrameResult]:
    """The model's results for the frames flagged in ``run_model`` (one forward for all of them); the other frames
    never reach the model: they pass as empty results marked ``predicted``, which the track step fills with the
    tracker's predictions (:meth:`~streamseg.stream.StreamProcessor.track`)."""
    found = iter(backend.predict([f for f, run in zip(frames, run_model) if run]) if any(run_model) else ())
    return [FrameResult(frame, next(found)) if run else
            FrameResult(frame, Detections.empty(backend.class_names), predicted=True)
            for frame, run in zip(frames, run_model)]


class Runner(ModelRunner):
    """Runs sources through one shared model into per-source outputs under ``config.output_dir``."""

    def __init__(self, config: PipelineConfig, backend: Backend | None = None, *, progress: bool = False):
        super().__init__(config, backend)
        self.progress = progress
        self._pipeline: Pipeline | None = None

    def stop(self, drain: bool = True) -> None:
        """Stop the source being processed (thread-safe): queued frames drain unless ``drain`` is False."""
        if self._pipeline is not None:
            self._pipeline.stop(drain=drain)

    def process(self, uri: str, *, source_id: str | None = None, handle_signals: bool = False,
                config: PipelineConfig | None = None) -> SourceRun:
        """Process one source to the end (or until stopped). Outputs written so far stay valid on any error.
        ``source_id`` names the outputs (default: the file or folder name); ``config``: this source's own pipeline
        (its ``[[sources]]`` zones and lines, :func:`~streamseg.config.config_for_camera`; default: the runner's)."""
        cfg = config or self.config
        out_dir = Path(cfg.output_dir)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # a file in the way, no permission: one line, not a traceback
            raise output_error(out_dir, err, action="create the output folder") from err
        with ExitStack() as stack:
            kwargs = cfg.source.source_kwargs() | ({"source_id": source_id} if source_id else {})
            source = stack.enter_context(open_source(uri, **kwargs))
            info = source.info
            run = SourceRun(self.unique_id(info.source_id), info)
            earlier = [out_dir / f"{run.source_id}{suffix}" for suffix in OUTPUT_SUFFIXES]
            earlier = [path for path in earlier if path.exists()]
            images = source.names if info.is_image_sequence else None  # each frame's file, as outputs name it
            stream = stack.enter_context(StreamProcessor(cfg, info, self.backend.class_names, out_dir,
                                                         images=images, source_id=run.source_id,
                                                         shared=self.shared))
            run.outputs = stream.outputs
            if not run.outputs and stream.engine is None:  # (event rules still log their events)
                raise ConfigError(f"{run.source_id}: nothing to write: every output for this source is switched off "
                                  f"([sinks], --no-video, --no-detections)")
            remove_stale(run.source_id, run.outputs, earlier)
            bar = stack.enter_context(_progress_bar(info, enabled=self.progress))
            graph = cfg.graph
            if graph.policy != "block":
                log.info("%s: graph.policy = %s applies to live sources only; every frame of a file is processed",
                         run.source_id, graph.policy)
            nodes = [
                Node("decode", lambda _: iter(source)),
                Node("detect", detect_stage(self.backend, cfg.model.batch_size, cfg.model.detect_interval),
                     graph.queue_size, "block"),
            ]
            def outputs_exhausted():  # every output failed: nothing more to decode for
                run.stopped_by_errors = True
                self.stop(drain=False)

            nodes += [Node(name, stage, graph.queue_size, "block")
                      for name, stage in stream.stages(lambda _: bar.update(1), outputs_exhausted)]
            self._pipeline = Pipeline(nodes)
            try:
                run.report = self._pipeline.run(handle_signals=handle_signals)
            finally:
                self._pipeline = None
                stream.close()  # before reading its errors: the tracks file is written on close
                run.errors = list(stream.errors)
            if not run.report.interrupted and not run.errors and bar.total is not None and bar.n != bar.total:
                bar.total = bar.n  # the container's frame count was an estimate: a finished source ends at 100%
                bar.refresh()
            if info.is_image_sequence:
                run.skipped = list(source.skipped)
        return run



OUTPUT_SUFFIXES = (".mp4", ".detections.jsonl", ".coco.json", ".coco.categories.json", ".tracks.txt",
                   ".events.jsonl", ".zone_counts.csv", ".summary.png")
"""What :meth:`Runner.process` may write per source, after the source id."""


def remove_stale(source_id: str, outputs: dict[str, Path], earlier: list[Path]) -> None:
    """An earlier run's outputs of this source that this run does not write are removed (a tracks file next to a
    new video would describe another run); one line says what was replaced and what was removed."""
    written = set(outputs.values())
    stale = [path for path in earlier if path not in written]
    for path in stale:
        path.unlink(missing_ok=True)
    if earlier:
        replaced = [path.name for path in earlier if path in written]
        log.info("%s: outputs of an earlier run in %s: replaced %s; removed %s (not written by this run)",
                 source_id, earlier[0].parent, ", ".join(replaced) or "none",
                 ", ".join(path.name for path in stale) or "none")




def _progress_bar(info: SourceInfo, enabled: bool) -> tqdm:
    """frames done / total, fps and ETA on stderr; total unknown for containers without a frame count."""
    return tqdm(
        total=info.frame_count, desc=info.source_id, unit="frame", disable=not enabled, dynamic_ncols=True,
        smoothing=0.1,
    )
