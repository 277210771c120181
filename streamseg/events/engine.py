"""The rules of one stream together: what the pipeline's ``events`` stage runs per frame."""

from __future__ import annotations

from typing import Sequence

from streamseg.errors import ConfigError
from streamseg.events.config import EventsConfig
from streamseg.events.occlusion import BottomHold
from streamseg.events.rules import CollisionRule, LineRule, Rule, ZoneRule
from streamseg.types import Detections, Event, Frame

__all__ = ["EventEngine", "describe_event"]


class EventEngine:
    """Runs every rule on each frame's tracked detections and merges their events, ordered by track id (then
    rule order). One engine per stream: rules keep per-track state.

    ``bottom_hold``: restores the hidden bottom of occluded boxes before the zone and line rules see them
    (:class:`~streamseg.events.occlusion.BottomHold`); the collision rule always gets the boxes as detected, since
    its time to collision is read from their size.

    Example::

        engine = EventEngine.from_config(config.events, width=1280, height=720)
        events = engine.update(frame, tracker.update(detections, frame.index, frame.time))
        engine.occupancy        # {"entrance": {"person": 2}}
    """

    def __init__(self, rules: Sequence[Rule], bottom_hold: BottomHold | None = None):
        self.rules = list(rules)
        self.bottom_hold = bottom_hold
        names = [rule.name for rule in self.rules]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"EventEngine: rule names must be unique, repeated: {', '.join(repeated)}")

    @classmethod
    def from_config(cls, config: EventsConfig, width: int, height: int) -> "EventEngine":
        """The rules of ``config`` for frames of ``width`` x ``height`` pixels (which scale ``"relative"``
        coordinates)."""
        from dataclasses import replace

        if config.units == "relative":
            def scale(points):
                return tuple((x * width, y * height) for x, y in points)

            config = replace(
                config,
                zones=tuple(replace(z, polygon=scale(z.polygon)) for z in config.zones),
                lines=tuple(replace(line, points=scale(line.points)) for line in config.lines),
                collision=None if config.collision is None else replace(
                    config.collision, ego_lane=scale(config.collision.ego_lane)),
                units="pixels",
            )
        rules: list[Rule] = [ZoneRule.from_config(z) for z in config.zones]
        rules += [LineRule.from_config(line) for line in config.lines]
        if config.collision is not None:
            rules.append(CollisionRule.from_config(config.collision))
        hold = BottomHold(config.occlusion_hold, config.occlusion_ratio) if config.occlusion_hold > 0 else None
        return cls(rules, hold)

    @property
    def zones(self) -> list[ZoneRule]:
        return [r for r in self.rules if isinstance(r, ZoneRule)]

    @property
    def lines(self) -> list[LineRule]:
        return [r for r in self.rules if isinstance(r, LineRule)]

    def update(self, frame: Frame, detections: Detections) -> list[Event]:
        held = detections
        if self.bottom_hold is not None and any(isinstance(r, (ZoneRule, LineRule)) for r in self.rules):
            held = self.bottom_hold(frame, detections)
        events = [event for rule in self.rules
                  for event in rule.update(frame, held if isinstance(rule, (ZoneRule, LineRule)) else detections)]
        events.sort(key=lambda e: (e.frame, e.track_id))  # stable: one track's events keep the rules' order
        return events

    @property
    def occupancy(self) -> dict[str, dict[str, int]] | None:
        """Zone name -> class name -> objects inside in the latest frame; None without zones."""
        zones = self.zones
        return {z.name: dict(z.occupancy) for z in zones} if zones else None


def describe_event(event: Event) -> str:
    """One line for the live log: ``cam 12.40s enter 'door' #7 person``."""
    text = f"{event.source_id} {event.time:.2f}s {event.kind} {event.region!r}"
    if event.direction is not None:
        text += f" {event.direction}"
    text += f" #{event.track_id} {event.class_name}"
    if event.dwell is not None:
        text += f" after {event.dwell:.1f}s"
    if "ttc" in event.extras:
        text += f" ttc {event.extras['ttc']:.2f}s"
    return text
