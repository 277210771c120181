"""``streamseg export check MODEL.onnx``: does the exported model detect what PyTorch detects, on real frames?

The reference is the torch backend with the weights the file was exported from (recorded in its metadata, or
``--weights``) and the same size policy, proposal count, detection cap and score threshold. Detections are matched
per frame by label and box (:func:`streamseg.models.parity.match_detections`), then compared: box deviation (max
absolute coordinate difference, pixels), score deviation, mask IoU of the pasted full-frame masks, and the count of
instances either side left unmatched. Default limits are the export contract: every detection matched, boxes within
1 px, every mask IoU >= 0.99.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from streamseg.errors import ConfigError, StreamsegError, WeightsError
from streamseg.models.backend import ModelOptions
from streamseg.models.parity import Matching, match_detections
from streamseg.types import Frame

log = logging.getLogger(__name__)

# Real clips of different sizes and content (../shared/evalkit/MANIFEST.md); one frame each by default.
EVALKIT_CLIPS = (
    "traffic/car_traffic_small.mp4",
    "driving/solidWhiteRight.mp4",
    "surveillance/vtest_pets09_480x360.mp4",
    "traffic/car-detection.mp4",
)


class ParityError(StreamsegError, AssertionError):
    """The exported model and PyTorch disagree beyond the limits."""


@dataclass(frozen=True)
class Limits:
    max_box_deviation: float = 1.0
    min_mask_iou: float = 0.99
    max_unmatched: int = 0


@dataclass
class FrameParity:
    label: str
    reference: int
    candidate: int
    matching: Matching
    seconds: tuple[float, float]
    """(torch, onnx) wall time of predict() on this frame."""


@dataclass
class ParityReport:
    model: str
    flavour: str
    limits: Limits
    frames: list[FrameParity] = field(default_factory=list)

    @property
    def reference_count(self) -> int:
        return sum(f.reference for f in self.frames)

    @property
    def unmatched(self) -> int:
        return sum(f.matching.unmatched for f in self.frames)

    def _values(self, name: str) -> np.ndarray:
        return np.concatenate([getattr(f.matching, name) for f in self.frames] or [np.zeros(0)])

    @property
    def max_box_deviation(self) -> float:
        return float(self._values("box_deviation").max(initial=0.0))

    @property
    def max_score_deviation(self) -> float:
        return float(self._values("score_deviation").max(initial=0.0))

    def mask_iou_percentiles(self) -> dict[str, float]:
        ious = self._values("mask_iou")
        if ious.size == 0:
            return {"min": 1.0, "p1": 1.0, "p50": 1.0}
        return {"min": float(ious.min()), "p1": float(np.percentile(ious, 1)), "p50": float(np.median(ious))}

    @property
    def failures(self) -> list[str]:
        out = []
        if self.reference_count == 0:
            out.append("no reference detections to compare (lower --score-threshold)")
        if self.unmatched > self.limits.max_unmatched:
            out.append(f"{self.unmatched} unmatched > {self.limits.max_unmatched}")
        if self.max_box_deviation > self.limits.max_box_deviation:
            out.append(f"box deviation {self.max_box_deviation:.3f} px > {self.limits.max_box_deviation}")
        if self.mask_iou_percentiles()["min"] < self.limits.min_mask_iou:
            out.append(f"mask IoU min {self.mask_iou_percentiles()['min']:.4f} < {self.limits.min_mask_iou}")
        return out

    @property
    def passed(self) -> bool:
        return not self.failures

    def table(self) -> str:
        lines = [f"{'frame':44s} {'torch':>5s} {'onnx':>5s} {'unmatched':>9s} {'box dev px':>10s} "
                 f"{'score dev':>9s} {'mask IoU min':>12s} {'torch s':>7s} {'onnx s':>7s}"]
        for f in self.frames:
            m = f.matching
            lines.append(
                f"{f.label[-44:]:44s} {f.reference:5d} {f.candidate:5d} {m.unmatched:9d} "
                f"{m.box_deviation.max(initial=0.0):10.4f} {m.score_deviation.max(initial=0.0):9.2e} "
                f"{m.mask_iou.min(initial=1.0):12.4f} {f.seconds[0]:7.2f} {f.seconds[1]:7.2f}")
        p = self.mask_iou_percentiles()
        lines.append(
            f"{self.model} ({self.flavour}): {len(self.frames)} frames, {self.reference_count} reference detections, "
            f"unmatched {self.unmatched}, max box deviation {self.max_box_deviation:.4f} px, max score deviation "
            f"{self.max_score_deviation:.2e}, mask IoU min/p1/p50 {p['min']:.4f}/{p['p1']:.4f}/{p['p50']:.4f} -> "
            + ("PASS" if self.passed else "FAIL: " + "; ".join(self.failures)))
        return "\n".join(lines)


def evalkit_root() -> Path:
    return Path(os.environ.get("STREAMSEG_EVALKIT", Path.cwd().parent / "shared" / "evalkit"))


def read_frames(sources: Sequence[str], per_source: int = 1, skip: int = 30) -> list[Frame]:
    """``per_source`` frames from each source, ``skip`` frames apart (from frame ``skip`` on: past fade-ins)."""
    from streamseg.sources import open_source

    frames = []
    for uri in sources:
        wanted = {skip * (i + 1) for i in range(per_source)}
        with open_source(str(uri), max_frames=max(wanted) + 1) as source:
            picked = [f for f in source if f.index in wanted]
        if not picked:  # shorter than asked: its first frame
            with open_source(str(uri), max_frames=1) as source:
                picked = list(source)
        frames.extend(picked)
    if not frames:
        raise ConfigError("no frames to check on")
    return frames


def default_sources() -> list[str]:
    root = evalkit_root() / "videos"
    sources = [str(root / clip) for clip in EVALKIT_CLIPS if (root / clip).is_file()]
    if not sources:
        raise ConfigError(f"no evalkit clips under {root}: pass --source CLIP (or set STREAMSEG_EVALKIT)")
    return sources


def check_onnx(
    model_path: str | Path,
    frames: Sequence[Frame],
    weights: str | None = None,
    score_threshold: float = 0.0,
    min_size: int | None = None,
    limits: Limits = Limits(),
) -> ParityReport:
    """Compare ``model_path`` run by ONNX Runtime with the torch backend on ``frames``."""
    from streamseg.models.onnx_backend import OnnxMaskRCNN
    from streamseg.models.onnx_graph import load_onnx, read_metadata
    from streamseg.models.torch_maskrcnn import TorchMaskRCNN

    path = Path(model_path)
    meta = read_metadata(load_onnx(path, load_external_data=False), str(path))
    common = dict(
        score_threshold=score_threshold, min_size=min_size or meta["size"]["min_size"],
        max_size=max(meta["size"]["max_size"], min_size or 0), rpn_post_nms_top_n=meta["rpn"]["post_nms_top_n"],
        max_detections=meta["roi_heads"]["detections_per_img"],
    )
    reference_weights = weights or meta["weights"]
    try:
        reference = TorchMaskRCNN(ModelOptions(arch=meta["arch"], weights=reference_weights, **common))
    except WeightsError as err:
        raise WeightsError(f"the PyTorch reference for {path.name}: {err} (pass --weights)") from err
    candidate = OnnxMaskRCNN(ModelOptions(weights=str(path), **common))
    report = ParityReport(f"{path.name} [{meta['arch']}, weights {reference_weights}]", meta["flavour"], limits)
    try:
        for frame in frames:
            t0 = time.perf_counter()
            [ref] = reference.predict([frame])
            t1 = time.perf_counter()
            [got] = candidate.predict([frame])
            t2 = time.perf_counter()
            report.frames.append(FrameParity(f"{frame.source_id}#{frame.index} {frame.width}x{frame.height}",
                                             len(ref), len(got), match_detections(ref, got), (t1 - t0, t2 - t1)))
    finally:
        reference.close()
        candidate.close()
    return report
