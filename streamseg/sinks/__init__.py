"""Outputs of a pipeline: annotated video, detections JSON Lines, COCO results; with tracking and events, events
JSON Lines, zone counts CSV and a PNG summary.

Every sink takes ``(path, info: SourceInfo, **options)``, receives :class:`~streamseg.types.FrameResult` items
through ``write`` and finishes its file in ``close`` (idempotent; also a context manager).
"""

from streamseg.sinks.annotate import DEFAULT_PALETTE, Annotator, Overlay
from streamseg.sinks.base import Sink
from streamseg.sinks.coco import CocoResultsSink, coco_image_id_from_filename
from streamseg.sinks.events import EVENTS_SCHEMA, EventsJsonlSink, event_record, read_events_jsonl
from streamseg.sinks.jsonl import SCHEMA, DetectionsJsonlSink, frame_record, read_detections_jsonl
from streamseg.sinks.summary import SummarySink
from streamseg.sinks.video import VideoSink
from streamseg.sinks.zone_counts import ZoneCountsCsvSink

__all__ = [
    "Sink",
    "Annotator",
    "DEFAULT_PALETTE",
    "Overlay",
    "VideoSink",
    "DetectionsJsonlSink",
    "read_detections_jsonl",
    "frame_record",
    "SCHEMA",
    "CocoResultsSink",
    "coco_image_id_from_filename",
    "EventsJsonlSink",
    "read_events_jsonl",
    "event_record",
    "EVENTS_SCHEMA",
    "ZoneCountsCsvSink",
    "SummarySink",
]
