"""``streamseg demo``: a generated street scene through the whole pipeline, offline, scored against its exact
ground truth. What a newcomer runs first; it needs nothing but the repository."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from streamseg.config import build_config
from streamseg.evaluation import SCENE_TRACKER, coco_from_dict, score
from streamseg.events import TimedEvent, match_events
from streamseg.pipeline import Runner
from streamseg.scenes import SceneConfig, write_scene
from streamseg.sinks import read_detections_jsonl
from streamseg.sinks.events import read_events_jsonl
from streamseg.tracking import evaluate_mot
from streamseg.tracking.mot_io import read_mot

log = logging.getLogger(__name__)


@dataclass
class DemoResult:
    """What the demo did: ``summary`` (also written to ``summary.json``), a human-readable ``report`` (the stage
    table, AP, tracking and event scores) and whether it was ``interrupted``."""

    summary: dict
    report: str
    interrupted: bool


def run_demo(out_dir: Path, *, seed: int = 7, frames: int = 120, weights: str | None = None,
             arch: str | None = None, progress: bool = True) -> DemoResult:
    scene_config = SceneConfig(seed=seed, frames=frames)
    scene = write_scene(scene_config, out_dir / "scene")
    log.info("scene (seed %d, %d frames) with ground truth in %s", seed, frames, out_dir / "scene")
    model = {k: v for k, v in {"weights": weights, "arch": arch}.items() if v is not None}
    # Low-score detections feed the tracker's second association (and AP); the video shows confirmed tracks only.
    # The scene's own zone and line become the pipeline's event rules, so events can be scored exactly.
    config = build_config({
        "output_dir": str(out_dir),
        "model": {**model, "score_threshold": 0.1},
        "tracker": {"enabled": True, **SCENE_TRACKER},
        "events": {"zones": [{"name": "zone", "polygon": [list(p) for p in scene_config.zone], "min_frames": 2}],
                   "lines": [{"name": "line", "points": [list(p) for p in scene_config.line], "min_frames": 2}]},
    })
    with Runner(config, progress=progress) as runner:
        run = runner.process(str(scene["video"]), source_id="demo", handle_signals=True)
        class_names = runner.backend.class_names

    records = list(read_detections_jsonl(run.outputs["detections"]))
    gt_data = json.loads(Path(scene["coco"]).read_text())
    image_ids = {image["id"] for image in gt_data["images"]}  # the scene's COCO image id is the frame index
    by_name = {cat["name"]: cat["id"] for cat in gt_data["categories"]}
    results = [
        {"image_id": record["frame"], "category_id": by_name[d["class"]],
         "bbox": [d["box"][0], d["box"][1], d["box"][2] - d["box"][0], d["box"][3] - d["box"][1]],
         "score": d["score"], "segmentation": d["mask"]}
        for record in records if record["frame"] in image_ids
        for d in record["detections"] if d["class"] in by_name
    ]
    report = score(coco_from_dict(gt_data), results)
    events = _score_events(run.outputs.get("events"), Path(scene["events"]))
    tracking = evaluate_mot(read_mot(scene["mot"], min_confidence=1), read_mot(run.outputs["tracks"]))
    counts = Counter(d["class"] for record in records for d in record["detections"])
    summary = {
        "scene": {"seed": seed, "frames": frames, **{k: str(v) for k, v in scene.items()}},
        "model": {"weights": getattr(runner.backend, "origin", None), "classes": list(class_names)},
        "frames_processed": run.frames_written,
        "detections_per_class": dict(counts),
        "ap_vs_ground_truth": {"bbox": report.bbox, "segm": report.segm},
        "tracking_vs_ground_truth": {"mota": tracking.mota, "idf1": tracking.idf1,
                                     "id_switches": tracking.num_switches},
        "events_vs_ground_truth": {kind: {"precision": e.precision, "recall": e.recall, "predicted": e.predicted,
                                          "truth": e.truth} for kind, e in events.items()},
        "outputs": {k: str(v) for k, v in run.outputs.items()},
        "stages": [vars(stage) for stage in run.report.stages],
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    text = [run.report.table(), report.table(),
            f"tracking  MOTA {tracking.mota:.3f}  IDF1 {tracking.idf1:.3f}   events (within 0.5 s of the truth): "
            + ", ".join(f"{k} P {e.precision:.2f} R {e.recall:.2f}" for k, e in events.items() if k != "all"),
            f"outputs: {out_dir}/ (annotated video {run.outputs.get('video')}, events, tracks, summary.json)"]
    return DemoResult(summary, "\n".join(text), run.interrupted)


def _score_events(predicted_path: Path | None, truth_path: Path) -> dict:
    """Precision and recall per event kind: the run's events file against the scene's ground-truth events."""
    predicted = [TimedEvent(r["kind"], r["region"], r["direction"], r["time"])
                 for r in (read_events_jsonl(predicted_path) if predicted_path else ())]
    truth = [TimedEvent(r["event"], r["target"], r.get("direction"), r["time"])
             for r in map(json.loads, truth_path.read_text().splitlines())]
    return match_events(predicted, truth, 0.5)
