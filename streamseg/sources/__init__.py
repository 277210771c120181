"""Where frames come from. Every source is a context manager that yields :class:`streamseg.types.Frame`
(upright ``(H, W, 3)`` uint8 RGB) and describes its stream in a :class:`streamseg.types.SourceInfo`.

    with open_source("clip.mp4", stride=2) as source:
        print(source.info)
        for frame in source: ...
"""

from __future__ import annotations

import inspect
from typing import Callable

from streamseg.errors import ConfigError
from streamseg.redact import redact_url
from streamseg.sources.base import Source
from streamseg.sources.describe import describe, format_description
from streamseg.sources.images import IMAGE_EXTENSIONS, ImageFolderSource, is_image_input
from streamseg.sources.live import LiveSource, Reconnect, StreamStatus, is_live_input, live_source_id
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
    "VideoFileSource",
    "describe",
    "format_description",
    "open_source",
]

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
    the source's constructor. Use it in a ``with`` block, or call ``close()``."""
    uri = str(uri)
    build = next(build for matches, build in SOURCE_KINDS if matches(uri))
    try:
        inspect.signature(build).bind(uri, **options)
    except TypeError as err:
        raise ConfigError(f"options for {getattr(build, '__name__', build)} ('{redact_url(uri)}'): {err}") from None
    return build(uri, **options).open()
