"""The ONNX exports that the onnx backend (and ``--backend auto`` on a CPU) runs checkpoints from: made once per
checkpoint, kept in a cache folder, reused by every later run.

Folder: ``ModelOptions.cache_dir`` (``[model] cache_dir``), else ``$STREAMSEG_ONNX_CACHE``, else
``$XDG_CACHE_HOME/streamseg/onnx`` (``~/.cache/streamseg/onnx``). File name: a key, the sha256 of: the checkpoint
file's sha256 (``random:SEED`` for untrained weights), ``arch``, RoIAlign flavour, opset,
metadata format and streamseg version. The size policy and the other options are not in the key: the graph has
dynamic height and width and the runner takes sizes, proposal count, thresholds and the detection cap from the
options (the values stored in the file are only its defaults), so one export gives the same detections at every
``--min-size``; keying on them would re-export (~10 s and 170 MB for R50-FPN) for no change.

The export runs in a child process (the ``export onnx`` command of ``python -m streamseg``): inference code never
imports the export toolchain, and the exporter's peak memory (~2 GB for R50-FPN) goes back to the system before the
sessions load. It writes a temporary file in the cache folder, which is checked (parsed, streamseg metadata) and
then renamed over the final name (``os.replace``, atomic): two runs never read half a file, and two runs exporting
at once each publish a whole one. A cached file that does not parse or carries other metadata is exported again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx

from streamseg import __version__
from streamseg.errors import ConfigError, StreamsegError, WeightsError
from streamseg.models.backend import RANDOM_WEIGHTS, ModelOptions
from streamseg.models.onnx_graph import FORMAT, load_onnx, read_metadata

log = logging.getLogger(__name__)

CACHE_ENV = "STREAMSEG_ONNX_CACHE"
OPSET = 17


def cache_dir(options: ModelOptions) -> Path:
    if options.cache_dir:
        return Path(options.cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "streamseg" / "onnx"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _source(options: ModelOptions) -> tuple[str, str]:
    """(``--weights`` for the exporter, identity of the weights for the key): a copy of a checkpoint under another
    name is the same export."""
    match = RANDOM_WEIGHTS.fullmatch(options.weights or "")
    if match:
        return f"random:{int(match.group(1) or 0)}", f"random:{int(match.group(1) or 0)}"
    from streamseg.models.torch_maskrcnn import checkpoint_path  # the torch backend's own search order

    path = checkpoint_path(options).resolve()
    return str(path), _sha256(path)


def cached_path(options: ModelOptions, flavour: str = "portable") -> tuple[Path, str]:
    """Where the export of ``options``' weights lives in the cache, and the weights it is made from."""
    weights, identity = _source(options)
    key = {"weights": identity, "arch": options.arch, "flavour": flavour, "opset": OPSET, "format": FORMAT,
           "streamseg": __version__}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir(options) / f"maskrcnn-{digest}.onnx", weights


def _load_checked(path: Path, flavour: str) -> onnx.ModelProto:
    model = load_onnx(path)
    meta = read_metadata(model, str(path))
    if meta.get("streamseg_version") != __version__ or meta.get("flavour") != flavour:
        raise ConfigError(f"{path}: made by streamseg {meta.get('streamseg_version')} ({meta.get('flavour')}), "
                          f"not {__version__} ({flavour})")
    return model


def load_or_export(options: ModelOptions, flavour: str = "portable") -> tuple[onnx.ModelProto, Path, bool]:
    """The cached export of ``options``' weights, made now if missing or unusable: (model, path, exported now)."""
    path, weights = cached_path(options, flavour)
    if path.is_file():
        try:
            return _load_checked(path, flavour), path, False
        except StreamsegError as err:
            log.warning("unusable cached ONNX export, exporting it again: %s", err)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".partial")
        os.close(handle)
    except OSError as err:
        raise ConfigError(f"model.cache_dir: cannot write the ONNX cache {path.parent}: {err.strerror or err}") from err
    try:
        log.info("exporting %s to ONNX once, into the cache %s", weights, path.parent)
        start = time.perf_counter()
        command = [sys.executable, "-m", "streamseg", "export", "onnx", "-o", temporary, "--weights", weights,
                   "--arch", options.arch, "--roi-align", flavour, "--opset", str(OPSET)]
        package_root = str(Path(__file__).resolve().parents[2])  # the child runs this streamseg, installed or not
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:  # the exporter's one-line error (a bad checkpoint, a wrong --arch) is the run's
            lines = done.stderr.strip().splitlines()
            error = next((line for line in reversed(lines) if line.startswith("streamseg: error: ")), None)
            raise WeightsError(error.removeprefix("streamseg: error: ") if error else
                               f"ONNX export of {weights} failed (exit status {done.returncode}): "
                               f"{lines[-1] if lines else 'no output'}")
        model = _load_checked(Path(temporary), flavour)
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would keep the cache from other users of a shared folder
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    log.info("exported %s in %.0f s: %s", weights, time.perf_counter() - start, path)
    return model, path, True
