"""``streamseg info SOURCE``: what a media file (or image set) holds, without decoding more than a frame."""

from __future__ import annotations

from pathlib import Path

import av
from av.stream import Discard

from streamseg.errors import SourceError
from streamseg.sources.images import ImageFolderSource, is_image_input
from streamseg.sources.live import LiveSource, is_live_input
from streamseg.sources.video import clockwise, open_container


def describe(uri: str) -> dict:
    """Container and per-stream facts as JSON-ready values (None where unknown).

    Media: ``{"uri", "container", "container_long_name", "duration" (s), "bit_rate" (bit/s), "streams": [...]}``;
    every stream has ``index, type, codec, codec_long_name, time_base ("1/90000"), frames, duration, bit_rate``
    (``frames``: the header's count); video counts ``frames`` by demuxing (what decoding yields, the header's count
    in ``header_frames``) and adds ``width, height, upright_width, upright_height, rotation`` (degrees clockwise,
    read from the first decoded frame), ``pix_fmt, avg_fps, r_fps``; audio adds ``sample_rate, channels``.
    Images: ``{"uri", "container": "images", "images", "first", "width", "height"}``. Live streams (one
    connection attempt, credentials redacted): ``{"uri", "container", "live": True, "codec", "width", "height",
    "fps"}``. Errors: SourceError.
    """
    if is_image_input(uri):
        with ImageFolderSource(uri) as src:
            info = src.info
            return {"uri": uri, "container": "images", "images": len(src.paths), "first": src.paths[0].name,
                    "width": info.width, "height": info.height}
    if is_live_input(uri):
        with LiveSource(uri, connect_attempts=1) as src:
            info = src.info
            return {"uri": info.uri, "container": info.container, "live": True, "codec": info.codec,
                    "width": info.width, "height": info.height, "fps": float(info.fps) if info.fps else None}
    path = Path(uri)
    with open_container(path) as container:
        try:
            return {
                "uri": str(path),
                "container": container.format.name,
                "container_long_name": container.format.long_name,
                "duration": container.duration / av.time_base if container.duration else None,
                "bit_rate": container.bit_rate or None,
                "streams": [_stream(path, s) for s in container.streams],
            }
        except av.FFmpegError as err:
            raise SourceError(f"{path}: cannot describe ({err})") from err


def _stream(path: Path, stream: av.stream.Stream) -> dict:
    cc = stream.codec_context
    out = {
        "index": stream.index,
        "type": stream.type,
        "codec": cc.name if cc is not None else None,
        "codec_long_name": cc.codec.long_name if cc is not None else None,
        "time_base": str(stream.time_base) if stream.time_base else None,
        "frames": stream.frames or None,
        "duration": float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None,
        "bit_rate": (cc.bit_rate if cc is not None else None) or None,
    }
    if stream.type == "video":
        rotation, frames = _scan(path, stream.index)
        turned = rotation is not None and rotation % 180 != 0
        out.update(
            frames=frames,
            header_frames=stream.frames or None,
            width=cc.width,
            height=cc.height,
            upright_width=cc.height if turned else cc.width,
            upright_height=cc.width if turned else cc.height,
            rotation=rotation,
            pix_fmt=cc.pix_fmt,
            avg_fps=float(stream.average_rate) if stream.average_rate else None,
            r_fps=float(stream.base_rate) if stream.base_rate else None,
        )
    elif stream.type == "audio":
        out.update(sample_rate=cc.sample_rate, channels=cc.channels)
    return out


def _scan(path: Path, index: int) -> tuple[int | None, int | None]:
    """Clockwise turn of the first frame of stream ``index`` (None when no frame decodes) and the number of frames
    decoding yields (None when demuxing fails).

    The display matrix reaches PyAV on decoded frames, not on streams, hence a second, short-lived container. The
    count comes from demuxing alone (about a microsecond a packet, no decoding): packets that an edit list trims
    are flagged discard and never become frames, so the header's count can exceed what a decoder yields."""
    rotation, frames = None, 0
    with av.open(str(path)) as container:
        for other in container.streams:
            other.discard = Discard.default if other.index == index else Discard.all
        stream = container.streams[index]
        try:
            for n, packet in enumerate(container.demux(stream)):
                if rotation is None and n < 64:  # a decoder's delay is a few packets; a stream that never
                    # decodes must not cost a decode attempt per packet
                    try:
                        rotation = next((clockwise(frame) for frame in packet.decode()), None)
                    except av.FFmpegError:
                        pass
                frames += bool(packet.size) and not packet.is_discard
        except av.FFmpegError:
            return rotation, None
    return rotation, frames


def format_description(desc: dict) -> str:
    """Human-readable lines for :func:`describe`'s dict."""
    if desc.get("container") == "images":
        return (f"{desc['uri']}\n  images: {desc['images']} (first {desc['first']}: "
                f"{desc['width']}x{desc['height']})")
    if desc.get("live"):
        return (f"{desc['uri']}\n  live stream: {desc['container']}, video {desc['codec']}, "
                f"{desc['width']}x{desc['height']}, fps {_num(desc['fps'])}")
    duration = f"{desc['duration']:.3f} s" if desc["duration"] is not None else "unknown"
    bit_rate = f"{desc['bit_rate'] / 1000:.0f} kb/s" if desc["bit_rate"] else "unknown"
    lines = [desc["uri"], f"  container: {desc['container']}, duration {duration}, bit rate {bit_rate}"]
    for s in desc["streams"]:
        line = f"  stream {s['index']}: {s['type']} {s['codec'] or '?'}"
        if s["type"] == "video":
            rotation = "unknown" if s["rotation"] is None else s["rotation"]
            line += (f", {s['width']}x{s['height']} (upright {s['upright_width']}x{s['upright_height']},"
                     f" rotation {rotation}), {s['pix_fmt']}, fps {_num(s['avg_fps'])} avg / {_num(s['r_fps'])} r")
        elif s["type"] == "audio":
            line += f", {s['sample_rate']} Hz, {s['channels']} channels"
        frames = s["frames"] if s["frames"] is not None else "unknown"
        header = s.get("header_frames")
        if header is not None and header != s["frames"]:
            frames = f"{frames} (the header says {header}: an edit list or damage leaves fewer to decode)"
        line += f", time_base {s['time_base']}, frames {frames}"
        lines.append(line)
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.6g}"
