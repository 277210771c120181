"""A backend that finds nothing: for re-encoding, pipeline checks and measuring everything but the model."""

from __future__ import annotations

from typing import Sequence

from streamseg.models.backend import ModelOptions
from streamseg.types import Detections, Frame


class NoDetections:
    """Returns empty :class:`Detections` (with empty masks) for every frame, instantly."""

    name = "none"
    origin = "none"
    class_names: tuple[str, ...] = ("__background__",)

    def __init__(self, options: ModelOptions = ModelOptions()):
        self.options = options

    def predict(self, frames: Sequence[Frame]) -> list[Detections]:
        return [Detections.empty(self.class_names, (f.height, f.width)) for f in frames]

    def close(self) -> None:
        pass
