"""Constant-velocity Kalman filter on boxes, vectorized over many tracks at once.

State of one track: ``(cx, cy, w, h, vcx, vcy, vw, vh)`` - box centre and size in pixels and their per-frame
velocities. Measurement: ``(cx, cy, w, h)``. Width and height are filtered separately (not aspect ratio and
height) so a box that changes shape - a pedestrian turning, a car seen from a new angle - is followed without
coupling the two.

Noise scales with the box: a 10 px jitter is large for a 20 px person and small for a 300 px bus, so every standard
deviation is a fraction of the box's width (for ``cx``, ``w``) or height (for ``cy``, ``h``). One step is one call to
:meth:`BoxKalman.predict`, i.e. one processed frame.

Arrays: ``mean`` is ``(N, 8)`` float64, ``covariance`` is ``(N, 8, 8)`` float64; boxes in and out are ``(N, 4)``
``x1, y1, x2, y2``. Every method works on all N tracks with a handful of numpy calls (no Python loop over tracks),
so the cost per frame hardly grows from 1 to 100 tracks.
"""

from __future__ import annotations

import numpy as np

from streamseg.errors import ConfigError

_DIM = 4  # measured quantities: cx, cy, w, h


def xyxy_to_cxcywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    size = boxes[:, 2:] - boxes[:, :2]
    return np.concatenate([boxes[:, :2] + 0.5 * size, size], axis=1)


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    half = 0.5 * boxes[:, 2:4]
    return np.concatenate([boxes[:, :2] - half, boxes[:, :2] + half], axis=1)


class BoxKalman:
    """Constant-velocity Kalman filter for ``(N,)`` boxes at once; holds only its noise settings, no track state.

    ``position_noise``: standard deviation of the box position and size per frame, as a fraction of the box size
    (process noise and, the same, measurement noise). ``velocity_noise``: standard deviation of the per-frame change
    of velocity, as a fraction of the box size. Larger ``velocity_noise`` follows sudden turns faster but
    extrapolates less steadily through occlusions.
    """

    def __init__(self, position_noise: float = 1.0 / 20.0, velocity_noise: float = 1.0 / 160.0):
        if not (position_noise > 0 and velocity_noise > 0):
            raise ConfigError(f"BoxKalman: noise must be > 0, got position_noise={position_noise!r}, "
                              f"velocity_noise={velocity_noise!r}")
        self.position_noise = float(position_noise)
        self.velocity_noise = float(velocity_noise)
        transition = np.eye(2 * _DIM)
        transition[:_DIM, _DIM:] = np.eye(_DIM)  # position += velocity, once per frame
        self._transition = transition

    def _scale(self, cxcywh: np.ndarray) -> np.ndarray:
        """``(N, 4)`` reference sizes for the four measured quantities: ``w, h, w, h`` (at least 1 px)."""
        w = np.maximum(cxcywh[:, 2], 1.0)
        h = np.maximum(cxcywh[:, 3], 1.0)
        return np.stack([w, h, w, h], axis=1)

    def initiate(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """New tracks at ``boxes`` (``(N, 4)`` xyxy), at rest, with a wide velocity uncertainty."""
        z = xyxy_to_cxcywh(boxes)
        n = len(z)
        mean = np.zeros((n, 2 * _DIM))
        mean[:, :_DIM] = z
        scale = self._scale(z)
        std = np.concatenate([2.0 * self.position_noise * scale, 10.0 * self.velocity_noise * scale], axis=1)
        covariance = np.zeros((n, 2 * _DIM, 2 * _DIM))
        index = np.arange(2 * _DIM)
        covariance[:, index, index] = std**2
        return mean, covariance

    def predict(self, mean: np.ndarray, covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One frame ahead. Returns new arrays; the inputs are not modified."""
        if len(mean) == 0:
            return mean.copy(), covariance.copy()
        scale = self._scale(mean[:, :_DIM])
        var = np.concatenate([(self.position_noise * scale) ** 2, (self.velocity_noise * scale) ** 2], axis=1)
        mean = mean @ self._transition.T
        covariance = self._transition @ covariance @ self._transition.T
        index = np.arange(2 * _DIM)
        covariance[:, index, index] += var
        return mean, covariance

    def update(self, mean: np.ndarray, covariance: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Correct ``(N,)`` predicted states with ``(N, 4)`` measured xyxy boxes, row by row. Returns new arrays."""
        z = xyxy_to_cxcywh(boxes)
        if len(z) != len(mean):
            raise ConfigError(f"BoxKalman.update: {len(z)} boxes for {len(mean)} tracks")
        if len(z) == 0:
            return mean.copy(), covariance.copy()
        r = (self.position_noise * self._scale(mean[:, :_DIM])) ** 2
        innovation_cov = covariance[:, :_DIM, :_DIM].copy()  # H P H^T, H picks the first four state entries
        index = np.arange(_DIM)
        innovation_cov[:, index, index] += r
        cross = covariance[:, :, :_DIM]  # P H^T, (N, 8, 4)
        # gain K = P H^T S^-1; S is symmetric, so K^T = S^-1 (P H^T)^T
        gain = np.linalg.solve(innovation_cov, cross.transpose(0, 2, 1)).transpose(0, 2, 1)
        innovation = z - mean[:, :_DIM]
        mean = mean + np.einsum("nij,nj->ni", gain, innovation)
        covariance = covariance - gain @ cross.transpose(0, 2, 1)
        return mean, covariance

    @staticmethod
    def boxes(mean: np.ndarray) -> np.ndarray:
        """``(N, 4)`` xyxy boxes of the states, sizes floored at 1 px (a shrinking velocity never flips a box)."""
        cxcywh = mean[:, :_DIM].copy()
        cxcywh[:, 2:] = np.maximum(cxcywh[:, 2:], 1.0)
        return cxcywh_to_xyxy(cxcywh)
