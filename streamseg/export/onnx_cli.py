"""``streamseg export onnx`` and ``streamseg export check`` (ONNX files; engine folders go to :mod:`trt_cli`).

:func:`add_onnx_parsers` adds both subcommands to the ``export`` group; each sets ``args.handler``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from streamseg.errors import StreamsegError


def add_onnx_parsers(export_commands) -> None:
    onnx = export_commands.add_parser(
        "onnx", help="export a Mask R-CNN to one self-describing ONNX file",
        description="Writes the dense stages (backbone+FPN+RPN head, box head, mask head) as one ONNX graph with "
        "class names, normalization and size policy in its metadata; anchors, NMS and the mask paste run on the "
        "host (streamseg run --backend onnx --weights MODEL.onnx).")
    onnx.add_argument("-o", "--output", type=Path, required=True, help="ONNX file to write")
    onnx.add_argument("--weights", help="checkpoint (default: the demo model for --arch auto), or random[:SEED]")
    onnx.add_argument("--arch", default="auto", help="auto, v1, v2, demo")
    onnx.add_argument("--roi-align", default="portable",
                      help="portable (standard ONNX ops, runs anywhere) or fused (one streamseg::MultiLevelRoIAlign "
                      "node per head, for the TensorRT plugin; ONNX Runtime expands it)")
    onnx.add_argument("--opset", type=int, default=17, help="ONNX opset, 16..20 (default 17)")
    onnx.add_argument("--min-size", type=int, help="resize policy stored as the file's default")
    onnx.add_argument("--max-size", type=int)
    onnx.add_argument("--rpn-top-n", type=int, help="proposals kept after the RPN's NMS (stored default)")
    onnx.add_argument("--max-detections", type=int, help="per frame (stored default)")
    onnx.add_argument("--static-batch", action="store_true", help="batch axis fixed at 1 (height, width stay dynamic)")
    onnx.set_defaults(handler=cmd_export_onnx)

    int8 = export_commands.add_parser(
        "int8", help="CPU int8: quantize an ONNX export's backbone stage, calibrated on frames of a video",
        description="Static quantization (int8 weights per channel, uint8 activations, QDQ) of the rpn stage "
        "(backbone + FPN + RPN head); the heads stay float32. Accuracy cost: bench/bench_onnx.py --int8.")
    int8.add_argument("model", type=Path, help="MODEL.onnx from 'streamseg export onnx'")
    int8.add_argument("-o", "--output", type=Path, required=True, help="int8 ONNX file to write")
    int8.add_argument("--video", required=True, help="video (or image folder) of your footage to calibrate on")
    int8.add_argument("--calibration-frames", type=int, default=32, help="frames spread over it (default 32)")
    int8.set_defaults(handler=cmd_export_int8)

    check = export_commands.add_parser(
        "check", help="parity of an ONNX export with PyTorch (or of an engine folder with its ONNX file)",
        description="ONNX file: runs it in ONNX Runtime and its weights in PyTorch on real frames (default: one "
        "frame of each of four evalkit clips), matches detections by label and box, prints unmatched count, box and "
        "score deviation and mask IoU percentiles; exit 1 beyond the limits. Engine folder: compares the engines "
        "with the ONNX file they were built from.")
    check.add_argument("model", type=Path, help="MODEL.onnx, or an engine folder from 'streamseg export trt'")
    check.add_argument("--weights", help="reference checkpoint (default: the one recorded at export)")
    check.add_argument("--source", action="append", help="video or image folder to take frames from "
                       "(repeatable; default: evalkit clips)")
    check.add_argument("--frames", type=int, help="frames per source (default 1; engine folders: 8)")
    check.add_argument("--score-threshold", type=float, default=0.0,
                       help="default 0: every detection up to the per-frame cap is compared")
    check.add_argument("--min-size", type=int, help="input size (default: the file's)")
    check.add_argument("--max-box-deviation", type=float, default=1.0, help="pixels (default 1)")
    check.add_argument("--min-mask-iou", type=float, default=0.99, help="every matched pair (default 0.99)")
    check.add_argument("--max-unmatched", type=int, default=0, help="over all frames (default 0)")
    check.add_argument("--onnx", type=Path, help="engine folder: the ONNX file it was built from")
    check.add_argument("--device", default="cuda", help="engine folder: the GPU to run on")
    check.set_defaults(handler=cmd_export_check)


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from streamseg.export.onnx_export import export_onnx
    from streamseg.models import ModelOptions

    options = ModelOptions(**{k: v for k, v in {
        "weights": args.weights, "arch": args.arch, "min_size": args.min_size, "max_size": args.max_size,
        "rpn_post_nms_top_n": args.rpn_top_n, "max_detections": args.max_detections}.items() if v is not None})
    print(export_onnx(args.output, options, flavour=args.roi_align, opset=args.opset,
                      dynamic_batch=not args.static_batch))
    return 0


def cmd_export_int8(args: argparse.Namespace) -> int:
    from streamseg.export.quantize import quantize_onnx

    print(quantize_onnx(args.model, args.output, args.video, args.calibration_frames))
    return 0


def cmd_export_check(args: argparse.Namespace) -> int:
    if args.frames is not None and args.frames < 1:
        raise StreamsegError(f"--frames must be >= 1, got {args.frames}")
    if args.model.is_dir():
        from streamseg.export.trt_cli import cmd_check_engines

        return cmd_check_engines(args.model, (args.source or [None])[0], frames=args.frames or 8,
                                 onnx_path=args.onnx, device=args.device)
    from streamseg.export.check import Limits, ParityError, check_onnx, default_sources, read_frames
    from streamseg.models.onnx_graph import load_onnx, read_metadata

    read_metadata(load_onnx(args.model, load_external_data=False), str(args.model))  # a wrong file before decoding
    frames = read_frames(args.source or default_sources(), args.frames or 1)
    report = check_onnx(args.model, frames, weights=args.weights, score_threshold=args.score_threshold,
                        min_size=args.min_size,
                        limits=Limits(args.max_box_deviation, args.min_mask_iou, args.max_unmatched))
    print(report.table())
    if not report.passed:
        raise ParityError(f"{args.model}: parity check failed: {'; '.join(report.failures)}")
    return 0
