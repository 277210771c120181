"""The work folder of a cluster run, ``<output_dir>/.streamseg-cluster``: what lets a killed driver resume.

- ``manifest.json`` names the run (a fingerprint of the config and of each source file's size and mtime) and
  lists the sources, each marked done once its outputs are in place. It is rewritten atomically.
- ``<source_id>/detect-NNNNN.npz`` and ``video-NNNNN.mp4``: each item's results and its part of the annotated
  video. A file exists only whole (written under a temporary name, then renamed), so its presence is the record
  that the item is done: re-running the same command redoes only the items without one.

A run whose fingerprint differs (another config, a changed input) starts afresh. The folder is removed when every
source is done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from streamseg import __version__
from streamseg.cluster.work import commit
from streamseg.config import ClusterOptions, PipelineConfig

log = logging.getLogger(__name__)

FOLDER = ".streamseg-cluster"


def fingerprint(config: PipelineConfig, uris: Sequence[str]) -> str:
    """What the outputs depend on: the config (without where it runs) and each input's identity."""
    kept = replace(config, cluster=ClusterOptions(chunk_seconds=config.cluster.chunk_seconds,
                                                  chunk_images=config.cluster.chunk_images))
    inputs = []
    for uri in uris:
        path = Path(uri)
        stat = path.stat() if path.is_file() else None
        entries = sorted(os.listdir(path)) if path.is_dir() else []
        inputs.append([str(path.resolve()) if path.exists() else uri, stat and stat.st_size,
                       stat and stat.st_mtime_ns, len(entries)])
    text = json.dumps([__version__, repr(kept), inputs], default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class WorkFolder:
    """The work folder of one run (see the module docstring)."""

    def __init__(self, output_dir: Path, key: str, source_ids: Sequence[str]):
        self.root = Path(output_dir) / FOLDER
        self.key = key
        manifest = self._read()
        if manifest is not None and manifest.get("fingerprint") != key:
            log.info("%s: an earlier run with other settings or inputs; starting afresh", self.root)
            shutil.rmtree(self.root, ignore_errors=True)
            manifest = None
        self.resumed = manifest is not None
        self.done: set[str] = set(manifest.get("done", ())) if manifest else set()
        self.source_ids = list(source_ids)
        self.root.mkdir(parents=True, exist_ok=True)
        self._write()

    def _read(self) -> dict | None:
        try:
            return json.loads((self.root / "manifest.json").read_text())
        except (OSError, ValueError):
            return None

    def _write(self) -> None:
        manifest = {"schema": "streamseg.cluster-manifest/1", "fingerprint": self.key,
                    "sources": self.source_ids, "done": sorted(self.done)}
        commit(json.dumps(manifest, indent=1).encode(), self.root / "manifest.json")

    def source_dir(self, source_id: str) -> Path:
        return self.root / source_id

    def detections(self, source_id: str, key: str) -> Path:
        return self.root / source_id / f"detect-{key}.npz"

    def video_part(self, source_id: str, key: str) -> Path:
        return self.root / source_id / f"video-{key}.mp4"

    def mark_done(self, source_id: str) -> None:
        """The source's outputs are in place: its items are no longer needed."""
        self.done.add(source_id)
        self._write()
        shutil.rmtree(self.source_dir(source_id), ignore_errors=True)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
