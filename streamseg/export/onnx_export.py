"""Export a torchvision Mask R-CNN to one self-describing ONNX file that ONNX Runtime runs faster than eager PyTorch.

What is in the graph, and what is not. A plain export of torchvision's model puts NonMaxSuppression over thousands
of proposals and the per-instance mask paste (a Loop) in the graph, and ONNX Runtime's CPU kernels for those are
slower than the whole convolution stack (../shared/GUIDE.md section 2). So the file holds only the dense work, as
three entry points of one graph::

    rpn:  images [N,3,H,W] (normalized, padded to 32)  -> feature_0..3 (P2-P5), objectness_i, rpn_deltas_i
    box:  feature_0..3, box_rois [R,5]                 -> class_logits [R,K], box_regression [R,4K]
    mask: feature_0..3, mask_rois [D,5]                -> mask_logits [D,K,28,28]

and the runner (:mod:`streamseg.models.onnx_backend`) does the cheap, branchy parts between them with torchvision's
own C++ ops: anchors, box decoding, NMS, top-k, and streamseg's compact mask paste. RoIs are ``(batch_index, x1, y1,
x2, y2)`` in padded-input pixels. The multi-level RoIAlign of the box and mask heads is exported in one of two
flavours:

* ``portable``: standard ONNX ops (level choice, per-level NonZero/Gather/RoiAlign, one inverse permutation; ~105
  nodes per head, a third of them constants, instead of the 249 of torchvision's own export), runs on any runtime;
* ``fused``: one ``streamseg::MultiLevelRoIAlign`` node per head (the contract in :mod:`streamseg.ops.roi_align`),
  run by ONNX Runtime by expansion (:mod:`streamseg.models.onnx_graph`) and by the TensorRT plugin.

Everything the runner needs is in the file's metadata (key ``streamseg``, JSON): class names, normalization, size
policy, RPN / RoI-head settings, paste shift and mode, flavour, streamseg version.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import onnx
import torch
from torch import nn
from torchvision.ops import roi_align

from streamseg import __version__
from streamseg.errors import ConfigError, StreamsegError
from streamseg.models.backend import ModelOptions
from streamseg.models.onnx_graph import FORMAT, METADATA_KEY
from streamseg.models.torch_maskrcnn import TorchMaskRCNN
from streamseg.ops.roi_align import (
    DOMAIN, OP_TYPE, POOL_AVG, TORCH_OP, level_of, multi_level_roi_align,  # noqa: F401 (registers the torch op)
)

log = logging.getLogger(__name__)

FLAVOURS = ("portable", "fused")
DEFAULT_OPSET = 17
MIN_OPSET = 16  # RoiAlign's coordinate_transformation_mode (aligned=False is "output_half_pixel") arrived in 16
FEATURES = [f"feature_{i}" for i in range(4)]
STAGE_INPUTS = {"rpn": ["images"], "box": [*FEATURES, "box_rois"], "mask": [*FEATURES, "mask_rois"]}


class ExportError(StreamsegError, RuntimeError):
    """The model cannot be exported as asked (unsupported layout, failed checker)."""


@dataclass(frozen=True)
class RoIAlignSpec:
    """One head's multi-level RoIAlign, in the op contract's terms."""

    output_size: int
    sampling_ratio: int
    featmap_strides: tuple[float, ...] = (4.0, 8.0, 16.0, 32.0)
    aligned: int = 0
    finest_scale: int = 56

    def as_dict(self) -> dict:
        return {"output_height": self.output_size, "output_width": self.output_size,
                "sampling_ratio": self.sampling_ratio, "pool_mode": POOL_AVG, "aligned": self.aligned,
                "featmap_strides": list(self.featmap_strides), "finest_scale": self.finest_scale,
                "roi_scale_factor": 1.0}


def _spec_of(pooler) -> RoIAlignSpec:
    """Read torchvision's MultiScaleRoIAlign settings; refuse layouts the op contract does not describe."""
    if list(pooler.featmap_names) != ["0", "1", "2", "3"]:
        raise ExportError(f"MultiScaleRoIAlign over {pooler.featmap_names}: only P2-P5 ('0'..'3') is supported")
    size = pooler.output_size
    size = size if isinstance(size, int) else size[0]
    if pooler.output_size not in (size, (size, size), [size, size]):
        raise ExportError(f"non-square RoIAlign output {pooler.output_size} is not supported")
    # torchvision's LevelMapper: canonical scale 224 at level 4 -> finest_scale 56 at P2 (stride 4)
    mapper = getattr(pooler, "map_levels", None)
    if mapper is not None and (mapper.s0 != 224 or mapper.lvl0 != 4 or mapper.eps != 1e-6):
        raise ExportError("MultiScaleRoIAlign with a non-default canonical scale/level is not supported")
    return RoIAlignSpec(size, int(pooler.sampling_ratio))


def portable_multi_level_roi_align(rois: torch.Tensor, features: Sequence[torch.Tensor], spec: RoIAlignSpec):
    """The op's semantics in standard ONNX-exportable ops: each level pools only its own RoIs (no L-fold work),
    then one gather restores the RoIs' order."""
    levels = level_of(rois, len(features), spec.finest_scale, spec.featmap_strides[0])
    pooled, order = [], []
    for level, (feature, stride) in enumerate(zip(features, spec.featmap_strides)):
        index = torch.nonzero(levels == level).squeeze(1)
        pooled.append(roi_align(feature, rois[index], (spec.output_size, spec.output_size), 1.0 / stride,
                                spec.sampling_ratio, bool(spec.aligned)))
        order.append(index)
    order = torch.cat(order)
    inverse = torch.zeros_like(order).scatter(0, order, torch.arange(order.shape[0], dtype=order.dtype))
    return torch.cat(pooled)[inverse]


def fused_multi_level_roi_align(rois: torch.Tensor, features: Sequence[torch.Tensor], spec: RoIAlignSpec):
    return torch.ops.streamseg.multi_level_roi_align(
        rois, list(features), spec.output_size, spec.output_size, spec.sampling_ratio, POOL_AVG, spec.aligned,
        list(spec.featmap_strides), spec.finest_scale, 1.0,
    )


class StagedMaskRCNN(nn.Module):
    """The dense parts of a torchvision MaskRCNN as one traceable graph with three independent entry points."""

    def __init__(self, model, flavour: str = "portable"):
        super().__init__()
        if flavour not in FLAVOURS:
            raise ConfigError(f"--roi-align: expected one of {FLAVOURS}, got {flavour!r}")
        self.backbone = model.backbone
        self.rpn_head = model.rpn.head
        heads = model.roi_heads
        self.box_head, self.box_predictor = heads.box_head, heads.box_predictor
        self.mask_head, self.mask_predictor = heads.mask_head, heads.mask_predictor
        self.box_spec = _spec_of(heads.box_roi_pool)
        self.mask_spec = _spec_of(heads.mask_roi_pool)
        self.align = fused_multi_level_roi_align if flavour == "fused" else portable_multi_level_roi_align

    def forward(self, images: torch.Tensor, box_rois: torch.Tensor, mask_rois: torch.Tensor):
        features = list(self.backbone(images).values())  # P2, P3, P4, P5, pool
        objectness, deltas = self.rpn_head(features)
        pyramid = features[:4]
        class_logits, box_regression = self.box_predictor(self.box_head(self.align(box_rois, pyramid, self.box_spec)))
        mask_logits = self.mask_predictor(self.mask_head(self.align(mask_rois, pyramid, self.mask_spec)))
        return (*pyramid, *objectness, *deltas, class_logits, box_regression, mask_logits)


def _fused_symbolic(g, rois, features, output_height, output_width, sampling_ratio, pool_mode, aligned,
                    featmap_strides, finest_scale, roi_scale_factor):
    from torch.onnx import symbolic_helper as sh

    maps = sh._unpack_list(features)
    out = g.op(
        f"{DOMAIN}::{OP_TYPE}", rois, *maps,
        output_height_i=sh._get_const(output_height, "i", "output_height"),
        output_width_i=sh._get_const(output_width, "i", "output_width"),
        sampling_ratio_i=sh._get_const(sampling_ratio, "i", "sampling_ratio"),
        pool_mode_i=sh._get_const(pool_mode, "i", "pool_mode"),
        aligned_i=sh._get_const(aligned, "i", "aligned"),
        featmap_strides_f=sh._get_const(featmap_strides, "fs", "featmap_strides"),
        finest_scale_i=sh._get_const(finest_scale, "i", "finest_scale"),
        roi_scale_factor_f=sh._get_const(roi_scale_factor, "f", "roi_scale_factor"),
    )
    size = sh._get_const(output_height, "i", "output_height")
    channels = sh._get_tensor_dim_size(maps[0], 1)
    out.setType(maps[0].type().with_sizes([None, channels, size, size]))  # [R, C, oh, ow] for shape inference
    return out


def _register_symbolic(opset: int) -> None:
    torch.onnx.register_custom_op_symbolic(TORCH_OP, _fused_symbolic, opset)


def _metadata(backend: TorchMaskRCNN, staged: StagedMaskRCNN, flavour: str, opset: int) -> dict:
    m = backend.model
    t, rpn, heads = m.transform, m.rpn, m.roi_heads
    anchors = rpn.anchor_generator
    return {
        "format": FORMAT,
        "streamseg_version": __version__,
        "arch": backend.arch.name,
        "weights": str(backend.origin),
        "class_names": list(backend.class_names),
        "flavour": flavour,
        "opset": opset,
        "normalization": {"mean": list(map(float, t.image_mean)), "std": list(map(float, t.image_std)),
                          "input": "RGB float in [0, 1], normalized, then zero-padded"},
        "size": {"min_size": int(t.min_size[-1]), "max_size": int(t.max_size),
                 "size_divisible": int(t.size_divisible)},
        "anchors": {"sizes": [list(s) for s in anchors.sizes],
                    "aspect_ratios": [list(map(float, a)) for a in anchors.aspect_ratios]},
        "rpn": {"pre_nms_top_n": int(rpn._pre_nms_top_n["testing"]), "post_nms_top_n": int(rpn._post_nms_top_n["testing"]),
                "nms_thresh": float(rpn.nms_thresh), "score_thresh": float(rpn.score_thresh),
                "box_weights": list(map(float, rpn.box_coder.weights))},
        "roi_heads": {"score_thresh": float(heads.score_thresh), "nms_thresh": float(heads.nms_thresh),
                      "detections_per_img": int(heads.detections_per_img),
                      "box_weights": list(map(float, heads.box_coder.weights))},
        "roi_align": {"box": staged.box_spec.as_dict(), "mask": staged.mask_spec.as_dict()},
        "paste_shift": float(backend.arch.paste_shift),
        "paste_mode": backend.arch.paste_mode,
        "stages": {"rpn": {"inputs": STAGE_INPUTS["rpn"], "outputs": [*FEATURES, *_rpn_outputs(len(anchors.sizes))]},
                   "box": {"inputs": STAGE_INPUTS["box"], "outputs": ["class_logits", "box_regression"]},
                   "mask": {"inputs": STAGE_INPUTS["mask"], "outputs": ["mask_logits"]}},
    }


def _rpn_outputs(levels: int) -> list[str]:
    return [f"objectness_{i}" for i in range(levels)] + [f"rpn_deltas_{i}" for i in range(levels)]


def prepare_output(path: str | Path) -> Path:
    """Make sure the file ``path`` can be written (creating its folder), else a one-line error naming what is in
    the way: checked before the export's minutes of work, not after them."""
    path = Path(path)
    blocker = next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ConfigError(f"cannot write {path}: {blocker} is a file, not a folder")
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab"):  # appending creates or keeps, never truncates
            pass
    except OSError as err:
        raise ConfigError(f"cannot write {path}: {err.strerror or err}") from err
    if not existed:
        path.unlink()
    return path


def simplify(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Drop Identity nodes (rewiring their consumers) and nodes/initializers nothing needs; returns the count removed.

    The exporter's constant folding already does most of the work (on torchvision's Mask R-CNNs this pass finds
    nothing left); it stays as a guard for other checkpoints and exporter versions. onnx-simplifier is not used: it
    pins onnx versions and its wheels lag behind new Pythons, and the graph here needs no shape-based rewriting.
    """
    graph = model.graph
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    kept = []
    for node in graph.node:
        if node.op_type == "Identity" and node.output[0] not in outputs:
            rename[node.output[0]] = rename.get(node.input[0], node.input[0])
        else:
            kept.append(node)
    for node in kept:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    # dead-node elimination, backwards from the graph outputs
    needed = set(outputs)
    live = []
    for node in reversed(kept):
        if any(o in needed for o in node.output):
            live.append(node)
            needed.update(i for i in node.input if i)
    live.reverse()
    removed = len(graph.node) - len(live)
    del graph.node[:]
    graph.node.extend(live)
    unused = [init for init in graph.initializer if init.name not in needed]
    for init in unused:
        graph.initializer.remove(init)
    return model, removed


def export_onnx(
    output: str | Path,
    options: ModelOptions = ModelOptions(),
    flavour: str = "portable",
    opset: int = DEFAULT_OPSET,
    backend: TorchMaskRCNN | None = None,
    dynamic_batch: bool = True,
) -> Path:
    """Export the model ``options`` describe (or ``backend``'s) to ``output``; returns the path.

    Input height and width are dynamic (any multiple of 32: the runner pads); the batch axis is dynamic unless
    ``dynamic_batch`` is false. The result passes ``onnx.checker`` (full check, with shape inference).
    """
    if flavour not in FLAVOURS:
        raise ConfigError(f"--roi-align: expected one of {', '.join(FLAVOURS)}, got {flavour!r}")
    if not MIN_OPSET <= opset <= 20:
        raise ConfigError(f"--opset: expected {MIN_OPSET}..20, got {opset}")
    output = prepare_output(output)
    backend = backend or TorchMaskRCNN(ModelOptions(**{**options.__dict__, "device": "cpu", "fp16": False}))
    staged = StagedMaskRCNN(backend.model, flavour).eval()
    if flavour == "fused":
        _register_symbolic(opset)
    size = backend.model.transform.size_divisible * 8
    images = torch.rand(1, 3, size, size + 64)
    box_rois = torch.tensor([[0, 4, 6, 60, 50], [0, 10, 10, 200, 180], [0, 0, 0, 31, 17]], dtype=torch.float32)
    mask_rois = box_rois[:2].clone()
    levels = len(backend.model.rpn.anchor_generator.sizes)
    output_names = [*FEATURES, *_rpn_outputs(levels), "class_logits", "box_regression", "mask_logits"]
    dynamic = {"images": {2: "height", 3: "width"}, "box_rois": {0: "rois"}, "mask_rois": {0: "detections"},
               "class_logits": {0: "rois"}, "box_regression": {0: "rois"}, "mask_logits": {0: "detections"}}
    if dynamic_batch:
        dynamic["images"][0] = "batch"
    for name in output_names[: 4 + 2 * levels]:
        dynamic[name] = {0: "batch", 2: f"{name}_h", 3: f"{name}_w"} if dynamic_batch else {2: f"{name}_h", 3: f"{name}_w"}
    log.info("exporting %s (%s RoIAlign, opset %d) -> %s", backend.arch.name, flavour, opset, output)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # torchvision's roi_align checks its box shapes with a tensor-valued torch._check, which the tracer reports;
        # the shapes it checks are fixed by construction here ([R, 5] rois), so the warning says nothing
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            staged, (images, box_rois, mask_rois), str(output), dynamo=False, opset_version=opset,
            input_names=["images", "box_rois", "mask_rois"], output_names=output_names, dynamic_axes=dynamic,
            do_constant_folding=True, custom_opsets={DOMAIN: 1} if flavour == "fused" else None,
            external_data=False,
        )
    model = onnx.load(str(output))
    model, removed = simplify(model)
    model.ir_version = min(model.ir_version, 9)  # what every onnxruntime since 1.15 loads
    meta = _metadata(backend, staged, flavour, opset)
    meta["export_nodes"] = len(model.graph.node)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    model.producer_name = "streamseg"
    model.producer_version = __version__
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"onnx.checker rejected the export: {str(err).splitlines()[0]}") from err
    onnx.save(model, str(output))
    log.info("%s: %d nodes (%d removed by simplification), %.1f MB", output, len(model.graph.node), removed,
             output.stat().st_size / 2**20)
    return output


def count_ops(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        key = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
        counts[key] = counts.get(key, 0) + 1
    return counts


def input_size_for(height: int, width: int, meta: dict, min_size: int | None = None,
                   max_size: int | None = None) -> tuple[int, int]:
    """The resized (unpadded) size torchvision's transform gives a ``height`` x ``width`` frame."""
    lo = float(min_size or meta["size"]["min_size"])
    hi = float(max_size or meta["size"]["max_size"])
    scale = min(lo / min(height, width), hi / max(height, width))
    return math.floor(height * scale), math.floor(width * scale)
