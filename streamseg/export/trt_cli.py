"""``streamseg export trt`` and the engine half of ``streamseg export check``, kept beside the builder.

:func:`add_trt_parser` adds the ``trt`` subcommand to the ``export`` group of the command line; :func:`check_engines`
compares an engine folder with the ONNX file it was built from, frame by frame, through ONNX Runtime.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamseg.errors import ConfigError, StreamsegError
from streamseg.export.trt_build import (
    DEFAULT_TIMING_CACHE, PRECISIONS, BuildSettings, build_engines, parse_batch, parse_size,
)
from streamseg.models.trt_runtime import is_engine_folder, read_manifest

log = logging.getLogger(__name__)

# what a check accepts, per precision: (min matched fraction, max box deviation px, min mean mask IoU)
CHECK_LIMITS = {"fp32": (1.0, 1.0, 0.99), "fp16": (0.95, 4.0, 0.95), "int8": (0.8, 12.0, 0.85)}


def add_trt_parser(export_commands) -> argparse.ArgumentParser:
    """Add ``trt`` to the ``export`` subparsers; the handler is stored as ``args.handler``."""
    trt = export_commands.add_parser(
        "trt", help="build TensorRT engines (rpn, box, mask) from a fused ONNX export, with the RoIAlign plugin",
        description="Builds one engine per stage of a 'streamseg export onnx --roi-align fused' file into a folder "
        "with a manifest (streamseg.json). Needs TensorRT >= 10, a CUDA GPU and the plugin library "
        "(export/trt_plugin, built with CMake).")
    trt.add_argument("model", type=Path, help="fused-flavour ONNX file")
    trt.add_argument("-o", "--output", type=Path, help="engine folder (default: MODEL without .onnx + _PRECISION)")
    trt.add_argument("--precision", choices=PRECISIONS, default="fp16")
    trt.add_argument("--batch", default="1", help="batch sizes MIN,OPT,MAX of the profile (default 1)")
    trt.add_argument("--min-input", help="smallest padded network input HxW (default: half the min size, square)")
    trt.add_argument("--opt-input", help="input size to tune for, HxW (default: a 1280x720 frame resized and padded)")
    trt.add_argument("--max-input", help="largest padded network input HxW (default: max size, square)")
    trt.add_argument("--calibration-video", help="int8: video (or image folder) of your footage to calibrate on")
    trt.add_argument("--calibration-frames", type=int, default=64, help="int8: frames spread over it (default 64)")
    trt.add_argument("--calibration-cache", type=Path,
                     help="int8: calibration cache to reuse or write (default: OUTPUT/calibration.cache)")
    trt.add_argument("--timing-cache", type=Path, default=DEFAULT_TIMING_CACHE,
                     help=f"TensorRT timing cache, reused across builds (default {DEFAULT_TIMING_CACHE})")
    trt.add_argument("--no-timing-cache", action="store_true")
    trt.add_argument("--workspace", type=float, default=4.0, help="builder workspace limit in GiB (default 4)")
    trt.add_argument("--optimization-level", type=int, default=3, help="builder optimization level 0..5 (default 3)")
    trt.add_argument("--plugin", type=Path, help="plugin library (default $STREAMSEG_TRT_PLUGIN or "
                     "build/trt_plugin/libstreamseg_trt_plugin.so)")
    trt.set_defaults(handler=cmd_export_trt)
    return trt


def settings_from_args(args: argparse.Namespace, output: Path) -> BuildSettings:
    cache = args.calibration_cache
    if cache is None and args.precision == "int8":
        cache = output / "calibration.cache"
    return BuildSettings(
        precision=args.precision, batch=parse_batch(args.batch),
        min_input=parse_size(args.min_input, "--min-input") if args.min_input else None,
        opt_input=parse_size(args.opt_input, "--opt-input") if args.opt_input else None,
        max_input=parse_size(args.max_input, "--max-input") if args.max_input else None,
        workspace_gib=args.workspace, timing_cache=None if args.no_timing_cache else args.timing_cache,
        calibration_video=args.calibration_video, calibration_frames=args.calibration_frames,
        calibration_cache=cache, plugin=args.plugin, optimization_level=args.optimization_level,
    )


def cmd_export_trt(args: argparse.Namespace) -> int:
    output = args.output or args.model.with_name(f"{args.model.stem}_{args.precision}")
    manifest = build_engines(args.model, output, settings_from_args(args, output))
    print(manifest.parent)
    return 0


@dataclass
class EngineCheck:
    frames: int
    reference: int
    matched: int
    max_box_deviation: float
    mean_mask_iou: float
    precision: str

    @property
    def passed(self) -> bool:
        fraction, box, miou = CHECK_LIMITS[self.precision]
        matched = self.matched / self.reference if self.reference else 1.0
        return matched >= fraction and self.max_box_deviation <= box and self.mean_mask_iou >= miou

    def table(self) -> str:
        return (f"engine vs ONNX Runtime on {self.frames} frames ({self.precision}): {self.matched}/{self.reference} "
                f"instances matched, max box deviation {self.max_box_deviation:.2f} px, mean mask IoU "
                f"{self.mean_mask_iou:.4f} -> {'PASS' if self.passed else 'FAIL'} (limits {CHECK_LIMITS[self.precision]})")


def check_engines(folder: str | Path, frames, device: str = "cuda", onnx_path: str | Path | None = None,
                  score_threshold: float = 0.3) -> EngineCheck:
    """Run the engines and the ONNX file they were built from (ONNX Runtime, fused op on the CPU) on ``frames``
    and compare matched detections."""
    from streamseg.models.backend import ModelOptions
    from streamseg.models.onnx_backend import OnnxMaskRCNN
    from streamseg.models.parity import match_detections
    from streamseg.models.trt_backend import TensorRTMaskRCNN

    manifest = read_manifest(folder)
    source = Path(onnx_path or manifest["onnx"]["file"])
    if not source.is_file():
        raise ConfigError(f"the ONNX file the engines were built from is not at {source}: pass it with --onnx")
    engine = TensorRTMaskRCNN(ModelOptions(weights=str(folder), device=device, score_threshold=score_threshold))
    reference = OnnxMaskRCNN(ModelOptions(weights=str(source), score_threshold=score_threshold))
    total = matched = 0
    box_dev, ious = 0.0, []
    try:
        for frame in frames:
            [ref] = reference.predict([frame])
            [got] = engine.predict([frame])
            m = match_detections(ref, got)
            total += len(ref)
            matched += len(m.pairs)
            box_dev = max(box_dev, float(m.box_deviation.max(initial=0.0)))
            ious.extend(m.mask_iou.tolist())
    finally:
        engine.close()
        reference.close()
    count = len(frames) if hasattr(frames, "__len__") else -1
    return EngineCheck(count, total, matched, box_dev, float(np.mean(ious)) if ious else 1.0, manifest["precision"])


def cmd_check_engines(path: Path, video: str | None, frames: int = 8, onnx_path: Path | None = None,
                      device: str = "cuda") -> int:
    """``streamseg export check ENGINE_FOLDER [--source CLIP]``: print the comparison; a :class:`StreamsegError`
    (exit 1) when it fails. Frames: ``frames`` from ``video``, or from each evalkit clip when no source is given."""
    from streamseg.export.check import default_sources, read_frames

    if not is_engine_folder(path):
        raise ConfigError(f"{path}: not an engine folder (no streamseg.json; build one with 'streamseg export trt')")
    picked = read_frames([video] if video else default_sources(), frames)
    report = check_engines(path, picked, device=device, onnx_path=onnx_path)
    print(report.table())
    if not report.passed:
        raise StreamsegError(f"engines in {path} disagree with {onnx_path or 'their ONNX file'} beyond the "
                             f"{report.precision} limits")
    return 0
