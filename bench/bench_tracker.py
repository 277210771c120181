"""Tracker throughput: frames per second of ``Tracker.update`` at N objects per frame, on one core.

Target (issue 5): >= 1,000 frames/s at 50 objects per frame. Objects move at constant velocity with 1 px box noise
and scores in [0.3, 1], so every frame runs the first association, the Kalman update of all tracks and the output;
the assignment solvers (scipy's linear_sum_assignment, lap's lapjv when installed) run side by side on the same
frames, best of ``--repeat`` runs each (these machines are noisy).

    .venv/bin/python bench/bench_tracker.py [--objects 50] [--frames 2000] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamseg.tracking import Tracker, TrackerConfig  # noqa: E402
from streamseg.types import Detections  # noqa: E402

TARGET_FPS = 1000.0


def moving_objects(n: int, frames: int, seed: int = 0) -> list[Detections]:
    rng = np.random.default_rng(seed)
    start = rng.uniform(0, 1800, (n, 2))
    velocity = rng.normal(0, 2, (n, 2))
    size = rng.uniform(30, 120, (n, 2))
    out = []
    for f in range(frames):
        corner = start + velocity * f
        boxes = np.concatenate([corner, corner + size], axis=1) + rng.normal(0, 1, (n, 4))
        out.append(Detections(boxes, rng.uniform(0.3, 1.0, n), np.ones(n)))
    return out


def frames_per_second(frames: list[Detections], config: TrackerConfig, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        tracker = Tracker(config)
        start = time.perf_counter()
        for detections in frames:
            tracker.update(detections)
        best = min(best, time.perf_counter() - start)
    return len(frames) / best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = parser.parse_args()

    solvers = ["scipy"]
    try:
        import lap  # noqa: F401

        solvers.append("lap")
    except ImportError:
        pass

    results = {}
    for n in args.objects:
        frames = moving_objects(n, args.frames)
        results[n] = {s: frames_per_second(frames, TrackerConfig(assignment=s), args.repeat) for s in solvers}
    if args.json:
        print(json.dumps({"target_fps_at_50": TARGET_FPS, "frames_per_second": results}))
        return 0
    print(f"Tracker.update, {args.frames} frames, best of {args.repeat} (target >= {TARGET_FPS:.0f} at 50 objects)")
    print(f"{'objects/frame':>14} " + " ".join(f"{s + ' fps':>12}" for s in solvers))
    for n, row in results.items():
        print(f"{n:>14} " + " ".join(f"{row[s]:>12.0f}" for s in solvers))
    if "lap" not in solvers:
        print("(lap not installed: pip install lap to compare)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
