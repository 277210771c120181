"""Frames of a live source go through the same timestamp and orientation code as a file's (issue 14.2): the same
clip read as a file and as a live stream over HTTP gives the same upright pictures at the same times."""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from streamseg.sources import LiveSource, VideoFileSource
from streamseg.sources.base import StreamClock


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_folder(videos):
    """The evalkit videos over HTTP on 127.0.0.1 (an IP camera or a media server serving a recording)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(videos)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _read_all(source, count: int) -> list:
    frames = []
    with source:
        for frame in source:
            frames.append(frame)
            if len(frames) == count:
                break
    return frames


def test_a_rotated_clip_is_upright_with_the_files_times_when_read_live(videos, http_folder):
    """fire2.mp4: rotated 180 degrees by a display matrix, variable frame rate (25 frames in 2.38 s)."""
    clip = "edge_cases/fire2.mp4"
    from_file = _read_all(VideoFileSource(videos / clip), 25)
    live = _read_all(LiveSource(f"{http_folder}/{clip}", buffer=64, connect_attempts=1), 25)
    assert len(from_file) == len(live) == 25
    for a, b in zip(from_file, live):
        assert b.image.shape == a.image.shape == (720, 1280, 3)
        assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() < 1.0  # upright, as the file's
        assert b.time == pytest.approx(a.time, abs=1e-6)


def test_stream_clock_repairs_what_cameras_send():
    tb = 1 / 90000
    clock = StreamClock(tb, 25, max_jump=60.0)
    assert [clock(ts) for ts in (None, 0, 3600, 7200)] == pytest.approx([0.0, 0.04, 0.08, 0.12])
    assert clock(7200) == pytest.approx(0.121)  # a repeated timestamp: 1 ms later, never backwards
    assert clock(10_000_000) == pytest.approx(0.16)  # a leap of ~111 s: re-anchored one frame on
    assert clock(10_003_600) == pytest.approx(0.2)
    clock.restart(clock.now + 5.0)  # reconnected after 5 s: the new session's timestamps start over
    assert clock(123) == pytest.approx(5.2) and clock(3723) == pytest.approx(5.24)
    file_clock = StreamClock(tb, 25)  # files keep their gaps
    assert [file_clock(ts) for ts in (0, 9_000_000)] == pytest.approx([0.0, 100.0])
