"""The always-on camera service behind ``streamseg serve``: cameras that come and go, one model, state for a page.

:class:`CameraService` drives a camera engine, which runs the cameras (every camera retried forever, until
:meth:`CameraService.stop`): :class:`~streamseg.service.local.LocalCameras` in this process, or with ``[cluster]
address`` each camera in a Ray actor (:class:`streamseg.cluster.camera_service.ClusterCameras`). It keeps what the HTTP
layer (:mod:`streamseg.service.http`) shows: each camera's state (``connecting`` until its first connection, then
``up`` or ``down``, with the time it changed), its rates, the newest annotated JPEG while someone watches, and a
feed of events and state changes for subscribers (server-sent events). Events are also in the run's event store
(SQLite) and, with ``[mqtt]``, on the broker: the engine's outputs, as in ``streamseg run``.

Cameras come from the pipeline file's ``sources`` (``[[sources]]`` tables: ``url``, ``id``, ``zones``, ``lines``),
from :meth:`CameraService.add_camera` (the API) and from :meth:`CameraService.reload` (SIGHUP after editing the
file: only the cameras whose URL or rules changed restart; cameras added through the API are left alone). Camera
outputs continue their files across restarts (``LiveRunner(resume=True)``): a frame index is never written twice.
Camera URLs keep their credentials inside the runner; everything this module hands out is redacted.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from streamseg.config import CameraSpec, PipelineConfig, build_camera_spec, camera_specs, config_for_camera
from streamseg.errors import ConfigError, StreamsegError
from streamseg.redact import redact_url
from streamseg.service.local import CameraPlan, LocalCameras
from streamseg.sinks.event_store import query_events
from streamseg.sinks.recording import utc_stamp
from streamseg.sources import is_live_input, live_source_id

__all__ = ["CameraService", "CameraExists"]

log = logging.getLogger("streamseg.service")


class CameraExists(ConfigError):
    """A camera with that id is already running (HTTP 409)."""


@dataclass
class _Camera:
    """What the service keeps per camera besides the engine's stream."""

    spec: CameraSpec
    id: str
    config: PipelineConfig
    from_file: bool
    state: str = "connecting"
    since: float = field(default_factory=time.time)
    events: int = 0
    watchers: int = 0
    """Viewers of this camera (this one: a camera removed and added again under its id starts at 0)."""

    def plan(self) -> CameraPlan:
        return CameraPlan(self.spec.url, self.id, self.config)


class CameraService:
    """See the module docstring. Thread-safe; a context manager (``start`` on enter, ``stop`` on exit)."""

    def __init__(self, config: PipelineConfig, backend=None, *, engine=None,
                 on_url: Callable[[str], None] | None = None):
        """``engine``: a camera engine built by the caller (default: :class:`LocalCameras`, or with ``[cluster]
        address`` :class:`streamseg.cluster.camera_service.ClusterCameras`); ``backend``: the local engine's model;
        ``on_url``: called with each camera's URL before it starts (the command line's log filter learns its
        credentials)."""
        self.on_url = on_url
        specs = camera_specs(config)
        for spec in specs:
            if not is_live_input(spec.url):
                raise ConfigError(f"serve: {redact_url(spec.url)!r} is not a camera (rtsp://, http(s)://, "
                                  "v4l2://, /dev/video*); files are for `streamseg run`")
        self.config = config
        self._lock = threading.Lock()
        self._cameras: dict[str, _Camera] = {}
        for spec in specs:
            camera_id = _free_id(spec, self._cameras)
            self._cameras[camera_id] = _Camera(spec, camera_id, config_for_camera(config, spec), from_file=True)
        self._subscribers: list[Callable[[str, dict], None]] = []
        if engine is None and config.cluster.address is not None:
            from streamseg.cluster.camera_service import ClusterCameras  # Ray: only for --cluster

            engine = ClusterCameras(config, on_event=self._on_event, on_state=self._on_state)
        self.engine = engine if engine is not None else \
            LocalCameras(config, backend, on_event=self._on_event, on_state=self._on_state)
        self._started = self._stopped = False
        self._output_claim = None

    # -- lifetime ------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start every camera (each connects in the background); returns once the engine runs."""
        self._output_claim = _claim_output_dir(Path(self.config.output_dir))
        with self._lock:
            cameras = [camera.plan() for camera in self._cameras.values()]
        try:
            self.engine.start(cameras)
        except BaseException:
            self._output_claim.close()
            raise
        self._started = True

    def stop(self) -> None:
        """End the run: every camera's outputs finalized, queued events stored and sent; idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            self.engine.stop()
        finally:
            if self._output_claim is not None:
                self._output_claim.close()  # the lock goes with the file

    def __enter__(self) -> "CameraService":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._started and not self._stopped and self.engine.running

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
        counters = self.engine.counters(camera.id)
        return {"id": camera.id, "url": redact_url(camera.spec.url), "state": camera.state, "since": camera.since,
                "fps": counters["fps"], "processed": counters["processed"], "dropped": counters["dropped"],
                "reconnects": counters["reconnects"], "events": camera.events}

    def add_camera(self, spec: dict | CameraSpec, *, from_file: bool = False) -> dict:
        """Start one more camera (``spec``: a ``[[sources]]`` table); the others are not disturbed."""
        if not isinstance(spec, CameraSpec):
            spec = build_camera_spec(spec, "camera")
        if not is_live_input(spec.url):
            raise ConfigError(f"camera: {redact_url(spec.url)!r} is not a camera URL (rtsp://, http(s)://, "
                              "v4l2://, /dev/video*)")
        config = config_for_camera(self.config, spec)
        if self.on_url is not None:
            self.on_url(spec.url)
        with self._lock:
            if not self.running:
                raise StreamsegError("the camera service is not running")
            camera_id = spec.id or live_source_id(spec.url)
            if camera_id in self._cameras:
                raise CameraExists(f"camera {camera_id!r} exists already (remove it first, or pick another id)")
            camera = _Camera(spec, camera_id, config, from_file)
            self._cameras[camera_id] = camera
            try:
                self.engine.add(camera.plan())
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
        self.engine.remove(camera_id)
        log.info("camera_removed id=%s", camera_id)
        self._publish("state", {**self._describe(camera), "state": "removed", "since": time.time()})

    def update_camera(self, camera_id: str, changes: dict) -> dict:
        """Change a camera (``changes``: any of ``url``, ``zones``, ``lines``; ``zones``/``lines`` None: the shared
        ones again): checked first, so a bad change leaves it running as it was; then only this camera restarts
        (its outputs go on). KeyError if unknown."""
        with self._lock:
            camera = self._cameras[camera_id]
        if not isinstance(changes, dict):
            raise ConfigError("camera: a change is a table with url, zones or lines")
        if changes.get("id", camera_id) != camera_id:
            raise ConfigError(f"camera: the id of camera {camera_id!r} cannot change (remove it and add another)")
        table = {"url": changes.get("url", camera.spec.url), "id": camera_id}
        table.update({key: value for key, value in changes.items() if key not in ("url", "id") and value is not None})
        spec = build_camera_spec(table, "camera")
        kept = {key: getattr(camera.spec, key) for key in ("zones", "lines") if key not in changes}
        spec = dataclasses.replace(spec, **kept)
        config_for_camera(self.config, spec)  # a bad change is refused before anything stops
        self.remove_camera(camera_id)
        return self.add_camera(spec, from_file=camera.from_file)

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
            camera_id = _free_id(spec, wanted)  # as at start: two URLs named alike are cam, cam-2
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

    def _on_state(self, camera_id: str, state: str, since: float) -> None:
        with self._lock:
            camera = self._cameras.get(camera_id)
            if camera is None:
                return
            camera.state, camera.since = state, since
        self._publish("state", self._describe(camera))

    def _on_event(self, camera_id: str, record: dict) -> None:
        camera = self._cameras.get(camera_id)
        if camera is not None:
            camera.events += 1
        self._publish("event", record)

    @contextmanager
    def watch(self, camera_id: str) -> Iterator[None]:
        """While held, ``camera_id``'s annotated frames are encoded (at most ``serve.live_fps``)."""
        with self._lock:
            camera = self._cameras[camera_id]
            camera.watchers += 1
            if camera.watchers == 1:
                self.engine.watch(camera_id, True)
        try:
            yield
        finally:
            with self._lock:
                camera.watchers -= 1
                if not camera.watchers and self._cameras.get(camera_id) is camera:  # not removed meanwhile
                    self.engine.watch(camera_id, False)

    def latest_jpeg(self, camera_id: str) -> tuple[int, bytes | None]:
        with self._lock:
            if camera_id not in self._cameras:
                raise KeyError(camera_id)
        return self.engine.latest_jpeg(camera_id)

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
        sinks = self.config.sinks  # (the file's [events] may be empty while cameras have their own rules)
        path = Path(sinks.event_store_path or Path(self.config.output_dir) / "events.db")
        if not sinks.event_store or not path.exists():
            return []
        records = list(query_events(path, cameras=[camera] if camera else (), kinds=[kind] if kind else (),
                                    since=since, until=until))
        return records[-limit:] if limit else records

    # -- monitoring -------------------------------------------------------------------------------------------

    def metrics_text(self) -> bytes:
        return self.engine.metrics_text()

    def health(self) -> tuple[bool, dict]:
        cameras = self.cameras()
        ok = self.running
        return ok, {"cameras": {c["id"]: {"state": c["state"], "since": c["since"], "fps": c["fps"]}
                                for c in cameras}}


def _claim_output_dir(folder: Path):
    """The open lock file of ``folder``, locked for this service until it is closed: a second service on the same
    folder would resume the same cameras' files and interleave its lines with ours. A ConfigError names the holder."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / ".serve.lock", "a+b", buffering=0)  # unbuffered: closing never writes
    except OSError as err:
        raise StreamsegError(f"serve: cannot use the output folder {folder}: {err.strerror or err}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().decode(errors="replace").strip() or "?"
        handle.close()
        raise ConfigError(f"serve: {folder} is the output folder of another running streamseg serve (pid {holder}); "
                          "give this one its own (-o or output_dir)") from None
    try:  # the pid only names the holder in the other's error: a full disk must not stop the service here
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n".encode())
    except OSError as err:
        log.warning("serve_lock_pid_unwritten path=%s error=%s", folder / ".serve.lock", err.strerror or err)
    return handle


def _free_id(spec: CameraSpec, taken) -> str:
    """The camera's id: its own, or from its URL, with ``-2``, ``-3``... while ``taken`` has it."""
    base = spec.id or live_source_id(spec.url)
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def _glob_safe(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in text)
