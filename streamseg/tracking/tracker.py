"""A ByteTrack-style multi-object tracker: Kalman motion, two-stage IoU association, back-filled confirmation.

Why our own: the maintained libraries were measured on the evalkit's MOT15 public (DPM) detections, scores min-max
rescaled per sequence, best of up to three settings each (``shared/GUIDE.md`` section 6). None beats the reference
tracker (MOTA / IDF1 0.5265 / 0.5577 on TUD-Campus, 0.5640 / 0.6446 on TUD-Stadtmitte) on both sequences:
Roboflow ``trackers`` 2.6.1 ByteTrack 0.4262 / 0.4441 and 0.5355 / 0.5247, its best (BoT-SORT) 0.4039 / 0.4904 on
TUD-Campus; supervision 0.30.9 ByteTrack 0.4290 / 0.4899 and 0.5796 / 0.5850 (and gone from supervision 0.31);
norfair 2.3.0 0.4290 / 0.5458 and 0.5874 / 0.6245 but it needs numpy<2, which this project cannot take. They were
also slow: 126-528 frames/s at 50 boxes per frame, against the >= 1,000 we need. The largest gap is one they share:
a detection's frames before its track is confirmed are never output. This tracker keeps them and emits them once
the track is confirmed (back-fill), can fill the gaps a track bridged (offline), vectorizes the motion model over
all tracks, and uses scipy (or lap) for the assignment. With one setting for both sequences
(:mod:`streamseg.tracking.offline`) it scores MOTA / IDF1 0.5933 / 0.6757 on TUD-Campus and 0.6531 / 0.7195 on
TUD-Stadtmitte (overall 0.6389 / 0.7097), and runs at about 1,800 frames/s at 50 objects per frame
(``bench/bench_tracker.py``).

Per frame (:meth:`Tracker.update`):

1. every track's box is predicted one frame ahead (:class:`~streamseg.tracking.kalman.BoxKalman`);
2. detections with ``score >= high_threshold`` are paired with confirmed and lost tracks (``max_distance``);
3. confirmed tracks still unpaired get a second chance with the detections scored in
   ``[low_threshold, high_threshold)`` (``max_distance_low``): partly occluded objects score low, and this keeps
   them tracked without letting low-score clutter start tracks;
4. tentative tracks are paired with the high-score detections left (``max_distance_tentative``);
5. high-score detections still unpaired with ``score >= new_track_threshold`` start tentative tracks.

Frames the model skips (``model.detect_interval``) go to :meth:`Tracker.predict` instead: one motion step for
every track, no association, no miss counted; it returns the confirmed tracks at their predicted boxes, masks moved
along.

Lifecycle: ``TENTATIVE`` -> ``CONFIRMED`` after ``min_hits`` paired frames (a tentative track missed once is
dropped); a confirmed track missed in a frame is ``LOST``: still predicted, still matchable in step 2, and
``CONFIRMED`` again when paired; after more than ``max_lost`` frames (or ``max_lost_seconds``, when
:meth:`~Tracker.update` gets times) it is removed. Ids count from 1 per tracker instance and are never reused.

Two ways to read the output, for two uses:

- live: :meth:`Tracker.update` returns the frame's detections that belong to confirmed tracks, with ``track_ids``
  set; tentative tracks are not shown until confirmed. ``update(keep_all=True)`` returns every detection instead
  (a pipeline never loses one), untracked ones marked :data:`~streamseg.types.UNTRACKED`;
- offline (``Tracker(keep_history=True)``): :meth:`Tracker.history` returns every frame's confirmed tracks
  *including* the frames a track spent tentative, back-filled once it was confirmed. ``streamseg track`` writes this.

Everything is deterministic: no randomness, ties broken by order.

Example::

    tracker = Tracker(TrackerConfig(min_hits=3, distance="mask_iou"))
    for frame, detections in results:
        tracked = tracker.update(detections, frame.index, frame.time)
        print(tracked.track_ids, tracked.boxes)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from streamseg.checks import bad, booleans, choice, integer, number
from streamseg.errors import ConfigError
from streamseg.tracking.association import (ASSIGNERS, DISTANCES, DistanceLike, assign, box_iou, check_assigner,
                                           get_distance, iou_distance)
from streamseg.tracking.kalman import BoxKalman
from streamseg.types import UNTRACKED, Detections, InstanceMasks


class TrackState(IntEnum):
    TENTATIVE = 0
    """Seen in fewer than ``min_hits`` frames: not output yet (back-filled later if confirmed)."""
    CONFIRMED = 1
    """Paired with a detection in the latest frame."""
    LOST = 2
    """Confirmed once, not paired lately: predicted forward until paired again or removed."""


@dataclass(frozen=True)
class TrackerConfig:
    """Tracker settings. Scores are the detector's; distances are in ``[0, 1]`` (``1 - IoU`` for ``"iou"``)."""

    high_threshold: float = 0.5
    """Detections scored at least this take part in the first association and may start tracks."""
    low_threshold: float = 0.1
    """Detections scored in ``[low_threshold, high_threshold)`` only continue confirmed tracks; lower ones are
    ignored."""
    new_track_threshold: float | None = None
    """An unpaired high-score detection starts a track only when scored at least this (None: ``high_threshold``)."""
    max_distance: float = 0.8
    """First association (high-score detections, confirmed and lost tracks): pair only at distance <= this
    (0.8 = box IoU >= 0.2: loose, as motion prediction already did the work)."""
    max_distance_low: float = 0.5
    """Second association (low-score detections): stricter (IoU >= 0.5), as low scores are more often clutter."""
    max_distance_tentative: float = 0.7
    """Tentative tracks have no reliable velocity yet: their pairs need more overlap."""
    min_hits: int = 3
    """Paired frames that confirm a track (1 confirms at once)."""
    max_lost: int = 30
    """Frames a confirmed track survives unpaired before it is removed."""
    max_lost_seconds: float | None = None
    """When set, the same in seconds of ``update(time=...)``, which then becomes required; replaces ``max_lost``."""
    smooth_boxes: bool = False
    """Output each track's Kalman-filtered box instead of its detection's box (masks stay the detection's).
    Steadier boxes; with jittery detectors (DPM) they also overlap the truth better."""
    class_agnostic: bool = False
    """False: a track only pairs with detections of its own label. True: labels are ignored (the track takes the
    label of its latest detection)."""
    distance: DistanceLike = "iou"
    """``"iou"``, ``"mask_iou"`` (mask IoU where detections carry masks) or a callable, see
    :mod:`streamseg.tracking.association`."""
    assignment: str = "scipy"
    """Solver: ``"scipy"`` (``linear_sum_assignment``) or ``"lap"`` (``lapjv``; needs the lap package)."""
    position_noise: float = 1.0 / 20.0
    """Kalman position/size noise per frame as a fraction of the box size."""
    velocity_noise: float = 1.0 / 160.0
    """Kalman velocity noise per frame as a fraction of the box size."""

    def __post_init__(self):
        key = "TrackerConfig.{}".format  # the pipeline config says "tracker." instead
        for name in ("high_threshold", "low_threshold"):  # any scale: raw DPM scores are unbounded
            number(key(name), getattr(self, name))
        if self.low_threshold > self.high_threshold:
            raise bad(key("low_threshold"), f"a number <= high_threshold ({self.high_threshold!r})",
                      self.low_threshold)
        number(key("new_track_threshold"), self.new_track_threshold, optional=True)
        for name in ("max_distance", "max_distance_low", "max_distance_tentative"):
            number(key(name), getattr(self, name), 0, 1)
        integer(key("min_hits"), self.min_hits, 1)
        integer(key("max_lost"), self.max_lost, 0)
        number(key("max_lost_seconds"), self.max_lost_seconds, 0, optional=True)
        booleans(self, "TrackerConfig")
        if not callable(self.distance):
            choice(key("distance"), self.distance, tuple(DISTANCES))
        check_assigner(choice(key("assignment"), self.assignment, tuple(ASSIGNERS)))
        for name in ("position_noise", "velocity_noise"):
            number(key(name), getattr(self, name), above=0)


@dataclass(frozen=True)
class TrackInfo:
    """A snapshot of one live track (see :attr:`Tracker.tracks`)."""

    track_id: int
    state: TrackState
    hits: int
    """Frames paired with a detection so far."""
    misses: int
    """Consecutive frames without a detection, up to now."""
    box: np.ndarray
    """``(4,)`` float64 xyxy: the filtered (after a pair) or predicted (after a miss) box."""
    label: int
    score: float
    """Score of the latest paired detection."""


# plain ints for the per-frame array comparisons (an IntEnum member lookup costs more than the comparison)
_TENTATIVE, _CONFIRMED, _LOST = int(TrackState.TENTATIVE), int(TrackState.CONFIRMED), int(TrackState.LOST)
_EMPTY_CROP = np.zeros((0, 0), bool)
_NO_MASK = (_EMPTY_CROP, np.zeros(2, np.int32))


class _Tracks:
    """The live tracks as parallel arrays (one row per track), so each frame costs a few numpy calls, not a loop."""

    def __init__(self):
        self.ids = np.zeros(0, np.int64)
        self.state = np.zeros(0, np.int8)
        self.hits = np.zeros(0, np.int64)
        self.misses = np.zeros(0, np.int64)
        self.last_time = np.zeros(0, np.float64)
        self.labels = np.zeros(0, np.int64)
        self.scores = np.zeros(0, np.float32)
        self.mean = np.zeros((0, 8))
        self.covariance = np.zeros((0, 8, 8))
        self.last_box = np.zeros((0, 4))
        """Latest paired detection box: masks are moved by the predicted box's shift from it."""
        self.masks: list[tuple[np.ndarray, np.ndarray]] = []
        """Latest paired detection's ``(crop, origin)``; an empty crop where there was none."""

    _ARRAYS = ("ids", "state", "hits", "misses", "last_time", "labels", "scores", "mean", "covariance", "last_box")

    def __len__(self) -> int:
        return len(self.ids)

    def keep(self, keep: np.ndarray) -> None:
        if keep.all():
            return
        for name in self._ARRAYS:
            setattr(self, name, getattr(self, name)[keep])
        self.masks = [self.masks[i] for i in np.flatnonzero(keep)]

    def extend(self, other: "_Tracks") -> None:
        if len(other) == 0:
            return
        for name in self._ARRAYS:
            setattr(self, name, np.concatenate([getattr(self, name), getattr(other, name)]))
        self.masks.extend(other.masks)


class Tracker:
    """Gives detections identities across frames. One instance per video stream; see the module docstring.

    ``config``: :class:`TrackerConfig` (defaults when None). ``keep_history``: record every frame's pairs so that
    :meth:`history` can return back-filled tracks (offline scoring); it holds a reference to every frame's
    detections, so leave it off for endless live streams. ``history_masks=False`` records boxes, scores and labels
    only (a pipeline that writes a tracks file needs no masks, and masks dominate the memory).
    """

    def __init__(self, config: TrackerConfig | None = None, *, keep_history: bool = False,
                 history_masks: bool = True):
        if config is None:
            config = TrackerConfig()
        if not isinstance(config, TrackerConfig):
            raise ConfigError(f"Tracker: config must be a TrackerConfig, got {type(config).__name__}")
        self.config = config
        self.keep_history = bool(keep_history)
        self.history_masks = bool(history_masks)
        self._distance = get_distance(config.distance)
        self._kalman = BoxKalman(config.position_noise, config.velocity_noise)
        self.reset()

    def reset(self) -> None:
        """Forget every track and the history; ids start again at 1."""
        self._tracks = _Tracks()
        self._next_id = 1
        self._frames_seen = 0
        self._confirmed_ids: set[int] = set()
        self._history: list[tuple[int, Detections]] = []
        self._masks_seen, self._class_names = False, ()  # of the latest update: what predict() gives

    @property
    def frames_seen(self) -> int:
        return self._frames_seen

    @property
    def tracks(self) -> tuple[TrackInfo, ...]:
        """Snapshots of the live tracks (tentative, confirmed and lost), in id order."""
        t = self._tracks
        boxes = BoxKalman.boxes(t.mean)
        return tuple(
            TrackInfo(int(t.ids[i]), TrackState(int(t.state[i])), int(t.hits[i]), int(t.misses[i]), boxes[i],
                      int(t.labels[i]), float(t.scores[i]))
            for i in range(len(t))
        )

    def update(self, detections: Detections, frame_index: int | None = None, time: float | None = None, *,
               keep_all: bool = False, image_size: tuple[int, int] | None = None) -> Detections:
        """Advance one frame. Returns the detections that belong to confirmed tracks, in detection order, with
        ``track_ids`` set (masks and class names kept). Call it for every processed frame, empty ones included:
        a frame is one motion step and one step of the lost buffer.

        ``frame_index``: label of the frame in :meth:`history` (default: 0-based count of updates). ``time``:
        seconds (``Frame.time``), required when ``max_lost_seconds`` is set. ``keep_all``: return every input
        detection instead, in input order, each with the id of the track it joined, tentative ones included
        (:meth:`confirmed` tells which ids are, :meth:`resolve` keeps only those), or :data:`~streamseg.types.UNTRACKED`: a pipeline's outputs keep
        every detection the model gave. ``image_size`` ``(H, W)`` (default: the masks'): smoothed boxes are
        clipped to it, as the model's own boxes are.
        """
        if not isinstance(detections, Detections):
            raise ConfigError(f"Tracker.update: expected Detections, got {type(detections).__name__}")
        cfg = self.config
        if cfg.max_lost_seconds is not None and time is None:
            raise ConfigError("Tracker.update: time is required when max_lost_seconds is set")
        frame_index = self._frames_seen if frame_index is None else int(frame_index)
        self._frames_seen += 1
        self._masks_seen, self._class_names = detections.masks is not None, detections.class_names
        t = self._tracks

        # 1. Predict. A lost track keeps its size: extrapolating a shrink for many frames would make the box vanish.
        lost = t.state == _LOST
        if lost.any():
            t.mean[lost, 6:8] = 0.0
        t.mean, t.covariance = self._kalman.predict(t.mean, t.covariance)

        candidates = np.flatnonzero(detections.scores >= cfg.low_threshold)
        dets = detections if len(candidates) == len(detections) else detections[candidates]
        high = dets.scores >= cfg.high_threshold
        cost = self._cost(dets)

        # 2.-4. Associate: high-score detections with confirmed and lost tracks, then low-score ones with the
        # confirmed tracks left, then the high-score ones left with tentative tracks.
        pair = np.full(len(t), -1, np.int64)  # track row -> detection column in dets
        taken = np.zeros(len(dets), bool)
        stages = (
            (t.state != _TENTATIVE, high, cfg.max_distance),
            (t.state == _CONFIRMED, ~high, cfg.max_distance_low),
            (t.state == _TENTATIVE, high, cfg.max_distance_tentative),
        )
        for track_ok, det_ok, limit in stages:
            rows = np.flatnonzero(track_ok & (pair < 0))
            cols = np.flatnonzero(det_ok & ~taken)
            if rows.size == 0 or cols.size == 0:
                continue
            r, c = assign(cost[np.ix_(rows, cols)], limit, cfg.assignment)
            pair[rows[r]] = cols[c]
            taken[cols[c]] = True

        paired = np.flatnonzero(pair >= 0)
        self._correct(paired, dets, pair[paired], time)
        remove = self._age(pair < 0, time)
        ids, states = t.ids[paired], t.state[paired]
        boxes = dets.boxes[pair[paired]]
        if cfg.smooth_boxes:
            boxes = _clip(BoxKalman.boxes(t.mean[paired]), image_size or _image_size(detections))

        # 5. Start tentative tracks from the confident detections nobody took.
        start = cfg.high_threshold if cfg.new_track_threshold is None else cfg.new_track_threshold
        fresh = np.flatnonzero(high & ~taken & (dets.scores >= start))
        new = self._new_tracks(dets, fresh, time)
        t.keep(~remove)
        t.extend(new)

        # Output: this frame's pairs, new tracks included, in detection order; all go to the history (for the
        # back-fill), the confirmed ones are returned.
        ids = np.concatenate([ids, new.ids])
        states = np.concatenate([states, new.state])
        boxes = np.concatenate([boxes, dets.boxes[fresh]])
        columns = candidates[np.concatenate([pair[paired], fresh])]  # back to indices of `detections`
        order = np.argsort(columns, kind="stable")
        if self.keep_history and len(ids):
            self._history.append((frame_index, _pick(detections, columns[order], boxes[order], ids[order],
                                                     masks=self.history_masks)))
        if keep_all:
            all_ids = np.full(len(detections), UNTRACKED, np.int64)
            all_ids[columns] = ids
            all_boxes = detections.boxes.copy()
            all_boxes[columns] = boxes
            return Detections(all_boxes, detections.scores, detections.labels, detections.class_names,
                              detections.masks, all_ids)
        order = order[states[order] == _CONFIRMED]
        return _pick(detections, columns[order], boxes[order], ids[order])

    def predict(self, frame_index: int | None = None, time: float | None = None, *,
                image_size: tuple[int, int] | None = None) -> Detections:
        """Advance one frame the model did not see (``model.detect_interval``): every track moves one motion step,
        nothing is associated, no track misses a frame or ages. Returns the confirmed tracks (not lost ones) at
        their predicted boxes (clipped to ``image_size`` ``(H, W)``), with their latest label and score and, where
        the latest :meth:`update` had masks and ``image_size`` is given, their latest mask moved by the box's
        displacement; ``track_ids`` set. Recorded in :meth:`history` like an update."""
        frame_index = self._frames_seen if frame_index is None else int(frame_index)
        self._frames_seen += 1
        t = self._tracks
        lost = t.state == _LOST
        if lost.any():
            t.mean[lost, 6:8] = 0.0
        t.mean, t.covariance = self._kalman.predict(t.mean, t.covariance)
        rows = np.flatnonzero(t.state == _CONFIRMED)
        predicted = BoxKalman.boxes(t.mean)
        boxes = _clip(predicted, image_size)
        masks = None
        if self._masks_seen and image_size is not None:
            masks = self._moved_masks(predicted, image_size)[rows]
        out = Detections(boxes[rows], t.scores[rows], t.labels[rows], self._class_names, masks, t.ids[rows])
        if self.keep_history and len(rows):
            self._history.append((frame_index, out if self.history_masks or masks is None else
                                  Detections(out.boxes, out.scores, out.labels, out.class_names, None, out.track_ids)))
        return out

    def confirmed(self, track_ids: np.ndarray) -> np.ndarray:
        """Which of ``track_ids`` belong to tracks that have been confirmed (now or earlier): with
        ``update(keep_all=True)``, a tentative track's earlier detections get its id once this turns True (the
        back-fill), or stay untracked if the track is dropped first."""
        # one set lookup per detection: called every frame, it must not cost more as a live stream's ids pile up
        ids = np.asarray(track_ids, np.int64).tolist()
        return np.fromiter((i in self._confirmed_ids for i in ids), bool, len(ids))

    def resolve(self, detections: Detections) -> Detections:
        """``update(keep_all=True)`` output with the ids of tracks not confirmed (yet, or ever) made ``UNTRACKED``."""
        confirmed = self.confirmed(detections.track_ids)
        if confirmed.all():
            return detections
        return detections.with_track_ids(np.where(confirmed, detections.track_ids, UNTRACKED))

    def _cost(self, dets: Detections) -> np.ndarray:
        """``(T, M)`` distances of all tracks to the candidate detections; inf forbids a pair."""
        t = self._tracks
        if len(t) == 0 or len(dets) == 0:
            return np.zeros((len(t), len(dets)))
        boxes = BoxKalman.boxes(t.mean)
        if self._distance is iou_distance:  # the common case, without building a Detections of the tracks
            cost = 1.0 - box_iou(boxes, dets.boxes)
        else:
            masks = None if dets.masks is None else self._moved_masks(boxes, dets.masks.image_size)
            view = Detections(boxes, t.scores, t.labels, dets.class_names, masks, t.ids)
            cost = np.array(self._distance(view, dets), dtype=np.float64)  # a copy: the callable's array is theirs
        if cost.shape != (len(t), len(dets)):
            raise ConfigError(f"distance returned shape {cost.shape}, expected {(len(t), len(dets))}")
        cost[np.isnan(cost)] = np.inf
        if not self.config.class_agnostic:
            cost[t.labels[:, None] != dets.labels[None, :]] = np.inf
        return cost

    def _moved_masks(self, boxes: np.ndarray, image_size: tuple[int, int]) -> InstanceMasks:
        """Each track's latest mask, moved by how far its predicted box moved from its latest detection and clipped
        to the frame."""
        t = self._tracks
        height, width = image_size
        shift = np.rint(0.5 * ((boxes[:, :2] + boxes[:, 2:]) - (t.last_box[:, :2] + t.last_box[:, 2:])))
        shift = shift.astype(np.int64)
        crops, origins = [], []
        for (crop, origin), (dx, dy) in zip(t.masks, shift.tolist()):
            x, y = int(origin[0]) + dx, int(origin[1]) + dy
            left, top = max(0, -x), max(0, -y)
            right, bottom = min(crop.shape[1], width - x), min(crop.shape[0], height - y)
            if right <= left or bottom <= top:
                crops.append(_EMPTY_CROP)
                origins.append((0, 0))
            else:
                crops.append(crop[top:bottom, left:right])
                origins.append((x + left, y + top))
        return InstanceMasks(crops, np.array(origins, np.int32).reshape(-1, 2), image_size)

    def _correct(self, rows: np.ndarray, dets: Detections, columns: np.ndarray, time: float | None) -> None:
        """Kalman-correct the tracks ``rows`` with the detections ``dets[columns]``; move them along the lifecycle."""
        if rows.size == 0:
            return
        t = self._tracks
        boxes = dets.boxes[columns]
        t.mean[rows], t.covariance[rows] = self._kalman.update(t.mean[rows], t.covariance[rows], boxes)
        t.hits[rows] += 1
        t.misses[rows] = 0
        t.last_time[rows] = np.nan if time is None else time
        t.labels[rows] = dets.labels[columns]
        t.scores[rows] = dets.scores[columns]
        t.last_box[rows] = boxes
        if dets.masks is not None:
            for row, column in zip(rows.tolist(), columns.tolist()):
                t.masks[row] = (dets.masks.crops[column], dets.masks.origins[column])
        else:  # a mask from an older frame would be moved by the wrong shift: forget it
            for row in rows.tolist():
                if t.masks[row][0].size:
                    t.masks[row] = _NO_MASK
        confirm = (t.state[rows] == _LOST) | (t.hits[rows] >= self.config.min_hits)
        t.state[rows[confirm]] = _CONFIRMED
        self._confirmed_ids.update(t.ids[rows[confirm]].tolist())

    def _age(self, unpaired: np.ndarray, time: float | None) -> np.ndarray:
        """Unpaired tracks miss a frame: tentative ones die, confirmed ones are lost, long-lost ones die.
        Returns the rows to remove."""
        t = self._tracks
        t.misses[unpaired] += 1
        tentative = t.state == _TENTATIVE
        t.state[unpaired & ~tentative] = _LOST
        if self.config.max_lost_seconds is not None:
            expired = (time - t.last_time) > self.config.max_lost_seconds
        else:
            expired = t.misses > self.config.max_lost
        return unpaired & (tentative | expired)

    def _new_tracks(self, dets: Detections, columns: np.ndarray, time: float | None) -> _Tracks:
        """Tentative tracks (confirmed at once when ``min_hits`` is 1) for the detections ``dets[columns]``."""
        new = _Tracks()
        n = len(columns)
        if n == 0:
            return new
        new.ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        self._next_id += n
        confirmed = self.config.min_hits <= 1
        new.state = np.full(n, _CONFIRMED if confirmed else _TENTATIVE, np.int8)
        if confirmed:
            self._confirmed_ids.update(new.ids.tolist())
        new.hits = np.ones(n, np.int64)
        new.misses = np.zeros(n, np.int64)
        new.last_time = np.full(n, np.nan if time is None else time)
        new.labels = dets.labels[columns]
        new.scores = dets.scores[columns]
        boxes = dets.boxes[columns]
        new.mean, new.covariance = self._kalman.initiate(boxes)
        new.last_box = boxes.astype(np.float64)
        if dets.masks is not None:
            new.masks = [(dets.masks.crops[c], dets.masks.origins[c]) for c in columns.tolist()]
        else:
            new.masks = [_NO_MASK] * n
        return new

    def history(self, max_gap: int | None = 0) -> list[tuple[int, Detections]]:
        """``(frame_index, detections)`` for every frame with a confirmed track, in frame order; each frame's
        detections carry ``track_ids`` and include the frames tracks spent tentative before their confirmation
        (back-fill). Tracks still tentative now are left out; call it again later for more.
        Needs ``Tracker(keep_history=True)``.

        ``max_gap``: fill runs of at most this many frames in which a track went unpaired between two paired frames
        (an occlusion it survived) with boxes and scores interpolated linearly in ``frame_index``; filled entries
        have empty masks (when the detections carry masks). 0 fills nothing; None fills every gap a track bridged
        (they are at most ``max_lost`` frames long). Offline only: it needs the future.
        """
        if not self.keep_history:
            raise ConfigError("Tracker.history: construct the tracker with keep_history=True to record it")
        if max_gap is None:
            max_gap = np.iinfo(np.int64).max - 1
        if isinstance(max_gap, bool) or not isinstance(max_gap, (int, np.integer)) or max_gap < 0:
            raise ConfigError(f"Tracker.history: max_gap must be an integer >= 0, got {max_gap!r}")
        frames: dict[int, list[Detections]] = {}
        for frame_index, detections in self._history:
            keep = self.confirmed(detections.track_ids)
            if keep.any():
                frames.setdefault(frame_index, []).append(detections[keep])
        if max_gap > 0:
            for frame_index, filled in _fill_gaps(frames, int(max_gap)).items():
                frames.setdefault(frame_index, []).append(filled)
        return [(index, _concatenate(frames[index])) for index in sorted(frames)]


def _pick(detections: Detections, columns: np.ndarray, boxes: np.ndarray, track_ids: np.ndarray,
          masks: bool = True) -> Detections:
    """``detections[columns]`` with ``boxes`` and ``track_ids`` in one construction (this runs twice per frame);
    without masks when ``masks`` is False."""
    masks = None if detections.masks is None or not masks else detections.masks[columns]
    return Detections(boxes, detections.scores[columns], detections.labels[columns], detections.class_names, masks,
                      track_ids)


def _image_size(detections: Detections) -> tuple[int, int] | None:
    return None if detections.masks is None else detections.masks.image_size


def _clip(boxes: np.ndarray, image_size: tuple[int, int] | None) -> np.ndarray:
    """Boxes inside the image: a Kalman-smoothed box of an object at the border can overshoot it."""
    if image_size is None:
        return boxes
    height, width = image_size
    return np.clip(boxes, 0.0, np.array([width, height, width, height], dtype=np.float64))


def _concatenate(parts: list[Detections]) -> Detections:
    if len(parts) == 1:
        return parts[0]
    masks = None
    if all(p.masks is not None for p in parts):
        masks = InstanceMasks([c for p in parts for c in p.masks.crops],
                              np.concatenate([p.masks.origins for p in parts]), parts[0].masks.image_size)
    return Detections(
        np.concatenate([p.boxes for p in parts]), np.concatenate([p.scores for p in parts]),
        np.concatenate([p.labels for p in parts]), parts[0].class_names, masks,
        np.concatenate([p.track_ids for p in parts]),
    )


def _fill_gaps(frames: dict[int, list[Detections]], max_gap: int) -> dict[int, Detections]:
    """Linearly interpolated entries for each track's gaps of 1..max_gap frames, grouped by frame index."""
    # Works on flat arrays: all entries sorted by (track id, frame), a gap is two neighbours of one track whose
    # frames differ by more than one.
    indices = np.array([i for i, parts in frames.items() for p in parts for _ in range(len(p))], np.int64)
    if indices.size == 0:
        return {}
    all_parts = [p for parts in frames.values() for p in parts]
    ids = np.concatenate([p.track_ids for p in all_parts])
    boxes = np.concatenate([p.boxes for p in all_parts]).astype(np.float64)
    scores = np.concatenate([p.scores for p in all_parts]).astype(np.float64)
    labels = np.concatenate([p.labels for p in all_parts])
    order = np.lexsort((indices, ids))
    ids, indices, boxes, scores, labels = ids[order], indices[order], boxes[order], scores[order], labels[order]
    step = np.diff(indices)
    gaps = np.flatnonzero((ids[1:] == ids[:-1]) & (step > 1) & (step - 1 <= max_gap))
    out: dict[int, list[tuple]] = {}
    for k in gaps.tolist():
        start, stop = int(indices[k]), int(indices[k + 1])
        for index in range(start + 1, stop):
            w = (index - start) / (stop - start)
            box = (1 - w) * boxes[k] + w * boxes[k + 1]
            out.setdefault(index, []).append((box, (1 - w) * scores[k] + w * scores[k + 1], labels[k + 1], ids[k]))
    sample = all_parts[0]
    result = {}
    for index, rows in out.items():
        masks = None
        if sample.masks is not None:
            masks = InstanceMasks([_EMPTY_CROP] * len(rows), np.zeros((len(rows), 2), np.int32),
                                  sample.masks.image_size)
        result[index] = Detections(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]),
                                   np.array([r[2] for r in rows]), sample.class_names, masks,
                                   np.array([r[3] for r in rows]))
    return result
