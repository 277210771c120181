"""Accuracy of a model: box and mask AP with pycocotools on a COCO-format dataset or on generated scenes.

Model labels are mapped to dataset categories by class name, so a model and a dataset with different label
orders (or a COCO model on a subset) are scored correctly; detections of classes the dataset lacks are ignored.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from streamseg.errors import SourceError
from streamseg.models import Backend
from streamseg.ops.masks import masks_to_rle
from streamseg.sinks.coco import coco_results
from streamseg.types import Frame, InstanceMasks

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@dataclass
class APReport:
    images: int
    instances: int
    bbox: dict[str, float]
    segm: dict[str, float]

    def table(self) -> str:
        lines = [f"images {self.images}, ground-truth instances {self.instances}",
                 f"{'':6s}" + "".join(f"{name:>8s}" for name in STAT_NAMES)]
        for kind in ("bbox", "segm"):
            stats = getattr(self, kind)
            lines.append(f"{kind:6s}" + "".join(f"{stats[name]:8.3f}" for name in STAT_NAMES))
        return "\n".join(lines)


def category_map(backend: Backend, gt: COCO) -> dict[int, int]:
    by_name = {cat["name"]: cat_id for cat_id, cat in gt.cats.items()}
    return {label: by_name[name] for label, name in enumerate(backend.class_names) if name in by_name}


def score(gt: COCO, results: list[dict]) -> APReport:
    """Run COCOeval for boxes and masks; pycocotools' printed tables are captured, not shown."""
    stats = {}
    for kind in ("bbox", "segm"):
        if not results:
            stats[kind] = dict.fromkeys(STAT_NAMES, 0.0)
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator = COCOeval(gt, gt.loadRes(results), kind)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        stats[kind] = {name: max(0.0, float(v)) for name, v in zip(STAT_NAMES, evaluator.stats)}
    return APReport(len(gt.imgs), len(gt.anns), stats["bbox"], stats["segm"])


def evaluate_coco(backend: Backend, annotations: Path, images: Path, limit: int | None = None) -> APReport:
    """AP of ``backend`` on a COCO dataset (``annotations`` json, ``images`` folder holding its file names)."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotations))
    ids = sorted(gt.imgs)[:limit]
    if limit is not None:
        gt = _subset(gt, ids)
    mapping = category_map(backend, gt)
    results = []
    for index, image_id in enumerate(ids):
        path = images / gt.imgs[image_id]["file_name"]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise SourceError(f"{path}: cannot read image listed in {annotations}")
        frame = Frame(np.ascontiguousarray(image[:, :, ::-1]), images.name, index, float(index))
        results += coco_results(backend.predict([frame])[0], image_id, mapping)
    return score(gt, results)


def _subset(gt: COCO, ids: Sequence[int]) -> COCO:
    keep = set(ids)
    data = {"images": [gt.imgs[i] for i in ids], "categories": list(gt.cats.values()),
            "annotations": [a for a in gt.anns.values() if a["image_id"] in keep]}
    return coco_from_dict(data)


def coco_from_dict(data: dict) -> COCO:
    gt = COCO()
    gt.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def scene_frames_to_coco(samples: Iterable[tuple[np.ndarray, InstanceMasks, np.ndarray]],
                         class_names: Sequence[str]) -> tuple[COCO, list[np.ndarray]]:
    """Ground truth for evaluation from (image, masks, labels) triples; returns the COCO index and the images."""
    images, annotations = [], []
    pictures = []
    for image_id, (image, masks, labels) in enumerate(samples, start=1):
        height, width = image.shape[:2]
        images.append({"id": image_id, "width": width, "height": height, "file_name": f"{image_id:06d}"})
        pictures.append(image)
        for rle, label, crop, (x0, y0) in zip(masks_to_rle(masks), labels, masks.crops, masks.origins):
            rows, cols = np.nonzero(crop)
            bbox = [float(x0 + cols.min()), float(y0 + rows.min()),
                    float(cols.max() - cols.min() + 1), float(rows.max() - rows.min() + 1)]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                                "segmentation": rle, "area": float(crop.sum()), "bbox": bbox, "iscrowd": 0})
    categories = [{"id": i, "name": name} for i, name in enumerate(class_names) if i > 0]
    return coco_from_dict({"images": images, "annotations": annotations, "categories": categories}), pictures


def evaluate_scenes(backend: Backend, scenes: int, first_seed: int = 0, frames_per_scene: int = 20,
                    config=None) -> APReport:
    """AP on generated held-out scenes: ``scenes`` seeds from ``first_seed`` (training uses seeds >= 1000),
    ``frames_per_scene`` frames each, spread over a 10-second scene so that objects enter, cross and leave."""
    from dataclasses import replace

    from streamseg.scenes import Scene, SceneConfig

    config = config or SceneConfig()
    total = max(frames_per_scene, int(config.fps * 10))
    step = max(1, total // frames_per_scene)
    samples, frames = [], []
    for seed in range(first_seed, first_seed + scenes):
        scene = Scene(replace(config, seed=seed, frames=total))
        for index in range(0, total, step)[:frames_per_scene]:
            scene_frame = scene.render(index)
            truth = scene.ground_truth_detections(scene_frame)
            samples.append((scene_frame.image, truth.masks, truth.labels))
            frames.append(Frame(scene_frame.image, f"scene{seed}", scene_frame.index, scene_frame.time))
    gt, _ = scene_frames_to_coco(samples, scene.class_names)
    mapping = category_map(backend, gt)
    results = []
    for image_id, frame in enumerate(frames, start=1):
        results += coco_results(backend.predict([frame])[0], image_id, mapping)
    return score(gt, results)
