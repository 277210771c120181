"""``streamseg serve``'s HTTP layer (streamseg.service.http) over the real CameraService and real RTSP cameras
(tests/rtsp_server.py on Debian's GStreamer, with credentials): cameras listed, added and removed while another
one streams (its frame indices go on without a gap), one-line JSON errors, the event store queried by time, server-
sent events (an event and a camera going down and up), MJPEG frames that decode as JPEG and stop being encoded when
nobody watches, polled latest.jpg leases, a slow event-stream client dropped while the cameras go on, open streams
ended at once by a shutdown, cameras with only their own zones in /api/events, the bearer token (401, refusals
logged without it) and credentials in no response or log line."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from live_server import RtspServer, gstreamer_missing, make_clip, wait_for
from streamseg.config import build_config
from streamseg.errors import ConfigError
from streamseg.sinks.event_store import query_events
from test_live import BlockDetector

_missing = gstreamer_missing()
pytestmark = pytest.mark.skipif(_missing is not None, reason=_missing or "")

USER, PASSWORD = "viewer", "S3cret-pw!z"
LIVE_FPS = 4.0
# the test clip's yellow block crosses into the right half about every 2.8 s: enter and exit events
RIGHT_HALF = {"name": "right", "polygon": [[0.5, 0], [1, 0], [1, 1], [0.5, 1]], "classes": ["person"]}




class Client:
    """urllib against the server; every body it reads is kept, so a test can check that none holds a secret."""

    def __init__(self, base: str, headers: dict | None = None):
        self.base, self.headers, self.bodies = base.rstrip("/"), headers or {}, []

    def request(self, method: str, path: str, body=None, headers: dict | None = None) -> tuple[int, dict, bytes]:
        data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={**self.headers, **(headers or {}),
                                                  **({"Content-Type": "application/json"} if data else {})})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, head, raw = response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as err:
            status, head, raw = err.code, dict(err.headers), err.read()
        self.bodies.append(raw)
        return status, head, raw

    def json(self, method: str, path: str, body=None, expect: int = 200):
        status, head, raw = self.request(method, path, body)
        assert status == expect, (method, path, status, raw)
        return json.loads(raw) if raw else None

    def error(self, method: str, path: str, body=None, expect: int = 400) -> str:
        """The one-line error message of a refused request."""
        status, head, raw = self.request(method, path, body)
        assert status == expect, (method, path, status, raw)
        assert head["Content-Type"].startswith("application/json")
        assert raw.count(b"\n") <= 1 and raw.strip().count(b"\n") == 0, raw
        message = json.loads(raw)["error"]
        assert message and "\n" not in message and "Traceback" not in message
        return message


@contextlib.contextmanager
def sse(url: str, timeout: float = 30):
    """An open ``/api/events/stream``: yields a queue of ``(kind, payload)`` filled by a reader thread."""
    connection = http.client.HTTPConnection(url.split("//")[1].split("/")[0], timeout=timeout)
    connection.request("GET", "/api/events/stream")
    sock = connection.sock
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("Content-Type").startswith("text/event-stream")
    messages, raw = queue.Queue(), []
    messages.ended = threading.Event()  # the server ended the stream

    def read():
        kind = None
        try:
            for line in response:
                raw.append(line)
                line = line.decode().rstrip("\r\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    messages.put((kind, json.loads(line[6:])))
        except (OSError, ValueError, http.client.HTTPException):
            pass
        messages.ended.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield messages
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(2)  # the reader sees the end, then the connection closes
        reader.join(5)
        connection.close()
        messages.raw = b"".join(raw)


def next_message(messages: queue.Queue, match, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no SSE message {what} within {timeout} s")
        try:
            kind, payload = messages.get(timeout=left)
        except queue.Empty:
            continue
        if match(kind, payload):
            return payload


def frames_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("serve_clips") / "cam.mp4", 120)


@pytest.fixture(scope="module")
def camera_server(clip):
    """One RTSP server (with credentials) whose mounts are the cameras of this module; each client gets its own
    playback from the clip's start."""
    with RtspServer({f"/{name}": clip for name in ("a", "b", "m", "x")}, user=USER, password=PASSWORD) as server:
        yield server


def serve_config(out: Path, cameras: list[dict], **extra):
    return build_config({
        "output_dir": str(out), "backend": "none", "sinks": {"video": False},
        "tracker": {"min_hits": 2},
        "events": {"units": "relative", "zones": [RIGHT_HALF]},
        "live": {"read_timeout": 2.0, "reconnect_initial": 0.2, "reconnect_max": 1.0, "clips": True,
                 "clip_pre": 0.5, "clip_post": 0.5},
        "serve": {"port": 0, "live_fps": LIVE_FPS},
        "sources": cameras, **extra})


@pytest.fixture(scope="module")
def served(camera_server, tmp_path_factory):
    """A CameraService with camera ``a`` streaming, and its HTTP server on a free loopback port."""
    from streamseg.service.core import CameraService
    from streamseg.service.http import serving_in_thread

    out = tmp_path_factory.mktemp("serve_out")
    config = serve_config(out, [{"id": "a", "url": camera_server.url("/a")}])
    service = CameraService(config, backend=BlockDetector())
    service.start()
    try:
        with serving_in_thread(service, "127.0.0.1", 0) as server:
            client = Client(server.url)
            wait_for(lambda: client.json("GET", "/api/cameras")["cameras"][0]["state"] == "up", 30, "camera a up",
                     0.2)
            yield service, server, client, out
    finally:
        service.stop()


def test_add_and_remove_a_camera_while_another_streams_without_a_gap(served, camera_server):
    service, server, client, out = served
    cameras = client.json("GET", "/api/cameras")["cameras"]
    assert [c["id"] for c in cameras] == ["a"]
    keys = {"id", "url", "state", "since", "fps", "processed", "dropped", "reconnects", "events"}
    assert keys <= set(cameras[0]) and cameras[0]["url"] == f"rtsp://***@127.0.0.1:{camera_server.port}/a"
    before = service.camera("a")

    added = client.json("POST", "/api/cameras", {"id": "b", "url": camera_server.url("/b")}, expect=201)
    assert added["id"] == "b" and added["url"] == f"rtsp://***@127.0.0.1:{camera_server.port}/b"
    assert added["state"] in ("connecting", "up", "down")
    assert [c["id"] for c in client.json("GET", "/api/cameras")["cameras"]] == ["a", "b"]
    wait_for(lambda: client.json("GET", "/api/cameras")["cameras"][1]["processed"] > 10, 30, "camera b frames", 0.2)

    message = client.error("POST", "/api/cameras", {"id": "b", "url": camera_server.url("/x")}, expect=409)
    assert "b" in message
    status, _, body = client.request("DELETE", "/api/cameras/b")
    assert status == 204 and body == b""
    assert [c["id"] for c in client.json("GET", "/api/cameras")["cameras"]] == ["a"]
    client.error("DELETE", "/api/cameras/b", expect=404)
    assert (out / "b.detections.jsonl").stat().st_size > 0  # b's outputs were written and finalized

    # a went on through all of it: one connection, its frames keep coming, no frame index lost but counted drops
    wait_for(lambda: service.camera("a")["processed"] > before["processed"] + 20, 20, "camera a frames")
    records = frames_of(out / "a.detections.jsonl")
    after = service.camera("a")  # after reading: its drop count covers every frame in the file
    assert after["state"] == "up" and after["reconnects"] == before["reconnects"] == 0
    frames = [r["frame"] for r in records]
    assert len(frames) >= 20 and all(b > a for a, b in zip(frames, frames[1:]))
    missing = frames[-1] - frames[0] + 1 - len(frames)
    assert missing <= after["dropped"], (missing, after["dropped"])
    times = [r["time"] for r in records]
    assert max(b - a for a, b in zip(times, times[1:])) < 1.0  # never stalled while b came and went


def test_errors_are_one_json_line(served):
    service, server, client, out = served
    assert "url" in client.error("POST", "/api/cameras", {"id": "nourl"})
    assert "sources.id" in client.error("POST", "/api/cameras", {"id": "bad id!", "url": "rtsp://127.0.0.1:1/x"})
    client.error("POST", "/api/cameras", {"url": "rtsp://127.0.0.1:1/x", "colour": "red"})
    client.error("POST", "/api/cameras", b"{not json")
    client.error("POST", "/api/cameras", [1, 2])
    client.error("DELETE", "/api/cameras/nope", expect=404)
    client.error("GET", "/cameras/nope/live.mjpg", expect=404)
    client.error("GET", "/cameras/nope/clip?t=1", expect=404)
    client.error("GET", "/cameras/a/clip", expect=400)
    client.error("GET", "/cameras/a/clip?t=yesterday", expect=400)
    client.error("GET", "/cameras/a/clip?t=1", expect=404)  # no clip covers 1970
    assert "since" in client.error("GET", "/api/events?since=last+tuesday")
    assert "until" in client.error("GET", "/api/events?until=2026-13-45")
    client.error("GET", "/api/events?limit=-3")
    client.error("GET", "/no/such/page", expect=404)
    client.error("PUT", "/api/cameras", {"url": "x"}, expect=405)
    assert "POST" in client.request("PUT", "/api/cameras", {"url": "x"})[1]["Allow"]
    assert [c["id"] for c in service.cameras()] == ["a"]  # nothing half-added


def test_events_query_by_time_kind_and_camera(served):
    service, server, client, out = served
    events = wait_for(lambda: len(client.json("GET", "/api/events?camera=a")["events"]) >= 3 and
                      client.json("GET", "/api/events?camera=a")["events"], 40, "three events of camera a", 0.3)
    assert all(e["source"] == "a" and e["schema"] == "streamseg.events/1" for e in events)
    wall = [e["wall_time"] for e in events]
    assert wall == sorted(wall)
    # the same records as the events JSONL (the store holds the line as written)
    lines = {json.dumps(r, sort_keys=True) for r in frames_of(out / "a.events.jsonl")}
    assert {json.dumps(e, sort_keys=True) for e in events} <= lines

    middle = wall[1]
    since = client.json("GET", f"/api/events?camera=a&since={middle}")["events"]
    assert since and min(e["wall_time"] for e in since) >= middle and since[0] == events[1]
    until = client.json("GET", f"/api/events?camera=a&until={middle}")["events"]
    assert until == [e for e in events if e["wall_time"] < middle]
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(wall[0]) + 1)) + "Z"
    assert all(e["wall_time"] >= int(wall[0]) + 1 for e in client.json("GET", f"/api/events?since={iso}")["events"])
    kind = events[0]["kind"]
    assert all(e["kind"] == kind for e in client.json("GET", f"/api/events?kind={kind}")["events"])
    assert client.json("GET", "/api/events?camera=nobody")["events"] == []
    assert len(client.json("GET", "/api/events?camera=a&limit=2")["events"]) == 2


def test_sse_delivers_events_and_a_camera_going_down_and_up(served, clip, tmp_path):
    service, server, client, out = served
    own = RtspServer({"/k": clip}, user=USER, password=PASSWORD).start()
    try:
        with sse(server.url) as messages:
            client.json("POST", "/api/cameras", {"id": "k", "url": own.url("/k")}, expect=201)
            up = next_message(messages, lambda k, p: k == "state" and p["id"] == "k" and p["state"] == "up", 30,
                              "k up")
            assert up["url"] == f"rtsp://***@127.0.0.1:{own.port}/k"
            event = next_message(messages, lambda k, p: k == "event" and p["source"] in ("a", "k"), 30, "an event")
            assert event["kind"] in ("enter", "exit") and event["region"] == "right"
            assert abs(event["wall_time"] - time.time()) < 10
            own.kill()
            down = next_message(messages, lambda k, p: k == "state" and p["id"] == "k" and p["state"] == "down",
                                20, "k down")
            assert down["since"] >= up["since"]
            own.start()
            again = next_message(messages, lambda k, p: k == "state" and p["id"] == "k" and p["state"] == "up", 30,
                                 "k up again")
            assert again["since"] >= down["since"]
        assert b"event: state\ndata: {" in messages.raw and b"event: event\ndata: {" in messages.raw
        assert PASSWORD.encode() not in messages.raw and USER.encode() + b":" not in messages.raw
    finally:
        own.kill()
        with contextlib.suppress(KeyError):
            service.remove_camera("k")


def read_mjpeg_parts(response, count: int, timeout: float) -> list[tuple[float, bytes]]:
    """``count`` JPEG parts of a multipart/x-mixed-replace response (boundary ``frame``) with their arrival time."""
    parts, buffer, deadline = [], b"", time.monotonic() + timeout
    while len(parts) < count:
        assert time.monotonic() < deadline, f"{len(parts)} of {count} MJPEG parts in {timeout} s"
        chunk = response.read1(65536) if hasattr(response, "read1") else response.read(4096)
        assert chunk, "MJPEG stream ended"
        buffer += chunk
        while True:
            head_end = buffer.find(b"\r\n\r\n")
            if head_end < 0:
                break
            head = buffer[:head_end].decode("latin-1")
            assert head.lstrip("\r\n").startswith("--frame"), head
            length = int([h for h in head.splitlines() if h.lower().startswith("content-length:")][0].split(":")[1])
            if len(buffer) < head_end + 4 + length + 2:
                break
            parts.append((time.monotonic(), buffer[head_end + 4: head_end + 4 + length]))
            buffer = buffer[head_end + 4 + length + 2:]
    return parts


def test_mjpeg_frames_decode_at_the_capped_rate_and_encoding_stops_without_viewers(served, camera_server):
    service, server, client, out = served
    client.json("POST", "/api/cameras", {"id": "m", "url": camera_server.url("/m")}, expect=201)
    try:
        wait_for(lambda: service.camera("m")["processed"] > 10, 30, "camera m frames")
        time.sleep(0.5)
        assert service.latest_jpeg("m") == (0, None)  # nobody watched yet: nothing encoded

        connection = http.client.HTTPConnection(server.url.split("//")[1].rstrip("/"), timeout=20)
        connection.request("GET", "/cameras/m/live.mjpg")
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type") == "multipart/x-mixed-replace; boundary=frame"
        parts = read_mjpeg_parts(response, 9, 20)
        image = cv2.imdecode(np.frombuffer(parts[-1][1], np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape == (240, 320, 3)
        # the annotated picture: the clip's blue background and its yellow block are in it
        assert image[..., 0].mean() > 40
        rate = (len(parts) - 2) / (parts[-1][0] - parts[1][0])
        assert rate <= LIVE_FPS * 1.25, rate  # capped (the camera sends 25 frames/s)
        assert rate >= LIVE_FPS * 0.5, rate
        watched = service.latest_jpeg("m")[0]
        assert watched > 0
        connection.close()

        def settled():
            first = service.latest_jpeg("m")[0]
            time.sleep(1.0)
            return service.latest_jpeg("m")[0] == first

        wait_for(settled, 10, "JPEG encoding to stop once the viewer left")
        assert service.camera("m")["processed"] > 0
        processed = service.camera("m")["processed"]
        wait_for(lambda: service.camera("m")["processed"] > processed + 5, 10, "camera m still processing")
        assert settled()  # frames keep being processed, none encoded
    finally:
        with contextlib.suppress(KeyError):
            service.remove_camera("m")


def test_metrics_health_and_page(served):
    service, server, client, out = served
    status, head, body = client.request("GET", "/metrics")
    assert status == 200 and head["Content-Type"].startswith("text/plain")
    text = body.decode()
    assert 'streamseg_frames_processed_total{stream="a"}' in text
    assert "streamseg_event_store_dropped_total" in text
    health = client.json("GET", "/healthz")
    assert isinstance(health, dict)
    status, head, page = client.request("GET", "/")
    assert status == 200 and head["Content-Type"].startswith("text/html")
    assert b'id="events"' in page and b"/api/events/stream" in page
    assert b"http://" not in page and b"https://" not in page  # nothing fetched from outside (offline machines)


def test_credentials_never_in_a_response_or_log(served, camera_server, caplog):
    """Every endpoint, plus errors caused by a spec that carries credentials; and no log line of it either."""
    service, server, client, out = served
    caplog.set_level(logging.DEBUG)
    secret_url = camera_server.url("/x")
    assert PASSWORD in secret_url
    client.error("POST", "/api/cameras", {"id": "bad id!", "url": secret_url})
    client.error("POST", "/api/cameras", {"id": "x", "url": secret_url, "zones": "everywhere"})
    client.json("POST", "/api/cameras", {"id": "x", "url": secret_url}, expect=201)
    try:
        client.error("POST", "/api/cameras", {"id": "x", "url": secret_url}, expect=409)
        for path in ("/api/cameras", "/api/events", "/metrics", "/healthz", "/", "/api/cameras/x"):
            client.request("GET", path)
        wait_for(lambda: service.camera("x")["state"] == "up", 30, "camera x up")
        with sse(server.url) as messages:
            client.request("DELETE", "/api/cameras/x")
            time.sleep(0.5)
        raw = messages.raw
    finally:
        with contextlib.suppress(KeyError):
            service.remove_camera("x")
    bodies = b"".join(client.bodies) + raw
    assert b"***@127.0.0.1" in bodies
    for secret in (PASSWORD, f"{USER}:"):
        assert secret.encode() not in bodies
    logged = "\n".join(logging.Formatter().format(record) for record in caplog.records)
    assert "camera_added id=x" in logged and PASSWORD not in logged and f"{USER}:" not in logged


def test_token_required_401_logged_without_it(served, caplog):
    from streamseg.service.http import serve_http, serving_in_thread

    service = served[0]
    token = "tok-7f3a9c1e55d2"
    caplog.set_level(logging.INFO, logger="streamseg.service")
    with serving_in_thread(service, "127.0.0.1", 0, token=token) as server:
        anonymous = Client(server.url)
        assert "unauthorized" in anonymous.error("GET", "/api/cameras", expect=401)
        anonymous.error("GET", "/cameras/a/live.mjpg", expect=401)
        anonymous.error("GET", "/metrics", expect=401)
        anonymous.error("DELETE", "/api/cameras/a", expect=401)
        wrong = Client(server.url, {"Authorization": "Bearer wrong-guess-123"})
        wrong.error("GET", "/api/cameras", expect=401)
        wrong.error("GET", "/api/cameras?token=wrong-guess-456", expect=401)
        good = Client(server.url, {"Authorization": f"Bearer {token}"})
        assert [c["id"] for c in good.json("GET", "/api/cameras")["cameras"]] == ["a"]

        # the page: ?token= once, then a cookie (not the token itself), and the address without the token
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(server.url + f"?token={token}", timeout=10) as response:
            assert response.status == 200 and response.url == server.url
            assert b'id="events"' in response.read()
        cookies = [c for c in opener.handlers if isinstance(c, urllib.request.HTTPCookieProcessor)][0].cookiejar
        assert len(cookies) == 1 and token not in next(iter(cookies)).value
        with opener.open(server.url + "api/cameras", timeout=10) as response:
            assert json.loads(response.read())["cameras"][0]["id"] == "a"
        assert all(token.encode() not in b for b in anonymous.bodies + wrong.bodies + good.bodies)
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) >= 6, refusals
    assert any("GET /api/cameras" in line and "127.0.0.1" in line for line in refusals), refusals
    assert any("DELETE /api/cameras/a" in line for line in refusals), refusals
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (token, "wrong-guess-123", "wrong-guess-456"):
        assert secret not in logged
    assert [c["id"] for c in service.cameras()] == ["a"]  # the refused DELETE did nothing

    with pytest.raises(ConfigError) as err:
        serve_http(service, "0.0.0.0", 0, None)
    assert "token" in str(err.value) and "\n" not in str(err.value)


def test_events_of_cameras_with_their_own_zones_are_queryable(camera_server, tmp_path):
    """``[[sources.zones]]`` without top-level ``[events]``: the camera's events are stored (events.db) and must be
    in ``/api/events`` and in the SSE feed like any other camera's."""
    from streamseg.service.core import CameraService
    from streamseg.service.http import serving_in_thread

    config = build_config({
        "output_dir": str(tmp_path), "backend": "none", "sinks": {"video": False}, "tracker": {"min_hits": 2},
        "live": {"read_timeout": 2.0, "reconnect_initial": 0.2, "reconnect_max": 1.0},
        "serve": {"port": 0}, "events": {"units": "relative"},
        "sources": [{"id": "z", "url": camera_server.url("/a"), "zones": [RIGHT_HALF]}]})
    with CameraService(config, backend=BlockDetector()) as service, \
            serving_in_thread(service, "127.0.0.1", 0) as server, sse(server.url) as messages:
        client = Client(server.url)
        event = next_message(messages, lambda k, p: k == "event", 30, "an event of camera z")
        assert event["source"] == "z" and event["region"] == "right"
        wait_for(lambda: (tmp_path / "z.events.jsonl").stat().st_size > 0, 10, "z's events JSONL")
        stored = wait_for(lambda: list(query_events(tmp_path / "events.db", cameras=["z"])), 10, "z's stored events")
        served_events = client.json("GET", "/api/events?camera=z")["events"]
        assert served_events, f"/api/events is empty while events.db holds {len(stored)} events of camera z"
        assert served_events[0] == stored[0]



def read_to_end(response) -> bytes:
    try:
        return response.read()
    except http.client.IncompleteRead as err:
        return err.partial


def test_stopping_the_server_ends_open_streams_at_once_and_releases_the_watch(served):
    """A server with an event stream and a live view open stops in well under its 5 s grace period (the streams
    end themselves), the watch is released, and an idle event stream got its comment pings."""
    from streamseg.service.http import serving_in_thread

    service = served[0]
    with serving_in_thread(service, "127.0.0.1", 0, ping_interval=0.3) as server:
        host = server.url.split("//")[1].rstrip("/")
        events = http.client.HTTPConnection(host, timeout=20)
        events.request("GET", "/api/events/stream")
        events_response = events.getresponse()
        live = http.client.HTTPConnection(host, timeout=20)
        live.request("GET", "/cameras/a/live.mjpg")
        live_response = live.getresponse()
        assert len(read_mjpeg_parts(live_response, 2, 20)) == 2
        time.sleep(1.0)
        started = time.monotonic()
    stopped_in = time.monotonic() - started
    assert stopped_in < 2.0, stopped_in
    assert read_to_end(events_response).count(b": ping\n\n") >= 2
    read_to_end(live_response)  # ended by the server (a hung stream would time out here)
    events.close()
    live.close()
    first = service.latest_jpeg("a")[0]
    time.sleep(1.0)
    assert service.latest_jpeg("a")[0] == first  # nobody watches any more: nothing encoded


def test_a_slow_event_stream_client_is_dropped_and_never_holds_up_the_cameras(served, caplog):
    """The server's event loop blocked for 3 s (a stand-in for any slow client or busy server): the service's
    pipeline threads and API calls publish without waiting, the cameras go on, and the client whose inbox (1
    message here) overflowed is disconnected (its browser reconnects) instead of growing a queue."""
    from streamseg.service.http import serving_in_thread

    service = served[0]
    caplog.set_level(logging.WARNING, logger="streamseg.service")
    with serving_in_thread(service, "127.0.0.1", 0, sse_queue=1) as server, sse(server.url) as messages:
        time.sleep(0.3)
        blocked = threading.Event()
        server.loop.call_soon_threadsafe(lambda: (blocked.set(), time.sleep(3.0)))
        assert blocked.wait(5)
        started, processed = time.monotonic(), service.camera("a")["processed"]
        service.add_camera({"id": "s", "url": "rtsp://127.0.0.1:1/s"})  # a state message each
        service.remove_camera("s")
        assert time.monotonic() - started < 1.5  # publishing never waited for the blocked server
        wait_for(lambda: service.camera("a")["processed"] > processed + 10, 2.5, "camera a going on meanwhile")
        assert not messages.ended.is_set()
        wait_for(messages.ended.is_set, 10, "the slow client to be disconnected")
    assert any("too slow" in r.getMessage() for r in caplog.records)


def test_latest_jpeg_polls_keep_encoding_only_for_their_lease(served):
    """``latest.jpg``: 204 until a picture exists, then the newest JPEG; each poll keeps the camera encoding for
    the lease (1 s here), after which encoding stops; an unknown camera is a 404 line."""
    from streamseg.service.http import serving_in_thread

    service = served[0]
    with serving_in_thread(service, "127.0.0.1", 0, snapshot_lease=1.0) as server:
        client = Client(server.url)
        client.error("GET", "/cameras/nope/latest.jpg", expect=404)

        def poll():
            status, head, body = client.request("GET", "/cameras/a/latest.jpg")
            assert status in (200, 204), status
            return int(head["X-Frame-Sequence"]), body if status == 200 else None

        sequences = []
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            sequence, body = poll()
            sequences.append(sequence)
            time.sleep(0.25)
        assert body is not None and len(set(sequences)) >= 5, sequences  # fresh pictures while polled
        image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape == (240, 320, 3)
        time.sleep(1.5)  # the lease ran out
        first = service.latest_jpeg("a")[0]
        time.sleep(1.0)
        assert service.latest_jpeg("a")[0] == first  # no poller, no encoding


def test_a_cameras_zones_change_through_the_api_and_only_it_restarts(served, camera_server):
    """PUT changes a camera's zones: a bad change is refused with the camera untouched; a good one restarts only
    that camera, whose outputs go on (frame indices continue) and whose zone counts start a file of the new
    columns (the old one kept); the other camera is not disturbed."""
    service, server, client, out = served
    client.json("POST", "/api/cameras", {"id": "p", "url": camera_server.url("/x")}, expect=201)
    wait_for(lambda: service.camera("p")["processed"] > 5, 30, "camera p frames")
    a_before, p_before = service.camera("a"), service.camera("p")
    assert "polygon" in client.error("PUT", "/api/cameras/p", {"zones": [{"name": "half"}]}, expect=400)
    assert "cannot change" in client.error("PUT", "/api/cameras/p", {"id": "q"}, expect=400)
    client.error("PUT", "/api/cameras/nope", {"zones": []}, expect=404)
    assert service.camera("p")["since"] == p_before["since"]  # refused changes stopped nothing
    left = {"name": "left", "polygon": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]}
    changed = client.json("PUT", "/api/cameras/p", {"zones": [left]})
    assert changed["id"] == "p" and changed["url"] == f"rtsp://***@127.0.0.1:{camera_server.port}/x"
    wait_for(lambda: service.camera("p")["processed"] > 5, 30, "camera p frames after the change")
    time.sleep(0.5)
    client.request("DELETE", "/api/cameras/p")
    frames = [r["frame"] for r in frames_of(out / "p.detections.jsonl")]
    assert all(b > a for a, b in zip(frames, frames[1:]))  # one file, indices continue across the restart
    assert (out / "p.zone_counts.csv").read_text().splitlines()[0].startswith("frame,time,left:")
    earlier = list(out.glob("p.zone_counts.until-*.csv"))
    assert len(earlier) == 1 and "right:" in earlier[0].read_text().splitlines()[0]
    a_after = service.camera("a")
    assert a_after["state"] == "up" and a_after["reconnects"] == a_before["reconnects"]
    assert a_after["since"] == a_before["since"]
