"""Live cameras on a Ray cluster: ``streamseg run --cluster ADDRESS rtsp://... rtsp://...``.

Each camera runs in an actor of its own (:class:`CameraActor`): reader, model, tracker, event rules and outputs of
that camera, a :class:`~streamseg.live.LiveRunner` of one stream whose run loop starts in the actor's ``__init__``.
Ray restarts an actor whose process died (``max_restarts=-1``) by running ``__init__`` again with the same
arguments, so a restarted actor resumes its camera by itself. Each asks Ray for ``[cluster] num_cpus`` /
``num_gpus``.

Placement (:class:`CameraSupervisor`, in the driver): every camera actor is pinned to a node chosen by the
supervisor (``NodeAffinitySchedulingStrategy``, hard): the alive node with room that holds the fewest of this run's
cameras, worker nodes before the head node (which runs the GCS and usually the driver). A node's room is
``[cluster] max_cameras_per_node`` (None: no cap) and what its CPUs / GPUs hold of actors of that size. A camera for
which no node has room waits, and is placed as soon as one has (a node that joins, or a camera that ended).

Supervision: every ``poll`` seconds the supervisor asks each actor for its status and reads the cluster's alive
nodes, and keeps the running set equal to the configured set: an actor whose process died is restarted by Ray on
its node (and seen as a new session); an actor whose node is gone, or that Ray gave up on, is killed and created
again on another node; a camera whose stream ended for good (``live.max_attempts`` reconnects failed) stays ended,
as in a local run. With ``health_check_period_ms=500`` / ``health_check_failure_threshold=3`` on the cluster a lost
node is noticed in about 2.3 s (about 14 s with Ray's defaults).

Outputs (in ``output_dir``, which every node must reach: a shared filesystem) are the local live run's, written by
the camera's actor as results happen (events included: never held only in actor memory). A restarted or re-created
camera CONTINUES its files (``LiveRunner(resume=True)``): ``<id>.detections.jsonl``, ``<id>.events.jsonl`` and
``<id>.zone_counts.csv`` are appended to (a line torn by the kill is cut off first), and the new session numbers its
frames from one after the last frame index written to them, with stream time going on by the wall-clock gap, so
frame indices in a camera's files only ever increase and never repeat. The frames the camera sent while its actor
was down are lost (they are a gap in the indices' times, not in the indices). Track ids start again at 1 in a new
session (the tracker's state was in the lost process). ``<id>.streams.jsonl`` gets the new session's
``stream_up``. The annotated video of a session that was killed (SIGKILL, lost node) has no index and is not
playable; the new session starts a new file (``<id>/annotated/<id>-<UTC time>.mp4``). A new run (a new driver)
replaces those line files of an earlier run, as a local run does; if the driver itself dies, its camera actors
die with it (Ray's fate sharing of non-detached actors).

Health and metrics: the driver serves ``/metrics`` and ``/healthz`` for every camera as a local live run does
(``[live] metrics_port``, ``metrics_host``, 127.0.0.1 by default), from the actors' reports: counters are summed over
an actor's sessions; ``/healthz`` also names each camera's node, process id, state and restarts.

Security: camera URLs travel to the actors only as call arguments (Ray keeps them in its task specifications, never
in logs or names); actors are named ``camera:<id>:<run>.<n>`` by the camera's credential-free id, and their
``repr`` (Ray's log prefix) is that id too. Every log handler of an actor's process redacts the camera's URL and
credentials (:class:`~streamseg.redact.RedactingFilter`), as the driver's own handlers do.

The camera service (``streamseg serve --cluster ADDRESS``: :mod:`streamseg.cluster.camera_service`) uses the same
actors and supervisor in an always-on form: the supervisor's cameras are added and removed while it runs, it runs
until stopped (never because cameras ended), each actor retries its camera forever (``LiveRunner(keep_running=True)``)
with the camera's own pipeline, and the driver, not the actors, writes the event store and MQTT (see its
``ClusterCameras`` for what a killed actor can lose).

Ctrl-C / SIGTERM on the driver stops every camera with its outputs finalized (videos closed), then exits 130; a
second one skips the results in flight. A camera unreachable at start is tried again in the background (its
``stream_down`` recorded, as locally); when every camera is unreachable at start, the run ends with the local run's
one-line error (exit 1).
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import sys
import threading
import time
import uuid
from collections import deque
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

from streamseg.config import PipelineConfig
from streamseg.errors import ConfigError, SourceError, StreamsegError
from streamseg.redact import RedactingFilter, redact, secrets_of

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
STOP_SECONDS = 45.0
"""How long the driver waits for a camera to finalize its outputs after Ctrl-C before it kills the actor."""
LATENCY_KEEP = 20_000
"""Latencies (and events) an actor keeps for the driver's next status call; older ones are dropped."""
ENDED = ("ended", "failed", "stopped")
PICTURE_LEASE = 2.0
"""Service: seconds a camera actor keeps encoding its picture after the driver last asked for it."""
RESUMED_FILES = ("{}.detections.jsonl", "{}.events.jsonl", "{}.zone_counts.csv")
"""A camera's outputs that a restarted session continues (:func:`streamseg.live.resume_point` reads them)."""


# -- the actor --------------------------------------------------------------------------------------------------------

class CameraActor:
    """One camera on the cluster; see the module docstring. ``config`` carries no sources (the URL is ``uri``) and
    no metrics port (the driver serves metrics). Methods: :meth:`status` (polled by the supervisor), :meth:`stop`
    (finalize the outputs; returns the last status)."""

    def __init__(self, config: PipelineConfig, uri: str, source_id: str, log_level: int = logging.INFO,
                 probe: str | None = None, json_logs: bool = False, service: bool = False):
        self.source_id = source_id
        self.service = service
        """``streamseg serve`` (``ClusterCameras``): the camera is retried forever (``LiveRunner(keep_running=
        True)``), its events go to the driver as whole records, its up/down changes too, and its annotated picture
        is encoded while the driver asks for it (:meth:`picture`)."""
        self._secrets = secrets_of(uri)
        redacting_logs(self._secrets, log_level, json_logs)
        self.session = uuid.uuid4().hex[:12]
        self.pid = os.getpid()
        self.node = _node_id()
        self.shared = probe is None or Path(probe).exists()
        if not self.shared:
            log.error("camera_output_not_shared source=%s: this node does not see the driver's output folder %s "
                      "(cluster.shared_output): the camera's files stay on this node", source_id, config.output_dir)
        self._config, self._uri = config, uri
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._latencies: deque[tuple[float, float]] = deque(maxlen=LATENCY_KEEP)
        self._events: deque[str] = deque(maxlen=LATENCY_KEEP)
        self._records: deque[dict] = deque(maxlen=LATENCY_KEEP)
        """Service: the events as ``streamseg.events/1`` records, for the driver's store and MQTT."""
        self._changes: deque[tuple[str, float]] = deque(maxlen=1000)
        """Service: ``("up" | "down", wall time)`` of the stream's status changes since the last status call."""
        self._watched_until = 0.0
        self._picture: tuple[int, bytes | None] = (0, None)
        self._picture_due = 0.0
        self._annotator = None
        self.state = "starting"
        """starting, running, retrying (not reachable; tried again), ended, failed, stopped."""
        self.reason: str | None = None
        self.connect_failures = 0
        self.report: str | None = None
        self._runner = None
        self._thread = threading.Thread(target=self._run, name=f"streamseg:camera:{source_id}", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:  # Ray's log prefix and error messages: the camera's id, never its URL
        return f"CameraActor({self.source_id})"

    # -- the run loop (its own thread) ------------------------------------------------------------------------------

    def _run(self) -> None:
        from streamseg.live import LiveRunner
        from streamseg.models import build_backend
        from streamseg.sources import Reconnect

        cfg, live = self._config, self._config.live
        backend = None
        try:
            backend = build_backend(cfg.model, cfg.backend)
            if self.service:
                self._serve(LiveRunner(cfg, backend, on_result=self._on_result, resume=True, keep_running=True,
                                       on_status=self._on_status))
                return
            backoff, rng = Reconnect(live.reconnect_initial, live.reconnect_max), random.Random()
            while not self._stop.is_set():
                runner = LiveRunner(cfg, backend, on_result=self._on_result, resume=True)
                with self._lock:
                    self._runner = runner
                try:
                    run = runner.run([self._uri], source_ids=[self.source_id])
                except SourceError as err:  # not reachable (connect_attempts tries): as a local run, try again
                    if self._connect_failed(redact(str(err), self._secrets)):
                        return
                    if self._stop.wait(backoff.delay(self.connect_failures, rng)):
                        break
                    continue
                stream = run.streams.get(self.source_id)
                failed = stream.failed if stream is not None else None
                self.report = run.report.table() if run.report is not None else None
                if run.stopped:
                    self._end("stopped", failed)
                else:
                    self._end("failed" if failed else "ended", failed)
                return
            self._end("stopped", self.reason)
        except StreamsegError as err:
            self._end("failed", redact(str(err), self._secrets))
        except Exception as err:  # noqa: BLE001 - reported to the driver, not lost in a thread
            log.exception("camera_failed source=%s", self.source_id)
            self._end("failed", redact(f"{type(err).__name__}: {err}", self._secrets))
        finally:
            if backend is not None:
                backend.close()

    def _serve(self, runner) -> None:
        """The service's camera: one always-on run, until :meth:`stop` (never ends because the camera is down)."""
        with self._lock:
            self._runner = runner
        if self._stop.is_set():
            self._end("stopped", None)
            return
        run = runner.run([self._uri], source_ids=[self.source_id])
        stream = run.streams.get(self.source_id)
        self.report = run.report.table() if run.report is not None else None
        self._end("stopped", stream.failed if stream is not None else None)

    def _on_status(self, stream, status) -> None:
        """Service: the stream went up or down (connects, reconnects); the driver hears of it at its next poll."""
        if status.kind == "stream_up":
            self.state, self.reason = "running", None
            self._changes.append(("up", status.wall_time))
        elif status.kind in ("stream_down", "stream_failed"):
            self.state = "retrying"
            self.reason = redact(status.reason, self._secrets) if status.reason else None
            self._changes.append(("down", status.wall_time))

    def _connect_failed(self, reason: str) -> bool:
        """Record a failed start (as ``LiveRunner`` does for a camera down at start); True when given up."""
        from streamseg.sources import StreamStatus

        live = self._config.live
        self.connect_failures += 1
        self.reason = reason
        self.state = "retrying"
        attempts = self.connect_failures
        if attempts == 1:
            log.error("stream_connect_failed source=%s reason=%s (retrying in the background)", self.source_id,
                      reason)
            self._status_record(StreamStatus("stream_down", self.source_id, time.time(), reason=reason,
                                             attempts=live.connect_attempts))
        else:
            log.info("stream_connect_failed source=%s attempt=%d reason=%s", self.source_id, attempts, reason)
        if live.max_attempts is not None and attempts >= live.max_attempts:
            self._status_record(StreamStatus("stream_failed", self.source_id, time.time(), reason=reason,
                                             attempts=attempts))
            self._end("failed", f"never connected: {reason}")
            return True
        return False

    def _status_record(self, status) -> None:
        try:
            with open(Path(self._config.output_dir) / f"{self.source_id}.streams.jsonl", "a",
                      encoding="utf-8") as file:
                file.write(json.dumps(status.record()) + "\n")
        except OSError as err:
            log.error("output_failed source=%s error=%s", self.source_id, err)

    def _end(self, state: str, reason: str | None) -> None:
        self.state, self.reason = state, reason

    def _on_result(self, result, latency: float) -> None:
        self._latencies.append((time.time(), latency))
        for event in result.events:
            self._events.append(event.kind)
        if self.service:
            if result.events:
                from streamseg.sinks.events import event_record

                self._records.extend(event_record(event) for event in result.events)
            now = time.monotonic()
            if now < self._watched_until and now >= self._picture_due:
                self._picture_due = now + 1.0 / self._config.serve.live_fps
                self._encode(result)
        elif self.state != "running":  # (the service's state follows the stream's up/down: _on_status)
            self.state, self.reason = "running", None

    def _encode(self, result) -> None:
        """The annotated picture as a JPEG (only while the driver asks for it: encoding costs CPU the model
        needs)."""
        import cv2

        from streamseg.sinks import Annotator
        from streamseg.stream import overlays_of

        try:
            if self._annotator is None:
                runner = self._runner
                stream = runner.streams.get(self.source_id) if runner is not None else None
                processor = stream.processor if stream is not None else None
                self._annotator = Annotator(overlays=overlays_of(processor.engine if processor else None))
            image = self._annotator.annotate(result.frame.image.copy(), result.detections)
            ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                    [cv2.IMWRITE_JPEG_QUALITY, self._config.serve.jpeg_quality])
        except Exception as err:  # noqa: BLE001 - a picture is not worth the camera
            log.warning("picture_failed source=%s error=%r", self.source_id, err)
            return
        if ok:
            self._picture = (self._picture[0] + 1, data.tobytes())

    # -- called by the driver ----------------------------------------------------------------------------------------

    def status(self) -> dict:
        """This session's state and counters, and the latencies / events since the last call."""
        latencies = [self._latencies.popleft() for _ in range(len(self._latencies))]
        events = [self._events.popleft() for _ in range(len(self._events))]
        records = [self._records.popleft() for _ in range(len(self._records))]
        changes = [self._changes.popleft() for _ in range(len(self._changes))]
        runner = self._runner
        stream = runner.streams.get(self.source_id) if runner is not None else None
        now = time.time()
        status = {"session": self.session, "node": self.node, "pid": self.pid, "state": self.state,
                  "reason": self.reason, "latencies": latencies, "events": events, "shared": self.shared,
                  "up": False, "processed": 0, "received": 0, "dropped": 0, "reconnects": 0, "buffer_depth": 0,
                  "last_frame_age_s": None, "first_index": None, "failed": None, "outputs": {}, "stages": [],
                  "report": self.report}
        if self.service:
            status.update(records=records, changes=changes)
        if stream is not None:
            source = stream.source
            status.update(up=bool(source.up), processed=stream.processed, received=source.received,
                          dropped=source.dropped, reconnects=source.reconnects, buffer_depth=source.buffer_depth(),
                          last_frame_age_s=None if source.last_frame_wall is None
                          else round(now - source.last_frame_wall, 3),
                          first_index=source.first_index, failed=stream.failed,
                          outputs={kind: str(path) for kind, path in stream.outputs.items()},
                          stages=runner._stage_samples())
        return status

    def picture(self, session: str | None, seq: int, watching: bool = True) -> tuple[str, int, bytes | None]:
        """Service: ``(session, sequence number, JPEG)`` of the newest annotated picture; the JPEG is None when the
        caller has that one already (``session``, ``seq``) or there is none yet. Each call with ``watching`` keeps
        the encoding on for ``PICTURE_LEASE`` seconds; ``watching=False`` turns it off at once."""
        if watching:
            self._watched_until = time.monotonic() + PICTURE_LEASE
        else:
            self._watched_until, self._annotator = 0.0, None  # zones may change with a restart
        number, jpeg = self._picture
        if session == self.session and seq == number:
            return self.session, number, None
        return self.session, number, jpeg

    def stop(self, timeout: float = STOP_SECONDS - 5) -> dict:
        """Stop the camera and finalize its outputs (videos closed); returns the last :meth:`status`."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        asked = None
        while self._thread.is_alive() and time.monotonic() < deadline:
            runner = self._runner
            if runner is not None and runner is not asked and runner.ready.is_set():
                runner.stop()  # once per runner: a second call would skip the results in flight
                asked = runner
            self._thread.join(0.1)
        if self._thread.is_alive():
            log.warning("camera_stop_timeout source=%s: outputs may be incomplete", self.source_id)
        return self.status()


def redacting_logs(secrets: tuple[str, ...], level: int = logging.INFO, json_logs: bool = False) -> None:
    """This process's log handlers (an actor's worker process) hide ``secrets`` and URL credentials; streamseg's
    records at ``level`` and above go to stderr (which Ray keeps in the worker's log and shows to the driver), as
    JSON lines with ``json_logs`` (the driver's ``--log-format json``)."""
    from streamseg.logs import JsonFormatter

    root = logging.getLogger()
    if not any(getattr(handler, "_streamseg_camera", False) for handler in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if json_logs else logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler._streamseg_camera = True
        root.addHandler(handler)
    hide = RedactingFilter(secrets)
    for logger in (root, logging.getLogger("ray")):
        for handler in logger.handlers:
            for old in [f for f in handler.filters if isinstance(f, RedactingFilter)]:
                handler.removeFilter(old)
            handler.addFilter(hide)
    logging.getLogger("streamseg").setLevel(level)


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray (tests of the class alone)
        return None


# -- the driver ------------------------------------------------------------------------------------------------------

@dataclass
class Camera:
    """The supervisor's view of one configured camera."""

    source_id: str
    uri: str = field(repr=False)
    config: PipelineConfig | None = field(default=None, repr=False)
    """The actor's pipeline (None: the supervisor's ``actor_config``); the service's cameras have their own."""
    actor: object = field(default=None, repr=False)
    node: str | None = None
    name: str | None = None
    generation: int = 0
    pending: object = field(default=None, repr=False)
    """The status call in flight."""
    session: str | None = None
    sessions: int = 0
    """Sessions seen: 1 + restarts (of the process, or on another node)."""
    status: dict = field(default_factory=dict)
    base: dict = field(default_factory=lambda: {"received": 0, "dropped": 0, "reconnects": 0, "processed": 0})
    """Counters of the camera's earlier sessions (metrics are summed over sessions)."""
    state: str = "waiting"
    """waiting (for a node with room), starting, running, retrying, restarting, ended, failed, stopped."""
    reason: str | None = None
    waiting_logged: bool = False
    resumed: bool = False
    removed: bool = False
    """Taken out of a running service (:meth:`CameraSupervisor.remove`): its late status replies are ignored."""
    up: bool | None = None
    """Service: the state last reported to ``on_state`` (None: none yet)."""

    @property
    def done(self) -> bool:
        return self.state in ENDED

    @property
    def restarts(self) -> int:
        return max(0, self.sessions - 1)


@dataclass
class CameraRun:
    """What :meth:`CameraSupervisor.run` returns."""

    cameras: dict[str, Camera]
    stopped: bool = False
    """Ctrl-C / SIGTERM / :meth:`CameraSupervisor.stop` ended the run (rather than every camera ending)."""


class CameraSupervisor:
    """Keeps one :class:`CameraActor` per configured camera running on the cluster ``ray`` is connected to; see
    the module docstring. ``run`` returns when stopped or when every camera has ended.

    ``keep_running`` (the service, ``ClusterCameras``): ``run`` lasts until :meth:`stop` even when every
    camera has ended, the actors are started in service mode (retried forever), earlier outputs are continued
    rather than replaced, and :meth:`add` / :meth:`remove` change the cameras while the others run on. ``shared``:
    the driver's event store and MQTT publisher (their counters in :attr:`metrics`)."""

    def __init__(self, ray, config: PipelineConfig, *, poll: float = POLL_SECONDS, keep_running: bool = False,
                 shared=None):
        from streamseg.sources import live_source_id

        self.ray, self.config, self.poll = ray, config, poll
        self.keep_running = keep_running
        self._lock = threading.RLock()
        """Held while cameras are placed, added or removed (``cameras`` itself is replaced, never mutated, once
        the run runs: readers iterate a snapshot)."""
        self._generations: dict[str, int] = {}
        opts = config.cluster
        self.run_id = secrets.token_hex(3)
        used: set[str] = set()
        self.cameras: dict[str, Camera] = {}
        for uri in config.sources:
            name = redact(live_source_id(uri), secrets_of(uri))
            sid, n = name, 1
            while sid in used:
                n += 1
                sid = f"{name}-{n}"
            used.add(sid)
            self.cameras[sid] = Camera(sid, uri)
        # what every actor gets: no URLs (each gets its own as an argument), no metrics port (served here)
        self.actor_config = replace(config, sources=(), live=replace(config.live, metrics_port=None))
        self.remote = ray.remote(num_cpus=opts.num_cpus, num_gpus=opts.num_gpus, max_restarts=-1,
                                 max_task_retries=0)(CameraActor)
        from streamseg.logs import JsonFormatter

        self.log_level = logging.getLogger("streamseg").getEffectiveLevel()
        self.json_logs = any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)
        self.probe: str | None = None
        self.metrics_server = None
        self.ready = threading.Event()
        """Set once every camera has connected or failed its first connection (tests wait on it)."""
        self._stopping = threading.Event()
        self._stop_calls = 0
        self._node_order: list[str] = []
        self._nodes: dict[str, dict] = {}
        from streamseg.graph.exporter import LiveMetrics

        self.metrics = LiveMetrics(self._samples, self._stages, shared)

    # -- public -----------------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """End the run (any thread, signal handlers too): cameras finalize their outputs; a second call kills them
        without waiting."""
        self._stop_calls += 1
        self._stopping.set()

    def run(self, *, handle_signals: bool = False) -> CameraRun:
        from streamseg.live import signals_call

        cfg = self.config
        run = CameraRun(self.cameras)
        # the signal handlers stay while the cameras finalize: a second Ctrl-C there stops waiting for them
        with signals_call(self.stop, handle_signals), ExitStack() as stack:
            if cfg.cluster.shared_output != "yes":
                probe = Path(cfg.output_dir) / f".streamseg-probe-{self.run_id}"
                try:
                    probe.touch()
                except OSError as err:
                    raise StreamsegError(f"{cfg.output_dir}: cannot write to the output folder "
                                         f"({err.strerror or err})") from None
                stack.callback(probe.unlink, missing_ok=True)
                self.probe = str(probe)
            if not self.keep_running:  # the service continues its cameras' outputs, as a local service does
                self._replace_earlier_outputs()
            self._serve_metrics(stack)
            stack.callback(self._stop_actors)
            started = False
            while not self._stopping.is_set():
                self.step()
                if self.keep_running:
                    self.ready.set()  # running: the cameras connect (and are retried) in their actors
                elif not started and self._started():
                    started = True
                    self.ready.set()
                    self._check_start()
                if not self.keep_running and all(camera.done for camera in self.cameras.values()):
                    break
                self._stopping.wait(self.poll)
            run.stopped = self._stopping.is_set()
        run.cameras = self.cameras
        return run

    def add(self, source_id: str, uri: str, config: PipelineConfig | None = None) -> Camera:
        """One more camera (placed at the next round; any thread); ``source_id`` must not be in use."""
        with self._lock:
            if source_id in self.cameras:
                raise ValueError(f"a camera named {source_id!r} is running")
            camera = Camera(source_id, uri, config)
            self.cameras = {**self.cameras, source_id: camera}
        return camera

    def remove(self, source_id: str, timeout: float = STOP_SECONDS) -> Camera:
        """Take a camera out (any thread): its actor finalizes its outputs and is killed; the other cameras go on.
        Returns once it is gone (its last status applied). KeyError if there is no such camera."""
        with self._lock:
            camera = self.cameras[source_id]
            self.cameras = {sid: c for sid, c in self.cameras.items() if sid != source_id}
            camera.removed = True
            actor, camera.actor, camera.pending = camera.actor, None, None
        if actor is None:
            return camera
        try:
            self._update(camera, self.ray.get(actor.stop.remote(), timeout=timeout))
        except Exception as err:  # noqa: BLE001 - its outputs end where its process ended
            log.warning("camera_stop_failed source=%s (%s)", source_id, _first_line(err))
        try:
            self.ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        camera.state = "stopped"
        return camera

    def _replace_earlier_outputs(self) -> None:
        """A new run replaces a camera's line outputs of an earlier run in the same folder, as a local run does;
        within this run every session of the camera appends to them (actors always resume)."""
        out_dir, replaced = Path(self.config.output_dir), []
        for sid in self.cameras:
            for name in RESUMED_FILES:
                path = out_dir / name.format(sid)
                if path.exists():
                    path.unlink()
                    replaced.append(path.name)
        if replaced:
            log.info("replaced earlier outputs: %s", ", ".join(replaced))

    # -- one round ------------------------------------------------------------------------------------------------

    def step(self) -> None:
        """Read the alive nodes and every actor's status; re-place cameras whose node is gone; place the waiting."""
        nodes = self._alive_nodes()
        lost = []
        with self._lock:
            for camera in self.cameras.values():
                if camera.actor is not None and camera.node not in nodes and not camera.done:
                    log.warning("camera_node_lost source=%s node=%s: placing it on another node", camera.source_id,
                                _short(camera.node))
                    self._drop_actor(camera)
                    lost.append(camera)
        for camera in lost:
            self._lost(camera)  # (outside the lock: it calls the service back)
        self._poll_status()
        with self._lock:
            self._place(nodes)

    def _alive_nodes(self) -> dict[str, dict]:
        try:
            table = self.ray.nodes()
        except Exception as err:  # noqa: BLE001 - the GCS did not answer this time: keep what we knew
            log.warning("cluster_nodes_unknown (%s)", _first_line(err))
            return self._nodes
        nodes = {}
        for node in table:
            if node.get("Alive") or node.get("alive"):
                node_id = node.get("NodeID") or node.get("node_id")
                nodes[node_id] = node.get("Resources") or {}
                if node_id not in self._node_order:
                    self._node_order.append(node_id)
        self._nodes = nodes
        return nodes

    def _poll_status(self) -> None:
        ray = self.ray
        with self._lock:
            cameras = list(self.cameras.values())
            for camera in cameras:
                if camera.actor is not None and camera.pending is None and not camera.done:
                    camera.pending = camera.actor.status.remote()
        pending = {camera.pending: camera for camera in cameras if camera.pending is not None}
        if not pending:
            return
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=min(1.0, self.poll))
        for ref in ready:
            camera = pending[ref]
            if camera.pending is ref:
                camera.pending = None
            try:
                status = ray.get(ref)
            except ray.exceptions.ActorUnavailableError:  # Ray is restarting it (its process died)
                if camera.removed:
                    continue
                if camera.state != "restarting":
                    log.warning("camera_restarting source=%s node=%s", camera.source_id, _short(camera.node))
                    self._lost(camera)
                camera.state = "restarting"
                continue
            except ray.exceptions.RayActorError as err:  # dead for good (its node is gone, or Ray gave up)
                with self._lock:
                    dropped = camera.actor is not None and not camera.removed
                    if dropped:
                        log.warning("camera_actor_died source=%s node=%s (%s): placing it again",
                                    camera.source_id, _short(camera.node), _first_line(err))
                        self._drop_actor(camera)
                if dropped:
                    self._lost(camera)  # (outside the lock: it calls the service back)
                continue
            except Exception as err:  # noqa: BLE001 - a bug in status(): keep supervising
                log.error("camera_status_failed source=%s error=%s", camera.source_id, _first_line(err))
                continue
            self._update(camera, status)

    def _lost(self, camera: Camera) -> None:
        """The camera's actor process died or its node is gone (the service shows the camera down until the new
        one reports). Called without :attr:`_lock` held."""

    def _update(self, camera: Camera, status: dict) -> None:
        sid = camera.source_id
        if status["session"] != camera.session:
            if camera.session is not None:
                for key in camera.base:
                    camera.base[key] += camera.status.get(key, 0)
                log.warning("camera_restarted source=%s node=%s pid=%s restarts=%d", sid, _short(status["node"]),
                            status["pid"], camera.sessions)
            camera.session = status["session"]
            camera.sessions += 1
            camera.resumed = False
        if camera.sessions > 1 and not camera.resumed and status.get("first_index") is not None:
            camera.resumed = True  # its outputs go on from there
            log.info("camera_resumed source=%s frame=%d", sid, status["first_index"])
        camera.status = status
        camera.reason = status.get("failed") or status.get("reason")
        previous, camera.state = camera.state, status["state"]
        for wall, latency in status["latencies"]:
            self.metrics.result(sid, latency, now=wall)
        for kind in status["events"]:
            self.metrics.event(sid, kind)
        if camera.state in ENDED and previous not in ENDED:
            level = logging.ERROR if camera.state == "failed" else logging.INFO
            log.log(level, "camera_%s source=%s%s", camera.state, sid,
                    f" reason={camera.reason}" if camera.reason else "")

    def _drop_actor(self, camera: Camera) -> None:
        actor, camera.actor, camera.pending = camera.actor, None, None
        camera.node = None
        if not camera.done:
            camera.state = "waiting"
        if actor is not None:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone with its node
                pass

    # -- placement ------------------------------------------------------------------------------------------------

    def room(self, resources: dict) -> int:
        """Camera actors a node of ``resources`` holds: the per-node cap and what its CPUs / GPUs fit."""
        opts = self.config.cluster
        fits = []
        if opts.num_cpus:
            fits.append(int(resources.get("CPU", 0) / opts.num_cpus + 1e-9))
        if opts.num_gpus:
            fits.append(int(resources.get("GPU", 0) / opts.num_gpus + 1e-9))
        if opts.max_cameras_per_node is not None:
            fits.append(opts.max_cameras_per_node)
        return min(fits) if fits else sys.maxsize

    def _place(self, nodes: dict[str, dict]) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        waiting = [c for c in self.cameras.values() if c.actor is None and not c.done]
        if not waiting or self._stopping.is_set():
            return
        used = {node: 0 for node in nodes}
        for camera in self.cameras.values():
            if camera.actor is not None and camera.node in used:
                used[camera.node] += 1
        for camera in waiting:
            free = [node for node in nodes if used[node] < self.room(nodes[node])]
            if not free:
                if not camera.waiting_logged:
                    log.warning("camera_waiting source=%s: no node has room (cluster.max_cameras_per_node = %s, "
                                "num_cpus = %s, num_gpus = %s); placed when a node has", camera.source_id,
                                self.config.cluster.max_cameras_per_node, self.config.cluster.num_cpus,
                                self.config.cluster.num_gpus)
                    camera.waiting_logged = True
                camera.state = "waiting"
                continue
            node = min(free, key=lambda n: (used[n], _is_head(nodes[n]), self._node_order.index(n)))
            used[node] += 1
            camera.generation = self._generations[camera.source_id] = \
                self._generations.get(camera.source_id, 0) + 1  # unique names across removals and re-adds
            camera.name = f"camera:{camera.source_id}:{self.run_id}.{camera.generation}"
            camera.actor = self.remote.options(
                name=camera.name, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
            ).remote(camera.config or self.actor_config, camera.uri, camera.source_id, self.log_level, self.probe,
                     self.json_logs, self.keep_running)
            camera.node, camera.state = node, "starting"
            camera.waiting_logged = False
            log.info("camera_placed source=%s node=%s actor=%s", camera.source_id, _short(node), camera.name)

    # -- start-up ----------------------------------------------------------------------------------------------------

    def _started(self) -> bool:
        """Every camera has connected, or failed its first connection, or ended."""
        return all(c.state in ("running", "retrying", *ENDED) for c in self.cameras.values())

    def _check_start(self) -> None:
        """Every camera unreachable at start: the local run's one-line error."""
        cameras = list(self.cameras.values())
        if all(c.state in ("retrying", "failed") and c.status.get("processed", 0) == 0 and c.sessions == 1
               for c in cameras):
            first = cameras[0]
            raise SourceError(first.reason or f"{first.source_id}: cannot connect")

    # -- stop -----------------------------------------------------------------------------------------------------

    def _stop_actors(self) -> None:
        ray = self.ray
        calls = {}
        for camera in self.cameras.values():
            if camera.actor is not None:
                if self._stop_calls > 1:
                    continue  # a second Ctrl-C: no waiting
                calls[camera.actor.stop.remote()] = camera
        deadline = time.monotonic() + STOP_SECONDS
        while calls and time.monotonic() < deadline and self._stop_calls <= 1:
            ready, _ = ray.wait(list(calls), num_returns=len(calls), timeout=0.5)
            for ref in ready:
                camera = calls.pop(ref)
                try:
                    self._update(camera, ray.get(ref))
                except Exception as err:  # noqa: BLE001 - its outputs end where its process ended
                    log.warning("camera_stop_failed source=%s (%s)", camera.source_id, _first_line(err))
        for camera in self.cameras.values():
            if camera.actor is not None:
                try:
                    ray.kill(camera.actor, no_restart=True)
                except Exception:  # noqa: BLE001
                    pass
                camera.actor = None

    # -- metrics and health -------------------------------------------------------------------------------------------

    def _serve_metrics(self, stack: ExitStack) -> None:
        from streamseg.graph.exporter import MetricsServer

        live = self.config.live
        if live.metrics_port is None:
            return
        host, port = live.metrics_host, live.metrics_port
        try:
            self.metrics_server = stack.enter_context(MetricsServer(self.metrics, self._health, host=host,
                                                                    port=port))
        except OSError as err:
            raise ConfigError(f"live.metrics_port: cannot listen on {host}:{port} ({err.strerror or err})") from None
        if host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("metrics_exposed host=%s: /metrics and /healthz are reachable from the network", host)
        log.info("metrics: %s/metrics and %s/healthz", self.metrics_server.url, self.metrics_server.url)

    def _samples(self) -> dict:
        from streamseg.graph.exporter import StreamSample

        samples = {}
        for sid, camera in self.cameras.items():
            st, base = camera.status, camera.base
            samples[sid] = StreamSample(up=bool(st.get("up")) and camera.state == "running",
                                        received=base["received"] + st.get("received", 0),
                                        dropped=base["dropped"] + st.get("dropped", 0),
                                        reconnects=base["reconnects"] + st.get("reconnects", 0),
                                        buffer_depth=st.get("buffer_depth", 0))
        return samples

    def _stages(self):
        for sid, camera in self.cameras.items():
            for stage, depth, dropped in camera.status.get("stages", ()):
                yield f"{sid}/{stage}", depth, dropped

    def _health(self) -> tuple[bool, dict]:
        details = {}
        for sid, camera in self.cameras.items():
            st = camera.status
            details[sid] = {"up": bool(st.get("up")) and camera.state == "running", "state": camera.state,
                            "last_frame_age_s": st.get("last_frame_age_s"), "processed": st.get("processed", 0),
                            "reconnects": camera.base["reconnects"] + st.get("reconnects", 0),
                            "failed": camera.reason if camera.state == "failed" else st.get("failed"),
                            "restarts": camera.restarts, "node": camera.node, "pid": st.get("pid"),
                            "actor": camera.name, "first_index": st.get("first_index")}
        return not self._stopping.is_set(), {"streams": details}


def _is_head(resources: dict) -> bool:
    return any(key.startswith("node:__internal_head__") for key in resources)


def _short(node: str | None) -> str:
    return node[:12] if node else "-"


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return (lines[-1] if lines else type(err).__name__)[:300]


# -- the command -----------------------------------------------------------------------------------------------------

def run_cameras_on_cluster(config: PipelineConfig) -> int:
    """``streamseg run --cluster ADDRESS`` with live sources: every camera in an actor of its own until Ctrl-C /
    SIGTERM (or every camera has ended). Exit codes as a local live run: 130 stopped by a signal (outputs
    finalized first), 1 a camera failed for good, else 0."""
    from streamseg.cli import EXIT_ERROR, EXIT_INTERRUPTED
    from streamseg.cluster.connect import connected
    from streamseg.sources import is_live_input

    files = [uri for uri in config.sources if not is_live_input(uri)]
    if files:
        raise StreamsegError(f"live streams and files cannot be mixed in one run: run {redact(files[0])!r} "
                             "separately")
    if config.source.stride != 1:
        raise ConfigError("source.stride: live streams keep the freshest frame; use source.target_fps "
                          "(--target-fps) to process fewer frames per second")
    if config.cluster.shared_output == "no":
        raise ConfigError("cluster.shared_output = no: live cameras write their outputs on the node that runs "
                          "them; give the cluster an output folder every node reaches (shared_output = yes/auto)")
    out_dir = Path(config.output_dir).resolve()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StreamsegError(f"{out_dir}: cannot create the output folder ({err.strerror or err})") from None
    config = replace(config, output_dir=str(out_dir))
    hide = RedactingFilter(tuple(s for uri in config.sources for s in secrets_of(uri)))
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(hide)
    try:
        with _redacted_entrypoint(config.cluster.address, hide.secrets), connected(config.cluster.address) as ray:
            supervisor = CameraSupervisor(ray, config)
            run = supervisor.run(handle_signals=True)
        _report(run)
    finally:
        for handler in handlers:
            handler.removeFilter(hide)
    failed = [c for c in run.cameras.values() if c.state == "failed"]
    for camera in failed:
        print(f"streamseg: error: {camera.source_id}: {camera.reason}", file=sys.stderr)
    if run.stopped:
        return EXIT_INTERRUPTED
    return EXIT_ERROR if failed else 0


@contextmanager
def _redacted_entrypoint(address: str, secrets: tuple[str, ...]) -> Iterator[None]:
    """Ray records a driver's whole command line as its job's entrypoint (the GCS job table: the dashboard's Jobs
    page, ``ray list jobs``); camera URLs given on the command line would put their credentials there. Ray takes
    it from ``ray._private.utils.get_entrypoint_name`` while connecting: redacted here for that time.

    Not for ``local[:N]`` while Ray is not imported yet: Ray reads its auth token when imported, and
    :func:`~streamseg.cluster.connect.connected` sets a local cluster's token first. A local cluster is private to
    this process (loopback, no dashboard, its files removed at exit), so its job table is seen by nobody else."""
    from streamseg.cluster.connect import local_workers

    if "ray" not in sys.modules and local_workers(address):
        yield
        return
    try:
        from ray._private import utils
        original = utils.get_entrypoint_name
    except (ImportError, AttributeError):  # another Ray version: nothing to hook
        yield
        return
    utils.get_entrypoint_name = lambda: redact(original(), secrets)
    try:
        yield
    finally:
        utils.get_entrypoint_name = original


def _report(run: CameraRun) -> None:
    for camera in run.cameras.values():
        st = camera.status
        if st.get("report"):
            print(f"{camera.source_id}:\n{st['report']}", file=sys.stderr)
        log.info("%s: %s, %d frames processed in the last session, %d restarts, %d reconnects", camera.source_id,
                 camera.state, st.get("processed", 0), camera.restarts,
                 camera.base["reconnects"] + st.get("reconnects", 0))
        for kind, path in st.get("outputs", {}).items():
            log.info("%s: %s -> %s", camera.source_id, kind, path)
