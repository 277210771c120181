"""Detectors behind one interface: frames in, :class:`~streamseg.types.Detections` out."""

from streamseg.errors import ConfigError
from streamseg.models.backend import Backend, ModelOptions
from streamseg.models.null import NoDetections
from streamseg.models.torch_maskrcnn import ARCHITECTURES, COCO_CLASS_NAMES, TorchMaskRCNN

def _onnx(options: ModelOptions) -> Backend:
    from streamseg.models.onnx_backend import OnnxMaskRCNN  # onnx and onnxruntime load only when asked for

    return OnnxMaskRCNN(options)


def _tensorrt(options: ModelOptions) -> Backend:
    from streamseg.models.trt_backend import TensorRTMaskRCNN  # engines from streamseg export trt; TensorRT on use

    return TensorRTMaskRCNN(options)


BACKENDS = {"torch": TorchMaskRCNN, "onnx": _onnx, "tensorrt": _tensorrt, "none": NoDetections}


def build_backend(options: ModelOptions, backend: str = "torch") -> Backend:
    """Build the named backend; each backend finds and loads its own weights."""
    if backend not in BACKENDS:
        raise ConfigError(f"model.backend: unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    return BACKENDS[backend](options)


__all__ = ["ARCHITECTURES", "Backend", "BACKENDS", "COCO_CLASS_NAMES", "ModelOptions", "NoDetections", "TorchMaskRCNN", "build_backend"]
