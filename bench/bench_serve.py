"""``streamseg serve`` run the way a user runs it (issue 16, "Done when"), against real parts on 127.0.0.1: the
service as a subprocess (``streamseg serve --pipeline <generated toml>``), the demo model, a generated street
scene (people, cars and bicycles crossing a zone and a line, so events happen) served at 10 frames/s by the
GStreamer RTSP server of tests/rtsp_server.py (with a user and password), Debian's mosquitto for ``[mqtt]`` and
the HTTP API on a free port. Figures, in the order they are measured:

1. pickup: serve is started BEFORE its camera exists (the camera stays away ``--absent`` seconds, long enough for
   the reconnect backoff to reach its cap); seconds from the RTSP server being up until ``/api/cameras`` shows the
   camera "up" (target <= 30 s).
2. ``--cycles`` (default 20) camera kill/restart cycles in a row: the RTSP server killed, the camera seen "down",
   the server started again, the camera seen "up" and frames processed again; per cycle the seconds each took.
   Then ``--broker-cycles`` (default 5) broker kill/restart cycles: mosquitto killed, ``--broker-down`` seconds
   without it (the camera must stay up and frames keep flowing), started again, seconds until the service's MQTT
   client is back (its retained availability "online" reaches a subscriber).
3. RSS of the serve process (VmRSS) after warm-up (after the first two camera cycles) and after the last broker
   cycle: growth in % (target < 5 %).
4. events: serve is stopped with SIGTERM (exit code 0 expected) while a camera is up; every event of the events
   JSONL files (``<out>/<id>.events.jsonl``) must be in SQLite (``streamseg events query --db <out>/events.db``:
   the same set) and either delivered to MQTT or counted as dropped (the service's closing "mqtt: N events
   delivered ..., M dropped" log line; /metrics read just before SIGTERM is printed too). A subscriber on
   ``<prefix>/+/events`` counts what reached it (a subset: it misses what is published while it reconnects).
5. add/remove: a second camera added (POST /api/cameras) and removed (DELETE) while the first runs. The demo
   model on a CPU does not keep up with a 10 frames/s camera, so the freshest-frame buffer skips frame indices
   (counted as dropped) even with nothing wrong: gaps of 3-13 with one camera, up to 20 with two, on a 2-core
   machine shared with other jobs. The first camera's largest index gap (its detections JSONL) while the
   second is added (POST until it has been up 2 s) and while it is removed (DELETE and 3 s after) is printed
   beside the largest with both running and before. An interruption is a gap there over the larger of 20 (2 s of
   camera time; a camera restart takes longer) and those two, the same for stream time without a processed frame
   (a reconnect keeps the index but not the clock), a reconnect, any state but "up", or an index that goes back.

Also checked: the camera's password appears nowhere (serve's log, API answers, /metrics, the page); and, as an
informational row, whether the retained ``<prefix>/<camera>/state`` followed each camera cycle ("down" after the
kill, no "up" until /api/cameras says the camera is back). ``--json`` also gets the MQTT state/availability
messages with their UTC times, to line up with serve's log.

    .venv/bin/python bench/bench_serve.py            # the full run (about 7 minutes on 2 CPU cores)
    .venv/bin/python bench/bench_serve.py --quick    # 3 camera cycles, 1 broker cycle, shorter waits (2.5 min)

Exit status: 0 when every target is met, 1 when one is missed (or the service misbehaved), 2 when mosquitto or
the GStreamer RTSP server is missing. ``--keep DIR`` keeps the pipeline file, outputs and serve's log there.
The pipeline turns the annotated video, the tracks file and the summary off (README: the tracks file is kept in
memory; off for endless live streams) and sets mqtt.queue_size = 2 (``--mqtt-queue``) so that the broker
outages overflow it; everything else is the defaults a user gets, [live] included.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from live_server import RtspServer, free_port, gstreamer_missing  # noqa: E402

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
PASSWORD = "b3nch-pw-5e1f"  # the camera's; must never show up anywhere
PREFIX = "bench"
FPS = 10
CAMERA, SECOND = "door", "yard"
MAX_GAP = 20  # frame indices (2 s at 10 frames/s): more is an interruption, not a busy model (see the docstring)


class BenchError(Exception):
    """A wait that timed out or an answer against the spec: the phase failed (the message says how)."""


def wait(predicate, timeout: float, what: str, interval: float = 0.1, alive=None):
    """Polls ``predicate`` (its truthy result is returned) until ``timeout``; ``alive()`` is checked in between."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if alive is not None:
            alive()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def scene_clip(path: Path, seconds: float, seed: int = 3):
    """The generated street scene (640x360, 10 frames/s) as an H.264 MP4 the RTSP server can serve: a keyframe a
    second, no B-frames, one slice per picture (see tests/live_server.make_clip). Returns the SceneConfig."""
    import av

    from streamseg.scenes import Scene, SceneConfig

    config = SceneConfig(seed=seed, frames=int(seconds * FPS), fps=float(FPS))
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = config.width, config.height, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": str(FPS), "bf": "0", "crf": "26", "threads": "1"}
        for frame in Scene(config):
            picture = av.VideoFrame.from_ndarray(frame.image, format="rgb24")
            picture.pts, picture.time_base = frame.index, Fraction(1, FPS)
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return config


def pipeline_toml(out: Path, scene, camera_url: str, http_port: int, broker_port: int, detect_interval: int,
                  mqtt_queue: int) -> str:
    def points(items):
        return "[" + ", ".join(f"[{x:.1f}, {y:.1f}]" for x, y in items) + "]"

    return f"""# written by bench/bench_serve.py
output_dir = "{out}"

[model]                       # no weights: the shipped demo model
score_threshold = 0.1
{f"detect_interval = {detect_interval}" if detect_interval > 1 else ""}

[tracker]                     # the settings the generated scenes are scored with (streamseg.evaluation)
enabled = true
max_distance = 0.9
max_distance_tentative = 0.95

[events]
[[events.zones]]
name = "zone"
polygon = {points(scene.zone)}
min_frames = 2
[[events.lines]]
name = "line"
points = {points(scene.line)}
min_frames = 2

[sinks]
video = false
tracks = false
summary = false

[mqtt]
host = "127.0.0.1"
port = {broker_port}
prefix = "{PREFIX}"
qos = 1
{f"queue_size = {mqtt_queue}" if mqtt_queue else ""}

[serve]
host = "127.0.0.1"
port = {http_port}

[[sources]]
id = "{CAMERA}"
url = "{camera_url}"
"""


class Broker:
    """mosquitto on 127.0.0.1:``port`` (anonymous: loopback only), startable again on the same port."""

    def __init__(self, folder: Path):
        self.port = free_port()
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.process: subprocess.Popen | None = None

    def start(self) -> "Broker":
        deadline = time.monotonic() + 20
        while True:  # the port may be held for a moment after a kill
            self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
            while self.process.poll() is None and time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                    return self
                except OSError:
                    time.sleep(0.02)
            self.kill()
            if time.monotonic() > deadline:
                raise BenchError("mosquitto did not listen within 20 s")
            time.sleep(0.2)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait()
        self.process = None


class Subscriber:
    """Every message under ``PREFIX/#`` as (monotonic time, topic, payload), resubscribing after each reconnect."""

    def __init__(self, port: int):
        import paho.mqtt.client as paho

        self.messages: list[tuple[float, str, str]] = []
        self.wall: list[float] = []  # time.time() of each message, for lining them up with serve's log
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-serve-sub-{os.getpid()}")

        def on_connect(client, userdata, flags, reason_code, properties=None):
            client.subscribe(f"{PREFIX}/#", qos=1)
            self.connected.set()

        self.client.on_connect = on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise BenchError("the MQTT subscriber could not connect to mosquitto")

    def _on_message(self, client, userdata, message):
        with self.lock:
            self.messages.append((time.monotonic(), message.topic, message.payload.decode("utf-8", "replace")))
            self.wall.append(time.time())

    def events(self) -> list[str]:
        with self.lock:
            return [payload for _, topic, payload in self.messages
                    if topic.startswith(PREFIX + "/") and topic.endswith("/events") and topic.count("/") == 2]

    def first_after(self, topic: str, payload: str, since: float) -> float | None:
        with self.lock:
            for t, top, pay in self.messages:
                if t >= since and top == topic and pay == payload:
                    return t
        return None

    def last_payloads(self) -> dict[str, str]:
        with self.lock:
            return {topic: payload for _, topic, payload in self.messages}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Serve:
    """``streamseg serve --pipeline FILE`` as a child process (its own session, so that a hung one can be killed
    with everything it started); stderr goes to ``log``. Every HTTP answer is kept for the credentials check."""

    def __init__(self, pipeline: Path, port: int, log: Path):
        exe = REPO / ".venv" / "bin" / "streamseg"
        command = [str(exe)] if exe.exists() else [sys.executable, "-m", "streamseg"]
        self.command = command + ["serve", "--pipeline", str(pipeline)]
        self.base = f"http://127.0.0.1:{port}"
        self.log = log
        self._log_file = open(log, "wb")
        self.process = subprocess.Popen(self.command, stdout=self._log_file, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.answers: list[str] = []
        self.api_latency: list[float] = []

    def alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(f"serve exited with {self.process.returncode}; log:\n{self.log_tail()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def log_tail(self, lines: int = 25) -> str:
        return "\n".join("    " + line for line in self.log_text().splitlines()[-lines:])

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        started = time.monotonic()
        try:
            with urllib.request.urlopen(req, timeout=timeout) as answer:
                status, payload = answer.status, answer.read()
        except urllib.error.HTTPError as err:
            status, payload = err.code, err.read()
        if path == "/api/cameras" and method == "GET":
            self.api_latency.append(time.monotonic() - started)
        if len(self.answers) < 20000:
            self.answers.append(payload.decode("utf-8", "replace"))
        return status, payload

    def cameras(self) -> dict[str, dict]:
        status, payload = self.request("GET", "/api/cameras")
        if status != 200:
            raise BenchError(f"GET /api/cameras answered {status}: {payload[:200]!r}")
        return {camera["id"]: camera for camera in json.loads(payload)["cameras"]}

    def camera(self, camera_id: str) -> dict:
        cameras = self.cameras()
        if camera_id not in cameras:
            raise BenchError(f"GET /api/cameras does not list {camera_id!r}: {sorted(cameras)}")
        return cameras[camera_id]

    def metrics(self) -> dict[str, float]:
        status, payload = self.request("GET", "/metrics")
        if status != 200:
            raise BenchError(f"GET /metrics answered {status}")
        values: dict[str, float] = {}
        for line in payload.decode().splitlines():
            if not line or line.startswith("#"):
                continue
            name_labels, _, value = line.rpartition(" ")
            try:
                values[name_labels.split("{", 1)[0]] = values.get(name_labels.split("{", 1)[0], 0.0) + float(value)
            except ValueError:
                pass
        return values

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def rss_sample(self) -> float:
        """Median of 5 samples over a second (one sample catches a frame's transient buffers)."""
        samples = []
        for _ in range(5):
            samples.append(self.rss_mib())
            time.sleep(0.2)
        return statistics.median(samples)

    def stop(self, timeout: float = 90.0) -> tuple[int | None, float]:
        """SIGTERM; (exit code or None when it had to be killed, seconds it took)."""
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            rc = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)  # the session this bench started for it
            self.process.wait()
            rc = None
        self._log_file.close()
        return rc, time.monotonic() - started


def metric(values: dict[str, float], *names: str) -> float | None:
    for name in names:
        if name in values:
            return values[name]
    return None


def mqtt_counts(values: dict[str, float]) -> tuple[float | None, float | None]:
    return (metric(values, "streamseg_mqtt_events_delivered_total", "streamseg_mqtt_events_delivered"),
            metric(values, "streamseg_mqtt_events_dropped_total", "streamseg_mqtt_events_dropped"))


def last_index(path: Path) -> int | None:
    """The frame index of the last complete line of a detections JSONL (read from its end)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - (1 << 20)))
            lines = f.read().split(b"\n")
    except FileNotFoundError:
        return None
    for line in reversed(lines[:-1]):
        try:
            return int(json.loads(line)["frame"])
        except (ValueError, KeyError):
            continue
    return None


def detections_path(out: Path, camera: str) -> Path:
    return out / f"{camera}.detections.jsonl"


def read_frames(path: Path) -> list[tuple[int, float]]:
    frames = []
    with open(path, "rb") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn last line
            frames.append((int(record["frame"]), float(record["time"])))
    return frames


def canonical(record: dict) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


# -- phases ----------------------------------------------------------------------------------------------------------


def phase_pickup(serve: Serve, server: RtspServer, sub: Subscriber, absent: float) -> dict:
    wait(lambda: serve.process.poll() is not None or _answers(serve), 180, "serve's HTTP API (GET /api/cameras)",
         interval=0.25)
    serve.alive()
    listed = serve.camera(CAMERA)
    started = time.monotonic()
    states = Counter()
    while time.monotonic() - started < absent:
        serve.alive()
        state = serve.camera(CAMERA)["state"]
        states[state] += 1
        if state == "up":
            raise BenchError("the camera shows 'up' while its RTSP server is not running")
        time.sleep(0.5)
    redacted = listed["url"]
    mqtt_seen = sub.last_payloads()  # what MQTT said about the camera that is not there
    server.start()
    ready = time.monotonic()
    wait(lambda: serve.camera(CAMERA)["state"] == "up", 120, "the camera to show 'up' after it appeared",
         alive=serve.alive)
    pickup = time.monotonic() - ready
    processed = serve.camera(CAMERA)["processed"]
    wait(lambda: serve.camera(CAMERA)["processed"] >= processed + 10, 60, "the first frames", alive=serve.alive)
    return {"absent_s": absent, "states_while_absent": dict(states), "pickup_s": round(pickup, 2),
            "url_shown": redacted, "mqtt_while_absent": {topic: mqtt_seen.get(topic) for topic in
                                                         (f"{PREFIX}/availability", f"{PREFIX}/{CAMERA}/state")},
            "ok": pickup <= 30.0}


def _answers(serve: Serve) -> bool:
    try:
        serve.cameras()
        return True
    except (OSError, BenchError):
        return False


def phase_camera_cycles(serve: Serve, server: RtspServer, sub: Subscriber, cycles: int, warmup: int,
                        rss: dict) -> dict:
    rows = []
    state_topic = f"{PREFIX}/{CAMERA}/state"
    for cycle in range(1, cycles + 1):
        before = serve.camera(CAMERA)
        killed = time.monotonic()  # before the kill: serve may see the connection drop before kill() returns
        server.kill()
        first = wait(lambda: (c := serve.camera(CAMERA))["state"] != "up" and c, 60,
                     f"cycle {cycle}: the camera to leave 'up'", interval=0.05, alive=serve.alive)
        left_s = time.monotonic() - killed
        wait(lambda: serve.camera(CAMERA)["state"] == "down", 60, f"cycle {cycle}: 'down'", interval=0.05,
             alive=serve.alive)
        down_s = time.monotonic() - killed
        server.start()
        ready = time.monotonic()
        up = wait(lambda: (c := serve.camera(CAMERA))["state"] == "up" and c, 120, f"cycle {cycle}: 'up'",
                  interval=0.05, alive=serve.alive)
        up_s = time.monotonic() - ready
        wait(lambda: serve.camera(CAMERA)["processed"] >= up["processed"] + 5, 60, f"cycle {cycle}: frames",
             alive=serve.alive)
        frames_s = time.monotonic() - ready
        after = serve.camera(CAMERA)
        # the retained MQTT state follows the camera (informational): "down" after the kill, no "up" while the API
        # still said the camera was not up (0.5 s of slack for the polling), "up" once it was back
        back = ready + up_s
        mqtt_down = sub.first_after(state_topic, "down", killed)
        premature = sub.first_after(state_topic, "up", mqtt_down or killed)
        premature = premature is not None and premature < back - 0.5
        try:
            wait(lambda: sub.first_after(state_topic, "up", back - 0.5), 3.0, "mqtt state")
            mqtt_up = True
        except BenchError:
            mqtt_up = False
        row = {"cycle": cycle, "down_after_s": round(down_s, 2), "state_seen": first["state"],
               "left_up_after_s": round(left_s, 2), "up_after_s": round(up_s, 2),
               "frames_after_s": round(frames_s, 2), "reconnects": after["reconnects"] - before["reconnects"],
               "mqtt_state": {"down": mqtt_down is not None, "up_while_down": premature, "up_after": mqtt_up}}
        if cycle == warmup:
            rss["warm_mib"] = serve.rss_sample()
            row["rss_mib"] = round(rss["warm_mib"], 1)
        rows.append(row)
        print(f"  camera cycle {cycle:2d}/{cycles}: down after {down_s:5.2f} s (first seen {first['state']!r} after "
              f"{left_s:.2f} s), up after "
              f"{up_s:5.2f} s, frames after {frames_s:5.2f} s, reconnects +{row['reconnects']}"
              + (f", RSS {row['rss_mib']} MiB" if "rss_mib" in row else ""), flush=True)
    return {"cycles": cycles, "rows": rows, "completed": len(rows),
            "down_states": dict(Counter(r["state_seen"] for r in rows)),
            "ok": len(rows) == cycles}


def event_lines(out: Path) -> int:
    return sum(path.read_bytes().count(b"\n") for path in out.glob("*.events.jsonl"))


def phase_broker_cycles(serve: Serve, out: Path, broker: Broker, sub: Subscriber, cycles: int,
                        down_for: float) -> dict:
    rows = []
    availability = f"{PREFIX}/availability"
    for cycle in range(1, cycles + 1):
        before = serve.camera(CAMERA)
        events_before = event_lines(out)
        _, dropped_before = mqtt_counts(serve.metrics())
        broker.kill()
        states = Counter()
        started = time.monotonic()
        while time.monotonic() - started < down_for:
            serve.alive()
            states[serve.camera(CAMERA)["state"]] += 1
            time.sleep(0.25)
        during = serve.camera(CAMERA)
        events_during = event_lines(out) - events_before
        starting = time.monotonic()
        broker.start()
        restarted = time.monotonic()  # listening
        back = wait(lambda: sub.first_after(availability, "online", starting), 90,
                    f"broker cycle {cycle}: the service's availability 'online' after the restart", interval=0.1,
                    alive=serve.alive)
        row = {"cycle": cycle, "camera_states_while_down": dict(states),
               "frames_while_down": during["processed"] - before["processed"],
               "mqtt_back_after_s": round(max(0.0, back - restarted), 2), "events_while_down": events_during}
        time.sleep(1.0)  # the buffer sent
        _, dropped_after = mqtt_counts(serve.metrics())
        row["mqtt_dropped"] = None if dropped_after is None else int(dropped_after - (dropped_before or 0))
        rows.append(row)
        print(f"  broker cycle {cycle}/{cycles}: {row['frames_while_down']} frames processed and "
              f"{events_during} events made in {down_for:.0f} s without the broker (camera {'/'.join(states)}), "
              f"MQTT back after {row['mqtt_back_after_s']:.2f} s, {row['mqtt_dropped']} dropped (/metrics)",
              flush=True)
    return {"cycles": cycles, "rows": rows, "completed": len(rows),
            "ok": len(rows) == cycles and all(set(r["camera_states_while_down"]) == {"up"}
                                              and r["frames_while_down"] > 0 for r in rows)}


def phase_add_remove(serve: Serve, out: Path, url: str, baseline: float, hold: float) -> dict:
    """Marks in the first camera's detections JSONL (its last index, read as the phase goes: the sink writes
    unbuffered) cut its frames into: before the POST, the add (POST until the second camera has been up 2 s),
    both running, the remove (DELETE and 3 s after); the add and the remove are compared with the others."""
    path = detections_path(out, CAMERA)
    first = serve.camera(CAMERA)
    states = Counter()

    def watch(seconds: float) -> None:
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            serve.alive()
            states[serve.camera(CAMERA)["state"]] += 1
            time.sleep(0.25)

    def poll(c):
        states[serve.camera(CAMERA)["state"]] += 1
        return c

    watch(baseline)
    marks = [last_index(path)]
    t0 = time.monotonic()
    status, payload = serve.request("POST", "/api/cameras", {"id": SECOND, "url": url})
    post_s = time.monotonic() - t0
    if status != 201:
        raise BenchError(f"POST /api/cameras answered {status}: {payload[:300]!r}")
    added = json.loads(payload)
    wait(lambda: poll(serve.camera(SECOND)["state"] == "up"), 120, f"the added camera {SECOND!r} to show 'up'",
         alive=serve.alive)
    up_s = time.monotonic() - t0
    watch(2.0)
    marks.append(last_index(path))
    watch(hold)
    both = serve.cameras()
    marks.append(last_index(path))
    t1 = time.monotonic()
    status, payload = serve.request("DELETE", f"/api/cameras/{SECOND}")
    delete_s = time.monotonic() - t1
    if status != 204:
        raise BenchError(f"DELETE /api/cameras/{SECOND} answered {status}: {payload[:300]!r}")
    listed = serve.cameras()
    watch(3.0)
    marks.append(last_index(path))
    last = serve.camera(CAMERA)
    if None in marks:
        raise BenchError(f"no detections JSONL of {CAMERA!r} at {path}")

    frames = read_frames(path)
    before = [(i, t) for i, t in frames if i <= marks[0]]  # the last ``baseline`` seconds of them
    before = [(i, t) for i, t in before if t >= before[-1][1] - baseline] if before else []
    parts = {"before": before}
    for name, (low, high) in zip(("add", "both", "remove"), zip(marks, marks[1:])):
        parts[name] = [(i, t) for i, t in frames if low <= i <= high]
    gap, stall = {}, {}
    for name, items in parts.items():
        gap[name] = max((b[0] - a[0] for a, b in zip(items, items[1:])), default=0)
        stall[name] = round(max((b[1] - a[1] for a, b in zip(items, items[1:])), default=0.0), 2)
    window = [(i, t) for i, t in frames if marks[0] <= i]
    increasing = all(b[0] > a[0] for a, b in zip(window, window[1:]))
    reconnects = last["reconnects"] - first["reconnects"]
    # a busy model skips indices all the time; the add and the remove may cost no more than the busiest moment
    # without them, and at least MAX_GAP is allowed (a restarted camera takes longer than that to come back)
    allowed_gap = max(MAX_GAP, gap["before"], gap["both"])
    allowed_stall = max(MAX_GAP / FPS, stall["before"], stall["both"])
    ok = (increasing and max(gap["add"], gap["remove"]) <= allowed_gap
          and max(stall["add"], stall["remove"]) <= allowed_stall and reconnects == 0 and set(states) == {"up"}
          and SECOND not in listed)
    return {"post_s": round(post_s, 3), "post_state": added.get("state"), "second_up_after_s": round(up_s, 2),
            "second_processed": both.get(SECOND, {}).get("processed"), "delete_s": round(delete_s, 3),
            "still_listed_after_delete": SECOND in listed, "first_states": dict(states), "reconnects": reconnects,
            "frames": {name: len(items) for name, items in parts.items()}, "largest_gap": gap, "stall_s": stall,
            "allowed_gap": allowed_gap, "allowed_stall_s": allowed_stall, "indices_increasing": increasing,
            "dropped_during": last["dropped"] - first["dropped"], "ok": ok}


def check_events(out: Path, serve: Serve, sub: Subscriber, metrics_before: dict) -> dict:
    lines: list[str] = []
    torn = 0
    for path in sorted(out.glob("*.events.jsonl")):
        for raw in path.read_bytes().split(b"\n"):
            if not raw.strip():
                continue
            try:
                lines.append(canonical(json.loads(raw)))
            except ValueError:
                torn += 1
    produced = Counter(lines)
    db = out / "events.db"
    query = subprocess.run(serve.command[:-3] + ["events", "query", "--db", str(db)], capture_output=True,
                           text=True, timeout=120)
    if query.returncode:
        raise BenchError(f"streamseg events query --db {db} exited {query.returncode}: {query.stderr.strip()}")
    stored = Counter(canonical(json.loads(line)) for line in query.stdout.splitlines() if line.strip())
    missing = sum((produced - stored).values())
    extra = sum((stored - produced).values())
    received = {canonical(json.loads(p)) for p in sub.events()}
    not_produced = len(received - set(produced))
    # the service's closing line(s): "mqtt: N events delivered to HOST:PORT, M dropped"
    delivered = dropped = None
    for line in serve.log_text().splitlines():
        if "events delivered to" in line and "mqtt" in line:
            words = line.split()
            try:
                n = int(words[words.index("events") - 1])
                m = int(words[words.index("dropped") - 1])
            except (ValueError, IndexError):
                continue
            delivered, dropped = (delivered or 0) + n, (dropped or 0) + m
    m_delivered, m_dropped = mqtt_counts(metrics_before)
    store_dropped = metric(metrics_before, "streamseg_event_store_dropped_total", "streamseg_event_store_dropped")
    total = sum(produced.values())
    accounted = None if delivered is None else delivered + dropped
    ok = (total > 0 and missing == 0 and extra == 0 and torn == 0 and accounted == total and not_produced == 0)
    return {"produced": total, "in_sqlite": sum(stored.values()), "missing_in_sqlite": missing,
            "extra_in_sqlite": extra, "torn_lines": torn, "delivered": delivered, "dropped": dropped,
            "unaccounted": None if accounted is None else total - accounted,
            "metrics_before_sigterm": {"delivered": m_delivered, "dropped": m_dropped,
                                       "event_store_dropped": store_dropped},
            "received_by_subscriber": len(received), "received_not_produced": not_produced, "ok": ok}


def check_credentials(serve: Serve) -> dict:
    places = {"log": PASSWORD in serve.log_text(),
              "api": any(PASSWORD in answer for answer in serve.answers)}
    return {"found_in": [name for name, found in places.items() if found], "ok": not any(places.values())}


# -- main ------------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=None, help="camera kill/restart cycles (default 20)")
    parser.add_argument("--broker-cycles", type=int, default=None, help="broker kill/restart cycles (default 5)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 3 camera cycles, 1 broker cycle, shorter waits")
    parser.add_argument("--absent", type=float, default=None,
                        help="seconds the camera stays away after serve starts (default 45; --quick 10)")
    parser.add_argument("--broker-down", type=float, default=5.0, help="seconds without the broker per cycle")
    parser.add_argument("--detect-interval", type=int, default=1, help="model.detect_interval of the pipeline")
    parser.add_argument("--mqtt-queue", type=int, default=2,
                        help="mqtt.queue_size (default 2, so that events made while the broker is down overflow it "
                             "and the drop counting is exercised; 0: the service's default)")
    parser.add_argument("--keep", type=Path, help="keep the pipeline file, outputs and serve's log in this folder")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    cycles = args.cycles if args.cycles is not None else (3 if args.quick else 20)
    broker_cycles = args.broker_cycles if args.broker_cycles is not None else (1 if args.quick else 5)
    absent = args.absent if args.absent is not None else (10.0 if args.quick else 45.0)
    baseline, hold = (6.0, 6.0) if args.quick else (15.0, 15.0)
    warmup = min(2, max(1, cycles - 1))

    if MOSQUITTO is None:
        print("bench_serve: the mosquitto broker is not installed (apt-get install mosquitto)", file=sys.stderr)
        return 2
    missing = gstreamer_missing()
    if missing:
        print(f"bench_serve: {missing}", file=sys.stderr)
        return 2
    try:
        import paho.mqtt.client  # noqa: F401 - only checked here
    except ImportError:
        print("bench_serve: paho-mqtt is not installed (pip install 'streamseg[mqtt]')", file=sys.stderr)
        return 2

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_serve_"))
    work.mkdir(parents=True, exist_ok=True)
    out = work / "out"
    if out.exists():
        shutil.rmtree(out)
    # The clip restarts with each RTSP connection, so it must outlast the longest one: from the last camera
    # cycle through the broker cycles and the add/remove phase (an end of stream would read as a camera outage).
    clip_seconds = 120 + broker_cycles * (args.broker_down + 40) + 2 * baseline + hold + 60
    started = time.monotonic()
    scene = scene_clip(work / "scene.mp4", clip_seconds)
    print(f"scene clip: {clip_seconds:.0f} s at {FPS} frames/s, {scene.width}x{scene.height} "
          f"({time.monotonic() - started:.0f} s to render)", flush=True)

    results: dict = {"setup": {"cycles": cycles, "broker_cycles": broker_cycles, "absent_s": absent,
                               "broker_down_s": args.broker_down, "detect_interval": args.detect_interval,
                               "mqtt_queue": args.mqtt_queue,
                               "cpus": os.cpu_count(), "work": str(work)}}
    camera_server = RtspServer({"/door": work / "scene.mp4", "/yard": work / "scene.mp4"}, user="cam",
                               password=PASSWORD)
    broker = Broker(work)
    try:
        broker.start()
        sub = Subscriber(broker.port)
    except BenchError as err:
        broker.kill()
        print(f"bench_serve: {err}", file=sys.stderr)
        return 1
    http_port = free_port()
    pipeline = work / "serve.toml"
    pipeline.write_text(pipeline_toml(out, scene, camera_server.url("/door"), http_port, broker.port,
                                      args.detect_interval, args.mqtt_queue))
    serve = Serve(pipeline, http_port, work / "serve.log")
    print(f"serve: {' '.join(serve.command)} (log: {serve.log}); HTTP {serve.base}, mosquitto :{broker.port}, "
          f"camera rtsp://cam:***@127.0.0.1:{camera_server.port}/door", flush=True)
    rss: dict = {}
    metrics_before: dict = {}

    def phase(name, function, *fargs):
        print(f"{name} ...", flush=True)
        t = time.monotonic()
        try:
            results[name] = function(*fargs)
        except (BenchError, OSError, ValueError, KeyError) as err:
            time.sleep(0.5)
            if serve.process.poll() is not None and "serve exited" not in str(err):
                err = BenchError(f"serve exited with {serve.process.returncode} ({type(err).__name__}: {err})")
            results[name] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
            print(f"  {name} FAILED: {err}", flush=True)
            return False
        results[name]["seconds"] = round(time.monotonic() - t, 1)
        print(f"  {name}: " + json.dumps({k: v for k, v in results[name].items() if k != "rows"}), flush=True)
        return True

    try:
        went = phase("pickup", phase_pickup, serve, camera_server, sub, absent)
        if went:
            went = phase("camera_cycles", phase_camera_cycles, serve, camera_server, sub, cycles, warmup, rss)
        if went:
            went = phase("broker_cycles", phase_broker_cycles, serve, out, broker, sub, broker_cycles,
                         args.broker_down)
            if went and "warm_mib" in rss:
                rss["end_mib"] = serve.rss_sample()
                growth = rss["end_mib"] / rss["warm_mib"] - 1
                results["rss"] = {"warm_mib": round(rss["warm_mib"], 1), "end_mib": round(rss["end_mib"], 1),
                                  "growth": round(growth, 4), "ok": growth < 0.05}
        if went or serve.process.poll() is None:
            phase("add_remove", phase_add_remove, serve, out, camera_server.url("/yard"), baseline, hold)
        if serve.process.poll() is None:
            try:
                for path in ("/", "/healthz"):
                    serve.request("GET", path)
                metrics_before = serve.metrics()
                results["rss"] = results.get("rss", {}) | {"after_add_remove_mib": round(serve.rss_mib(), 1)}
            except (OSError, BenchError) as err:
                print(f"  reading /metrics before SIGTERM failed: {err}", flush=True)
    finally:
        alive_before = serve.process.poll() is None
        rc, stop_s = serve.stop()
        results["stop"] = {"alive_before_sigterm": alive_before, "exit_code": rc, "seconds": round(stop_s, 2),
                           "ok": alive_before and rc == 0}
        camera_server.kill()
        phase("events", check_events, out, serve, sub, metrics_before)
        sub.close()
        broker.kill()
    results["credentials"] = check_credentials(serve)
    with sub.lock:  # for --json: what MQTT said about the cameras' state and availability, and when (UTC)
        results["mqtt_states"] = [(time.strftime("%H:%M:%S", time.gmtime(wall)) + f".{int(wall % 1 * 1000):03d}",
                                   topic, payload) for wall, (_, topic, payload) in zip(sub.wall, sub.messages)
                                  if not topic.endswith("/events")]
    log_lines = serve.log_text().splitlines()
    results["notes"] = []
    if not any("serving on http://" in line for line in log_lines):
        results["notes"].append("serve never logged 'serving on http://HOST:PORT/'")
    r = results.get("pickup", {}).get("mqtt_while_absent")
    if r and any(value is None for value in r.values()):
        results["notes"].append(f"while the camera was away from the start, MQTT had: {r} (None: no message)")
    try:
        from streamseg.config import load_pipeline
        from streamseg.live import ALWAYS_ON_BACKOFF_MAX
        from streamseg.sources.live import Reconnect

        live = load_pipeline(pipeline).live  # serve caps the backoff (streamseg.live.ALWAYS_ON_BACKOFF_MAX)
        worst = Reconnect(live.reconnect_initial, min(live.reconnect_max, ALWAYS_ON_BACKOFF_MAX))
        worst = worst.maximum * (1 + worst.jitter)
        if worst > 30:
            results["notes"].append(
                f"pickup after a long absence: the next attempt can be up to {worst:.0f} s away (the backoff's cap "
                f"{worst / (1 + Reconnect.jitter):g} s + {Reconnect.jitter:.0%} jitter), so <= 30 s holds only by chance; the "
                f"measured pickup is one draw")
    except Exception as err:  # noqa: BLE001 - a note only
        results["notes"].append(f"could not read the backoff settings: {err}")
    bad = [line for line in log_lines if "Traceback" in line or " ERROR " in line or " CRITICAL " in line]
    if bad:
        results["notes"].append(f"serve's log has {len(bad)} ERROR/Traceback lines, the first: {bad[0][:200]}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    ok = summary(results, cycles, broker_cycles)
    if not ok:
        print(f"\nserve's log (last lines of {serve.log}):\n{serve.log_tail(30)}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


def summary(results: dict, cycles: int, broker_cycles: int) -> bool:
    def spread(rows, key):
        values = [r[key] for r in rows]
        return f"median {statistics.median(values):.2f} s, max {max(values):.2f} s" if values else "-"

    rows = results.get("camera_cycles", {}).get("rows", [])
    if rows:
        print("\ncamera cycle  down seen after s  up again after s  frames again after s  reconnects")
        for row in rows:
            print(f"{row['cycle']:12d}  {row['down_after_s']:17.2f}  {row['up_after_s']:16.2f}  "
                  f"{row['frames_after_s']:20.2f}  {row['reconnects']:+10d}")
    rows = results.get("broker_cycles", {}).get("rows", [])
    if rows:
        print("\nbroker cycle  frames while down  events while down  MQTT back after s  dropped")
        for row in rows:
            print(f"{row['cycle']:12d}  {row['frames_while_down']:17d}  {row['events_while_down']:17d}  "
                  f"{row['mqtt_back_after_s']:17.2f}  {row['mqtt_dropped']!s:>7}")

    table = []

    def line(name: str, key: str, target: str, describe, ready: str) -> None:
        """A row from ``results[key]``: ``describe(r)`` when it was measured, else why not."""
        r = results.get(key)
        if not r or "error" in r or ready not in r:
            text = (r or {}).get("error", "not run").splitlines()[0]
            table.append((name, text, target, "MISSED"))
            return
        table.append((name, describe(r), target, "OK" if r.get("ok") else "MISSED"))

    line("pickup (serve started before its camera)", "pickup", "<= 30 s",
         lambda r: f"up {r['pickup_s']:.1f} s after the camera appeared (away {r['absent_s']:.0f} s)",
         ready="pickup_s")
    line("camera kill/restart cycles", "camera_cycles", f"{cycles} in a row",
         lambda r: f"{r['completed']}/{cycles}; down seen after {spread(r['rows'], 'down_after_s')}; up after "
                   f"{spread(r['rows'], 'up_after_s')}; frames after {spread(r['rows'], 'frames_after_s')}; first "
                   f"state after the kill {r['down_states']}", ready="rows")
    rows = results.get("camera_cycles", {}).get("rows", [])
    if rows:
        states = [x["mqtt_state"] for x in rows]
        followed = sum(x["down"] and not x["up_while_down"] and x["up_after"] for x in states)
        table.append(("MQTT retained state followed the camera",
                      f"{followed}/{len(rows)} cycles: 'down' after the kill in {sum(x['down'] for x in states)}, "
                      f"'up' while the camera was still down in {sum(x['up_while_down'] for x in states)}, 'up' "
                      f"once it was back in {sum(x['up_after'] for x in states)}", "(not an issue target)", "info"))

    def broker(r):
        kept = sum(1 for x in r["rows"] if set(x["camera_states_while_down"]) == {"up"} and x["frames_while_down"])
        return (f"{r['completed']}/{broker_cycles}; camera up and frames flowing while the broker was down: "
                f"{kept}/{len(r['rows'])}; MQTT back after {spread(r['rows'], 'mqtt_back_after_s')}")

    line("broker kill/restart cycles", "broker_cycles", f"{broker_cycles} in a row", broker, ready="rows")
    line("RSS of serve, after warm-up -> after the cycles", "rss", "< 5 %",
         lambda r: f"{r['warm_mib']:.1f} -> {r['end_mib']:.1f} MiB ({r['growth'] * 100:+.2f} %)", ready="growth")

    def events(r):
        mb = r["metrics_before_sigterm"]
        return (f"produced {r['produced']}, in SQLite {r['in_sqlite']} (missing {r['missing_in_sqlite']}, extra "
                f"{r['extra_in_sqlite']}), MQTT delivered {r['delivered']} + dropped {r['dropped']} (unaccounted "
                f"{r['unaccounted']}; /metrics before SIGTERM: {mb['delivered']} + {mb['dropped']}, event store "
                f"dropped {mb['event_store_dropped']}), received by the subscriber {r['received_by_subscriber']}")

    line("events: SQLite and MQTT", "events", "missing 0, unaccounted 0", events, ready="produced")

    def add_remove(r):
        g, st = r["largest_gap"], r["stall_s"]
        return (f"first camera's largest index gap: {g['add']} while adding, {g['remove']} while removing (busiest "
                f"without them: {g['both']} with both running, {g['before']} before); longest stall "
                f"{st['add']:.1f} / {st['remove']:.1f} s ({st['both']:.1f}, {st['before']:.1f}); states "
                f"{r['first_states']}, reconnects {r['reconnects']}; POST {r['post_s']:.2f} s, second camera up "
                f"after {r['second_up_after_s']:.1f} s, DELETE {r['delete_s']:.2f} s")

    r = results.get("add_remove", {})
    line("add + remove a camera via the API", "add_remove", f"gap <= {r.get('allowed_gap', MAX_GAP)}, stall <= "
         f"{r.get('allowed_stall_s', MAX_GAP / FPS):.1f} s", add_remove, ready="largest_gap")
    line("SIGTERM", "stop", "exit code 0", lambda r: f"exit code {r['exit_code']} after {r['seconds']} s"
         + ("" if r["alive_before_sigterm"] else " (serve had already exited)"), ready="exit_code")
    line("camera password in logs/answers", "credentials", "nowhere", lambda r: ", ".join(r["found_in"]) or "nowhere",
         ready="found_in")
    print()
    width = max(len(row[0]) for row in table)
    print(f"{'figure':{width}}  {'ok':6}  {'target':26}  result")
    print("-" * (width + 70))
    for name, text, target, ok in table:
        print(f"{name:{width}}  {ok:6}  {target:26}  {text}")
    for note in results.get("notes", []):
        print(f"note: {note}")
    return all(row[3] in ("OK", "info") for row in table)


if __name__ == "__main__":
    sys.exit(main())
