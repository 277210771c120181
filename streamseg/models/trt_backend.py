"""Mask R-CNN in TensorRT engines behind the :class:`~streamseg.models.backend.Backend` interface.

Runs an engine folder written by the ``export trt`` command (``export/trt_build.py``): three engines, one
per stage of the fused ONNX export (``rpn``, ``box``, ``mask``; the heads hold the MultiLevelRoIAlign plugin).
Everything between the stages -- torchvision's transform, anchors, box decoding, NMS, top-k, mask paste -- is the
ONNX Runtime backend's own code (:class:`~streamseg.models.onnx_backend.OnnxMaskRCNN`), so the two backends
pre- and post-process identically; this class only swaps ONNX Runtime sessions for engine runners that have the
same ``run(output_names, feeds)`` call.

Each runner owns one execution context on one CUDA stream, device buffers that grow to the largest shape seen, and
page-locked (pinned) host buffers for the copies in and out, so a frame costs no allocation once sizes settle. The
feature maps stay on the GPU between the rpn engine and the heads; only images, RoIs and the small head outputs
cross PCIe.
Frames are batched by the caller (``ModelOptions.batch_size``, at most the engine profile's max batch).

``options.weights`` is the engine folder; the plugin library comes from ``$STREAMSEG_TRT_PLUGIN`` or the
checkout's CMake build folder (see :func:`streamseg.models.trt_runtime.find_plugin_library`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from streamseg.errors import ConfigError, WeightsError
from streamseg.models.backend import ModelOptions, class_filter
from streamseg.models.onnx_backend import OnnxMaskRCNN
from streamseg.models.trt_runtime import (
    STAGES, TensorRTError, TensorRTLogger, load_plugin, read_manifest, require_cuda_gpu, require_tensorrt,
)

log = logging.getLogger(__name__)


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int8: torch.int8,
             trt.bool: torch.bool}
    if hasattr(trt, "int64"):
        table[trt.int64] = torch.int64
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    if dtype not in table:
        raise TensorRTError(f"engine tensor of unsupported type {dtype}")
    return table[dtype]


class _Buffers:
    """Device and pinned host buffers per tensor name, grown (never shrunk) to the largest size requested."""

    def __init__(self, device: torch.device):
        self.device = device
        self.host: dict[str, torch.Tensor] = {}
        self.gpu: dict[str, torch.Tensor] = {}

    def _get(self, pool: dict, name: str, shape, dtype, pinned: bool) -> torch.Tensor:
        numel = max(1, int(np.prod(shape)))  # TensorRT wants a valid address even for an empty tensor
        buf = pool.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            buf = (torch.empty(numel, dtype=dtype, pin_memory=True) if pinned
                   else torch.empty(numel, dtype=dtype, device=self.device))
            pool[name] = buf
        return buf[: int(np.prod(shape))].view(*shape)

    def host_view(self, name, shape, dtype):
        return self._get(self.host, name, shape, dtype, pinned=True)

    def device_view(self, name, shape, dtype):
        return self._get(self.gpu, name, shape, dtype, pinned=False)


class EngineRunner:
    """One deserialized engine with its execution context; ``run`` mirrors ``onnxruntime.InferenceSession.run``."""

    def __init__(self, trt, runtime, path: Path, device: torch.device, stream: torch.cuda.Stream):
        self.trt = trt
        self.path = path
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise TensorRTError(f"{path}: TensorRT could not load this engine (built with another TensorRT version or "
                                "for another GPU, or the plugin library is missing)")
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise TensorRTError(f"{path}: could not create an execution context (out of GPU memory?)")
        self.device = device
        self.stream = stream
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) != trt.TensorIOMode.INPUT]
        self.dtypes = {n: _torch_dtype(trt, engine.get_tensor_dtype(n)) for n in names}
        self.profiles = {n: tuple(tuple(s) for s in engine.get_tensor_profile_shape(n, 0)) for n in self.inputs}
        self.buffers = _Buffers(device)
        self.device_outputs: set[str] = set()
        """Outputs returned as CUDA tensors instead of host arrays (see :meth:`run`)."""
        self._keep: dict[str, torch.Tensor] = {}

    def _check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        low, _, high = self.profiles[name]
        if len(shape) != len(low) or any(not lo <= s <= hi for s, lo, hi in zip(shape, low, high)):
            raise ConfigError(f"{self.path.name}: input '{name}' of shape {list(shape)} is outside the engine's "
                              f"profile {list(low)}..{list(high)} (rebuild with larger --batch / --max-input)")

    def run(self, output_names: Sequence[str] | None, feeds: dict) -> list:
        """Feeds are numpy arrays (uploaded through pinned buffers) or CUDA tensors (used in place: the rpn
        stage's feature maps stay on the GPU for the heads). Outputs are numpy arrays, except those named in
        :attr:`device_outputs`, which are CUDA tensors valid until this runner's next call."""
        names = list(output_names) if output_names is not None else self.outputs
        with torch.cuda.stream(self.stream):
            for name in self.inputs:
                if name not in feeds:
                    raise ConfigError(f"{self.path.name}: missing input '{name}'")
                value = feeds[name]
                if isinstance(value, torch.Tensor) and value.is_cuda:
                    gpu = value.to(self.dtypes[name]).contiguous()
                    shape = tuple(gpu.shape)
                    self._check_shape(name, shape)
                else:
                    array = np.ascontiguousarray(value)
                    shape = tuple(array.shape)
                    self._check_shape(name, shape)
                    host = self.buffers.host_view(name, shape, self.dtypes[name])
                    host.copy_(torch.from_numpy(array))  # into page-locked memory, so the upload is asynchronous
                    gpu = self.buffers.device_view(name, shape, self.dtypes[name])
                    gpu.copy_(host, non_blocking=True)
                self._keep[name] = gpu  # alive until the next call
                if not self.context.set_input_shape(name, shape):
                    raise TensorRTError(f"{self.path.name}: TensorRT refused shape {list(shape)} for '{name}'")
                self.context.set_tensor_address(name, gpu.data_ptr())
            results = {}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                if any(s < 0 for s in shape):
                    raise TensorRTError(f"{self.path.name}: output '{name}' has unresolved shape {list(shape)}")
                gpu = self.buffers.device_view(name, shape, self.dtypes[name])
                self.context.set_tensor_address(name, gpu.data_ptr())
                results[name] = (gpu, shape)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise TensorRTError(f"{self.path.name}: execution failed (see the TensorRT log with -v)")
            out = []
            for name in names:
                gpu, shape = results[name]
                if name in self.device_outputs:
                    out.append(gpu)
                    continue
                host = self.buffers.host_view("out:" + name, shape, self.dtypes[name])
                host.copy_(gpu, non_blocking=True)
                out.append(host)
            self.stream.synchronize()
        # host copies: the pinned buffers are reused by the next call; float16 outputs are widened for the host steps
        return [t if t.is_cuda else (t.float().numpy() if t.dtype == torch.float16 else t.numpy().copy()) for t in out]

    def get_providers(self) -> list[str]:
        return [f"TensorRT {self.trt.__version__}"]


class TensorRTMaskRCNN(OnnxMaskRCNN):
    """Mask R-CNN from an ``export trt`` engine folder (``options.weights``), on ``options.device``.

    >>> backend = TensorRTMaskRCNN(ModelOptions(weights="engines/", device="cuda"))  # doctest: +SKIP
    >>> [dets] = backend.predict([frame])  # doctest: +SKIP
    """

    name = "tensorrt"

    def __init__(self, options: ModelOptions = ModelOptions(), plugin: str | Path | None = None):
        if not options.weights:
            raise WeightsError("the tensorrt backend needs --weights ENGINE_FOLDER (from the 'export trt' command)")
        manifest = read_manifest(options.weights)  # user errors before TensorRT / GPU checks
        trt = require_tensorrt()
        if not options.device.startswith("cuda"):
            raise ConfigError(f"model.device: the tensorrt backend runs on a CUDA GPU, got {options.device!r}")
        require_cuda_gpu()
        device = torch.device(options.device)
        max_batch = manifest["batch"][2]
        if options.batch_size > max_batch:
            raise ConfigError(f"model.batch_size {options.batch_size} exceeds the engines' max batch {max_batch} "
                              "(rebuild with --batch)")
        self.plugin_library = load_plugin(trt, plugin)
        meta = manifest["model"]
        self.options = options
        self.origin = str(options.weights)
        self.manifest = manifest
        self.meta = meta
        self.class_names = tuple(meta["class_names"])
        self.flavour = meta["flavour"]
        self.paste_shift = float(meta["paste_shift"])
        self.paste_mode = meta.get("paste_mode", "torchvision")
        self.keep_labels = class_filter(options.classes, self.class_names, self.origin)
        self.transform, self.rpn, self.heads = self._host_stages(meta, options)
        self.rpn_outputs = meta["stages"]["rpn"]["outputs"]
        self.stage_seconds: dict[str, float] = {}
        folder = Path(options.weights)
        with torch.cuda.device(device):
            self.stream = torch.cuda.Stream(device)
            self.trt_logger = TensorRTLogger.create(trt)  # TensorRT keeps a pointer to it: it must outlive the runtime
            self.runtime = trt.Runtime(self.trt_logger)
            self.sessions = {stage: EngineRunner(trt, self.runtime, folder / manifest["stages"][stage]["file"],
                                                 device, self.stream) for stage in STAGES}
        # the feature maps go from the rpn engine to the heads without a round trip through host memory
        # (~90 MB per 800x1344 frame for the COCO models)
        rpn_outputs = set(self.sessions["rpn"].outputs)
        self.sessions["rpn"].device_outputs = {n for stage in ("box", "mask") for n in meta["stages"][stage]["inputs"]
                                               if n in rpn_outputs}
        self.provider = self.sessions["rpn"].get_providers()[0]
        log.info("tensorrt backend: %s, %s engines (TensorRT %s, built with %s on %s)", meta["arch"],
                 manifest["precision"], trt.__version__, manifest["tensorrt_version"], manifest["gpu"]["name"])

    def close(self) -> None:
        self.sessions = {}
