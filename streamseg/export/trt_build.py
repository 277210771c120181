"""Build TensorRT engines from a fused-flavour ONNX export (``streamseg export trt MODEL.onnx``).

The ONNX file from ``streamseg export onnx --roi-align fused`` holds three entry points of one graph (see
:mod:`streamseg.export.onnx_export`): ``rpn`` (backbone + FPN + RPN head), ``box`` and ``mask`` (the heads, each
behind one ``streamseg::MultiLevelRoIAlign`` node). Each becomes its own engine, so the host steps between them
(anchors, NMS, top-k: torchvision's ops, the same as every other backend) stay where they are cheap. The engines go
into one folder::

    OUT/rpn.plan  OUT/box.plan  OUT/mask.plan   serialized engines (trtexec --loadEngine=... works on each)
    OUT/streamseg.json                          manifest: the ONNX metadata, precision, profiles, TensorRT
                                                version, GPU, plugin, sha256 of each plan

Precision:

* ``fp32``: as exported.
* ``fp16``: TensorRT 10 (weakly typed networks): ``BuilderFlag.FP16`` on every stage; the plugin runs its fp16
  kernel. TensorRT 11 removed the precision flags (networks are always strongly typed): the ``rpn`` stage is
  converted with NVIDIA ModelOpt's AutoCast (``pip install nvidia-modelopt[onnx]``); the heads stay fp32.
* ``int8``: the ``rpn`` stage (backbone and FPN, nearly all the FLOPs) in int8, calibrated on frames of the user's
  video; the heads in fp16 (TensorRT 10) or fp32 (11). TensorRT 10: ``IInt8EntropyCalibrator2`` with a
  calibration cache file (TensorRT's own format; a second build with the same cache skips calibration). TensorRT
  11: explicit quantization (Q/DQ nodes) by ModelOpt from the same frames; the cache file is then an ``.npz`` of
  the preprocessed calibration batch, so a rebuild does not decode the video again.

Optimization profiles: one per engine, over batch (``--batch MIN,OPT,MAX``) and input size (``--min-input``,
``--opt-input``, ``--max-input``, each ``HxW`` of the padded network input); the heads' RoI counts range up to
``rpn post_nms_top_n x max batch`` (box) and ``detections_per_img x max batch`` (mask). A timing cache (one file,
shared by the three builds and by later builds on the same GPU) makes rebuilds fast.

TensorRT is imported only inside these functions: without it (or without a CUDA GPU) every entry point raises
:class:`TensorRTError` with one line saying what is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from streamseg import __version__
from streamseg.errors import ConfigError
from streamseg.models.trt_runtime import (
    MANIFEST, MANIFEST_FORMAT, PLUGIN_NAME, PLUGIN_VERSION, STAGES, TensorRTError, TensorRTLogger, load_plugin,
    require_cuda_gpu, require_tensorrt, tensorrt_version,
)

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_TIMING_CACHE = Path.home() / ".cache" / "streamseg" / "tensorrt-timing.cache"


# --------------------------------------------------------------------------------------------- environment

def weakly_typed(trt) -> bool:
    """TensorRT 10 builds with precision flags and implicit int8 calibration; 11 removed both (networks are always
    strongly typed). Decided by the major version, not by the enum alone: 11 keeps some retired names as no-ops."""
    return tensorrt_version(trt) < (11, 0) and hasattr(trt.BuilderFlag, "FP16")


# --------------------------------------------------------------------------------------------- settings

def parse_size(text: str, name: str) -> tuple[int, int]:
    """``"HxW"`` -> ``(H, W)``."""
    try:
        h, w = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ConfigError(f"{name}: expected HEIGHTxWIDTH, e.g. 800x1344, got {text!r}") from None
    if h < 32 or w < 32:
        raise ConfigError(f"{name}: {h}x{w} is smaller than 32x32")
    return h, w


def parse_batch(text: str) -> tuple[int, int, int]:
    """``"MIN,OPT,MAX"`` or a single ``N`` (all three) -> ``(min, opt, max)``."""
    try:
        values = [int(v) for v in str(text).split(",")]
    except ValueError:
        raise ConfigError(f"--batch: expected MIN,OPT,MAX or N, got {text!r}") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise ConfigError(f"--batch: expected 1 <= MIN <= OPT <= MAX, got {text!r}")
    return values[0], values[1], values[2]


@dataclass
class BuildSettings:
    """What ``streamseg export trt`` builds. Sizes are the padded network input ``(H, W)``; None: from the
    ONNX metadata's size policy (see :func:`default_input_sizes`)."""

    precision: str = "fp16"
    batch: tuple[int, int, int] = (1, 1, 1)
    min_input: tuple[int, int] | None = None
    opt_input: tuple[int, int] | None = None
    max_input: tuple[int, int] | None = None
    workspace_gib: float = 4.0
    timing_cache: Path | None = DEFAULT_TIMING_CACHE
    calibration_video: str | None = None
    calibration_frames: int = 64
    calibration_cache: Path | None = None
    plugin: Path | None = None
    optimization_level: int = 3
    extra: dict = field(default_factory=dict)

    def check(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision: expected one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.precision == "int8" and not (self.calibration_video or (self.calibration_cache and
                                                                         Path(self.calibration_cache).is_file())):
            raise ConfigError("--precision int8 needs --calibration-video (frames of your footage) or an existing "
                              "--calibration-cache")
        if self.calibration_frames < 1:
            raise ConfigError(f"--calibration-frames: expected >= 1, got {self.calibration_frames}")
        if self.workspace_gib <= 0:
            raise ConfigError(f"--workspace: expected > 0 GiB, got {self.workspace_gib}")
        if not 0 <= self.optimization_level <= 5:
            raise ConfigError(f"--optimization-level: expected 0..5, got {self.optimization_level}")


def _pad(value: float, divisible: int) -> int:
    return int(math.ceil(value / divisible) * divisible)


def default_input_sizes(meta: dict) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(min, opt, max) padded input sizes for the metadata's resize policy: opt is a 16:9 landscape frame (what the
    pipeline mostly sees), max the largest square the policy allows, min half the short side, square."""
    from streamseg.export.onnx_export import input_size_for

    size = meta["size"]
    d = int(size["size_divisible"])
    h, w = input_size_for(720, 1280, meta)
    opt = (_pad(h, d), _pad(w, d))
    longest = _pad(size["max_size"], d)
    shortest = max(d, _pad(size["min_size"] / 2, d))
    return (shortest, shortest), opt, (max(longest, opt[0]), max(longest, opt[1]))


def feature_channels(model) -> int:
    """Channels of the FPN maps (``feature_0``'s static dim 1: 256 for the COCO models, 96 for the demo model)."""
    for value in model.graph.output:
        if value.name == "feature_0":
            channels = value.type.tensor_type.shape.dim[1].dim_value
            if channels > 0:
                return int(channels)
    raise ConfigError("the ONNX graph has no feature_0 output with a static channel count: not a streamseg export?")


def stage_profiles(meta: dict, settings: BuildSettings, channels: int) -> dict[str, dict[str, tuple[tuple[int, ...], ...]]]:
    """Per stage, per input: ``(min, opt, max)`` shapes; ``channels`` of the feature maps (:func:`feature_channels`)."""
    mn, opt, mx = default_input_sizes(meta)
    mn, opt, mx = settings.min_input or mn, settings.opt_input or opt, settings.max_input or mx
    d = int(meta["size"]["size_divisible"])
    for name, (h, w) in (("--min-input", mn), ("--opt-input", opt), ("--max-input", mx)):
        if h % d or w % d:
            raise ConfigError(f"{name}: {h}x{w} is not a multiple of {d} (the network input is padded to it)")
    if not (mn[0] <= opt[0] <= mx[0] and mn[1] <= opt[1] <= mx[1]):
        raise ConfigError(f"input sizes must grow: min {mn} <= opt {opt} <= max {mx}")
    b = settings.batch
    images = tuple((n, 3, h, w) for n, (h, w) in zip(b, (mn, opt, mx)))
    strides = meta["roi_align"]["box"]["featmap_strides"]
    features = {f"feature_{i}": tuple((n, channels, h // int(s), w // int(s)) for n, (h, w) in zip(b, (mn, opt, mx)))
                for i, s in enumerate(strides)}
    rois_box = meta["rpn"]["post_nms_top_n"]
    rois_mask = meta["roi_heads"]["detections_per_img"]
    # at least one RoI: the runner never calls a head without any (the plugin itself handles zero)
    box = ((1, 5), (rois_box * b[1], 5), (rois_box * b[2], 5))
    mask = ((1, 5), (rois_mask * b[1], 5), (rois_mask * b[2], 5))
    return {"rpn": {"images": images}, "box": {**features, "box_rois": box}, "mask": {**features, "mask_rois": mask}}


# --------------------------------------------------------------------------------------------- ONNX stages

def load_fused_onnx(path: str | Path):
    """The ONNX model and its streamseg metadata; refuses files that are not fused-flavour streamseg exports."""
    from streamseg.models.onnx_graph import load_onnx, read_metadata

    path = Path(path)
    model = load_onnx(path)
    meta = read_metadata(model, str(path))
    if meta.get("flavour") != "fused":
        raise ConfigError(f"{path}: exported with the {meta.get('flavour')!r} RoIAlign; TensorRT engines use the "
                          "plugin: export with 'streamseg export onnx --roi-align fused'")
    return model, meta


def stage_models(model, meta: dict) -> dict:
    """Each stage's sub-graph (inputs and outputs from the metadata), as the ONNX Runtime backend cuts them."""
    from onnx.utils import Extractor

    extractor = Extractor(model)
    stages = {}
    for stage in STAGES:
        io = meta["stages"][stage]
        sub = extractor.extract_model(io["inputs"], io["outputs"])
        sub.ir_version = model.ir_version
        stages[stage] = sub
    return stages


def plugin_nodes(model) -> list:
    return [n for n in model.graph.node if n.op_type == PLUGIN_NAME]


# --------------------------------------------------------------------------------------------- calibration

def calibration_batch(video: str, meta: dict, frames: int, size: tuple[int, int] | None = None):
    """``[F, 3, H, W]`` float32: ``frames`` frames spread over ``video``, preprocessed exactly as the backends do
    (torchvision's transform from the metadata: resize, normalize, pad), then padded or cropped to one size
    (``size``, default the first frame's padded size) so that one calibration profile fits all of them."""
    import numpy as np
    import torch

    from streamseg.models.onnx_backend import OnnxMaskRCNN
    from streamseg.models.backend import ModelOptions
    from streamseg.sources import open_source

    transform, _, _ = OnnxMaskRCNN._host_stages(meta, ModelOptions())
    with open_source(video) as source:
        total = source.info.frame_count or frames
        stride = max(1, total // frames)
    batch = []
    with open_source(video, stride=stride) as source:
        for frame in source:
            image = torch.from_numpy(frame.image).permute(2, 0, 1).float().div_(255.0)
            with torch.no_grad():
                tensor = transform([image])[0].tensors[0]
            if size is None:
                size = tuple(tensor.shape[-2:])
            out = torch.zeros((3, *size))
            h, w = min(size[0], tensor.shape[1]), min(size[1], tensor.shape[2])
            out[:, :h, :w] = tensor[:, :h, :w]
            batch.append(out.numpy())
            if len(batch) == frames:
                break
    if not batch:
        raise ConfigError(f"--calibration-video {video}: no frames could be decoded")
    return np.stack(batch).astype(np.float32)


def make_entropy_calibrator(trt, batch, cache: Path | None, input_name: str = "images"):
    """TensorRT 10's ``IInt8EntropyCalibrator2`` over ``batch`` ``[F, 3, H, W]`` (one frame per step), reading and
    writing TensorRT's calibration cache at ``cache``."""
    import torch

    class VideoCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.index = 0
            self.device_buffer = None  # kept alive until TensorRT has read it

        def get_batch_size(self):
            return 1

        def get_batch(self, names):
            if batch is None or self.index >= len(batch):
                return None
            frame = torch.from_numpy(batch[self.index : self.index + 1])
            self.device_buffer = frame.pin_memory().cuda(non_blocking=True)
            torch.cuda.current_stream().synchronize()
            self.index += 1
            return [int(self.device_buffer.data_ptr())]

        def read_calibration_cache(self):
            if cache is not None and Path(cache).is_file():
                log.info("int8: reusing calibration cache %s", cache)
                return Path(cache).read_bytes()
            return None

        def write_calibration_cache(self, data):
            if cache is not None:
                Path(cache).parent.mkdir(parents=True, exist_ok=True)
                Path(cache).write_bytes(bytes(data))
                log.info("int8: calibration cache written to %s", cache)

    return VideoCalibrator()


# --------------------------------------------------------------------------------------------- TensorRT 11 rewrites

def _require_modelopt(what: str):
    try:
        import modelopt.onnx  # noqa: F401
    except ImportError as err:
        raise TensorRTError(f"{what} on TensorRT 11 needs NVIDIA ModelOpt (TensorRT 11 removed the precision flags): "
                            "pip install 'nvidia-modelopt[onnx]'") from err


def strongly_typed_rpn(sub, precision: str, work: Path, calibration=None, cache: Path | None = None):
    """TensorRT 11: the rpn stage rewritten to the requested precision by ModelOpt (AutoCast fp16, or int8 Q/DQ
    calibrated on ``calibration``). Returns the rewritten ModelProto."""
    import onnx

    source = work / "rpn.onnx"
    onnx.save(sub, str(source))
    if precision == "fp16":
        _require_modelopt("fp16")
        from modelopt.onnx.autocast import convert_to_mixed_precision

        return convert_to_mixed_precision(onnx_path=str(source), low_precision_type="fp16", keep_io_types=True)
    _require_modelopt("int8")
    from modelopt.onnx.quantization import quantize

    target = work / "rpn.int8.onnx"
    quantize(str(source), quantize_mode="int8", calibration_data={"images": calibration},
             calibration_method="entropy", output_path=str(target))
    return onnx.load(str(target))


# --------------------------------------------------------------------------------------------- build

def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _parse(trt, builder, logger, model, stage: str):
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10+
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.SerializeToString()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        first = (errors[0].splitlines() or ["(no message)"])[0] if errors else "(no message)"
        hint = f" (is the {PLUGIN_NAME} plugin registered?)" if PLUGIN_NAME in " ".join(errors) else ""
        raise TensorRTError(f"TensorRT could not parse the {stage} stage: {first}{hint}")
    return network, parser


def _load_timing_cache(config, path: Path | None):
    data = Path(path).read_bytes() if path is not None and Path(path).is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("timing cache %s was made on another GPU or TensorRT: starting a new one", path)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def build_engines(onnx_path: str | Path, output: str | Path, settings: BuildSettings = BuildSettings()) -> Path:
    """Build the three stage engines of a fused ONNX export into the folder ``output``; returns the manifest path."""
    settings.check()
    model, meta = load_fused_onnx(onnx_path)  # user errors first, before anything heavy
    profiles = stage_profiles(meta, settings, feature_channels(model))
    trt = require_tensorrt()
    device = require_cuda_gpu()
    plugin = load_plugin(trt, settings.plugin)
    import tempfile

    import numpy as np
    import torch

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    logger = TensorRTLogger.create(trt)  # referenced until the end of the build: TensorRT keeps a pointer to it
    builder = trt.Builder(logger)
    weak = weakly_typed(trt)
    stages = stage_models(model, meta)

    calibration = None
    if settings.precision == "int8":
        cache = Path(settings.calibration_cache) if settings.calibration_cache else None
        have_trt_cache = weak and cache is not None and cache.is_file()
        if not weak and cache is not None and cache.is_file():
            calibration = np.load(cache)["images"]
        elif not have_trt_cache:
            calibration = calibration_batch(settings.calibration_video, meta, settings.calibration_frames)
            if not weak and cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(cache, images=calibration)
        if calibration is not None:
            log.info("int8: %d calibration frames of %dx%d", len(calibration), *calibration.shape[-2:])

    timing_cache = None
    built = {}
    with tempfile.TemporaryDirectory(prefix="streamseg-trt-") as tmp:
        for stage in STAGES:
            sub = stages[stage]
            if not weak and stage == "rpn" and settings.precision in ("fp16", "int8"):
                sub = strongly_typed_rpn(sub, settings.precision, Path(tmp), calibration)
            network, _parser = _parse(trt, builder, logger, sub, stage)
            config = builder.create_builder_config()
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings.workspace_gib * 2**30))
            config.builder_optimization_level = settings.optimization_level
            if timing_cache is None:
                timing_cache = _load_timing_cache(config, settings.timing_cache)
            else:
                config.set_timing_cache(timing_cache, ignore_mismatch=False)
            profile = builder.create_optimization_profile()
            for name, (mn, opt, mx) in profiles[stage].items():
                profile.set_shape(name, mn, opt, mx)
            config.add_optimization_profile(profile)
            precision = "fp32"
            if weak and settings.precision in ("fp16", "int8"):
                config.set_flag(trt.BuilderFlag.FP16)
                precision = "fp16"
            if weak and settings.precision == "int8" and stage == "rpn":
                config.set_flag(trt.BuilderFlag.INT8)
                shape = (1, 3, *calibration.shape[-2:]) if calibration is not None else profiles["rpn"]["images"][1]
                calibration_profile = builder.create_optimization_profile()
                calibration_profile.set_shape("images", shape, shape, shape)
                config.set_calibration_profile(calibration_profile)
                config.int8_calibrator = make_entropy_calibrator(trt, calibration, settings.calibration_cache)
                precision = "int8"
            elif not weak and stage == "rpn" and settings.precision in ("fp16", "int8"):
                precision = settings.precision
            started = time.perf_counter()
            plan = builder.build_serialized_network(network, config)
            if plan is None:
                raise TensorRTError(f"TensorRT failed to build the {stage} engine (run with -v for its log)")
            path = output / f"{stage}.plan"
            path.write_bytes(bytes(plan))
            built[stage] = {"file": path.name, "sha256": _sha256(path), "precision": precision,
                            "profile": {k: [list(s) for s in v] for k, v in profiles[stage].items()},
                            "plugin_nodes": len(plugin_nodes(sub)),
                            "build_seconds": round(time.perf_counter() - started, 1)}
            log.info("%s engine (%s): %s, %.1f MB, %.0f s", stage, precision, path, path.stat().st_size / 2**20,
                     built[stage]["build_seconds"])
    if settings.timing_cache is not None and timing_cache is not None:
        Path(settings.timing_cache).parent.mkdir(parents=True, exist_ok=True)
        Path(settings.timing_cache).write_bytes(bytes(timing_cache.serialize()))
    props = torch.cuda.get_device_properties(device)
    manifest = {
        "format": MANIFEST_FORMAT,
        "streamseg_version": __version__,
        "onnx": {"file": str(Path(onnx_path).resolve()), "sha256": _sha256(Path(onnx_path))},
        "model": meta,
        "tensorrt_version": trt.__version__,
        "strongly_typed": not weak,
        "gpu": {"name": props.name, "compute_capability": f"{props.major}.{props.minor}"},
        "precision": settings.precision,
        "batch": list(settings.batch),
        "plugin": {"name": PLUGIN_NAME, "version": PLUGIN_VERSION, "library": plugin.name},
        "calibration": ({"video": settings.calibration_video, "frames": settings.calibration_frames,
                         "cache": str(settings.calibration_cache) if settings.calibration_cache else None}
                        if settings.precision == "int8" else None),
        "stages": built,
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = output / MANIFEST
    path.write_text(json.dumps(manifest, indent=1))
    log.info("engines and manifest in %s", output)
    return path


def settings_as_dict(settings: BuildSettings) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()}


__all__: Sequence[str] = (
    "BuildSettings", "build_engines", "default_input_sizes", "feature_channels", "parse_batch", "parse_size",
    "stage_profiles",
)
