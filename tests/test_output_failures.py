"""What a run leaves behind when its input or its output fails: a truncated input, a full disk, a file-size limit,
an unwritable or impossible output folder, a bad encoder option. Each ends with one line and exit 1, and every
output holds what was done, readable."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import av
import cv2
import pytest

from streamseg.errors import StageError, SourceError
from streamseg.graph import Node, Pipeline
from streamseg.sinks import read_detections_jsonl
from streamseg.tracking import read_mot

STREAMSEG = [sys.executable, "-m", "streamseg.cli"]
CLIP = "traffic/car-detection.mp4"  # 377 frames, 768x432
NO_MODEL = ["--backend", "none", "--no-progress", "--preset", "ultrafast"]


def streamseg(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*STREAMSEG, *map(str, args)], capture_output=True, text=True, timeout=600, **kwargs)


def one_error_line(proc: subprocess.CompletedProcess, *patterns: str) -> str:
    """Exit 1 with exactly one ``streamseg: error:`` line, which contains every pattern, and no traceback."""
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("streamseg: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for pattern in patterns:
        assert pattern in lines[0], lines[0]
    return lines[0]


def decoded_frames(path: Path) -> int:
    """Frames PyAV decodes from ``path`` until its first error (a truncated file ends in one)."""
    count = 0
    with av.open(str(path)) as container:
        try:
            for _ in container.decode(container.streams.video[0]):
                count += 1
        except av.FFmpegError:
            pass
    return count


def jsonl_records(path: Path) -> list[dict]:
    """Every line of a detections file, which must all be complete and parse (no torn last line either)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the reader warns on a torn last line
        return list(read_detections_jsonl(path))


def faststart_cut(source: Path, folder: Path, fraction: float) -> Path:
    """The clip remuxed with its index first (as streaming-friendly files are), cut after ``fraction`` of its bytes."""
    full = folder / "full.mp4"
    with av.open(str(source)) as src, av.open(str(full), "w", options={"movflags": "faststart"}) as out:
        vin = src.streams.video[0]
        vout = out.add_stream_from_template(vin)
        for packet in src.demux(vin):
            if packet.dts is not None:
                packet.stream = vout
                out.mux(packet)
    cut = folder / "cut.mp4"
    data = full.read_bytes()
    cut.write_bytes(data[: int(len(data) * fraction)])
    return cut


# ---------------------------------------------------------------- 6. truncated input


def test_truncated_input_every_decoded_frame_reaches_every_output(videos, tmp_path):
    cut = faststart_cut(videos / CLIP, tmp_path, 0.6)
    decodable = decoded_frames(cut)
    assert 100 < decodable < 377
    proc = streamseg("run", cut, "-o", tmp_path / "out", *NO_MODEL, "--track")
    one_error_line(proc, "truncated", f"decoded {decodable} of about 377 frames")
    assert decoded_frames(tmp_path / "out" / "cut.mp4") == decodable
    assert [r["frame"] for r in jsonl_records(tmp_path / "out" / "cut.detections.jsonl")] == list(range(decodable))


def test_source_failure_drains_queued_items_through_later_nodes():
    """The failing node's items already queued downstream are processed, then the error is raised."""
    seen: list[int] = []

    def source(_):
        yield from range(50)  # a fast producer: the queues behind it are full when it fails
        raise SourceError("input ends early")

    def slow(items):
        for item in items:
            time.sleep(0.005)
            yield item

    def sink(items):
        for item in items:
            seen.append(item)
            yield item

    with pytest.raises(StageError, match="input ends early") as caught:
        Pipeline([Node("source", source), Node("model", slow), Node("sink", sink)]).run()
    assert caught.value.stage == "source"
    assert seen == list(range(50))


def test_sink_failure_stops_the_source_early():
    """A failing last node must not leave the source running to its end: it stops at its next output."""
    produced: list[int] = []

    def source(_):
        for i in range(10_000):
            produced.append(i)
            yield i

    def sink(items):
        for i, item in enumerate(items):
            if i == 5:
                raise OSError("disk on fire")
            yield item

    with pytest.raises(StageError, match="disk on fire"):
        Pipeline([Node("source", source), Node("sink", sink)]).run()
    assert len(produced) < 100
