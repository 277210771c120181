"""torchvision's Mask R-CNN run eagerly in PyTorch.

The forward pass is torchvision's own (transform -> backbone -> RPN -> RoI heads), composed here so that the last
step differs: torchvision pastes every 28x28 mask into a full-frame float tensor (100 instances at 720p is ~370 MB),
while we paste each mask only over its own box with the same arithmetic, so the pixels are identical and memory
follows object size. The demo model pastes exactly at its float box instead (``paste_mode="subpixel"``), which is
worth two points of mask AP on its small objects.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.detection import (
    MaskRCNN_ResNet50_FPN_V2_Weights,
    MaskRCNN_ResNet50_FPN_Weights,
    maskrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.transform import resize_boxes

from streamseg.errors import ConfigError, WeightsError
from streamseg.models.backend import RANDOM_WEIGHTS, ModelOptions, class_filter, no_cuda_device
from streamseg.models.demo import DEMO_ARCH, DEMO_WEIGHTS, build_demo_maskrcnn
from streamseg.models.weights import ENV_WEIGHTS, Checkpoint, find_weights, load_checkpoint
from streamseg.types import Detections, Frame, InstanceMasks

log = logging.getLogger(__name__)

COCO_CLASS_NAMES: tuple[str, ...] = tuple(MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])


@dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[..., torch.nn.Module]
    """``build(num_classes=..., **torchvision_kwargs)`` returns an untrained model."""
    coco_url: str | None
    paste_shift: float = 0.0
    """Model-input pixels to move each box by before pasting its mask. torchvision trains the mask head on targets
    cut with ``roi_align(aligned=False)``, which samples half a pixel right of and below the box in continuous
    coordinates, so mask cells sit 0.5 px off the box that torchvision pastes them into. COCO architectures keep
    torchvision's paste exactly (parity); the demo model, whose held-out mask AP this was measured on (+0.02,
    +0.03 AP75), pastes where its targets were cut."""
    paste_mode: str = "torchvision"
    """How mask probabilities become frame pixels: "torchvision" (its integer-box arithmetic, kept by the COCO
    architectures for parity) or "subpixel" (:func:`paste_masks_subpixel`, exact to the float box)."""


def _torchvision_builder(fn):
    def build(num_classes: int, **kwargs):
        return fn(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)

    return build


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture(
            "maskrcnn_resnet50_fpn", _torchvision_builder(maskrcnn_resnet50_fpn),
            MaskRCNN_ResNet50_FPN_Weights.COCO_V1.url,
        ),
        Architecture(
            "maskrcnn_resnet50_fpn_v2", _torchvision_builder(maskrcnn_resnet50_fpn_v2),
            MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1.url,
        ),
        Architecture(DEMO_ARCH, build_demo_maskrcnn, None, paste_shift=0.5, paste_mode="subpixel"),
    )
}
ALIASES = {"v1": "maskrcnn_resnet50_fpn", "v2": "maskrcnn_resnet50_fpn_v2", "demo": DEMO_ARCH}
SHORT_NAMES = {name: alias for alias, name in ALIASES.items()}


@functools.cache
def _state_dict_keys(arch: Architecture) -> frozenset[str]:
    """The keys of ``arch``'s state dict (the same for every number of classes); built on the meta device: ~0.1 s."""
    with torch.device("meta"):
        return frozenset(arch.build(num_classes=2).state_dict())


def checkpoint_arch(checkpoint: Checkpoint) -> Architecture | None:
    """The architecture ``checkpoint`` records, else the one whose state-dict keys it has exactly (the three
    architectures differ in their keys: ResNet-10 vs ResNet-50 blocks, v2's normalized FPN and heads), else None."""
    if checkpoint.arch:
        recorded = ARCHITECTURES.get(ALIASES.get(checkpoint.arch, checkpoint.arch))
        if recorded is None:
            raise WeightsError(f"{checkpoint.origin}: records architecture {checkpoint.arch!r}, which this streamseg "
                               f"does not know (known: {', '.join(ARCHITECTURES)})")
        return recorded
    keys = set(checkpoint.state_dict)
    return next((a for a in ARCHITECTURES.values() if _state_dict_keys(a) == keys), None)


def resolve_arch(name: str, checkpoint: Checkpoint | None = None) -> Architecture:
    """Map a name, an alias or "auto" to an architecture. With a checkpoint, "auto" is the checkpoint's own
    architecture (:func:`checkpoint_arch`), and a named architecture the checkpoint is not is an error that says
    which one it is."""
    name = ALIASES.get(name, name)
    if name != "auto" and name not in ARCHITECTURES:
        known = ", ".join(sorted([*ARCHITECTURES, *ALIASES]))
        raise ConfigError(f"model.arch: unknown architecture {name!r} (known: auto, {known})")
    if checkpoint is None:
        return ARCHITECTURES[DEMO_ARCH if name == "auto" else name]
    found = checkpoint_arch(checkpoint)
    if name == "auto":
        if found is None:
            raise WeightsError(f"{checkpoint.origin}: cannot tell its architecture (its keys fit none of "
                               f"{', '.join(SHORT_NAMES.values())}); pass --arch")
        return found
    if found is not None and found.name != name:
        have, want = SHORT_NAMES[found.name], SHORT_NAMES[name]
        raise WeightsError(f"{checkpoint.origin} is a {have} checkpoint, not {want} (it does not fit {name}): "
                           f"use --arch {have}")
    return ARCHITECTURES[name]


def seeded_random_checkpoint(arch: Architecture, seed: int, num_classes: int = 91) -> Checkpoint:
    """An untrained model's weights, reproducible from ``seed``: for tests and benchmarks, never for results."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = arch.build(num_classes=num_classes)
    return Checkpoint(model.state_dict(), arch.name, COCO_CLASS_NAMES if num_classes == 91 else (), origin=f"random:{seed}")


def checkpoint_path(options: ModelOptions) -> Path:
    """The checkpoint file ``options`` point at (not for ``random`` weights; see :mod:`streamseg.models.weights` for
    the search order): the one place that decides, for the torch backend and for the ONNX export cache alike."""
    if options.weights is None and not os.environ.get(ENV_WEIGHTS) and resolve_arch(options.arch).name == DEMO_ARCH:
        if not DEMO_WEIGHTS.is_file():
            raise WeightsError(f"demo model weights missing: {DEMO_WEIGHTS} (python -m streamseg.training makes them)")
        return DEMO_WEIGHTS
    url = resolve_arch(options.arch).coco_url if options.arch != "auto" else None
    return find_weights(options.weights, options.arch, url)


def obtain_checkpoint(options: ModelOptions) -> Checkpoint:
    """Load the checkpoint ``options`` point at."""
    match = RANDOM_WEIGHTS.fullmatch(options.weights or "")
    if match:
        log.warning("using an UNTRAINED seeded random model (%s): detections are meaningless", options.weights)
        return seeded_random_checkpoint(resolve_arch(options.arch), int(match.group(1) or 0))
    return load_checkpoint(checkpoint_path(options))


def _misfit(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> str:
    """One line on how ``given`` differs from the ``expected`` state dict: counts, and the first key of each kind."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    resized = [k for k in expected if k in given and tuple(expected[k].shape) != tuple(given[k].shape)]
    parts = [f"{len(keys)} {what} (first: {keys[0]})"
             for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                ("keys of another shape", resized)) if keys]
    return ", ".join(parts)


class TorchMaskRCNN:
    """A torchvision Mask R-CNN behind the :class:`~streamseg.models.backend.Backend` interface.

    >>> backend = TorchMaskRCNN(ModelOptions(weights="random:0", min_size=320))  # doctest: +SKIP
    >>> [dets] = backend.predict([frame])  # doctest: +SKIP
    """

    name = "torch"

    def __init__(self, options: ModelOptions = ModelOptions(), checkpoint: Checkpoint | None = None):
        self.options = options
        checkpoint = checkpoint or obtain_checkpoint(options)
        self.arch = resolve_arch(options.arch, checkpoint)
        num_classes = checkpoint.num_classes
        self.class_names = checkpoint.class_names or (
            COCO_CLASS_NAMES if num_classes == len(COCO_CLASS_NAMES) else
            ("__background__", *(f"class_{i}" for i in range(1, num_classes)))
        )
        if len(self.class_names) != num_classes:
            raise WeightsError(
                f"{checkpoint.origin}: {len(self.class_names)} class names for {num_classes} classes"
            )
        self.keep_labels = class_filter(options.classes, self.class_names, checkpoint.origin)
        sizes = {
            "min_size": options.min_size,
            "max_size": options.max_size,
            "box_detections_per_img": options.max_detections,
            "rpn_post_nms_top_n_test": options.rpn_post_nms_top_n,
        }
        model = self.arch.build(
            num_classes=num_classes,
            box_score_thresh=options.score_threshold,
            **{k: v for k, v in sizes.items() if v is not None},  # None: the architecture's default
        )
        try:
            model.load_state_dict(checkpoint.state_dict)
        except RuntimeError as err:  # torch's message is one line per key
            raise WeightsError(f"{checkpoint.origin} does not fit {self.arch.name}: "
                               f"{_misfit(model.state_dict(), checkpoint.state_dict)}") from err
        self.device = torch.device(options.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise no_cuda_device(options.device)
        self.model = model.eval().to(self.device)
        self.origin = checkpoint.origin

    @torch.inference_mode()
    def predict(self, frames: Sequence[Frame]) -> list[Detections]:
        if not frames:
            return []
        images = [self._to_tensor(f.image) for f in frames]
        original_sizes = [(f.height, f.width) for f in frames]
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.options.fp16):
            raw = self._forward(images)
        return [self._to_detections(r, size) for r, size in zip(raw, original_sizes)]

    def _forward(self, images: list[torch.Tensor]) -> list[dict]:
        """torchvision's GeneralizedRCNN.forward for inference, minus its full-frame mask paste."""
        m = self.model
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        image_list, _ = m.transform(images)
        features = m.backbone(image_list.tensors)
        proposals, _ = m.rpn(image_list, features)
        detections, _ = m.roi_heads(features, proposals, image_list.image_sizes)
        for det, input_size, original in zip(detections, image_list.image_sizes, original_sizes):
            det["boxes"] = resize_boxes(det["boxes"], input_size, original)
            det["paste_shift"] = [self.arch.paste_shift * o / i for o, i in zip(original[::-1], input_size[::-1])]
        return detections

    def _to_tensor(self, image: np.ndarray) -> torch.Tensor:
        """uint8 HWC RGB -> float CHW in [0, 1] on the model's device (what torchvision's to_tensor gives)."""
        tensor = torch.from_numpy(image).to(self.device, non_blocking=True)
        return tensor.permute(2, 0, 1).float().div_(255.0)

    def _to_detections(self, raw: dict, image_size: tuple[int, int]) -> Detections:
        return to_detections(raw, image_size, self.class_names, self.keep_labels, self.arch.paste_shift,
                             self.options.mask_threshold, self.arch.paste_mode)

    def close(self) -> None:
        """Release the model (and its GPU memory) now rather than when the garbage collector gets to it."""
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def to_detections(
    raw: dict, image_size: tuple[int, int], class_names: tuple[str, ...], keep_labels: np.ndarray | None,
    paste_shift: float, mask_threshold: float, paste_mode: str = "torchvision",
) -> Detections:
    """torchvision-style per-image results (``boxes`` in frame pixels, ``scores``, ``labels``, ``masks``
    ``[N, 1, M, M]`` probabilities, ``paste_shift`` per axis) -> :class:`Detections` with compact pasted masks.
    Shared by every backend so that their masks are pasted by the same arithmetic."""
    boxes, scores, labels = raw["boxes"].float(), raw["scores"].float(), raw["labels"]
    probs = raw["masks"].float()
    if keep_labels is not None:
        keep = torch.from_numpy(np.isin(labels.cpu().numpy(), keep_labels)).to(boxes.device)
        boxes, scores, labels, probs = boxes[keep], scores[keep], labels[keep], probs[keep]
    paste_boxes = boxes + boxes.new_tensor(raw["paste_shift"] * 2) if paste_shift else boxes
    paste = PASTE_MODES.get(paste_mode)
    if paste is None:
        raise ConfigError(f"unknown mask paste mode {paste_mode!r}; known: {', '.join(PASTE_MODES)}")
    masks = paste(probs[:, 0], paste_boxes, image_size, mask_threshold)
    return Detections(boxes.cpu().numpy(), scores.cpu().numpy(), labels.cpu().numpy(), class_names, masks)


def paste_masks_compact(
    probs: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], threshold: float = 0.5, padding: int = 1
) -> InstanceMasks:
    """Paste ``(N, M, M)`` mask probabilities into their boxes and threshold them, keeping only the box crops.

    Same arithmetic as torchvision's ``paste_masks_in_image`` (pad the M x M mask by one cell, grow the box by
    (M+2)/M, truncate it to integers, bilinear resize to the integer box, clip to the image), so thresholding the
    result gives exactly torchvision's pixels.
    """
    height, width = image_size
    n = probs.shape[0]
    if n == 0:
        return InstanceMasks.empty(image_size)
    m = probs.shape[-1]
    scale = (m + 2 * padding) / m
    padded = F.pad(probs, (padding,) * 4)
    centers = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    half = (boxes[:, 2:] - boxes[:, :2]) * 0.5 * scale
    grown = torch.cat([centers - half, centers + half], dim=1).to(torch.int64).tolist()
    crops, origins = [], []
    for i, (x0, y0, x1, y1) in enumerate(grown):
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        xs, ys = max(x0, 0), max(y0, 0)
        xe, ye = min(x1 + 1, width), min(y1 + 1, height)
        if xe <= xs or ye <= ys:
            crops.append(np.zeros((0, 0), bool))
            origins.append((min(xs, width), min(ys, height)))
            continue
        resized = F.interpolate(padded[i][None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        crop = resized[ys - y0 : ye - y0, xs - x0 : xe - x0] > threshold
        crops.append(crop.cpu().numpy())
        origins.append((xs, ys))
    return InstanceMasks(crops, np.array(origins, np.int32), (height, width))


def paste_masks_subpixel(
    probs: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], threshold: float = 0.5
) -> InstanceMasks:
    """Paste ``(N, M, M)`` mask probabilities into their float boxes and threshold them, keeping only box crops.

    Each frame pixel takes the bilinear sample of the M x M grid at its own centre, mapped through the float box
    (cell i covers ``x0 + [i, i+1) * w / M``; zero outside the grid). torchvision instead truncates the grown box
    to integers and stretches the mask over one extra pixel, which moves edges by up to a pixel: nothing on big
    COCO objects, but a large share of a 20-pixel object's IoU. On the demo model (seeds 900-905) this paste lifts
    mask AP from 0.593 to 0.615 and mask AP75 from 0.562 to 0.639, with boxes unchanged.
    """
    height, width = image_size
    if probs.shape[0] == 0:
        return InstanceMasks.empty(image_size)
    m = probs.shape[-1]
    probs = probs.float()
    crops, origins = [], []
    for grid_probs, (x0, y0, x1, y1) in zip(probs, boxes.float().tolist()):
        box_w, box_h = max(x1 - x0, 1e-3), max(y1 - y0, 1e-3)
        # bilinear sampling reaches one cell past the box edge (fading to zero), so a threshold below 0.5 can too
        xs, xe = max(math.floor(x0 - box_w / m), 0), min(math.ceil(x1 + box_w / m), width)
        ys, ye = max(math.floor(y0 - box_h / m), 0), min(math.ceil(y1 + box_h / m), height)
        if xe <= xs or ye <= ys:
            crops.append(np.zeros((0, 0), bool))
            origins.append((min(xs, width), min(ys, height)))
            continue
        # grid_sample's align_corners=False maps -1/+1 to the outer edges of the grid, i.e. to the box edges
        gx = (torch.arange(xs, xe, dtype=torch.float32, device=probs.device) + 0.5 - x0) * (2.0 / box_w) - 1.0
        gy = (torch.arange(ys, ye, dtype=torch.float32, device=probs.device) + 0.5 - y0) * (2.0 / box_h) - 1.0
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None]
        sampled = F.grid_sample(grid_probs[None, None], grid, mode="bilinear", padding_mode="zeros",
                                align_corners=False)[0, 0]
        crops.append((sampled > threshold).cpu().numpy())
        origins.append((xs, ys))
    return InstanceMasks(crops, np.array(origins, np.int32), (height, width))


PASTE_MODES: dict[str, Callable[..., InstanceMasks]] = {
    "torchvision": paste_masks_compact,
    "subpixel": paste_masks_subpixel,
}
