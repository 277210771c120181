"""Outputs of a pipeline: annotated video, detections JSON Lines, COCO results.

Every sink takes ``(path, info: SourceInfo, **options)``, receives :class:`~streamseg.types.FrameResult` items
through ``write`` and finishes its file in ``close`` (idempotent; also a context manager).
"""

from streamseg.sinks.annotate import DEFAULT_PALETTE, Annotator
from streamseg.sinks.base import Sink
from streamseg.sinks.coco import CocoResultsSink, coco_image_id_from_filename
from streamseg.sinks.jsonl import SCHEMA, DetectionsJsonlSink, frame_record, read_detections_jsonl
from streamseg.sinks.video import VideoSink

__all__ = [
    "Sink",
    "Annotator",
    "DEFAULT_PALETTE",
    "VideoSink",
    "DetectionsJsonlSink",
    "read_detections_jsonl",
    "frame_record",
    "SCHEMA",
    "CocoResultsSink",
    "coco_image_id_from_filename",
]
