"""Still images (a folder, a glob pattern or one file) as a frame sequence, decoded with OpenCV."""

from __future__ import annotations

import glob
import time
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from streamseg.errors import ConfigError, SourceError
from streamseg.sources.base import Source
from streamseg.types import Frame, SourceInfo

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
    matches with an image extension), or a single image file.

    ``paths`` (filled by ``open()``) lists every image in order; ``Frame.index`` is the position in it, also for
    strided frames, so ``paths[frame.index]`` is the file a frame came from. Images may differ in size: each
    frame has its own, ``info`` has the first image's. Still images have no clock: ``Frame.time`` is
    ``index / fps`` when ``fps`` is given, else the index itself; ``pts`` is None. ``source_id`` defaults to
    the folder's name (the file's stem for one image). An unreadable image ends iteration with a SourceError
    naming it, after the images before it were yielded.
    """

    def __init__(
        self,
        path_or_glob: str | Path,
        *,
        source_id: str | None = None,
        fps: float | None = None,
        stride: int = 1,
        max_frames: int | None = None,
    ):
        self.pattern = str(path_or_glob)
        super().__init__(source_id or _default_id(self.pattern), stride=stride, max_frames=max_frames)
        if fps is not None and (isinstance(fps, bool) or not fps > 0):
            raise ConfigError(f"fps must be None or a number > 0, got {fps!r}")
        self.fps = fps
        self.paths: list[Path] = []
        self._first: np.ndarray | None = None

    def _open(self) -> SourceInfo:
        self.paths = _list_images(self.pattern)
        self._first = read_image(self.paths[0])
        return SourceInfo(
            source_id=self.source_id,
            uri=self.pattern,
            width=self._first.shape[1],
            height=self._first.shape[0],
            fps=Fraction(self.fps).limit_denominator(1_000_000) / self.stride if self.fps else None,
            frame_count=self._kept_count(len(self.paths)),
            container="images",
            is_image_sequence=True,
        )

    def _frames(self) -> Iterator[Frame]:
        picks = range(0, len(self.paths), self.stride)[: self.max_frames]
        for index in picks:
            image = self._first if index == 0 else read_image(self.paths[index])
            self._first = None
            seconds = index / self.fps if self.fps else float(index)
            yield Frame(image, self.source_id, index, seconds, capture_time=time.time())

    def _release(self) -> None:
        self._first = None


def _list_images(pattern: str) -> list[Path]:
    path = Path(pattern)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if is_image_file(p))
        if not found:
            raise SourceError(f"{path}: folder has no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    elif path.is_file():
        found = [path]
    elif is_glob(pattern):
        found = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if is_image_file(Path(p)))
        if not found:
            raise SourceError(f"{pattern}: pattern matches no image files")
    else:
        raise SourceError(f"{pattern}: no such file or folder")
    return found


def _default_id(pattern: str) -> str:
    path = Path(pattern)
    if path.is_file():
        return path.stem
    while is_glob(str(path)) and path != path.parent:
        path = path.parent
    return path.resolve().name or "images"


def is_image_input(uri: str) -> bool:
    """True for a folder, an image file, or a glob pattern that is not an existing file's name."""
    path = Path(uri)
    return path.is_dir() or is_image_file(path) or (not path.exists() and is_glob(uri))
