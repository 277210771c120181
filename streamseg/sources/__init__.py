"""Where frames come from. Every source is a context manager that yields :class:`streamseg.types.Frame`
(upright ``(H, W, 3)`` uint8 RGB) and describes its stream in a :class:`streamseg.types.SourceInfo`.

    with open_source("clip.mp4", stride=2) as source:
        print(source.info)
        for frame in source: ...
"""

from __future__ import annotations

import glob
import inspect
import re
from pathlib import Path
from typing import Callable, Iterable

from streamseg.errors import ConfigError, SourceError
from streamseg.redact import redact_url
from streamseg.sources.base import Source
from streamseg.sources.describe import describe, format_description
from streamseg.sources.images import IMAGE_EXTENSIONS, ImageFolderSource, is_glob, is_image_file, is_image_input
from streamseg.sources.live import LIVE_SCHEMES, LiveSource, Reconnect, StreamStatus, is_live_input, live_source_id
from streamseg.sources.video import VideoFileSource

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderSource",
    "LiveSource",
    "Reconnect",
    "StreamStatus",
    "is_live_input",
    "live_source_id",
    "SOURCE_KINDS",
    "Source",
    "VIDEO_EXTENSIONS",
    "VideoFileSource",
    "check_url_scheme",
    "describe",
    "expand_sources",
    "format_description",
    "open_source",
]

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".mpg",
                              ".mpeg", ".flv", ".wmv", ".ogv", ".3gp", ".y4m"})
"""What a glob pattern's matches count as videos (any file FFmpeg reads works when named on its own)."""

SOURCE_KINDS: tuple[tuple[Callable[[str], bool], Callable[..., Source]], ...] = (
    (is_live_input, LiveSource),  # rtsp://, http(s):// (HLS), v4l2:// and /dev/video*
    (is_image_input, ImageFolderSource),
    (lambda uri: True, VideoFileSource),  # anything else is for FFmpeg to read
)
"""``(matches(uri), build(uri, **options))`` pairs, tried in order. Live streams come first: a URL is never a
file name."""


def open_source(uri: str, **options) -> Source:
    """The source for ``uri``, already open (``info`` is valid): a folder, glob pattern (``*``, ``?``, ``[``) or
    image file gives an :class:`ImageFolderSource`, a stream URL (rtsp://, http(s)://, v4l2://) or /dev/video*
    a :class:`LiveSource`, anything else a :class:`VideoFileSource`. ``options`` go to
    the source's constructor. Use it in a ``with`` block, or call ``close()``. A glob pattern here is always
    images: :func:`expand_sources` turns a pattern's videos into sources of their own."""
    uri = str(uri)
    check_url_scheme(uri)
    build = next(build for matches, build in SOURCE_KINDS if matches(uri))
    try:
        inspect.signature(build).bind(uri, **options)
    except TypeError as err:
        raise ConfigError(f"options for {getattr(build, '__name__', build)} ('{redact_url(uri)}'): {err}") from None
    return build(uri, **options).open()


def check_url_scheme(uri: str) -> None:
    """SourceError for a URL whose scheme no source reads (``rtps://cam``, a typo): said as such, not as a
    missing file named by a path the OS has mangled (``rtps:/cam``)."""
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", uri)
    if match and match.group(1).lower() not in LIVE_SCHEMES:
        supported = ", ".join(f"{scheme}://" for scheme in LIVE_SCHEMES)
        raise SourceError(f"{redact_url(uri)}: unknown URL scheme '{match.group(1)}' (supported: {supported}; "
                          "files and folders by path)")


def expand_sources(uris: Iterable[str]) -> list[str]:
    """The sources that ``uris`` (as a user lists them) name, in order, with glob patterns resolved.

    A pattern (``*``, ``?``, ``[``; not an existing file's name) gives one source per matching video file
    (:data:`VIDEO_EXTENSIONS`) and, when it matches images, the pattern itself once, before them: its images
    stay together as one image sequence. Other matches (folders, text files) are ignored, as a folder's are.
    Fails up front on a pattern that matches neither and on a URL of an unknown scheme."""
    expanded = []
    for uri in map(str, uris):
        check_url_scheme(uri)
        if is_live_input(uri) or not is_glob(uri) or Path(uri).exists():
            expanded.append(uri)
            continue
        matches = sorted(Path(p) for p in glob.glob(uri, recursive=True))
        videos = [str(p) for p in matches if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()]
        images = any(is_image_file(p) for p in matches)
        if not videos and not images:
            raise SourceError(f"{uri}: pattern matches no image or video files")
        expanded += ([uri] if images else []) + videos
    return expanded
