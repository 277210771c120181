"""``streamseg run --cluster``: files and image folders on a real Ray cluster give a local run's outputs, also when
a worker dies mid-chunk, when results travel through the object store, and when a killed driver is re-run."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from streamseg.cluster.results import pack, unpack
from streamseg.scenes import SceneConfig, write_scene

pytest.importorskip("ray", reason="the cluster extra is not installed: pip install '.[cluster]'")

REPO = Path(__file__).resolve().parents[1]
STREAMSEG = [sys.executable, "-m", "streamseg"]
SCENE = SceneConfig(seed=3, frames=72)
OUTPUTS = ("mp4", "detections.jsonl", "tracks.txt", "events.jsonl", "zone_counts.csv")


def reencode(source: Path, target: Path, gop: int) -> None:
    """``source`` again with a keyframe every ``gop`` frames, open GOPs and B-frames: chunks start at non-IDR
    keyframes whose leading B-frames need the previous chunk's pictures."""
    with av.open(str(source)) as inp, av.open(str(target), "w") as out:
        stream = out.add_stream("libx264", rate=inp.streams.video[0].average_rate)
        stream.width, stream.height = inp.streams.video[0].width, inp.streams.video[0].height
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:"
                          "open-gop=1:bframes=2"}
        for frame in inp.decode(video=0):
            frame.pict_type = av.video.frame.PictureType.NONE
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


@pytest.fixture(scope="module")
def scene_clip(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cluster-scene")
    paths = write_scene(SCENE, folder, preset="ultrafast")
    clip = folder / "street.mp4"
    reencode(paths["video"], clip, gop=12)
    return clip


def pipeline(folder: Path, **cluster) -> Path:
    """Tracker and event rules (so ids and events must continue across chunks), the demo model."""
    cfg = SCENE
    text = [
        "[tracker]", "enabled = true", "max_distance = 0.9",
        "[sinks]", 'preset = "ultrafast"',
        "[[events.zones]]", 'name = "zone"', f"polygon = {json.dumps([list(p) for p in cfg.zone])}",
        "dwell_seconds = 1.0",
        "[[events.lines]]", 'name = "line"', f"points = {json.dumps([list(p) for p in cfg.line])}",
        "[cluster]", "chunk_seconds = 0.4", *(f"{k} = {json.dumps(v)}" for k, v in cluster.items()),
    ]
    path = folder / "pipeline.toml"
    path.write_text("\n".join(text) + "\n")
    return path


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*STREAMSEG, "run", "--no-progress", *args], capture_output=True, text=True,
                          timeout=240, cwd=REPO, **kwargs)


@pytest.fixture(scope="module")
def local_run(scene_clip, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local")
    done = run([str(scene_clip), "--pipeline", str(pipeline(out)), "-o", str(out / "out")])
    assert done.returncode == 0, done.stderr
    return out / "out"


def kill_session(session: int) -> None:
    """SIGKILL every process of a session and wait until none is left: Ray puts each worker in a process group of
    its own, so killing the driver's group would leave workers that still commit results."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session and fields[0] != "Z":
                left += 1
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if not left:
            return
        time.sleep(0.05)
    raise AssertionError(f"processes of session {session} outlived SIGKILL")


def loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def video_times(path: Path) -> list[tuple[int, float]]:
    with av.open(str(path)) as container:
        return [(frame.pts, float(frame.time)) for frame in container.decode(video=0)]


def assert_same_outputs(local: Path, cluster: Path, source_id: str = "street") -> None:
    for suffix in OUTPUTS:
        mine, theirs = cluster / f"{source_id}.{suffix}", local / f"{source_id}.{suffix}"
        assert mine.exists(), f"{mine.name} missing: {sorted(p.name for p in cluster.iterdir())}"
        if suffix == "mp4":
            assert video_times(mine) == video_times(theirs)
        elif suffix == "events.jsonl":  # wall_time is when a frame was decoded: it differs between any two runs
            strip = [{k: v for k, v in json.loads(line).items() if k != "wall_time"}
                     for path in (mine, theirs) for line in path.read_text().splitlines()]
            assert strip[: len(strip) // 2] == strip[len(strip) // 2:]
        else:
            assert mine.read_bytes() == theirs.read_bytes(), suffix
    assert not (cluster / ".streamseg-cluster").exists()


def test_chunk_results_round_trip_exactly(scene_clip):
    """What workers send the driver: boxes and scores keep their float32 bits, masks every pixel."""
    from streamseg.config import build_config
    from streamseg.models import build_backend
    from streamseg.sources import open_source

    config = build_config({})
    backend = build_backend(config.model, "torch")
    with open_source(str(scene_clip), max_frames=6) as source:
        frames = list(source)
    from streamseg.types import FrameResult

    results = [FrameResult(f, d) for f, d in zip(frames, backend.predict(frames))]
    assert sum(len(r.detections) for r in results) > 0
    back = unpack(pack(results), "street")
    for a, b in zip(results, back):
        assert (a.frame.index, a.frame.time, a.frame.pts, a.frame.time_base) == \
            (b.frame.index, b.frame.time, b.frame.pts, b.frame.time_base)
        assert b.frame.image.shape == a.frame.image.shape
        for name in ("boxes", "scores", "labels"):
            assert np.array_equal(getattr(a.detections, name), getattr(b.detections, name))
        assert b.detections.class_names == a.detections.class_names
        assert all(np.array_equal(x, y) for x, y in zip(a.detections.masks, b.detections.masks))


def test_cluster_run_writes_what_a_local_run_writes(scene_clip, local_run, tmp_path):
    out = tmp_path / "out"
    done = run([str(scene_clip), "--cluster", "local:2", "--pipeline", str(pipeline(tmp_path)), "-o", str(out)])
    assert done.returncode == 0, done.stderr
    assert re.search(r"2 model actors ready", done.stderr)
    assert re.search(r"wall time .* on 2 actors, 6 work items, 0 reused", done.stderr), done.stderr
    assert_same_outputs(local_run, out)


def test_worker_killed_mid_chunk_results_through_the_object_store(scene_clip, local_run, tmp_path):
    """A model actor's process is killed while it works: Ray restarts it, the item runs again, the outputs are
    still a local run's. Results come back through the object store (no shared folder assumed)."""
    out = tmp_path / "out"
    proc = subprocess.Popen([*STREAMSEG, "run", "--no-progress", str(scene_clip), "--cluster", "local:2",
                             "--pipeline", str(pipeline(tmp_path, shared_output="no")), "-o", str(out)],
                            stderr=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True)
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if match := re.search(r"model actors? ready: .*? pid (\d+)", line):
                time.sleep(1.0)  # into its first item
                os.kill(int(match.group(1)), signal.SIGKILL)
                break
        stderr = "".join(lines) + proc.stderr.read()
        assert proc.wait(timeout=240) == 0, stderr
    finally:
        if proc.poll() is None:
            kill_session(proc.pid)
    assert match, stderr
    assert_same_outputs(local_run, out)


def test_killed_driver_resumes_and_redoes_only_unfinished_items(scene_clip, local_run, tmp_path):
    out = tmp_path / "out"
    args = [*STREAMSEG, "run", "--no-progress", str(scene_clip), "--cluster", "local:1",
            "--pipeline", str(pipeline(tmp_path)), "-o", str(out)]
    proc = subprocess.Popen(args, stderr=subprocess.DEVNULL, cwd=REPO, start_new_session=True)
    work = out / ".streamseg-cluster" / "street"
    try:
        deadline = time.monotonic() + 180
        while len(list(work.glob("detect-*.npz"))) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
    finally:
        kill_session(proc.pid)  # the driver and every Ray process it started
        proc.wait()
    kept = {p.name: p.stat().st_mtime_ns for p in work.glob("detect-*.npz")}
    assert 2 <= len(kept) < 6, kept
    assert not (out / "street.mp4").exists()
    done = run(args[4:])
    assert done.returncode == 0, done.stderr
    assert ", resumed" in done.stderr
    assert f"{len(kept)} reused" in done.stderr, done.stderr
    assert_same_outputs(local_run, out)


def test_image_folder_on_the_cluster(evalkit, tmp_path):
    images = evalkit / "coco" / "val2017"
    local, cluster = tmp_path / "local", tmp_path / "cluster"
    common = [str(images), "--backend", "none", "--preset", "ultrafast", "--coco-annotations",
              str(evalkit / "coco" / "annotations" / "instances_val2017_subset.json")]
    assert run([*common, "-o", str(local)]).returncode == 0
    (tmp_path / "p.toml").write_text("[cluster]\nchunk_images = 15\n")
    done = run([*common, "-o", str(cluster), "--cluster", "local:2", "--pipeline", str(tmp_path / "p.toml")])
    assert done.returncode == 0, done.stderr
    assert "3 work items" in done.stderr
    for name in ("val2017.detections.jsonl", "val2017.coco.json"):
        assert (cluster / name).read_bytes() == (local / name).read_bytes()
    assert video_times(cluster / "val2017.mp4") == video_times(local / "val2017.mp4")


def test_without_ray_the_cluster_flag_says_how_to_install_it(tmp_path, scene_clip):
    shim = tmp_path / "shim" / "ray"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    env = dict(os.environ, PYTHONPATH=f"{shim.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    done = run([str(scene_clip), "--cluster", "local:1", "--backend", "none", "-o", str(tmp_path / "o")], env=env)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == \
        "streamseg: error: --cluster: Ray is not installed: pip install 'streamseg[cluster]' (or: pip install ray)"


def test_node_lost_mid_run_its_items_run_elsewhere(scene_clip, local_run, tmp_path_factory):
    """A real two-node cluster (loopback only, token auth): the worker node is killed while its actor works; the
    items it held run on the head's actor and the outputs are still a local run's."""
    from ray_cluster import RayTestCluster, unavailable

    if reason := unavailable():
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("node-lost")
    out = folder / "out"
    with RayTestCluster(folder, worker_nodes=1, head_cpus=1, worker_cpus=1) as cluster:
        proc = cluster.popen([*STREAMSEG, "run", "--no-progress", str(scene_clip), "--cluster", cluster.address,
                              "--pipeline", str(pipeline(folder, actors=2)), "-o", str(out)],
                             stderr=subprocess.PIPE, text=True, cwd=REPO)
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "model actors ready" in line:
                time.sleep(1.0)
                cluster.kill_node(1)
                break
        stderr = "".join(lines) + proc.stderr.read()
        assert proc.wait(timeout=240) == 0, stderr
        sockets = cluster.listening_sockets()
        assert sockets and all(loopback(address) for _, address, _, _ in sockets), sockets
    assert "worker lost" in stderr, stderr
    assert_same_outputs(local_run, out)


@pytest.mark.parametrize("address, message", [
    ("127.0.0.1:1", "--cluster 127.0.0.1:1: cannot connect (Connection refused); is a Ray head node running there "
                    "(ray start --head)?"),
    ("cluster-one", "--cluster cluster-one: expected host:port, ray://host:port, auto or local[:N]"),
])
def test_unreachable_or_malformed_address_is_one_line_at_once(address, message, scene_clip, tmp_path):
    started = time.monotonic()
    done = run([str(scene_clip), "--cluster", address, "--backend", "none", "-o", str(tmp_path / "o")])
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"streamseg: error: {message}"]
    assert time.monotonic() - started < 30


def test_detect_interval_counts_from_the_source_start_across_chunks(scene_clip, tmp_path):
    """``model.detect_interval = 5`` with chunks of 12 frames: chunk k starts mid-cycle, and the frames that go to
    the model, the predicted ones and their tracks are a local run's."""
    local, cluster = tmp_path / "local", tmp_path / "cluster"
    common = [str(scene_clip), "--max-frames", "36", "--pipeline", str(pipeline(tmp_path))]
    (tmp_path / "interval.toml").write_text(pipeline(tmp_path).read_text().replace(
        "[sinks]", "[model]\ndetect_interval = 5\n[sinks]"))
    common[-1] = str(tmp_path / "interval.toml")
    assert run([*common, "-o", str(local)]).returncode == 0
    done = run([*common, "-o", str(cluster), "--cluster", "local:2"])
    assert done.returncode == 0, done.stderr
    assert "3 work items" in done.stderr
    records = [json.loads(line) for line in (local / "street.detections.jsonl").read_text().splitlines()]
    assert [r.get("predicted", False) for r in records] == [i % 5 != 0 for i in range(36)]
    assert_same_outputs(local, cluster)


def test_commit_moves_a_file_across_filesystems_and_a_failed_write_is_one_line(tmp_path):
    """A worker's part is made in its own temporary folder, often another filesystem than the shared output
    (a rename there fails with EXDEV); an output that cannot be written is an OutputError naming the file."""
    from streamseg.cluster.work import commit
    from streamseg.errors import OutputError

    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem (/dev/shm) to move across")
    part = shm / f"streamseg-test-{os.getpid()}.mp4"
    part.write_bytes(b"x" * 1000)
    final = tmp_path / "work" / "video-00000.mp4"
    commit(part, final)
    assert final.read_bytes() == b"x" * 1000 and not part.exists()
    assert [p.name for p in final.parent.iterdir()] == [final.name]
    (tmp_path / "blocked").write_text("a file where the folder should be")
    with pytest.raises(OutputError, match="cannot write .*blocked"):
        commit(b"y" * 10, tmp_path / "blocked" / "detect-00000.npz")
