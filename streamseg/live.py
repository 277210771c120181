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

``LiveRunner(keep_running=True)`` is the always-on form (``streamseg serve``, :mod:`streamseg.service`): the run
lasts until :meth:`LiveRunner.stop` even while no camera is up, every camera is retried forever (at start too), and
:meth:`LiveRunner.add_stream` / :meth:`LiveRunner.remove_stream` change the cameras while the others run on.
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
from streamseg.errors import ConfigError, OutputError, SourceError, StreamsegError
from streamseg.graph import GraphReport, Node, Pipeline
from streamseg.graph.exporter import LiveMetrics, MetricsServer, StreamSample
from streamseg.models import Backend
from streamseg.pipeline import detect_every
from streamseg.redact import redact
from streamseg.sinks.base import LineFile, appending, last_line
from streamseg.sinks.mqtt import publish_state
from streamseg.sinks.recording import EventClipper, SegmentRecorder
from streamseg.sources import LiveSource, Reconnect, StreamStatus, live_source_id
from streamseg.stream import ModelRunner, StreamProcessor, error_line
from streamseg.types import Frame, FrameResult

log = logging.getLogger(__name__)
event_log = logging.getLogger("streamseg.events")

ALWAYS_ON_BACKOFF_MAX = 20.0
"""``keep_running``: the reconnect backoff's cap (of ``live.reconnect_max``), so that a camera that appears or
returns is picked up within 30 s even at the cap's +20 % jitter plus a connection attempt."""



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
    status_file: LineFile | None = None
    """``<id>.streams.jsonl``; None once it failed (a full disk): the states still change, only unwritten."""
    ready: bool = False
    """Outputs built: the model takes this stream's frames (a camera that was down at start is not ready yet)."""
    gave_up: bool = False
    config: PipelineConfig | None = None
    """The pipeline as this stream runs it (its own zones and lines; default: the runner's)."""
    stack: ExitStack = field(default_factory=ExitStack)
    """This stream's source, taps, status file and outputs, closed together when it ends or is removed."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held while its results are analyzed or written, and while it is closed (removal from another thread)."""
    closed: bool = False
    removed: threading.Event = field(default_factory=threading.Event)
    created: float = field(default_factory=time.time)
    """Wall time it was added: frames captured before belong to an earlier stream of the same id."""
    connector: threading.Thread | None = None
    due: float = 0.0
    """Wall clock before which it is not processed again (``source.target_fps``)."""
    count: int = 0
    """Frames taken for the model (``model.detect_interval`` counts them)."""

    def __eq__(self, other) -> bool:  # identity: two runs of one camera id are different streams
        return self is other

    __hash__ = object.__hash__


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
                 on_result: Callable[[FrameResult, float], None] | None = None, resume: bool = False,
                 keep_running: bool = False, on_status: Callable[[StreamRun, StreamStatus], None] | None = None):
        super().__init__(config, backend)
        self.on_result = on_result
        """Called from the write stage with each result and its capture-to-result latency (benches, tests)."""
        self.on_status = on_status
        """Called with each stream's status changes (``stream_up`` / ``stream_down`` / ``stream_failed``)."""
        self.resume = resume
        """Continue each stream's existing outputs (see the module docstring) instead of replacing them."""
        self.keep_running = keep_running
        """Always on (see the module docstring): run until stopped, retry every camera forever."""
        self.metrics: LiveMetrics | None = None
        self._wakeup = threading.Event()
        self._out_dir: Path | None = None
        self._streams_lock = threading.Lock()  # add/remove; readers take self._streams (replaced, never mutated)
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
            source_ids: Sequence[str] | None = None, configs: Sequence[PipelineConfig] | None = None) -> LiveRun:
        """Connect to every stream (concurrently), then process until stopped or every stream has ended
        (``keep_running``: until stopped). ``source_ids``: the streams' ids (default:
        :func:`~streamseg.sources.live_source_id` of each URL); ``configs``: each stream's own pipeline (its zones
        and lines; default: the runner's)."""
        cfg = self.config
        out_dir = self._out_dir = Path(cfg.output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self._stopping.clear()
        wakeup = self._wakeup
        if source_ids is not None and len(source_ids) != len(uris):
            raise ValueError("source_ids: one per URL")
        if configs is not None and len(configs) != len(uris):
            raise ValueError("configs: one per URL")
        with ExitStack() as stack:
            stack.callback(self._close_streams)
            streams = self._open_streams(uris, wakeup, out_dir, stack, source_ids, configs)
            run = LiveRun(streams)
            metrics = self.metrics = LiveMetrics(lambda: {sid: _sample(s.source) for sid, s in self._streams.items()},
                                                 lambda: self._stage_samples(), self.shared)
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
            q = cfg.graph.queue_size
            self._pipeline = Pipeline([
                Node("detect", self._detect_stage(wakeup)),
                Node("analyze", self._analyze_stage(metrics), q, "block"),
                Node("write", self._write_stage(metrics, run), q, "block"),
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
            run.streams = dict(self._streams)
        for stream in run.streams.values():
            if stream.failed is None and stream.source.failure is not None:
                stream.failed = str(stream.source.failure)
        return run

    # -- set-up -----------------------------------------------------------------------------------------------------

    def _open_streams(self, uris: Sequence[str], wakeup: threading.Event, out_dir: Path,
                      stack: ExitStack, source_ids: Sequence[str] | None = None,
                      configs: Sequence[PipelineConfig] | None = None) -> dict[str, StreamRun]:
        if self.config.source.stride != 1:
            raise ConfigError("source.stride: live streams keep the freshest frame; use source.target_fps "
                              "(--target-fps) to process fewer frames per second")
        self._used_ids.clear()  # ids name this run's outputs
        streams: dict[str, StreamRun] = {}
        self._streams = streams  # (filled before the graph runs: nobody else reads it yet)
        for k, uri in enumerate(uris):
            sid = self.unique_id(source_ids[k] if source_ids is not None else live_source_id(uri))
            streams[sid] = self._new_stream(uri, sid, configs[k] if configs is not None else self.config, out_dir)
        stack.callback(self._stopping.set)  # ends background connection attempts, also when the run fails to start
        if self.keep_running:  # always on: every camera connects in the background, retried forever
            for stream in streams.values():
                self._connect_later(stream, out_dir, at_once=True)
            return streams
        # Connect concurrently: startup takes as long as the slowest camera, not the sum of them.
        errors: dict[str, BaseException] = {}
        with ThreadPoolExecutor(max_workers=max(1, len(streams))) as pool:
            futures = {sid: pool.submit(stream.source.open) for sid, stream in streams.items()}
            for sid, future in futures.items():
                try:
                    future.result()
                except SourceError as err:  # reported below, after every source was tried
                    errors[sid] = err
        if errors and len(errors) == len(streams):  # nothing to run: a one-line error
            first = next(iter(errors.values()))
            raise first if isinstance(first, StreamsegError) else SourceError(redact(str(first)))
        for stream in streams.values():
            if stream.source_id not in errors:
                self._build_outputs(stream, stream.source.info.width, stream.source.info.height, out_dir)
                stream.ready = True
                continue
            # One camera is off at start: the others run, this one keeps being tried in the background.
            reason = redact(str(errors[stream.source_id]), stream.source.secrets)
            log.error("stream_connect_failed source=%s reason=%s (retrying in the background)",
                      stream.source_id, reason)
            self._on_status(stream, StreamStatus("stream_down", stream.source_id, time.time(), reason=reason,
                                                 attempts=self.config.live.connect_attempts))
            self._connect_later(stream, out_dir)
        return streams

    def _new_stream(self, uri: str, sid: str, config: PipelineConfig, out_dir: Path) -> StreamRun:
        """A stream with its source, taps and status file (not connected yet)."""
        live = self.config.live
        first_index, first_time = resume_point(out_dir, sid) if self.resume else (0, 0.0)
        if first_index:
            log.info("stream_resumed source=%s frame=%d time=%.3f", sid, first_index, first_time)
        holder: dict = {}
        taps = []
        with ExitStack() as stack:
            if live.segment_minutes:
                taps.append(SegmentRecorder(out_dir / sid / "segments", sid, live.segment_minutes * 60,
                                            keep=live.keep_segments))
                stack.callback(taps[-1].close)
            clipper = EventClipper(out_dir / sid / "clips", sid, live.clip_pre, live.clip_post) if live.clips \
                else None
            if clipper is not None:
                taps.append(clipper)
                stack.callback(clipper.close)
            status_path = out_dir / f"{sid}.streams.jsonl"
            status_file = LineFile(status_path, append=True)
            stack.callback(status_file.close)
            attempts = 1 if self.keep_running else live.connect_attempts  # always on: the connector loops
            source = LiveSource(
                uri, source_id=sid, transport=live.transport, connect_timeout=live.connect_timeout,
                read_timeout=live.read_timeout, connect_attempts=attempts,
                reconnect=Reconnect(live.reconnect_initial,
                                    min(live.reconnect_max, ALWAYS_ON_BACKOFF_MAX) if self.keep_running
                                    else live.reconnect_max,
                                    max_attempts=None if self.keep_running else live.max_attempts),
                buffer=live.buffer, on_status=lambda status, h=holder: self._on_status(h["run"], status),
                taps=taps, wakeup=self._wakeup, max_frames=self.config.source.max_frames, first_index=first_index,
                first_time=first_time,
            )
            stack.callback(source.close)  # LIFO: the source closes before the taps that receive its packets
            stream = StreamRun(sid, source, clipper=clipper, config=config, status_file=status_file,
                               stack=stack.pop_all())
        holder["run"] = stream
        stream.outputs["streams"] = status_path
        if live.segment_minutes:
            stream.outputs["segments"] = out_dir / sid / "segments"
        if clipper is not None:
            stream.outputs["clips"] = out_dir / sid / "clips"
        return stream

    def _connect_later(self, stream: StreamRun, out_dir: Path, at_once: bool = False) -> None:
        stream.connector = threading.Thread(target=self._open_later, args=(stream, out_dir, at_once),
                                            name=f"streamseg:connect:{stream.source_id}", daemon=True)
        stream.connector.start()

    def _open_later(self, stream: StreamRun, out_dir: Path, at_once: bool = False) -> None:
        """Keep trying to open a stream that is not up yet; build its outputs once it is."""
        source, rng = stream.source, random.Random()
        attempt = 0
        while True:
            attempt += 1
            delay = 0.0 if at_once and attempt == 1 else source.reconnect.delay(attempt, rng)
            if self._stopping.wait(delay) or stream.removed.is_set():
                return
            try:
                source.open()
            except SourceError as err:
                reason = redact(str(err), source.secrets)
                log.info("stream_connect_failed source=%s attempt=%d reason=%s", stream.source_id, attempt, reason)
                if attempt == 1 and at_once:
                    self._on_status(stream, StreamStatus("stream_down", stream.source_id, time.time(),
                                                         reason=reason, attempts=attempt))
                if source.reconnect.max_attempts is not None and attempt >= source.reconnect.max_attempts:
                    stream.failed = f"never connected: {reason}"
                    stream.gave_up = True
                    self._on_status(stream, StreamStatus("stream_failed", stream.source_id, time.time(),
                                                         reason=reason, attempts=attempt))
                    return
                continue
            with self._late_lock, stream.lock:
                if self._stopping.is_set() or stream.closed or stream.removed.is_set():
                    return  # the run is over or the stream removed; its source is closed with it
                info = source.info
                self._build_outputs(stream, info.width, info.height, out_dir)
                stream.ready = True
            self._wakeup.set()
            return

    # -- changing the streams of a running always-on run ----------------------------------------------------------

    def add_stream(self, uri: str, source_id: str | None = None, config: PipelineConfig | None = None) -> StreamRun:
        """Add a camera to the running run (it connects in the background, retried like the others); the other
        streams go on undisturbed. ``source_id`` must not be in use."""
        if self._out_dir is None or self._stopping.is_set():
            raise RuntimeError("add_stream: the run is not running")
        sid = source_id or live_source_id(uri)
        with self._streams_lock:
            if sid in self._streams:
                raise ValueError(f"a stream named {sid!r} is running")
            self._used_ids.add(sid)
            stream = self._new_stream(uri, sid, config or self.config, self._out_dir)
            self._streams = {**self._streams, sid: stream}
        self._connect_later(stream, self._out_dir, at_once=True)
        return stream

    def remove_stream(self, source_id: str) -> StreamRun:
        """Take a camera out of the running run: its outputs are finalized (video, files), the others go on.
        KeyError if there is no such stream."""
        with self._streams_lock:
            stream = self._streams[source_id]
            self._streams = {sid: s for sid, s in self._streams.items() if sid != source_id}
            self._used_ids.discard(source_id)
        self._close_stream(stream)
        return stream

    def _close_stream(self, stream: StreamRun) -> None:
        stream.removed.set()
        stream.source.close()  # interrupts a connection attempt or a reconnect wait
        if stream.connector is not None and stream.connector is not threading.current_thread():
            stream.connector.join()
        with stream.lock:  # results of it in flight in the graph are dropped from now on
            if stream.closed:
                return
            stream.closed = True
            stream.ready = False
            stream.stack.close()  # source (again: anything a late connection opened), outputs, status file, taps

    def _close_streams(self) -> None:
        """The end of a run: every stream closed (each one's outputs finalized, whatever the others do)."""
        self._stopping.set()
        for stream in list(self._streams.values()):
            try:
                self._close_stream(stream)
            except Exception as err:  # noqa: BLE001 - one stream's failure to close must not keep others open
                log.error("stream_close_failed source=%s error=%s", stream.source_id,
                          redact(str(err), stream.source.secrets))

    def _build_outputs(self, stream: StreamRun, width: int, height: int, out_dir: Path) -> None:
        stream.size = (width, height)
        with appending(self.resume):  # in this thread only: what StreamProcessor opens continues the files
            processor = StreamProcessor(stream.config or self.config, stream.source.info, self.backend.class_names,
                                        out_dir, live=True, source_id=stream.source_id, shared=self.shared)
        stream.processor = stream.stack.enter_context(processor)
        stream.outputs.update(stream.processor.outputs)

    # -- stages -----------------------------------------------------------------------------------------------------

    def _detect_stage(self, wakeup: threading.Event):
        backend, stopping = self.backend, self._stopping
        target_fps = self.config.source.target_fps
        period = 1.0 / target_fps if target_fps else 0.0
        interval = self.config.model.detect_interval  # the model sees every interval-th frame of a stream
        batching = self.config.live.cross_stream_batching

        def detect(_) -> Iterator[FrameResult]:
            start = 0
            while not stopping.is_set():
                wakeup.clear()
                streams = list(self._streams.values())  # this round's streams (add/remove replace the dict)
                batch_size = max(1, len(streams)) if batching else 1
                batch: list[Frame] = []
                streams_of: list[StreamRun] = []
                now = time.time()
                for k in range(len(streams)):  # round robin: every camera gets its turn
                    stream = streams[(start + k) % len(streams)]
                    if not stream.ready or now < stream.due:
                        continue  # source.target_fps: its frames wait, and fresher ones replace them (dropped)
                    frame = stream.source.take_latest()
                    if frame is not None:
                        stream.due = now + period * 0.95 if period else 0.0
                        batch.append(frame)
                        streams_of.append(stream)
                        if len(batch) >= batch_size:
                            start = (start + k + 1) % len(streams)
                            break
                else:
                    start = (start + 1) % max(1, len(streams))
                if not batch:
                    if not self.keep_running and all(s.source.finished or s.gave_up for s in streams):
                        return
                    wakeup.wait(0.05)
                    continue
                if interval == 1:
                    for frame, detections in zip(batch, backend.predict(batch)):
                        yield FrameResult(frame, detections)
                    continue
                run_model = []
                for stream in streams_of:
                    run_model.append(stream.count % interval == 0)
                    stream.count += 1
                yield from detect_every(backend, batch, run_model)

        return detect

    @contextmanager
    def _locked_stream(self, result: FrameResult) -> Iterator[StreamRun | None]:
        """The stream a result belongs to, held against removal for the block; None when it was removed (or
        removed and added again) meanwhile: its results in flight are dropped."""
        stream = self._streams.get(result.frame.source_id)
        if stream is None or result.frame.capture_time < stream.created:
            yield None
            return
        with stream.lock:
            yield None if stream.closed else stream

    def _analyze_stage(self, metrics: LiveMetrics):
        def analyze(results) -> Iterator[FrameResult]:
            for result in results:
                with self._locked_stream(result) as stream:
                    ready = self._analyze(stream, result, metrics) if stream is not None else []
                yield from ready

        return analyze

    def _analyze(self, stream: StreamRun, result: FrameResult, metrics: LiveMetrics) -> list[FrameResult]:
        frame = result.frame
        if (frame.width, frame.height) != stream.size:
            # a new resolution after a reconnect: identities and zone geometry start again at that size
            log.info("stream_resized source=%s size=%dx%d", stream.source_id, frame.width, frame.height)
            stream.size = (frame.width, frame.height)
            stream.processor.restart(frame.width, frame.height)
        ready = stream.processor.analyze(result)  # live: no lookahead, one result out
        for item in ready:
            for event in item.events:
                metrics.event(stream.source_id, event.kind)
                if stream.clipper is not None:
                    stream.clipper.trigger(event.wall_time, f"{event.kind}-{event.region}-{event.track_id}")
        return ready

    def _write_stage(self, metrics: LiveMetrics, run: LiveRun):
        on_result = self.on_result

        def write(results) -> Iterator[FrameResult]:
            for result in results:
                with self._locked_stream(result) as stream:
                    if stream is None:
                        continue
                    processor = stream.processor
                    processor.write(result)  # a failing output is logged and dropped there; the others go on
                    if processor.errors:
                        stream.failed = redact(error_line(processor.errors), stream.source.secrets)
                    stream.processed += 1
                latency = time.time() - result.frame.capture_time
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
            if stream.status_file is not None:
                try:
                    stream.status_file.write(json.dumps(status.record()) + "\n")
                except OutputError as err:  # a camera's state must follow it even when its log cannot
                    stream.status_file = None
                    log.error("output_failed source=%s error=%s (the other outputs go on)", stream.source_id, err)
            if stream.processor is not None and status.kind in ("stream_up", "stream_down"):
                stream.processor.stream_state(status.kind == "stream_up")  # MQTT's retained state follows
            elif stream.processor is None and status.kind != "stream_up" and self.config.mqtt.enabled \
                    and (stream.config or self.config).events.enabled:
                publish_state(self.shared.publisher(), stream.source_id, False)  # not up yet: say so on the broker
        if self.on_status is not None:
            self.on_status(stream, status)
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
