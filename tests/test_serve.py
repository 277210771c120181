"""``streamseg serve`` as a user runs it: the command in its own process, real RTSP cameras (tests/rtsp_server.py)
that appear late, die and come back, a pipeline file edited and SIGHUP sent, bad configurations."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from live_server import RtspServer, free_port, gstreamer_missing, make_clip
from test_output_failures import fill, small_disk  # noqa: F401 - small_disk: a fixture
from streamseg.config import build_config, camera_specs, config_for_camera
from streamseg.errors import ConfigError

PASSWORD = "s3cr3t-pw"

needs_rtsp = pytest.mark.skipif(gstreamer_missing() is not None, reason=f"no RTSP server: {gstreamer_missing()}")


def write_pipeline(path: Path, out: Path, cameras: list[dict], extra: str = "") -> Path:
    lines = [f'output_dir = "{out}"', 'backend = "none"', "[sinks]", "video = false",
             "[live]", "read_timeout = 2.0", "reconnect_initial = 0.2", "reconnect_max = 1.0",
             "[serve]", "port = 0", extra]
    for camera in cameras:
        lines.append("[[sources]]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in camera.items() if not isinstance(value, list)]
        for key, value in camera.items():
            if isinstance(value, list):  # [[sources.zones]] / [[sources.lines]]
                for table in value:
                    lines.append(f"[[sources.{key}]]")
                    lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class Serve:
    """``streamseg serve --pipeline FILE`` in a child process; its log in a file."""

    def __init__(self, pipeline: Path, log: Path):
        self.log = log
        self.process = subprocess.Popen([sys.executable, "-m", "streamseg", "serve", "--pipeline", str(pipeline)],
                                        stdout=subprocess.DEVNULL, stderr=open(log, "w"))
        deadline = time.monotonic() + 90
        while True:
            found = re.search(r"serving on (http://127\.0\.0\.1:\d+/)", log.read_text())
            if found:
                self.url = found.group(1)
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"serve did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path.lstrip("/"), timeout=10) as response:
            return json.loads(response.read())

    def camera(self, camera_id: str) -> dict:
        return next((c for c in self.get("api/cameras")["cameras"] if c["id"] == camera_id), {"state": None})

    def wait_state(self, camera_id: str, state: str, timeout: float) -> float:
        started = time.monotonic()
        while self.camera(camera_id)["state"] != state:
            assert self.process.poll() is None, f"serve exited:\n{self.log.read_text()[-3000:]}"
            assert time.monotonic() - started < timeout, f"{camera_id} not {state} after {timeout} s"
            time.sleep(0.1)
        return time.monotonic() - started

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


def frames_of(path: Path) -> list[int]:
    text = path.read_text()
    assert text.endswith("\n"), f"{path} ends with a torn line"
    return [json.loads(line)["frame"] for line in text.splitlines()]


@needs_rtsp
def test_serve_waits_for_a_camera_that_appears_later_and_stops_cleanly(tmp_path):
    """Started before its camera exists, serve keeps running and picks the camera up once it appears; a dead
    camera turns "down" and comes back; SIGTERM exits 0 with every file complete; the password is nowhere."""
    clip = make_clip(tmp_path / "clip.mp4", 40)
    camera = RtspServer({"/door": clip}, user="viewer", password=PASSWORD)
    out = tmp_path / "out"
    pipeline = write_pipeline(tmp_path / "serve.toml", out, [{"id": "door", "url": camera.url("/door")}])
    serve = Serve(pipeline, tmp_path / "serve.log")
    try:
        serve.wait_state("door", "down", 20)  # tried at once, refused: down, and retried
        time.sleep(3)
        assert serve.process.poll() is None, "serve must not exit because a camera is unreachable"
        camera.start()
        picked_up = serve.wait_state("door", "up", 30)
        time.sleep(2)
        assert serve.camera("door")["processed"] > 10
        camera.kill()
        serve.wait_state("door", "down", 15)
        camera.start()
        serve.wait_state("door", "up", 30)
        time.sleep(1)
        request = urllib.request.Request(serve.url + "api/cameras", method="POST", data=json.dumps(
            {"id": "gone", "url": f"rtsp://viewer:{PASSWORD}@127.0.0.1:{free_port()}/x"}).encode())
        with urllib.request.urlopen(request, timeout=10) as response:  # a camera with credentials, never up
            assert response.status == 201 and PASSWORD not in response.read().decode()
        serve.wait_state("gone", "down", 15)
        listing = json.dumps(serve.get("api/cameras"))
        assert PASSWORD not in listing and "viewer" not in listing
    finally:
        code = serve.stop()
        camera.kill()
    log = (tmp_path / "serve.log").read_text()
    assert code == 0, log[-3000:]
    assert picked_up < 30
    assert PASSWORD not in log and "Traceback" not in log
    frames = frames_of(out / "door.detections.jsonl")
    assert len(frames) > 20 and frames == sorted(set(frames))  # one record per frame index, in order
    statuses = [json.loads(line)["kind"] for line in (out / "door.streams.jsonl").read_text().splitlines()]
    assert statuses.count("stream_up") >= 2 and "stream_down" in statuses
    for path in out.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path


@needs_rtsp
def test_sighup_restarts_only_the_cameras_that_changed(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", 60)
    cameras = RtspServer({"/a": clip, "/b": clip, "/c": clip}).start()
    out = tmp_path / "out"
    zone = {"name": "left", "polygon": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]}
    line = {"name": "mid", "points": [[0.5, 0], [0.5, 1]]}
    first = [{"id": "a", "url": cameras.url("/a")}, {"id": "b", "url": cameras.url("/b"), "zones": [zone]}]
    tracked = '[tracker]\nenabled = true\n[events]\nunits = "relative"\n'
    pipeline = write_pipeline(tmp_path / "serve.toml", out, first, tracked)
    serve = Serve(pipeline, tmp_path / "serve.log")
    try:
        serve.wait_state("a", "up", 30)
        serve.wait_state("b", "up", 30)
        time.sleep(2)
        a_before = serve.camera("a")
        write_pipeline(pipeline, out, [first[0], {"id": "b", "url": cameras.url("/b"), "lines": [line]},
                                       {"id": "c", "url": cameras.url("/c")}], tracked)
        serve.process.send_signal(signal.SIGHUP)
        serve.wait_state("c", "up", 30)
        serve.wait_state("b", "up", 30)
        time.sleep(2)
        a_after = serve.camera("a")
        (tmp_path / "serve.toml").write_text("this is [not toml")
        serve.process.send_signal(signal.SIGHUP)  # a broken edit: one error line, everything runs on
        time.sleep(1.5)
        assert serve.process.poll() is None and serve.camera("a")["state"] == "up"
    finally:
        code = serve.stop()
        cameras.kill()
    log = (tmp_path / "serve.log").read_text()
    assert code == 0, log[-3000:]
    assert "reload: added ['c'], removed none, restarted ['b']" in log
    assert "reload failed, the cameras run on unchanged" in log and "invalid TOML" in log
    # a ran on through the reload: the same connection (no reconnect), every frame index once, no gap beyond the
    # frames it counted as dropped (the model was busy: the freshest frame wins)
    assert a_after["reconnects"] == a_before["reconnects"] == 0
    frames = frames_of(out / "a.detections.jsonl")
    assert frames == sorted(set(frames))
    missing = (frames[-1] - frames[0] + 1) - len(frames)
    assert missing <= a_after["dropped"] + 2, (missing, a_after)
    window = frames[a_before["processed"] - 1:]  # from before the reload on (a connection's first burst of
    assert len(window) > 50 and max(b - a for a, b in zip(window, window[1:])) <= 5  # frames may drop many)
    statuses = [json.loads(x)["kind"] for x in (out / "a.streams.jsonl").read_text().splitlines()]
    assert statuses == ["stream_up"]
    # b restarted: its outputs went on (frame indices continue, never repeat) under its new rules
    b_frames = frames_of(out / "b.detections.jsonl")
    assert b_frames == sorted(set(b_frames))
    b_statuses = [json.loads(x)["kind"] for x in (out / "b.streams.jsonl").read_text().splitlines()]
    assert b_statuses.count("stream_up") == 2
    assert (out / "c.detections.jsonl").exists()


def test_bad_configurations_are_one_line_and_exit_1(tmp_path):
    out = tmp_path / "out"
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    cases = {
        "unknown key": ("[serve]\nprot = 1\n", "unknown key 'serve.prot'"),
        "a file": (f'sources = ["{clip}"]\n', "is not a camera"),
        "open host without a token": ('[serve]\nhost = "0.0.0.0"\n', "is not loopback"),
        "missing token file": ('[serve]\ntoken_file = "nope.txt"\n', "serve.token_file: cannot read"),
        "bad camera id": ('[[sources]]\nurl = "rtsp://127.0.0.1:9/x"\nid = "a/b"\n', "sources.id"),
    }
    env = {k: v for k, v in os.environ.items() if k != "STREAMSEG_SERVE_TOKEN"}
    for name, (text, expected) in cases.items():
        path = tmp_path / "bad.toml"
        path.write_text(f'output_dir = "{out}"\nbackend = "none"\n' + text)
        done = subprocess.run([sys.executable, "-m", "streamseg", "serve", "--pipeline", str(path)],
                              capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
        assert done.returncode == 1, (name, done.stderr[-2000:])
        errors = [line for line in done.stderr.splitlines() if line.startswith("streamseg: error:")]
        assert len(errors) == 1 and expected in errors[0], (name, done.stderr[-2000:])
        assert "Traceback" not in done.stderr, name
    with socket.socket() as taken:  # the port is in use: one line too, before any camera starts or writes
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        path = tmp_path / "taken.toml"
        path.write_text(f'output_dir = "{out}"\nbackend = "none"\n[serve]\nport = {taken.getsockname()[1]}\n'
                        f'[[sources]]\nid = "x"\nurl = "rtsp://127.0.0.1:{free_port()}/x"\n')
        done = subprocess.run([sys.executable, "-m", "streamseg", "serve", "--pipeline", str(path)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and "cannot listen on" in done.stderr and "Traceback" not in done.stderr
        assert not list(out.glob("x.*")) and "stream_" not in done.stderr, done.stderr[-2000:]


def test_a_second_service_on_the_same_output_folder_is_refused(tmp_path):
    """Both would resume the same cameras' files and interleave their lines: the second exits 1 with one line,
    the first runs on untouched; once it ends, the folder is free again."""
    out = tmp_path / "out"
    camera = {"id": "door", "url": f"rtsp://127.0.0.1:{free_port()}/door"}  # never up: the service retries it
    first = Serve(write_pipeline(tmp_path / "first.toml", out, [camera]), tmp_path / "first.log")
    try:
        done = subprocess.run([sys.executable, "-m", "streamseg", "serve", "--pipeline",
                               str(write_pipeline(tmp_path / "second.toml", out, [camera]))],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
        errors = [line for line in done.stderr.splitlines() if line.startswith("streamseg: error:")]
        assert len(errors) == 1 and f"another running streamseg serve (pid {first.process.pid})" in errors[0], \
            done.stderr[-2000:]
        assert "door" not in done.stderr.replace(str(tmp_path), "")  # no camera of the second one started
        assert first.process.poll() is None and first.camera("door")["state"] == "down"
    finally:
        assert first.stop() == 0, first.log.read_text()[-3000:]
    again = Serve(write_pipeline(tmp_path / "again.toml", out, [camera]), tmp_path / "again.log")
    assert again.stop() == 0, again.log.read_text()[-3000:]


def test_serve_starts_on_a_full_disk_and_says_so_in_one_line(tmp_path, small_disk):
    """An always-on service runs on when its disk is full (the page, the API and MQTT still work; each output
    says once that it failed), from the start too: its output-folder lock must not need a free byte."""
    fill(small_disk, leave=0)
    camera = {"id": "door", "url": f"rtsp://127.0.0.1:{free_port()}/door"}
    service = Serve(write_pipeline(tmp_path / "full.toml", small_disk / "out", [camera]), tmp_path / "serve.log")
    service.wait_state("door", "down", 30)  # the API answers; the camera is retried
    assert service.stop() == 0
    log = service.log.read_text()
    assert "Traceback" not in log and "serve_lock_pid_unwritten" in log, log[-3000:]


def test_camera_tables_give_ids_and_their_own_rules():
    zone = {"name": "door", "polygon": [[0, 0], [1, 0], [1, 1]]}
    config = build_config({"tracker": {}, "events": {"zones": [zone]}, "sources": [
        {"url": "rtsp://u:p@cam/1", "id": "gate", "lines": [{"name": "l", "points": [[0, 1], [1, 1]]}]},
        "rtsp://cam/2", {"url": "rtsp://cam/3", "zones": []}]})
    specs = camera_specs(config)
    assert [s.id for s in specs] == ["gate", None, None]
    assert config.sources == ("rtsp://u:p@cam/1", "rtsp://cam/2", "rtsp://cam/3")
    gate, plain, bare = (config_for_camera(config, s).events for s in specs)
    assert [z.name for z in gate.zones] == ["door"] and [x.name for x in gate.lines] == ["l"]
    assert plain is config.events and bare.zones == ()
    assert "p@" not in repr(specs[0])  # a spec's repr never shows the URL (credentials)
    for bad, expected in [({"sources": [{"url": "rtsp://x/1", "id": "a"}, {"url": "rtsp://x/2", "id": "a"}]},
                           "id 'a' is given to two cameras"),
                          ({"sources": [{"id": "a"}]}, "needs a url"),
                          ({"sources": [{"url": "rtsp://x/1", "zone": []}]}, "unknown key 'sources.zone'"),
                          ({"cameras": []}, "unknown key 'cameras'"),
                          ({"serve": {"live_fps": 0}}, "serve.live_fps")]:
        with pytest.raises(ConfigError, match=re.escape(expected)):
            build_config(bad)


def test_run_names_file_outputs_by_table_id_with_their_own_zones(tmp_path):
    """[[sources]] tables work for `streamseg run` on files too: the id names the outputs, the zones are the
    source's own (the zone-count CSV's columns say which rules ran)."""
    clip = make_clip(tmp_path / "clip.mp4", 1)
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(f'output_dir = "out"\nbackend = "none"\n[sinks]\nvideo = false\n[tracker]\n'
                        f'[events]\nunits = "relative"\n[[events.zones]]\nname = "shared"\n'
                        f'polygon = [[0, 0], [1, 0], [1, 1]]\n'
                        f'[[sources]]\nurl = "{clip}"\nid = "gate"\n'
                        f'[[sources.zones]]\nname = "own"\npolygon = [[0, 0], [0.5, 0], [0.5, 1]]\n'
                        f'[[sources]]\nurl = "{clip}"\nid = "yard"\n')
    done = subprocess.run([sys.executable, "-m", "streamseg", "run", "--pipeline", str(pipeline), "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "out"
    assert (out / "gate.zone_counts.csv").read_text().splitlines()[0].count("own") >= 1
    assert "shared" not in (out / "gate.zone_counts.csv").read_text().splitlines()[0]
    assert "shared" in (out / "yard.zone_counts.csv").read_text().splitlines()[0]
    assert len(frames_of(out / "gate.detections.jsonl")) == len(frames_of(out / "yard.detections.jsonl")) == 25
