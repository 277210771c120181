"""Operations endpoints: Prometheus ``/metrics`` (prometheus-client) and ``/healthz``, on 127.0.0.1 by default.

:class:`LiveMetrics` owns its own ``CollectorRegistry`` (no process-global state: two runs in one process never
share counters). Counters the stages already keep (frames received, drops, reconnects, queue depths) are read at
scrape time through ``snapshot()`` callables; the capture-to-result latency is a histogram observed per result.

Metric names (``stream`` and ``queue``/``stage`` labels carry credential-free ids only):

==========================================  =====================================================================
streamseg_stream_up                         1 while frames flow, 0 while the stream is down
streamseg_stream_fps                        results per second over the last 10 s
streamseg_frames_received_total             frames decoded from the stream
streamseg_frames_processed_total            frames that went through model, tracker, events and sinks
streamseg_frames_dropped_total              frames replaced by a fresher one before the model took them
streamseg_reconnects_total                  successful reconnects
streamseg_events_total                      events (zone, line, collision) by ``kind``
streamseg_capture_to_result_seconds         histogram: wall clock from receipt of a frame to its written result
streamseg_queue_depth                       items waiting: per stream buffer and per graph stage inbox
streamseg_stage_dropped_total               items discarded by a stage inbox's drop_oldest policy
==========================================  =====================================================================
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 60.0)
FPS_WINDOW = 10.0


@dataclass
class StreamSample:
    """One stream's counters at scrape time (filled by whoever owns the stream)."""

    up: bool
    received: int
    dropped: int
    reconnects: int
    buffer_depth: int


@dataclass
class _StreamCounters:
    processed: int = 0
    events: dict[str, int] = field(default_factory=dict)
    recent: deque = field(default_factory=lambda: deque(maxlen=4096))  # result times, bounded


class LiveMetrics:
    """Per-stream live metrics in a private registry; thread-safe (results are recorded from the write stage,
    scrapes come from the HTTP thread)."""

    def __init__(self, streams: Callable[[], dict[str, StreamSample]],
                 stages: Callable[[], Iterable[tuple[str, int, int]]] = lambda: (), shared=None):
        """``streams()``: stream id -> :class:`StreamSample`; ``stages()``: ``(stage, queue depth, dropped)``;
        ``shared``: the run's :class:`~streamseg.sinks.shared.RunOutputs` (MQTT and event-store counters)."""
        self.registry = CollectorRegistry(auto_describe=True)
        self._streams = streams
        self._stages = stages
        self._shared = shared
        self._lock = threading.Lock()
        self._counters: dict[str, _StreamCounters] = {}
        self.latency = Histogram("streamseg_capture_to_result_seconds",
                                 "Wall-clock seconds from a frame's receipt to its written result",
                                 ["stream"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_Collector(self))

    def result(self, stream: str, latency: float, now: float | None = None) -> None:
        """One frame's result was written ``latency`` seconds after its receipt."""
        now = time.time() if now is None else now
        with self._lock:
            counters = self._counters.setdefault(stream, _StreamCounters())
            counters.processed += 1
            counters.recent.append(now)
        self.latency.labels(stream=stream).observe(max(0.0, latency))

    def event(self, stream: str, kind: str) -> None:
        with self._lock:
            events = self._counters.setdefault(stream, _StreamCounters()).events
            events[kind] = events.get(kind, 0) + 1

    def fps(self, stream: str, now: float | None = None) -> float:
        now = time.time() if now is None else now
        with self._lock:
            counters = self._counters.get(stream)
            if counters is None:
                return 0.0
            return sum(1 for t in counters.recent if t >= now - FPS_WINDOW) / FPS_WINDOW

    def text(self) -> bytes:
        """The exposition-format text ``/metrics`` serves."""
        return generate_latest(self.registry)


class _Collector:
    """Reads the stages' own counters at scrape time."""

    def __init__(self, metrics: LiveMetrics):
        self.metrics = metrics

    def describe(self):
        return []

    def collect(self):
        m = self.metrics
        streams = m._streams()
        up = GaugeMetricFamily("streamseg_stream_up", "1 while the stream delivers frames", labels=["stream"])
        fps = GaugeMetricFamily("streamseg_stream_fps", "Results per second over the last 10 s", labels=["stream"])
        received = CounterMetricFamily("streamseg_frames_received", "Frames decoded from the stream",
                                       labels=["stream"])
        processed = CounterMetricFamily("streamseg_frames_processed", "Frames with a written result",
                                        labels=["stream"])
        dropped = CounterMetricFamily("streamseg_frames_dropped", "Frames replaced by a fresher one before the "
                                      "model took them", labels=["stream"])
        reconnects = CounterMetricFamily("streamseg_reconnects", "Successful reconnects", labels=["stream"])
        events = CounterMetricFamily("streamseg_events", "Events by kind", labels=["stream", "kind"])
        depth = GaugeMetricFamily("streamseg_queue_depth", "Items waiting in a queue", labels=["queue"])
        stage_dropped = CounterMetricFamily("streamseg_stage_dropped", "Items discarded by a stage inbox",
                                            labels=["stage"])
        with m._lock:
            counts = {sid: (c.processed, dict(c.events)) for sid, c in m._counters.items()}
        for sid, sample in sorted(streams.items()):
            up.add_metric([sid], 1.0 if sample.up else 0.0)
            fps.add_metric([sid], m.fps(sid))
            received.add_metric([sid], sample.received)
            processed.add_metric([sid], counts.get(sid, (0, {}))[0])
            dropped.add_metric([sid], sample.dropped)
            reconnects.add_metric([sid], sample.reconnects)
            depth.add_metric([f"stream:{sid}"], sample.buffer_depth)
            for kind, n in sorted(counts.get(sid, (0, {}))[1].items()):
                events.add_metric([sid, kind], n)
        for stage, queued, lost in m._stages():
            depth.add_metric([f"stage:{stage}"], queued)
            stage_dropped.add_metric([stage], lost)
        yield from (up, fps, received, processed, dropped, reconnects, events, depth, stage_dropped)
        yield from _shared_outputs(m._shared)


def _shared_outputs(shared) -> Iterator:
    """Every event is delivered to MQTT or counted dropped, and stored or counted dropped: the counters that
    show it."""
    if shared is None:
        return
    publisher = shared.mqtt
    if publisher is not None:
        for name, value, text in (("published", publisher.published, "Events handed to the MQTT client"),
                                  ("delivered", publisher.delivered, "Events the broker received"),
                                  ("dropped", publisher.dropped, "Events dropped: buffer full while the broker "
                                                                 "was away, or undelivered at the end")):
            family = CounterMetricFamily(f"streamseg_mqtt_events_{name}", text)
            family.add_metric([], value)
            yield family
    stores = shared.stores
    if stores:
        written = CounterMetricFamily("streamseg_event_store_written", "Events committed to the event store")
        lost = CounterMetricFamily("streamseg_event_store_dropped", "Events not stored: the writer's queue was full")
        written.add_metric([], sum(store.written for store in stores))
        lost.add_metric([], sum(store.dropped for store in stores))
        yield written
        yield lost


class MetricsServer:
    """HTTP server for ``/metrics`` and ``/healthz`` on its own thread; a context manager (closed on exit).

    ``health()`` returns ``(ok, details)``: ``/healthz`` answers 200 with the details as JSON while ok, else 503.
    ``port=0`` picks a free port (see :attr:`port`). Binds 127.0.0.1 unless another host is given on purpose.
    """

    def __init__(self, metrics: LiveMetrics, health: Callable[[], tuple[bool, dict]], *, host: str = "127.0.0.1",
                 port: int = 0):
        self.metrics = metrics
        self.health = health
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="streamseg:metrics", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> "MetricsServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, server.metrics.text(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok, details = server.health()
                    self._send(200 if ok else 503, json.dumps({"ok": ok, **details}).encode(), "application/json")
                else:
                    self._send(404, b"not found: try /metrics or /healthz\n", "text/plain")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # scrapes every few seconds would flood the log
                pass

        return Handler
