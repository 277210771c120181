"""Finding and reading checkpoints.

Search order for weights: an explicit path (``--weights``), ``$STREAMSEG_WEIGHTS``, the torch hub cache file that
torchvision itself would use, torchvision's checksummed download where the network allows. Offline and absent, the
error names the file and where to put it. Checkpoints always load with ``weights_only=True``: a checkpoint is data,
never code.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

import torch

from streamseg.errors import WeightsError

ENV_WEIGHTS = "STREAMSEG_WEIGHTS"
CHECKPOINT_FORMAT = "streamseg.checkpoint/1"


@dataclass
class Checkpoint:
    """A state dict plus what streamseg needs to rebuild the model around it."""

    state_dict: Mapping[str, torch.Tensor]
    arch: str | None = None
    class_names: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)
    origin: str = ""
    """Where it came from (a path or ``random:SEED``), for logs."""

    @property
    def num_classes(self) -> int:
        key = "roi_heads.box_predictor.cls_score.weight"
        if key not in self.state_dict:
            raise WeightsError(f"{self.origin}: not a Mask R-CNN checkpoint (no '{key}')")
        return int(self.state_dict[key].shape[0])


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, arch: str, class_names, **meta) -> Path:
    """Write a self-describing checkpoint that :func:`load_checkpoint` reads back without side files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "arch": arch,
        "class_names": list(class_names),
        "meta": dict(meta),
        "state_dict": model.state_dict(),
    }
    torch.save(payload, path)
    return path


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a streamseg checkpoint, a bare state dict, or a training checkpoint with a ``model`` entry."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    kind = file_kind(path)
    if kind not in ("zip", "pickle"):  # torch.save writes one of these; torch.load's own error would be a byte value
        hint = {"onnx": "an ONNX model: use --backend onnx", "text file": "text file?"}.get(kind, kind)
        raise WeightsError(f"cannot read weights {path}: not a PyTorch checkpoint ({hint})")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types (UnpicklingError, EOFError, RuntimeError from zip reading)
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if refused:  # weights_only=True met a Python object that is not a tensor or container
            raise WeightsError(f"cannot read weights {path}: it holds Python objects that torch.load(weights_only="
                               f"True) refuses ({refused.group(1)})") from err
        raise WeightsError(f"cannot read weights {path}: damaged or truncated PyTorch checkpoint "
                           f"({kind} format)") from err
    if not isinstance(payload, Mapping):
        raise WeightsError(f"cannot read weights {path}: expected a state dict, got {type(payload).__name__}")
    if payload.get("format") == CHECKPOINT_FORMAT:
        return Checkpoint(
            payload["state_dict"], payload.get("arch"), tuple(payload.get("class_names", ())),
            dict(payload.get("meta", {})), str(path),
        )
    for key in ("model", "state_dict"):
        if isinstance(payload.get(key), Mapping):
            return Checkpoint(payload[key], origin=str(path))
    return Checkpoint(payload, origin=str(path))


def file_kind(path: Path) -> str:
    """What a model file is by its first bytes, for error messages: "zip" (torch.save), "pickle" (torch.save's
    legacy format), "onnx" (an ONNX protobuf from torch.onnx or streamseg), "empty file", "text file" or
    "binary file"."""
    with path.open("rb") as f:
        head = f.read(512)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80":  # pickle protocol 2+ opcode
        return "pickle"
    if len(head) > 2 and head[0] == 0x08 and 3 <= head[1] <= 15 and head[2] == 0x12:  # ir_version, producer_name
        return "onnx"
    if not head:
        return "empty file"
    text = head.decode("utf-8", errors="replace")
    return "text file" if "\0" not in text and text.count("\ufffd") <= 1 else "binary file"  # 1: a character cut


def hub_cache_path(url: str) -> Path:
    """Where torchvision caches the file at ``url`` (``$TORCH_HOME/hub/checkpoints/<name>``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Cheap check before a download: torch.hub's urllib call has no timeout and would hang offline."""
    host = urlparse(url).hostname or ""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def find_weights(explicit: str | None, arch: str, url: str | None) -> Path:
    """Return a checkpoint path following the documented search order, downloading only as the last resort."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file not found: {path}")
        return path
    env = os.environ.get(ENV_WEIGHTS)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file not found: {path} (from ${ENV_WEIGHTS})")
        return path
    if url is None:
        raise WeightsError(f"no weights for '{arch}': pass --weights PATH or set ${ENV_WEIGHTS}")
    cached = hub_cache_path(url)
    if cached.is_file():
        return cached
    if _reachable(url):
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(cached), hash_prefix=_hash_prefix(url), progress=True)
        except Exception as err:
            raise WeightsError(f"download of {url} failed ({err}); save the file as {cached}") from err
        return cached
    raise WeightsError(
        f"no weights for '{arch}' and {urlparse(url).hostname} is unreachable: download {url} "
        f"and save it as {cached}, or pass --weights PATH, or set ${ENV_WEIGHTS}"
    )


def _hash_prefix(url: str) -> str | None:
    """torchvision's file names end in the first hex digits of the file's SHA-256 (``...-bf2d0c1e.pth``)."""
    stem = Path(urlparse(url).path).stem
    tail = stem.rsplit("-", 1)[-1]
    return tail if tail != stem and all(c in "0123456789abcdef" for c in tail) else None
