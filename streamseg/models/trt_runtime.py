"""What running TensorRT engines needs, without the engine builder: TensorRT and GPU checks, the plugin library,
the engine folder's manifest. The builder (``export/trt_build.py``) imports these; inference never imports it.

TensorRT is imported only inside these functions: without it (or without a CUDA GPU) every entry point raises
:class:`TensorRTError` with one line saying what is missing.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from streamseg.errors import ConfigError, StreamsegError

log = logging.getLogger(__name__)

PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE = "MultiLevelRoIAlign", "1", ""
PLUGIN_ENV = "STREAMSEG_TRT_PLUGIN"
PLUGIN_FILE = "libstreamseg_trt_plugin.so"
REPO_ROOT = Path(__file__).resolve().parents[2]
PLUGIN_SEARCH = (REPO_ROOT / "build" / "trt_plugin" / PLUGIN_FILE,)
MANIFEST = "streamseg.json"
MANIFEST_FORMAT = "streamseg.trt/1"
STAGES = ("rpn", "box", "mask")
MIN_TENSORRT = (10, 0)


class TensorRTError(StreamsegError, RuntimeError):
    """TensorRT, a CUDA GPU or the plugin library is missing, or TensorRT refused to build or load an engine."""


def require_tensorrt():
    """Import ``tensorrt`` (>= 10.0) or raise :class:`TensorRTError` saying how to get it."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as err:  # OSError: the wheel is there but libnvinfer is not
        raise TensorRTError(
            f"TensorRT is not available ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'missing'}): "
            "install TensorRT >= 10 for your CUDA version (pip install 'streamseg[trt]') on a machine with an "
            "NVIDIA GPU") from err
    if tensorrt_version(trt) < MIN_TENSORRT:
        raise TensorRTError(f"TensorRT {trt.__version__} is too old: the IPluginV3 plugin needs TensorRT >= 10.0")
    return trt


def tensorrt_version(trt) -> tuple[int, int]:
    major, minor = (trt.__version__.split(".") + ["0"])[:2]
    return int(major), int(minor)


def require_cuda_gpu():
    """The CUDA device TensorRT will use, or :class:`TensorRTError` when none is visible."""
    import torch

    if not torch.cuda.is_available():
        raise TensorRTError("no CUDA GPU is visible (torch.cuda.is_available() is False): TensorRT builds and runs "
                            "engines only on NVIDIA GPUs")
    return torch.device("cuda", torch.cuda.current_device())


def find_plugin_library(path: str | Path | None = None) -> Path:
    """The plugin library: ``path``, else ``$STREAMSEG_TRT_PLUGIN``, else the CMake build folder of this checkout."""
    candidates = [Path(path)] if path else []
    if not candidates and os.environ.get(PLUGIN_ENV):
        candidates = [Path(os.environ[PLUGIN_ENV])]
    candidates = candidates or list(PLUGIN_SEARCH)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise TensorRTError(
        f"MultiLevelRoIAlign plugin library not found (looked at {', '.join(map(str, candidates))}): build it with "
        "'cmake -S export/trt_plugin -B build/trt_plugin -DTENSORRT_ROOT=... && cmake --build build/trt_plugin' "
        f"and pass --plugin or set ${PLUGIN_ENV}")


def load_plugin(trt, path: str | Path | None = None) -> Path:
    """Register the plugin's creator with TensorRT's global registry (idempotent); returns the library used."""
    registry = trt.get_plugin_registry()
    if registry.get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE) is not None:
        return Path(path) if path else Path("(already registered)")
    library = find_plugin_library(path)
    handle = registry.load_library(str(library))  # calls the library's getCreators(); see plugin_registration.cpp
    if handle is None or registry.get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE) is None:
        raise TensorRTError(f"{library}: TensorRT loaded no {PLUGIN_NAME} v{PLUGIN_VERSION} creator from it (built "
                            f"against another TensorRT major version? rebuild it with this one, {trt.__version__})")
    return library


class TensorRTLogger:
    """A TensorRT logger that forwards to ``logging`` (built lazily: the base class lives in tensorrt)."""

    @staticmethod
    def create(trt):
        class Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)

            def log(self, severity, msg):
                level = {trt.ILogger.INTERNAL_ERROR: logging.ERROR, trt.ILogger.ERROR: logging.ERROR,
                         trt.ILogger.WARNING: logging.WARNING, trt.ILogger.INFO: logging.DEBUG,
                         trt.ILogger.VERBOSE: logging.DEBUG}.get(severity, logging.INFO)
                log.log(level, "TensorRT: %s", msg)

        return Logger()


def read_manifest(folder: str | Path) -> dict:
    """The manifest of an engine folder (written by the TensorRT build); :class:`ConfigError` if it is not one."""
    folder = Path(folder)
    path = folder / MANIFEST if folder.is_dir() else folder
    if not path.is_file():
        raise ConfigError(f"{folder}: not a streamseg TensorRT engine folder (no {MANIFEST}); build one with "
                          "the 'export trt' command: export trt MODEL.onnx -o FOLDER")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: unreadable manifest ({err})") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ConfigError(f"{path}: manifest format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    for stage in STAGES:
        if stage not in manifest.get("stages", {}) or not (path.parent / manifest["stages"][stage]["file"]).is_file():
            raise ConfigError(f"{path.parent}: the {stage} engine is missing")
    return manifest


def is_engine_folder(path: str | Path | None) -> bool:
    """Whether ``path`` is a folder with an engine manifest (what ``--backend auto`` runs with TensorRT)."""
    return bool(path) and (Path(path) / MANIFEST).is_file()
