"""Live cameras on a real Ray cluster (``streamseg run --cluster ADDRESS rtsp://...``, streamseg.cluster.cameras)
against real RTSP servers (tests/rtsp_server.py): a camera actor's process killed and a worker node removed while
two cameras stream, each camera back within 10 s and its JSONL continuing without a repeated frame index; Ctrl-C
finalizing the outputs; credentials in camera URLs never in the driver's output, the output files, Ray's job and
actor tables or Ray's logs; every camera unreachable at start is the local run's one-line error. The cluster is
tests/ray_cluster.py's (loopback-only network namespace, token auth); the RTSP server runs in its namespace too.
Plus the continuation rules themselves (append, torn last line, where a restarted camera resumes), without Ray."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

import ray_cluster
from live_server import RtspServer, gstreamer_missing, make_clip
from streamseg.live import resume_point
from streamseg.sinks import DetectionsJsonlSink, ZoneCountsCsvSink
from streamseg.sinks.base import LineFile, appending
from streamseg.types import Detections, Frame, FrameResult, SourceInfo

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "Cl5ter-Pa55!q"
USER = "operator7"


_no_ray = None if importlib.util.find_spec("ray") else "the cluster extra is not installed: pip install '.[cluster]'"
needs_ray = pytest.mark.skipif(_no_ray is not None, reason=_no_ray or "")
_no_cluster = _no_ray or gstreamer_missing() or ray_cluster.unavailable()
needs_cluster = pytest.mark.skipif(_no_cluster is not None, reason=_no_cluster or "")


def wait_for(predicate, timeout: float, what: str) -> float:
    """Seconds it took until ``predicate()``; AssertionError after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - start


def frames_of(path: Path) -> list[int]:
    """The frame indices of a detections file's complete lines."""
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line)["frame"] for line in text[: text.rfind("\n") + 1].splitlines()]


def assert_increasing(frames: list[int], name: str) -> None:
    repeated = [(a, b) for a, b in zip(frames, frames[1:]) if b <= a]
    assert not repeated, f"{name}: frame indices repeat or go back: {repeated[:5]}"


# -- continuation, without Ray ---------------------------------------------------------------------------------------

def result(index: int, t: float) -> FrameResult:
    frame = Frame(np.zeros((8, 8, 3), np.uint8), "cam", index, t, None, None, time.time())
    return FrameResult(frame, Detections.empty(("__background__", "person"), (8, 8)))


def test_outputs_continue_after_a_restart_without_repeating_a_frame(tmp_path):
    info = SourceInfo("cam", "rtsp://cam", 8, 8, is_live=True)
    path = tmp_path / "cam.detections.jsonl"
    with DetectionsJsonlSink(path, info) as sink:
        for i in range(5):
            sink.write(result(i, i * 0.04))
    with open(path, "ab") as torn:  # the writer was killed in the middle of a line
        torn.write(b'{"schema":"streamseg.detections/1","fra')
    assert resume_point(tmp_path, "cam", now=path.stat().st_mtime + 2.0) == (5, pytest.approx(0.16 + 2.0))
    # the events file may be ahead (written after the detections of the same frame) or behind; the later wins
    (tmp_path / "cam.events.jsonl").write_text(json.dumps({"frame": 7, "time": 0.28}) + "\n")
    os.utime(tmp_path / "cam.events.jsonl", (path.stat().st_mtime, path.stat().st_mtime))
    assert resume_point(tmp_path, "cam", now=path.stat().st_mtime + 1.0)[0] == 8
    assert resume_point(tmp_path, "other") == (0, 0.0)

    (tmp_path / "x").write_text("old\n")
    with appending():  # what StreamProcessor opens inside this block (this thread) continues the files
        sink = DetectionsJsonlSink(path, info)
        thread = threading.Thread(target=lambda: LineFile(tmp_path / "x").close())  # not in another thread
        thread.start()
        thread.join()
    assert (tmp_path / "x").read_text() == ""
    sink.write(result(8, 0.5))
    sink.close()
    assert frames_of(path) == [0, 1, 2, 3, 4, 8]  # the torn line was cut off, nothing else lost
    assert path.read_text().endswith("}\n")
    explicit = DetectionsJsonlSink(path, info)  # outside the block: replaced, as ever
    explicit.close()
    assert path.read_text() == ""

    csv_path = tmp_path / "cam.zone_counts.csv"
    for k in range(2):
        with ZoneCountsCsvSink(csv_path, info, {"door": ["person"]}, append=True) as sink:
            sink.write(result(k, k * 0.04))
    lines = csv_path.read_text().splitlines()
    assert lines == ["frame,time,door:person,door:total", "0,0.000000,0,0", "1,0.040000,0,0"]
    (tmp_path / "cam.events.jsonl").unlink()
    assert resume_point(tmp_path, "cam")[0] == 2  # from the CSV (the detections file is empty now)


# -- on a Ray cluster ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("cams") / "clip.mp4", 30)


def pipeline_file(folder: Path, metrics_port: int, **cluster) -> Path:
    text = ["[live]", "read_timeout = 2.0", "connect_timeout = 2.0", "reconnect_initial = 0.2",
            "reconnect_max = 1.0", f"metrics_port = {metrics_port}",
            "[cluster]", *(f"{key} = {json.dumps(value)}" for key, value in cluster.items())]
    path = folder / "cameras.toml"
    path.write_text("\n".join(text) + "\n")
    return path


class NamespaceRtspServer(RtspServer):
    """tests/rtsp_server.py inside the cluster's network namespace (its loopback is the only one the Ray workers
    reach), on a port that is free there."""

    def __init__(self, cluster, mounts: dict[str, Path], **kwargs):
        super().__init__(mounts, **kwargs)
        self.cluster = cluster

    def start(self, timeout: float = 20.0) -> "NamespaceRtspServer":
        from live_server import SERVER_SCRIPT, SYSTEM_PYTHON

        command = [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--port", str(self.port), "--parent-pipe"]
        for mount, path in self.mounts.items():
            command += ["--mount", mount, "--file", str(path)]
        if self.user:
            command += ["--user", self.user, "--password", self.password]
        self.process = subprocess.Popen(self.cluster.ns(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"RTSP server did not start: {line} {self.process.stderr.read()}")
        return self


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head node without CPUs for cameras and one worker node, in a private loopback-only namespace."""
    with ray_cluster.RayTestCluster(tmp_path_factory.mktemp("rc"), worker_nodes=1, head_cpus=0,
                                    worker_cpus=2) as cluster:
        yield cluster


class Driver:
    """``streamseg run --cluster`` inside the namespace; its output in a file."""

    def __init__(self, cluster, args: list, log: Path):
        self.cluster, self.log = cluster, log
        with open(log, "w") as file:
            self.process = cluster.popen([sys.executable, "-m", "streamseg.cli", "run", "--cluster",
                                          cluster.address, "--backend", "none", *map(str, args)], cwd=REPO,
                                         stdout=file, stderr=subprocess.STDOUT)

    def get(self, url: str) -> str:
        done = self.cluster.run([sys.executable, "-c", "import sys, urllib.request, urllib.error\n"
                                 "try: print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())\n"
                                 "except urllib.error.HTTPError as e: print(e.read().decode())", url], timeout=30)
        return done.stdout

    def health(self, port: int) -> dict:
        return json.loads(self.get(f"http://127.0.0.1:{port}/healthz"))["streams"]

    def interrupt(self, timeout: float = 90) -> tuple[int, str]:
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout)
        return code, self.log.read_text()

    def output(self) -> str:
        return self.log.read_text()


@needs_ray
@pytest.mark.timeout(90)
def test_every_camera_unreachable_at_start_is_the_local_runs_one_line_error(tmp_path):
    # on a private local cluster (local:1, loopback, token auth), which the driver starts itself
    url = f"rtsp://{USER}:{PASSWORD}@127.0.0.1:9/cam"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    done = subprocess.run([sys.executable, "-m", "streamseg.cli", "run", "--cluster", "local:1", url, "-o",
                           tmp_path, "--backend", "none"], capture_output=True, text=True, timeout=80, cwd=REPO,
                          env=env)
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("streamseg: error:")]
    assert errors == ["streamseg: error: rtsp://***@127.0.0.1:9/cam: cannot connect after 3 attempts "
                      "(Connection refused)"], done.stderr
    assert PASSWORD not in done.stdout + done.stderr and USER not in done.stdout + done.stderr


def last_frame(path: Path) -> int:
    frames = frames_of(path)
    return frames[-1] if frames else -1


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def node_index(cluster, node_id: str) -> int:
    return cluster.node_ids().index(node_id)


GCS_TABLES = """
import asyncio, sys
from ray._raylet import GcsClient
client = GcsClient(address=sys.argv[1])
print(repr(client.get_all_job_info(timeout=10)))


async def actors():
    return await client.async_get_all_actor_info(timeout=10)
print(repr(asyncio.run(actors())))
"""


@needs_cluster
@pytest.mark.timeout(120)
def test_credentials_never_in_driver_output_files_or_ray_logs_and_ctrl_c_finalizes(cluster, clip, tmp_path):
    out, port = tmp_path / "out", 9463
    toml = pipeline_file(tmp_path, port)
    with NamespaceRtspServer(cluster, {"/cam": clip}, user=USER, password=PASSWORD) as server:
        gone = f"rtsp://{USER}:{PASSWORD}@127.0.0.1:9/gone"  # nothing listens there: unreachable at start
        driver = Driver(cluster, ["--pipeline", toml, "-o", out, server.url("/cam"), gone], tmp_path / "driver.log")
        wait_for(lambda: len(frames_of(out / "cam.detections.jsonl")) >= 30, 60, f"results\n{driver.output()}")
        wait_for(lambda: "stream_connect_failed source=gone" in driver.output(), 30, "the unreachable camera")
        health = driver.health(port)
        metrics = driver.get(f"http://127.0.0.1:{port}/metrics")
        code, log = driver.interrupt()
    assert code == 130, log
    # the reachable camera ran, the unreachable one is retried in the background, as in a local run
    assert health["cam"]["state"] == "running" and health["gone"]["state"] == "retrying", health
    assert 'streamseg_stream_up{stream="cam"} 1.0' in metrics and 'streamseg_stream_up{stream="gone"} 0.0' in metrics
    assert "rtsp://***@127.0.0.1:9/gone: cannot connect after 3 attempts" in log, log
    down = [json.loads(line) for line in (out / "gone.streams.jsonl").read_text().splitlines()]
    assert down[0]["kind"] == "stream_down" and "cannot connect" in down[0]["reason"]
    # Ctrl-C: the annotated video was finalized, with every frame of the JSONL
    videos = sorted((out / "cam" / "annotated").glob("cam-*.mp4"))
    assert len(videos) == 1, videos
    with av.open(str(videos[0])) as container:
        written = sum(1 for _ in container.decode(video=0))
    assert written == len(frames_of(out / "cam.detections.jsonl")) >= 30
    # credentials: nowhere in the driver's output, the outputs, Ray's job and actor tables (what the dashboard
    # and `ray list jobs/actors` show: entrypoint, actor names and classes), or any file of Ray's session
    tables = cluster.run([sys.executable, "-c", GCS_TABLES, cluster.address], timeout=60)
    assert "streamseg.cli run" in tables.stdout and "CameraActor" in tables.stdout, tables.stderr
    ray_files = [p for p in cluster.dir.rglob("*") if p.is_file() and not p.is_symlink()]  # every node's
    assert any("worker-" in p.name for p in ray_files) and "CameraActor(cam)" in log  # the logs were there
    texts = {"driver": log.encode(), "health": json.dumps(health).encode(), "metrics": metrics.encode(),
             "GCS tables": tables.stdout.encode()}
    texts.update({str(p): p.read_bytes() for p in out.rglob("*") if p.is_file()})
    texts.update({str(p): p.read_bytes() for p in ray_files})
    for secret in (PASSWORD, USER):
        leaks = [name for name, data in texts.items() if secret.encode() in data]
        assert not leaks, f"{secret!r} in {leaks}"
    assert {h["actor"].split(":")[1] for h in health.values()} == {"cam", "gone"}


@needs_cluster
@pytest.mark.timeout(180)
def test_camera_actor_killed_and_node_removed_each_camera_back_within_10s(cluster, clip, tmp_path):
    out, port = tmp_path / "out", 9464
    toml = pipeline_file(tmp_path, port, num_cpus=1, max_cameras_per_node=1)
    cam = {name: out / f"{name}.detections.jsonl" for name in ("cam_a", "cam_b")}
    timings = {}
    with NamespaceRtspServer(cluster, {"/cam_a": clip, "/cam_b": clip}) as server:
        driver = Driver(cluster, ["--pipeline", toml, "--no-video", "-o", out, server.url("/cam_a"),
                                  server.url("/cam_b")], tmp_path / "driver.log")
        # one worker node with room for one camera (the head has no CPUs): cam_b waits, a node that joins takes it
        wait_for(lambda: len(frames_of(cam["cam_a"])) + len(frames_of(cam["cam_b"])) >= 10, 60,
                 f"the first camera's results\n{driver.output()}")
        health = driver.health(port)
        waiting = [sid for sid, s in health.items() if s["state"] == "waiting"]
        assert len(waiting) == 1 and "camera_waiting" in driver.output(), health
        cluster.add_node(num_cpus=1)
        timings["joined node"] = wait_for(lambda: len(frames_of(cam[waiting[0]])) >= 10, 30,
                                          f"{waiting[0]} on the joined node\n{driver.output()}")
        health = driver.health(port)
        assert health["cam_a"]["node"] != health["cam_b"]["node"]  # spread: one per node (the cap)

        # (a) the camera actor's worker process is killed: Ray restarts it on its node, the camera resumes
        a = health["cam_a"]
        assert a["pid"] in cluster.node_processes(node_index(cluster, a["node"]))  # a pid of that node
        os.kill(a["pid"], signal.SIGKILL)
        wait_for(lambda: gone(a["pid"]), 5, "the process to die")
        kept = {"cam_a": frames_of(cam["cam_a"])}
        before = last_frame(cam["cam_a"])
        timings["actor killed"] = wait_for(lambda: last_frame(cam["cam_a"]) > before, 10,
                                           f"cam_a back after its process was killed\n{driver.output()}")

        # (b) the worker node of cam_b is removed: cam_b is placed again on a node with room (a spare joins first)
        cluster.add_node(num_cpus=1)
        node_b = driver.health(port)["cam_b"]["node"]
        cluster.kill_node(node_index(cluster, node_b))
        kept["cam_b"] = frames_of(cam["cam_b"])
        before = last_frame(cam["cam_b"])
        timings["node removed"] = wait_for(lambda: last_frame(cam["cam_b"]) > before, 10,
                                           f"cam_b back after its node was removed\n{driver.output()}")
        # both go on: counted in written frames, as asserted below (a live camera drops frames under load, so its
        # frame numbers run ahead of its count); the restarted actors share two cores with a node that joined and
        # one that left: give them time
        for name in ("cam_b", "cam_a"):
            wait_for(lambda: len(frames_of(cam[name])) > len(kept[name]) + 3, 20, f"{name} going on")
        health = driver.health(port)
        code, log = driver.interrupt()
    print(timings)
    assert code == 130, log
    assert health["cam_a"]["restarts"] == 1 and health["cam_b"]["restarts"] == 1, health
    assert health["cam_b"]["node"] != node_b and health["cam_a"]["state"] == "running"
    assert "camera_restarted source=cam_a" in log and "camera_node_lost source=cam_b" in log, log
    for name, path in cam.items():
        frames = frames_of(path)
        assert frames[:len(kept[name])] == kept[name] and len(frames) > len(kept[name]) + 3  # appended to
        assert_increasing(frames, name)
        assert path.read_text().endswith("\n")
        ups = [json.loads(line)["kind"] for line in (out / f"{name}.streams.jsonl").read_text().splitlines()]
        assert ups.count("stream_up") == 2, (name, ups)  # one per session, appended
