"""The always-on camera service behind ``streamseg serve``: cameras that come and go, one model, state for a page.

:class:`CameraService` runs a :class:`~streamseg.live.LiveRunner` in ``keep_running`` mode on a thread of its own
(every camera retried forever; the run lasts until :meth:`CameraService.stop`) and keeps what the HTTP layer
(:mod:`streamseg.service.http`) shows: each camera's state (``connecting`` until its first connection, then ``up``
or ``down``, with the time it changed), its rates, the newest annotated JPEG while someone watches, and a feed of
events and state changes for subscribers (server-sent events). Events are also in the run's event store (SQLite)
and, with ``[mqtt]``, on the broker: those are the runner's outputs, as in ``streamseg run``.

Cameras come from the pipeline file's ``sources`` (``[[sources]]`` tables: ``url``, ``id``, ``zones``, ``lines``),
from :meth:`CameraService.add_camera` (the API) and from :meth:`CameraService.reload` (SIGHUP after editing the
file: only the cameras whose URL or rules changed restart; cameras added through the API are left alone). Camera
outputs continue their files across restarts (``LiveRunner(resume=True)``): a frame index is never written twice.
Camera URLs keep their credentials inside the runner; everything this module hands out is redacted.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import cv2

from streamseg.config import (CameraSpec, PipelineConfig, build_camera_spec, camera_specs, config_for_camera)
from streamseg.errors import ConfigError, StreamsegError
from streamseg.live import LiveRunner, StreamRun
from streamseg.redact import redact_url
from streamseg.sinks import Annotator
from streamseg.sinks.event_store import query_events, store_path
from streamseg.sinks.events import event_record
from streamseg.sinks.recording import utc_stamp
from streamseg.sources import StreamStatus, is_live_input, live_source_id
from streamseg.stream import overlays_of
from streamseg.types import FrameResult

__all__ = ["CameraService", "CameraExists"]

log = logging.getLogger("streamseg.service")

STATES = {"stream_up": "up", "stream_down": "down", "stream_failed": "down"}


class CameraExists(ConfigError):
    """A camera with that id is already running (HTTP 409)."""


@dataclass
class _Camera:
    """What the service keeps per camera besides the runner's stream."""

    spec: CameraSpec
    id: str
    config: PipelineConfig
    from_file: bool
    stream: StreamRun | None = None
    state: str = "connecting"
    since: float = field(default_factory=time.time)
    events: int = 0
    watchers: int = 0
    jpeg: bytes | None = None
    jpeg_seq: int = 0
    jpeg_due: float = 0.0
    annotator: Annotator | None = None


class CameraService:
    """See the module docstring. Thread-safe; a context manager (``start`` on enter, ``stop`` on exit)."""

    def __init__(self, config: PipelineConfig, backend=None):
        specs = camera_specs(config)
        for spec in specs:
            if not is_live_input(spec.url):
                raise ConfigError(f"serve: {redact_url(spec.url)!r} is not a camera (rtsp://, http(s)://, "
                                  "v4l2://, /dev/video*); files are for `streamseg run`")
        self.config = config
        self._lock = threading.Lock()
        self._cameras: dict[str, _Camera] = {}
        for spec in specs:
            camera_id = self._free_id(spec)
            self._cameras[camera_id] = _Camera(spec, camera_id, config_for_camera(config, spec), from_file=True)
        self._subscribers: list[Callable[[str, dict], None]] = []
        self._runner = LiveRunner(config, backend, on_result=self._on_result, resume=True, keep_running=True,
                                  on_status=self._on_status)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._stopped = False

    # -- lifetime ------------------------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Start every camera (each connects in the background); returns once the graph runs."""
        with self._lock:
            cameras = list(self._cameras.values())
        self._thread = threading.Thread(target=self._run, args=(cameras,), name="streamseg:service", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._runner.ready.wait(0.1):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                error = self._error
                if isinstance(error, StreamsegError):
                    raise error
                raise StreamsegError(f"the camera service did not start: {error or 'timed out'}")
        with self._lock:
            for camera in cameras:
                camera.stream = self._runner.streams.get(camera.id)

    def _run(self, cameras: list[_Camera]) -> None:
        try:
            self._runner.run([c.spec.url for c in cameras], source_ids=[c.id for c in cameras],
                             configs=[c.config for c in cameras])
        except BaseException as err:  # noqa: BLE001 - reported by start() / stop() in the caller's thread
            self._error = err
            log.error("service_failed error=%s", err if isinstance(err, StreamsegError) else repr(err))

    def stop(self) -> None:
        """End the run: every camera's outputs finalized, queued events stored and sent; idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._runner.stop()
        if self._thread is not None:
            self._thread.join()
        self._runner.close()

    def __enter__(self) -> "CameraService":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopped

    # -- cameras -------------------------------------------------------------------------------------------------

    def cameras(self) -> list[dict]:
        with self._lock:
            cameras = list(self._cameras.values())
        return [self._describe(camera) for camera in cameras]

    def camera(self, camera_id: str) -> dict:
        with self._lock:
            camera = self._cameras[camera_id]
        return self._describe(camera)

    def _describe(self, camera: _Camera) -> dict:
        stream, metrics = camera.stream, self._runner.metrics
        source = stream.source if stream is not None else None
        return {
            "id": camera.id,
            "url": redact_url(camera.spec.url),
            "state": camera.state,
            "since": camera.since,
            "fps": round(metrics.fps(camera.id), 2) if metrics is not None else 0.0,
            "processed": stream.processed if stream is not None else 0,
            "dropped": source.dropped if source is not None else 0,
            "reconnects": source.reconnects if source is not None else 0,
            "events": camera.events,
        }

    def add_camera(self, spec: dict | CameraSpec, *, from_file: bool = False) -> dict:
        """Start one more camera (``spec``: a ``[[sources]]`` table); the others are not disturbed."""
        if not isinstance(spec, CameraSpec):
            spec = build_camera_spec(spec, "camera")
        if not is_live_input(spec.url):
            raise ConfigError(f"camera: {redact_url(spec.url)!r} is not a camera URL (rtsp://, http(s)://, "
                              "v4l2://, /dev/video*)")
        config = config_for_camera(self.config, spec)
        with self._lock:
            if not self.running:
                raise StreamsegError("the camera service is not running")
            camera_id = spec.id or live_source_id(spec.url)
            if camera_id in self._cameras:
                raise CameraExists(f"camera {camera_id!r} exists already (remove it first, or pick another id)")
            camera = _Camera(spec, camera_id, config, from_file)
            self._cameras[camera_id] = camera
            try:
                camera.stream = self._runner.add_stream(spec.url, camera_id, config)
            except BaseException:
                del self._cameras[camera_id]
                raise
        log.info("camera_added id=%s url=%s", camera_id, redact_url(spec.url))
        self._publish("state", self._describe(camera))
        return self._describe(camera)

    def remove_camera(self, camera_id: str) -> None:
        """Stop one camera; its outputs are finalized. KeyError if unknown."""
        with self._lock:
            camera = self._cameras.pop(camera_id)
        self._runner.remove_stream(camera_id)
        log.info("camera_removed id=%s", camera_id)
        self._publish("state", {**self._describe(camera), "state": "removed", "since": time.time()})

    def reload(self, config: PipelineConfig) -> dict:
        """Apply an edited pipeline file's cameras: new ones start, gone ones stop, changed ones (URL, zones,
        lines, or the shared [events] they use) restart; the rest run on. Other sections need a restart of the
        service (a warning names them)."""
        changed_sections = [f.name for f in dataclasses.fields(config)
                            if f.name not in ("sources", "cameras", "events")
                            and getattr(config, f.name) != getattr(self.config, f.name)]
        if changed_sections:
            log.warning("reload: [%s] changed; those settings apply after a restart of the service",
                        "], [".join(changed_sections))
        wanted: dict[str, tuple[CameraSpec, PipelineConfig]] = {}
        for spec in camera_specs(config):
            if not is_live_input(spec.url):
                raise ConfigError(f"reload: {redact_url(spec.url)!r} is not a camera")
            camera_id = spec.id or live_source_id(spec.url)
            wanted[camera_id] = (spec, config_for_camera(dataclasses.replace(self.config, events=config.events),
                                                         spec))
        with self._lock:
            current = {cid: c for cid, c in self._cameras.items() if c.from_file}
        added, removed, restarted = [], [], []
        for camera_id, camera in current.items():
            if camera_id not in wanted:
                self.remove_camera(camera_id)
                removed.append(camera_id)
            elif (camera.spec.url, camera.config.events) != (wanted[camera_id][0].url, wanted[camera_id][1].events):
                self.remove_camera(camera_id)
                restarted.append(camera_id)
        self.config = dataclasses.replace(self.config, events=config.events)
        for camera_id, (spec, _) in wanted.items():
            if camera_id in removed:
                continue
            if camera_id in current and camera_id not in restarted:
                continue
            self.add_camera(dataclasses.replace(spec, id=camera_id), from_file=True)
            if camera_id not in restarted:
                added.append(camera_id)
        log.info("reload: added %s, removed %s, restarted %s", added or "none", removed or "none",
                 restarted or "none")
        return {"added": added, "removed": removed, "restarted": restarted}

    def _free_id(self, spec: CameraSpec) -> str:
        base = spec.id or live_source_id(spec.url)
        candidate, n = base, 1
        while candidate in self._cameras:
            n += 1
            candidate = f"{base}-{n}"
        return candidate

    # -- events, state, pictures -------------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[str, dict], None]) -> Callable[[], None]:
        """``callback(kind, payload)`` for each ``event`` and ``state`` change, from pipeline threads (it must
        not block). Returns the function that unsubscribes."""
        with self._lock:
            self._subscribers = [*self._subscribers, callback]

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = [s for s in self._subscribers if s is not callback]

        return unsubscribe

    def _publish(self, kind: str, payload: dict) -> None:
        for callback in self._subscribers:
            try:
                callback(kind, payload)
            except Exception as err:  # noqa: BLE001 - a broken subscriber must not stop the cameras
                log.warning("subscriber_failed error=%r", err)

    def _on_status(self, stream: StreamRun, status: StreamStatus) -> None:
        state = STATES.get(status.kind)
        with self._lock:
            camera = self._cameras.get(stream.source_id)
            if camera is None or state is None or (camera.stream is not None and camera.stream is not stream):
                return
            camera.state, camera.since = state, status.wall_time
        self._publish("state", self._describe(camera))

    def _on_result(self, result: FrameResult, latency: float) -> None:
        camera = self._cameras.get(result.frame.source_id)
        if camera is None:
            return
        for event in result.events:
            camera.events += 1
            self._publish("event", event_record(event))
        if camera.watchers and time.monotonic() >= camera.jpeg_due:
            camera.jpeg_due = time.monotonic() + 1.0 / self.config.serve.live_fps
            self._encode(camera, result)

    def _encode(self, camera: _Camera, result: FrameResult) -> None:
        """The annotated picture as a JPEG (only while someone watches: encoding costs CPU the model needs)."""
        stream = camera.stream
        processor = stream.processor if stream is not None else None
        if camera.annotator is None:
            camera.annotator = Annotator(overlays=overlays_of(processor.engine if processor else None))
        image = camera.annotator.annotate(result.frame.image.copy(), result.detections)
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, self.config.serve.jpeg_quality])
        if ok:
            camera.jpeg, camera.jpeg_seq = data.tobytes(), camera.jpeg_seq + 1

    @contextmanager
    def watch(self, camera_id: str) -> Iterator[None]:
        """While held, ``camera_id``'s annotated frames are encoded (at most ``serve.live_fps``)."""
        with self._lock:
            camera = self._cameras[camera_id]
            camera.watchers += 1
        try:
            yield
        finally:
            with self._lock:
                camera.watchers -= 1
                if not camera.watchers:
                    camera.annotator = None  # zones may change with a restart of the camera

    def latest_jpeg(self, camera_id: str) -> tuple[int, bytes | None]:
        with self._lock:
            camera = self._cameras[camera_id]
            return camera.jpeg_seq, camera.jpeg

    def clip_for(self, camera_id: str, wall_time: float) -> Path | None:
        """The event clip written for an event at ``wall_time`` (None: none, or not finished yet)."""
        folder = Path(self.config.output_dir) / camera_id / "clips"
        if not folder.is_dir():
            return None
        exact = sorted(folder.glob(f"{_glob_safe(camera_id)}-{utc_stamp(wall_time)}-*.mp4"))
        if exact:
            return exact[0]
        return None

    def query_events(self, *, camera: str | None = None, kind: str | None = None, since: float | None = None,
                     until: float | None = None, limit: int = 1000) -> list[dict]:
        """Stored events, oldest first (the newest ``limit`` of those that match)."""
        path = store_path(self.config)
        if path is None or not path.exists():
            return []
        records = list(query_events(path, cameras=[camera] if camera else (), kinds=[kind] if kind else (),
                                    since=since, until=until))
        return records[-limit:] if limit else records

    # -- monitoring -------------------------------------------------------------------------------------------

    def metrics_text(self) -> bytes:
        metrics = self._runner.metrics
        return metrics.text() if metrics is not None else b""

    def health(self) -> tuple[bool, dict]:
        cameras = self.cameras()
        ok = self.running and self._runner.ready.is_set()
        return ok, {"cameras": {c["id"]: {"state": c["state"], "since": c["since"], "fps": c["fps"]}
                                for c in cameras}}


def _glob_safe(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in text)
