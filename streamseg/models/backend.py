"""The interface every inference backend implements (PyTorch now; ONNX Runtime and TensorRT later)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from streamseg.checks import bad, booleans, integer, names, number, text
from streamseg.errors import ConfigError
from streamseg.types import Detections, Frame

log = logging.getLogger(__name__)


DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?")
"""``cpu``, ``cuda`` (the current GPU) or ``cuda:N`` (GPU index N)."""


@dataclass(frozen=True)
class ModelOptions:
    """How to build and run a detector. Every field has a default that works offline on a CPU."""

    arch: str = "auto"
    """Architecture name (see ``streamseg.models.ARCHITECTURES``), alias (demo, v1, v2) or "auto": the checkpoint's
    own (recorded by ``save_checkpoint``, else told by its state-dict keys)."""
    weights: str | None = None
    """Checkpoint path, ``random[:SEED]`` for an untrained seeded model, or None: the shipped demo model for
    arch "auto", the usual places (``$STREAMSEG_WEIGHTS``, torch hub cache, download) for a named architecture."""
    min_size: int | None = None
    max_size: int | None = None
    """Resize policy (torchvision's): shorter side to ``min_size`` unless the longer side would pass ``max_size``.
    None: the architecture's own default (800/1333 for the COCO R50-FPN models, 360/640 for the demo model)."""
    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    classes: tuple[str, ...] = ()
    """Keep only these class names (empty: keep all)."""
    max_detections: int | None = None
    """None: the architecture's default (100 for COCO models, 30 for the demo model)."""
    rpn_post_nms_top_n: int | None = None
    """Proposals kept after the RPN's NMS; None: the architecture's default (1000, demo 200)."""
    batch_size: int = 1
    """Frames per forward pass."""
    detect_interval: int = 1
    """Run the model on every N-th processed frame only (files and live; needs ``[tracker]``): on the frames
    between, the tracker's prediction moves each confirmed track's box and mask, and the detections JSONL marks
    them ``"predicted": true``. Read by the pipelines, not by the backends."""
    device: str = "cpu"
    fp16: bool = False
    """Half precision autocast; CUDA only."""
    cache_dir: str | None = None
    """Folder of the ONNX exports that the onnx backend (and auto, on a CPU) runs checkpoints from; None:
    ``$STREAMSEG_ONNX_CACHE``, else ``~/.cache/streamseg/onnx`` (see :mod:`streamseg.models.onnx_cache`)."""

    def __post_init__(self):
        text("model.arch", self.arch)  # its names live with the torch builders: the backend checks them
        text("model.weights", self.weights, optional=True)
        text("model.cache_dir", self.cache_dir, optional=True)
        for name in ("min_size", "max_size", "max_detections", "rpn_post_nms_top_n"):
            integer(f"model.{name}", getattr(self, name), 1, optional=True)
        integer("model.batch_size", self.batch_size, 1)
        integer("model.detect_interval", self.detect_interval, 1)
        if None not in (self.min_size, self.max_size) and self.max_size < self.min_size:
            raise bad("model.max_size", f"an integer >= model.min_size ({self.min_size})", self.max_size)
        number("model.score_threshold", self.score_threshold, 0, 1)
        number("model.mask_threshold", self.mask_threshold, above=0, below=1)
        object.__setattr__(self, "classes", names("model.classes", self.classes))
        if not (isinstance(self.device, str) and DEVICE.fullmatch(self.device)):
            raise bad("model.device", "cpu, cuda or cuda:N (N: a GPU index)", self.device)
        booleans(self, "model")
        if self.fp16 and not self.device.startswith("cuda"):
            raise bad("model.fp16", "false unless model.device is cuda[:N] (half precision is ~100x slower on this "
                      "CPU)", self.fp16)


class Backend(Protocol):
    """Frames in, detections out.

    ``predict`` returns one :class:`Detections` per frame, in order: boxes in the frame's own pixel coordinates,
    scores, labels indexing ``class_names``, and masks as :class:`~streamseg.types.InstanceMasks`.
    """

    name: str
    class_names: tuple[str, ...]

    def predict(self, frames: Sequence[Frame]) -> list[Detections]: ...

    def close(self) -> None: ...


RANDOM_WEIGHTS = re.compile(r"random(?::(\d+))?")
"""``weights`` of an untrained model seeded with the number (0 when omitted), for tests and benchmarks."""


def no_cuda_device(device: str) -> ConfigError:
    """The one-line error of every backend asked for a GPU ``device`` on a machine without one."""
    return ConfigError(f"model.device: {device!r} requested but no CUDA device is available")


def class_filter(classes: Sequence[str], class_names: Sequence[str], origin: str) -> np.ndarray | None:
    """Label indices of ``classes`` in a model's ``class_names`` (None: keep every class). Names the model lacks
    get one warning that names the model (``origin``: its weights) and what it knows, and are left out: a COCO
    pipeline (car, truck, bus) still runs with a model that knows only cars. When it knows none of them, that is a
    :class:`ConfigError`."""
    if not classes:
        return None
    known = [c for c in class_names if c not in ("__background__", "N/A")]  # placeholders, not classes
    unknown = [c for c in classes if c not in class_names]
    kept = [c for c in classes if c in class_names]
    if not kept:
        raise ConfigError(f"model.classes: the model {origin} knows none of {unknown} (it knows {known})")
    if unknown:
        log.warning("model.classes: the model %s does not know %s, left out (it knows %s)", origin,
                    ", ".join(unknown), ", ".join(known))
    return np.array([list(class_names).index(c) for c in kept], dtype=np.int64)
