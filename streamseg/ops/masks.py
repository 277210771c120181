"""Conversions between :class:`~streamseg.types.InstanceMasks` and COCO run-length encoding (RLE).

COCO RLE is the interchange format of every mask this project writes (JSONL, COCO results). It always describes
the FULL image, column-major, so each mask is pasted into one reused Fortran-order ``(H, W)`` uint8 buffer before
pycocotools encodes it: memory stays at one frame whatever the number of instances.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
from pycocotools import mask as mask_utils

from streamseg.types import InstanceMasks

__all__ = ["masks_to_rle", "rle_to_masks"]


def masks_to_rle(masks: InstanceMasks) -> list[dict]:
    """Encode each mask as a COCO compressed RLE ``{"size": [H, W], "counts": str}`` over the full image.

    ``counts`` is an ASCII ``str`` (JSON-ready; pycocotools accepts it back as is). An empty mask encodes as an
    all-background RLE of the same size, so the output has exactly ``len(masks)`` entries, in order.
    """
    height, width = masks.image_size
    canvas = np.zeros((height, width), dtype=np.uint8, order="F")
    rles = []
    previous = None  # the slice written last: clearing only it keeps the loop free of full-frame work
    for crop, (x0, y0) in zip(masks.crops, masks.origins):
        if previous is not None:
            canvas[previous] = 0
        previous = (slice(int(y0), int(y0) + crop.shape[0]), slice(int(x0), int(x0) + crop.shape[1]))
        canvas[previous] = crop
        rle = mask_utils.encode(canvas)
        rles.append({"size": [int(height), int(width)], "counts": rle["counts"].decode("ascii")})
    return rles


def rle_to_masks(rles: Iterable[Mapping], image_size: tuple[int, int]) -> InstanceMasks:
    """Decode COCO RLEs (compressed ``counts`` as str/bytes, or uncompressed lists) into cropped masks.

    Every RLE must have ``size == image_size`` (``(H, W)``); masks are decoded and cropped one at a time.
    """
    height, width = int(image_size[0]), int(image_size[1])
    crops, origins = [], []
    for i, rle in enumerate(rles):
        size = [int(v) for v in rle["size"]]
        if size != [height, width]:
            raise ValueError(f"rles[{i}]: size {size} does not match image_size {[height, width]}")
        counts = rle["counts"]
        if isinstance(counts, list):  # uncompressed (e.g. COCO iscrowd annotations)
            rle = mask_utils.frPyObjects(dict(rle), height, width)
        elif isinstance(counts, str):
            rle = {"size": size, "counts": counts.encode("ascii")}
        one = InstanceMasks.from_dense(mask_utils.decode(rle)[None].astype(bool, copy=False))
        crops.append(one.crops[0])
        origins.append(one.origins[0])
    return InstanceMasks(crops, np.array(origins, np.int32).reshape(-1, 2), (height, width))
