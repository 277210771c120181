"""Accuracy of a model: box and mask AP with pycocotools on a COCO-format dataset or on generated scenes; and
tracking (MOTA, IDF1) and event precision / recall on generated scenes (:func:`evaluate_scene_events`).

Model labels are mapped to dataset categories by class name, so a model and a dataset with different label
orders (or a COCO model on a subset) are scored correctly; detections of classes the dataset lacks are ignored.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import cv2
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from streamseg.errors import ConfigError, SourceError
from streamseg.models import Backend
from streamseg.ops.masks import masks_to_rle
from streamseg.sinks.coco import coco_results
from streamseg.types import Detections, Frame, FrameResult, InstanceMasks, SourceInfo

if TYPE_CHECKING:
    from streamseg.events import EventScores
    from streamseg.scenes import Scene, SceneFrame
    from streamseg.tracking import MotScores

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


# ---------------------------------------------------------------------------------- tracking and events on scenes
# Runs detections -> tracker -> event rules on generated scenes and scores both against the scenes' exact ground
# truth: MOTA / IDF1 (streamseg.tracking.metrics, IoU >= 0.5 on the visible boxes, the scene's gt.txt) and event
# precision / recall per kind (streamseg.events.scoring: same kind, zone or line and direction, within 0.5 s,
# one-to-one). The rules are the scene's own zone and line with the ground truth's semantics
# (streamseg.scenes.events); tracks are the tracker's back-filled history (what a pipeline's tracks.txt holds),
# events come from its live output frame by frame (what a pipeline's events.jsonl holds).

SceneDetector = Callable[["Scene", "SceneFrame"], Detections]
"""``(scene, scene_frame) -> Detections``: what :func:`evaluate_scene_events` runs on each frame."""

EVENT_KINDS = ("enter", "exit", "cross")

SCENE_TRACKER = {"max_distance": 0.9, "max_distance_tentative": 0.95}
"""TrackerConfig settings for generated scenes (the rest default). Scenes run at 10 frames/s, where a narrow fast
object (a cyclist's rider, 23 px wide, 17 px per frame) overlaps its previous box by IoU ~0.15: under the default
``max_distance_tentative`` 0.7 (IoU >= 0.3) its tentative tracks die every frame and it is never confirmed. With
the ground-truth oracle on seeds 0-5 (300 frames) these settings raise MOTA / IDF1 from 0.939 / 0.858 to
0.980 / 0.928 and crossing recall from 0.83 to 0.94 (0.94 to 1.0 with ``occlusion_hold``)."""


@dataclass
class SceneEventsReport:
    scenes: int
    frames: int
    mot: "MotScores"
    events: dict[str, "EventScores"]
    """Per kind (``enter``, ``exit``, ``cross``) and ``all``, summed over the scenes."""
    detector: str = ""
    detect_interval: int = 1
    """The model ran on every N-th frame; the tracker predicted the others (``model.detect_interval``)."""
    model_seconds: float = 0.0
    """Seconds spent in the detector."""
    seconds: float = 0.0
    """Seconds spent in the detector, the tracker and the rules (scene rendering and scoring not counted)."""
    model_frames: int = 0
    """Frames the detector ran on."""
    mask_ap: float | None = None
    """COCO mask AP of every output frame's detections (predicted ones with their moved masks) against the scenes'
    ground-truth masks; None for a detector without masks (the oracle)."""

    def table(self) -> str:
        m = self.mot
        fps = self.frames / self.seconds if self.seconds > 0 else float("inf")
        mask_ap = "n/a (no masks)" if self.mask_ap is None else f"{self.mask_ap:.4f}"
        lines = [f"{self.scenes} scenes, {self.frames} frames, detector: {self.detector}; detect_interval "
                 f"{self.detect_interval}: model on {self.model_frames} frames, {self.model_seconds:.1f} s in it, "
                 f"{fps:.1f} frames/s (model + tracker + rules)",
                 f"tracking  MOTA {m.mota:.4f}  IDF1 {m.idf1:.4f}  MOTP {m.motp:.4f}  IDsw {m.num_switches}  "
                 f"FP {m.num_false_positives}  FN {m.num_misses}  gt boxes {m.num_objects}  mask AP {mask_ap}",
                 f"{'events':10s}{'precision':>10s}{'recall':>10s}{'matched':>9s}{'predicted':>11s}{'truth':>7s}"]
        for kind in (*EVENT_KINDS, "all"):
            s = self.events.get(kind)
            if s is not None:
                lines.append(f"{kind:10s}{s.precision:10.3f}{s.recall:10.3f}{s.true_positives:9d}{s.predicted:11d}"
                             f"{s.truth:7d}")
        return "\n".join(lines)


def ground_truth_detector(drop: float = 0.0, jitter: float = 0.0, seed: int = 0) -> SceneDetector:
    """An oracle: each frame's ground-truth boxes and labels as detections (score 1, no masks, NO track ids: the
    tracker must find them). ``drop``: probability that a box is left out; ``jitter``: standard deviation of the
    Gaussian noise added to each coordinate, as a fraction of the box's width (x) or height (y). Deterministic
    for a given ``seed``."""
    if not 0.0 <= drop <= 1.0 or jitter < 0:
        raise ConfigError(f"ground_truth_detector: drop must be in [0, 1] and jitter >= 0, got {drop}, {jitter}")
    rng = np.random.default_rng(seed)

    def detect(scene, scene_frame):
        truth = scene.ground_truth_detections(scene_frame)
        boxes = truth.boxes.astype(np.float64)
        if jitter > 0 and len(boxes):
            width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
            boxes = boxes + rng.normal(0.0, jitter, boxes.shape) * np.stack([width, height, width, height], 1)
            boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1.0)
        keep = rng.random(len(boxes)) >= drop if drop > 0 else np.ones(len(boxes), bool)
        return Detections(boxes[keep], truth.scores[keep], truth.labels[keep], truth.class_names)

    detect.__name__ = f"ground truth (drop {drop:g}, jitter {jitter:g})"
    return detect


def backend_detector(backend: Backend) -> SceneDetector:
    """A model as a scene detector: it sees the rendered pixels."""

    def detect(scene, scene_frame):
        frame = Frame(scene_frame.image, f"scene{scene.config.seed}", scene_frame.index, scene_frame.time)
        return backend.predict([frame])[0]

    detect.__name__ = f"model {getattr(backend, 'name', '?')} ({getattr(backend, 'origin', '?')})"
    return detect


def evaluate_scene_events(detector: Backend | SceneDetector, scenes: int = 1, first_seed: int = 0,
                          frames: int = 300, *, config=None, tracker=None, min_frames: int = 1,
                          occlusion_hold: float = 1.0, tolerance: float = 0.5,
                          detect_interval: int = 1) -> SceneEventsReport:
    """Track and detect events on ``scenes`` generated scenes (seeds from ``first_seed``, ``frames`` frames each)
    and score them against the ground truth (see the comment above). ``detector``: a backend (sees the pixels) or a
    :data:`SceneDetector` such as :func:`ground_truth_detector`; ``config``: a ``SceneConfig`` (its zone and line
    are the rules'); ``tracker``: a ``TrackerConfig`` (default :data:`SCENE_TRACKER`); ``min_frames``: the rules' (see
    :mod:`streamseg.events.rules`); ``occlusion_hold``: seconds, 0 for off (:mod:`streamseg.events.occlusion`);
    ``detect_interval``: the detector runs on every N-th frame only, the tracker predicts the others, as
    ``model.detect_interval`` does in a pipeline."""
    import time as clock
    from dataclasses import replace

    from streamseg.config import PipelineConfig, TrackerOptions
    from streamseg.models import ModelOptions
    from streamseg.events import EventsConfig, LineConfig, TimedEvent, ZoneConfig, match_events
    from streamseg.scenes import Scene, SceneConfig, zone_line_events
    from streamseg.stream import StreamProcessor
    from streamseg.tracking import MotRows, TrackerConfig, evaluate_mot, summarize

    if hasattr(detector, "predict"):
        detector = backend_detector(detector)
    config = config or SceneConfig()
    tracker = tracker if tracker is not None else TrackerConfig(**SCENE_TRACKER)
    mot_scores, event_scores, total_frames = [], {}, 0
    model_seconds = seconds = 0.0
    model_frames = 0
    mask_truth, mask_results, with_masks = [], [], True
    for seed in range(first_seed, first_seed + scenes):
        scene = Scene(replace(config, seed=seed, frames=frames))
        cfg = scene.config
        rules = EventsConfig(zones=(ZoneConfig("zone", cfg.zone, min_frames=min_frames),),
                             lines=(LineConfig("line", cfg.line, min_frames=min_frames),),
                             occlusion_hold=occlusion_hold)
        # the same per-stream processing as a pipeline's (tracker lookahead, rules on confirmed tracks), no outputs
        pipeline = PipelineConfig(tracker=TrackerOptions(True, tracker), events=rules,
                                  model=ModelOptions(detect_interval=detect_interval))
        info = SourceInfo(f"scene{seed}", f"scene:{seed}", cfg.width, cfg.height, fps=None, time_base=None,
                          frame_count=len(scene), duration=None)
        stream = StreamProcessor(pipeline, info, scene.class_names, None, log_events=False)
        gt_rows, samples, predicted = [], [], []
        first_image = len(mask_truth) + 1  # COCO image id of this scene's frame 0
        by_name = {name: i for i, name in enumerate(scene.class_names) if i > 0}  # scene_frames_to_coco's ids
        blank = np.broadcast_to(np.zeros(1, np.uint8), (cfg.height, cfg.width, 3))  # only its shape is read

        def outputs(ready_results):
            nonlocal with_masks
            for ready in ready_results:
                predicted.extend(ready.events)
                with_masks = with_masks and ready.detections.masks is not None
                if with_masks:
                    names = ready.detections.class_names
                    labels = {i: by_name[n] for i, n in enumerate(names) if n in by_name}
                    mask_results.extend(coco_results(ready.detections, first_image + ready.frame.index, labels))

        for scene_frame in scene:
            index, time = scene_frame.index, scene_frame.time
            truth = scene.ground_truth_detections(scene_frame)
            gt_rows.append(MotRows.from_detections(index, truth))
            mask_truth.append((blank, truth.masks, truth.labels))
            samples.append((index, time, [_Anchored(i) for i in scene_frame.instances]))
            frame = Frame(scene_frame.image, info.source_id, index, time)
            started = clock.perf_counter()
            if index % detect_interval == 0:
                result = FrameResult(frame, detector(scene, scene_frame))
                model_seconds += clock.perf_counter() - started
                model_frames += 1
            else:  # the frame never reaches the detector: the tracker fills it in
                result = FrameResult(frame, Detections.empty(scene.class_names), predicted=True)
            ready = stream.analyze(result)
            seconds += clock.perf_counter() - started
            outputs(ready)
        outputs(stream.finish())
        total_frames += len(scene)
        history = stream.tracker.history(max_gap=None)
        hypotheses = MotRows.concatenate(MotRows.from_detections(i, d) for i, d in history)
        mot_scores.append(evaluate_mot(MotRows.concatenate(gt_rows), hypotheses))
        truth = [TimedEvent(e["event"], e["target"], e.get("direction"), e["time"])
                 for e in zone_line_events(samples, cfg.zone, cfg.line, scene.class_names)]
        for kind, found in match_events(predicted, truth, tolerance).items():
            event_scores[kind] = event_scores[kind] + found if kind in event_scores else found
    mask_ap = None
    if with_masks and mask_truth:
        gt, _ = scene_frames_to_coco(mask_truth, scene.class_names)
        mask_ap = score(gt, mask_results).segm["AP"]
    return SceneEventsReport(scenes, total_frames, summarize(mot_scores), event_scores,
                             getattr(detector, "__name__", "?"), detect_interval, model_seconds, seconds, model_frames,
                             mask_ap)


class _Anchored:
    """What the ground-truth event rules need of an instance (its mask is not kept)."""

    __slots__ = ("track_id", "label", "anchor")

    def __init__(self, instance):
        self.track_id, self.label, self.anchor = instance.track_id, instance.label, instance.anchor
