"""``--backend auto`` (the default): the fastest backend this machine has for the weights given.

* a TensorRT engine folder: ``tensorrt``; an ``.onnx`` file: ``onnx``;
* a CUDA device: ``torch`` (eager PyTorch on the GPU; TensorRT needs engines built on that GPU: pass the folder);
* ``random[:SEED]`` weights: ``torch``: untrained models are for tests, and exporting one (~10 s and 170 MB for
  R50-FPN) buys nothing;
* a CPU without onnxruntime, or whose ONNX cache folder cannot be written (a read-only home): ``torch``;
* otherwise (the demo model or a checkpoint, on a CPU): ``onnx``, running the checkpoint's cached export
  (:mod:`streamseg.models.onnx_cache`): ONNX Runtime's convolutions make it 1.4-2.3x faster than eager PyTorch on
  these CPUs (README "Export: ONNX", ``bench/bench_onnx.py``).

Deciding imports nothing heavy: torch loads only with the backend chosen.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from streamseg.models.backend import RANDOM_WEIGHTS, ModelOptions
from streamseg.models.trt_runtime import is_engine_folder


def choose_backend(options: ModelOptions) -> tuple[str, str]:
    """(backend name, why), for the one log line that reports the choice."""
    weights = options.weights or ""
    if is_engine_folder(weights):
        return "tensorrt", f"{weights} is a TensorRT engine folder"
    if weights.endswith(".onnx"):
        return "onnx", f"{weights} is an ONNX file"
    if options.device != "cpu":
        return "torch", f"device {options.device}: eager PyTorch on the GPU (TensorRT: pass an engine folder)"
    if RANDOM_WEIGHTS.fullmatch(weights):
        return "torch", f"{weights} is an untrained test model: not worth an ONNX export"
    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        return "torch", f"{' and '.join(missing)} not installed (pip install 'streamseg[onnx]': the faster CPU backend)"
    from streamseg.models.onnx_cache import cache_dir

    folder = cache_dir(options)
    if not _writable(folder):
        return "torch", f"the ONNX cache {folder} cannot be written (set model.cache_dir or $STREAMSEG_ONNX_CACHE)"
    return "onnx", "CPU: ONNX Runtime runs Mask R-CNN faster than eager PyTorch, from a cached export of the weights"


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)
