"""The ByteTrack-style tracker: shapes, lifecycle, association stages, back-fill, masks, CLI on MOT15, speed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamseg.cli import main
from streamseg.errors import ConfigError
from streamseg.tracking import (BoxKalman, Tracker, TrackerConfig, TrackState, assign, evaluate_mot, mask_iou,
                                read_mot, rescale_scores, summarize, track_rows)
from streamseg.types import Detections, InstanceMasks

SEQUENCES = ("TUD-Campus", "TUD-Stadtmitte")
REFERENCE = {"TUD-Campus": (0.5265, 0.5577), "TUD-Stadtmitte": (0.5640, 0.6446)}  # evalkit MANIFEST: MOTA, IDF1
# The one MOT15 setting (streamseg/tracking/offline.py says why), as command-line flags.
MOT15_FLAGS = ["--scores", "minmax", "--high-threshold", "0.25", "--max-distance", "0.7", "--max-lost", "7",
               "--smooth-boxes"]
MOT15_CONFIG = TrackerConfig(high_threshold=0.25, max_distance=0.7, max_lost=7, smooth_boxes=True)


def dets(boxes, scores=None, labels=None, masks=None) -> Detections:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    scores = np.full(n, 0.9) if scores is None else scores
    labels = np.ones(n) if labels is None else labels
    return Detections(boxes, scores, labels, ("background", "person", "car"), masks)


def box(x, y, w=40.0, h=80.0):
    return [x, y, x + w, y + h]


def run(tracker: Tracker, frames) -> list[Detections]:
    return [tracker.update(d) for d in frames]


# --- shapes first -------------------------------------------------------------------------------------------------

def test_empty_detections_keep_shapes_and_dtypes():
    tracker = Tracker()
    out = tracker.update(Detections.empty(("background", "person")))
    assert out.boxes.shape == (0, 4) and out.boxes.dtype == np.float32
    assert out.scores.shape == (0,) and out.labels.shape == (0,)
    assert out.track_ids is not None and out.track_ids.shape == (0,) and out.track_ids.dtype == np.int64
    assert out.class_names == ("background", "person") and tracker.tracks == ()
    with_masks = Tracker(TrackerConfig(distance="mask_iou")).update(Detections.empty((), image_size=(48, 64)))
    assert with_masks.masks is not None and len(with_masks.masks) == 0 and with_masks.masks.image_size == (48, 64)


def test_empty_frame_between_tracked_frames():
    tracker = Tracker(TrackerConfig(min_hits=1))
    assert tracker.update(dets([box(0, 0)])).track_ids.tolist() == [1]
    empty = tracker.update(dets(np.zeros((0, 4))))
    assert len(empty) == 0 and empty.track_ids.shape == (0,)
    assert [t.state for t in tracker.tracks] == [TrackState.LOST]
    assert tracker.update(dets([box(0, 0)])).track_ids.tolist() == [1]


# --- identities ---------------------------------------------------------------------------------------------------

def crossing_frames(occlude: bool = True) -> list[Detections]:
    """A walks right, B walks left at the same height; while they overlap only A (in front) is detected."""
    frames = []
    for f in range(50):
        xa, xb = 10.0 + 6 * f, 310.0 - 6 * f
        boxes = [box(xa, 100)]
        if not (occlude and abs(xa - xb) < 40):
            boxes.append(box(xb, 104))
        frames.append(dets(boxes))
    return frames


def identity_by_side(outputs: list[Detections]) -> tuple[set, set]:
    """Track ids seen on the left-to-right walker (A) and on the right-to-left one (B), before and after."""
    a, b = set(), set()
    for f, out in enumerate(outputs):
        xa = 10.0 + 6 * f
        for x1, track_id in zip(out.boxes[:, 0], out.track_ids):
            (a if abs(x1 - xa) < 1 else b).add(int(track_id))
    return a, b


def test_crossing_with_occlusion_keeps_identities():
    a, b = identity_by_side(run(Tracker(), crossing_frames()))
    assert a == {1} and b == {2}


def test_ids_are_deterministic_and_count_per_instance_from_1():
    frames = crossing_frames()
    first, second = run(Tracker(), frames), run(Tracker(), frames)
    for x, y in zip(first, second):
        np.testing.assert_array_equal(x.track_ids, y.track_ids)
        np.testing.assert_array_equal(x.boxes, y.boxes)
    ids = np.unique(np.concatenate([o.track_ids for o in first]))
    assert ids.tolist() == [1, 2]  # a second tracker started again at 1: no state shared across instances


def test_output_keeps_detection_order_masks_and_class_names():
    frames = [dets([box(0, 0), box(200, 0)], labels=[2, 1]) for _ in range(3)]
    out = run(Tracker(), frames)[-1]
    assert out.labels.tolist() == [2, 1] and out.track_ids.tolist() == [1, 2]
    np.testing.assert_array_equal(out.boxes, frames[-1].boxes)
    assert out.class_names == frames[-1].class_names


# --- association stages -------------------------------------------------------------------------------------------

def test_low_score_second_stage_keeps_the_track():
    scores = [0.9] * 5 + [0.3] * 5 + [0.9] * 3  # partly occluded for 5 frames: the detector is less sure

    def frames():
        return [dets([box(10 + 3 * f, 50)], scores=[s]) for f, s in enumerate(scores)]

    with_second = run(Tracker(TrackerConfig(high_threshold=0.5, low_threshold=0.1)), frames())
    assert [o.track_ids.tolist() for o in with_second[2:]] == [[1]] * 11

    without = run(Tracker(TrackerConfig(high_threshold=0.5, low_threshold=0.5)), frames())
    assert all(len(o) == 0 for o in without[5:10])  # the same detections are ignored: the track is lost


def test_low_score_detections_never_start_tracks():
    out = run(Tracker(TrackerConfig(min_hits=1)), [dets([box(0, 0)], scores=[0.3]) for _ in range(5)])
    assert all(len(o) == 0 for o in out)


def test_new_track_threshold_defaults_to_high_threshold():
    frames = [dets([box(0, 0)], scores=[0.55]) for _ in range(3)]
    assert len(run(Tracker(TrackerConfig(min_hits=1)), frames)[-1]) == 1
    assert len(run(Tracker(TrackerConfig(min_hits=1, new_track_threshold=0.6)), frames)[-1]) == 0


# --- lifecycle ----------------------------------------------------------------------------------------------------

def test_tentative_tracks_are_output_only_once_confirmed():
    tracker = Tracker(TrackerConfig(min_hits=3))
    outputs = run(tracker, [dets([box(5 * f, 0)]) for f in range(4)])
    assert [len(o) for o in outputs] == [0, 0, 1, 1]
    assert tracker.tracks[0].state == TrackState.CONFIRMED and tracker.tracks[0].hits == 4


def test_tentative_track_missed_once_is_dropped():
    tracker = Tracker(TrackerConfig(min_hits=3))
    run(tracker, [dets([box(0, 0)]), dets([box(0, 0)]), dets(np.zeros((0, 4)))])
    assert tracker.tracks == ()
    out = run(tracker, [dets([box(0, 0)])] * 3)
    assert out[-1].track_ids.tolist() == [2]  # a new track, a new id: ids are never reused


def test_lost_tracks_are_removed_after_the_buffer():
    tracker = Tracker(TrackerConfig(min_hits=1, max_lost=3))
    tracker.update(dets([box(0, 0)]))
    for missed in range(1, 4):
        tracker.update(dets(np.zeros((0, 4))))
        assert [(t.state, t.misses) for t in tracker.tracks] == [(TrackState.LOST, missed)]
    tracker.update(dets(np.zeros((0, 4))))
    assert tracker.tracks == ()


def test_lost_track_found_again_keeps_its_id():
    tracker = Tracker(TrackerConfig(min_hits=1, max_lost=5))
    frames = [dets([box(10 + 4 * f, 0)]) if not 3 <= f < 6 else dets(np.zeros((0, 4))) for f in range(9)]
    outputs = run(tracker, frames)
    assert [o.track_ids.tolist() for o in outputs] == [[1]] * 3 + [[]] * 3 + [[1]] * 3


def test_max_lost_seconds_uses_update_times():
    tracker = Tracker(TrackerConfig(min_hits=1, max_lost_seconds=0.5))
    with pytest.raises(ConfigError, match="time is required"):
        tracker.update(dets([box(0, 0)]))
    tracker.update(dets([box(0, 0)]), time=0.0)
    tracker.update(dets(np.zeros((0, 4))), time=0.4)
    assert len(tracker.tracks) == 1
    tracker.update(dets(np.zeros((0, 4))), time=0.6)
    assert tracker.tracks == ()


# --- back-fill and history ----------------------------------------------------------------------------------------

def test_backfill_emits_tentative_frames_once_confirmed():
    tracker = Tracker(TrackerConfig(min_hits=3), keep_history=True)
    frames = [dets([box(5 * f, 0), box(300, 0)] if f < 2 else [box(5 * f, 0)]) for f in range(5)]
    live = run(tracker, frames)
    assert [o.track_ids.tolist() for o in live] == [[], [], [1], [1], [1]]
    history = tracker.history()
    assert [index for index, _ in history] == [0, 1, 2, 3, 4]
    assert all(d.track_ids.tolist() == [1] for _, d in history)  # the 2-frame object was never confirmed: absent
    np.testing.assert_array_equal(history[0][1].boxes, frames[0].boxes[:1])


def test_history_needs_keep_history():
    with pytest.raises(ConfigError, match="keep_history"):
        Tracker().history()


def test_history_fills_bridged_gaps_by_interpolation():
    tracker = Tracker(TrackerConfig(min_hits=1, max_lost=5), keep_history=True)
    frames = [dets([box(10.0 * f, 0)]) if f not in (2, 3) else dets(np.zeros((0, 4))) for f in range(6)]
    run(tracker, frames)
    assert [index for index, _ in tracker.history(max_gap=0)] == [0, 1, 4, 5]
    assert [index for index, _ in tracker.history(max_gap=1)] == [0, 1, 4, 5]  # the gap is 2 frames long
    filled = dict(tracker.history(max_gap=None))
    assert sorted(filled) == [0, 1, 2, 3, 4, 5]
    np.testing.assert_allclose(filled[2].boxes, [box(20, 0)], atol=1e-4)
    np.testing.assert_allclose(filled[3].boxes, [box(30, 0)], atol=1e-4)
    assert filled[3].track_ids.tolist() == [1]


# --- classes ------------------------------------------------------------------------------------------------------

def test_per_class_versus_class_agnostic():
    frames = [dets([box(0, 0)], labels=[1 if f < 3 else 2]) for f in range(6)]
    per_class = run(Tracker(TrackerConfig(min_hits=1)), frames)
    assert [o.track_ids.tolist() for o in per_class] == [[1]] * 3 + [[2]] * 3
    agnostic = run(Tracker(TrackerConfig(min_hits=1, class_agnostic=True)), frames)
    assert [o.track_ids.tolist() for o in agnostic] == [[1]] * 6
    assert agnostic[-1].labels.tolist() == [2]  # the track follows its latest detection's label


def test_per_class_keeps_overlapping_objects_of_different_classes_apart():
    # a person in front of a car: the boxes overlap a lot, the detection order flips every frame
    person, car = box(100, 100, 40, 80), box(90, 110, 60, 60)
    frames = [dets([person, car], labels=[1, 2]) if f % 2 else dets([car, person], labels=[2, 1]) for f in range(8)]
    out = run(Tracker(TrackerConfig(min_hits=1, max_distance=0.95)), frames)
    assert [dict(zip(o.labels.tolist(), o.track_ids.tolist())) for o in out] == [{2: 1, 1: 2}] * 8


# --- masks --------------------------------------------------------------------------------------------------------

def triangle_masks(order: tuple[int, int]) -> InstanceMasks:
    """Two objects sharing one 60x60 box: one fills the upper-left triangle, the other the lower-right."""
    yy, xx = np.mgrid[:60, :60]
    upper, lower = xx + yy < 58, xx + yy > 60
    crops = [(upper, lower)[i] for i in order]
    return InstanceMasks(crops, np.array([[20, 20], [20, 20]]), (100, 100))


def test_mask_iou_association_tells_apart_objects_with_the_same_box():
    frames = []
    for f in range(6):
        order = (0, 1) if f % 2 == 0 else (1, 0)
        frames.append(dets([box(20, 20, 60, 60)] * 2, labels=[1, 1], masks=triangle_masks(order)))

    def id_of_upper(outputs):  # the upper-left triangle is the crop whose top-left pixel is set
        return [int(o.track_ids[[bool(c[0, 0]) for c in o.masks.crops].index(True)]) for o in outputs]

    with_masks = run(Tracker(TrackerConfig(min_hits=1, distance="mask_iou")), frames)
    assert len(set(id_of_upper(with_masks))) == 1  # the upper triangle keeps one id
    boxes_only = run(Tracker(TrackerConfig(min_hits=1, distance="iou")), frames)
    assert len(set(id_of_upper(boxes_only))) == 2  # equal boxes: box IoU cannot tell, ids follow the order


def test_mask_iou_matches_dense_computation():
    rng = np.random.default_rng(3)
    dense_a = np.zeros((4, 50, 70), bool)
    dense_b = np.zeros((5, 50, 70), bool)
    for masks in (dense_a, dense_b):
        for m in masks:
            y, x = rng.integers(0, 30), rng.integers(0, 50)
            m[y : y + rng.integers(5, 20), x : x + rng.integers(5, 20)] = True
            m &= rng.random(m.shape) < 0.8
    dense_b[4] = False  # an empty mask: NaN (the distance then falls back to the boxes)
    expected = np.zeros((4, 5))
    for i, a in enumerate(dense_a):
        for j, b in enumerate(dense_b):
            union = (a | b).sum()
            expected[i, j] = (a & b).sum() / union if b.any() else np.nan
    got = mask_iou(InstanceMasks.from_dense(dense_a), InstanceMasks.from_dense(dense_b))
    np.testing.assert_allclose(got, expected)


def test_mask_iou_tracks_moving_masks():
    def frame(f):
        dense = np.zeros((1, 120, 200), bool)
        dense[0, 30:90, 10 + 8 * f : 40 + 8 * f] = True
        masks = InstanceMasks.from_dense(dense)
        return dets([box(10 + 8 * f, 30, 30, 60)], masks=masks)

    out = run(Tracker(TrackerConfig(min_hits=1, distance="mask_iou")), [frame(f) for f in range(15)])
    assert [o.track_ids.tolist() for o in out] == [[1]] * 15
    assert out[-1].masks is not None and len(out[-1].masks) == 1


# --- building blocks ----------------------------------------------------------------------------------------------

def test_kalman_learns_constant_velocity():
    kalman = BoxKalman()
    mean, cov = kalman.initiate(np.array([box(0, 0)]))
    for f in range(1, 20):
        mean, cov = kalman.predict(mean, cov)
        mean, cov = kalman.update(mean, cov, np.array([box(5.0 * f, 2.0 * f)]))
    mean, cov = kalman.predict(mean, cov)
    np.testing.assert_allclose(BoxKalman.boxes(mean)[0], box(100, 40), atol=1.0)
    assert np.allclose(cov, cov.transpose(0, 2, 1))


@pytest.mark.parametrize("method", ["scipy", "lap"])
def test_assign_is_thresholded_optimum(method):
    if method == "lap":
        pytest.importorskip("lap")
    cost = np.array([[0.1, 0.7, np.inf], [0.75, np.nan, 0.2], [0.9, 0.9, 0.9]])
    rows, cols = assign(cost, max_distance=0.8, method=method)
    assert list(zip(rows.tolist(), cols.tolist())) == [(0, 0), (1, 2)]
    # pairing rows 0-1 and 1-0 (0.7 + 0.75) instead of 0-0 alone would add a pair but cost more than leaving free
    rows, cols = assign(np.array([[0.1, 0.7], [0.75, 0.95]]), max_distance=0.8, method=method)
    assert list(zip(rows.tolist(), cols.tolist())) == [(0, 0)]
    assert assign(np.zeros((0, 3)), 0.5, method)[0].shape == (0,)


def test_scipy_and_lap_agree_on_a_long_run():
    pytest.importorskip("lap")
    frames = crossing_frames()
    a = run(Tracker(TrackerConfig(assignment="scipy")), frames)
    b = run(Tracker(TrackerConfig(assignment="lap")), frames)
    assert all(np.array_equal(x.track_ids, y.track_ids) for x, y in zip(a, b))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("high_threshold", float("nan"), "high_threshold"),
        ("low_threshold", 0.9, "low_threshold"),
        ("max_distance", 1.5, r"max_distance: expected a number in \[0, 1\]"),
        ("min_hits", 0, "min_hits: expected an integer >= 1"),
        ("max_lost", 2.5, "max_lost"),
        ("max_lost_seconds", -1.0, "max_lost_seconds"),
        ("distance", "cosine", "distance"),
        ("assignment", "greedy", "assignment"),
        ("smooth_boxes", "yes", "smooth_boxes"),
        ("position_noise", 0.0, "position_noise"),
    ],
)
def test_config_rejects_bad_values(field, value, message):
    with pytest.raises(ConfigError, match=message):
        TrackerConfig(**{field: value})


def test_distance_accepts_a_callable():
    calls = []

    def center_distance(tracks: Detections, detections: Detections) -> np.ndarray:
        calls.append((len(tracks), len(detections)))
        centers_t = (tracks.boxes[:, :2] + tracks.boxes[:, 2:]) / 2
        centers_d = (detections.boxes[:, :2] + detections.boxes[:, 2:]) / 2
        return np.clip(np.linalg.norm(centers_t[:, None] - centers_d[None], axis=2) / 100.0, 0, 1)

    out = run(Tracker(TrackerConfig(min_hits=1, distance=center_distance)),
              [dets([box(30.0 * f, 0)]) for f in range(5)])  # no box overlap between frames: IoU would fail
    assert [o.track_ids.tolist() for o in out] == [[1]] * 5 and calls[0] == (1, 1)


def test_update_rejects_non_detections():
    with pytest.raises(ConfigError, match="expected Detections"):
        Tracker().update(np.zeros((2, 4)))


def test_rescale_scores():
    np.testing.assert_allclose(rescale_scores(np.array([-1.0, 1.0, 3.0]), "minmax"), [0, 0.5, 1])
    np.testing.assert_allclose(rescale_scores(np.array([2.0, 2.0]), "minmax"), [1, 1])
    with pytest.raises(ConfigError):
        rescale_scores(np.ones(2), "zscore")


# --- MOT15 and the command line ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mot15(evalkit: Path) -> dict[str, tuple[Path, Path]]:
    root = evalkit / "mot" / "MOT15"
    return {seq: (root / seq / "det" / "det.txt", root / seq / "gt" / "gt.txt") for seq in SEQUENCES}


def test_track_cli_beats_the_reference_tracker_on_mot15(mot15, tmp_path, capsys):
    scores = {}
    for seq, (det, gt) in mot15.items():
        out = tmp_path / f"{seq}.txt"
        assert main(["track", str(det), "-o", str(out), "--gt", str(gt), *MOT15_FLAGS]) == 0
        printed = capsys.readouterr().out.split()
        mota, idf1 = float(printed[printed.index("MOTA") + 1]), float(printed[printed.index("IDF1") + 1])
        scores[seq] = evaluate_mot(read_mot(gt, min_confidence=1), read_mot(out))  # the file as written
        assert (round(scores[seq].mota, 4), round(scores[seq].idf1, 4)) == (mota, idf1)
        reference_mota, reference_idf1 = REFERENCE[seq]
        assert mota > reference_mota and idf1 > reference_idf1, (seq, mota, idf1)
    overall = summarize(scores)
    print(f"MOT15 overall: MOTA {overall.mota:.4f} IDF1 {overall.idf1:.4f}")
    assert overall.mota >= 0.60 and overall.idf1 >= 0.70


def test_backfill_and_gap_filling_are_what_win_on_mot15(mot15):
    det, gt = mot15["TUD-Campus"]
    detections, truth = read_mot(det), read_mot(gt, min_confidence=1)
    offline = evaluate_mot(truth, track_rows(detections, MOT15_CONFIG, scores="minmax"))
    live = evaluate_mot(truth, track_rows(detections, MOT15_CONFIG, scores="minmax", live=True))
    assert offline.num_misses < live.num_misses and offline.mota > live.mota


def test_track_writes_one_based_boxes_as_read(tmp_path):
    det = tmp_path / "det.txt"
    det.write_text("".join(f"{f},-1,{1 + 4 * f},11,40,80,0.9,-1,-1,-1\n" for f in range(1, 6)))
    out = tmp_path / "tracks.txt"
    assert main(["track", str(det), "-o", str(out), "--min-hits", "1", "--max-gap", "0"]) == 0
    rows = read_mot(out)
    np.testing.assert_allclose(rows.boxes, read_mot(det).boxes)
    assert rows.ids.tolist() == [1] * 5 and rows.frames.tolist() == [1, 2, 3, 4, 5]


def test_track_on_an_empty_file_writes_an_empty_file(tmp_path):
    det, out = tmp_path / "det.txt", tmp_path / "tracks.txt"
    det.write_text("")
    assert main(["track", str(det), "-o", str(out)]) == 0
    assert out.read_text() == ""


@pytest.mark.parametrize(
    "content, flags, message",
    [
        ("1,-1,10,20,30\n", [], "expected at least 6 values"),
        ("1,-1,ten,20,30,40,0.9\n", [], "column 'x' is not a number"),
        ("0,-1,10,20,30,40,0.9\n", [], "frame must be an integer >= 1"),
        ("1,-1,10,20,30,40,0.9\n", ["--max-lost", "-2"], "max_lost"),
        ("1,-1,10,20,30,40,0.9\n", ["--distance", "cosine"], "distance"),
        ("1,-1,10,20,30,40,0.9\n", ["--max-gap", "-1"], "--max-gap"),
    ],
)
def test_track_cli_bad_input_is_a_one_line_error(tmp_path, capsys, content, flags, message):
    det = tmp_path / "det.txt"
    det.write_text(content)
    assert main(["track", str(det), "-o", str(tmp_path / "out.txt"), *flags]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("streamseg: error: ") and message in err


def test_track_cli_missing_output_folder_is_a_one_line_error(tmp_path, capsys):
    det = tmp_path / "det.txt"
    det.write_text("1,-1,10,20,30,40,0.9\n")
    assert main(["track", str(det), "-o", str(tmp_path / "no" / "out.txt"), "--min-hits", "1"]) == 1
    assert capsys.readouterr().err.count("\n") == 1


# --- many objects ---------------------------------------------------------------------------------------------------
# Speed is measured by bench/bench_tracker.py (>= 1,000 frames/s at 50 objects), not here: timing on a shared
# 2-core machine is noise. This checks what that benchmark's workload must produce.

def test_fifty_moving_objects_keep_fifty_identities():
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 1800, (50, 2)) + rng.normal(0, 2, (50, 2)) * np.arange(300)[:, None, None]
    sizes = rng.uniform(30, 120, (50, 2))
    frames = [Detections(np.concatenate([c, c + sizes], axis=1) + rng.normal(0, 1, (50, 4)),
                         rng.uniform(0.3, 1.0, 50), np.ones(50)) for c in corners]
    out = run(Tracker(), frames)
    assert len(out[-1]) == 50
    assert len(np.unique(np.concatenate([o.track_ids for o in out]))) == 50
