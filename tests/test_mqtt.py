"""Events to MQTT (issue 16 item 3) against a real broker: Debian's mosquitto, started per test on a free loopback
port (killed and restarted by the tests)."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from streamseg.config import MqttOptions, build_config
from streamseg.errors import ConfigError
from streamseg.pipeline import Runner
from streamseg.sinks import mqtt as mqtt_sink
from streamseg.scenes import Scene, write_scene
from test_pipeline_tracking import SCENE, SceneOracle, tracking_config

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="the mosquitto broker is not installed "
                                                          "(apt-get install mosquitto)")
paho = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed (pip install 'streamseg[mqtt]')")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """mosquitto on 127.0.0.1:``port`` (anonymous: loopback only), startable again on the same port."""

    def __init__(self, folder: Path, port: int | None = None):
        self.port = port or free_port()
        self.conf = folder / f"mosquitto-{self.port}.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.process: subprocess.Popen | None = None

    def start(self) -> "Broker":
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                assert self.process.poll() is None, "mosquitto exited at start"
                time.sleep(0.02)
        raise AssertionError("mosquitto did not listen within 10 s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path).start()
    yield b
    b.kill()


class Subscriber:
    """Every message under ``prefix/#`` as (topic, payload, retain), resubscribing after each reconnect."""

    def __init__(self, port: int, prefix: str):
        self.messages: list[tuple[str, str, bool]] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{port}")
        self.client.on_connect = lambda c, u, f, rc, p=None: (c.subscribe(f"{prefix}/#", qos=1), self.connected.set())
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()
        assert self.connected.wait(5)
        time.sleep(0.2)  # the subscription acknowledged

    def _on_message(self, client, userdata, message):
        with self.lock:
            self.messages.append((message.topic, message.payload.decode(), bool(message.retain)))

    def on(self, topic: str) -> list[str]:
        with self.lock:
            return [payload for t, payload, _ in self.messages if t == topic]

    def wait_for(self, topic: str, count: int, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.on(topic)) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.on(topic)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def scene_clip(tmp_path_factory):
    """test_pipeline_tracking's generated street scene (people and cars crossing a zone and a line)."""
    return Scene(SCENE), write_scene(SCENE, tmp_path_factory.mktemp("scene"), preset="ultrafast")


def run_scene(scene_clip, out: Path, mqtt: dict, backend=None):
    scene, paths = scene_clip
    config = build_config({**tracking_config(out, video=False, summary=False), "mqtt": mqtt})
    with Runner(config, backend=backend or SceneOracle(scene)) as runner:
        run = runner.process(str(paths["video"]), source_id="street")
    return runner, run


def test_events_of_a_run_arrive_as_the_jsonl_lines(broker, scene_clip, tmp_path, caplog):
    sub = Subscriber(broker.port, "cams")
    try:
        with caplog.at_level(logging.INFO):
            runner, run = run_scene(scene_clip, tmp_path, {"host": "127.0.0.1", "port": broker.port, "prefix": "cams",
                                                      "qos": 1, "username": "op", "password": "s3cret-pw"})
        lines = run.outputs["events"].read_text().splitlines()
        assert len(lines) >= 3, "the scene makes events"
        received = sub.wait_for("cams/street/events", len(lines))
        assert received == lines  # the same records, in order
        assert runner.shared.mqtt.delivered == len(lines) and runner.shared.mqtt.dropped == 0
        assert sub.wait_for("cams/street/state", 2) == ["up", "down"]
        assert sub.wait_for("cams/availability", 2)[-2:] == ["online", "offline"]
        assert "s3cret-pw" not in caplog.text and f"{len(lines)} events delivered" in caplog.text
    finally:
        sub.close()
    # retained: a client that connects now is told the last state and availability
    late = Subscriber(broker.port, "cams")
    try:
        assert late.wait_for("cams/street/state", 1) == ["down"]
        assert late.wait_for("cams/availability", 1) == ["offline"]
        assert all(retain for topic, _, retain in late.messages)
    finally:
        late.close()


def test_broker_killed_mid_run_and_restarted(broker, scene_clip, tmp_path):
    """The run finishes, and every event is either delivered or counted as dropped."""
    done = []

    class KillingOracle(SceneOracle):
        """Kills the broker when the model gets a quarter of the way, restarts it at half way."""

        def predict(self, frames):
            last = max(frame.index for frame in frames)
            if last >= SCENE.frames // 4 and "kill" not in done:
                done.append("kill")
                broker.kill()
            if last >= SCENE.frames // 2 and "start" not in done:
                done.append("start")
                broker.start()
            return super().predict(frames)

    sub = Subscriber(broker.port, "cams")
    try:
        started = time.monotonic()
        runner, run = run_scene(scene_clip, tmp_path, {"port": broker.port, "prefix": "cams", "qos": 1},
                                backend=KillingOracle(scene_clip[0]))
        assert time.monotonic() - started < 30
        assert run.frames_written == SCENE.frames and done == ["kill", "start"]
        lines = run.outputs["events"].read_text().splitlines()
        publisher = runner.shared.mqtt
        assert publisher.published == len(lines)
        assert publisher.delivered + publisher.dropped == len(lines)
        assert publisher.delivered > 0
        time.sleep(0.3)
        assert set(sub.on("cams/street/events")) <= set(lines)  # qos 1 may repeat one, never invents one
    finally:
        sub.close()


def test_broker_down_the_buffer_keeps_the_newest_and_counts_drops(tmp_path):
    port = free_port()
    options = MqttOptions(enabled=True, port=port, prefix="buf", queue_size=3, qos=1)
    publisher = mqtt_sink.MqttPublisher(options)
    try:
        started = time.monotonic()
        for i in range(10):
            publisher.put("buf/cam/events", f"e{i}", event=True)
        assert time.monotonic() - started < 0.5  # never waits for the broker
        assert publisher.dropped == 7 and publisher.published == 10
        broker = Broker(tmp_path, port).start()
        try:
            sub = Subscriber(port, "buf")
            try:
                deadline = time.monotonic() + 10
                while publisher.delivered < 3 and time.monotonic() < deadline:  # paho reconnects with backoff
                    time.sleep(0.05)
                assert publisher.delivered == 3
            finally:
                sub.close()
        finally:
            publisher.close()
            broker.kill()
        assert publisher.delivered + publisher.dropped == publisher.published
    finally:
        publisher.close()


def test_a_run_without_a_broker_finishes_and_counts_every_event_dropped(scene_clip, tmp_path, monkeypatch):
    monkeypatch.setattr(mqtt_sink, "FLUSH_SECONDS", 0.5)
    started = time.monotonic()
    runner, run = run_scene(scene_clip, tmp_path, {"port": free_port(), "queue_size": 2})
    assert time.monotonic() - started < 20
    lines = run.outputs["events"].read_text().splitlines()
    assert runner.shared.mqtt.delivered == 0 and runner.shared.mqtt.dropped == len(lines) == runner.shared.mqtt.published > 0


def test_bad_mqtt_config_is_one_line_and_never_shows_the_password():
    with pytest.raises(ConfigError) as caught:
        build_config({"mqtt": {"qos": 2}}, origin="p.toml")
    assert str(caught.value) == "p.toml: mqtt.qos: expected an integer 0..1, got 2"
    with pytest.raises(ConfigError) as caught:
        build_config({"mqtt": {"password": "hunter22"}}, origin="p.toml")
    assert str(caught.value) == "p.toml: mqtt.password: needs mqtt.username"
    with pytest.raises(ConfigError, match=r"^p.toml: unknown key 'mqtt.tls'"):
        build_config({"mqtt": {"tls": True}}, origin="p.toml")
    assert "hunter22" not in repr(MqttOptions(username="u", password="hunter22"))
    assert build_config({"mqtt": {}}).mqtt.enabled and not build_config({}).mqtt.enabled
    assert not build_config({"mqtt": {"enabled": False}}).mqtt.enabled


def test_a_full_buffer_drops_events_never_the_newest_state(tmp_path):
    """Broker away, buffer of 3: events make room for each other, a camera's retained state is never evicted by
    them (it would go stale on the broker), and a newer state replaces the queued one of its topic."""
    publisher = mqtt_sink.MqttPublisher(MqttOptions(enabled=True, port=free_port(), prefix="p", queue_size=3))
    try:
        mqtt_sink.publish_state(publisher, "door", False)
        for i in range(5):
            publisher.put("p/door/events", f"e{i}", event=True)
        mqtt_sink.publish_state(publisher, "door", True)
        queued = [(topic, payload) for topic, payload, _, _ in publisher._buffer]
        assert queued == [("p/door/events", "e3"), ("p/door/events", "e4"), ("p/door/state", "up")]
        assert publisher.published == 5 and publisher.dropped == 3
    finally:
        publisher.close()


@pytest.mark.skipif(__import__("live_server").gstreamer_missing() is not None, reason="no GStreamer RTSP server")
def test_retained_state_follows_a_live_camera(broker, tmp_path):
    """down while a camera never came up; up with its first result; down when it dies (and it stays down while
    results still in flight are written); up again when it returns."""
    from live_server import RtspServer, make_clip
    from streamseg.live import LiveRunner
    from streamseg.models import ModelOptions, NoDetections

    camera = RtspServer({"/gate": make_clip(tmp_path / "clip.mp4", 30)})
    config = build_config({"output_dir": str(tmp_path / "out"), "backend": "none", "sinks": {"video": False},
                           "tracker": {}, "events": {"lines": [{"name": "l", "points": [[0, 100], [300, 100]]}]},
                           "live": {"read_timeout": 2.0, "reconnect_initial": 0.2, "reconnect_max": 0.5},
                           "mqtt": {"port": broker.port, "prefix": "site", "qos": 1}})
    sub = Subscriber(broker.port, "site")
    runner = LiveRunner(config, NoDetections(ModelOptions()), keep_running=True)
    thread = threading.Thread(target=runner.run, args=([camera.url("/gate")],), kwargs={"source_ids": ["gate"]})
    thread.start()
    try:
        assert sub.wait_for("site/gate/state", 1) == ["down"]  # never connected yet: down, not silence
        camera.start()
        assert sub.wait_for("site/gate/state", 2, 20)[-1] == "up"
        time.sleep(1)
        camera.kill()
        assert sub.wait_for("site/gate/state", 3, 10)[-1] == "down"
        time.sleep(2.5)  # the results of frames received before the death are written meanwhile
        assert sub.on("site/gate/state")[-1] == "down"
        camera.start()
        assert sub.wait_for("site/gate/state", 4, 20)[-1] == "up"
    finally:
        runner.stop()
        thread.join(30)
        runner.close()
        camera.kill()
        sub.close()
    assert sub.on("site/gate/state") == ["down", "up", "down", "up", "down"]
