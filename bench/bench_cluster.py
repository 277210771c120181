"""Cluster benchmark (``streamseg run --cluster``): three figures, each measured side by side in one run.

1. overhead: wall time of ``--cluster local:1`` / a local run of the same 2-minute clip       target <= 1.15
   with the no-detections model (the cluster's own costs: Ray start, a second decode for the annotated video,
   results through files) and with the demo Mask R-CNN (``--demo-frames`` of it); the cluster run's set-up (Ray
   start and model load) is printed beside it;
2. scaling: 1 actor / 2 actors on this 2-core machine, with a model that sleeps 40 ms a frame instead of computing
   (so cores are not the limit)                                                                   target >= 1.8
3. recovery: the same run with one worker process killed mid-run against none (2 actors, sleeping model): the
   seconds one kill costs (actor restart, its items re-run), and so the frames/s lost at one kill per minute.

Each pair is warmed up once, then alternated A, B, A, B (``--rounds``); ratios are of the medians.

    .venv/bin/python bench/bench_cluster.py [--seconds 120] [--rounds 2] [--demo-frames 300] [--skip-demo]
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import av

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO.parent / "shared" / "evalkit" / "videos" / "surveillance" / "vtest_pets09_480x360.mp4"
STREAMSEG = [sys.executable, "-m", "streamseg", "run", "--no-progress"]


class SleepingModel:
    """A model that takes ``seconds`` per frame and finds nothing: the cluster's scaling without the CPU limit."""

    name = origin = "sleeping"
    class_names = ("__background__", "thing")

    def __init__(self, seconds: float):
        self.seconds = seconds

    def predict(self, frames):
        from streamseg.types import Detections

        time.sleep(self.seconds * len(frames))
        return [Detections.empty(self.class_names, (f.height, f.width)) for f in frames]

    def close(self):
        pass


def make_clip(path: Path, seconds: float) -> Path:
    """The evalkit surveillance clip looped to ``seconds``, a keyframe every 2 s (chunks of 10 s possible)."""
    with av.open(str(CLIP)) as inp:
        frames = [f.to_ndarray(format="rgb24") for f in inp.decode(video=0)]
        rate = inp.streams.video[0].average_rate
    count = int(seconds * rate)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "veryfast", "x264-params": f"keyint={2 * rate}:min-keyint={2 * rate}:scenecut=0"}
        for i in range(count):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frames[i % len(frames)], format="rgb24")))
        out.mux(stream.encode(None))
    return path


def command_seconds(args: list[str]) -> tuple[float, float | None]:
    """Wall time of one ``streamseg run`` and, for cluster runs, its set-up time (from the report)."""
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(args)}\n{done.stderr[-2000:]}")
    setup = re.search(r"set-up ([\d.]+) s", done.stderr)
    return wall, float(setup.group(1)) if setup else None


def alternate(first, second, rounds: int) -> tuple[list, list]:
    first(), second()  # warm-up: page cache, ONNX export, Python bytecode
    a, b = [], []
    for _ in range(rounds):
        a.append(first())
        b.append(second())
    return a, b


def overhead(clip: Path, out: Path, rounds: int, extra: list[str], label: str) -> dict:
    common = [str(clip), *extra, "--preset", "veryfast"]
    local = lambda: command_seconds([*STREAMSEG, *common, "-o", str(out / "local")])  # noqa: E731
    cluster = lambda: command_seconds([*STREAMSEG, *common, "-o", str(out / "cluster"), "--cluster", "local:1"])  # noqa: E731
    a, b = alternate(local, cluster, rounds)
    local_s = statistics.median(w for w, _ in a)
    cluster_s = statistics.median(w for w, _ in b)
    setup_s = statistics.median(s or 0 for _, s in b)
    row = {"label": label, "local s": local_s, "cluster s": cluster_s, "ratio": cluster_s / local_s,
           "cluster set-up s": setup_s}
    # (no ratio "without set-up": the set-up includes loading the model, which the local side pays in its time)
    print(f"  {label}: local {local_s:.1f} s, --cluster local:1 {cluster_s:.1f} s: ratio {row['ratio']:.3f}  "
          f"(target <= 1.15; {setup_s:.1f} s of the cluster run is Ray's start and the actor's model load)")
    return row


def cluster_run(clip: Path, out: Path, actors: int, model_seconds: float, kill_after: float | None = None):
    """One in-process cluster run with the sleeping model; returns (wall s, set-up s, frames, kills). With
    ``kill_after``, one model actor's process is killed that many seconds after the actors are up."""
    from streamseg.cluster.files import ClusterRunner
    from streamseg.config import build_config

    config = build_config({"output_dir": str(out), "sinks": {"preset": "veryfast"},
                           "cluster": {"address": f"local:{actors}", "chunk_seconds": 10}})
    stop, kills = threading.Event(), []

    def killer():
        while not stop.wait(0.05) and len(chunk_worker_pids()) < actors:
            pass
        if not stop.wait(kill_after) and (workers := chunk_worker_pids()):
            os.kill(workers[0], signal.SIGKILL)
            kills.append(workers[0])

    if kill_after:
        threading.Thread(target=killer, daemon=True).start()
    try:
        run = ClusterRunner(config, actors=actors, backend_factory=lambda: SleepingModel(model_seconds)).run([str(clip)])
    finally:
        stop.set()
    frames = sum(s.frames_written for s in run.sources)
    return run.wall_time, run.setup_time, frames, len(kills)


def chunk_worker_pids() -> list[int]:
    """Model actor processes of this process's own local cluster (its descendants named ``ray::ChunkWorker``)."""
    parents, names = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                names[int(entry.name)] = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue
    mine = []
    for pid, name in names.items():
        ancestor = parents.get(pid)
        while ancestor and ancestor != os.getpid():
            ancestor = parents.get(ancestor)
        if ancestor == os.getpid() and name.startswith("ray::ChunkWorker"):
            mine.append(pid)
    return sorted(mine)


def scaling(clip: Path, out: Path, rounds: int, model_seconds: float) -> dict:
    a, b = alternate(lambda: cluster_run(clip, out / "one", 1, model_seconds),
                     lambda: cluster_run(clip, out / "two", 2, model_seconds), rounds)
    one, two = statistics.median(r[0] for r in a), statistics.median(r[0] for r in b)
    one_work = statistics.median(r[0] - r[1] for r in a)
    two_work = statistics.median(r[0] - r[1] for r in b)
    row = {"1 actor s": one, "2 actors s": two, "speed-up": one / two, "speed-up without set-up": one_work / two_work}
    print(f"  sleeping model {1000 * model_seconds:.0f} ms/frame: 1 actor {one:.1f} s, 2 actors {two:.1f} s: speed-up "
          f"{row['speed-up']:.2f}x, without set-up {row['speed-up without set-up']:.2f}x  (target >= 1.8)")
    return row


def recovery(clip: Path, out: Path, rounds: int, model_seconds: float, kill_after: float) -> dict:
    a, b = alternate(lambda: cluster_run(clip, out / "calm", 2, model_seconds),
                     lambda: cluster_run(clip, out / "kill", 2, model_seconds, kill_after), rounds)
    work = lambda runs: statistics.median(r[0] - r[1] for r in runs)  # noqa: E731
    calm, killed = work(a), work(b)
    kills = min(r[3] for r in b)
    frames = a[0][2]
    cost = (killed - calm) / max(kills, 1)
    row = {"frames/s": frames / calm, "seconds per kill": cost, "lost frames/s at 1 kill/min": frames / calm * cost / 60}
    print(f"  2 actors: {frames / calm:.1f} frames/s undisturbed; a worker killed {kill_after:.0f} s in "
          f"({kills} kill{'s' * (kills != 1)} a run) cost {cost:.1f} s: at one kill per minute "
          f"{row['lost frames/s at 1 kill/min']:.1f} frames/s lost ({100 * cost / 60:.1f} %)")
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0, help="clip length (default 120)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--demo-frames", type=int, default=300, help="frames of the clip through the demo model")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--model-ms", type=float, default=40.0, help="sleeping model's time per frame")
    parser.add_argument("--kill-after", type=float, default=5.0, help="recovery: seconds into the work to kill")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as temp:
        out = Path(temp)
        clip = make_clip(out / "clip.mp4", args.seconds)
        print(f"clip: {CLIP.name} looped to {args.seconds:.0f} s, {os.cpu_count()} CPUs")
        print("1. overhead (--cluster local:1 / local run, whole command)")
        overhead(clip, out / "none", args.rounds, ["--backend", "none"], "no-detections model")
        if not args.skip_demo:
            overhead(clip, out / "demo", args.rounds, ["--max-frames", str(args.demo_frames)],
                     f"demo model, {args.demo_frames} frames")
        print("2. scaling (1 actor / 2 actors)")
        scaling(clip, out / "scaling", args.rounds, args.model_ms / 1000)
        print("3. recovery")
        recovery(clip, out / "recovery", args.rounds, args.model_ms / 1000, args.kill_after)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
