"""Procedural street scenes with exact ground truth: video, instance masks, tracks and zone/line events.

Used to train a small Mask R-CNN on CPU (:func:`iter_training_samples`), to score masks, boxes, tracking and
events against exact answers (:func:`write_scene` writes COCO, MOTChallenge and JSONL files), and to make an
offline demo video. Modules: ``geometry`` (camera and street), ``background`` (the empty street), ``shapes``
(silhouettes), ``motion`` (paths), ``generator`` (:class:`Scene`), ``events``, ``export``, ``training``.
"""

from streamseg.scenes.events import zone_line_events
from streamseg.scenes.export import write_scene
from streamseg.scenes.generator import (
    SUPPORTED_CLASSES,
    GroundTruthInstance,
    Scene,
    SceneConfig,
    SceneFrame,
    SceneTrack,
)
from streamseg.scenes.training import iter_training_samples

__all__ = [
    "SUPPORTED_CLASSES",
    "GroundTruthInstance",
    "Scene",
    "SceneConfig",
    "SceneFrame",
    "SceneTrack",
    "iter_training_samples",
    "write_scene",
    "zone_line_events",
]
