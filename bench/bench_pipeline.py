"""Core pipeline benchmark: three ratios, each measured side by side in one run (these machines are noisy).

1. end-to-end wall time / model-only wall time, same frames and settings            target <= 1.10
2. pipeline throughput with the no-detections model / bare PyAV decode+encode       target >= 0.85
3. peak RSS of a 2,000-frame run / a 200-frame run (no-detections model)            target <= 1.10

    .venv/bin/python bench/bench_pipeline.py [--clip PATH] [--frames N] [--min-size S]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CLIP = REPO.parent / "shared" / "evalkit" / "videos" / "traffic" / "car_traffic_small.mp4"


def model_ratio(clip: Path, frames: int, min_size: int, out: Path) -> dict:
    """(1) The pipeline must hide decode, drawing and encoding behind the model."""
    from streamseg.config import build_config
    from streamseg.models import ModelOptions, TorchMaskRCNN
    from streamseg.pipeline import Runner
    from streamseg.sources import open_source

    options = ModelOptions(weights="random:0", min_size=min_size, rpn_post_nms_top_n=300, max_detections=50)
    backend = TorchMaskRCNN(options)
    with open_source(str(clip), max_frames=frames) as source:
        decoded = list(source)
    backend.predict(decoded[:1])  # warm-up (allocator, lazy init), excluded from both timings
    start = time.perf_counter()
    for frame in decoded:
        backend.predict([frame])
    model_only = time.perf_counter() - start

    config = build_config({"output_dir": str(out / "e2e"), "source": {"max_frames": frames}})
    runner = Runner(config, backend)
    start = time.perf_counter()
    run = runner.process(str(clip))
    end_to_end = time.perf_counter() - start
    return {"frames": run.frames_written, "model_only_s": model_only, "end_to_end_s": end_to_end,
            "ratio": end_to_end / model_only, "target": "<= 1.10", "ok": end_to_end / model_only <= 1.10}


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


def throughput_ratio(clip: Path, out: Path) -> dict:
    """(2) With a free model the pipeline is decode + encode: overhead must stay small."""
    from streamseg.config import build_config
    from streamseg.pipeline import Runner

    start = time.perf_counter()
    bare_frames = bare_decode_encode(clip, out / "bare.mp4", "veryfast")
    bare = bare_frames / (time.perf_counter() - start)
    config = build_config({"output_dir": str(out / "identity"), "backend": "none"})
    with Runner(config) as runner:
        start = time.perf_counter()
        run = runner.process(str(clip))
        pipeline = run.frames_written / (time.perf_counter() - start)
    return {"bare_fps": bare, "pipeline_fps": pipeline, "ratio": pipeline / bare, "target": ">= 0.85",
            "ok": pipeline / bare >= 0.85}


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
    parser.add_argument("--frames", type=int, default=48,
                        help="frames for the model ratio (enough to amortize opening and finalizing the outputs)")
    parser.add_argument("--min-size", type=int, default=384)
    parser.add_argument("--rss-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        peak_rss_child(*args.rss_child)
        return 0
    with tempfile.TemporaryDirectory(prefix="streamseg-bench-") as tmp:
        out = Path(tmp)
        rows = {
            "1 end-to-end / model-only": model_ratio(args.clip, args.frames, args.min_size, out),
            "2 identity pipeline / bare PyAV": throughput_ratio(args.clip, out),
            "3 peak RSS 2000 / 200 frames": rss_ratio(out),
        }
    print(f"\nclip: {args.clip.name}")
    for name, row in rows.items():
        details = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                            if k not in ("ratio", "target", "ok"))
        print(f"{name:34s} ratio {row['ratio']:.3f} (target {row['target']}) {'PASS' if row['ok'] else 'FAIL'}  [{details}]")
    return 0 if all(row["ok"] for row in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
