"""MOTChallenge I/O and the hand-written CLEAR-MOT / identity metrics (motmetrics itself fails under numpy 2)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from streamseg.errors import ConfigError, SourceError
from streamseg.tracking import (MotRows, MotScores, evaluate_frames, evaluate_mot, iou_tlwh, read_mot, summarize,
                                write_mot)
from streamseg.types import Detections

SEQUENCES = ("TUD-Campus", "TUD-Stadtmitte")

# evalkit MANIFEST.md: the reference tracker scored by motmetrics 1.4.0 (IoU, distance threshold 0.5, gt
# min_confidence=1). seq -> (MOTA, MOTP, IDF1, ID switches, FP, FN)
REFERENCE_TABLE = {
    "TUD-Campus": ("0.5265", "0.2772", "0.5577", 7, 13, 150),
    "TUD-Stadtmitte": ("0.5640", "0.3459", "0.6446", 7, 45, 452),
    "overall": ("0.5551", "0.3302", "0.6243", 14, 58, 602),
}


def _load(evalkit: Path, seq: str) -> tuple[MotRows, MotRows]:
    mot = evalkit / "mot"
    gt = read_mot(mot / "MOT15" / seq / "gt" / "gt.txt", min_confidence=1)
    return gt, read_mot(mot / "reference_tracker" / seq / "tracks.txt")


@pytest.fixture(scope="module")
def reference_scores(evalkit: Path) -> dict[str, MotScores]:
    per_sequence = {seq: evaluate_mot(*_load(evalkit, seq)) for seq in SEQUENCES}
    return {**per_sequence, "overall": summarize(per_sequence)}


def _row(scores: MotScores) -> tuple:
    return (f"{scores.mota:.4f}", f"{scores.motp:.4f}", f"{scores.idf1:.4f}", scores.num_switches,
            scores.num_false_positives, scores.num_misses)


@pytest.mark.parametrize("name", [*SEQUENCES, "overall"])
def test_reproduces_manifest_reference_table(reference_scores, name):
    assert _row(reference_scores[name]) == REFERENCE_TABLE[name]


@pytest.mark.parametrize(
    "seq, idp, idr, recall, precision, mt_pt_ml, fragmentations",
    [
        # py-motmetrics README, "MOTChallenge compatibility": the same tracker, also matching the MATLAB devkit.
        ("TUD-Campus", "73.0", "45.1", "58.2", "94.1", (1, 6, 1), 7),
        ("TUD-Stadtmitte", "82.0", "53.1", "60.9", "94.0", (5, 4, 1), 6),
    ],
)
def test_secondary_metrics_match_published_values(reference_scores, seq, idp, idr, recall, precision, mt_pt_ml,
                                                  fragmentations):
    s = reference_scores[seq]
    assert [f"{100 * v:.1f}" for v in (s.idp, s.idr, s.recall, s.precision)] == [idp, idr, recall, precision]
    assert (s.mostly_tracked, s.partially_tracked, s.mostly_lost) == mt_pt_ml
    assert s.num_fragmentations == fragmentations


def test_counts_are_consistent(reference_scores):
    for s in reference_scores.values():
        assert s.num_detections + s.num_misses == s.num_objects
        assert s.num_detections + s.num_false_positives == s.num_predictions
        assert s.idtp + s.idfn == s.num_objects and s.idtp + s.idfp == s.num_predictions


# ---- hand-made cases with known answers ------------------------------------------------------------------------


def _rows(*rows) -> MotRows:
    """rows: (frame, id, x, y, w, h)."""
    table = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
    return MotRows(table[:, 0], table[:, 1], table[:, 2:6], np.ones(len(table)))


# Two people far apart, four frames.
GT = _rows(*[(f, 1, 10, 10, 20, 40) for f in range(1, 5)], *[(f, 2, 200, 10, 20, 40) for f in range(1, 5)])


def test_perfect_tracker_on_real_ground_truth(evalkit):
    gt, _ = _load(evalkit, "TUD-Stadtmitte")
    hyp = MotRows(gt.frames, gt.ids + 100, gt.boxes, gt.confidences)[::-1]  # other ids, other order
    s = evaluate_mot(gt, hyp)
    assert (s.mota, s.idf1, s.num_switches, s.num_false_positives, s.num_misses) == (1.0, 1.0, 0, 0, 0)
    assert s.motp == pytest.approx(0.0, abs=1e-12)  # x + w - x is not always w in floating point
    assert s.num_objects == len(gt) == 1156 and s.num_unique_objects == 10


def test_one_id_change_is_one_switch():
    hyp = _rows(*[(f, 7 if f <= 2 else 8, 10, 10, 20, 40) for f in range(1, 5)],
                *[(f, 9, 200, 10, 20, 40) for f in range(1, 5)])
    s = evaluate_mot(GT, hyp)
    assert (s.num_switches, s.num_matches, s.num_false_positives, s.num_misses) == (1, 7, 0, 0)
    assert s.mota == pytest.approx(1 - 1 / 8)
    # IDF1: id 1 keeps 2 of its 4 frames under one hypothesis id, id 2 all 4.
    assert (s.idtp, s.idfp, s.idfn) == (6, 2, 2)
    assert s.idf1 == pytest.approx(0.75)


def test_two_tracks_swapping_ids_are_two_switches():
    hyp = _rows(*[(f, 7 if f <= 2 else 9, 10, 10, 20, 40) for f in range(1, 5)],
                *[(f, 9 if f <= 2 else 7, 200, 10, 20, 40) for f in range(1, 5)])
    s = evaluate_mot(GT, hyp)
    assert s.num_switches == 2 and s.mota == pytest.approx(0.75) and s.idf1 == pytest.approx(0.5)


def test_empty_hypotheses_miss_everything():
    s = evaluate_mot(GT, MotRows.empty())
    assert (s.mota, s.idf1, s.num_misses, s.num_false_positives, s.num_frames) == (0.0, 0.0, len(GT), 0, 4)
    assert math.isnan(s.motp)


def test_hypothesis_in_a_frame_without_ground_truth_is_a_false_positive():
    hyp = MotRows.concatenate([MotRows(GT.frames, GT.ids, GT.boxes, GT.confidences), _rows((9, 5, 0, 0, 10, 10))])
    s = evaluate_mot(GT, hyp)
    assert (s.num_false_positives, s.num_frames, s.num_misses, s.num_switches) == (1, 5, 0, 0)
    assert s.mota == pytest.approx(1 - 1 / 8)


def test_nothing_at_all_gives_nan_ratios_not_errors():
    s = evaluate_mot(MotRows.empty(), MotRows.empty())
    assert s == MotScores() and math.isnan(s.mota) and math.isnan(s.idf1)


def test_iou_threshold_is_inclusive():
    gt = _rows((1, 1, 0, 0, 2, 1))
    assert iou_tlwh(gt.boxes, [[0, 0, 1, 1]])[0, 0] == 0.5
    assert evaluate_mot(gt, _rows((1, 1, 0, 0, 1, 1))).num_matches == 1  # IoU 0.5 exactly: 1 - IoU <= 0.5
    assert evaluate_mot(gt, _rows((1, 1, 0, 0, 0.999, 1))).num_matches == 0


def test_iou_of_empty_and_disjoint_boxes_is_zero():
    assert iou_tlwh([[0, 0, 0, 0], [0, 0, 1, 1]], [[0, 0, 0, 0], [5, 5, 1, 1]]).tolist() == [[0, 0], [0, 0]]
    assert iou_tlwh(np.zeros((0, 4)), np.zeros((3, 4))).shape == (0, 3)


def test_motmetrics_readme_example_and_overall():
    # py-motmetrics README "Usage": three frames of given distances, no threshold beyond NaN.
    frames = [
        (["a", "b"], [1, 2, 3], [[0.1, np.nan, 0.3], [0.5, 0.2, 0.3]]),
        (["a", "b"], [1], [[0.2], [0.4]]),
        (["a", "b"], [1, 3], [[0.6, 0.2], [0.1, 0.6]]),  # "a" keeps 1 although (a, 3) is cheaper; "b" switches
    ]
    full = evaluate_frames(frames, max_distance=np.inf)
    part = evaluate_frames(frames[:2], max_distance=np.inf)
    assert (full.num_switches, full.num_fragmentations, full.mostly_tracked, full.partially_tracked) == (1, 1, 1, 1)
    expected = {"full": (0.5, 0.34, 5 / 6), "part": (0.5, 1 / 6, 0.75), "overall": (0.5, 0.275, 0.8)}
    for name, s in (("full", full), ("part", part), ("overall", summarize({"full": full, "part": part}))):
        assert (s.mota, s.motp, s.idf1) == pytest.approx(expected[name]), name


def test_assignment_prefers_more_pairs_over_lower_distance():
    # (a, 1) alone is cheapest, but (a, 2) + (b, 1) pairs both objects.
    s = evaluate_frames([(["a", "b"], [1, 2], [[0.1, 0.2], [0.3, np.nan]])])
    assert (s.num_matches, s.num_misses, s.total_distance) == (2, 0, pytest.approx(0.5))


def test_fragmentation_counts_gaps_inside_the_tracked_span_only():
    def frame(hit):
        return (["a"], [1] if hit else [], [[0.0]] if hit else np.zeros((1, 0)))

    s = evaluate_frames([frame(h) for h in (False, True, False, False, True, True, False)])
    assert (s.num_fragmentations, s.num_misses, s.partially_tracked) == (1, 4, 1)


def test_evaluate_rejects_bad_input():
    with pytest.raises(ConfigError, match="id -1 twice in frame 1"):
        evaluate_mot(GT, _rows((1, -1, 0, 0, 1, 1), (1, -1, 5, 5, 1, 1)))
    with pytest.raises(ConfigError, match="iou_threshold"):
        evaluate_mot(GT, GT, iou_threshold=0)
    with pytest.raises(ConfigError, match="MotRows"):
        evaluate_mot(GT, np.zeros((0, 6)))


# ---- file I/O ---------------------------------------------------------------------------------------------------


def test_reads_mot15_files(evalkit):
    mot = evalkit / "mot" / "MOT15" / "TUD-Campus"
    gt = read_mot(mot / "gt" / "gt.txt", min_confidence=1)
    assert len(gt) == 359 and len(np.unique(gt.ids)) == 8  # MOT15 gt: conf is always 1, nothing is dropped
    assert gt.frames.dtype == np.int64 and gt.boxes.dtype == np.float64 and gt.frames.min() == 1
    assert gt.boxes[0].tolist() == [399, 182, 121, 229]
    det = read_mot(mot / "det" / "det.txt")
    assert len(det) == 322 and (det.ids == -1).all() and gt.frames.max() == det.frames.max() == 71
    assert len(read_mot(mot / "det" / "det.txt", min_confidence=20)) < len(det)


def test_min_confidence_drops_mot16_ignored_ground_truth(tmp_path):
    path = tmp_path / "gt.txt"
    path.write_text("1,1,10,10,5,5,1,1,1\n1,2,30,10,5,5,0,7,0.2\n2,1,11,10,5,5,1,1,1\n")
    assert len(read_mot(path)) == 3
    assert read_mot(path, min_confidence=1).ids.tolist() == [1, 1]


def test_write_then_read_gives_the_same_rows(tmp_path, evalkit):
    source = evalkit / "mot" / "reference_tracker" / "TUD-Campus" / "tracks.txt"
    rows = read_mot(source)
    out = tmp_path / "tracks.txt"
    write_mot(out, rows)
    assert out.read_text() == source.read_text()  # same numbers, same spelling
    back = read_mot(out)
    for name in ("frames", "ids", "boxes", "confidences"):
        np.testing.assert_array_equal(getattr(back, name), getattr(rows, name))


def test_whitespace_separated_and_short_rows(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("\n1 3 1.5 2 10 20\n\n2\t3\t1.5\t2\t10\t20\t0.5\n")
    rows = read_mot(path)
    assert rows.ids.tolist() == [3, 3] and rows.confidences.tolist() == [1.0, 0.5]


def test_empty_file_gives_empty_rows(tmp_path):
    (tmp_path / "t.txt").write_text("")
    rows = read_mot(tmp_path / "t.txt")
    assert len(rows) == 0 and rows.boxes.shape == (0, 4)


def test_rows_from_pipeline_detections(tmp_path):
    dets = Detections([[0, 0, 10, 20], [5.5, 6.25, 8, 9]], [0.9, 0.4], [1, 1]).with_track_ids([4, 2])
    rows = MotRows.from_detections(0, dets)
    assert rows.frames.tolist() == [1, 1] and rows.ids.tolist() == [4, 2]
    assert rows.boxes.tolist() == [[1, 1, 10, 20], [6.5, 7.25, 2.5, 2.75]]
    np.testing.assert_allclose(rows.boxes_xyxy(), dets.boxes)
    write_mot(tmp_path / "t.txt", rows)
    assert (tmp_path / "t.txt").read_text().splitlines()[0] == "1,4,1,1,10,20,0.9,-1,-1,-1"
    assert MotRows.from_detections(3, dets.with_track_ids(None)).ids.tolist() == [-1, -1]
    zero_based = MotRows.from_detections(0, dets, box_origin=0)  # the streamseg.scenes gt convention
    assert zero_based.boxes[0].tolist() == [0, 0, 10, 20]
    np.testing.assert_allclose(zero_based.boxes_xyxy(box_origin=0), dets.boxes)
    assert MotRows.from_detections(3, Detections.empty()).boxes.shape == (0, 4)


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("1,1,10,10,5,5,1\n1,2,10,x,5,5,1\n", 2, "column 'y' is not a number: 'x'"),
        ("1,1,10,10,5\n", 1, "expected at least 6 values"),
        ("0,1,10,10,5,5,1\n", 1, "frame must be an integer >= 1"),
        ("1.5,1,10,10,5,5,1\n", 1, "frame must be an integer >= 1"),
        ("1,2.5,10,10,5,5,1\n", 1, "id must be an integer"),
        ("1,1,10,10,-5,5,1\n", 1, "negative box size"),
        ("1,1,nan,10,5,5,1\n", 1, "column 'x' is not finite"),
        ("1,1,10,10,5,5,1\n2,1,10,10,5,5,1\n\n1,1,12,10,5,5,1\n", 4, "frame 1 id 1 already appears on line 1"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(SourceError) as info:
        read_mot(path)
    assert str(info.value).startswith(f"{path}:{line}: ") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        read_mot(tmp_path / "nope.txt")


def test_write_rejects_bad_rows(tmp_path):
    with pytest.raises(ConfigError, match="1-based"):
        write_mot(tmp_path / "t.txt", _rows((0, 1, 0, 0, 1, 1)))
    with pytest.raises(ConfigError, match="does not exist"):
        write_mot(tmp_path / "missing" / "t.txt", GT)
    with pytest.raises(ConfigError, match="non-finite"):
        write_mot(tmp_path / "t.txt", _rows((1, 1, np.nan, 0, 1, 1)))
