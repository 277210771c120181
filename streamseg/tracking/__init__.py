"""Multi-object tracking: MOTChallenge file I/O and tracking metrics (CLEAR-MOT, identity).

The metrics are hand-written: motmetrics 1.4.0 calls ``np.asfarray``, removed in numpy 2, so it fails here.
"""

from streamseg.tracking.metrics import MotScores, evaluate_frames, evaluate_mot, iou_tlwh, summarize
from streamseg.tracking.mot_io import MotRows, read_mot, write_mot

__all__ = ["MotRows", "MotScores", "evaluate_frames", "evaluate_mot", "iou_tlwh", "read_mot", "summarize", "write_mot"]

# The tracker (tracker.py, kalman.py, association.py, offline.py).
from streamseg.tracking.association import assign, box_iou, get_distance, iou_distance, mask_iou, mask_iou_distance
from streamseg.tracking.kalman import BoxKalman
from streamseg.tracking.offline import rescale_scores, track_rows
from streamseg.tracking.tracker import Tracker, TrackerConfig, TrackInfo, TrackState

__all__ += [
    "BoxKalman", "TrackInfo", "TrackState", "Tracker", "TrackerConfig", "assign", "box_iou", "get_distance",
    "iou_distance", "mask_iou", "mask_iou_distance", "rescale_scores", "track_rows",
]
