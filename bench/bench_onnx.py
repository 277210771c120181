"""ONNX Runtime vs eager PyTorch, side by side in one run: same frames, same model, same thresholds.

For each model, frames are run at min_size 800 (max_size 1333) through the torch backend and the ONNX Runtime backend
(portable and fused RoIAlign) in turn, frame by frame, so that load from other processes hits all of them alike:
seeded random-init R50-FPN (v1, v2) at score threshold 0 on a real 960x540 evalkit clip, so that all 100 detections
reach the mask head as with real weights on busy frames; the shipped demo model at its 0.5 threshold on a generated
640x360 street scene (the footage it was trained for, so that its box and mask heads have objects to work on). End to end = ``predict()``: frame in,
detections with pasted masks out. Printed: median s/frame, the ratio torch / onnx (target >= 1.3), the ORT
backend's per-stage split, and each backend's distance from this CPU's compute ceiling (FLOPs of one forward,
counted by torch's FlopCounterMode, at 176 GFLOP/s: GUIDE section 1).

    .venv/bin/python bench/bench_onnx.py [--frames N] [--models v1,demo] [--min-size 800]
    .venv/bin/python bench/bench_onnx.py --auto [--frames N] [--models v1,demo]
    .venv/bin/python bench/bench_onnx.py --int8 [--scenes 5]

``--auto`` measures the default backend as users get it: ``--backend auto`` built twice from a checkpoint file into
an empty cache folder (the first build exports, the second must hit the cache: the file's inode and mtime are
checked), then, side by side frame by frame, that second build, ``--backend onnx`` on a file exported beforehand
(``export_onnx``, the portable default) and ``--backend torch``. Printed: median s/frame, auto / onnx (the median of
per-frame ratios, the two run back to back in alternating order: other processes' load moves by seconds; target
within 10%) and torch / auto (ratio of medians; target >= 1). R50-FPN runs from a checkpoint file of seeded random weights (``random:N``
itself runs in torch under auto: it is a test model).

``--int8`` measures the optional CPU int8 path instead (``streamseg export int8``): the demo model exported, its
backbone stage quantized with calibration on a generated scene (seed 900, not an evaluation scene), then speed at
min_size 800 (torch, ONNX Runtime float32, ONNX Runtime int8 side by side) and accuracy cost: box and mask AP of the
three on held-out generated scenes (seeds 0..N-1) at the model's own size.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from streamseg.models import ModelOptions, TorchMaskRCNN, build_backend
from streamseg.models.onnx_backend import OnnxMaskRCNN
from streamseg.sources import open_source

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO.parent / "shared" / "evalkit" / "videos" / "driving" / "solidWhiteRight.mp4"
CEILING_FLOPS = 176e9
TARGET = 1.3
MODELS = {
    "v1": dict(arch="v1", weights="random:0", score_threshold=0.0),
    "v2": dict(arch="v2", weights="random:0", score_threshold=0.0),
    "demo": dict(),
}
SCENE_MODELS = ("demo",)


def frames_of(clip: Path, count: int) -> list:
    with open_source(str(clip), stride=7, max_frames=count) as source:
        return list(source)


def forward_flops(backend: TorchMaskRCNN, frame) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        backend.predict([frame])
    return float(counter.get_total_flops())


def scene_frames(count: int, folder: Path) -> list:
    from streamseg.scenes import SceneConfig, write_scene

    video = write_scene(SceneConfig(seed=42, frames=count * 7), folder / "scene")["video"]
    return frames_of(video, count)


def bench_model(name: str, frames: list, min_size: int) -> bool:
    options = ModelOptions(min_size=min_size, max_size=max(1333, min_size), **MODELS[name])
    backends = {"torch": TorchMaskRCNN(options)}
    for flavour in ("portable", "fused"):
        backends[f"onnx-{flavour}"] = OnnxMaskRCNN(options, flavour=flavour)
    flops = forward_flops(backends["torch"], frames[0])
    for backend in backends.values():  # warm-up: first-call allocations, ORT memory patterns
        backend.predict(frames[:1])
    for b in backends.values():
        if isinstance(b, OnnxMaskRCNN):
            b.stage_seconds.clear()
    times = {key: [] for key in backends}
    detections = {key: 0 for key in backends}
    for frame in frames:
        for key, backend in backends.items():
            start = time.perf_counter()
            [dets] = backend.predict([frame])
            times[key].append(time.perf_counter() - start)
            detections[key] += len(dets)
    ceiling = flops / CEILING_FLOPS
    h, w = frames[0].height, frames[0].width
    print(f"\n{name}: {w}x{h} frames at min_size {min_size}, {len(frames)} frames, threads {torch.get_num_threads()}, "
          f"{flops / 1e9:.0f} GFLOP/frame -> compute ceiling {ceiling:.2f} s/frame")
    reference = statistics.median(times["torch"])
    ok = True
    for key, values in times.items():
        median = statistics.median(values)
        ratio = reference / median
        verdict = "" if key == "torch" else f"  torch/onnx {ratio:.2f}x (target >= {TARGET}) " + (
            "PASS" if ratio >= TARGET else "FAIL")
        ok &= key == "torch" or ratio >= TARGET
        print(f"  {key:14s} median {median:.3f} s/frame  {median / ceiling:.2f}x the ceiling  "
              f"({flops / median / 1e9:.0f} GFLOP/s)  detections {detections[key]}{verdict}")
    for key, backend in backends.items():
        if isinstance(backend, OnnxMaskRCNN):
            split = "  ".join(f"{stage} {seconds / len(frames):.3f}" for stage, seconds in backend.stage_seconds.items())
            print(f"  {key} stages (s/frame): {split}")
    for backend in backends.values():
        backend.close()
    return ok


def bench_auto(name: str, frames: list, min_size: int, folder: Path) -> bool:
    """auto (second build, from the cache) vs onnx (a pre-exported file) vs torch, side by side."""
    from dataclasses import replace

    from streamseg.export.onnx_export import export_onnx
    from streamseg.models.onnx_cache import cached_path
    from streamseg.models.weights import save_checkpoint

    options = ModelOptions(min_size=min_size, max_size=max(1333, min_size), cache_dir=str(folder / f"cache-{name}"),
                           **MODELS[name])
    if options.weights and options.weights.startswith("random"):  # a checkpoint file, as a user's weights are
        model = TorchMaskRCNN(options)
        checkpoint = save_checkpoint(folder / f"{name}.pth", model.model, model.arch.name, model.class_names)
        options = replace(options, weights=str(checkpoint), arch="auto")
    start = time.perf_counter()
    first = build_backend(options, "auto")
    export_seconds = time.perf_counter() - start
    first.close()
    cached, _ = cached_path(options)
    before = cached.stat()
    start = time.perf_counter()
    backends = {"auto": build_backend(options, "auto")}
    load_seconds = time.perf_counter() - start
    after = cached.stat()
    hit = (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    exported = export_onnx(folder / f"{name}.onnx", options)
    backends["onnx"] = build_backend(replace(options, weights=str(exported)), "onnx")
    backends["torch"] = build_backend(options, "torch")
    print(f"\n{name} --backend auto: {backends['auto'].name}; first build (exports) {export_seconds:.1f} s, second "
          f"build {load_seconds:.1f} s, {'hit the cache' if hit else 'MISSED the cache'} ({cached.name})")
    for backend in backends.values():  # warm-up: first-call allocations, ORT memory patterns
        for frame in frames[:2]:
            backend.predict([frame])
    times = {key: [] for key in backends}
    for index, frame in enumerate(frames):
        # auto and onnx back to back, in turn first, so that each pair meets the same load from other processes
        for key in (("auto", "onnx") if index % 2 == 0 else ("onnx", "auto")) + ("torch",):
            start = time.perf_counter()
            backends[key].predict([frame])
            times[key].append(time.perf_counter() - start)
    medians = {key: statistics.median(values) for key, values in times.items()}
    h, w = frames[0].height, frames[0].width
    print(f"  {w}x{h} frames at min_size {min_size}, {len(frames)} frames, threads {torch.get_num_threads()}")
    for key, median in medians.items():
        print(f"  {key:6s} median {median:.3f} s/frame  ({', '.join(f'{t:.2f}' for t in times[key])})")
    auto_vs_onnx = statistics.median(a / o for a, o in zip(times["auto"], times["onnx"]))  # paired, per frame
    torch_vs_auto = medians["torch"] / medians["auto"]
    ok = hit and backends["auto"].name == "onnx" and abs(auto_vs_onnx - 1) <= 0.1 and torch_vs_auto >= 1.0
    print(f"  auto / onnx {auto_vs_onnx:.3f} (median of per-frame ratios; target 0.9..1.1)  "
          f"torch / auto {torch_vs_auto:.2f}x (ratio of medians; target >= 1)  "
          + ("PASS" if ok else "FAIL"))
    for backend in backends.values():
        backend.close()
    return ok


def bench_int8(frames_count: int, scenes: int, min_size: int) -> bool:
    from streamseg.evaluation import evaluate_scenes
    from streamseg.export.onnx_export import export_onnx
    from streamseg.export.quantize import quantize_onnx
    from streamseg.scenes import SceneConfig, write_scene

    with tempfile.TemporaryDirectory(prefix="streamseg-int8-") as tmp:
        tmp = Path(tmp)
        float_path = export_onnx(tmp / "demo.onnx", ModelOptions(), flavour="portable")
        calibration = write_scene(SceneConfig(seed=900, frames=96), tmp / "calibration")["video"]
        int8_path = quantize_onnx(float_path, tmp / "demo_int8.onnx", str(calibration), frames=32)
        frames = scene_frames(frames_count, tmp)
        sized = dict(min_size=min_size, max_size=max(1333, min_size))
        backends = {"torch": TorchMaskRCNN(ModelOptions(**sized)),
                    "onnx-float32": OnnxMaskRCNN(ModelOptions(weights=str(float_path), **sized)),
                    "onnx-int8": OnnxMaskRCNN(ModelOptions(weights=str(int8_path), **sized))}
        for backend in backends.values():
            backend.predict(frames[:1])
        times = {key: [] for key in backends}
        for frame in frames:
            for key, backend in backends.items():
                start = time.perf_counter()
                backend.predict([frame])
                times[key].append(time.perf_counter() - start)
        print(f"\nint8 (demo model, {frames[0].width}x{frames[0].height} scene frames at min_size {min_size}, "
              f"{len(frames)} frames): speed")
        reference = statistics.median(times["torch"])
        for key, values in times.items():
            median = statistics.median(values)
            print(f"  {key:14s} median {median:.3f} s/frame  torch/this {reference / median:.2f}x")
        print(f"accuracy on {scenes} held-out generated scenes (10 frames each, model's own size, score >= 0.05):")
        low = dict(score_threshold=0.05)
        evaluated = {"torch": TorchMaskRCNN(ModelOptions(**low)),
                     "onnx-float32": OnnxMaskRCNN(ModelOptions(weights=str(float_path), **low)),
                     "onnx-int8": OnnxMaskRCNN(ModelOptions(weights=str(int8_path), **low))}
        for key, backend in evaluated.items():
            report = evaluate_scenes(backend, scenes, 0, 10)
            print(f"  {key:14s} box AP {report.bbox['AP']:.3f} AP50 {report.bbox['AP50']:.3f}  "
                  f"mask AP {report.segm['AP']:.3f} AP50 {report.segm['AP50']:.3f}")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--models", default="v1,demo", help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--min-size", type=int, default=800)
    parser.add_argument("--clip", type=Path, default=CLIP)
    parser.add_argument("--int8", action="store_true", help="the CPU int8 path: speed and accuracy cost")
    parser.add_argument("--auto", action="store_true", help="--backend auto (cache hit) vs onnx vs torch")
    parser.add_argument("--scenes", type=int, default=5, help="--int8: generated scenes for AP (default 5)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.int8:
        return 0 if bench_int8(args.frames, args.scenes, args.min_size) else 1
    clip_frames = frames_of(args.clip, args.frames)
    ok = True
    with tempfile.TemporaryDirectory(prefix="streamseg-bench-") as tmp:
        for name in args.models.split(","):
            frames = scene_frames(args.frames, Path(tmp)) if name in SCENE_MODELS else clip_frames
            if args.auto:
                ok &= bench_auto(name, frames, args.min_size, Path(tmp))
            else:
                ok &= bench_model(name, frames, args.min_size)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
