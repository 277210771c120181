"""CLEAR-MOT (MOTA, MOTP, ID switches, fragmentations) and identity (IDF1, IDP, IDR) tracking metrics.

Hand-written because motmetrics 1.4.0, the only packaged implementation, calls ``np.asfarray``, removed in
numpy 2: it fails under numpy>=2. The rules follow motmetrics' documented behaviour so numbers are comparable with
published ones (tests reproduce its table for the evalkit MOT15 reference tracker to 4 decimals):

- a gt object and a hypothesis may pair when their distance is <= ``max_distance`` (inclusive); for boxes the
  distance is ``1 - IoU`` and ``iou_threshold=0.5`` means ``1 - IoU <= 0.5``;
- per frame, a gt object first keeps the hypothesis it was last matched to (in any earlier frame, not only the
  previous one) when they may still pair; the rest are paired by a minimum-total-distance assignment that first
  maximises the number of pairs; a pair whose gt object was last matched to a different hypothesis is an ID switch;
- MOTA = 1 - (misses + false positives + switches) / gt boxes; MOTP = mean distance over matched pairs (switches
  included), i.e. mean ``1 - IoU``: lower is better, MOTChallenge prints ``(1 - MOTP) * 100``;
- IDF1 matches gt ids to hypothesis ids once for the whole sequence, maximising the frames where a matched pair may
  pair (Ristani et al. 2016); IDTP counts those frames, IDFN / IDFP the remaining gt / hypothesis boxes.

Not done, as in motmetrics' plain MOTChallenge evaluation: MOT16+ class filtering and dropping hypotheses that match
distractor / ignored ground truth; official MOT17 (TrackEval) numbers therefore differ on those sequences.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, fields
from typing import Hashable, Iterable, Mapping

import numpy as np
from scipy.optimize import linear_sum_assignment

from streamseg.errors import ConfigError
from streamseg.tracking.mot_io import MotRows


@dataclass(frozen=True)
class MotScores:
    """Event counts of one sequence (or a sum of sequences); ratios are derived, so sums stay exact.

    ``num_matches`` excludes switches (motmetrics' convention); ``num_detections`` includes them.
    Ratios with a zero denominator are NaN (e.g. MOTA without ground truth, MOTP without matches).
    """

    num_frames: int = 0
    num_objects: int = 0
    """Ground-truth boxes over all frames."""
    num_predictions: int = 0
    """Hypothesis boxes over all frames."""
    num_matches: int = 0
    num_switches: int = 0
    num_false_positives: int = 0
    num_misses: int = 0
    num_fragmentations: int = 0
    """Tracked -> not tracked transitions of a gt object between its first and last tracked frame."""
    num_unique_objects: int = 0
    mostly_tracked: int = 0
    """Gt objects matched in >= 80% of the frames they appear in."""
    partially_tracked: int = 0
    mostly_lost: int = 0
    """Gt objects matched in < 20% of their frames."""
    total_distance: float = 0.0
    """Sum of the distances of all matched pairs (switches included)."""
    idtp: int = 0
    idfp: int = 0
    idfn: int = 0

    @property
    def num_detections(self) -> int:
        return self.num_matches + self.num_switches

    @property
    def mota(self) -> float:
        return 1.0 - _ratio(self.num_misses + self.num_false_positives + self.num_switches, self.num_objects)

    @property
    def motp(self) -> float:
        return _ratio(self.total_distance, self.num_detections)

    @property
    def precision(self) -> float:
        return _ratio(self.num_detections, self.num_detections + self.num_false_positives)

    @property
    def recall(self) -> float:
        return _ratio(self.num_detections, self.num_objects)

    @property
    def idp(self) -> float:
        return _ratio(self.idtp, self.idtp + self.idfp)

    @property
    def idr(self) -> float:
        return _ratio(self.idtp, self.idtp + self.idfn)

    @property
    def idf1(self) -> float:
        return _ratio(2 * self.idtp, 2 * self.idtp + self.idfp + self.idfn)

    def as_dict(self) -> dict[str, float]:
        """Counts and ratios, for reports and JSON."""
        out: dict[str, float] = asdict(self)
        for name in ("num_detections", "mota", "motp", "idf1", "idp", "idr", "precision", "recall"):
            out[name] = getattr(self, name)
        return out


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / denominator if denominator else float("nan")


def summarize(per_sequence: Mapping[str, MotScores] | Iterable[MotScores]) -> MotScores:
    """Overall scores over sequences, as motmetrics' OVERALL row: counts are summed, ratios recomputed from the sums
    (so MOTA/IDF1 weigh sequences by their size, not equally)."""
    scores = list(per_sequence.values()) if isinstance(per_sequence, Mapping) else list(per_sequence)
    totals = {f.name: sum(getattr(s, f.name) for s in scores) for f in fields(MotScores)}
    totals["total_distance"] = float(totals["total_distance"])
    return MotScores(**totals)


def iou_tlwh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N, M)`` IoU between ``(N, 4)`` and ``(M, 4)`` ``x, y, w, h`` boxes; 0 where the union is empty."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    a_max, b_max = a[:, :2] + a[:, 2:], b[:, :2] + b[:, 2:]
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a_max[:, None], b_max[None])
    inter = np.prod(np.clip(high - low, 0.0, None), axis=2)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def evaluate_mot(gt: MotRows, hypotheses: MotRows, iou_threshold: float = 0.5) -> MotScores:
    """Score a tracker's rows against ground-truth rows of one sequence, pairing boxes with ``IoU >= iou_threshold``.

    Both inputs hold at most one row per (frame, id); read ground truth with ``read_mot(..., min_confidence=1)``.
    Frames are the union of both inputs' frames; a frame with hypotheses only counts them all as false positives.
    """
    if not isinstance(gt, MotRows) or not isinstance(hypotheses, MotRows):
        raise ConfigError(f"evaluate_mot: expected MotRows, got {type(gt).__name__}, {type(hypotheses).__name__}")
    if not 0.0 < iou_threshold <= 1.0:
        raise ConfigError(f"evaluate_mot: iou_threshold must be in (0, 1], got {iou_threshold!r}")
    gt, hypotheses = _by_frame(gt, "gt"), _by_frame(hypotheses, "hypotheses")
    frames = np.union1d(gt.frames, hypotheses.frames)

    def per_frame():
        g_start, g_stop = np.searchsorted(gt.frames, frames, "left"), np.searchsorted(gt.frames, frames, "right")
        h_start, h_stop = (np.searchsorted(hypotheses.frames, frames, side) for side in ("left", "right"))
        for gs, ge, hs, he in zip(g_start, g_stop, h_start, h_stop):
            distances = 1.0 - iou_tlwh(gt.boxes[gs:ge], hypotheses.boxes[hs:he])
            yield gt.ids[gs:ge], hypotheses.ids[hs:he], distances

    # motmetrics thresholds the distance 1 - IoU, not the IoU: the same test, kept identical in floating point.
    return evaluate_frames(per_frame(), max_distance=1.0 - iou_threshold)


def _by_frame(rows: MotRows, name: str) -> MotRows:
    """Rows sorted by (frame, id); a repeated (frame, id) is an error (it would be one object in two places)."""
    rows = rows[np.lexsort((rows.ids, rows.frames))]
    same = (rows.frames[1:] == rows.frames[:-1]) & (rows.ids[1:] == rows.ids[:-1])
    if same.any():
        k = int(np.flatnonzero(same)[0])
        hint = " (id -1 marks detections without identity: track them first)" if rows.ids[k] == -1 else ""
        raise ConfigError(f"evaluate_mot: {name} has id {rows.ids[k]} twice in frame {rows.frames[k]}{hint}")
    return rows


def evaluate_frames(
    frames: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], max_distance: float = 0.5
) -> MotScores:
    """The scorer behind :func:`evaluate_mot`, for any distance (mask ``1 - IoU`` for segmentation tracks, pixels...).

    ``frames`` yields, in time order, ``(gt_ids (N,), hypothesis_ids (M,), distances (N, M))`` per frame; ids are
    hashable scalars, unique within a frame; a distance that is NaN or > ``max_distance`` forbids the pair.
    """
    if not max_distance >= 0:
        raise ConfigError(f"evaluate_frames: max_distance must be >= 0, got {max_distance!r}")
    last_hypothesis: dict[Hashable, Hashable] = {}  # gt id -> hypothesis id of its latest match
    tracked: dict[Hashable, list[bool]] = {}  # gt id -> matched or not, per frame it appears in
    pairable: Counter = Counter()  # (gt id, hypothesis id) -> frames in which they may pair
    gt_frames: Counter = Counter()
    hyp_frames: Counter = Counter()
    num_frames = matches = switches = misses = false_positives = 0
    total_distance = 0.0

    for frame_number, (gt_ids, hyp_ids, distances) in enumerate(frames):
        gt_list, hyp_list = np.asarray(gt_ids).reshape(-1).tolist(), np.asarray(hyp_ids).reshape(-1).tolist()
        n, m = len(gt_list), len(hyp_list)
        distances = np.asarray(distances, dtype=np.float64).reshape(n, m)
        if len(set(gt_list)) != n or len(set(hyp_list)) != m:
            raise ConfigError(f"evaluate_frames: frame {frame_number} repeats a gt or hypothesis id")
        num_frames += 1
        gt_frames.update(gt_list)
        hyp_frames.update(hyp_list)
        allowed = distances <= max_distance  # False for NaN too
        for i, j in zip(*np.nonzero(allowed)):
            pairable[gt_list[i], hyp_list[j]] += 1

        gt_done, hyp_done = np.zeros(n, bool), np.zeros(m, bool)
        # 1. Continue earlier correspondences that are still allowed, in gt order.
        column = {h: j for j, h in enumerate(hyp_list)}
        for i, g in enumerate(gt_list):
            j = column.get(last_hypothesis.get(g, _NONE), -1)
            if j >= 0 and not hyp_done[j] and allowed[i, j]:
                gt_done[i] = hyp_done[j] = True
                matches += 1
                total_distance += distances[i, j]
        # 2. Assign the rest: as many pairs as possible, then least total distance.
        for i, j in _assign(distances, allowed & ~gt_done[:, None] & ~hyp_done[None, :]):
            g, h = gt_list[i], hyp_list[j]
            gt_done[i] = hyp_done[j] = True
            if g in last_hypothesis and last_hypothesis[g] != h:
                switches += 1
            else:
                matches += 1
            last_hypothesis[g] = h
            total_distance += distances[i, j]
        misses += n - int(gt_done.sum())
        false_positives += m - int(hyp_done.sum())
        for g, done in zip(gt_list, gt_done.tolist()):
            tracked.setdefault(g, []).append(done)

    track_counts = _track_quality(tracked)
    idtp = _identity_true_positives(pairable)
    num_objects, num_predictions = sum(gt_frames.values()), sum(hyp_frames.values())
    return MotScores(
        num_frames=num_frames,
        num_objects=num_objects,
        num_predictions=num_predictions,
        num_matches=matches,
        num_switches=switches,
        num_false_positives=false_positives,
        num_misses=misses,
        num_unique_objects=len(gt_frames),
        total_distance=float(total_distance),
        idtp=idtp,
        idfp=num_predictions - idtp,
        idfn=num_objects - idtp,
        **track_counts,
    )


_NONE = object()  # "no earlier match": distinct from every id, None included


def _assign(distances: np.ndarray, allowed: np.ndarray) -> list[tuple[int, int]]:
    """Pairs ``(i, j)`` of a maximum-cardinality, then minimum-distance, matching on the allowed entries."""
    rows, cols = np.flatnonzero(allowed.any(axis=1)), np.flatnonzero(allowed.any(axis=0))
    if rows.size == 0:
        return []
    ok = allowed[np.ix_(rows, cols)]
    cost = distances[np.ix_(rows, cols)]
    # A forbidden entry costs more than any set of allowed ones could save, so the solver never trades a pair
    # for a lower total: with allowed costs in [-c, c], each of r rows, 2rc + 1 is enough.
    c = float(np.abs(cost[ok]).max()) + 1.0
    cost = np.where(ok, cost, 2.0 * min(ok.shape) * c + 1.0)
    r, k = linear_sum_assignment(cost)
    keep = ok[r, k]
    return list(zip(rows[r[keep]].tolist(), cols[k[keep]].tolist()))


def _track_quality(tracked: dict[Hashable, list[bool]]) -> dict[str, int]:
    fragmentations = mostly_tracked = mostly_lost = 0
    for history in tracked.values():
        flags = np.asarray(history, dtype=bool)
        hit = np.flatnonzero(flags)
        if hit.size:
            span = flags[hit[0] : hit[-1] + 1]
            fragmentations += int(np.count_nonzero(span[:-1] & ~span[1:]))
        ratio = hit.size / flags.size
        mostly_tracked += ratio >= 0.8
        mostly_lost += ratio < 0.2
    return {
        "num_fragmentations": fragmentations,
        "mostly_tracked": int(mostly_tracked),
        "partially_tracked": len(tracked) - int(mostly_tracked) - int(mostly_lost),
        "mostly_lost": int(mostly_lost),
    }


def _identity_true_positives(pairable: Counter) -> int:
    """IDTP of the one-to-one gt-id / hypothesis-id matching with the most co-pairable frames.

    Maximising IDTP is the same problem as motmetrics' minimum IDFP + IDFN: their sum is gt boxes + hypothesis
    boxes - 2 IDTP.
    """
    if not pairable:
        return 0
    gt_index, hyp_index = {}, {}
    for g, h in pairable:
        gt_index.setdefault(g, len(gt_index))
        hyp_index.setdefault(h, len(hyp_index))
    counts = np.zeros((len(gt_index), len(hyp_index)), dtype=np.int64)
    for (g, h), count in pairable.items():
        counts[gt_index[g], hyp_index[h]] = count
    r, c = linear_sum_assignment(counts, maximize=True)
    return int(counts[r, c].sum())
