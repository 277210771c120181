"""A chunk's model results as one self-describing file: what workers hand to the driver.

The format is NumPy's ``.npz`` without pickles (``allow_pickle=False``): plain arrays that load safely whoever
wrote them, and bytes that travel through Ray's object store unchanged when the nodes share no filesystem. Boxes
and scores keep their float32 bits, so tracking on the driver sees exactly what the model produced (the JSONL's
rounded numbers would not do: the tracker's matches could differ from a local run's).

Images are not kept: a result's frame carries a read-only zero-stride placeholder of the right size, enough for
every output but the annotated video, which workers draw on frames they decode again.
"""

from __future__ import annotations

import io
import os
from fractions import Fraction
from typing import Sequence

import numpy as np

from streamseg.types import Detections, Frame, FrameResult, InstanceMasks

_NO_PTS = np.iinfo(np.int64).min


def placeholder_image(height: int, width: int) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 array that takes no memory (every pixel is the same byte)."""
    return np.broadcast_to(np.zeros(1, np.uint8), (height, width, 3))


def pack(results: Sequence[FrameResult], error: str | None = None, skipped: Sequence[str] = ()) -> bytes:
    """``results`` (model output, before tracking) as ``.npz`` bytes, with what came with them: the source error
    that ended them (a damaged file) and the unreadable images left out. One file holds it all, so its presence
    alone records the item as done."""
    frames = [r.frame for r in results]
    dets = [r.detections for r in results]
    counts = np.array([len(d) for d in dets], np.int64)
    with_masks = np.array([d.masks is not None for d in dets], bool)
    crops = [c for d in dets if d.masks is not None for c in d.masks.crops]
    arrays = {
        "index": np.array([f.index for f in frames], np.int64),
        "time": np.array([f.time for f in frames], np.float64),
        "pts": np.array([_NO_PTS if f.pts is None else f.pts for f in frames], np.int64),
        "time_base": np.array([_fraction(f.time_base) for f in frames], np.int64).reshape(-1, 2),
        "capture_time": np.array([f.capture_time for f in frames], np.float64),
        "size": np.array([(f.height, f.width) for f in frames], np.int64).reshape(-1, 2),
        "counts": counts,
        "with_masks": with_masks,
        "predicted": np.array([r.predicted for r in results], bool),
        "boxes": _concat([d.boxes for d in dets], (0, 4), np.float32),
        "scores": _concat([d.scores for d in dets], (0,), np.float32),
        "labels": _concat([d.labels for d in dets], (0,), np.int64),
        "origins": _concat([d.masks.origins for d in dets if d.masks is not None], (0, 2), np.int32),
        "mask_sizes": np.array([d.masks.image_size for d in dets if d.masks is not None], np.int64).reshape(-1, 2),
        "crop_shapes": np.array([c.shape for c in crops], np.int64).reshape(-1, 2),
        "crop_bits": np.packbits(np.concatenate([c.ravel() for c in crops])) if crops else np.zeros(0, np.uint8),
        "class_names": np.array(dets[0].class_names if dets else (), dtype=str),
        "error": np.array([error] if error else [], dtype=str),
        "skipped": np.array(list(skipped), dtype=str),
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def unpack(data: bytes, source_id: str) -> list[FrameResult]:
    """The results :func:`pack` stored, frames named ``source_id`` with placeholder images."""
    with np.load(io.BytesIO(data), allow_pickle=False) as stored:
        a = {name: stored[name] for name in stored.files}
    class_names = tuple(str(name) for name in a["class_names"])
    bits = np.unpackbits(a["crop_bits"]).astype(bool)
    ends = np.cumsum(a["counts"])
    results, crop, bit, masked = [], 0, 0, 0
    for i, end in enumerate(ends):
        start = end - a["counts"][i]
        masks = None
        if a["with_masks"][i]:
            crops, count = [], int(a["counts"][i])
            for shape in a["crop_shapes"][crop : crop + count]:
                size = int(shape[0] * shape[1])
                crops.append(bits[bit : bit + size].reshape(shape))
                bit += size
            masks = InstanceMasks(crops, a["origins"][crop : crop + count], tuple(a["mask_sizes"][masked]))
            crop, masked = crop + count, masked + 1
        height, width = (int(v) for v in a["size"][i])
        pts = int(a["pts"][i])
        num, den = (int(v) for v in a["time_base"][i])
        frame = Frame(placeholder_image(height, width), source_id, int(a["index"][i]), float(a["time"][i]),
                      None if pts == _NO_PTS else pts, Fraction(num, den) if den else None,
                      float(a["capture_time"][i]))
        detections = Detections(a["boxes"][start:end], a["scores"][start:end], a["labels"][start:end],
                                class_names, masks)
        results.append(FrameResult(frame, detections, predicted=bool(a["predicted"][i])))
    return results


def read_notes(path: str | os.PathLike) -> tuple[str | None, list[str]]:
    """The source error and skipped images stored with an item's results (see :func:`pack`)."""
    with np.load(path, allow_pickle=False) as stored:
        error = [str(e) for e in stored["error"]]
        return (error[0] if error else None), [str(name) for name in stored["skipped"]]


def _fraction(value) -> tuple[int, int]:
    if value is None:
        return (0, 0)
    value = Fraction(value)
    return (value.numerator, value.denominator)


def _concat(parts: list[np.ndarray], empty_shape: tuple[int, ...], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(empty_shape, dtype)
