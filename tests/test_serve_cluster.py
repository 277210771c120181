"""``streamseg serve --cluster local:1`` as a user runs it (cluster.camera_service): the command in
its own process on a private Ray cluster, every camera in a camera actor, real RTSP cameras with credentials
(tests/rtsp_server.py), the demo model on a generated street scene with the camera's own zone and line.

One service run covers: a camera unreachable at start is "down" and goes "up" once it appears; a camera added and
removed through the API while the others stream (no reconnect of the others); a camera actor's process killed
(its pid from the driver's log) comes back up and its files go on without a repeated frame index; /api/cameras
and /metrics show every camera; the live MJPEG view has the actor's JPEGs; the scene's events reach the driver's
event store (/api/events, events.db) as the records of the camera's events JSONL; credentials nowhere in the log,
the responses or the files; SIGHUP after the file lost a camera stops only that camera's actor; SIGTERM exits 0
with every file complete. Plus an unreachable cluster address is one line at once."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from live_server import RtspServer, gstreamer_missing, make_clip, scene_clip, wait_for
from streamseg.evaluation import SCENE_TRACKER
from streamseg.sinks.event_store import query_events

USER, PASSWORD = "clusterop", "Srv-Cl5ter-pw!"
FPS = 5  # the scene's frame rate: the demo model keeps up with most of its frames on two CI cores

_why = None if importlib.util.find_spec("ray") else "the cluster extra is not installed: pip install '.[cluster]'"
_why = _why or gstreamer_missing()
pytestmark = pytest.mark.skipif(_why is not None, reason=_why or "")

try:  # MQTT is checked too where Debian's mosquitto and paho-mqtt are installed
    from test_mqtt import MOSQUITTO, Broker, Subscriber
except BaseException:  # noqa: BLE001 - pytest.importorskip's Skipped: paho-mqtt is missing
    MOSQUITTO = None






def toml(value) -> str:
    return json.dumps(value)


class Serve:
    """``streamseg serve --pipeline FILE --cluster ADDRESS`` in a child process; its log in a file; every response
    body kept (none may hold a credential)."""

    def __init__(self, pipeline: Path, log: Path, cluster: str = "local:1"):
        self.log, self.bodies = log, []
        self.process = subprocess.Popen([sys.executable, "-m", "streamseg", "serve", "--pipeline", str(pipeline),
                                         "--cluster", cluster], stdout=subprocess.DEVNULL, stderr=open(log, "w"))
        found = wait_for(lambda: self.process.poll() is not None or
                         re.search(r"serving on (http://127\.0\.0\.1:\d+/)", log.read_text()), 90, "serving on")
        if self.process.poll() is not None:
            raise AssertionError(f"serve exited:\n{log.read_text()[-3000:]}")
        self.url = found.group(1)

    def request(self, method: str, path: str, body=None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path.lstrip("/"), data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as err:
            status, payload = err.code, err.read()
        self.bodies.append(payload)
        return status, payload

    def get(self, path: str):
        status, payload = self.request("GET", path)
        assert status == 200, (path, status, payload[:300])
        return json.loads(payload)

    def cameras(self) -> dict[str, dict]:
        return {c["id"]: c for c in self.get("api/cameras")["cameras"]}

    def camera(self, camera_id: str) -> dict:
        assert self.process.poll() is None, f"serve exited:\n{self.log.read_text()[-3000:]}"
        return self.cameras().get(camera_id, {"state": None, "processed": 0})

    def wait_state(self, camera_id: str, state: str, timeout: float) -> float:
        started = time.monotonic()
        wait_for(lambda: self.camera(camera_id)["state"] == state, timeout, f"{camera_id} {state}")
        return time.monotonic() - started

    def stop(self, timeout: float = 90) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


def records(path: Path) -> list[dict]:
    text = path.read_text() if path.exists() else ""
    assert not text or text.endswith("\n"), f"{path} ends with a torn line"
    return [json.loads(line) for line in text.splitlines()]


def mjpeg_frames(url: str, count: int, timeout: float = 30) -> list[bytes]:
    """The first ``count`` JPEGs of a multipart MJPEG stream."""
    frames, data = [], b""
    deadline = time.monotonic() + timeout
    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        while len(frames) < count and time.monotonic() < deadline:
            data += response.read1(65536)
            while True:
                start, end = data.find(b"\xff\xd8"), data.find(b"\xff\xd9")
                if start < 0 or end < start:
                    break
                frames.append(data[start:end + 2])
                data = data[end + 2:]
    return frames


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve_cluster_clips")
    street, scene = scene_clip(folder / "street.mp4", 120, FPS)
    block = make_clip(folder / "block.mp4", 120, fps=FPS)
    return street, scene, block


def test_serve_on_a_cluster_cameras_come_go_die_and_their_events_are_stored(media, tmp_path):
    street_clip, scene, block_clip = media
    street = RtspServer({"/street": street_clip}, user=USER, password=PASSWORD).start()
    late = RtspServer({"/late": block_clip}, user=USER, password=PASSWORD)  # not there yet
    extra = RtspServer({"/extra": block_clip}, user=USER, password=PASSWORD).start()
    broker = Broker(tmp_path).start() if MOSQUITTO else None
    subscriber = Subscriber(broker.port, "svc") if broker else None
    out = tmp_path / "out"
    zone = {"name": "zone", "polygon": [list(p) for p in scene.config.zone]}
    line = {"name": "line", "points": [list(p) for p in scene.config.line]}
    lines = [f"output_dir = {toml(str(out))}", "[sinks]", "video = false",
             "[tracker]", "enabled = true", *(f"{k} = {toml(v)}" for k, v in SCENE_TRACKER.items()),
             "[live]", "read_timeout = 5.0", "reconnect_initial = 0.2", "reconnect_max = 1.0",
             "[cluster]", "num_cpus = 0.5",  # three camera actors on a 2-CPU local cluster
             "[serve]", "port = 0", "live_fps = 4.0",
             *(["[mqtt]", f"port = {broker.port}", 'prefix = "svc"'] if broker else []),
             "[[sources]]", 'id = "street"', f"url = {toml(street.url('/street'))}",
             "[[sources.zones]]", *(f"{k} = {toml(v)}" for k, v in zone.items()),
             "[[sources.lines]]", *(f"{k} = {toml(v)}" for k, v in line.items()),
             "[[sources]]", 'id = "late"', f"url = {toml(late.url('/late'))}"]
    pipeline = tmp_path / "serve.toml"
    pipeline.write_text("\n".join(lines) + "\n")
    log_path = tmp_path / "serve.log"
    timings = {}
    serve = Serve(pipeline, log_path)
    try:
        # -- a camera unreachable at start is down, retried, and up once it appears; the other one streams
        serve.wait_state("late", "down", 60)
        timings["street up"] = serve.wait_state("street", "up", 60)
        late.start()
        timings["late up after it appeared"] = serve.wait_state("late", "up", 30)
        assert serve.process.poll() is None

        # -- add and remove a camera through the API while the others stream
        before = serve.camera("street")
        status, body = serve.request("POST", "api/cameras", {"id": "extra", "url": extra.url("/extra")})
        assert status == 201, body
        added = json.loads(body)
        assert added["id"] == "extra" and added["url"] == f"rtsp://***@127.0.0.1:{extra.port}/extra"
        assert list(serve.cameras()) == ["street", "late", "extra"]
        wait_for(lambda: serve.camera("extra")["processed"] > 5, 60, "extra's frames")
        metrics = serve.request("GET", "metrics")[1].decode()
        for camera_id in ("street", "late", "extra"):
            assert f'stream="{camera_id}"' in metrics, camera_id
        status, body = serve.request("DELETE", "api/cameras/extra")
        assert status == 204 and body == b""
        assert list(serve.cameras()) == ["street", "late"]
        assert serve.request("DELETE", "api/cameras/extra")[0] == 404
        assert records(out / "extra.detections.jsonl"), "extra's outputs were written and finalized"
        wait_for(lambda: serve.camera("street")["processed"] > before["processed"] + 10, 30, "street's frames")
        after = serve.camera("street")
        # the add and the remove did not disturb street (an earlier reconnect of a loaded CI machine is not theirs)
        assert after["state"] == "up" and after["reconnects"] == before["reconnects"], (before, after)
        assert after["since"] == before["since"], (before, after)

        # -- the live view: the actor's annotated JPEGs
        jpegs = mjpeg_frames(serve.url + "cameras/street/live.mjpg", 2)
        assert len(jpegs) == 2 and all(len(j) > 1000 for j in jpegs)

        # -- the scene's events reach the driver's event store
        events = wait_for(lambda: serve.get("api/events?camera=street")["events"], 90, "street's stored events", 1.0)
        assert all(e["source"] == "street" and e["schema"] == "streamseg.events/1" for e in events)

        # -- a camera actor's process killed: Ray restarts it, the camera comes back up
        pid = int(re.search(r"camera_started source=street node=\S+ pid=(\d+)", log_path.read_text()).group(1))
        processed = serve.camera("street")["processed"]
        since = serve.camera("street")["since"]
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: "camera_restarted source=street" in log_path.read_text(), 60, "street's actor restarted")
        wait_for(lambda: serve.camera("street")["state"] == "up" and serve.camera("street")["since"] > since, 60,
                 "street up again")
        wait_for(lambda: serve.camera("street")["processed"] > processed + 10, 60, "street's frames again")
        timings["street back after its actor was killed"] = time.monotonic() - killed
        cameras = serve.cameras()
        assert set(cameras) == {"street", "late"} and cameras["late"]["state"] == "up"
        health = serve.get("healthz")
        assert set(health["cameras"]) == {"street", "late"}
        restart_wall = time.time()

        # -- SIGHUP after the file lost a camera: that camera's actor stops, the other one runs on untouched
        pipeline.write_text(pipeline.read_text().split('[[sources]]\nid = "late"')[0])
        serve.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded: added none, removed late" in log_path.read_text(), 60, "the reload")
        assert list(serve.cameras()) == ["street"] and "camera_stopped source=late" in log_path.read_text()
        time.sleep(2)  # events of the new session
        assert serve.camera("street")["state"] == "up"
    finally:
        code = serve.stop()
        for server in (street, late, extra):
            server.kill()
        if subscriber is not None:
            time.sleep(0.5)
            subscriber.close()
        if broker is not None:
            broker.kill()
    log = log_path.read_text()
    print(timings)
    assert log.count("camera_restarted source=street") == 1 and "camera_restarted source=late" not in log
    assert code == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]

    # the street camera's frame indices only ever increase across the actor's restart, nothing torn
    frames = [r["frame"] for r in records(out / "street.detections.jsonl")]
    assert len(frames) > 20 and all(b > a for a, b in zip(frames, frames[1:]))
    # the stored events are the camera's own events records; none of a graceful stop is lost (only events of the
    # killed actor's last poll interval may be missing from the store: they are in the JSONL)
    written = [r for r in records(out / "street.events.jsonl")]
    stored = list(query_events(out / "events.db", cameras=["street"]))
    assert stored and len(written) >= len(stored)
    as_text = {json.dumps(r, sort_keys=True) for r in written}
    assert all(json.dumps(r, sort_keys=True) in as_text for r in stored)
    stored_text = {json.dumps(r, sort_keys=True) for r in stored}
    late_events = [r for r in written if r["wall_time"] > restart_wall]
    assert all(json.dumps(r, sort_keys=True) in stored_text for r in late_events)
    assert len(stored) >= len(written) - 20, (len(stored), len(written))
    if subscriber is not None:  # the driver's MQTT publisher: the stored events, and each camera's state
        published = [json.loads(m) for m in subscriber.on("svc/street/events")]
        assert sorted(map(json.dumps, published)) == sorted(map(json.dumps, stored))
        assert "up" in subscriber.on("svc/street/state") and subscriber.on("svc/street/state")[-1] == "down"
        assert subscriber.on("svc/availability")[:1] == ["online"] and subscriber.on("svc/availability")[-1] == \
            "offline"

    # credentials: nowhere in the log, a response or a file
    assert PASSWORD not in log and f"{USER}:" not in log
    for body in serve.bodies:
        assert PASSWORD.encode() not in body and f"{USER}:".encode() not in body
    for path in out.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path


def test_an_unreachable_cluster_is_one_line_at_once(tmp_path):
    pipeline = tmp_path / "serve.toml"
    pipeline.write_text(f'output_dir = {toml(str(tmp_path / "out"))}\nbackend = "none"\n[serve]\nport = 0\n'
                        f'[[sources]]\nid = "cam"\nurl = "rtsp://{USER}:{PASSWORD}@127.0.0.1:9/cam"\n')
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "streamseg", "serve", "--pipeline", str(pipeline), "--cluster",
                           "127.0.0.1:9"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and time.monotonic() - started < 30
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert errors and "127.0.0.1:9" in errors[-1] and "cannot connect" in errors[-1], done.stderr
    assert "Traceback" not in done.stderr and PASSWORD not in done.stderr + done.stdout


def test_camera_actor_in_service_mode_reports_events_states_and_pictures_only_while_watched(tmp_path, monkeypatch):
    """The camera actor itself, without Ray (it is a plain class): unreachable at start it keeps retrying (never
    ends); once its camera appears its status brings the up/down changes and the events as whole records (its own
    store and MQTT are off: the driver's); it encodes pictures only while asked for them; stop hands over the rest."""
    import logging

    from streamseg.cluster.cameras import PICTURE_LEASE, CameraActor
    from streamseg.config import build_config
    from test_live import BlockDetector

    monkeypatch.setattr("streamseg.models.build_backend", lambda *args, **kwargs: BlockDetector())
    root, level = list(logging.getLogger().handlers), logging.getLogger("streamseg").level
    monkeypatch.setattr(logging.getLogger(), "handlers", root)  # the actor adds its own stderr handler
    block = make_clip(tmp_path / "block.mp4", 30)  # 25 frames/s: the block enters the right half within 3 s
    server = RtspServer({"/cam": block}, user=USER, password=PASSWORD)
    config = build_config({
        "output_dir": str(tmp_path), "backend": "none", "sinks": {"video": False, "event_store": False},
        "tracker": {"min_hits": 2},
        "events": {"units": "relative", "zones": [{"name": "right", "polygon": [[0.5, 0], [1, 0], [1, 1], [0.5, 1]],
                                                  "classes": ["person"]}]},
        "live": {"read_timeout": 5.0, "reconnect_initial": 0.2, "reconnect_max": 0.5},
        "serve": {"live_fps": 5.0}})
    actor = CameraActor(config, server.url("/cam"), "cam", service=True)
    try:
        wait_for(lambda: actor.state == "retrying", 20, "the first failed connection")
        time.sleep(2)
        status = actor.status()
        assert status["state"] == "retrying" and [c[0] for c in status["changes"]] == ["down"]
        assert PASSWORD not in json.dumps(status)
        server.start()
        records_seen, changes = [], []

        def poll():
            status = actor.status()
            records_seen.extend(status["records"])
            changes.extend(c[0] for c in status["changes"])
            return status

        wait_for(lambda: poll()["processed"] > 20 and records_seen, 40, "frames and events of the camera")
        assert changes[:1] == ["up"] and actor.state == "running"
        assert all(r["schema"] == "streamseg.events/1" and r["source"] == "cam" for r in records_seen)
        assert actor.picture(None, 0, watching=False)[1:] == (0, None)  # nobody watched: nothing encoded
        time.sleep(1)
        assert actor.picture(None, 0, watching=False)[1] == 0
        actor.picture(None, 0)  # watched from now on (a lease of PICTURE_LEASE s)
        time.sleep(1.5)
        session, seq, jpeg = actor.picture(None, 0)
        assert seq >= 3 and jpeg[:2] == b"\xff\xd8"
        assert actor.picture(session, seq)[2] in (None, jpeg) or actor.picture(session, seq)[1] > seq
        actor.picture(session, seq, watching=False)
        time.sleep(0.5)
        stopped_at = actor.picture(None, 0, watching=False)[1]
        time.sleep(1.5)
        assert actor.picture(None, 0, watching=False)[1] == stopped_at  # not watched: not encoded
        actor.picture(None, 0)
        time.sleep(PICTURE_LEASE + 1.0)  # the lease ran out without another request
        leased = actor.picture(None, 0, watching=False)[1]
        time.sleep(1.0)
        assert actor.picture(None, 0, watching=False)[1] == leased
        server.kill()
        wait_for(lambda: "down" in (poll() and changes), 20, "the camera down")
        time.sleep(1)
        assert actor.state == "retrying" and actor._thread.is_alive()  # never ends because the camera is down
        final = actor.stop()
        records_seen.extend(final["records"])
        assert final["state"] == "stopped" and not actor._thread.is_alive()
    finally:
        actor.stop()
        server.kill()
        logging.getLogger("streamseg").setLevel(level)
    written = records(tmp_path / "cam.events.jsonl")
    assert sorted(map(json.dumps, written)) == sorted(map(json.dumps, records_seen))  # every event handed over
    assert not (tmp_path / "events.db").exists()
