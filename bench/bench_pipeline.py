"""Core pipeline benchmark: four ratios, each measured side by side in one run (these machines are noisy).

1. end-to-end wall time / model-only wall time, same frames and settings            target <= 1.05
   (both warmed up until their times settle, then alternated A, B, A, B, A; ratio of the medians)
2. pipeline throughput with the no-detections model / bare PyAV decode+encode       target >= 0.85
   (alternated the same way)
3. peak RSS of a 2,000-frame run / a 200-frame run (no-detections model)            target <= 1.10
4. live: model-only frames/s / processed frames/s of one local RTSP camera (25 fps) target 0.95 .. 1.10
   faster than the model (the demo Mask R-CNN), i.e. time per frame live / model-only (alternated as in 1;
   needs the GStreamer RTSP server of tests/rtsp_server.py, skipped with the reason where it is missing)

    .venv/bin/python bench/bench_pipeline.py [--clip PATH] [--frames N] [--min-size S] [--rounds R] [--skip-live]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the RTSP test server's launcher (tests/live_server.py)

from live_server import gstreamer_missing  # noqa: E402

DEFAULT_CLIP = REPO.parent / "shared" / "evalkit" / "videos" / "traffic" / "car_traffic_small.mp4"


def timed(fn) -> float:
    """Seconds one pass of ``fn`` took: its wall time, or the seconds it returns when it times only part of its work
    itself (a live pass leaves out connecting to the camera)."""
    start = time.perf_counter()
    measured = fn()
    return measured if measured is not None else time.perf_counter() - start


def on_a_thread(fn):
    """``fn`` made to run on a new thread, as the pipeline runs its model stage. Torch's intra-op threading behaves
    differently on the main thread: on these 2-core machines, under load, a forward there took 4 to 7 times longer
    than the same forward on another thread (OpenMP workers spinning against other processes), so a model-only side
    timed on the main thread is not the model the pipeline runs."""

    def run():
        box: dict = {}

        def target():
            try:
                box["value"] = fn()
            except BaseException as err:  # noqa: BLE001 - re-raised on the caller's thread
                box["error"] = err

        thread = threading.Thread(target=target, name="bench:model")
        thread.start()
        thread.join()
        if "error" in box:
            raise box["error"]
        return box.get("value")

    return run


def alternate(first, second, rounds: int) -> tuple[list[float], list[float]]:
    """Times of ``first`` and ``second`` measured in turn (A, B, A, B, ..., A): a machine whose speed drifts
    (other jobs, clocks, caches) biases neither side, and the medians are compared."""
    a, b = [], []
    for i in range(rounds):
        for side, fn in ((a, first), (b, second)):
            if side is b and i == rounds - 1:
                break  # A ends the sequence, so each B sits between two As
            side.append(timed(fn))
    return a, b


def model_ratio(clip: Path, frames: int, min_size: int, rounds: int, out: Path) -> dict:
    """(1) The pipeline must hide decode, drawing and encoding behind the model.

    The first pass over new frames runs about 2x slower than later ones (allocator, caches, lazy init), so both
    sides first run until their times settle, then alternate; the model-only side runs on its own thread, as the
    pipeline's model stage does (see :func:`on_a_thread`)."""
    from streamseg.config import build_config
    from streamseg.models import ModelOptions, TorchMaskRCNN
    from streamseg.pipeline import Runner
    from streamseg.sources import open_source

    options = ModelOptions(weights="random:0", min_size=min_size, rpn_post_nms_top_n=300, max_detections=50)
    backend = TorchMaskRCNN(options)
    with open_source(str(clip), max_frames=frames) as source:
        decoded = list(source)
    runner = Runner(build_config({"output_dir": str(out / "e2e"), "source": {"max_frames": frames}}), backend)
    written = []

    @on_a_thread
    def model_only():
        for frame in decoded:
            backend.predict([frame])

    def end_to_end():
        written.append(runner.process(str(clip)).frames_written)

    warm_up = settle(model_only) + settle(end_to_end)
    model, e2e = alternate(model_only, end_to_end, rounds)
    ratio = statistics.median(e2e) / statistics.median(model)
    return {"frames": written[-1], "warm_up_passes": warm_up, "model_only_s": model, "end_to_end_s": e2e,
            "ratio": ratio, "target": "<= 1.05", "ok": ratio <= 1.05}


def settle(fn, tolerance: float = 0.1, max_passes: int = 5) -> int:
    """Run ``fn`` until two passes in a row agree within ``tolerance``; returns the passes spent."""
    last = None
    for n in range(1, max_passes + 1):
        took = timed(fn)
        if last is not None and abs(took - last) <= tolerance * last:
            return n
        last = took
    return max_passes


class Results:
    """``on_result`` of a live run: times the results after the first ``skip`` (connecting and the burst of frames
    buffered while the stream was probed stay out) up to ``skip + frames``, then sets ``done``; the frames of those
    results go to ``keep`` when given."""

    def __init__(self, skip: int, frames: int, keep: list | None = None):
        self.skip, self.frames, self.count, self.keep = skip, frames, 0, keep
        self.start = self.end = 0.0
        self.done = threading.Event()

    def __call__(self, result, latency: float) -> None:
        self.count += 1
        if self.keep is not None and self.skip < self.count <= self.skip + self.frames:
            self.keep.append(result.frame)
        if self.count == self.skip:
            self.start = time.perf_counter()
        elif self.count == self.skip + self.frames:
            self.end = time.perf_counter()
            self.done.set()


class Forwards:
    """The live side's backend: the model, timing each forward, so that a live pass also shows its time per result
    over the model's time per forward in the same moments (a figure that load drifting between passes cannot move)."""

    def __init__(self, backend):
        self.backend, self.name, self.class_names = backend, backend.name, backend.class_names
        self.seconds: list[float] = []

    def predict(self, frames):
        start = time.perf_counter()
        out = self.backend.predict(frames)
        self.seconds.append(time.perf_counter() - start)
        return out

    def close(self) -> None:
        pass  # the model outlives the pass


def live_ratio(frames: int, rounds: int, out: Path) -> dict:
    """(4) A camera faster than the model: the live path must keep the model busy, so processed frames/s should be
    the model's own frames/s. One camera at 25 fps on 127.0.0.1 (tests/rtsp_server.py), the demo Mask R-CNN (a few
    frames/s on CPU); the model-only side runs the same model on the very pictures the first live pass processed
    (the cost of a forward depends on the picture by some 10 %), one per forward as a single camera gets, on its own
    thread like the live detect stage. Each live pass is a new run, timed over ``frames`` results once results
    flow."""
    from live_server import RtspServer, make_clip

    from streamseg.config import build_config
    from streamseg.live import LiveRunner
    from streamseg.models import ModelOptions, TorchMaskRCNN

    backend = TorchMaskRCNN(ModelOptions())  # the shipped demo model at its default size
    clip = make_clip(out / "camera.mp4", 120)  # served from its start to every connection, at 25 fps
    config = build_config({"output_dir": str(out / "live"), "live": {"read_timeout": 5.0}})
    pictures, dropped, in_run = [], [], []

    @on_a_thread
    def model_only():
        for frame in pictures:
            backend.predict([frame])

    with RtspServer({"/cam": clip}) as server:
        def live():
            results = Results(skip=3, frames=frames, keep=None if pictures else pictures)
            forwards = Forwards(backend)
            runner = LiveRunner(config, forwards, on_result=results)
            box: dict = {}

            def target():
                try:
                    box["run"] = runner.run([server.url("/cam")])
                except BaseException as err:  # noqa: BLE001 - reported below
                    box["error"] = err

            thread = threading.Thread(target=target, name="bench:live")
            thread.start()
            try:
                while not results.done.wait(0.5):
                    if not thread.is_alive():
                        raise RuntimeError(f"live run ended early: {box.get('error')}")
            finally:
                runner.stop()
                thread.join()
            dropped.append(box["run"].streams["cam"].source.dropped)
            window = results.end - results.start  # results skip .. skip + frames: forwards skip .. skip + frames - 1
            in_run.append(window / sum(forwards.seconds[results.skip:results.skip + frames]))
            return window

        warm_up = settle(live) + settle(model_only)  # the first live pass keeps the pictures for model-only
        model, live_s = alternate(model_only, live, rounds)
    backend.close()
    model_fps, live_fps = frames / statistics.median(model), frames / statistics.median(live_s)
    ratio = model_fps / live_fps
    return {"frames": frames, "warm_up_passes": warm_up, "model_only_fps": model_fps, "live_fps": live_fps,
            "model_only_s": model, "live_s": live_s, "live_per_result_over_forward": statistics.median(in_run),
            "camera_frames_dropped_last_pass": dropped[-1], "ratio": ratio,
            # Below ~0.95 the live path would beat the bare model: a measurement bias, not a result. Above 1 is the
            # CPU that the camera's reader (it decodes every frame to keep the freshest) and the local RTSP server
            # take from the model on 2 cores: live_per_result_over_forward stays 1.00 (the model is never idle),
            # its forwards are slower (1.07 measured on an idle machine).
            "target": "0.95 .. 1.10", "ok": 0.95 <= ratio <= 1.10}


def bare_decode_encode(clip: Path, dst: Path, preset: str) -> int:
    """What a hand-written PyAV loop does: decode to RGB, encode h264 with the same settings."""
    with av.open(str(clip)) as src, av.open(str(dst), "w") as out:
        vin = src.streams.video[0]
        vout = out.add_stream("libx264", rate=vin.average_rate)
        vout.width, vout.height, vout.pix_fmt = vin.width, vin.height, "yuv420p"
        vout.options = {"preset": preset, "crf": "23"}
        n = 0
        for frame in src.decode(vin):
            rgb = frame.to_ndarray(format="rgb24")
            vf = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            vf.pts, vf.time_base = n, 1 / vin.average_rate  # the bare loop need not handle odd container pts
            for packet in vout.encode(vf):
                out.mux(packet)
            n += 1
        for packet in vout.encode():
            out.mux(packet)
    return n


def throughput_ratio(clip: Path, rounds: int, out: Path) -> dict:
    """(2) With a free model the pipeline is decode + encode: overhead must stay small."""
    from streamseg.config import build_config
    from streamseg.pipeline import Runner

    counts = {}

    def bare():
        counts["bare"] = bare_decode_encode(clip, out / "bare.mp4", "veryfast")

    with Runner(build_config({"output_dir": str(out / "identity"), "backend": "none"})) as runner:
        def pipeline():
            counts["pipeline"] = runner.process(str(clip)).frames_written

        settle(bare)
        settle(pipeline)
        bare_s, pipeline_s = alternate(bare, pipeline, rounds)
    bare_fps = counts["bare"] / statistics.median(bare_s)
    pipeline_fps = counts["pipeline"] / statistics.median(pipeline_s)
    return {"bare_fps": bare_fps, "pipeline_fps": pipeline_fps, "ratio": pipeline_fps / bare_fps,
            "target": ">= 0.85", "ok": pipeline_fps / bare_fps >= 0.85}


def synthetic_clip(path: Path, frames: int, size=(640, 360), fps=25) -> Path:
    """A moving-gradient h264 clip of any length, so the RSS comparison does not depend on evalkit lengths."""
    w, h = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        xs = np.arange(w, dtype=np.uint16)[None, :, None]
        ys = np.arange(h, dtype=np.uint16)[:, None, None]
        for i in range(frames):
            img = ((xs + ys + 4 * i + np.array([0, 85, 170], np.uint16)) % 256).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_child(clip: str, out: str) -> None:
    """Runs in a fresh process. Importing torch alone peaks near 1.3 GB, which would hide the run itself, so the
    run's peak is sampled from /proc every 5 ms while it runs, next to the RSS it started from."""
    from streamseg.config import build_config
    from streamseg.pipeline import Runner

    peak, done = [0.0], threading.Event()

    def sample():
        while not done.wait(0.005):
            peak[0] = max(peak[0], current_rss_mb())

    with Runner(build_config({"output_dir": out, "backend": "none"})) as runner:
        baseline = current_rss_mb()
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            frames = runner.process(clip).frames_written
        finally:
            done.set()
            sampler.join()
    print(json.dumps({"frames": frames, "peak_rss_mb": peak[0], "baseline_rss_mb": baseline}))


def rss_ratio(out: Path) -> dict:
    """(3) Memory must not grow with the length of the input."""
    results = {}
    for frames in (200, 2000):
        clip = synthetic_clip(out / f"synthetic_{frames}.mp4", frames)
        child = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(clip), str(out / f"rss_{frames}")],
            check=True, capture_output=True, text=True,
        )
        results[frames] = json.loads(child.stdout.strip().splitlines()[-1])
    ratio = results[2000]["peak_rss_mb"] / results[200]["peak_rss_mb"]
    return {"baseline_rss_mb": results[200]["baseline_rss_mb"],
            "peak_rss_200_mb": results[200]["peak_rss_mb"], "peak_rss_2000_mb": results[2000]["peak_rss_mb"],
            "frames": [results[200]["frames"], results[2000]["frames"]], "ratio": ratio, "target": "<= 1.10",
            "ok": ratio <= 1.10}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    parser.add_argument("--frames", type=int, default=24,
                        help="frames for the model ratio (enough to amortize opening and finalizing the outputs)")
    parser.add_argument("--rounds", type=int, default=3, help="alternations A, B, ..., A (A runs this many times)")
    parser.add_argument("--min-size", type=int, default=384)
    parser.add_argument("--skip-live", action="store_true", help="leave out ratio 4 (the RTSP camera)")
    parser.add_argument("--rss-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        peak_rss_child(*args.rss_child)
        return 0
    missing = None if args.skip_live else gstreamer_missing()
    with tempfile.TemporaryDirectory(prefix="streamseg-bench-") as tmp:
        out = Path(tmp)
        rows = {
            "1 end-to-end / model-only": model_ratio(args.clip, args.frames, args.min_size, args.rounds, out),
            "2 identity pipeline / bare PyAV": throughput_ratio(args.clip, args.rounds, out),
            "3 peak RSS 2000 / 200 frames": rss_ratio(out),
        }
        if not args.skip_live and not missing:
            rows["4 live: model-only / processed fps"] = live_ratio(args.frames, args.rounds, out)
    if missing:
        print(f"ratio 4 (live) skipped: {missing}", file=sys.stderr)
    print(f"\nclip: {args.clip.name}")
    for name, row in rows.items():
        details = ", ".join(f"{k}={_fmt(v)}" for k, v in row.items() if k not in ("ratio", "target", "ok"))
        print(f"{name:34s} ratio {row['ratio']:.3f} (target {row['target']}) {'PASS' if row['ok'] else 'FAIL'}  [{details}]")
    return 0 if all(row["ok"] for row in rows.values()) else 1


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list):
        return "[" + " ".join(_fmt(v) for v in value) + "]"
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
