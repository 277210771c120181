"""Live-camera benchmark against a real RTSP server on 127.0.0.1 (tests/rtsp_server.py, Debian's GStreamer),
three parts measured in one run and printed side by side:

1. Latency: a model slower than the camera (``--model-ms``, default 150 ms per forward, 25 fps camera) for
   ``--minutes`` (default 5): p99 capture-to-result latency vs the bound 1.5 x median model time + 200 ms, and the
   trend: median latency of the last window / the first (window = 1 minute, or a third of a shorter run;
   target within 10 %).
2. Reconnect: ``--cycles`` (default 20) kill/restart cycles of the server: down/up pairs seen, pipeline alive, RSS
   growth from after the first cycle to after the last (target < 5 %).
3. Streams: throughput of N = 1, 2, 4 cameras with cross-stream batching on and off, with the shipped demo Mask
   R-CNN on CPU (a real forward; ``--stream-seconds`` per run, ``--repeats`` runs alternating on/off, median),
   as frames/s and ratios.

    .venv/bin/python bench/bench_live.py                 # the full run (about 10 minutes)
    .venv/bin/python bench/bench_live.py --minutes 1     # the quick form
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from live_server import RtspServer, gstreamer_missing, make_clip  # noqa: E402

from streamseg.config import build_config  # noqa: E402
from streamseg.live import LiveRunner  # noqa: E402
from streamseg.models import ModelOptions, NoDetections, build_backend  # noqa: E402


class SlowModel(NoDetections):
    """The no-detections model plus a fixed cost per forward (a stand-in for a model slower than the camera);
    records each forward's duration."""

    def __init__(self, seconds: float):
        super().__init__(ModelOptions())
        self.seconds = seconds
        self.times: list[float] = []

    def predict(self, frames):
        start = time.perf_counter()
        time.sleep(self.seconds)
        out = super().predict(frames)
        self.times.append(time.perf_counter() - start)
        return out


class Timed:
    """Wraps a real backend and counts frames and forwards."""

    def __init__(self, backend):
        self.backend = backend
        self.name, self.class_names = backend.name, backend.class_names
        self.frames = 0
        self.forwards = 0

    def predict(self, frames):
        out = self.backend.predict(frames)
        self.frames += len(frames)
        self.forwards += 1
        return out

    def close(self):
        pass


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_runner(runner: LiveRunner, urls: list[str]):
    box: dict = {}

    def target():
        try:
            box["run"] = runner.run(urls)
        except BaseException as err:  # noqa: BLE001 - reported by the caller
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    if not runner.ready.wait(60):
        raise RuntimeError(f"live run did not start: {box.get('error')}")
    return thread, box


def config(out: Path, **live) -> object:
    return build_config({"output_dir": str(out), "backend": "none", "sinks": {"video": False, "detections": False},
                         "live": {"read_timeout": 3.0, "reconnect_initial": 0.2, "reconnect_max": 1.0} | live})


def part_latency(clip: Path, minutes: float, model_s: float, out: Path) -> dict:
    model = SlowModel(model_s)
    samples: list[tuple[float, float]] = []  # (wall time of the result, capture-to-result latency)
    runner = LiveRunner(config(out / "latency"), model,
                        on_result=lambda result, latency: samples.append((time.time(), latency)))
    with RtspServer({"/cam": clip}) as server:
        thread, box = start_runner(runner, [server.url("/cam")])
        time.sleep(3.0)  # skip the connect burst (frames FFmpeg buffered while probing the stream)
        skip = len(samples)
        time.sleep(minutes * 60)
        runner.stop()
        thread.join(60)
    run = box["run"]
    data = samples[skip:]
    latencies = sorted(lat for _, lat in data)
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)]
    median_model = statistics.median(model.times)
    bound = 1.5 * median_model + 0.2
    t0, t1 = data[0][0], data[-1][0]
    window = min(60.0, (t1 - t0) / 3)
    first = statistics.median(lat for t, lat in data if t <= t0 + window)
    last = statistics.median(lat for t, lat in data if t >= t1 - window)
    stream = run.streams["cam"]
    return {"seconds": round(t1 - t0, 1), "results": len(data), "fps": round(len(data) / (t1 - t0), 2),
            "camera_frames": stream.source.received, "dropped": stream.source.dropped,
            "median_model_s": round(median_model, 4), "p50_latency_s": round(statistics.median(latencies), 4),
            "p99_latency_s": round(p99, 4), "max_latency_s": round(latencies[-1], 4), "bound_s": round(bound, 4),
            "p99_ok": p99 <= bound, "window_s": round(window, 1), "first_window_median_s": round(first, 4),
            "last_window_median_s": round(last, 4), "trend_ratio": round(last / first, 4),
            "trend_ok": abs(last / first - 1) <= 0.10}


def part_reconnect(clip: Path, cycles: int, out: Path) -> dict:
    runner = LiveRunner(config(out / "reconnect"), NoDetections(ModelOptions()))
    server = RtspServer({"/cam": clip}).start()
    rss = []
    try:
        thread, box = start_runner(runner, [server.url("/cam")])
        stream = runner.streams["cam"]

        def wait(predicate, timeout, what):
            deadline = time.monotonic() + timeout
            while not predicate():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"reconnect cycle: timed out waiting for {what}")
                time.sleep(0.02)

        started = time.monotonic()
        for cycle in range(cycles):
            before = stream.processed
            wait(lambda: stream.processed > before + 25, 30, "frames")
            server.kill()
            wait(lambda: not stream.source.up, 15, "stream_down")
            server.start()
            wait(lambda: stream.source.up and stream.source.reconnects == cycle + 1, 30, "stream_up")
            rss.append(rss_mib())
        wait(lambda: stream.processed > 25, 30, "frames after the last cycle")
        alive = thread.is_alive()
        elapsed = time.monotonic() - started
        runner.stop()
        thread.join(60)
    finally:
        server.kill()
    run = box["run"]
    kinds = [s.kind for s in run.streams["cam"].statuses]
    downs, ups = kinds.count("stream_down"), kinds.count("stream_up") - 1  # minus the first connection
    pairs = sum(1 for a, b in zip(kinds[1:], kinds[2:]) if (a, b) == ("stream_down", "stream_up"))
    growth = rss[-1] / rss[0] - 1
    return {"cycles": cycles, "seconds": round(elapsed, 1), "down_events": downs, "up_events": ups,
            "down_up_pairs": pairs, "alive_after": alive, "rss_first_mib": round(rss[0], 1),
            "rss_last_mib": round(rss[-1], 1), "rss_growth": round(growth, 4),
            "ok": pairs == cycles and alive and growth < 0.05}


def part_streams(clip: Path, seconds: float, repeats: int, out: Path) -> dict:
    """Each (N, batching) configuration runs ``repeats`` times, on and off alternating, so that the load other
    processes put on a shared machine falls on both alike; the median of the repeats is reported."""
    backend = build_backend(ModelOptions())  # the shipped demo Mask R-CNN: a real forward on CPU
    mounts = {f"/c{i}": clip for i in range(1, 5)}
    samples: dict = {}
    with RtspServer(mounts) as server:
        for n in (1, 2, 4):
            for repeat in range(repeats):
                for batching in ((True, False) if repeat % 2 == 0 else (False, True)):
                    timed = Timed(backend)
                    runner = LiveRunner(config(out / f"n{n}-{batching}-{repeat}", cross_stream_batching=batching),
                                        timed)
                    thread, box = start_runner(runner, [server.url(f"/c{i}") for i in range(1, n + 1)])
                    time.sleep(3.0)  # warm-up and connect burst
                    f0, w0, t0 = timed.frames, timed.forwards, time.perf_counter()
                    time.sleep(seconds)
                    frames, forwards, elapsed = timed.frames - f0, timed.forwards - w0, time.perf_counter() - t0
                    runner.stop()
                    thread.join(60)
                    samples.setdefault((n, batching), []).append((frames / elapsed, frames / max(1, forwards)))
    backend.close()
    table = {key: {"fps": statistics.median(f for f, _ in runs), "frames_per_forward":
                   statistics.median(b for _, b in runs), "runs": [round(f, 2) for f, _ in runs]}
             for key, runs in samples.items()}
    rows = {}
    for n in (1, 2, 4):
        on, off = table[(n, True)], table[(n, False)]
        rows[f"N={n}"] = {"batching_on_fps": round(on["fps"], 2), "batching_off_fps": round(off["fps"], 2),
                          "on_over_off": round(on["fps"] / off["fps"], 3),
                          "on_vs_N1_on": round(on["fps"] / table[(1, True)]["fps"], 3),
                          "frames_per_forward_on": round(on["frames_per_forward"], 2),
                          "runs_on": on["runs"], "runs_off": off["runs"]}
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="latency part duration (default 5)")
    parser.add_argument("--model-ms", type=float, default=150.0, help="slow model's time per forward")
    parser.add_argument("--cycles", type=int, default=20, help="kill/restart cycles (default 20)")
    parser.add_argument("--stream-seconds", type=float, default=None,
                        help="measured seconds per N-streams configuration (default: 30, 10 when --minutes < 5)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="runs per N-streams configuration, on/off alternating (default: 3, 2 when --minutes < 5)")
    parser.add_argument("--skip", action="append", default=[], choices=("latency", "reconnect", "streams"))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    missing = gstreamer_missing()
    if missing:
        print(f"bench_live: {missing}", file=sys.stderr)
        return 1
    stream_seconds = args.stream_seconds or (30.0 if args.minutes >= 5 else 10.0)
    repeats = args.repeats or (3 if args.minutes >= 5 else 2)
    logging.basicConfig(level=logging.ERROR)  # a reconnect bench logs 20 stream_down warnings by design
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_live_") as tmp:
        tmp = Path(tmp)
        clip = make_clip(tmp / "camera.mp4", args.minutes * 60 + 60)  # served once per connection, at 25 fps
        if "latency" not in args.skip:
            results["latency"] = part_latency(clip, args.minutes, args.model_ms / 1000, tmp)
            print("latency", json.dumps(results["latency"]), flush=True)
        if "reconnect" not in args.skip:
            results["reconnect"] = part_reconnect(clip, args.cycles, tmp)
            print("reconnect", json.dumps(results["reconnect"]), flush=True)
        if "streams" not in args.skip:
            results["streams"] = part_streams(clip, stream_seconds, repeats, tmp)
            print("streams", json.dumps(results["streams"]), flush=True)
    print()
    if "latency" in results:
        r = results["latency"]
        print(f"latency   {r['seconds']:.0f} s, 25 fps camera, model {r['median_model_s'] * 1e3:.0f} ms/forward: "
              f"p99 {r['p99_latency_s'] * 1e3:.0f} ms <= bound {r['bound_s'] * 1e3:.0f} ms: "
              f"{'OK' if r['p99_ok'] else 'FAIL'}; trend last/first {r['window_s']:.0f} s median "
              f"{r['trend_ratio']:.3f} (within 10 %: {'OK' if r['trend_ok'] else 'FAIL'}); "
              f"{r['results']} results, {r['dropped']} of {r['camera_frames']} camera frames dropped")
    if "reconnect" in results:
        r = results["reconnect"]
        print(f"reconnect {r['cycles']} kill/restart cycles: {r['down_up_pairs']} down/up pairs, alive "
              f"{r['alive_after']}, RSS {r['rss_first_mib']} -> {r['rss_last_mib']} MiB "
              f"({r['rss_growth'] * 100:+.2f} %, < 5 %): {'OK' if r['ok'] else 'FAIL'}")
    if "streams" in results:
        print(f"streams   demo Mask R-CNN on CPU, {stream_seconds:.0f} s per run, median of {repeats} runs "
              f"(on/off alternating)")
        print(f"          {'':6} {'on fps':>8} {'off fps':>8} {'on/off':>7} {'on/N1':>7} {'frames/forward':>15}")
        for name, row in results["streams"].items():
            print(f"          {name:6} {row['batching_on_fps']:>8.2f} {row['batching_off_fps']:>8.2f} "
                  f"{row['on_over_off']:>7.3f} {row['on_vs_N1_on']:>7.3f} {row['frames_per_forward_on']:>15.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
