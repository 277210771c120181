"""Draw detections onto a frame: translucent masks, box outlines and "name score" labels.

Example::

    annotator = Annotator()
    picture = annotator.annotate(frame.image.copy(), detections)   # draws in place: pass a copy to keep the frame
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import cv2
import numpy as np

from streamseg.types import UNTRACKED, Detections

__all__ = ["Annotator", "DEFAULT_PALETTE", "Overlay"]


class Overlay(NamedTuple):
    """A fixed shape drawn under the detections of every frame: an event zone, a counting line, an ego lane."""

    name: str
    points: Sequence[tuple[float, float]]
    """Pixels of the frame."""
    kind: str = "polygon"
    """``"polygon"`` (closed outline) or ``"arrow"`` (a directed line from the first point to the last)."""

DEFAULT_PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (255, 99, 71),
)  # fmt: skip
"""RGB colours, distinct from each other on natural images (after Sasha Trubetskoy's list of 20)."""

_FONT = cv2.FONT_HERSHEY_SIMPLEX


class Annotator:
    """Draws :class:`Detections` on RGB ``uint8`` images of shape ``(H, W, 3)``.

    Colours are stable: keyed by track id when ``detections.track_ids`` is set, else by class label, through a
    fixed palette and a fixed integer hash, so the same id gets the same colour in every frame and every run.
    Masks are blended only inside each mask's crop, so the cost scales with object size, not frame size.
    Line width and font size scale with the image's short side (readable from 360p to 1080p and beyond).
    """

    def __init__(
        self,
        *,
        alpha: float = 0.45,
        masks: bool = True,
        boxes: bool = True,
        labels: bool = True,
        palette: tuple[tuple[int, int, int], ...] = DEFAULT_PALETTE,
        overlays: Sequence[Overlay] = (),
    ):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha: expected a value in [0, 1], got {alpha}")
        if not palette:
            raise ValueError("palette: expected at least one colour, got none")
        self.alpha = float(alpha)
        self.draw_masks, self.draw_boxes, self.draw_labels = masks, boxes, labels
        self.palette = tuple(tuple(int(c) for c in color) for color in palette)
        self.overlays = []
        for overlay in overlays:
            overlay = Overlay(*overlay)
            if overlay.kind not in ("polygon", "arrow") or len(overlay.points) < 2:
                raise ValueError(f"overlay {overlay.name!r}: expected kind 'polygon' or 'arrow' and >= 2 points, got "
                                 f"{overlay.kind!r} with {len(overlay.points)}")
            # cv2 draws at integer pixel centres; 4 fractional bits (shift=4) keep sub-pixel positions
            points = np.round((np.asarray(overlay.points, np.float64) - 0.5) * 16).astype(np.int32).reshape(-1, 2)
            self.overlays.append((overlay, points))

    def color(self, key: int) -> tuple[int, int, int]:
        """Palette colour of a track id or class label: Fibonacci hashing spreads consecutive ids apart."""
        h = (int(key) * 2654435761) & 0xFFFFFFFF
        return self.palette[(h * len(self.palette)) >> 32]

    def annotate(self, image: np.ndarray, detections: Detections) -> np.ndarray:
        """Draw ``detections`` onto ``image`` IN PLACE and return it; pass ``image.copy()`` to keep the original.

        ``image`` must be a C-contiguous ``(H, W, 3)`` uint8 RGB array in the coordinates of ``detections``
        (boxes ``x1, y1, x2, y2`` in pixels, masks of ``image_size == (H, W)``).
        """
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"image: expected a (H, W, 3) uint8 array, got {got}")
        if not image.flags.c_contiguous:
            raise ValueError("image: expected a C-contiguous array (cv2 draws in place); pass np.ascontiguousarray")
        height, width = image.shape[:2]
        short = min(height, width)
        for overlay, points in self.overlays:
            self._overlay(image, overlay, points, short)
        n = len(detections)
        if n == 0:
            return image
        if detections.masks is not None and detections.masks.image_size != (height, width):
            raise ValueError(
                f"detections.masks.image_size {detections.masks.image_size} does not match image {(height, width)}"
            )
        colors = [self.color(k) for k in _color_keys(detections)]
        thickness = max(1, round(short / 360))
        if self.draw_masks and detections.masks is not None:
            for crop, (x0, y0), color in zip(detections.masks.crops, detections.masks.origins, colors):
                self._blend(image, crop, int(x0), int(y0), color)
        if self.draw_boxes:
            for box, color in zip(detections.boxes, colors):
                x1, y1, x2, y2 = _pixel_box(box, width, height)
                cv2.rectangle(image, (x1, y1), (x2, y2), color, thickness, cv2.LINE_AA)
        if self.draw_labels:
            names = detections.names
            for i in range(n):
                text = f"{names[i]} {float(detections.scores[i]):.2f}"
                if detections.track_ids is not None and detections.track_ids[i] != UNTRACKED:
                    text = f"#{int(detections.track_ids[i])} {text}"
                x1, y1, _, _ = _pixel_box(detections.boxes[i], width, height)
                self._label(image, text, x1, y1, colors[i], short)
        return image

    @staticmethod
    def _overlay(image: np.ndarray, overlay: Overlay, points: np.ndarray, short: int) -> None:
        """White outline (dark-edged, readable on any background) and the name at the first point."""
        thickness = max(1, round(short / 360))
        for color, width in (((0, 0, 0), thickness + 2), ((255, 255, 255), thickness)):
            if overlay.kind == "arrow":
                a, b = (tuple(int(v) for v in p) for p in points[[0, -1]])
                tip = min(0.5, 12.0 * thickness * 16 / max(1.0, float(np.hypot(*np.subtract(b, a)))))
                cv2.arrowedLine(image, a, b, color, width, cv2.LINE_AA, shift=4, tipLength=tip)
            else:
                cv2.polylines(image, [points], True, color, width, cv2.LINE_AA, shift=4)
        x, y = (int(v) >> 4 for v in points[0])
        height, width = image.shape[:2]
        Annotator._label(image, overlay.name, min(max(x, 0), width - 1), min(max(y, 0), height - 1), (255, 255, 255),
                         short)

    def _blend(self, image: np.ndarray, crop: np.ndarray, x0: int, y0: int, color) -> None:
        if crop.size == 0:
            return
        region = image[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]]
        paint = np.empty_like(region)
        paint[:] = color
        blended = cv2.addWeighted(region, 1.0 - self.alpha, paint, self.alpha, 0.0)
        np.copyto(region, blended, where=crop[..., None])

    @staticmethod
    def _label(image: np.ndarray, text: str, x: int, y: int, color, short: int) -> None:
        height, width = image.shape[:2]
        scale = max(0.4, short / 900)  # 0.4 at 360p, 0.8 at 720p, 1.2 at 1080p
        weight = max(1, round(short / 540))
        (tw, th), baseline = cv2.getTextSize(text, _FONT, scale, weight)
        pad = max(2, weight + 1)
        box_w, box_h = tw + 2 * pad, th + baseline + 2 * pad
        top = y - box_h if y - box_h >= 0 else y  # above the box, or inside it at the image's top edge
        left = max(0, min(x, width - box_w))
        top = max(0, min(top, height - box_h))
        cv2.rectangle(image, (left, top), (left + box_w - 1, top + box_h - 1), color, cv2.FILLED)
        luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        ink = (0, 0, 0) if luminance > 150 else (255, 255, 255)
        cv2.putText(image, text, (left + pad, top + pad + th), _FONT, scale, ink, weight, cv2.LINE_AA)


def _pixel_box(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """Continuous ``x1, y1, x2, y2`` -> inclusive pixel corners, clipped to the image."""
    x1 = min(max(int(math.floor(float(box[0]))), 0), width - 1)
    y1 = min(max(int(math.floor(float(box[1]))), 0), height - 1)
    x2 = min(max(int(math.ceil(float(box[2]))) - 1, x1), width - 1)
    y2 = min(max(int(math.ceil(float(box[3]))) - 1, y1), height - 1)
    return x1, y1, x2, y2


def _color_keys(detections: Detections) -> list:
    """Track id where there is one, else the class (a detection not yet tracked keeps its class colour)."""
    labels = detections.labels.tolist()
    if detections.track_ids is None:
        return labels
    return [t if t != UNTRACKED else label for t, label in zip(detections.track_ids.tolist(), labels)]
