"""Detectors behind one interface: frames in, :class:`~streamseg.types.Detections` out."""

from streamseg.errors import ConfigError
from streamseg.models.backend import Backend, ModelOptions
from streamseg.models.null import NoDetections
from streamseg.models.torch_maskrcnn import ARCHITECTURES, COCO_CLASS_NAMES, TorchMaskRCNN

BACKENDS = {"torch": TorchMaskRCNN, "none": NoDetections}


def build_backend(options: ModelOptions, backend: str = "torch") -> Backend:
    """Build the named backend; each backend finds and loads its own weights."""
    if backend not in BACKENDS:
        raise ConfigError(f"model.backend: unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    return BACKENDS[backend](options)


__all__ = ["ARCHITECTURES", "Backend", "BACKENDS", "COCO_CLASS_NAMES", "ModelOptions", "NoDetections", "TorchMaskRCNN", "build_backend"]
