"""Demo model speed: end-to-end pipeline frames/s at its default size (target >= 2), next to model-only frames/s
on the same frames, for a generated 640x360 scene and a real 960x540 evalkit clip, in one run.

    .venv/bin/python bench/bench_demo_model.py [--frames N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from streamseg.config import build_config
from streamseg.models import ModelOptions, TorchMaskRCNN
from streamseg.pipeline import Runner
from streamseg.scenes import SceneConfig, write_scene
from streamseg.sources import open_source

REPO = Path(__file__).resolve().parents[1]
REAL_CLIP = REPO.parent / "shared" / "evalkit" / "videos" / "driving" / "solidWhiteRight.mp4"
TARGET_FPS = 2.0


def measure(backend: TorchMaskRCNN, clip: Path, frames: int, out: Path) -> dict:
    with open_source(str(clip), max_frames=frames) as source:
        decoded = list(source)
    backend.predict(decoded[:1])  # warm-up, excluded
    start = time.perf_counter()
    for frame in decoded:
        backend.predict([frame])
    model_fps = len(decoded) / (time.perf_counter() - start)
    runner = Runner(build_config({"output_dir": str(out), "source": {"max_frames": frames}}), backend)
    start = time.perf_counter()
    run = runner.process(str(clip))
    e2e_fps = run.frames_written / (time.perf_counter() - start)
    return {"frames": run.frames_written, "model_fps": model_fps, "end_to_end_fps": e2e_fps}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=60)
    args = parser.parse_args()
    backend = TorchMaskRCNN(ModelOptions())  # the shipped demo model at its defaults
    ok = True
    with tempfile.TemporaryDirectory(prefix="streamseg-bench-") as tmp:
        scene = write_scene(SceneConfig(seed=42, frames=args.frames), Path(tmp) / "scene")["video"]
        for name, clip in (("generated scene 640x360", scene), (f"{REAL_CLIP.name} 960x540", REAL_CLIP)):
            row = measure(backend, clip, args.frames, Path(tmp) / "out")
            passed = row["end_to_end_fps"] >= TARGET_FPS
            ok &= passed
            print(f"{name:32s} end-to-end {row['end_to_end_fps']:.2f} frames/s (target >= {TARGET_FPS}) "
                  f"{'PASS' if passed else 'FAIL'}  model-only {row['model_fps']:.2f} frames/s  "
                  f"ratio {row['end_to_end_fps'] / row['model_fps']:.3f}  [{row['frames']} frames]")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
