"""Composition for live cameras: many streams in one process, one model, bounded latency.

Each camera is a :class:`~streamseg.sources.LiveSource` whose reader thread keeps only its freshest frame. The
graph is ``detect -> analyze -> write``:

- ``detect`` pulls, whenever the model is free, the freshest frame of every stream that has a new one (round
  robin) and runs them as one batch (``live.cross_stream_batching``; off: one frame per forward). It never waits
  on a particular camera, so a camera that is down or slow cannot stall the others;
- ``analyze`` routes each result to its stream's own tracker and event rules (state never crosses streams; a new
  resolution after a reconnect rebuilds them);
- ``write`` routes to the stream's own sinks and records the capture-to-result latency; a failing sink disables
  that stream's outputs, not the run.

Outputs per stream ``<id>`` under ``output_dir``: ``<id>/annotated/*.mp4`` (the annotated video in files of
``segment_minutes``, default 10), ``<id>.detections.jsonl``,
``<id>.events.jsonl`` and ``<id>.zone_counts.csv`` (with events), ``<id>.streams.jsonl`` (``stream_up`` /
``stream_down`` / ``stream_failed``, schema ``streamseg.stream_events/1``), ``<id>/segments/*.mp4`` (rolling
recording) and ``<id>/clips/*.mp4`` (event clips). Trackers keep no history here (tracks file and summary are off):
memory stays flat for weeks.

``LiveRunner(resume=True)`` continues a camera's earlier outputs instead of replacing them (a camera process that
was restarted, :mod:`streamseg.cluster.cameras`): the JSONL and CSV files are appended to (a torn last line cut
off first), and frame indices and stream time go on after the last written frame (:func:`resume_point`), so the
files never hold a frame index twice. Track ids start again: the tracker's state was in the lost process.
"""

from __future__ import annotations

import json
import logging
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Iterator, Mapping, Sequence

from streamseg.config import PipelineConfig
from streamseg.errors import ConfigError, SourceError, StreamsegError
from streamseg.graph import GraphReport, Node, Pipeline
from streamseg.graph.exporter import LiveMetrics, MetricsServer, StreamSample
from streamseg.models import Backend
from streamseg.pipeline import detect_every
from streamseg.redact import redact
from streamseg.sinks.base import appending, last_line
from streamseg.sinks.recording import EventClipper, SegmentRecorder
from streamseg.sources import LiveSource, Reconnect, StreamStatus, live_source_id
from streamseg.stream import ModelRunner, StreamProcessor, error_line
from streamseg.types import Frame, FrameResult

log = logging.getLogger(__name__)
event_log = logging.getLogger("streamseg.events")



@dataclass
class StreamRun:
    """One stream's state and outputs in a live run."""

    source_id: str
    source: LiveSource
    outputs: dict[str, Path] = field(default_factory=dict)
    statuses: list[StreamStatus] = field(default_factory=list)
    processed: int = 0
    failed: str | None = None
    """Why the stream ended early (reconnect attempts exhausted, a sink failed), redacted; None if it did not."""
    processor: StreamProcessor | None = None
    """Tracker, event rules and outputs (:mod:`streamseg.stream`), built once the stream is up."""
    clipper: EventClipper | None = None
    size: tuple[int, int] | None = None
    status_file: object = None
    ready: bool = False
    """Outputs built: the model takes this stream's frames (a camera that was down at start is not ready yet)."""
    gave_up: bool = False


@dataclass
class LiveRun:
    """What :meth:`LiveRunner.run` returns."""

    streams: dict[str, StreamRun]
    report: GraphReport | None = None
    latencies: list[float] = field(default_factory=list)
    """Capture-to-result seconds of the most recent results (bounded)."""
    stopped: bool = False
    """:meth:`LiveRunner.stop` (or a signal) ended the run, rather than every stream ending by itself."""

    @property
    def interrupted(self) -> bool:
        return self.stopped or bool(self.report and self.report.interrupted)


class LiveRunner(ModelRunner):
    """Runs live streams through one shared model; see the module docstring.

    >>> with LiveRunner(build_config({"live": {"metrics_port": 9100}})) as runner:  # doctest: +SKIP
    ...     run = runner.run(["rtsp://cam1/stream", "rtsp://cam2/stream"], handle_signals=True)
    """

    def __init__(self, config: PipelineConfig, backend: Backend | None = None, *,
                 on_result: Callable[[FrameResult, float], None] | None = None, resume: bool = False):
        super().__init__(config, backend)
        self.on_result = on_result
        """Called from the write stage with each result and its capture-to-result latency (benches, tests)."""
        self.resume = resume
        """Continue each stream's existing outputs (see the module docstring) instead of replacing them."""
        self.metrics_server: MetricsServer | None = None
        self._pipeline: Pipeline | None = None
        self._stopping = threading.Event()
        self._stop_lock = threading.Lock()
        self._streams: dict[str, StreamRun] = {}
        self._status_lock = threading.Lock()
        self._late_lock = threading.Lock()
        self.ready = threading.Event()
        """Set once every stream is connected and the graph runs (tests and benches wait on it)."""

    @property
    def streams(self) -> Mapping[str, StreamRun]:
        """The current (or last) run's streams by source id, read-only: their ``processed`` counts, ``source``
        (``up``, ``reconnects``, ``dropped``), ``statuses``, ``outputs`` and ``failed``, for monitoring."""
        return MappingProxyType(self._streams)

    def stop(self, drain: bool = True) -> None:
        """End the run from any thread: the first call lets results in flight finish, a second one aborts."""
        with self._stop_lock:
            again = self._stopping.is_set()
            self._stopping.set()
            pipeline = self._pipeline
        if pipeline is not None:
            pipeline.stop(drain=drain and not again)

    def run(self, uris: Sequence[str], *, handle_signals: bool = False,
            source_ids: Sequence[str] | None = None) -> LiveRun:
        """Connect to every stream (concurrently), then process until stopped or every stream has ended.
        ``source_ids``: the streams' ids (default: :func:`~streamseg.sources.live_source_id` of each URL)."""
        cfg = self.config
        out_dir = Path(cfg.output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self._stopping.clear()
        wakeup = threading.Event()
        if source_ids is not None and len(source_ids) != len(uris):
            raise ValueError("source_ids: one per URL")
        with ExitStack() as stack:
            streams = self._open_streams(uris, wakeup, out_dir, stack, source_ids)
            self._streams = streams
            run = LiveRun(streams)
            metrics = LiveMetrics(lambda: {sid: _sample(s.source) for sid, s in streams.items()},
                                  lambda: self._stage_samples())
            if cfg.live.metrics_port is not None:
                host, port = cfg.live.metrics_host, cfg.live.metrics_port
                try:
                    self.metrics_server = stack.enter_context(MetricsServer(metrics, self._health, host=host,
                                                                            port=port))
                except OSError as err:
                    raise ConfigError(f"live.metrics_port: cannot listen on {host}:{port} "
                                      f"({err.strerror or err})") from None
                if host not in ("127.0.0.1", "localhost", "::1"):
                    log.warning("metrics_exposed host=%s: /metrics and /healthz are reachable from the network",
                                host)
                log.info("metrics: %s/metrics and %s/healthz", self.metrics_server.url, self.metrics_server.url)
            batch = len(streams) if cfg.live.cross_stream_batching else 1
            q = cfg.graph.queue_size
            self._pipeline = Pipeline([
                Node("detect", self._detect_stage(list(streams.values()), wakeup, batch)),
                Node("analyze", self._analyze_stage(streams, metrics), q, "block"),
                Node("write", self._write_stage(streams, metrics, run), q, "block"),
            ])
            self.ready.set()
            try:
                with signals_call(self.stop, handle_signals):
                    run.report = self._pipeline.run()
            finally:
                with self._stop_lock, self._late_lock:
                    self._pipeline = None
                    run.stopped = self._stopping.is_set()
                    self._stopping.set()  # ends background connection attempts before the sources close
                self.ready.clear()
        for stream in streams.values():
            if stream.failed is None and stream.source.failure is not None:
                stream.failed = str(stream.source.failure)
        return run

    # -- set-up -----------------------------------------------------------------------------------------------------

    def _open_streams(self, uris: Sequence[str], wakeup: threading.Event, out_dir: Path,
                      stack: ExitStack, source_ids: Sequence[str] | None = None) -> dict[str, StreamRun]:
        live = self.config.live
        if self.config.source.stride != 1:
            raise ConfigError("source.stride: live streams keep the freshest frame; use source.target_fps "
                              "(--target-fps) to process fewer frames per second")
        streams: dict[str, StreamRun] = {}
        sources: list[tuple[StreamRun, LiveSource]] = []
        self._used_ids.clear()  # ids name this run's outputs
        for k, uri in enumerate(uris):
            sid = self.unique_id(source_ids[k] if source_ids is not None else live_source_id(uri))
            first_index, first_time = resume_point(out_dir, sid) if self.resume else (0, 0.0)
            if first_index:
                log.info("stream_resumed source=%s frame=%d time=%.3f", sid, first_index, first_time)
            holder: dict = {}
            taps = []
            if live.segment_minutes:
                taps.append(SegmentRecorder(out_dir / sid / "segments", sid, live.segment_minutes * 60,
                                            keep=live.keep_segments))
            clipper = EventClipper(out_dir / sid / "clips", sid, live.clip_pre, live.clip_post) if live.clips \
                else None
            if clipper is not None:
                taps.append(clipper)
            source = LiveSource(
                uri, source_id=sid, transport=live.transport, connect_timeout=live.connect_timeout,
                read_timeout=live.read_timeout, connect_attempts=live.connect_attempts,
                reconnect=Reconnect(live.reconnect_initial, live.reconnect_max, max_attempts=live.max_attempts),
                buffer=live.buffer, on_status=lambda status, h=holder: self._on_status(h["run"], status),
                taps=taps, wakeup=wakeup, max_frames=self.config.source.max_frames, first_index=first_index,
                first_time=first_time,
            )
            stream = StreamRun(sid, source, clipper=clipper)
            holder["run"] = stream
            streams[sid] = stream
            sources.append((stream, source))
            for tap in taps:
                stack.callback(tap.close)
            stream.outputs["streams"] = out_dir / f"{sid}.streams.jsonl"
            stream.status_file = stack.enter_context(open(stream.outputs["streams"], "a", encoding="utf-8"))
            if live.segment_minutes:
                stream.outputs["segments"] = out_dir / sid / "segments"
            if clipper is not None:
                stream.outputs["clips"] = out_dir / sid / "clips"
        # Connect concurrently: startup takes as long as the slowest camera, not the sum of them.
        with ThreadPoolExecutor(max_workers=len(sources)) as pool:
            futures = [pool.submit(source.open) for _, source in sources]
            errors: dict[str, BaseException] = {}
            for (stream, source), future in zip(sources, futures):
                try:
                    future.result()
                except SourceError as err:  # reported below, after every source was tried
                    errors[stream.source_id] = err
                stack.callback(source.close)  # LIFO: sources close before the sinks that receive their packets
        if errors and len(errors) == len(streams):  # nothing to run: a one-line error
            first = next(iter(errors.values()))
            raise first if isinstance(first, StreamsegError) else SourceError(redact(str(first)))
        late = []
        for stream in streams.values():
            if stream.source_id not in errors:
                self._build_outputs(stream, stream.source.info.width, stream.source.info.height, out_dir, stack)
                stream.ready = True
                continue
            # One camera is off at start: the others run, this one keeps being tried in the background.
            reason = redact(str(errors[stream.source_id]), stream.source.secrets)
            log.error("stream_connect_failed source=%s reason=%s (retrying in the background)",
                      stream.source_id, reason)
            self._on_status(stream, StreamStatus("stream_down", stream.source_id, time.time(), reason=reason,
                                                 attempts=live.connect_attempts))
            thread = threading.Thread(target=self._open_later, args=(stream, out_dir, stack),
                                      name=f"streamseg:connect:{stream.source_id}", daemon=True)
            thread.start()
            late.append(thread)
        if late:
            # runs before the sources are closed (LIFO), once the run has ended (self._stopping is set then)
            stack.callback(lambda: [thread.join() for thread in late])
            stack.callback(self._stopping.set)  # also when the run fails before it starts
        return streams

    def _open_later(self, stream: StreamRun, out_dir: Path, stack: ExitStack) -> None:
        """Keep trying to open a stream that was down at start; build its outputs once it is up."""
        source, rng = stream.source, random.Random()
        attempt = 0
        while True:
            attempt += 1
            if self._stopping.wait(source.reconnect.delay(attempt, rng)):
                return
            try:
                source.open()
            except SourceError as err:
                reason = redact(str(err), source.secrets)
                log.info("stream_connect_failed source=%s attempt=%d reason=%s", stream.source_id, attempt, reason)
                if source.reconnect.max_attempts is not None and attempt >= source.reconnect.max_attempts:
                    stream.failed = f"never connected: {reason}"
                    stream.gave_up = True
                    self._on_status(stream, StreamStatus("stream_failed", stream.source_id, time.time(),
                                                         reason=reason, attempts=attempt))
                    return
                continue
            with self._late_lock:
                if self._stopping.is_set():
                    return  # the run is over; the source is closed with the others
                info = source.info
                self._build_outputs(stream, info.width, info.height, out_dir, stack)
                stream.ready = True
            return

    def _build_outputs(self, stream: StreamRun, width: int, height: int, out_dir: Path, stack: ExitStack) -> None:
        stream.size = (width, height)
        with appending(self.resume):  # in this thread only: what StreamProcessor opens continues the files
            processor = StreamProcessor(self.config, stream.source.info, self.backend.class_names, out_dir, live=True,
                                        source_id=stream.source_id)
        stream.processor = stack.enter_context(processor)
        stream.outputs.update(stream.processor.outputs)

    # -- stages -----------------------------------------------------------------------------------------------------

    def _detect_stage(self, streams: list[StreamRun], wakeup: threading.Event, batch_size: int):
        backend, stopping = self.backend, self._stopping
        target_fps = self.config.source.target_fps
        period = 1.0 / target_fps if target_fps else 0.0
        due = {id(stream): 0.0 for stream in streams}  # wall clock before which a stream is not processed again
        interval = self.config.model.detect_interval
        counts = {id(stream): 0 for stream in streams}  # frames processed per stream: the model sees every interval-th

        def detect(_) -> Iterator[FrameResult]:
            start = 0
            while not stopping.is_set():
                wakeup.clear()
                batch: list[Frame] = []
                streams_of: list[StreamRun] = []
                now = time.time()
                for k in range(len(streams)):  # round robin: every camera gets its turn
                    stream = streams[(start + k) % len(streams)]
                    if not stream.ready or now < due[id(stream)]:
                        continue  # source.target_fps: its frames wait, and fresher ones replace them (dropped)
                    frame = stream.source.take_latest()
                    if frame is not None:
                        due[id(stream)] = now + period * 0.95 if period else 0.0
                        batch.append(frame)
                        streams_of.append(stream)
                        if len(batch) >= batch_size:
                            start = (start + k + 1) % len(streams)
                            break
                else:
                    start = (start + 1) % len(streams)
                if not batch:
                    if all(s.source.finished or s.gave_up for s in streams):
                        return
                    wakeup.wait(0.05)
                    continue
                if interval == 1:
                    for frame, detections in zip(batch, backend.predict(batch)):
                        yield FrameResult(frame, detections)
                    continue
                run_model = []
                for frame, stream in zip(batch, streams_of):
                    run_model.append(counts[id(stream)] % interval == 0)
                    counts[id(stream)] += 1
                yield from detect_every(backend, batch, run_model)

        return detect

    def _analyze_stage(self, streams: dict[str, StreamRun], metrics: LiveMetrics):
        def analyze(results) -> Iterator[FrameResult]:
            for result in results:
                stream = streams[result.frame.source_id]
                frame = result.frame
                if (frame.width, frame.height) != stream.size:
                    # a new resolution after a reconnect: identities and zone geometry start again at that size
                    log.info("stream_resized source=%s size=%dx%d", stream.source_id, frame.width, frame.height)
                    stream.size = (frame.width, frame.height)
                    stream.processor.restart(frame.width, frame.height)
                for ready in stream.processor.analyze(result):  # live: no lookahead, one result out
                    for event in ready.events:
                        metrics.event(stream.source_id, event.kind)
                        if stream.clipper is not None:
                            stream.clipper.trigger(event.wall_time, f"{event.kind}-{event.region}-{event.track_id}")
                    yield ready

        return analyze

    def _write_stage(self, streams: dict[str, StreamRun], metrics: LiveMetrics, run: LiveRun):
        on_result = self.on_result

        def write(results) -> Iterator[FrameResult]:
            for result in results:
                stream = streams[result.frame.source_id]
                processor = stream.processor
                processor.write(result)  # a failing output is logged and dropped there; the others go on
                if processor.errors:
                    stream.failed = redact(error_line(processor.errors), stream.source.secrets)
                latency = time.time() - result.frame.capture_time
                stream.processed += 1
                metrics.result(stream.source_id, latency)
                run.latencies.append(latency)
                if len(run.latencies) > 100_000:
                    del run.latencies[:50_000]
                if on_result is not None:
                    on_result(result, latency)
                yield result

        return write

    # -- status, health, metrics ----------------------------------------------------------------------------------

    def _on_status(self, stream: StreamRun, status: StreamStatus) -> None:
        with self._status_lock:
            stream.statuses.append(status)
            if len(stream.statuses) > 1000:
                del stream.statuses[:500]
            stream.status_file.write(json.dumps(status.record()) + "\n")
            stream.status_file.flush()
        event_log.info("%s %s%s", status.kind, status.source_id, f" ({status.reason})" if status.reason else "")

    def _health(self) -> tuple[bool, dict]:
        now = time.time()
        details = {}
        for sid, stream in self._streams.items():
            source = stream.source
            age = None if source.last_frame_wall is None else round(now - source.last_frame_wall, 3)
            details[sid] = {"up": source.up, "last_frame_age_s": age, "processed": stream.processed,
                            "reconnects": source.reconnects, "failed": stream.failed}
        ok = self._pipeline is not None and not self._stopping.is_set()
        return ok, {"streams": details}

    def _stage_samples(self):
        pipeline = self._pipeline
        if pipeline is None:
            return []
        return [(s.name, s.queue_depth, s.dropped) for s in pipeline.metrics()]


def resume_point(out_dir: Path, source_id: str, now: float | None = None) -> tuple[int, float]:
    """Where a restarted camera's outputs go on: the frame index after the last one written to its detections,
    events or zone-count file, and a stream time after that frame's by the wall-clock time since the file was
    last written (as across a reconnect). ``(0, 0.0)`` when none of them holds a frame."""
    now = time.time() if now is None else now
    last: tuple[int, float, float] | None = None  # frame, time, file's mtime
    for name in (f"{source_id}.detections.jsonl", f"{source_id}.events.jsonl", f"{source_id}.zone_counts.csv"):
        path = Path(out_dir) / name
        try:
            line = last_line(path)
            if not line:
                continue
            if name.endswith(".csv"):
                frame_text, time_text = line.split(",")[:2]
                frame, seconds = int(frame_text), float(time_text)
            else:
                record = json.loads(line)
                frame, seconds = int(record["frame"]), float(record["time"])
            mtime = path.stat().st_mtime
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a header only, or not a file of ours: nothing to continue from
        if last is None or frame > last[0]:
            last = (frame, seconds, mtime)
    if last is None:
        return 0, 0.0
    frame, seconds, mtime = last
    return frame + 1, seconds + max(1e-3, now - mtime)


def _sample(source: LiveSource) -> StreamSample:
    return StreamSample(up=source.up, received=source.received, dropped=source.dropped,
                        reconnects=source.reconnects, buffer_depth=source.buffer_depth())


@contextmanager
def signals_call(stop: Callable[[], None], enabled: bool) -> Iterator[None]:
    """SIGINT/SIGTERM call ``stop`` (first drains, second aborts) while the run lasts; main thread only."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: stop())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
