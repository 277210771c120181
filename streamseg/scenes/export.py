"""Write a scene to disk: the video and every ground-truth file an evaluation needs.

``write_scene(config, out_dir)`` renders each frame once and writes, in ``out_dir``:

- ``video.mp4``: H.264 written by :class:`~streamseg.sinks.VideoSink` (``crf`` 18 by default), frame ``i`` at
  ``i / fps`` s, exactly ``config.frames`` frames;
- ``instances.json``: COCO instances. ``images[i]``: ``id = i`` (the frame index, as streamseg's COCO results
  use), ``file_name = "%06d.png" % i`` (the PNG frame, when written); ``categories``: ids 1..n named after
  ``config.classes``; ``annotations``: ``id`` from 1, ``segmentation`` compressed RLE of the visible mask over
  the full image, ``bbox`` ``[x, y, w, h]`` of that mask, ``area`` its pixel count, ``iscrowd`` 0, and the extra
  keys ``track_id`` and ``visibility``;
- ``gt/gt.txt`` and ``seqinfo.ini``: MOTChallenge ground truth, one row per instance and frame:
  ``frame (1-based), id, x, y, w, h, 1, class (label), visibility``; boxes are the visible boxes in MOTChallenge's
  1-based pixels (streamseg's 0-based x, y plus one), so the scene scores like any MOTChallenge sequence;
- ``events.jsonl``: the zone and line events, one JSON object per line (see :mod:`streamseg.scenes.events`);
- ``scene.json``: the config (zone, line, classes, seed ...), class names, the camera layout, the tracks and
  the names of the other files;
- ``frames/%06d.png`` (``png=True``): the exact frames, loss-free, readable by the image-folder source.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from fractions import Fraction
from pathlib import Path

import cv2

from streamseg.ops.masks import masks_to_rle
from streamseg.scenes.events import zone_line_events
from streamseg.scenes.generator import Scene, SceneConfig
from streamseg.sinks.video import VideoSink
from streamseg.types import Detections, Frame, FrameResult, SourceInfo

__all__ = ["write_scene"]


class _Anchor:
    """What the event rules need of an instance, without its mask."""

    __slots__ = ("track_id", "label", "anchor")

    def __init__(self, instance):
        self.track_id, self.label, self.anchor = instance.track_id, instance.label, instance.anchor


def write_scene(config: SceneConfig | None, out_dir: str | os.PathLike, *, png: bool = False, crf: int = 18,
                preset: str = "medium") -> dict[str, Path]:  # fmt: skip
    """Render ``config``'s scene into ``out_dir`` (created if needed); returns the written paths by name:
    ``video``, ``coco``, ``mot``, ``seqinfo``, ``events``, ``scene`` and, with ``png``, ``frames`` (a folder)."""
    scene = Scene(config)
    cfg = scene.config
    if cfg.frames < 1:
        raise ValueError(f"config.frames: expected >= 1 (an MP4 needs a frame), got {cfg.frames}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "video": out / "video.mp4",
        "coco": out / "instances.json",
        "mot": out / "gt" / "gt.txt",
        "seqinfo": out / "seqinfo.ini",
        "events": out / "events.jsonl",
        "scene": out / "scene.json",
    }
    if png:
        paths["frames"] = out / "frames"
        paths["frames"].mkdir(exist_ok=True)
    paths["mot"].parent.mkdir(exist_ok=True)

    images, annotations, mot_rows, samples = [], [], [], []
    rate = Fraction(cfg.fps).limit_denominator(1_000_000)
    info = SourceInfo(f"scene{cfg.seed}", str(paths["video"]), cfg.width, cfg.height, fps=rate, time_base=1 / rate,
                      frame_count=cfg.frames)
    nothing = Detections.empty(scene.class_names, (cfg.height, cfg.width))
    with VideoSink(paths["video"], info, preset=preset, crf=crf) as video:
        for frame in scene:
            picture = Frame(frame.image, info.source_id, frame.index, frame.time, frame.index, 1 / rate)
            video.write(FrameResult(picture, nothing))
            name = f"{frame.index:06d}.png"
            if png:
                cv2.imwrite(str(paths["frames"] / name), cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
            images.append({"id": frame.index, "file_name": name, "width": cfg.width, "height": cfg.height,
                           "frame_index": frame.index, "time": round(frame.time, 6)})  # fmt: skip
            dets = scene.ground_truth_detections(frame)
            rles = masks_to_rle(dets.masks) if len(dets) else []
            for inst, rle in zip(frame.instances, rles):
                x1, y1, x2, y2 = (float(v) for v in inst.box)
                annotations.append({
                    "id": len(annotations) + 1, "image_id": frame.index, "category_id": int(inst.label),
                    "segmentation": rle, "area": int(inst.area), "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "iscrowd": 0, "track_id": int(inst.track_id), "visibility": round(float(inst.visibility), 4),
                })  # fmt: skip
                mot_rows.append(f"{frame.index + 1},{inst.track_id},{x1 + 1:g},{y1 + 1:g},{x2 - x1:g},{y2 - y1:g},1,"
                                f"{inst.label},{inst.visibility:.4f}")  # fmt: skip
            samples.append((frame.index, frame.time, [_Anchor(i) for i in frame.instances]))

    coco = {
        "info": {"description": "streamseg procedural street scene", "seed": cfg.seed, "fps": cfg.fps},
        "licenses": [],
        "images": images,
        "categories": [{"id": k, "name": name, "supercategory": "street"} for k, name in enumerate(cfg.classes, 1)],
        "annotations": annotations,
    }
    paths["coco"].write_text(json.dumps(coco, separators=(",", ":")), encoding="utf-8")
    paths["mot"].write_text("".join(row + "\n" for row in mot_rows), encoding="utf-8")
    paths["seqinfo"].write_text(
        f"[Sequence]\nname={out.resolve().name}\nimDir=frames\nframeRate={cfg.fps:g}\nseqLength={cfg.frames}\n"
        f"imWidth={cfg.width}\nimHeight={cfg.height}\nimExt=.png\n",
        encoding="utf-8",
    )
    events = zone_line_events(samples, cfg.zone, cfg.line, scene.class_names)
    paths["events"].write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    description = {
        "schema": "streamseg.scene/1",
        "config": cfg.to_dict(),
        "class_names": list(scene.class_names),
        "width": cfg.width,
        "height": cfg.height,
        "fps": cfg.fps,
        "frames": cfg.frames,
        "zone": [list(p) for p in cfg.zone],
        "line": [list(p) for p in cfg.line],
        "mot_box_origin": 1,
        "layout": asdict(scene.layout),
        "tracks": [asdict(t) for t in scene.tracks],
        "files": {key: str(path.relative_to(out)) for key, path in paths.items() if key != "scene"},
    }
    paths["scene"].write_text(json.dumps(description, indent=1), encoding="utf-8")
    return paths
