"""Detectors behind one interface: frames in, :class:`~streamseg.types.Detections` out.

Importing this package is cheap: torch (seconds to import) loads when a backend is built or when one of the torch
names below (``TorchMaskRCNN``, ``ARCHITECTURES``, ``COCO_CLASS_NAMES``) is first used (PEP 562).
"""

from __future__ import annotations

import logging

from streamseg.errors import ConfigError
from streamseg.models.backend import Backend, ModelOptions
from streamseg.models.null import NoDetections

log = logging.getLogger(__name__)

_TORCH_NAMES = ("ARCHITECTURES", "COCO_CLASS_NAMES", "TorchMaskRCNN")


def __getattr__(name: str):
    if name in _TORCH_NAMES:
        from streamseg.models import torch_maskrcnn

        return getattr(torch_maskrcnn, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _torch(options: ModelOptions) -> Backend:
    from streamseg.models.torch_maskrcnn import TorchMaskRCNN

    return TorchMaskRCNN(options)


def _onnx(options: ModelOptions) -> Backend:
    from streamseg.models.onnx_backend import OnnxMaskRCNN  # onnx and onnxruntime load only when asked for

    return OnnxMaskRCNN(options)


def _tensorrt(options: ModelOptions) -> Backend:
    from streamseg.models.trt_backend import TensorRTMaskRCNN  # engines from 'export trt'; TensorRT on use

    return TensorRTMaskRCNN(options)


def _auto(options: ModelOptions) -> Backend:
    from streamseg.models.auto import choose_backend

    name, reason = choose_backend(options)
    log.info("backend auto: %s (%s)", name, reason)
    return BACKENDS[name](options)


BACKENDS = {"auto": _auto, "torch": _torch, "onnx": _onnx, "tensorrt": _tensorrt, "none": NoDetections}


def build_backend(options: ModelOptions, backend: str = "auto") -> Backend:
    """Build the named backend; each backend finds and loads its own weights."""
    if backend not in BACKENDS:
        raise ConfigError(f"model.backend: unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    return BACKENDS[backend](options)


__all__ = ["ARCHITECTURES", "Backend", "BACKENDS", "COCO_CLASS_NAMES", "ModelOptions", "NoDetections", "TorchMaskRCNN",
           "build_backend"]
