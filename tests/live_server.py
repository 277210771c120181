"""Test helpers for live streams: a real RTSP server process (tests/rtsp_server.py on Debian's GStreamer), the
H.264 clips it serves (a moving block, or a generated street scene with events) and waiting for a condition. Used by
tests/test_live.py, tests/test_serve*.py and the live benches."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
SYSTEM_PYTHON = os.environ.get("STREAMSEG_GST_PYTHON", "/usr/bin/python3")


def gstreamer_missing() -> str | None:
    """Why the GStreamer RTSP server cannot run here, or None when it can."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found (GStreamer's Python bindings live in Debian's python3)"
    probe = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
             "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
             "assert Gst.ElementFactory.find('rtph264pay') and Gst.ElementFactory.find('qtdemux')")
    done = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=60)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"GStreamer RTSP server unavailable ({last}); install the packages of ../shared/GUIDE.md section 1"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_clip(path: Path, seconds: float, width: int = 320, height: int = 240, fps: int = 25,
              gop: int | None = None, noise: bool = False) -> Path:
    """An H.264 MP4 (a keyframe every ``gop`` frames, default every second; no B-frames) with a moving block,
    like a camera picture; ``noise``: random pictures instead, which no encoder can shrink (an annotated copy of
    them grows fast)."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # one slice per picture: GStreamer's rtph264pay (config-interval=-1) repeats SPS/PPS before every IDR
        # slice, so FFmpeg would split a multi-slice keyframe into two pictures and decode each GOP as garbage
        stream.options = {"preset": "ultrafast", "g": str(gop or fps), "bf": "0", "crf": "32",
                          "threads": "1"}
        base = np.zeros((height, width, 3), np.uint8)
        base[..., 2] = 90
        rng = np.random.default_rng(0)
        for i in range(int(seconds * fps)):
            if noise:
                image = rng.integers(0, 256, (height, width, 3), np.uint8)
            else:
                image = base.copy()
                x = (i * 4) % max(1, width - 40)
                image[height // 3: height // 3 + 40, x: x + 40] = (230, 200, 40)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def scene_clip(path: Path, seconds: int, fps: int, loops: int = 1, seed: int = 3):
    """A generated street scene (:mod:`streamseg.scenes`, with events) as an H.264 MP4 the RTSP server can stream
    (no B-frames, a keyframe every second, as :func:`make_clip`): ``seconds`` rendered once and played ``loops``
    times in a row (the packets again with later timestamps), so a camera outlasts a slow test without rendering
    every second of it. Returns ``(path, scene)``."""
    from streamseg.scenes import Scene, SceneConfig

    scene = Scene(SceneConfig(seed=seed, fps=fps, frames=fps * seconds))
    cfg = scene.config
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = cfg.width, cfg.height, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": str(fps), "bf": "0", "crf": "23", "threads": "1"}
        packets = []
        for index in range(cfg.frames + 1):
            if index < cfg.frames:
                frame = av.VideoFrame.from_ndarray(scene.render(index).image, format="rgb24")
                frame.pts, frame.time_base = index, Fraction(1, fps)
            else:
                frame = None  # flush the encoder
            packets += [(bytes(p), p.pts, p.dts, p.is_keyframe, p.time_base) for p in stream.encode(frame)]
        for loop in range(loops):
            for data, pts, dts, keyframe, time_base in packets:  # time_base 1/fps: frame numbers
                packet = av.Packet(data)
                packet.pts, packet.dts = pts + loop * cfg.frames, dts + loop * cfg.frames
                packet.time_base, packet.stream, packet.is_keyframe = time_base, stream, keyframe
                container.mux(packet)
    return path, scene


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    """``predicate()``'s first truthy value, polled every ``interval`` s; an AssertionError naming ``what``
    after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class RtspServer:
    """``tests/rtsp_server.py`` as a child process on 127.0.0.1:``port``; ``kill()`` and ``start()`` again to
    simulate a camera that goes away and comes back (on the same port)."""

    def __init__(self, mounts: dict[str, Path], port: int | None = None, user: str | None = None,
                 password: str | None = None):
        self.mounts = mounts
        self.port = port or free_port()
        self.user, self.password = user, password
        self.process: subprocess.Popen | None = None

    def url(self, mount: str, credentials: bool = True) -> str:
        auth = f"{self.user}:{self.password}@" if credentials and self.user else ""
        return f"rtsp://{auth}127.0.0.1:{self.port}{mount}"

    def start(self, timeout: float = 20.0) -> "RtspServer":
        command = [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--port", str(self.port), "--parent-pipe"]
        for mount, path in self.mounts.items():
            command += ["--mount", mount, "--file", str(path)]
        if self.user:
            command += ["--user", self.user, "--password", self.password]
        deadline = time.monotonic() + timeout
        while True:  # the port may still be held for a moment by the previous process
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True)
            line = self.process.stdout.readline()
            if line.startswith("READY"):
                return self
            self.process.wait()
            if time.monotonic() > deadline:
                raise RuntimeError(f"RTSP server did not start: {line} {self.process.stderr.read()}")
            time.sleep(0.2)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process is not None:
            for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
                pipe.close()
        self.process = None

    def __enter__(self) -> "RtspServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


if __name__ == "__main__":
    print(gstreamer_missing() or "ok", file=sys.stderr)
