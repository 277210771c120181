"""``streamseg serve --cluster ADDRESS``: the service's camera engine on a Ray cluster (:class:`ClusterCameras`),
each camera in a :class:`~streamseg.cluster.cameras.CameraActor` placed and supervised by a
:class:`~streamseg.cluster.cameras.CameraSupervisor` in ``keep_running`` mode. It takes the place of
:class:`~streamseg.service.local.LocalCameras` (same methods and callbacks); see :class:`ClusterCameras`."""

from __future__ import annotations

import json
import logging
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

from streamseg.cluster.cameras import (ENDED, Camera, CameraSupervisor, _first_line, _redacted_entrypoint,
                                       _short)
from streamseg.config import PipelineConfig
from streamseg.errors import ConfigError, StreamsegError
from streamseg.redact import RedactingFilter, secrets_of

__all__ = ["ClusterCameras"]

log = logging.getLogger("streamseg.cluster.cameras")


class _ServiceSupervisor(CameraSupervisor):
    """The supervisor of :class:`ClusterCameras`: hands each status reply's events and up/down changes on."""

    def __init__(self, ray, config: PipelineConfig, engine: "ClusterCameras", shared):
        super().__init__(ray, config, keep_running=True, shared=shared)
        self.engine = engine

    def _update(self, camera: Camera, status: dict) -> None:
        new = status.get("session") != camera.session
        super()._update(camera, status)
        if new and camera.sessions == 1:  # (restarts are logged by the base class, with the pid)
            log.info("camera_started source=%s node=%s pid=%s actor=%s", camera.source_id, _short(status["node"]),
                     status["pid"], camera.name)
        elif new:  # a new actor process: the camera was down meanwhile, however briefly
            self.engine._state(camera, False, time.time())
        self.engine._reported(camera, status)

    def _lost(self, camera: Camera) -> None:
        self.engine._state(camera, False, time.time())


@dataclass
class _Picture:
    """The driver's copy of one camera's newest annotated JPEG, fetched from its actor while someone watches."""

    watchers: int = 0
    number: int = 0
    jpeg: bytes | None = None
    session: str | None = None
    seq: int = 0
    """The actor's session and sequence number of ``jpeg`` (the actor sends a picture only when it has another)."""
    pending: object = None


class ClusterCameras:
    """The cameras of ``streamseg serve --cluster ADDRESS``: each camera in a :class:`CameraActor` of its own on the
    Ray cluster, placed, supervised and restarted by a :class:`CameraSupervisor` in ``keep_running`` mode on a
    driver thread. The camera engine of :class:`~streamseg.service.core.CameraService` that takes the place of
    :class:`~streamseg.service.local.LocalCameras`, with the same methods and callbacks.

    Every camera is retried forever: its actor runs ``LiveRunner(keep_running=True)`` (a camera unreachable at start
    or later never ends), and an actor whose process died is restarted by Ray (or re-created on another node) and
    continues the camera's files. Each actor runs its camera's own pipeline (``plan.config``: its zones and lines).
    Cameras are added and removed while the others run on; a removed camera's actor finalizes its outputs first.

    Outputs: each actor writes its camera's files in ``output_dir`` (a folder every node reaches) as a live run does,
    but without the event store and MQTT (``sinks.event_store`` off, ``[mqtt]`` disabled in the actors: the actors
    may be on other machines). The DRIVER owns those: every status poll (``POLL_SECONDS``) brings the events each
    actor made since the last one, as ``streamseg.events/1`` records, and the driver writes them to one
    :class:`~streamseg.sinks.shared.RunOutputs` (``<output_dir>/events.db``, the MQTT publisher, each camera's
    retained up/down state) and calls ``on_event``. A camera that is stopped or removed hands over its last events
    with its final status. What a killed actor (SIGKILL, a lost node) can lose is the events of its last poll
    interval (up to ``POLL_SECONDS``) that the driver had not polled yet: they are not in ``events.db``, on MQTT or in
    the service's feed, but they ARE in that camera's ``<id>.events.jsonl``, which the actor writes as they happen.
    A driver that falls more than ``LATENCY_KEEP`` events behind on a camera loses the oldest ones the same way.

    Live pictures: while a camera is watched (:meth:`watch`) a driver thread keeps asking its actor for the newest
    annotated JPEG (:meth:`CameraActor.picture`); the actor encodes at most ``serve.live_fps`` pictures a second,
    and only for ``PICTURE_LEASE`` seconds after the last request (nothing is encoded for nobody).
    :meth:`latest_jpeg` never waits on the cluster: it returns the driver's copy.

    ``on_event(camera_id, record)`` and ``on_state(camera_id, "up" | "down", wall_time)`` are called from driver
    threads: a camera is ``down`` when its stream went down or could not connect, and while its actor restarts.
    Credentials: camera URLs travel to the actors only as call arguments; actor names and everything handed out
    carry the camera ids only, and the driver's log handlers redact every camera's URL and credentials.
    """

    def __init__(self, config: PipelineConfig, *, on_event, on_state):
        self.config = config
        self.on_event, self.on_state = on_event, on_state
        self.supervisor: _ServiceSupervisor | None = None
        self.outputs = None
        """The driver's :class:`~streamseg.sinks.shared.RunOutputs` (event store, MQTT)."""
        self._stack = ExitStack()
        self._thread: threading.Thread | None = None
        self._pictures_thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock = threading.RLock()
        self._pictures: dict[str, _Picture] = {}
        self._mqtt: dict[str, object] = {}
        self._store_paths: dict[str, Path | None] = {}
        self._closing = threading.Event()
        self._stopped = False
        self._hide: RedactingFilter | None = None
        self._handlers: list[logging.Handler] = []

    # -- lifetime -----------------------------------------------------------------------------------------------

    def start(self, cameras: list, timeout: float = 60.0) -> None:
        """Connect to the cluster (``[cluster] address``) and start every camera's actor (each connects to its
        camera in the background); returns once the supervisor runs. One-line StreamsegError when the cluster
        cannot be reached."""
        from streamseg.cluster.connect import connected
        from streamseg.sinks.shared import RunOutputs

        cfg = self.config
        if cfg.cluster.shared_output == "no":
            raise ConfigError("cluster.shared_output = no: live cameras write their outputs on the node that runs "
                              "them; give the cluster an output folder every node reaches (shared_output = "
                              "yes/auto)")
        if cfg.source.stride != 1:
            raise ConfigError("source.stride: live streams keep the freshest frame; use source.target_fps to "
                              "process fewer frames per second")
        out_dir = Path(cfg.output_dir).resolve()
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StreamsegError(f"{out_dir}: cannot create the output folder ({err.strerror or err})") from None
        self.config = cfg = replace(cfg, output_dir=str(out_dir))
        self._hide = RedactingFilter(tuple(s for plan in cameras for s in secrets_of(plan.url)))
        self._handlers = list(logging.getLogger().handlers)
        for handler in self._handlers:
            handler.addFilter(self._hide)
        try:
            with _redacted_entrypoint(cfg.cluster.address, self._hide.secrets):
                ray = self._stack.enter_context(connected(cfg.cluster.address))
            self.outputs = RunOutputs(cfg)
            if cfg.mqtt.enabled:
                self.outputs.publisher()  # "online" on the broker from the start, before any camera is up
            self.supervisor = _ServiceSupervisor(ray, replace(cfg, sources=(), cameras=()), self, self.outputs)
            for plan in cameras:
                self.supervisor.add(plan.id, plan.url, self._actor_config(plan.config))
            self._thread = threading.Thread(target=self._run, name="streamseg:cluster-cameras", daemon=True)
            self._thread.start()
            deadline = time.monotonic() + timeout
            while not self.supervisor.ready.wait(0.1):
                if not self._thread.is_alive() or time.monotonic() > deadline:
                    raise self._error if isinstance(self._error, StreamsegError) else \
                        StreamsegError(f"the camera service did not start on the cluster: "
                                       f"{_first_line(self._error) if self._error else 'timed out'}")
        except BaseException:
            self.stop()
            raise
        self._pictures_thread = threading.Thread(target=self._fetch_pictures, name="streamseg:cluster-pictures",
                                                 daemon=True)
        self._pictures_thread.start()

    def _actor_config(self, config: PipelineConfig) -> PipelineConfig:
        """A camera's pipeline as its actor runs it: no URLs, no metrics port, no event store, no MQTT (the
        driver's), the driver's absolute output folder."""
        return replace(config, sources=(), cameras=(), output_dir=self.config.output_dir,
                       live=replace(config.live, metrics_port=None),
                       sinks=replace(config.sinks, event_store=False), mqtt=replace(config.mqtt, enabled=False))

    def _run(self) -> None:
        try:
            self.supervisor.run()
        except BaseException as err:  # noqa: BLE001 - reported by start() in the caller's thread
            self._error = err
            log.error("service_failed error=%s", err if isinstance(err, StreamsegError) else repr(err))

    def stop(self) -> None:
        """Every camera's outputs finalized (its last events stored and sent), then the driver's event store and
        MQTT closed and the cluster left; idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._closing.set()
        try:
            if self.supervisor is not None:
                self.supervisor.stop()
            if self._thread is not None:
                self._thread.join()
            if self._pictures_thread is not None:
                self._pictures_thread.join()
            with self._lock:
                sinks, self._mqtt = list(self._mqtt.values()), {}
            for sink in sinks:
                sink.close()
            if self.outputs is not None:
                self.outputs.close()
        finally:
            self._stack.close()
            for handler in self._handlers:
                handler.removeFilter(self._hide)

    @property
    def running(self) -> bool:
        return (self._thread is not None and self._thread.is_alive() and self.supervisor is not None
                and self.supervisor.ready.is_set() and not self._closing.is_set())

    # -- cameras ------------------------------------------------------------------------------------------------

    def add(self, plan) -> None:
        """One more camera (its actor is placed at the next round); the other cameras are not disturbed."""
        if self.supervisor is None or not self.running:
            raise StreamsegError("the camera service is not running")
        with self._lock:
            self._hide.secrets = tuple(dict.fromkeys((*self._hide.secrets, *secrets_of(plan.url))))
        self.supervisor.add(plan.id, plan.url, self._actor_config(plan.config))

    def remove(self, camera_id: str) -> None:
        """Stop one camera: its actor finalizes its outputs and hands over its last events, then is killed."""
        if self.supervisor is None:
            raise KeyError(camera_id)
        self.supervisor.remove(camera_id)
        with self._lock:
            self._pictures.pop(camera_id, None)
            self._store_paths.pop(camera_id, None)
            sink = self._mqtt.pop(camera_id, None)
        if sink is not None:
            sink.close()  # its retained state: down

    def counters(self, camera_id: str) -> dict:
        """``processed``, ``dropped``, ``reconnects`` (summed over the camera's actor sessions) and ``fps``."""
        camera = self.supervisor.cameras.get(camera_id) if self.supervisor is not None else None
        if camera is None:
            return {"processed": 0, "dropped": 0, "reconnects": 0, "fps": 0.0}
        st, base = camera.status, camera.base
        return {"processed": base["processed"] + st.get("processed", 0),
                "dropped": base["dropped"] + st.get("dropped", 0),
                "reconnects": base["reconnects"] + st.get("reconnects", 0),
                "fps": round(self.supervisor.metrics.fps(camera_id), 2)}

    # -- what the actors report (driver threads) -------------------------------------------------------------

    def _reported(self, camera: Camera, status: dict) -> None:
        for record in status.get("records", ()):
            self._store(camera, record)
            try:
                self.on_event(camera.source_id, record)
            except Exception as err:  # noqa: BLE001 - the service's problem must not stop supervision
                log.warning("on_event_failed source=%s error=%r", camera.source_id, err)
        if not camera.removed:
            for state, wall in status.get("changes", ()):
                self._state(camera, state == "up", wall)
            if status.get("state") in ENDED:  # its actor gave up (a model that does not load): down for good
                self._state(camera, False, time.time())

    def _store(self, camera: Camera, record: dict) -> None:
        """One event into the driver's event store and onto MQTT, as the actor's own sinks would have."""
        from streamseg.sinks.event_store import store_path

        try:
            path = self._store_paths.get(camera.source_id, False)
            if path is False:  # the camera's rules with the service's sinks (the actors have the store off)
                path = store_path(replace(camera.config or self.config, sinks=self.config.sinks))
                self._store_paths[camera.source_id] = path
            if path is not None:
                self.outputs.event_store(path).add(record)
            sink = self._mqtt_sink(camera)
            if sink is not None:
                sink.state(True)
                sink.publisher.put(sink.topic, json.dumps(record, ensure_ascii=False, allow_nan=False,
                                                          separators=(",", ":")), event=True)
                sink.events_written += 1
        except Exception as err:  # noqa: BLE001 - a failing output must not stop the others
            log.error("output_failed source=%s error=%s", camera.source_id, _first_line(err))

    def _mqtt_sink(self, camera: Camera):
        from streamseg.sinks.mqtt import MqttEventsSink

        config = camera.config or self.config
        if not (self.config.mqtt.enabled and config.events.enabled and config.tracker.enabled):
            return None
        with self._lock:
            sink = self._mqtt.get(camera.source_id)
            if sink is None and not camera.removed and not self._stopped:
                sink = self._mqtt[camera.source_id] = MqttEventsSink(self.outputs.publisher(), camera.source_id)
            return sink

    def _state(self, camera: Camera, up: bool, wall: float) -> None:
        with self._lock:
            if camera.removed or camera.up == up:
                return
            camera.up = up
        if up or camera.source_id in self._mqtt:
            try:
                sink = self._mqtt_sink(camera)
                if sink is not None:
                    sink.state(up)
            except Exception as err:  # noqa: BLE001
                log.error("output_failed source=%s error=%s", camera.source_id, _first_line(err))
        try:
            self.on_state(camera.source_id, "up" if up else "down", wall)
        except Exception as err:  # noqa: BLE001 - the service's problem must not stop supervision
            log.warning("on_state_failed source=%s error=%r", camera.source_id, err)

    # -- live pictures ------------------------------------------------------------------------------------------

    def watch(self, camera_id: str, watching: bool) -> None:
        """One more (or one less) viewer of ``camera_id``'s live picture."""
        with self._lock:
            picture = self._pictures.setdefault(camera_id, _Picture())
            picture.watchers += 1 if watching else -1
            if picture.watchers > 0:
                return
            picture.watchers = 0
        camera = self.supervisor.cameras.get(camera_id) if self.supervisor is not None else None
        if camera is not None and camera.actor is not None:
            try:
                camera.actor.picture.remote(None, 0, False)  # no viewer: the actor stops encoding at once
            except Exception:  # noqa: BLE001 - its actor is gone: nothing is encoded there anyway
                pass

    def latest_jpeg(self, camera_id: str) -> tuple[int, bytes | None]:
        picture = self._pictures.get(camera_id)
        return (0, None) if picture is None else (picture.number, picture.jpeg)

    def _fetch_pictures(self) -> None:
        """While a camera is watched, ask its actor for its newest picture, about twice per ``live_fps`` period."""
        ray = self.supervisor.ray
        period = max(0.02, 0.5 / self.config.serve.live_fps)
        while not self._closing.is_set():
            with self._lock:
                pictures = dict(self._pictures)
            pending = {}
            for camera_id, picture in pictures.items():
                camera = self.supervisor.cameras.get(camera_id)
                if picture.pending is None and picture.watchers > 0 and camera is not None \
                        and camera.actor is not None:
                    try:
                        picture.pending = camera.actor.picture.remote(picture.session, picture.seq, True)
                    except Exception:  # noqa: BLE001 - its actor is being replaced
                        continue
                if picture.pending is not None:
                    pending[picture.pending] = picture
            if not pending:
                self._closing.wait(period)
                continue
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=period)
            for ref in ready:
                picture = pending[ref]
                picture.pending = None
                try:
                    session, seq, jpeg = ray.get(ref)
                except Exception:  # noqa: BLE001 - its actor died or restarts: asked again next round
                    continue
                if jpeg is not None:
                    picture.session, picture.seq = session, seq
                    picture.jpeg, picture.number = jpeg, picture.number + 1
            if ready:
                self._closing.wait(period)

    # -- monitoring ---------------------------------------------------------------------------------------------

    def metrics_text(self) -> bytes:
        return self.supervisor.metrics.text() if self.supervisor is not None else b""
