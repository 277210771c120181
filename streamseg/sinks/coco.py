"""COCO results JSON for image sources, ready for ``COCO.loadRes`` and ``COCOeval``.

The file is a JSON list with one object per detection::

    {"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score": float,
     "segmentation": {"size": [H, W], "counts": str}}

``category_id`` is the detection's label (torchvision COCO models use COCO category ids as labels), ``bbox`` is
in pixels (top-left corner, width, height; 0.01 px precision) and ``segmentation`` a compressed RLE over the full
image, present only when the model produced masks. The results are kept in memory and written at ``close`` to a
temporary file that replaces ``path`` atomically: a reader never sees half a file. With no detections the file
is ``[]`` (valid JSON; note that pycocotools' ``loadRes`` itself refuses an empty list).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Mapping

from streamseg.ops.masks import masks_to_rle
from streamseg.sinks.base import Sink
from streamseg.types import Detections, FrameResult, SourceInfo

__all__ = ["CocoResultsSink", "coco_image_id_from_filename", "coco_results"]


class CocoResultsSink(Sink):
    """Collects COCO results; ``image_ids(frame.index) -> image_id`` maps frames to COCO ids (default: index)."""

    def __init__(
        self, path: str | os.PathLike, info: SourceInfo, *, image_ids: Callable[[int], int] | None = None
    ):
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"CocoResultsSink: folder {str(self.path.parent)!r} does not exist")
        self.info = info
        self.image_ids = image_ids if image_ids is not None else (lambda index: index)
        self.results: list[dict] = []
        self._closed = False

    def write(self, result: FrameResult) -> None:
        if self._closed:
            raise ValueError(f"write to closed CocoResultsSink({self.path})")
        self.results.extend(coco_results(result.detections, int(self.image_ids(result.frame.index))))

    def close(self) -> None:
        """Write all results atomically (temporary file in the same folder, then ``os.replace``)."""
        if self._closed:
            return
        self._closed = True
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o644)  # mkstemp makes it private; results are ordinary output files
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(self.results, file, allow_nan=False, separators=(",", ":"))
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def coco_results(dets: Detections, image_id: int, category_ids: Mapping[int, int] | None = None) -> list[dict]:
    """COCO result records for one image. ``category_ids`` maps model labels to dataset category ids (labels
    missing from it are dropped); None uses labels as category ids."""
    rles = masks_to_rle(dets.masks) if dets.masks is not None else None
    records = []
    for i in range(len(dets)):
        label = int(dets.labels[i])
        if category_ids is not None and label not in category_ids:
            continue
        x1, y1, x2, y2 = (float(v) for v in dets.boxes[i])
        item = {
            "image_id": image_id,
            "category_id": label if category_ids is None else category_ids[label],
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
            "score": round(float(dets.scores[i]), 5),
        }
        if rles is not None:
            item["segmentation"] = rles[i]
        records.append(item)
    return records


def coco_image_id_from_filename(path: str | os.PathLike) -> int:
    """COCO image id from a file named by its number: ``val2017/000000000139.jpg`` -> ``139``."""
    stem = Path(path).stem
    match = re.fullmatch(r"(?:COCO_[a-z]+\d*_)?(\d+)", stem)  # also 2014-style COCO_val2014_000000000139
    if match is None:
        raise ValueError(f"expected a numeric file name such as 000000000139.jpg, got {Path(path).name!r}")
    return int(match.group(1))
