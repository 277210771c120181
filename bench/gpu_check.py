"""One-command GPU check: the MultiLevelRoIAlign kernel, the torch backend and the pipeline on a CUDA GPU, one table.

    python3 bench/gpu_check.py [--json PATH]   # on the GPU machine: under 8 minutes on an H100/H200
    python3 bench/gpu_check.py --dry-run       # anywhere: every step a CPU can take, small; says what it skipped

Nothing is downloaded: R50-FPN has seeded random weights (``random:0``), the demo model ships with the repository and
frames are generated (streamseg.scenes). It runs from a checkout without installing it; packages that streamseg needs
and the machine lacks are named first (bring them as wheels), and the steps that need them are skipped.

1. kernel: export/trt_plugin's CUDA kernel, built through the PyTorch harness (streamseg.export.trt_kernel), against
   the CPU reference (streamseg.ops.roi_align) over 1,000 RoIs on a 2-image P2-P5 pyramid of an 800x1344 input
   (C=256) that include empty RoIs, RoIs on the level boundaries and RoIs partly or wholly outside the image: max abs
   error fp32 <= 1e-4, fp16 <= 1e-2, box head (7x7) and mask head (14x14); then its time against torchvision's
   per-level roi_align (the portable export's path) on the same RoIs, CUDA-event medians.
2. torch backend: R50-FPN v1, random:0, score threshold 0 (100 detections reach the mask head), 1280x800 scene frames
   (800 px), fp32 and fp16, batch 1, 4 and 8: frames/s and ms/frame.
3. pipeline: the demo model on a generated 640x360 scene: end to end / model only, and each stage alone on the same
   frames (decode, detect, paste, annotate, encode), naming the CPU stages slower than the model.

--dry-run: the harness builds and the kernel's own per-element code (its CPU loop) runs against the reference on
the same RoIs with 4 channels; R50-FPN and the pipeline run on the CPU at a tiny size; the GPU figures are skipped,
each with its reason. Exit status 1 when a parity check fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STRIDES = (4.0, 8.0, 16.0, 32.0)
NEEDED = {"av": "PyAV", "pycocotools": "pycocotools", "cv2": "opencv-python-headless", "scipy": "scipy",
          "onnx": "onnx", "tqdm": "tqdm", "prometheus_client": "prometheus-client"}
"""Import name -> package, for the modules streamseg imports that a bare PyTorch machine may lack."""


@dataclass
class Row:
    section: str
    item: str
    result: str = ""
    target: str = ""
    status: str = ""
    """"ok", "FAIL", "" (a figure) or "skipped: <why>"."""


class Report:
    def __init__(self) -> None:
        self.rows: list[Row] = []

    def add(self, section: str, item: str, result: str = "", target: str = "", status: str = "") -> None:
        self.rows.append(Row(section, item, result, target, status))
        print(f"  {section}: {item}: {result or status}", file=sys.stderr, flush=True)  # progress while it runs

    def check(self, section: str, item: str, value: float, limit: float, fmt: str = ".2e") -> None:
        self.add(section, item, f"{value:{fmt}}", f"<= {limit:g}", "ok" if value <= limit else "FAIL")

    def skip(self, section: str, item: str, why: str) -> None:
        self.add(section, item, status=f"skipped: {why}")

    def table(self) -> str:
        header = ("section", "item", "result", "target", "status")
        cells = [header] + [(r.section, r.item, r.result, r.target, r.status) for r in self.rows]
        widths = [max(len(c[i]) for c in cells) for i in range(4)]
        lines = []
        for n, c in enumerate(cells):
            lines.append("  ".join(f"{v:<{w}}" for v, w in zip(c[:4], widths)) + "  " + c[4])
            if n == 0:
                lines.append("-" * (sum(widths) + 8 + 6))
        return "\n".join(lines)

    @property
    def failed(self) -> bool:
        return any(r.status == "FAIL" for r in self.rows)


# ------------------------------------------------------------------------------------------------ 1. kernel


def check_rois(n: int = 1000, batch: int = 2, image: tuple[int, int] = (800, 1344), seed: int = 0) -> torch.Tensor:
    """``n`` RoIs: squares whose sqrt(area) is exactly on and just either side of each level boundary (112, 224, 448),
    empty ones (zero width, height or both), ones crossing each border or wholly outside, the rest random with
    log-uniform sizes from 2 px to twice the image so that every level gets RoIs."""
    h, w = image
    rows = []
    for side in (112.0, 224.0, 448.0):
        for s in (side * (1 - 1e-4), side, side * (1 + 1e-4), side - 0.5, side + 0.5):
            rows.append((len(rows) % batch, 30.0, 40.0, 30.0 + s, 40.0 + s))
    rows += [(0, 50, 50, 50, 80), (1, 60, 70, 90, 70), (0, 100, 100, 100, 100), (1, w - 1, h - 1, w - 1, h - 1)]
    rows += [(0, -40, 100, 60, 180), (1, 300, -25, 380, 40), (0, w - 50, 200, w + 70, 300),
             (1, 500, h - 30, 640, h + 90), (0, -100, -100, 40, 30), (1, w - 20, h - 20, w + 400, h + 300),
             (0, -300, -200, w + 300, h + 200), (1, w + 10, 10, w + 200, 90), (0, 10, -90, 70, -5)]
    g = torch.Generator().manual_seed(seed)
    rest = n - len(rows)
    size = torch.exp(torch.empty(rest, 2).uniform_(math.log(2), math.log(2 * max(h, w)), generator=g))
    x1 = torch.empty(rest).uniform_(-32, w, generator=g)
    y1 = torch.empty(rest).uniform_(-32, h, generator=g)
    b = torch.randint(0, batch, (rest,), generator=g).float()
    random = torch.stack([b, x1, y1, x1 + size[:, 0], y1 + size[:, 1]], dim=1)
    return torch.cat([torch.tensor(rows, dtype=torch.float32), random])


def pyramid(channels: int, batch: int = 2, image: tuple[int, int] = (800, 1344), seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, w = image
    return [torch.randn(batch, channels, h // int(s), w // int(s), generator=g) for s in STRIDES]


def median_ms(fn, repeats: int = 50) -> float:
    """CUDA-event median of ``fn`` after three warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def kernel_section(report: Report, gpu: str | None) -> None:
    from streamseg.export.trt_kernel import KernelBuildError, load_kernel_extension
    from streamseg.ops.roi_align import multi_level_roi_align_reference

    section = "kernel"
    start = time.perf_counter()
    try:
        harness = load_kernel_extension()
    except KernelBuildError as err:
        report.skip(section, "build the torch harness (torch_harness.cpp + the plugin's .cu)", str(err))
        report.skip(section, "parity and time", "the harness did not build")
        return
    report.add(section, "build the torch harness (torch_harness.cpp + the plugin's .cu)",
               f"{time.perf_counter() - start:.0f} s (kept in build/trt_plugin_harness for the next run)", status="ok")
    rois = check_rois()
    on_gpu = gpu is not None
    # the CPU loop runs the kernel's per-element code one output at a time: a few channels keep it to seconds
    features = pyramid(256 if on_gpu else 4)
    half = [f.half() for f in features]
    where = "CUDA kernel" if on_gpu else "kernel code, CPU loop"
    run = harness.multi_level_roi_align if on_gpu else harness.multi_level_roi_align_host
    device = "cuda" if on_gpu else "cpu"
    rois_d, features_d, half_d = rois.to(device), [f.to(device) for f in features], [f.to(device) for f in half]
    c = features[0].shape[1]
    report.add(section, "RoIs", f"{len(rois)} (15 on level boundaries, 4 empty, 9 outside the image in part or whole), "
               f"2 images, 800x1344, C={c}")
    for size, what in ((7, "box head 7x7"), (14, "mask head 14x14")):
        expected = multi_level_roi_align_reference(rois, features, size, size, 2)
        got = run(rois_d, features_d, size, size, 2, 1, 0, list(STRIDES), 56, 1.0).cpu()
        report.check(section, f"{where} vs CPU reference, fp32, {what}", (got - expected).abs().max().item(), 1e-4)
        expected16 = multi_level_roi_align_reference(rois, [f.float() for f in half], size, size, 2)
        got16 = run(rois_d, half_d, size, size, 2, 1, 0, list(STRIDES), 56, 1.0).cpu()
        report.check(section, f"{where} vs CPU reference, fp16 features (fp32 rois), {what}",
                     (got16.float() - expected16).abs().max().item(), 1e-2)
    empty = run(rois_d[:0], features_d, 7, 7, 2, 1, 0, list(STRIDES), 56, 1.0)
    report.add(section, f"{where}, zero RoIs", f"output {tuple(empty.shape)}", "(0, C, 7, 7)",
               "ok" if tuple(empty.shape) == (0, c, 7, 7) else "FAIL")
    if not on_gpu:
        report.skip(section, "CUDA kernel vs reference (fp32 <= 1e-4, fp16 <= 1e-2), C=256", "no CUDA GPU")
        report.skip(section, "time vs torchvision per-level roi_align on the GPU", "no CUDA GPU")
        return
    from streamseg.export.onnx_export import RoIAlignSpec, portable_multi_level_roi_align

    with torch.inference_mode():
        for size, head in ((7, "box head 7x7"), (14, "mask head 14x14")):
            spec = RoIAlignSpec(size, 2)
            for dtype, feats in (("fp32", features_d), ("fp16", half_d)):
                kernel_ms = median_ms(lambda: run(rois_d, feats, size, size, 2, 1, 0, list(STRIDES), 56, 1.0))
                same = rois_d.to(feats[0].dtype)  # torchvision's roi_align wants rois of the features' type
                per_level_ms = median_ms(lambda: portable_multi_level_roi_align(same, feats, spec))
                report.add(section, f"time, {head}, {dtype}: kernel / torchvision per-level roi_align",
                           f"{kernel_ms:.3f} / {per_level_ms:.3f} ms (x{per_level_ms / kernel_ms:.1f})")


# ------------------------------------------------------------------------------------------------ 2. torch backend


def scene_frames(count: int, width: int, height: int, seed: int = 7) -> list:
    """``count`` frames of a generated street scene, 10 scene frames apart (the demo model finds objects in them)."""
    from streamseg.scenes import Scene, SceneConfig
    from streamseg.types import Frame

    scene = Scene(SceneConfig(width=width, height=height, seed=seed, frames=count * 10))
    return [Frame(f.image, f"scene{seed}", i, f.time) for i, f in enumerate(scene.render(i * 10) for i in range(count))]


def backend_section(report: Report, gpu: str | None) -> None:
    section = "torch backend"
    from streamseg.models import ModelOptions, TorchMaskRCNN

    if gpu is not None:
        device, size, batches, precisions, per_config = "cuda", (1280, 800), (1, 4, 8), ("fp32", "fp16"), 32
        where = "R50-FPN v1 random:0, score threshold 0, 1280x800 frames (800 px), cuda"
    else:  # dry run: the same code at a size a CPU runs in seconds
        device, size, batches, precisions, per_config = "cpu", (256, 160), (1, 2), ("fp32",), 2
        where = "R50-FPN v1 random:0, score threshold 0, 256x160 frames (160 px), cpu (dry run)"
    report.add(section, "model", where)
    frames = scene_frames(8, *size)
    for precision in precisions:
        options = ModelOptions(arch="v1", weights="random:0", score_threshold=0.0, min_size=size[1],
                               device=device, fp16=precision == "fp16")
        backend = TorchMaskRCNN(options)
        for batch in batches:
            work = [frames[i % len(frames)] for i in range(max(per_config, batch))]
            for _ in range(2 if device == "cuda" else 1):
                backend.predict(work[:batch])  # warm-up: allocator, cuDNN's algorithm choice
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            detections = 0
            for i in range(0, len(work) - batch + 1, batch):
                detections += sum(len(d) for d in backend.predict(work[i:i + batch]))  # results on the host: synced
            seconds = time.perf_counter() - start
            done = (len(work) // batch) * batch
            memory = f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device == "cuda" else ""
            report.add(section, f"{precision}, batch {batch}",
                       f"{done / seconds:.1f} frames/s, {1000 * seconds / done:.1f} ms/frame "
                       f"({detections / done:.0f} detections/frame{memory})")
        backend.close()
    if gpu is None:
        report.skip(section, "R50-FPN v1 at 800 px, fp32 and fp16, batch 1/4/8 on CUDA", "no CUDA GPU (ran on the CPU "
                    "at 160 px instead; fp16 autocast is CUDA only)")


# ------------------------------------------------------------------------------------------------ 3. pipeline


def pipeline_section(report: Report, gpu: str | None) -> None:
    section = "pipeline"
    from streamseg.config import build_config
    from streamseg.models import ModelOptions, TorchMaskRCNN
    from streamseg.pipeline import Runner
    from streamseg.scenes import SceneConfig, write_scene
    from streamseg.sinks.annotate import Annotator
    from streamseg.sinks.video import VideoSink
    from streamseg.sources import open_source
    from streamseg.types import FrameResult

    device = "cuda" if gpu is not None else "cpu"
    count, scene = (200, SceneConfig(seed=42, frames=200)) if gpu is not None else \
        (6, SceneConfig(seed=42, frames=6, width=320, height=192))
    report.add(section, "setup", f"demo model, {scene.width}x{scene.height} generated scene, {count} frames, {device}")
    backend = TorchMaskRCNN(ModelOptions(device=device))  # the shipped demo model at its own size
    with tempfile.TemporaryDirectory(prefix="streamseg-gpu-check-") as tmp:
        clip = write_scene(scene, Path(tmp) / "scene")["video"]

        # each stage alone, on the same frames, one frame at a time as the pipeline runs them
        start = time.perf_counter()
        with open_source(str(clip)) as source:
            info, frames = source.info, list(source)
        stage_ms = {"decode": 1000 * (time.perf_counter() - start) / len(frames)}
        backend.predict(frames[:2])  # warm-up
        forward = paste = 0.0
        results = []
        with torch.inference_mode():
            for frame in frames:
                start = time.perf_counter()
                # TorchMaskRCNN.predict in two timed halves: the network, then the mask paste into frame pixels
                with torch.autocast(backend.device.type, dtype=torch.float16, enabled=backend.options.fp16):
                    raw = backend._forward([backend._to_tensor(frame.image)])
                if device == "cuda":
                    torch.cuda.synchronize()
                middle = time.perf_counter()
                detections = backend._to_detections(raw[0], (frame.height, frame.width))
                paste += time.perf_counter() - middle
                forward += middle - start
                results.append(FrameResult(frame, detections))
        stage_ms["detect"] = 1000 * forward / len(frames)
        stage_ms["paste"] = 1000 * paste / len(frames)
        annotator = Annotator()
        start = time.perf_counter()
        drawn = [FrameResult(replace(r.frame, image=annotator.annotate(r.frame.image.copy(), r.detections)),
                             r.detections) for r in results]
        stage_ms["annotate"] = 1000 * (time.perf_counter() - start) / len(frames)
        start = time.perf_counter()
        sink = VideoSink(Path(tmp) / "encoded.mp4", info, annotator=Annotator(masks=False, boxes=False, labels=False))
        for result in drawn:
            sink.write(result)
        sink.close()
        stage_ms["encode"] = 1000 * (time.perf_counter() - start) / len(frames)

        # end to end / model only, the same frames and model
        start = time.perf_counter()
        for frame in frames:
            backend.predict([frame])
        model_s = time.perf_counter() - start
        runner = Runner(build_config({"output_dir": str(Path(tmp) / "out")}), backend)
        start = time.perf_counter()
        run = runner.process(str(clip))
        e2e_s = time.perf_counter() - start
    n = run.frames_written
    ratio = (e2e_s / n) / (model_s / len(frames))
    report.add(section, "end to end / model only",
               f"{n / e2e_s:.1f} / {len(frames) / model_s:.1f} frames/s, time per frame ratio {ratio:.2f}",
               "1.00 when the model limits the run")
    busy = ", ".join(f"{s.name} {s.busy_fraction:.0%}" for s in run.report.stages)
    report.add(section, "stages busy in that run (of its wall time)", busy)
    kinds = {"decode": "CPU", "detect": "GPU" if gpu else "CPU", "paste": "GPU resample, host copies" if gpu else "CPU",
             "annotate": "CPU", "encode": "CPU"}
    for name, ms in stage_ms.items():
        report.add(section, f"{name} alone ({kinds[name]})", f"{ms:.2f} ms/frame")
    # the pipeline's threads: decode | detect (network + paste) | write (annotate + encode): the slowest sets the pace
    threads = {"decode": stage_ms["decode"], "detect": stage_ms["detect"] + stage_ms["paste"],
               "write": stage_ms["annotate"] + stage_ms["encode"]}
    pace = max(threads, key=threads.get)
    model_ms = stage_ms["detect"]
    slower = [f"{name} {stage_ms[name]:.2f}" for name in ("decode", "paste", "annotate", "encode")
              if stage_ms[name] > model_ms]
    report.add(section, f"host stages slower than the network ({model_ms:.2f} ms/frame)",
               ", ".join(slower) + " ms/frame" if slower else "none")
    report.add(section, "sets the pace (slowest pipeline thread)",
               f"{pace} {threads[pace]:.2f} ms/frame (" + ", ".join(f"{k} {v:.2f}" for k, v in threads.items()) + ")")
    if gpu is None:
        report.skip(section, "demo model on CUDA, 640x360 scene, 200 frames", "no CUDA GPU (ran on the CPU, 320x192, "
                    "6 frames)")


# ------------------------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="no GPU needed: small, on the CPU, say what is skipped")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    begun = time.perf_counter()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.dry_run else None
    if gpu is None and not args.dry_run:
        print("gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False); --dry-run runs the CPU steps",
              file=sys.stderr)
        return 2
    if args.dry_run:
        torch.set_num_threads(1)  # its CPU figures only show that the code runs; one thread shares a busy CPU best
    report = Report()
    env = f"torch {torch.__version__}, Python {sys.version.split()[0]}, " + (gpu or "no GPU (dry run)")
    report.add("machine", "versions, GPU", env)
    missing = {name: package for name, package in NEEDED.items() if importlib.util.find_spec(name) is None}
    tools = [t for t in ("nvcc", "ninja") if shutil.which(t) is None]
    report.add("machine", "missing packages, tools", ", ".join([*missing.values(), *tools]) or "none")

    def sections():
        for name, section in (("kernel", kernel_section), ("torch backend", backend_section),
                              ("pipeline", pipeline_section)):
            try:
                section(report, gpu)
            except ModuleNotFoundError as err:  # the rest of the check still runs
                report.skip(name, "the remaining steps", f"missing module {err.name} "
                            f"({NEEDED.get(err.name or '', err.name)}): bring it as a wheel")

    # off the main thread, as the pipeline runs its model: torch's CPU threads on the main thread ran forwards
    # several times slower on a loaded machine (bench/bench_pipeline.py, on_a_thread)
    with ThreadPoolExecutor(1, thread_name_prefix="gpu_check") as pool:
        pool.submit(sections).result()
    print(report.table())
    skipped = [r for r in report.rows if r.status.startswith("skipped")]
    print(f"\n{len(report.rows) - len(skipped)} steps ran, {len(skipped)} skipped, "
          f"{sum(r.status == 'FAIL' for r in report.rows)} failed, {time.perf_counter() - begun:.0f} s")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in report.rows], indent=1))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
