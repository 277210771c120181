"""Still images (a folder, a glob pattern or one file) as a frame sequence, decoded with OpenCV."""

from __future__ import annotations

import glob
import itertools
import logging
import os
import time
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from streamseg.errors import ConfigError, SourceError
from streamseg.sources.base import Source
from streamseg.types import Frame, SourceInfo

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


def is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def read_image(path: Path) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB, EXIF orientation applied (OpenCV does it on decode); SourceError if unreadable."""
    try:
        data = np.fromfile(path, dtype=np.uint8)  # not cv2.imread: that one fails silently on non-ASCII paths
    except OSError as err:
        raise SourceError(f"{path}: cannot read image ({err.strerror or err})") from err
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise SourceError(f"{path}: not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class ImageFolderSource(Source):
    """Images as frames: a directory (its image files sorted by name, not recursive), a glob pattern (sorted
    matches with an image extension), or a single image file. File names may be anything.

    ``paths`` (filled by ``open()``) lists every image in order and ``names`` the same files relative to the
    folder (a glob: to its folder part before the first wildcard), as outputs name them; ``Frame.index`` is the
    position in both, also for strided frames, so ``paths[frame.index]`` is the file a frame came from. Images
    may differ in size: each frame has its own, ``info`` has the first readable image's. ``index_range`` ``(start,
    stop)`` keeps the frames whose index is in ``range(start, stop)`` (a cluster's work item). Still images have no
    clock: ``Frame.time`` is ``index / fps`` when ``fps`` is given, else the index itself; ``pts`` is None.
    ``source_id`` defaults to the folder's name (the file's stem for one image).

    An unreadable image (damaged, not an image, gone) is skipped with one warning and listed in ``skipped``, so
    one bad file costs that file only; ``open()`` fails only when no image at all can be read.
    """

    def __init__(
        self,
        path_or_glob: str | Path,
        *,
        source_id: str | None = None,
        fps: float | None = None,
        stride: int = 1,
        max_frames: int | None = None,
        index_range: tuple[int, int] | None = None,
    ):
        self.pattern = str(path_or_glob)
        self.index_range = index_range
        super().__init__(source_id or _default_id(self.pattern), stride=stride, max_frames=max_frames)
        if fps is not None and (isinstance(fps, bool) or not fps > 0):
            raise ConfigError(f"fps must be None or a number > 0, got {fps!r}")
        self.fps = fps
        self.paths: list[Path] = []
        self.names: list[str] = []
        self.skipped: list[Path] = []
        self._picks: Iterator[int] = iter(())
        self._first: tuple[int, np.ndarray] | None = None

    def _open(self) -> SourceInfo:
        root, self.paths = _list_images(self.pattern)
        self.names = [Path(os.path.relpath(p, root)).as_posix() for p in self.paths]
        self.skipped = []
        # one iterator over the picked indices: open() reads up to the first readable image, _frames() goes on
        picks = range(0, len(self.paths), self.stride)[: self.max_frames]
        if self.index_range is not None:
            picks = [i for i in picks if self.index_range[0] <= i < self.index_range[1]]
        self._picks = iter(picks)
        self._first = next(((i, image) for i in self._picks if (image := self._read(i)) is not None), None)
        if self._first is None:
            raise SourceError(f"{self.pattern}: no readable image ({len(self.skipped)} skipped)")
        image = self._first[1]
        return SourceInfo(
            source_id=self.source_id,
            uri=self.pattern,
            width=image.shape[1],
            height=image.shape[0],
            fps=Fraction(self.fps).limit_denominator(1_000_000) / self.stride if self.fps else None,
            frame_count=self._kept_count(len(self.paths)) - len(self.skipped),
            container="images",
            is_image_sequence=True,
        )

    def _frames(self) -> Iterator[Frame]:
        first, self._first = self._first, None
        for index, image in itertools.chain([first], ((i, self._read(i)) for i in self._picks)):
            if image is None:
                continue
            seconds = index / self.fps if self.fps else float(index)
            yield Frame(image, self.source_id, index, seconds, capture_time=time.time())

    def _read(self, index: int) -> np.ndarray | None:
        """The image at ``index``, or None after a warning when it cannot be read (recorded in ``skipped``)."""
        try:
            return read_image(self.paths[index])
        except SourceError as err:
            log.warning("%s; skipped", err)
            self.skipped.append(self.paths[index])
            return None

    def _release(self) -> None:
        self._first = None
        self._picks = iter(())


def _list_images(pattern: str) -> tuple[Path, list[Path]]:
    """The folder that file names are relative to, and the images in sorted order."""
    path = Path(pattern)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if is_image_file(p))
        if not found:
            raise SourceError(f"{path}: folder has no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        return path, found
    if path.is_file():
        return path.parent, [path]
    if is_glob(pattern):
        found = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if is_image_file(Path(p)))
        if not found:
            raise SourceError(f"{pattern}: pattern matches no image files")
        return _glob_root(pattern), found
    raise SourceError(f"{pattern}: no such file or folder")


def _glob_root(pattern: str) -> Path:
    """The folder part of a glob pattern before its first wildcard: ``data/**/*.jpg`` -> ``data``."""
    path = Path(pattern)
    while is_glob(str(path)) and path != path.parent:
        path = path.parent
    return path


def _default_id(pattern: str) -> str:
    path = Path(pattern)
    if path.is_file():
        return path.stem
    return _glob_root(pattern).resolve().name or "images"


def is_image_input(uri: str) -> bool:
    """True for a folder, an image file, or a glob pattern that is not an existing file's name."""
    path = Path(uri)
    return path.is_dir() or is_image_file(path) or (not path.exists() and is_glob(uri))
