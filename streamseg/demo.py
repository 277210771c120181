"""``streamseg demo``: a generated street scene through the whole pipeline, offline, scored against its exact
ground truth. What a newcomer runs first; it needs nothing but the repository."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from streamseg.config import build_config
from streamseg.evaluation import coco_from_dict, score
from streamseg.pipeline import Runner
from streamseg.scenes import SceneConfig, write_scene
from streamseg.sinks import read_detections_jsonl

log = logging.getLogger(__name__)


def run_demo(out_dir: Path, *, seed: int = 7, frames: int = 120, weights: str | None = None,
             arch: str | None = None, progress: bool = True) -> int:
    scene = write_scene(SceneConfig(seed=seed, frames=frames), out_dir / "scene")
    log.info("scene (seed %d, %d frames) with ground truth in %s", seed, frames, out_dir / "scene")
    model = {k: v for k, v in {"weights": weights, "arch": arch}.items() if v is not None}
    # AP needs low-score detections too; the annotated video still shows only confident ones via the JSONL.
    config = build_config({"output_dir": str(out_dir), "model": {**model, "score_threshold": 0.3}})
    with Runner(config, progress=progress) as runner:
        run = runner.process(str(scene["video"]), source_id="demo", handle_signals=True)
        class_names = runner.backend.class_names
    print(run.report.table())

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
    counts = Counter(d["class"] for record in records for d in record["detections"])
    summary = {
        "scene": {"seed": seed, "frames": frames, **{k: str(v) for k, v in scene.items()}},
        "model": {"weights": getattr(runner.backend, "origin", None), "classes": list(class_names)},
        "frames_processed": run.frames_written,
        "detections_per_class": dict(counts),
        "ap_vs_ground_truth": {"bbox": report.bbox, "segm": report.segm},
        "outputs": {k: str(v) for k, v in run.outputs.items()},
        "stages": [vars(stage) for stage in run.report.stages],
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(report.table())
    print(f"outputs: {out_dir}/ (annotated video {run.outputs.get('video')}, summary.json)")
    return 130 if run.interrupted else 0
