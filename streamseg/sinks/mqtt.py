"""Events to MQTT (``[mqtt]``): every event as one JSON message, with paho-mqtt.

Topics (``prefix`` from the config, ``camera`` the stream's source id with ``/``, ``+`` and ``#`` replaced by ``_``):

===============================  =====================================================================================
``<prefix>/<camera>/events``     one message per event: the ``streamseg.events/1`` record, byte for byte the line the
                                 events JSONL file gets (:mod:`streamseg.sinks.events`), without the newline
``<prefix>/<camera>/state``      retained ``up`` once the stream's first result is written, ``down`` when it closes
``<prefix>/availability``        retained ``online`` on every connect; ``offline`` when the run ends, and as the
                                 client's last will when the process dies or loses the broker
===============================  =====================================================================================

One :class:`MqttPublisher` (one client, one connection) serves every stream of a run
(:class:`~streamseg.sinks.shared.RunOutputs`, owned by the runner, which closes it after its streams). Writing a result never waits for
the network: messages go into a bounded buffer (``queue_size``; when full, the oldest is dropped and counted in
:attr:`MqttPublisher.dropped`) that a sender thread hands to paho while connected. paho's network thread reconnects
with backoff (1 s doubling to 30 s) while the broker is down. At the end of a run the publisher waits up to
:data:`FLUSH_SECONDS` for the buffer to drain; what is still undelivered then is counted as dropped, so every event
is either delivered (qos 0: written to the broker's socket; qos 1: acknowledged by the broker) or counted as
dropped. The password is never logged.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from collections import deque

from streamseg.errors import ConfigError
from streamseg.sinks.base import Sink
from streamseg.sinks.events import event_record
from streamseg.types import FrameResult

__all__ = ["FLUSH_SECONDS", "MqttPublisher", "MqttEventsSink", "publish_state", "topic_name"]

log = logging.getLogger(__name__)

FLUSH_SECONDS = 5.0
"""How long the end of a run waits for undelivered messages (a broker that is down then costs at most this)."""
RECONNECT_MIN, RECONNECT_MAX = 1, 30
_ids = itertools.count(1)
_NO_CONN = 4  # paho's MQTT_ERR_NO_CONN


def topic_name(part: str) -> str:
    """``part`` safe as one topic level (no ``/``, ``+``, ``#``)."""
    return "".join("_" if c in "/+#" else c for c in str(part)) or "_"


class MqttPublisher:
    """One paho client with a bounded outgoing buffer; see the module docstring. ``options``: ``MqttOptions``.

    Counters (events only; state and availability messages are not counted): :attr:`published` (handed in),
    :attr:`delivered`, :attr:`dropped` (buffer overflow, and at close what was never delivered)."""

    def __init__(self, options):
        try:
            import paho.mqtt.client as mqtt  # the optional extra: only where [mqtt] is configured
        except ImportError:
            raise ConfigError("[mqtt] needs paho-mqtt: pip install 'streamseg[mqtt]'") from None

        self.options = options
        self.prefix = options.prefix
        self.availability = f"{self.prefix}/availability"
        self.published = self.delivered = self.dropped = 0
        self._buffer: deque = deque()
        self._inflight: dict[int, bool] = {}  # paho message id -> is an event
        self._early: set[int] = set()  # ids paho reported published before the sender recorded them
        self._deadline = float("inf")
        self._cond = threading.Condition()
        self._connected = False
        self._closing = False
        client_id = options.client_id or f"streamseg-{os.getpid()}-{next(_ids)}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        if options.username is not None:
            self.client.username_pw_set(options.username, options.password)
        self.client.will_set(self.availability, "offline", qos=1, retain=True)
        self.client.reconnect_delay_set(RECONNECT_MIN, RECONNECT_MAX)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        log.info("mqtt: publishing to %s:%d under %s/ (client %s, qos %d)", options.host, options.port,
                 self.prefix, client_id, options.qos)
        self.client.connect_async(options.host, options.port, options.keepalive)
        self.client.loop_start()  # paho's network thread: connects, and reconnects with backoff
        self._sender = threading.Thread(target=self._send, name="mqtt-sender", daemon=True)
        self._sender.start()

    # -- paho callbacks (its network thread) -----------------------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if reason_code.is_failure:
            log.warning("mqtt: %s:%d refused the connection: %s", self.options.host, self.options.port, reason_code)
            return
        client.publish(self.availability, "online", qos=1, retain=True)
        with self._cond:
            self._connected = True
            self._cond.notify_all()
        log.info("mqtt: connected to %s:%d", self.options.host, self.options.port)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None):
        with self._cond:
            was, self._connected = self._connected, False
            if self.options.qos == 0:  # paho forgets unsent qos 0 messages on a reconnect: they are lost
                self.dropped += sum(self._inflight.values())
                self._inflight.clear()
        if was and not self._closing:
            log.warning("mqtt: lost %s:%d (%s); reconnecting, events wait in a buffer of %d",
                        self.options.host, self.options.port, reason_code, self.options.queue_size)

    def _on_publish(self, client, userdata, mid, reason_code=None, properties=None):
        with self._cond:
            if mid in self._inflight:
                self.delivered += self._inflight.pop(mid)
            else:  # before the sender recorded it, or not an event's (availability)
                if len(self._early) > 1000:
                    self._early.clear()
                self._early.add(mid)
            self._cond.notify_all()

    # -- the pipeline's side -----------------------------------------------------------------------------------------

    def put(self, topic: str, payload: str, *, retain: bool = False, event: bool = False) -> None:
        """Queue one message; never waits. A full buffer drops its oldest event (counted); states are kept, the
        newest per topic."""
        with self._cond:
            if self._closing:
                if event:
                    self.published += 1
                    self.dropped += 1
                return
            if not event:  # a newer state supersedes one still queued for the same topic
                self._buffer = deque(m for m in self._buffer if m[3] or m[0] != topic)
            if len(self._buffer) >= self.options.queue_size:
                # the oldest EVENT makes room: a retained state is never lost to events (it would go stale)
                victim = next((m for m in self._buffer if m[3]), None)
                if victim is not None:
                    self._buffer.remove(victim)
                    self.dropped += 1
                elif event:  # only states queued (more cameras than queue_size): this event is dropped
                    self.published += 1
                    self.dropped += 1
                    return
                else:
                    self._buffer.popleft()
            self._buffer.append((topic, payload, retain, event))
            if event:
                self.published += 1
            self._cond.notify_all()

    def _send(self) -> None:
        """Sender thread: hands buffered messages to paho while connected (at most ``queue_size`` unacknowledged).
        paho is called without holding our lock (its callbacks take it from paho's thread)."""
        qos = self.options.qos
        while True:
            with self._cond:
                while not (self._connected and self._buffer and len(self._inflight) < self.options.queue_size):
                    if self._closing and (not self._buffer or self._flush_over()):
                        return
                    self._cond.wait(0.2)
                item = self._buffer.popleft()
            topic, payload, retain, event = item
            try:
                info = self.client.publish(topic, payload, qos=qos, retain=retain)
                rc = info.rc
            except Exception as err:  # noqa: BLE001 - a client error must not end the sender
                log.warning("mqtt: publish failed: %s", err)
                info, rc = None, -1
            with self._cond:
                # qos 1 without a connection: paho keeps the message and sends it after the reconnect
                if rc == 0 or (qos == 1 and rc == _NO_CONN):
                    if info.mid in self._early:
                        self._early.discard(info.mid)
                        self.delivered += event
                    else:
                        self._inflight[info.mid] = event
                else:  # not connected after all: again after the reconnect
                    self._buffer.appendleft(item)
                    self._cond.wait(0.2)

    def _flush_over(self) -> bool:
        return time.monotonic() >= self._deadline

    def close(self) -> None:
        """Wait up to :data:`FLUSH_SECONDS` for the buffer to drain, say ``offline``, disconnect; what was not
        delivered by then is counted as dropped. Idempotent."""
        with self._cond:
            if self._closing:
                return
            self._deadline = time.monotonic() + FLUSH_SECONDS
            self._closing = True
            self._cond.notify_all()
        self._sender.join(FLUSH_SECONDS + 1)
        with self._cond:  # paho's acknowledgements of the last messages
            while self._inflight and self._connected and not self._flush_over():
                self._cond.wait(0.05)
        try:
            if self._connected:
                self.client.publish(self.availability, "offline", qos=1, retain=True).wait_for_publish(1.0)
        except Exception:  # noqa: BLE001 - a broker gone at this moment: the will says offline
            pass
        self.client.disconnect()
        self.client.loop_stop()
        with self._cond:
            left = sum(1 for *_, event in self._buffer if event) + sum(self._inflight.values())
            self._buffer.clear()
            self._inflight.clear()
            self.dropped += left
        log.info("mqtt: %d events delivered to %s:%d, %d dropped", self.delivered, self.options.host,
                 self.options.port, self.dropped)


class MqttEventsSink(Sink):
    """One stream's events and its retained ``up``/``down`` state through the run's ``publisher`` (closing the
    sink publishes ``down`` and leaves the publisher open: the run owns it)."""

    def __init__(self, publisher: MqttPublisher, source_id: str):
        options = publisher.options
        self.publisher = publisher
        self.camera = topic_name(source_id)
        self.path = f"mqtt://{options.host}:{options.port}/{options.prefix}/{self.camera}"  # names it in errors
        self.topic = f"{options.prefix}/{self.camera}/events"
        self.events_written = 0
        self._up = self._written = False
        self._closed = False

    @property
    def dropped(self) -> int:
        """Events the run's publisher dropped (all its streams)."""
        return self.publisher.dropped

    def state(self, up: bool) -> None:
        """The stream went up or down (a live camera's reconnects): the retained state follows at once."""
        if not self._closed and up != self._up:
            self._up = up
            publish_state(self.publisher, self.camera, up)

    def write(self, result: FrameResult) -> None:
        if self._closed:
            raise ValueError(f"write to closed MqttEventsSink({self.path})")
        if not self._written:  # up with the first result; later, only the stream's own up/down changes it (results
            self._written = True  # still in flight after a stream_down must not say "up" again)
            self.state(True)
        for event in result.events:
            line = json.dumps(event_record(event), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
            self.publisher.put(self.topic, line, event=True)
            self.events_written += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        publish_state(self.publisher, self.camera, False)


def publish_state(publisher: MqttPublisher, source_id: str, up: bool) -> None:
    """The retained ``<prefix>/<camera>/state`` of a stream (also for one that has not been up yet)."""
    publisher.put(f"{publisher.prefix}/{topic_name(source_id)}/state", "up" if up else "down", retain=True)
