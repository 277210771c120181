"""Command line: ``streamseg run``, ``serve``, ``info``, ``demo``, ``eval``, ``track`` and ``events query``, thin
over the stage packages.

Exit codes: 0 success, 1 a user-facing error (one line on stderr), 2 bad command-line usage, 130 interrupted
(outputs written so far are finalized first).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from streamseg import __version__
from streamseg.errors import StreamsegError

# Heavy modules (streamseg.config pulls in torch: seconds) are imported inside the commands, so that --help is fast
# and a Ctrl-C during start-up is caught by main() like any other.

log = logging.getLogger("streamseg")

EXIT_ERROR, EXIT_INTERRUPTED = 1, 130

# command-line flag -> dotted config key; flags left unset (None) do not override the pipeline file
OVERRIDES = {
    "output_dir": "output_dir",
    "backend": "backend",
    "weights": "model.weights",
    "arch": "model.arch",
    "device": "model.device",
    "fp16": "model.fp16",
    "min_size": "model.min_size",
    "max_size": "model.max_size",
    "score_threshold": "model.score_threshold",
    "classes": "model.classes",
    "max_detections": "model.max_detections",
    "rpn_top_n": "model.rpn_post_nms_top_n",
    "batch_size": "model.batch_size",
    "stride": "source.stride",
    "target_fps": "source.target_fps",
    "max_frames": "source.max_frames",
    "queue_size": "graph.queue_size",
    "video": "sinks.video",
    "detections": "sinks.detections",
    "coco_annotations": "sinks.coco_annotations",
    "preset": "sinks.preset",
    "crf": "sinks.crf",
    "track": "tracker.enabled",
    "metrics_port": "live.metrics_port",
    "transport": "live.transport",
    "cluster": "cluster.address",
}


# streamseg track: TrackerConfig fields settable from the command line (unset flags keep the config's defaults)
TRACKER_FLAGS = (
    ("high_threshold", float, "first association and new tracks (default 0.5)"),
    ("low_threshold", float, "second association only, below --high-threshold (default 0.1)"),
    ("new_track_threshold", float, "score that starts a track (default: --high-threshold)"),
    ("max_distance", float, "first association, 1 - IoU (default 0.8)"),
    ("max_distance_low", float, "second association (default 0.5)"),
    ("max_distance_tentative", float, "tentative tracks (default 0.7)"),
    ("min_hits", int, "frames that confirm a track (default 3)"),
    ("max_lost", int, "frames a lost track is kept (default 30)"),
    ("smooth_boxes", bool, "write Kalman-filtered boxes instead of the detections'"),
    ("distance", str, "iou (default) or mask_iou"),
    ("assignment", str, "scipy (default) or lap"),
    ("position_noise", float, "Kalman position noise, fraction of box size (default 0.05)"),
    ("velocity_noise", float, "Kalman velocity noise, fraction of box size (default 0.00625)"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamseg", description="Video instance segmentation pipeline.")
    parser.add_argument("--version", action="version", version=f"streamseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="json: one JSON object per log line (structured fields for live-stream events)")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="segment videos or image folders into annotated video + detections")
    run.add_argument("sources", nargs="*", help="video files, image folders or globs (default: the pipeline's)")
    run.add_argument("-o", "--output-dir", help="output folder (default: out)")
    run.add_argument("--pipeline", type=Path, help="pipeline definition (pipelines/*.toml); flags override it")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--cluster", metavar="ADDRESS", help="run on a Ray cluster: its address (host:port, "
                     "ray://host:port), auto, or local[:N] for a private one of N workers here; [cluster] in a "
                     "pipeline has the rest (needs: pip install 'streamseg[cluster]')")
    model = run.add_argument_group("model")
    model.add_argument("--backend", help="auto (default: ONNX Runtime on a CPU, from an export of the weights made "
                       "once into the ONNX cache; PyTorch on a GPU, TensorRT for an engine folder; random weights: "
                       "torch); torch: eager PyTorch; onnx: ONNX Runtime (--weights MODEL.onnx, or a checkpoint via the "
                       "cache); tensorrt: an engine folder; none: no model, for pipeline checks")
    model.add_argument("--weights", help="checkpoint path, or random[:SEED] for an untrained model (tests only)")
    model.add_argument("--arch", help="auto (default: the checkpoint's own; without --weights the demo model), demo, "
                       "v1 (maskrcnn_resnet50_fpn), v2 (maskrcnn_resnet50_fpn_v2)")
    model.add_argument("--device", help="cpu or cuda[:N]")
    model.add_argument("--fp16", action="store_true", default=None, help="half precision (CUDA only)")
    model.add_argument("--min-size", type=int, help="resize shorter side to this (default: the model's; 800 COCO, 360 demo)")
    model.add_argument("--max-size", type=int, help="cap on the longer side (default: 1333 COCO, 640 demo)")
    model.add_argument("--score-threshold", type=float, help="drop detections below this score (default 0.5)")
    model.add_argument("--classes", help="comma-separated class names to keep, e.g. person,car")
    model.add_argument("--max-detections", type=int, help="per frame (default: 100 COCO, 30 demo)")
    model.add_argument("--rpn-top-n", type=int, help="RPN proposals kept after NMS (default: 1000 COCO, 200 demo)")
    model.add_argument("--batch-size", type=int, help="frames per forward pass (default 1)")
    src = run.add_argument_group("source")
    src.add_argument("--stride", type=int, help="keep every k-th frame")
    src.add_argument("--target-fps", type=float, help="keep about this many frames per second")
    src.add_argument("--max-frames", type=int, help="stop after this many frames per source")
    src.add_argument("--queue-size", type=int, help="capacity of the queues between stages (default 4)")
    run.add_argument("--track", dest="track", action="store_true", default=None,
                     help="track objects (as [tracker] enabled = true): ids in the video and JSONL, tracks file")
    out = run.add_argument_group("outputs")
    out.add_argument("--no-video", dest="video", action="store_false", default=None, help="skip annotated video")
    out.add_argument("--no-detections", dest="detections", action="store_false", default=None, help="skip JSONL")
    out.add_argument("--coco-annotations", metavar="FILE", help="image folders: COCO annotation file whose image "
                     "ids (by file name) and category ids (by class name) the COCO results use")
    out.add_argument("--preset", help="x264 preset (default veryfast)")
    out.add_argument("--crf", type=int, help="x264 quality, lower is better (default 23)")
    live = run.add_argument_group("live streams (rtsp://, http(s)://, v4l2://; more under [live] in a pipeline)")
    live.add_argument("--metrics-port", type=int, help="serve /metrics and /healthz on 127.0.0.1:PORT (0: any)")
    live.add_argument("--transport", choices=("tcp", "udp"), help="RTSP transport (default tcp)")

    info = commands.add_parser("info", help="print container, streams, codec, size, fps, duration, rotation")
    info.add_argument("sources", nargs="+")

    demo = commands.add_parser("demo", help="generate a street scene and run the whole pipeline on it, offline")
    demo.add_argument("-o", "--output-dir", default="out/demo")
    demo.add_argument("--seed", type=int, default=7, help="scene seed (training used 1000 and up)")
    demo.add_argument("--frames", type=int, default=120)
    demo.add_argument("--weights", help="another checkpoint (COCO or your own) instead of the demo model")
    demo.add_argument("--arch", help="architecture of --weights: auto (default: the checkpoint's own), demo, v1, v2")
    demo.add_argument("--no-progress", action="store_true")

    evaluate = commands.add_parser("eval", help="box and mask AP of a model (pycocotools); tracking and events "
                                   "on generated scenes")
    data = evaluate.add_mutually_exclusive_group(required=True)
    data.add_argument("--coco", type=Path, help="COCO annotations json (with --images)")
    data.add_argument("--scenes", type=int, help="evaluate on this many generated held-out scenes")
    data.add_argument("--scene-events", type=int, metavar="N",
                      help="detect -> track -> zone/line events on N generated scenes: MOTA, IDF1 and event "
                      "precision/recall (within 0.5 s) against their ground truth")
    evaluate.add_argument("--images", type=Path, help="folder with the images the annotations name")
    evaluate.add_argument("--limit", type=int, help="at most this many images")
    evaluate.add_argument("--seed", type=int, default=0, help="first held-out scene seed (--scenes, --scene-events)")
    evaluate.add_argument("--frames-per-scene", type=int, help="--scenes: frames sampled per scene (default 20); "
                          "--scene-events: length of each scene (default 300, 30 s)")
    evaluate.add_argument("--oracle", action="store_true",
                          help="--scene-events: the scenes' ground-truth boxes instead of a model (no identities)")
    evaluate.add_argument("--min-frames", type=int, default=1,
                          help="--scene-events: frames a zone/line change must hold (default 1)")
    evaluate.add_argument("--detect-interval", type=int, default=1, metavar="N",
                          help="--scene-events: the model runs on every N-th frame, the tracker predicts the others "
                          "(model.detect_interval; default 1)")
    evaluate.add_argument("--weights")
    evaluate.add_argument("--arch", help="auto (default: the checkpoint's own; without --weights the demo model), "
                          "demo, v1, v2")
    evaluate.add_argument("--min-size", type=int)
    evaluate.add_argument("--max-size", type=int)
    evaluate.add_argument("--score-threshold", type=float,
                          help="low, as AP needs (default 0.05); --scene-events: 0.1 (the tracker's low threshold)")

    track = commands.add_parser("track", help="track MOTChallenge detections (frame,id,x,y,w,h,conf,...) into tracks",
                                description="Reads MOTChallenge detections, runs the tracker, writes MOTChallenge "
                                "tracks (1-based boxes, as read). MOT15 public detections: --scores minmax "
                                "--high-threshold 0.25 --max-distance 0.7 --max-lost 7 --smooth-boxes")
    track.add_argument("detections", type=Path, help="det.txt")
    track.add_argument("-o", "--output", type=Path, required=True, help="tracks file to write")
    track.add_argument("--gt", type=Path, help="ground truth gt.txt: print MOTA, IDF1 and counts of the result")
    track.add_argument("--scores", choices=("raw", "minmax"), default="raw",
                       help="minmax: rescale scores to [0, 1] over the file (for DPM and other unbounded scores)")
    track.add_argument("--max-gap", type=int, help="fill gaps of up to N frames a track bridged by interpolation "
                       "(default: all of them; 0: none)")
    track.add_argument("--live", action="store_true",
                       help="write only what a live tracker shows per frame: no back-fill, no gap filling")
    options = track.add_argument_group("tracker (TrackerConfig; defaults in streamseg/tracking/tracker.py)")
    for name, kind, text in TRACKER_FLAGS:
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            options.add_argument(flag, action="store_true", default=None, help=text)
        else:
            options.add_argument(flag, type=kind, help=text)

    serve = commands.add_parser("serve", help="the always-on camera service: cameras retried forever, a live page, "
                                "an HTTP API, events to SQLite (and MQTT); until SIGTERM / Ctrl-C")
    serve.add_argument("cameras", nargs="*", metavar="URL", help="cameras (rtsp://..., in place of the pipeline's "
                       "sources; more can be added through the API)")
    serve.add_argument("--pipeline", help="TOML file: its sources are the cameras ([[sources]] tables: url, id, "
                       "zones, lines); SIGHUP re-reads it")
    serve.add_argument("--host", help="listen here (default 127.0.0.1; any other host needs a token: "
                       "serve.token_file or $STREAMSEG_SERVE_TOKEN)")
    serve.add_argument("--port", type=int, help="HTTP port (default 8080; 0: any free port)")
    serve.add_argument("-o", "--output-dir", help="where outputs go (default: the pipeline's output_dir)")
    serve.add_argument("--backend", choices=("auto", "torch", "onnx", "tensorrt", "none"))
    serve.add_argument("--weights", help="checkpoint (.pth) or exported engine")
    serve.add_argument("--cluster", metavar="ADDRESS", help="run each camera in an actor on this Ray cluster "
                       "(host:port, ray://host:port, auto, local[:N]); see [cluster]")

    events = commands.add_parser("events", help="the event store (sinks.event_store): query stored events")
    events_commands = events.add_subparsers(dest="events_command", required=True)
    query = events_commands.add_parser("query", help="print the stored events that match, oldest first")
    query.add_argument("--db", required=True, help="the event store (default of a run: <output_dir>/events.db)")
    query.add_argument("--camera", action="append", default=[], help="source id (repeat for several)")
    query.add_argument("--kind", action="append", default=[], help="enter, exit, dwell, cross, forward_collision")
    query.add_argument("--since", help="from this time on (ISO-8601, UTC unless it has an offset; or Unix seconds)")
    query.add_argument("--until", help="before this time (same forms as --since)")
    query.add_argument("--format", choices=("jsonl", "csv"), default="jsonl",
                       help="jsonl: the streamseg.events/1 records (default); csv: a header and one row per event")

    export = commands.add_parser("export", help="export the model for other runtimes (TensorRT engines, ...)")
    export_commands = export.add_subparsers(dest="export_command", required=True)
    from streamseg.export.trt_cli import add_trt_parser  # light: TensorRT itself is imported only when building

    from streamseg.export.onnx_cli import add_onnx_parsers

    add_onnx_parsers(export_commands)  # onnx, check
    add_trt_parser(export_commands)  # each export subcommand sets args.handler
    return parser


def config_from_args(args: argparse.Namespace):
    """The run's :class:`~streamseg.config.PipelineConfig`: the pipeline file (if any) under the flags given."""
    from streamseg.config import build_config, load_pipeline

    overrides = {key: getattr(args, flag) for flag, key in OVERRIDES.items() if getattr(args, flag, None) is not None}
    if args.sources:
        overrides["sources"] = list(args.sources)
    if args.weights is not None and args.arch is None and args.weights.split(":")[0] != "random":
        overrides["model.arch"] = "auto"  # --weights alone: the checkpoint's architecture, not the pipeline file's
    if args.pipeline is not None:
        return load_pipeline(args.pipeline, overrides)
    return build_config({}, overrides, origin="command line")


def cmd_run(args: argparse.Namespace) -> int:
    from streamseg.pipeline import Runner  # heavy imports (torch) only for commands that need them

    config = config_from_args(args)
    if not config.sources:
        raise StreamsegError("no sources: pass files or folders, or a --pipeline that lists them")
    from dataclasses import replace

    from streamseg.sources import expand_sources, is_live_input

    config = replace(config, sources=tuple(expand_sources(config.sources)))  # a glob's videos: one source each
    if config.cluster.address is not None:
        if config.cameras:
            raise StreamsegError("[[sources]] tables (id, zones, lines per source) are not supported with --cluster "
                                 "yet: list the sources as plain paths")
        return run_on_cluster(config, progress=not args.no_progress)
    if any(is_live_input(uri) for uri in config.sources):
        return run_cameras(config)  # all streams at once, until Ctrl-C
    skipped, failed = 0, []
    from streamseg.config import camera_specs, config_for_camera

    with Runner(config, progress=not args.no_progress) as runner:
        for spec in camera_specs(config):
            run = runner.process(spec.url, handle_signals=True, source_id=spec.id,
                                 config=config_for_camera(config, spec))
            if run.report is not None:
                print(run.report.table(), file=sys.stderr)
            if run.skipped:
                print(f"{run.source_id}: unreadable images skipped: {len(run.skipped)}", file=sys.stderr)
                skipped += len(run.skipped)
            for kind, path in run.outputs.items():
                log.info("%s: %s -> %s", run.source_id, kind, path)
            if run.errors:  # the source's other outputs went on; what was written is valid
                failed.append(run.errors)
            if run.interrupted:
                log.warning("interrupted: outputs hold the %d frames processed", run.frames_written)
                _print_output_errors(failed)
                return EXIT_INTERRUPTED
    if failed:  # after every source, one line each
        _print_output_errors(failed)
        return EXIT_ERROR
    if skipped:  # after every source: the readable images are all written
        raise StreamsegError(f"unreadable images skipped: {skipped} (named in the warnings above); "
                             "every readable image is in the outputs")
    return 0


def run_on_cluster(config, progress: bool) -> int:
    """``run --cluster``: files and image folders as work items on model actors (streamseg.cluster.files), with the
    exit codes of a local run."""
    from streamseg.cluster.files import ClusterRunner
    from streamseg.sources import is_live_input

    if any(is_live_input(uri) for uri in config.sources):
        from streamseg.cluster.cameras import run_cameras_on_cluster

        return run_cameras_on_cluster(config)
    run = ClusterRunner(config, progress=progress).run(config.sources)
    print(run.table(), file=sys.stderr)
    for source in run.sources:
        for kind, path in source.outputs.items():
            log.info("%s: %s -> %s", source.source_id, kind, path)
    if run.interrupted:
        done = sum(s.done for s in run.sources)
        log.warning("interrupted: %d of %d sources done; the same command resumes the rest from %s", done,
                    len(run.sources), Path(config.output_dir) / ".streamseg-cluster")
        return EXIT_INTERRUPTED
    failed = [s.errors for s in run.sources if s.errors]
    _print_output_errors(failed)
    for source in run.sources:
        if source.source_error:
            print(f"streamseg: error: {source.source_error}", file=sys.stderr)
    skipped = sum(len(s.skipped) for s in run.sources)
    if skipped:
        print(f"streamseg: error: unreadable images skipped: {skipped} (named in the warnings above); every "
              "readable image is in the outputs", file=sys.stderr)
    return EXIT_ERROR if failed or skipped or any(s.source_error for s in run.sources) else 0


def run_cameras(config) -> int:
    """Live sources: every stream of the run at once until Ctrl-C / SIGTERM (or every stream has ended). Exit
    130 when stopped by a signal (outputs are finalized first), 1 when a stream failed for good, else 0."""
    from streamseg.live import LiveRunner
    from streamseg.redact import redact
    from streamseg.sources import is_live_input

    files = [uri for uri in config.sources if not is_live_input(uri)]
    if files:
        raise StreamsegError(f"live streams and files cannot be mixed in one run: run {redact(files[0])!r} "
                             "separately")
    from streamseg.config import camera_specs, config_for_camera
    from streamseg.sources import live_source_id

    specs = camera_specs(config)
    with redacting_handlers(config.sources), LiveRunner(config) as runner:
        run = runner.run([s.url for s in specs], handle_signals=True,
                         source_ids=[s.id or live_source_id(s.url) for s in specs],
                         configs=[config_for_camera(config, s) for s in specs])
    if run.report is not None:
        print(run.report.table(), file=sys.stderr)
    for stream in run.streams.values():
        source = stream.source
        log.info("%s: %d frames processed, %d dropped, %d reconnects", stream.source_id, stream.processed,
                 source.dropped, source.reconnects)
        for kind, path in stream.outputs.items():
            log.info("%s: %s -> %s", stream.source_id, kind, path)
    failed = [s for s in run.streams.values() if s.failed]
    for stream in failed:
        print(f"streamseg: error: {stream.source_id}: {stream.failed}", file=sys.stderr)
    if run.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_ERROR if failed else 0


def _print_output_errors(failed: list[list[str]]) -> None:
    from streamseg.stream import error_line

    for errors in failed:
        print(f"streamseg: error: {error_line(errors)}", file=sys.stderr)


def cmd_serve(args: argparse.Namespace) -> int:
    """``streamseg serve``: exit 0 after SIGTERM / Ctrl-C (everything finalized), 1 for a bad configuration or a
    port that is taken; an unreachable camera is never a reason to exit (it is retried forever)."""
    import asyncio

    from streamseg.config import build_config, load_pipeline

    overrides = {key: value for key, value in (("serve.host", args.host), ("serve.port", args.port),
                                               ("output_dir", args.output_dir), ("backend", args.backend),
                                               ("model.weights", args.weights),
                                               ("cluster.address", args.cluster)) if value is not None}
    if args.cameras:
        overrides["sources"] = list(args.cameras)
    if args.pipeline is None and not args.cameras:
        raise StreamsegError("serve: give camera URLs or a --pipeline that lists them")

    def read_config():
        if args.pipeline is None:
            return build_config({}, overrides, origin="command line")
        return load_pipeline(args.pipeline, overrides)

    config = read_config()
    if importlib.util.find_spec("aiohttp") is None:  # the optional extra: only serve needs it
        raise StreamsegError("serve needs aiohttp: pip install 'streamseg[serve]'")
    token = config.serve.token
    if not config.serve.loopback and not token:
        raise StreamsegError(f"serve.host = {config.serve.host} is not loopback: set serve.token_file or "
                             "$STREAMSEG_SERVE_TOKEN (every request must then carry it as a bearer token)")
    with redacting_handlers(config.sources) as hide:
        return asyncio.run(_serve(config, token, read_config, hide))


@contextmanager
def redacting_handlers(urls) -> Iterator:
    """The command line's own log handlers hide the credentials of ``urls`` (the library's messages name streams
    without them, but FFmpeg's may not) while the block runs; library code leaves the host application's logging
    alone. Yields the filter (``add`` more secrets to it)."""
    from streamseg.redact import RedactingFilter, secrets_of

    hide = RedactingFilter(tuple(s for uri in urls for s in secrets_of(uri)))
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(hide)
    try:
        yield hide
    finally:
        for handler in handlers:
            handler.removeFilter(hide)


async def _serve(config, token: str | None, reread, hide) -> int:
    import asyncio
    import signal

    from streamseg.redact import secrets_of
    from streamseg.service import CameraService
    from streamseg.service.http import serve_http

    loop = asyncio.get_running_loop()
    service = CameraService(config, on_url=lambda url: hide.add(secrets_of(url)))  # loads the model
    stopping = asyncio.Event()

    async def reload() -> None:
        try:
            changes = await loop.run_in_executor(None, lambda: service.reload(reread()))
        except StreamsegError as err:
            log.error("reload failed, the cameras run on unchanged: %s", err)
            return
        log.info("reloaded: %s", ", ".join(f"{k} {', '.join(v) or 'none'}" for k, v in changes.items()))

    server = serve_http(service, config.serve.host, config.serve.port, token)
    server.bind()  # a port in use is one error line before any camera starts or any output is touched
    try:
        await loop.run_in_executor(None, service.start)
        async with server:
            loop.add_signal_handler(signal.SIGINT, stopping.set)
            loop.add_signal_handler(signal.SIGTERM, stopping.set)
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload()))
            await stopping.wait()
            log.info("stopping: finalizing every camera's outputs")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await server.stop()  # the port, also when the cameras did not start
        await loop.run_in_executor(None, service.stop)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from streamseg.sources import describe, expand_sources, format_description

    failed = 0
    for given in args.sources:  # a bad file gets its error line; the others are still described
        try:
            uris = expand_sources([given])  # a quoted glob: each of its videos, its images as one
        except StreamsegError as err:  # an unknown URL scheme, a glob that matches no media
            print(f"streamseg: error: {err}", file=sys.stderr, flush=True)
            uris, failed = [], failed + 1
        for uri in uris:
            try:
                print(format_description(describe(uri)), flush=True)
            except StreamsegError as err:
                print(f"streamseg: error: {err}", file=sys.stderr, flush=True)
                failed += 1
    return EXIT_ERROR if failed else 0


def cmd_eval(args: argparse.Namespace) -> int:
    from streamseg.evaluation import evaluate_coco, evaluate_scene_events, evaluate_scenes, ground_truth_detector
    from streamseg.models import ModelOptions, build_backend

    events = args.scene_events is not None
    for name in ("scenes", "scene_events", "frames_per_scene", "min_frames", "detect_interval"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise StreamsegError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.oracle and not events:
        raise StreamsegError("--oracle goes with --scene-events")
    if events and args.oracle:
        report = evaluate_scene_events(ground_truth_detector(), args.scene_events, args.seed,
                                       args.frames_per_scene or 300, min_frames=args.min_frames,
                                       detect_interval=args.detect_interval)
        print(report.table())
        return 0
    threshold = args.score_threshold if args.score_threshold is not None else (0.1 if events else 0.05)
    options = ModelOptions(**{k: v for k, v in {
        "weights": args.weights, "arch": args.arch, "min_size": args.min_size, "max_size": args.max_size,
        "score_threshold": threshold}.items() if v is not None})
    backend = build_backend(options)
    try:
        if args.coco is not None:
            if args.images is None:
                raise StreamsegError("eval --coco needs --images FOLDER")
            report = evaluate_coco(backend, args.coco, args.images, args.limit)
        elif events:
            report = evaluate_scene_events(backend, args.scene_events, args.seed, args.frames_per_scene or 300,
                                           min_frames=args.min_frames, detect_interval=args.detect_interval)
        else:
            report = evaluate_scenes(backend, args.scenes, args.seed, args.frames_per_scene or 20)
    finally:
        backend.close()
    print(report.table())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from streamseg.demo import run_demo

    result = run_demo(Path(args.output_dir), seed=args.seed, frames=args.frames, weights=args.weights,
                      arch=args.arch, progress=not args.no_progress)
    print(result.report)
    return EXIT_INTERRUPTED if result.interrupted else 0


def cmd_track(args: argparse.Namespace) -> int:
    import numpy as np

    from streamseg.tracking import TrackerConfig, evaluate_mot, read_mot, track_rows, write_mot

    config = TrackerConfig(**{name: getattr(args, name) for name, _, _ in TRACKER_FLAGS
                              if getattr(args, name) is not None})
    if args.max_gap is not None and args.max_gap < 0:
        raise StreamsegError(f"--max-gap must be >= 0, got {args.max_gap}")
    gt = read_mot(args.gt, min_confidence=1) if args.gt is not None else None  # fail before the work
    tracks = track_rows(read_mot(args.detections), config, scores=args.scores, max_gap=args.max_gap, live=args.live)
    write_mot(args.output, tracks)
    log.info("%s: %d boxes in %d tracks -> %s", args.detections, len(tracks), len(np.unique(tracks.ids)),
             args.output)
    if gt is not None:
        s = evaluate_mot(gt, tracks)
        print(f"MOTA {s.mota:.4f}  IDF1 {s.idf1:.4f}  MOTP {s.motp:.4f}  IDsw {s.num_switches}  "
              f"FP {s.num_false_positives}  FN {s.num_misses}  gt {s.num_objects}  tracks {len(np.unique(tracks.ids))}")
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    from streamseg.sinks.event_store import parse_time, query_events, write_events

    since = parse_time(args.since, "--since") if args.since is not None else None
    until = parse_time(args.until, "--until") if args.until is not None else None
    records = query_events(args.db, cameras=args.camera, kinds=args.kind, since=since, until=until)
    write_events(records, sys.stdout, args.format)
    sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    verbose = False
    try:  # from the first instruction: a Ctrl-C while torch is still importing is one line too
        args = build_parser().parse_args(argv)
        verbose = args.verbose
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        if args.log_format == "json":
            from streamseg.logs import use_json_logs

            use_json_logs()
        command = {"run": cmd_run, "serve": cmd_serve, "info": cmd_info, "eval": cmd_eval, "demo": cmd_demo, "track": cmd_track,
                   "events": cmd_events, "export": lambda a: a.handler(a)}[args.command]
        return command(args)
    except StreamsegError as err:
        if verbose:
            log.exception("failed")
        print(f"streamseg: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("streamseg: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
