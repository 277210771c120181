"""Events on tracks: zones (enter, exit, occupancy, dwell), directed lines (crossings, counts) and the forward-
collision warning, configured from pipeline files (``[events]``, see :mod:`streamseg.events.config`).

Rules are small objects with one method, ``update(frame, detections) -> list[Event]``, fed each frame's tracked
detections (:mod:`streamseg.events.rules`); :class:`EventEngine` runs the rules of one stream, after restoring the
hidden bottom of occluded boxes (:mod:`streamseg.events.occlusion`); events are :class:`streamseg.types.Event` and
are written by :class:`streamseg.sinks.EventsJsonlSink` (schema ``streamseg.events/1``).
:mod:`streamseg.events.scoring` matches them against ground truth.

Example::

    engine = EventEngine([ZoneRule("door", [(100, 300), (400, 300), (420, 470), (80, 470)], dwell_seconds=10),
                          LineRule("gate", [(320, 470), (320, 200)])], BottomHold())
    tracker = Tracker()
    for frame, detections in stream:
        for event in engine.update(frame, tracker.update(detections, frame.index, frame.time)):
            print(describe_event(event))        # cam 12.40s enter 'door' #7 person
"""

from streamseg.events.config import (UNITS, VEHICLES_AND_PEOPLE, CollisionConfig, EventsConfig, LineConfig,
                                     ZoneConfig)
from streamseg.events.engine import EventEngine, describe_event
from streamseg.events.occlusion import BottomHold
from streamseg.events.rules import FORGET_SECONDS, CollisionRule, LineRule, Rule, Sighting, ZoneRule, sightings
from streamseg.events.scoring import EventScores, TimedEvent, match_events, timed

__all__ = [
    "BottomHold", "CollisionConfig", "CollisionRule", "EventEngine", "EventScores", "EventsConfig", "FORGET_SECONDS",
    "LineConfig", "LineRule", "Rule", "Sighting", "TimedEvent", "UNITS", "VEHICLES_AND_PEOPLE", "ZoneConfig",
    "ZoneRule", "describe_event", "match_events", "sightings", "timed",
]
