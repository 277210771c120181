"""Outputs that every stream of a run writes to together: the event store (one SQLite writer per file) and the MQTT
publisher (one broker connection). The runner owns one :class:`RunOutputs`, hands it to each stream's
:class:`~streamseg.stream.StreamProcessor` and closes it after the streams, so the last events are written before
the store and the connection go away. Nothing here is global: two runs in one process have their own."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from streamseg.sinks.event_store import EventStore
from streamseg.sinks.mqtt import MqttPublisher


class RunOutputs:
    """The shared outputs of one run, each opened when a stream first needs it (a run whose cameras never come up
    creates no file and opens no connection). Thread-safe; :meth:`close` is idempotent."""

    def __init__(self, config):
        self.config = config
        self._stores: dict[Path, EventStore] = {}
        self._publisher: MqttPublisher | None = None
        self._lock = threading.Lock()
        self._closed = False

    def event_store(self, path: str | os.PathLike) -> EventStore:
        """The store of ``path`` (one per file: every stream's events go through its one writer thread)."""
        key = Path(os.path.abspath(path))
        with self._lock:
            self._check_open()
            store = self._stores.get(key)
            if store is None:
                store = self._stores[key] = EventStore(key, retention_days=self.config.sinks.event_retention_days)
            return store

    def publisher(self) -> MqttPublisher:
        """The run's MQTT publisher (``[mqtt]`` configured)."""
        with self._lock:
            self._check_open()
            if self._publisher is None:
                self._publisher = MqttPublisher(self.config.mqtt)
            return self._publisher

    @property
    def mqtt(self) -> MqttPublisher | None:
        """The publisher if one was opened (its ``delivered`` / ``dropped`` counters), else None."""
        return self._publisher

    @property
    def stores(self) -> list[EventStore]:
        with self._lock:
            return list(self._stores.values())

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("RunOutputs is closed")

    def close(self) -> None:
        """Send what MQTT still buffers (or count it dropped), then write every queued event to its store."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            publisher, stores = self._publisher, list(self._stores.values())
        try:
            if publisher is not None:
                publisher.close()
        finally:
            for store in stores:
                store.close()

    def __enter__(self) -> "RunOutputs":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
