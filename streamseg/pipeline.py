"""Composition: the one place where sources, models and sinks meet.

Each source runs as a three-stage graph, ``decode -> detect -> write``, joined by bounded queues; the model is
built once and shared by the sources of a run, which are processed one after another.

>>> from streamseg.config import build_config
>>> with Runner(build_config({"model": {"weights": "model.pth"}})) as runner:  # doctest: +SKIP
...     result = runner.process("clip.mp4")
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from tqdm import tqdm

from streamseg.config import PipelineConfig
from streamseg.graph import GraphReport, Node, Pipeline
from streamseg.models import Backend, build_backend
from streamseg.sinks import Annotator, CocoResultsSink, DetectionsJsonlSink, VideoSink, coco_image_id_from_filename
from streamseg.sources import open_source
from streamseg.types import Frame, FrameResult, SourceInfo

log = logging.getLogger(__name__)


@dataclass
class SourceRun:
    """What one source's run produced."""

    source_id: str
    info: SourceInfo
    outputs: dict[str, Path] = field(default_factory=dict)
    report: GraphReport | None = None

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
        out_dir.mkdir(parents=True, exist_ok=True)
        with ExitStack() as stack:
            kwargs = _source_kwargs(cfg) | ({"source_id": source_id} if source_id else {})
            source = stack.enter_context(open_source(uri, **kwargs))
            info = source.info
            run = SourceRun(self._unique_id(info.source_id), info)
            sinks = []
            if cfg.sinks.video:
                run.outputs["video"] = out_dir / f"{run.source_id}.mp4"
                sinks.append(stack.enter_context(VideoSink(
                    run.outputs["video"], info, codec=cfg.sinks.codec, preset=cfg.sinks.preset, crf=cfg.sinks.crf,
                    annotator=Annotator(),
                )))
            if cfg.sinks.detections:
                run.outputs["detections"] = out_dir / f"{run.source_id}.detections.jsonl"
                sinks.append(stack.enter_context(DetectionsJsonlSink(run.outputs["detections"], info)))
            if cfg.sinks.coco and info.is_image_sequence:
                run.outputs["coco"] = out_dir / f"{run.source_id}.coco.json"
                paths = source.paths
                sinks.append(stack.enter_context(CocoResultsSink(
                    run.outputs["coco"], info, image_ids=lambda index: coco_image_id_from_filename(paths[index])
                )))
            bar = stack.enter_context(_progress_bar(info, enabled=self.progress))
            graph = cfg.graph
            self._pipeline = Pipeline([
                Node("decode", lambda _: iter(source)),
                Node("detect", detect_stage(self.backend, cfg.model.batch_size), graph.queue_size, graph.policy),
                Node("write", write_stage(sinks, lambda _: bar.update(1)), graph.queue_size, "block"),
            ])
            try:
                run.report = self._pipeline.run(handle_signals=handle_signals)
            finally:
                self._pipeline = None
        return run

    def _unique_id(self, source_id: str) -> str:
        """Two sources with the same stem must not overwrite each other's outputs."""
        candidate, n = source_id, 1
        while candidate in self._used_ids:
            n += 1
            candidate = f"{source_id}-{n}"
        self._used_ids.add(candidate)
        return candidate


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
