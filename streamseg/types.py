"""The data that flows between stages. This module imports nothing else of streamseg.

Conventions shared by every stage:
- images are ``uint8`` arrays of shape ``(H, W, 3)`` in **RGB** order, C-contiguous, already rotated upright;
- boxes are ``float32`` ``(N, 4)`` arrays of ``x1, y1, x2, y2`` in source pixels (continuous coordinates, the
  top-left corner of the image is ``(0, 0)``, a box covering pixel column 0 only is ``x1=0, x2=1``);
- times are seconds: ``Frame.time`` on the stream's own clock, ``Frame.capture_time`` on the wall clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Iterator, Mapping, Sequence

import numpy as np


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded picture and where it came from."""

    image: np.ndarray
    """``(H, W, 3)`` uint8 RGB, upright (container rotation already applied)."""
    source_id: str
    """Stable name of the source (file stem, camera name); never contains credentials."""
    index: int
    """0-based position of this picture in the source's decoded sequence (strided frames keep their source index)."""
    time: float
    """Presentation time in seconds on the stream's clock, relative to the stream's first frame."""
    pts: int | None = None
    """Presentation timestamp in ``time_base`` units as the container stores it (None for images)."""
    time_base: Fraction | None = None
    capture_time: float = 0.0
    """Wall-clock time (``time.time()``) at which the frame was decoded or received."""

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


@dataclass(frozen=True)
class SourceInfo:
    """What a source knows about its stream before the first frame; sinks size and time their outputs from it."""

    source_id: str
    uri: str
    """Where the source reads from, with any credentials redacted."""
    width: int
    height: int
    """Upright size, after rotation."""
    fps: Fraction | None = None
    """Average frame rate after frame striding; None where unknown (image folders, some live streams)."""
    time_base: Fraction | None = None
    frame_count: int | None = None
    """Frames the source will yield after striding, when the container says (None for unknown)."""
    duration: float | None = None
    """Seconds, when the container says."""
    rotation: int = 0
    """Degrees clockwise that were applied to make frames upright."""
    codec: str | None = None
    container: str | None = None
    is_live: bool = False
    is_image_sequence: bool = False


class InstanceMasks:
    """Binary instance masks kept compact: each mask is a crop of the full frame.

    Mask ``i`` is ``crops[i]`` (``bool``, shape ``(h_i, w_i)``) placed with its top-left corner at
    ``origins[i] = (x0, y0)`` inside an image of ``image_size = (H, W)``; pixels outside the crop are False.
    A crop usually covers the instance's box, so memory scales with object size, not frame size.
    """

    __slots__ = ("crops", "origins", "image_size")

    def __init__(self, crops: Sequence[np.ndarray], origins: np.ndarray, image_size: tuple[int, int]):
        origins = np.asarray(origins, dtype=np.int32).reshape(-1, 2)
        if len(crops) != len(origins):
            raise ValueError(f"crops and origins differ in length: {len(crops)} vs {len(origins)}")
        height, width = int(image_size[0]), int(image_size[1])
        for i, crop in enumerate(crops):
            if crop.dtype != np.bool_ or crop.ndim != 2:
                raise ValueError(f"crop {i}: expected a 2-D bool array, got {crop.dtype} with shape {crop.shape}")
            x0, y0 = origins[i]
            if x0 < 0 or y0 < 0 or x0 + crop.shape[1] > width or y0 + crop.shape[0] > height:
                raise ValueError(f"crop {i} at {(int(x0), int(y0))} of shape {crop.shape} leaves image {image_size}")
        self.crops = list(crops)
        self.origins = origins
        self.image_size = (height, width)

    @classmethod
    def empty(cls, image_size: tuple[int, int]) -> "InstanceMasks":
        return cls([], np.zeros((0, 2), np.int32), image_size)

    @classmethod
    def from_dense(cls, masks: np.ndarray) -> "InstanceMasks":
        """Crop ``(N, H, W)`` boolean masks to the bounding box of their set pixels."""
        masks = np.asarray(masks, dtype=bool)
        crops, origins = [], []
        for mask in masks:
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            if rows.size == 0:
                crops.append(np.zeros((0, 0), bool))
                origins.append((0, 0))
                continue
            crops.append(np.ascontiguousarray(mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]))
            origins.append((cols[0], rows[0]))
        return cls(crops, np.array(origins, np.int32).reshape(-1, 2), masks.shape[1:3])

    def __len__(self) -> int:
        return len(self.crops)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.dense(i) for i in range(len(self)))

    def __getitem__(self, index) -> "InstanceMasks":
        """Select instances with an int array, a boolean array or a slice (same rules as the other fields)."""
        picks = np.arange(len(self))[index]
        picks = np.atleast_1d(picks)
        return InstanceMasks([self.crops[i] for i in picks], self.origins[picks], self.image_size)

    def dense(self, i: int) -> np.ndarray:
        """Mask ``i`` as a full ``(H, W)`` bool array. Allocates a frame-sized array: use one at a time."""
        out = np.zeros(self.image_size, dtype=bool)
        crop = self.crops[i]
        x0, y0 = self.origins[i]
        out[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
        return out

    def areas(self) -> np.ndarray:
        return np.array([int(c.sum()) for c in self.crops], dtype=np.int64)

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.crops) + self.origins.nbytes


UNTRACKED = -1
"""``Detections.track_ids`` entry of a detection that no confirmed track has (yet): written as ``null``, drawn
without an id. Track ids themselves count from 1."""


@dataclass(frozen=True, eq=False)
class Detections:
    """Instances found in one frame. All per-instance fields share their first dimension ``N``.

    ``labels`` index ``class_names`` (the model's vocabulary; index 0 is the background in torchvision models).
    Index with a boolean or integer array to select instances: ``dets[dets.scores > 0.5]``.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...] = ()
    masks: InstanceMasks | None = None
    track_ids: np.ndarray | None = None

    def __post_init__(self):
        object.__setattr__(self, "boxes", np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4))
        object.__setattr__(self, "scores", np.asarray(self.scores, dtype=np.float32).reshape(-1))
        object.__setattr__(self, "labels", np.asarray(self.labels, dtype=np.int64).reshape(-1))
        n = len(self.boxes)
        lengths = {"scores": len(self.scores), "labels": len(self.labels)}
        if self.masks is not None:
            lengths["masks"] = len(self.masks)
        if self.track_ids is not None:
            object.__setattr__(self, "track_ids", np.asarray(self.track_ids, dtype=np.int64).reshape(-1))
            lengths["track_ids"] = len(self.track_ids)
        for name, length in lengths.items():
            if length != n:
                raise ValueError(f"Detections.{name} has {length} entries, boxes has {n}")

    @classmethod
    def empty(cls, class_names: tuple[str, ...] = (), image_size: tuple[int, int] | None = None) -> "Detections":
        masks = InstanceMasks.empty(image_size) if image_size is not None else None
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0), class_names, masks)

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index) -> "Detections":
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return Detections(
            self.boxes[index],
            self.scores[index],
            self.labels[index],
            self.class_names,
            None if self.masks is None else self.masks[index],
            None if self.track_ids is None else self.track_ids[index],
        )

    @property
    def names(self) -> list[str]:
        """Class name of each instance (``str(label)`` where the vocabulary has no entry)."""
        table = self.class_names
        return [table[i] if 0 <= i < len(table) else str(int(i)) for i in self.labels]

    def with_track_ids(self, track_ids: np.ndarray) -> "Detections":
        return Detections(self.boxes, self.scores, self.labels, self.class_names, self.masks, track_ids)

    def tracked(self) -> "Detections":
        """The instances that belong to a confirmed track (``track_ids`` set and not :data:`UNTRACKED`): what event
        rules and identity counts must see."""
        if self.track_ids is None:
            raise ValueError("Detections.tracked: no track_ids (run a tracker first)")
        keep = self.track_ids != UNTRACKED
        return self if keep.all() else self[keep]


@dataclass(frozen=True, eq=False)
class FrameResult:
    """A frame together with what the model found in it: the item that flows from the model to the sinks.

    After a tracker, ``detections`` are the tracked ones (``track_ids`` set); after the event rules, ``events``
    holds what happened in this frame and ``occupancy`` the zones' contents.
    """

    frame: Frame
    detections: Detections
    events: tuple["Event", ...] = ()
    """Events of this frame, in order (see :class:`Event`)."""
    occupancy: Mapping[str, Mapping[str, int]] | None = None
    """Per zone name, per class name: tracked objects of this frame whose anchor is inside the zone (classes the
    zone counts but does not hold may be absent: read missing ones as 0). None where no zones are configured."""
    predicted: bool = False
    """The model did not run on this frame (``model.detect_interval``): ``detections`` are the tracker's confirmed
    tracks moved to where it predicts them (empty until the track step fills them in)."""


@dataclass(frozen=True, eq=False)
class Event:
    """Something that happened to one tracked object, seen by an event rule (:mod:`streamseg.events`).

    ``kind`` and what goes with it:

    - ``"enter"`` / ``"exit"``: the object's anchor point moved into / out of the zone ``region``; an exit carries
      ``dwell``, the seconds since its enter;
    - ``"dwell"``: the object has been inside the zone ``region`` for ``dwell`` seconds, at least the zone's
      threshold (once per visit: loitering);
    - ``"cross"``: the anchor crossed the directed line ``region``; ``direction`` is ``"in"`` (from the left to
      the right of A -> B as drawn on screen) or ``"out"``;
    - ``"forward_collision"``: time-to-collision of an object in the ego lane ``region`` fell below the threshold;
      ``extras["ttc"]`` holds it in seconds.

    ``time`` is on the stream's clock (``Frame.time``), ``wall_time`` the wall clock of that frame
    (``Frame.capture_time``). ``box`` and ``anchor`` are the object's in the event's frame, in pixels.
    """

    kind: str
    source_id: str
    frame: int
    """Index of the frame in which the event happened (``Frame.index``)."""
    time: float
    wall_time: float
    track_id: int
    label: int
    class_name: str
    region: str
    """Name of the zone, line or ego lane."""
    box: tuple[float, float, float, float]
    anchor: tuple[float, float]
    direction: str | None = None
    dwell: float | None = None
    """Seconds inside the zone (``exit`` and ``dwell`` events)."""
    extras: Mapping[str, float] = field(default_factory=dict)
    """Numbers specific to one kind (``forward_collision``: ``ttc``, ``scale_rate``)."""
