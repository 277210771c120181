"""Sources on the real evalkit clips and images, plus truncated/broken copies made in tmp_path."""

from __future__ import annotations

import os
import struct
import wave
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from streamseg.errors import ConfigError, SourceError
from streamseg.sources import (
    ImageFolderSource,
    VideoFileSource,
    describe,
    format_description,
    open_source,
)

from evalkit_clips import EVALKIT_CLIPS as CLIPS


def open_files() -> set[str]:
    """Paths this process holds open right now: the proof that close() released a file."""
    fds = Path("/proc/self/fd")
    paths = set()
    for fd in fds.iterdir():
        try:
            paths.add(os.readlink(fd))
        except OSError:
            pass
    return paths


def top_level_boxes(path: Path) -> list[str]:
    """MP4 top-level box names in file order (to know whether moov comes before mdat)."""
    data, names, pos = path.read_bytes(), [], 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        names.append(data[pos + 4 : pos + 8].decode("latin1"))
        if size == 1:
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
        if size < 8:
            break
        pos += size
    return names


def cut_copy(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def collect(source) -> tuple[list, BaseException | None]:
    """Frames yielded before the source ended, and the SourceError it ended with (if any)."""
    frames = []
    try:
        with source:
            for frame in source:
                frames.append(frame)
    except SourceError as err:
        return frames, err
    return frames, None


@pytest.mark.parametrize("clip,frames,width,height", CLIPS, ids=[Path(c[0]).name for c in CLIPS])
def test_clip_decodes_fully(videos, clip, frames, width, height):
    path = videos / clip
    count, times = 0, []
    with VideoFileSource(path) as src:
        info = src.info
        assert (info.width, info.height, info.source_id, info.uri) == (width, height, path.stem, str(path))
        for frame in src:
            assert frame.index == count and frame.source_id == path.stem
            assert frame.image.dtype == np.uint8 and frame.image.shape == (height, width, 3)
            assert frame.image.flags.c_contiguous
            assert frame.pts is not None and frame.time_base == info.time_base
            times.append(frame.time)
            count += 1
    assert abs(count - frames) <= 1
    assert times[0] == 0.0 and all(a < b for a, b in zip(times, times[1:]))
    if info.frame_count is not None:  # exact from the index, or estimated from duration x average rate
        assert abs(info.frame_count - count) <= max(2, count // 50)


def test_fire2_rotated_upright_and_variable_rate(videos):
    path = videos / "edge_cases/fire2.mp4"
    with av.open(str(path)) as container:
        raw = [(f.to_ndarray(format="rgb24"), f.pts, f.rotation) for f in container.decode(video=0)]
    assert {r for _, _, r in raw} == {-180}  # display matrix on the decoded frames (no rotate tag)
    with VideoFileSource(path) as src:
        assert src.info.rotation == 180 and (src.info.width, src.info.height) == (1280, 720)
        frames = list(src)
    assert len(frames) == len(raw) == 25
    tb, pts0 = frames[0].time_base, raw[0][1]
    assert tb == Fraction(1, 90000)
    for frame, (image, pts, _) in zip(frames, raw):
        assert np.array_equal(frame.image, np.rot90(image, 2))
        assert frame.pts == pts and frame.time == pytest.approx(float((pts - pts0) * tb))
    gaps = np.diff([f.time for f in frames])
    assert gaps.max() - gaps.min() > 0.01  # variable frame rate kept, not resampled
    assert frames[-1].time == pytest.approx(205186 / 90000)


@pytest.mark.parametrize("display_rotation,clockwise", [(-90, 90), (90, 270)])
def test_quarter_turn_swaps_size(tmp_path, display_rotation, clockwise):
    """A 90-degree display matrix (PyAV/FFmpeg angle is counterclockwise): marker in the raw top-left corner."""
    path = tmp_path / "turned.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.set_display_rotation(display_rotation)
        image = np.zeros((48, 64, 3), np.uint8)
        image[:16, :16] = 255
        for _ in range(3):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with VideoFileSource(path) as src:
        assert (src.info.rotation, src.info.width, src.info.height) == (clockwise, 48, 64)
        frame = next(iter(src))
    assert frame.image.shape == (64, 48, 3) and frame.image.flags.c_contiguous
    bright = {90: (8, -8), 270: (-8, 8)}[clockwise]  # top-left goes top-right (cw) or bottom-left (ccw)
    assert frame.image[bright].mean() > 200 and frame.image[8, 8].mean() < 50


def test_failing_audio_track_is_ignored(videos):
    frames, err = collect(VideoFileSource(videos / "edge_cases/video_with_failing_audio.mp4"))
    assert err is None and len(frames) == 280


def test_containers_without_duration(videos):
    with VideoFileSource(videos / "edge_cases/no_duration.webm") as src:
        info = src.info
        count = sum(1 for _ in src)
    assert (info.duration, info.frame_count, info.codec, count) == (None, None, "vp9", 74)
    with VideoFileSource(videos / "edge_cases/asl_again.mkv") as src:
        info = src.info
        count = sum(1 for _ in src)
    # the stream has no duration; the container's DURATION tag gives 2.6 s and an estimate of 78 frames
    assert (info.duration, info.frame_count, count) == (2.6, 78, 77)


def test_avi_times_from_decode_order(videos):
    """AVI stores no pts: with B-frames the pts come out of order, so times come from the dts."""
    with VideoFileSource(videos / "surveillance/vtest_pets09_480x360_h264.avi", max_frames=30) as src:
        times = [f.time for f in src]
    assert times == pytest.approx([i / 10 for i in range(30)])


def test_stride(videos):
    with VideoFileSource(videos / "driving/solidWhiteRight.mp4", stride=3) as src:
        info = src.info
        frames = [(f.index, f.time) for f in src]
    assert info.fps == Fraction(25, 3) and info.frame_count == 74
    assert [i for i, _ in frames] == list(range(0, 221, 3))
    assert [t for _, t in frames] == pytest.approx([i / 25 for i in range(0, 221, 3)])


def test_target_fps_constant_rate(videos):
    with VideoFileSource(videos / "driving/solidWhiteRight.mp4", target_fps=10) as src:
        info = src.info
        times = [f.time for f in src]
    assert info.fps == 10 and info.frame_count == 89
    assert abs(len(times) - 89) <= 1
    gaps = np.diff(times)
    assert gaps.min() >= 0.08 - 1e-9 and gaps.mean() == pytest.approx(0.1, abs=0.005)


def test_target_fps_variable_rate(videos):
    path = videos / "edge_cases/fire2.mp4"
    with VideoFileSource(path, target_fps=5) as src:
        assert src.info.fps == 5
        times = [f.time for f in src]
    assert times[0] == 0.0 and abs(len(times) - (2.28 * 5 + 1)) <= 1.5
    assert np.diff(times).mean() == pytest.approx(0.2, abs=0.03)


def test_max_frames_stops_early_without_error(videos):
    frames, err = collect(VideoFileSource(videos / "traffic/car-detection.mp4", max_frames=5, stride=2))
    assert err is None and [f.index for f in frames] == [0, 2, 4, 6, 8]


def test_close_releases_the_file(videos):
    path = os.path.realpath(videos / "driving/solidWhiteRight.mp4")  # /proc/self/fd shows resolved paths
    with VideoFileSource(path) as src:
        assert path in open_files()
        for frame in src:
            if frame.index == 3:
                break  # the decoder is mid-stream when the block closes the source
    assert src.closed and path not in open_files()
    with pytest.raises(RuntimeError, match="not open"):
        src.info
    with pytest.raises(RuntimeError, match="not open"):
        iter(src)
    src.open()  # reopening starts again from the first frame
    try:
        assert next(iter(src)).index == 0 and path in open_files()
    finally:
        src.close()
    assert path not in open_files()


def test_missing_file(tmp_path):
    with pytest.raises(SourceError, match="nope.mp4: no such file"):
        VideoFileSource(tmp_path / "nope.mp4").open()


def test_not_a_media_file(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("these are not video frames\n" * 100)
    with pytest.raises(SourceError, match="notes.mp4: cannot read as media") as err:
        VideoFileSource(path).open()
    assert "\n" not in str(err.value) and str(path) not in open_files()


def test_no_video_stream(tmp_path):
    path = tmp_path / "tone.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(struct.pack("<800h", *([1000, -1000] * 400)))
    with pytest.raises(SourceError, match=r"tone.wav: no video stream \(streams: audio\)"):
        VideoFileSource(path).open()
    assert str(path) not in open_files()  # the container opened, then was closed by the failed open()


def test_truncated_moov_first_yields_then_raises(videos, tmp_path):
    src = videos / "driving/solidWhiteRight.mp4"
    assert top_level_boxes(src).index("moov") < top_level_boxes(src).index("mdat")
    frames, err = collect(VideoFileSource(cut_copy(src, tmp_path / "cut.mp4", 0.6)))
    assert err is not None and "cut.mp4" in str(err) and "\n" not in str(err)
    assert f"truncated or damaged: decoded {len(frames)} of about 221 frames" in str(err)
    assert 100 < len(frames) < 221 and [f.index for f in frames] == list(range(len(frames)))
    # stopping before the damage is not an error
    frames, err = collect(VideoFileSource(tmp_path / "cut.mp4", max_frames=50))
    assert err is None and len(frames) == 50


def test_truncated_without_decode_error_is_caught_by_count(videos, tmp_path):
    """AVI and Matroska end quietly when cut: the declared frame count / duration shows what is missing."""
    frames, err = collect(VideoFileSource(cut_copy(videos / "surveillance/vtest_pets09_480x360_h264.avi",
                                                   tmp_path / "cut.avi", 0.6)))
    assert err is not None and f"decoded {len(frames)} of about 795 frames" in str(err)
    frames, err = collect(VideoFileSource(cut_copy(videos / "edge_cases/asl_again.mkv", tmp_path / "cut.mkv", 0.6)))
    assert err is not None and f"decoded {len(frames)} of about 78 frames" in str(err) and len(frames) > 20


def test_truncated_moov_last_fails_at_open(videos, tmp_path):
    src = videos / "edge_cases/video_with_failing_audio.mp4"
    assert top_level_boxes(src)[-1] == "moov"
    with pytest.raises(SourceError, match="cut_end.mp4: cannot read as media"):
        VideoFileSource(cut_copy(src, tmp_path / "cut_end.mp4", 0.6)).open()


def test_option_checks(videos):
    for bad in ({"stride": 0}, {"max_frames": 0}, {"target_fps": -1}, {"stride": 1.5}):
        with pytest.raises(ConfigError):
            VideoFileSource(videos / "driving/solidWhiteRight.mp4", **bad)


# ---------------------------------------------------------------- images


def test_image_folder(evalkit):
    folder = evalkit / "coco/val2017"
    names = sorted(p.name for p in folder.glob("*.jpg"))
    with ImageFolderSource(folder) as src:
        info = src.info
        frames = list(src)
        assert [p.name for p in src.paths] == names
    first = cv2.cvtColor(cv2.imread(str(folder / names[0])), cv2.COLOR_BGR2RGB)
    assert info.is_image_sequence and info.source_id == "val2017" and info.frame_count == 40
    assert (info.height, info.width) == first.shape[:2] and info.fps is None
    assert len(frames) == 40 and np.array_equal(frames[0].image, first)
    assert [(f.index, f.time, f.pts) for f in frames] == [(i, float(i), None) for i in range(40)]
    assert len({f.image.shape for f in frames}) > 1  # sizes differ; each frame has its own
    assert all(f.image.flags.c_contiguous and f.image.dtype == np.uint8 for f in frames)


def test_image_glob_stride_and_fps(evalkit):
    with ImageFolderSource(str(evalkit / "coco/val2017/*.jpg"), stride=2, fps=4, max_frames=5) as src:
        info = src.info
        frames = list(src)
    assert info.source_id == "val2017" and info.frame_count == 5 and info.fps == 2
    assert [(f.index, f.time) for f in frames] == [(i, i / 4) for i in (0, 2, 4, 6, 8)]


def test_image_exif_orientation(evalkit, tmp_path):
    """A JPEG with an EXIF orientation 6 tag (turn 90 degrees clockwise to view) comes out turned."""
    data = (evalkit / "coco/val2017/000000005001.jpg").read_bytes()
    tiff = b"MM\x00\x2a" + struct.pack(">IH", 8, 1) + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0) + b"\0\0\0\0"
    app1 = b"Exif\0\0" + tiff
    (tmp_path / "turned.jpg").write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:])
    raw = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    with open_source(str(tmp_path / "turned.jpg")) as src:
        assert isinstance(src, ImageFolderSource) and src.info.source_id == "turned"
        (frame,) = list(src)
    assert np.array_equal(frame.image, np.rot90(raw, -1))


def test_empty_image_inputs(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(SourceError, match="folder has no image files"):
        ImageFolderSource(tmp_path).open()
    with pytest.raises(SourceError, match="pattern matches no image files"):
        ImageFolderSource(str(tmp_path / "*.png")).open()


# ---------------------------------------------------------------- dispatch and describe


def test_open_source_dispatch(evalkit, videos, tmp_path):
    with open_source(str(evalkit / "coco/val2017")) as src:
        assert isinstance(src, ImageFolderSource) and src.info.frame_count == 40
    with open_source(str(evalkit / "coco/val2017/0000000[0-4]*.jpg")) as src:
        assert isinstance(src, ImageFolderSource) and len(src.paths) == len(list(src))
    with open_source(str(videos / "edge_cases/asl_again.mkv"), stride=2) as src:
        assert isinstance(src, VideoFileSource) and src.info.fps == 15
    with pytest.raises(SourceError, match="no such file"):
        open_source(str(tmp_path / "missing.mp4"))
    with pytest.raises(ConfigError, match="target_fps"):
        open_source(str(evalkit / "coco/val2017"), target_fps=5)


def test_describe_clips(videos, evalkit):
    fire = describe(str(videos / "edge_cases/fire2.mp4"))
    video = next(s for s in fire["streams"] if s["type"] == "video")
    assert fire["container"].startswith("mov,mp4") and fire["duration"] == pytest.approx(2.38, abs=0.01)
    assert (video["codec"], video["rotation"], video["upright_width"], video["frames"]) == ("h264", 180, 1280, 25)
    assert video["avg_fps"] == pytest.approx(750000 / 71393) and video["time_base"] == "1/90000"

    audio = next(s for s in describe(str(videos / "edge_cases/video_with_failing_audio.mp4"))["streams"]
                 if s["type"] == "audio")
    assert (audio["sample_rate"], audio["channels"]) == (44100, 2)

    webm = describe(str(videos / "edge_cases/no_duration.webm"))
    assert webm["duration"] is None and [s["codec"] for s in webm["streams"]] == ["vp9", "opus"]
    assert "duration unknown" in format_description(webm)

    traffic = describe(str(videos / "traffic/car_traffic_small.mp4"))["streams"][0]
    # fragmented mp4: no count in the header, the frames counted by demuxing
    assert (traffic["frames"], traffic["header_frames"], traffic["avg_fps"], traffic["r_fps"]) == \
        (917, None, 30.1875, 30)

    text = format_description(describe(str(videos / "surveillance/vtest_pets09_480x360.mp4")))
    assert "480x360 (upright 480x360, rotation 0)" in text and "44100 Hz" in text and "frames 795" in text
    assert "images: 40" in format_description(describe(str(evalkit / "coco/val2017")))


def test_describe_errors(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        describe(str(tmp_path / "missing.mkv"))
    (tmp_path / "x.mkv").write_bytes(b"\0" * 1000)
    with pytest.raises(SourceError, match="x.mkv: cannot read as media"):
        describe(str(tmp_path / "x.mkv"))
