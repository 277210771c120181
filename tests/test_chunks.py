"""Keyframe chunks of video files (streamseg.cluster.chunks): each chunk decoded on its own gives exactly the frames
of one VideoFileSource pass, and chunk videos joined by stream copy time frames like one VideoSink."""

from __future__ import annotations

import dataclasses
import pickle
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from streamseg.cluster.chunks import ChunkSource, join_videos, plan_chunks
from streamseg.errors import ConfigError, SourceError
from streamseg.sinks.annotate import Annotator
from streamseg.sinks.video import VideoSink, mp4_timescale
from streamseg.sources.video import VideoFileSource
from streamseg.types import Detections, Frame, FrameResult, SourceInfo
from test_sources import collect, cut_copy, top_level_boxes

OPEN_GOP = "keyint=12:min-keyint=12:open-gop=1:bframes=2:scenecut=0"
INTRA_REFRESH = "keyint=12:min-keyint=12:intra-refresh=1:bframes=0:scenecut=0"
TB = Fraction(1, 90000)


def encode(path: Path, params: str, *, frames: int = 60, offset: int = 0, rotation: int | None = None) -> Path:
    """A moving noise picture encoded by libx264 with ``params``, at irregular times about 25 fps apart (time
    base 1/90000; Matroska keeps milliseconds)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.codec_context.time_base = TB
        stream.options = {"preset": "ultrafast", "x264-params": params}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        noise = np.random.default_rng(0).integers(0, 256, (64, 96 + 2 * frames, 3), np.uint8)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(noise[:, 2 * i:2 * i + 96]), format="rgb24")
            frame.pts, frame.time_base = offset + 3600 * i + 900 * (i % 3), TB  # variable frame rate
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    encode(root / "open-gop.mp4", OPEN_GOP, rotation=90)  # upright: a quarter turn, so width and height swap
    encode(root / "open-gop.mkv", OPEN_GOP)
    encode(root / "intra-refresh.mp4", INTRA_REFRESH)
    return root


def packets(path: Path) -> list[av.Packet]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [packet for packet in container.demux(stream) if packet.size]


def nal_units(packet: av.Packet) -> list[tuple[int, int | None]]:
    """(NAL unit type, SEI payload type) of an H.264 packet in MP4/Matroska form (4-byte lengths)."""
    data, units, pos = bytes(packet), [], 0
    while pos + 4 < len(data):
        kind = data[pos + 4] & 0x1F
        units.append((kind, data[pos + 5] if kind == 6 else None))
        pos += 4 + int.from_bytes(data[pos:pos + 4], "big")
    return units


@pytest.mark.parametrize("name", ["open-gop.mp4", "open-gop.mkv"])
def test_open_gop_keyframes_are_flagged(clips, name):
    """What the chunking relies on, for x264 open GOPs: both demuxers flag the non-IDR I-frames as keyframes (mp4
    sync samples, Matroska keyframe blocks). Each is a non-IDR slice (NAL type 1) after a recovery point SEI
    (payload 6), and in decode order it is followed by B-frames shown before it, which reference the GOP before:
    they belong to the chunk before, whose decoder has to run past the next keyframe to get them.

    The recovery point makes every frame from the keyframe on decodable: for open GOPs alone a chunk's decoder
    could start at its own keyframe (intra refresh is what needs one keyframe early: test_own_keyframe_...)."""
    stream = packets(clips / name)
    keys = [i for i, packet in enumerate(stream) if packet.is_keyframe]
    assert len(keys) == 5 and nal_units(stream[0])[-1] == (5, None)  # the first is an IDR frame
    for i in keys[1:]:
        assert nal_units(stream[i]) == [(6, 6), (1, None)]
        assert stream[i + 1].pts < stream[i].pts and stream[i + 2].pts < stream[i].pts
    plan = plan_chunks(clips / name, 0.2)
    for chunk in plan.chunks[1:]:
        own, _ = frames_and_error(ChunkSource(plan, dataclasses.replace(chunk, seek_pts=chunk.start_pts)))
        early, _ = frames_and_error(ChunkSource(plan, chunk))
        assert_same_frames(own, early)


def frames_and_error(source) -> tuple[list[Frame], str | None]:
    frames, err = collect(source)
    return frames, None if err is None else str(err)


def assert_same_frames(got: list[Frame], want: list[Frame]) -> None:
    assert [(f.index, f.time, f.pts, f.time_base, f.source_id) for f in got] == \
        [(f.index, f.time, f.pts, f.time_base, f.source_id) for f in want]
    for a, b in zip(got, want):
        assert a.image.shape == b.image.shape and np.array_equal(a.image, b.image), a.index


def chunked(plan, **options) -> tuple[list[Frame], list[str]]:
    """Every chunk's frames in order, and the errors chunks ended with; each chunk's info is the file's."""
    with VideoFileSource(plan.path, **options) as whole:
        info = whole.info
    frames, errors = [], []
    for chunk in plan.chunks:
        got = []
        try:
            with ChunkSource(plan, chunk, **options) as source:
                assert source.info == info
                got.extend(source)
        except SourceError as err:
            errors.append(str(err))
        assert all(chunk.first_index <= f.index < chunk.first_index + chunk.frames for f in got)
        frames += got
    return frames, errors


@pytest.mark.parametrize("clip,seconds,stride,max_frames,chunks", [
    ("open-gop.mp4", 0.2, 1, None, 5),  # rotated, variable frame rate, a chunk per GOP
    ("open-gop.mkv", 0.2, 2, 11, 2),  # chunks after the 11th kept frame (index 20) left out
    ("intra-refresh.mp4", 0.2, 1, None, 5),  # fails when a chunk's decoder starts at its own keyframe
    ("traffic/car_traffic_small.mp4", 1.0, 2, 120, 2),  # fragmented MP4
    ("driving/solidWhiteRight.mp4", 1.0, 1, None, 8),
    ("edge_cases/fire2.mp4", 0.1, 1, None, 1),  # one keyframe; rotated -180, variable frame rate
    ("edge_cases/no_duration.webm", 0.1, 3, None, 1),
])
def test_chunks_decode_as_the_whole_file(clips, videos, clip, seconds, stride, max_frames, chunks):
    path = (clips if "/" not in clip else videos) / clip
    plan = plan_chunks(path, seconds, stride=stride, max_frames=max_frames)
    assert len(plan.chunks) == chunks and plan.reason is None
    assert pickle.loads(pickle.dumps(plan)) == plan  # sent to Ray workers
    want, err = frames_and_error(VideoFileSource(path, stride=stride, max_frames=max_frames))
    got, errors = chunked(plan, stride=stride, max_frames=max_frames)
    assert err is None and errors == []
    assert_same_frames(got, want)
    assert len(want) == (max_frames or -(-plan.frames // stride))


def test_plan_cuts_at_keyframes(clips):
    path = clips / "open-gop.mp4"
    stream = packets(path)
    pts = sorted(p.pts for p in stream)
    keys = sorted(p.pts for p in stream if p.is_keyframe)
    plan = plan_chunks(path, 0.5)
    assert (plan.origin_pts, plan.time_base, plan.frames) == (0, Fraction(1, 90000), 60)
    assert plan.time_origin == (0, Fraction(1, 90000))
    starts = [c.start_pts for c in plan.chunks]
    assert starts[0] == 0 and set(starts) <= set(keys)
    for before, chunk in zip(plan.chunks, plan.chunks[1:]):
        assert before.end_pts == chunk.start_pts
        # the first keyframe at or after chunk_seconds from the previous cut, decoded from the keyframe before it
        assert chunk.start_pts == min(k for k in keys if (k - before.start_pts) * plan.time_base >= 0.5)
        assert chunk.seek_pts == keys[keys.index(chunk.start_pts) - 1]
    for chunk in plan.chunks:
        assert chunk.first_index == sum(p < chunk.start_pts for p in pts)
    assert [c.number for c in plan.chunks] == list(range(len(plan.chunks))) and plan.chunks[-1].end_pts is None
    assert sum(c.frames for c in plan.chunks) == 60 and len(plan.chunks) == 3
    # shorter than chunk_seconds: one chunk, decoded by VideoFileSource itself
    (whole,) = plan_chunks(path, 10.0).chunks
    assert (whole.first_index, whole.frames, whole.start_pts, whole.end_pts, whole.seek_pts) == (0, 60, 0, None, None)


def test_own_keyframe_is_not_enough(clips):
    """With periodic intra refresh a flagged keyframe only starts a refresh wave: a decoder started there gives
    no frame until the wave is complete, so chunks start one keyframe early. Frames missing from a chunk are an
    error, never a silent gap."""
    plan = plan_chunks(clips / "intra-refresh.mp4", 0.2)
    chunk = plan.chunks[2]
    frames, err = frames_and_error(ChunkSource(plan, dataclasses.replace(chunk, seek_pts=chunk.start_pts)))
    assert err is not None and "truncated or damaged" in err and f"of the {chunk.frames} of chunk 2" in err
    assert len(frames) < chunk.frames


def remux(src: Path, dst: Path, *, duplicate: int | None = None) -> Path:
    """``src``'s video copied into ``dst`` (container by its name); packet ``duplicate`` gets the one before's
    timestamps."""
    with av.open(str(src)) as source, av.open(str(dst), "w") as out:
        template = source.streams.video[0]
        stream = out.add_stream_from_template(template)
        stored = [packet for packet in source.demux(template) if packet.size]
        if duplicate is not None:
            stored[duplicate].pts = stored[duplicate].dts = stored[duplicate - 1].pts
        for packet in stored:
            packet.stream = stream
            out.mux(packet)
    return dst


def test_one_chunk_where_chunks_would_differ(clips, videos, tmp_path):
    """Untrusted timestamps and target_fps: one chunk, whose frames (and error) are VideoFileSource's own."""
    raw = remux(clips / "open-gop.mp4", tmp_path / "raw.h264")  # an elementary stream: no timestamps at all
    duplicate = remux(clips / "intra-refresh.mp4", tmp_path / "duplicate.mkv", duplicate=30)
    joined = tmp_path / "joined.ts"  # two recordings in one file: timestamps go back (none repeats)
    joined.write_bytes(encode(tmp_path / "a.ts", OPEN_GOP, frames=24).read_bytes() +
                       encode(tmp_path / "b.ts", OPEN_GOP, frames=24, offset=9450).read_bytes())
    cases = [
        (clips / "open-gop.mp4", {"target_fps": 10}, "target_fps"),
        (videos / "surveillance/vtest_pets09_480x360_h264.avi", {"max_frames": 40}, "decode order"),
        (raw, {}, "packets without pts"),
        (joined, {}, "jump back"),
        (duplicate, {}, "equal pts"),  # its rate comes out wrong too: VideoFileSource calls it truncated
    ]
    for path, options, reason in cases:
        plan = plan_chunks(path, 0.1, **options)
        assert reason in plan.reason and len(plan.chunks) == 1, path
        assert plan.chunks[0].first_index == 0 and plan.chunks[0].end_pts is None
        want, err = frames_and_error(VideoFileSource(path, **options))
        got, errors = frames_and_error(ChunkSource(plan, plan.chunks[0], stride=1,
                                                   max_frames=options.get("max_frames")))
        assert_same_frames(got, want)
        assert errors == err and len(want) > 10, path


@pytest.mark.parametrize("clip,fraction,seconds,decode_error", [
    ("driving/solidWhiteRight.mp4", 0.6, 1.0, True),  # index first: the cut shows as a read error
    ("traffic/car-detection.mp4", 0.5, 4.0, False),  # ends quietly, short of the declared frame count
])
def test_truncated_file_fails_in_its_last_chunk(videos, tmp_path, clip, fraction, seconds, decode_error):
    path = cut_copy(videos / clip, tmp_path / "cut.mp4", fraction)
    plan = plan_chunks(path, seconds)
    assert len(plan.chunks) >= 3
    want, err = frames_and_error(VideoFileSource(path))
    got, errors = chunked(plan)
    assert_same_frames(got, want)
    (last_error,) = errors
    assert last_error.startswith(err[: err.index(" frames")]) and "\n" not in last_error  # "... of about N"
    assert f"of chunk {len(plan.chunks) - 1}" in last_error
    assert ("Invalid data" in last_error) == decode_error
    assert got[-1].index == len(got) - 1 >= plan.chunks[-1].first_index


def test_unreadable_files_and_bad_options(clips, tmp_path):
    (tmp_path / "notes.mp4").write_text("not a video")
    for path in (tmp_path / "missing.mp4", tmp_path / "notes.mp4"):
        with pytest.raises(SourceError) as expected:
            VideoFileSource(path).open()
        with pytest.raises(SourceError) as got:
            plan_chunks(path, 1.0)
        assert str(got.value) == str(expected.value)
    for seconds in (0, -1.0, True, "2"):
        with pytest.raises(ConfigError, match="chunk_seconds"):
            plan_chunks(clips / "open-gop.mp4", seconds)
    plan = plan_chunks(clips / "open-gop.mp4", 0.2, stride=2)
    with pytest.raises(ConfigError, match="differ from the chunk plan"):
        ChunkSource(plan, plan.chunks[1])


PLAIN = Annotator(masks=False, boxes=False, labels=False)


def write_video(path: Path, source, **options) -> None:
    with source, VideoSink(path, source.info, preset="ultrafast", annotator=PLAIN, **options) as sink:
        for frame in source:
            sink.write(FrameResult(frame, Detections.empty()))


def timing(path: Path) -> tuple:
    """Time base, packets' (pts, dts, duration) and decoded frames' (pts, time) of a video."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        muxed = [(p.pts, p.dts, p.duration) for p in container.demux(stream) if p.size]
        container.seek(0)
        decoded = [(f.pts, f.time) for f in container.decode(stream)]
        return stream.time_base, muxed, decoded


@pytest.mark.parametrize("clip,seconds,max_frames", [
    ("traffic/car_traffic_small.mp4", 1.0, 200),  # the second chunk starts at 81920/15360 s: not a whole ms
    ("open-gop.mp4", 0.2, None),  # variable frame rate in 1/90000
])
def test_joined_chunk_videos_time_like_one_sink(clips, videos, tmp_path, clip, seconds, max_frames):
    path = (clips if "/" not in clip else videos) / clip
    plan = plan_chunks(path, seconds, max_frames=max_frames)
    assert len(plan.chunks) >= 2
    write_video(tmp_path / "whole.mp4", VideoFileSource(path, max_frames=max_frames))
    parts = [tmp_path / f"part{chunk.number}.mp4" for chunk in plan.chunks]
    for part, chunk in zip(parts, plan.chunks):
        write_video(part, ChunkSource(plan, chunk, max_frames=max_frames), time_origin=plan.time_origin)
    time_base, whole, decoded = timing(tmp_path / "whole.mp4")
    # each part starts at its own time on the stream's clock: the empty edit before it is exact
    for part, chunk in zip(parts, plan.chunks):
        part_base, muxed, _ = timing(part)
        assert part_base == time_base and muxed[0][0] == round((chunk.start_pts - plan.origin_pts)
                                                               * plan.time_base / time_base)
    output = tmp_path / "out" / "joined.mp4"
    output.parent.mkdir()
    output.write_bytes(b"an older run's file")
    assert join_videos(parts, output) == len(whole) == len(decoded)
    assert timing(output) == (time_base, whole, decoded)
    assert top_level_boxes(output).index("moov") < top_level_boxes(output).index("mdat")  # +faststart
    assert [p.name for p in output.parent.iterdir()] == ["joined.mp4"]  # no temporary file left
    # parts that start later than 0 keep their times too
    join_videos(parts[1:], output)
    _, tail, _ = timing(output)
    assert tail == whole[-len(tail):]


def test_join_refuses_parts_that_cannot_be_copied_together(tmp_path):
    info = SourceInfo("clip", "clip.mp4", 64, 48, fps=Fraction(25), time_base=TB)
    for name, size, start in (("a", (48, 64), 0), ("b", (48, 64), 10), ("small", (32, 64), 10)):
        with VideoSink(tmp_path / f"{name}.mp4", info, preset="ultrafast", annotator=PLAIN,
                       time_origin=(0, TB)) as sink:
            for i in range(start, start + 5):
                sink.write(FrameResult(Frame(np.zeros((*size, 3), np.uint8), "clip", i, i / 25, 3600 * i, TB),
                                       Detections.empty()))
    output = tmp_path / "joined.mp4"
    output.write_bytes(b"kept")
    with pytest.raises(ValueError, match="small.mp4: encoded unlike"):
        join_videos([tmp_path / "a.mp4", tmp_path / "small.mp4"], output)
    with pytest.raises(ValueError, match="a.mp4: starts at 0.000000 s, before the part before it ends"):
        join_videos([tmp_path / "b.mp4", tmp_path / "a.mp4"], output)
    assert output.read_bytes() == b"kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.mp4", "joined.mp4", "small.mp4"]
    assert join_videos([tmp_path / "a.mp4", tmp_path / "b.mp4"], output) == 10


@pytest.mark.parametrize("time_base", [Fraction(1, 15360), Fraction(1, 90000), Fraction(1, 1000),
                                       Fraction(1001, 30000), Fraction(1, 25)])
def test_mp4_timescale_is_the_muxers(tmp_path, time_base):
    info = SourceInfo("clip", "clip.mp4", 64, 48, fps=Fraction(25), time_base=time_base)
    with VideoSink(tmp_path / "v.mp4", info, preset="ultrafast", annotator=PLAIN) as sink:
        sink.write(FrameResult(Frame(np.zeros((48, 64, 3), np.uint8), "clip", 0, 0.0, 0, time_base),
                               Detections.empty()))
    with av.open(str(tmp_path / "v.mp4")) as container:
        assert container.streams.video[0].time_base == Fraction(1, mp4_timescale(time_base))
