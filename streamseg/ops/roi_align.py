"""Multi-level RoIAlign: the op every export flavour and engine implements, and its CPU reference.

Contract (../shared/GUIDE.md section 4; ONNX node ``streamseg::MultiLevelRoIAlign``; TensorRT plugin of the same
name): ``rois`` float ``[R, 5]`` rows ``(batch_index, x1, y1, x2, y2)`` in input-image pixels, then the L feature
maps ``[N, C, H_l, W_l]`` finest first; output ``[R, C, output_height, output_width]`` in the order of ``rois``.
Attributes are named as mmdeploy's ``MMCVMultiLevelRoiAlign``: output_height, output_width, sampling_ratio,
pool_mode (1 = avg; 0 = max is not implemented), aligned, featmap_strides, finest_scale, roi_scale_factor.

Each RoI goes to one level, chosen exactly as torchvision's ``MultiScaleRoIAlign`` (``LevelMapper``) chooses it, in
float32 and in the same operation order: ``k = floor(k0 + log2(sqrt(area) / s0) + 1e-6)`` clamped to the pyramid,
with ``s0 = 4 * finest_scale`` (224 for finest_scale 56) and ``k0 = log2(featmap_strides[0]) + 2``. mmdeploy's own
formula ``floor(log2(sqrt(area) / finest_scale + 1e-6))`` puts the epsilon inside the logarithm, which moves the
boundary by ~1e-4 px at sqrt(area) = 112: a RoI there would be pooled from another level than torchvision pools it
from, so we follow torchvision (see :func:`level_of` and its boundary test).

The reference implementation runs ``torchvision.ops.roi_align`` once per level on that level's RoIs. It is also
registered as the torch custom op ``torch.ops.streamseg.multi_level_roi_align`` (the export traces it into one
ONNX node); ONNX Runtime runs the node as standard ops (:func:`streamseg.models.onnx_graph.expand_fused`).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torchvision.ops import roi_align

DOMAIN = "streamseg"
OP_TYPE = "MultiLevelRoIAlign"
TORCH_OP = "streamseg::multi_level_roi_align"
LEVEL_EPS = 1e-6
"""torchvision's LevelMapper epsilon, added outside the logarithm."""
POOL_AVG = 1


def scale_rois(rois: torch.Tensor, roi_scale_factor: float) -> torch.Tensor:
    """Grow (or shrink) each box about its centre by ``roi_scale_factor`` (mmdeploy's attribute; 1.0 is a no-op)."""
    if roi_scale_factor == 1.0:
        return rois
    centre = (rois[:, 1:3] + rois[:, 3:5]) * 0.5
    half = (rois[:, 3:5] - rois[:, 1:3]) * (0.5 * roi_scale_factor)
    return torch.cat([rois[:, :1], centre - half, centre + half], dim=1)


def level_of(rois: torch.Tensor, num_levels: int, finest_scale: int = 56, finest_stride: float = 4.0) -> torch.Tensor:
    """Pyramid level index in ``[0, num_levels)`` of each RoI ``[R, 5]`` (or box ``[R, 4]``), as torchvision picks it.

    Same float32 operations as ``torchvision.ops.poolers.LevelMapper``: sqrt of the box area, log2 of its ratio to
    ``s0 = 4 * finest_scale``, plus ``k0``, plus 1e-6, floor, clamp.
    """
    boxes = rois[:, -4:].float()
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    k_min = math.log2(finest_stride)
    k0 = k_min + 2  # torchvision: canonical level 4 for stride-4 P2, canonical scale 224 = 4 * 56
    s0 = 4.0 * finest_scale
    scale = torch.sqrt(area)
    target = torch.floor(k0 + torch.log2(scale / s0) + LEVEL_EPS)  # a Python float is added in float32
    target = torch.clamp(target, min=k_min, max=k_min + num_levels - 1)
    return (target.to(torch.int64) - int(k_min)).to(torch.int64)


def check_attributes(num_levels: int, featmap_strides: Sequence[float], pool_mode: int, finest_scale: int) -> None:
    if len(featmap_strides) != num_levels:
        raise ValueError(f"featmap_strides: {len(featmap_strides)} strides for {num_levels} feature maps")
    if num_levels < 1:
        raise ValueError("multi_level_roi_align needs at least one feature map")
    if pool_mode != POOL_AVG:
        raise ValueError(f"pool_mode: only 1 (avg, what torchvision's RoIAlign computes) is implemented, got {pool_mode}")
    if finest_scale <= 0:
        raise ValueError(f"finest_scale: expected > 0, got {finest_scale}")


def multi_level_roi_align_reference(
    rois: torch.Tensor,
    features: Sequence[torch.Tensor],
    output_height: int,
    output_width: int,
    sampling_ratio: int = 2,
    pool_mode: int = POOL_AVG,
    aligned: int = 0,
    featmap_strides: Sequence[float] = (4.0, 8.0, 16.0, 32.0),
    finest_scale: int = 56,
    roi_scale_factor: float = 1.0,
) -> torch.Tensor:
    """CPU (or any device) reference: ``[R, 5]`` rois + L maps -> ``[R, C, output_height, output_width]``.

    Zero RoIs give a ``[0, C, oh, ow]`` tensor without touching the feature maps.
    """
    check_attributes(len(features), featmap_strides, pool_mode, finest_scale)
    first = features[0]
    out = first.new_zeros((rois.shape[0], first.shape[1], output_height, output_width))
    if rois.shape[0] == 0:
        return out
    rois = scale_rois(rois.to(first.dtype), roi_scale_factor)
    levels = level_of(rois, len(features), finest_scale, float(featmap_strides[0]))
    for level, (feature, stride) in enumerate(zip(features, featmap_strides)):
        index = torch.nonzero(levels == level).squeeze(1)
        if index.numel() == 0:
            continue
        out[index] = roi_align(
            feature, rois[index], (output_height, output_width), spatial_scale=1.0 / float(stride),
            sampling_ratio=sampling_ratio, aligned=bool(aligned),
        ).to(out.dtype)
    return out


@torch.library.custom_op(TORCH_OP, mutates_args=())
def multi_level_roi_align(
    rois: torch.Tensor,
    features: list[torch.Tensor],
    output_height: int,
    output_width: int,
    sampling_ratio: int,
    pool_mode: int,
    aligned: int,
    featmap_strides: list[float],
    finest_scale: int,
    roi_scale_factor: float,
) -> torch.Tensor:
    """The registered torch op (``torch.ops.streamseg.multi_level_roi_align``); computes the reference."""
    return multi_level_roi_align_reference(
        rois, features, output_height, output_width, sampling_ratio, pool_mode, aligned, featmap_strides,
        finest_scale, roi_scale_factor,
    )


@multi_level_roi_align.register_fake
def _(rois, features, output_height, output_width, sampling_ratio, pool_mode, aligned, featmap_strides,
      finest_scale, roi_scale_factor):
    return features[0].new_empty((rois.shape[0], features[0].shape[1], output_height, output_width))
