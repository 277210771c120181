"""The cameras of a service in this process: one :class:`~streamseg.live.LiveRunner` in ``keep_running`` mode on a
thread of its own (one model for every camera; cameras retried forever; added and removed while the others run).

A camera engine is what :class:`~streamseg.service.core.CameraService` drives; the other one runs each camera in a
Ray actor (:class:`streamseg.cluster.camera_service.ClusterCameras`). Both report through two callbacks given at
construction, from their own threads: ``on_event(camera_id, record)`` (a ``streamseg.events/1`` record) and
``on_state(camera_id, state, since)`` (``up`` / ``down``), and both write the cameras' outputs, event store and MQTT
as a live ``streamseg run`` does.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import cv2

from streamseg.config import PipelineConfig
from streamseg.errors import StreamsegError
from streamseg.live import LiveRunner, StreamRun
from streamseg.sinks import Annotator
from streamseg.sinks.events import event_record
from streamseg.sources import StreamStatus
from streamseg.stream import overlays_of
from streamseg.types import FrameResult

log = logging.getLogger("streamseg.service")

STATES = {"stream_up": "up", "stream_down": "down", "stream_failed": "down"}


@dataclass(frozen=True)
class CameraPlan:
    """One camera as an engine starts it: its URL (credentials stay inside the engine), id and pipeline."""

    url: str
    id: str
    config: PipelineConfig

    def __repr__(self) -> str:  # never the URL
        return f"CameraPlan(id={self.id!r})"


class _Picture:
    """The newest annotated JPEG of one camera, encoded only while someone watches."""

    def __init__(self):
        self.watchers = 0
        self.seq = 0
        self.jpeg: bytes | None = None
        self.due = 0.0
        self.annotator: Annotator | None = None


class LocalCameras:
    """See the module docstring."""

    def __init__(self, config: PipelineConfig, backend=None, *, on_event: Callable[[str, dict], None],
                 on_state: Callable[[str, str, float], None]):
        self.config = config
        self.on_event, self.on_state = on_event, on_state
        self.runner = LiveRunner(config, backend, on_result=self._on_result, resume=True, keep_running=True,
                                 on_status=self._on_status)
        self._pictures: dict[str, _Picture] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    # -- lifetime -----------------------------------------------------------------------------------------------

    def start(self, cameras: list[CameraPlan], timeout: float = 60.0) -> None:
        """Start the run (each camera connects in the background); returns once the graph runs."""
        if self.config.mqtt.enabled:
            self.runner.shared.publisher()  # "online" on the broker from the start, before any camera is up
        self._thread = threading.Thread(target=self._run, args=(cameras,), name="streamseg:service", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.runner.ready.wait(0.1):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                if isinstance(self._error, StreamsegError):
                    raise self._error
                raise StreamsegError(f"the camera service did not start: {self._error or 'timed out'}")

    def _run(self, cameras: list[CameraPlan]) -> None:
        try:
            self.runner.run([c.url for c in cameras], source_ids=[c.id for c in cameras],
                            configs=[c.config for c in cameras])
        except BaseException as err:  # noqa: BLE001 - reported by start() in the caller's thread
            self._error = err
            log.error("service_failed error=%s", err if isinstance(err, StreamsegError) else repr(err))

    def stop(self) -> None:
        """Every camera's outputs finalized, queued events stored and sent, the model closed."""
        self.runner.stop()
        if self._thread is not None:
            self._thread.join()
        self.runner.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.runner.ready.is_set()

    # -- cameras ------------------------------------------------------------------------------------------------

    def add(self, camera: CameraPlan) -> None:
        self.runner.add_stream(camera.url, camera.id, camera.config)

    def remove(self, camera_id: str) -> None:
        self.runner.remove_stream(camera_id)
        with self._lock:
            self._pictures.pop(camera_id, None)

    def counters(self, camera_id: str) -> dict:
        """``processed``, ``dropped``, ``reconnects`` and ``fps`` (results/s lately) of a camera."""
        stream = self.runner.streams.get(camera_id)
        metrics = self.runner.metrics
        if stream is None:
            return {"processed": 0, "dropped": 0, "reconnects": 0, "fps": 0.0}
        return {"processed": stream.processed, "dropped": stream.source.dropped,
                "reconnects": stream.source.reconnects,
                "fps": round(metrics.fps(camera_id), 2) if metrics is not None else 0.0}

    # -- callbacks from the runner's threads --------------------------------------------------------------------

    def _on_status(self, stream: StreamRun, status: StreamStatus) -> None:
        state = STATES.get(status.kind)
        if state is not None and self.runner.streams.get(stream.source_id) is stream:
            self.on_state(stream.source_id, state, status.wall_time)

    def _on_result(self, result: FrameResult, latency: float) -> None:
        camera_id = result.frame.source_id
        for event in result.events:
            self.on_event(camera_id, event_record(event))
        picture = self._pictures.get(camera_id)
        if picture is not None and picture.watchers and time.monotonic() >= picture.due:
            picture.due = time.monotonic() + 1.0 / self.config.serve.live_fps
            self._encode(camera_id, picture, result)

    # -- live pictures ------------------------------------------------------------------------------------------

    def watch(self, camera_id: str, watching: bool) -> None:
        """One more (or one less) viewer of ``camera_id``'s live picture."""
        with self._lock:
            picture = self._pictures.setdefault(camera_id, _Picture())
            picture.watchers += 1 if watching else -1
            if picture.watchers <= 0:
                picture.watchers, picture.annotator = 0, None  # zones may change with a restart

    def latest_jpeg(self, camera_id: str) -> tuple[int, bytes | None]:
        picture = self._pictures.get(camera_id)
        return (0, None) if picture is None else (picture.seq, picture.jpeg)

    def _encode(self, camera_id: str, picture: _Picture, result: FrameResult) -> None:
        """The annotated picture as a JPEG (only while someone watches: encoding costs CPU the model needs)."""
        if picture.annotator is None:
            stream = self.runner.streams.get(camera_id)
            processor = stream.processor if stream is not None else None
            picture.annotator = Annotator(overlays=overlays_of(processor.engine if processor else None))
        image = picture.annotator.annotate(result.frame.image.copy(), result.detections)
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, self.config.serve.jpeg_quality])
        if ok:
            picture.jpeg, picture.seq = data.tobytes(), picture.seq + 1

    # -- monitoring ---------------------------------------------------------------------------------------------

    def metrics_text(self) -> bytes:
        metrics = self.runner.metrics
        return metrics.text() if metrics is not None else b""
