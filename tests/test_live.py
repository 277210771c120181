"""Live streams against a real RTSP server on 127.0.0.1 (Debian's GStreamer, tests/rtsp_server.py): reading, the
server killed and restarted, a camera that never answers, two cameras with one killed, credentials never shown,
/metrics and /healthz, recording segments and event clips, cross-stream batching."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import pytest

from live_server import RtspServer, free_port, gstreamer_missing, make_clip
from streamseg.config import PipelineConfig, build_config
from streamseg.errors import ConfigError, SourceError
from streamseg.live import LiveRunner
from streamseg.models import ModelOptions, NoDetections
from streamseg.redact import RedactingFilter, redact, redact_url, secrets_of
from streamseg.sinks.recording import EventClipper, SegmentRecorder
from streamseg.sources import LiveSource, Reconnect, is_live_input, live_source_id, open_source

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "Pa55-w0rd!x"
FAST = Reconnect(initial=0.2, maximum=1.0, jitter=0.1)

_missing = gstreamer_missing()
needs_server = pytest.mark.skipif(_missing is not None, reason=_missing or "")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("live_clips")
    return {"qvga": make_clip(folder / "qvga.mp4", 40), "small": make_clip(folder / "small.mp4", 40, 256, 144),
            "long_gop": make_clip(folder / "long_gop.mp4", 30, gop=250)}


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def read_until(frames_in, stop, timeout: float) -> list:
    """Frames from the iterator ``frames_in`` until ``stop(frames)`` or the timeout (iterate a source once)."""
    frames, deadline = [], time.monotonic() + timeout
    for frame in frames_in:
        frames.append(frame)
        if stop(frames) or time.monotonic() > deadline:
            break
    return frames


# -- redaction (pure functions, and through a real log handler) ------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("rtsp://admin:hunter2@10.0.0.7:554/s1", "rtsp://***@10.0.0.7:554/s1"),
    ("rtsp://admin@cam/s1", "rtsp://***@cam/s1"),
    ("rtsp://cam/s1", "rtsp://cam/s1"),
    ("error opening 'rtsp://u:p%40ss@h/x': refused", "error opening 'rtsp://***@h/x': refused"),
    ("https://cam/live.m3u8?token=abc123&x=1", "https://cam/live.m3u8?token=***&x=1"),
])
def test_redact_url(text, expected):
    assert redact_url(text) == expected


def test_a_user_name_is_masked_as_a_word_not_inside_other_words():
    secrets = secrets_of("rtsp://cam:pw-9x@10.0.0.7/s")
    assert redact("camera_added id=yard for user cam (pw-9x)", secrets) == "camera_added id=yard for user *** (***)"
    filter_ = RedactingFilter(())
    filter_.add(secrets)  # a camera added while running
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "login cam:%s", ("pw-9x",), None)
    filter_.filter(record)
    assert record.getMessage() == "login ***"


def test_redact_secrets_outside_urls_and_in_log_records(caplog):
    url = f"rtsp://bob:{PASSWORD.replace('!', '%21')}@127.0.0.1/cam"
    secrets = secrets_of(url)
    assert PASSWORD in secrets and "bob" in secrets
    assert PASSWORD not in redact(f"auth failed for bob with {PASSWORD}", secrets)
    stream = logging.StreamHandler(open(os.devnull, "w"))
    records = []
    stream.emit = records.append
    stream.addFilter(RedactingFilter(secrets))
    logger = logging.getLogger("streamseg.test_redact")
    logger.addHandler(stream)
    try:
        logger.error("connect %s failed: %s", url, PASSWORD)
        try:
            raise OSError(f"cannot open {url}")
        except OSError:
            logger.exception("boom")
    finally:
        logger.removeHandler(stream)
        stream.stream.close()
    text = "\n".join(logging.Formatter().format(r) for r in records)
    assert "boom" in text and "***" in text
    assert PASSWORD not in text and PASSWORD.replace("!", "%21") not in text


def test_live_inputs_and_ids():
    assert is_live_input("rtsp://h/x") and is_live_input("https://h/a.m3u8") and is_live_input("/dev/video0")
    assert is_live_input("v4l2:///dev/video0")
    assert not is_live_input("clip.mp4") and not is_live_input("/data/frames/*.png")
    assert live_source_id("rtsp://u:p@cam.local:554/stream1") == "stream1"
    assert live_source_id("rtsp://u:p@cam.local:554/") == "cam.local_554"
    assert live_source_id("/dev/video2") == "video2"
    assert Reconnect(initial=1, maximum=8, jitter=0).delay(10, __import__("random").Random(0)) == 8


# -- a real RTSP server ----------------------------------------------------------------------------------------------

@needs_server
@pytest.mark.parametrize("transport, buffer", [("tcp", 1), ("udp", 1), ("tcp", 64)])
def test_stream_read_end_to_end(clips, transport, buffer):
    """The frames are the file's pictures, in order, on the stream's clock. With the default one-frame buffer a
    consumer that falls behind for a moment (a loaded machine) loses frames, counted; with a buffer that holds
    everything the test reads, the test sets the pace and nothing may be lost."""
    with RtspServer({"/cam": clips["qvga"]}) as server:
        statuses = []
        opened_at = time.time()
        with open_source(server.url("/cam"), transport=transport, buffer=buffer,
                         on_status=statuses.append) as source:
            assert source.info.is_live and (source.info.width, source.info.height) == (320, 240)
            assert source.info.uri == server.url("/cam")
            frames = read_until(source, lambda fs: len(fs) >= 60, timeout=20)
            read_at = time.time()
            dropped = source.dropped
        assert source.closed
    assert len(frames) == 60
    indices = [f.index for f in frames]
    assert all(b > a for a, b in zip(indices, indices[1:]))
    assert indices[-1] + 1 - len(frames) <= dropped  # every frame skipped was counted as dropped
    if buffer >= len(frames):
        assert indices == list(range(60)) and dropped == 0
    assert all(f.image.shape == (240, 320, 3) and f.source_id == "cam" for f in frames)
    times = [f.time for f in frames]
    assert all(b > a for a, b in zip(times, times[1:]))
    assert all(f.time == pytest.approx(f.index / 25, abs=0.1) for f in frames)  # the stream's own clock
    with_pts = [f for f in frames if f.pts is not None]
    assert len(with_pts) >= 58 and all(f.time_base is not None for f in with_pts)
    assert all(opened_at <= f.capture_time <= read_at for f in frames)  # the wall clock of receipt
    assert [s.kind for s in statuses] == ["stream_up"]
    # the pictures are the file's pictures at the same index (a client that mis-assembles packets decodes
    # grey-green garbage)
    with av.open(str(clips["qvga"])) as container:
        expected = [f.to_ndarray(format="rgb24") for _, f in zip(range(indices[-1] + 1), container.decode(video=0))]
    errors = [float(abs(f.image.astype(int) - expected[f.index].astype(int)).mean()) for f in frames]
    assert max(errors) < 1.0, errors


@needs_server
@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_server_killed_and_restarted_resumes_with_down_up_and_new_resolution(clips, transport, caplog):
    server = RtspServer({"/cam": clips["qvga"]}).start()
    statuses = []
    retries = FailedReconnects(2)
    caplog.set_level(logging.INFO, logger=retries.logger.name)
    restarted_at = []

    def restart():
        """The camera comes back once the client has retried twice, now at another resolution."""
        if retries.reached.wait(30):
            restarted_at.append(time.time())
            server.start()

    restarter = threading.Thread(target=restart)
    try:
        with LiveSource(server.url("/cam"), transport=transport, reconnect=FAST, read_timeout=2,
                        on_status=statuses.append) as source:
            live = iter(source)
            before = read_until(live, lambda fs: len(fs) >= 25, timeout=20)
            server.kill()
            server.mounts = {"/cam": clips["small"]}
            restarter.start()
            after = read_until(live, lambda fs: fs[-1].width == 256 and len(fs) >= 5 + sum(
                f.width == 320 for f in fs), timeout=30)
        assert source.reconnects == 1
    finally:
        if restarter.ident is not None:
            restarter.join()
        retries.close()
        server.kill()
    kinds = [s.kind for s in statuses]
    assert kinds == ["stream_up", "stream_down", "stream_up"], kinds
    up = statuses[-1]
    assert up.reconnects == 1 and up.resized and (up.width, up.height) == (256, 144)
    assert statuses[1].reason  # why it went down, e.g. "end of stream" or a read error
    new = [f for f in after if f.width == 256]
    assert len(new) >= 5 and new[0].image.shape == (144, 256, 3)
    indices = [f.index for f in before + after]
    assert all(b > a for a, b in zip(indices, indices[1:]))  # one index sequence across the reconnect
    times = [f.time for f in before + after]
    assert all(b > a for a, b in zip(times, times[1:]))  # time goes on across the gap...
    # ... by at least the wall-clock time the camera was away: from the down report to the restart
    assert new[0].time - before[-1].time >= restarted_at[0] - statuses[1].wall_time > 0


class FailedReconnects(logging.Handler):
    """Counts a live source's failed reconnect attempts (its ``stream_reconnect_failed`` log lines); ``reached`` is
    set at ``wanted``. Attached to the sources' logger until ``close()``."""

    logger = logging.getLogger("streamseg.sources.live")

    def __init__(self, wanted: int):
        super().__init__(logging.INFO)
        self.wanted, self.count = wanted, 0
        self.reached = threading.Event()
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("stream_reconnect_failed"):
            self.count += 1
            if self.count >= self.wanted:
                self.reached.set()

    def close(self) -> None:
        self.logger.removeHandler(self)
        super().close()


def test_camera_that_never_answers_fails_after_the_configured_attempts():
    # a TCP port that accepts connections and never says a word (a hung camera)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"rtsp://admin:{PASSWORD}@127.0.0.1:{silent.getsockname()[1]}/cam"
        source = LiveSource(url, connect_timeout=1.0, read_timeout=1.0, connect_attempts=2,
                            reconnect=Reconnect(initial=0.1, maximum=0.2))
        pool = ThreadPoolExecutor(1)
        try:
            # a deadline, not a measurement: without the timeouts FFmpeg would wait on this port forever
            error = pool.submit(source.open).exception(timeout=60)
        finally:
            pool.shutdown(wait=False)  # closing the port ends a hung attempt
    assert isinstance(error, SourceError), error
    message = str(error)
    assert "cannot connect after 2 attempts" in message and "timed out" in message, message
    assert "\n" not in message and PASSWORD not in message and "admin" not in message


@needs_server
def test_cli_unreachable_camera_one_line_error_without_credentials(tmp_path):
    url = f"rtsp://admin:{PASSWORD}@127.0.0.1:{free_port()}/cam"
    done = subprocess.run([sys.executable, "-m", "streamseg.cli", "--log-format", "json", "run", url, "-o",
                           str(tmp_path), "--backend", "none"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("streamseg: error:")]
    assert len(errors) == 1 and "cannot connect after 3 attempts" in errors[0], done.stderr
    logs = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]  # structured logs
    failed = [entry for entry in logs if entry.get("event") == "stream_connect_failed"]
    assert len(failed) == 2 and failed[0]["source"] == "cam" and failed[0]["attempt"] == "1"
    everything = done.stdout + done.stderr + "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    assert PASSWORD not in everything and "admin" not in everything


def live_config(tmp_path: Path, **live) -> PipelineConfig:
    settings = {"read_timeout": 2.0, "reconnect_initial": 0.2, "reconnect_max": 1.0} | live
    return build_config({"output_dir": str(tmp_path), "backend": "none", "live": settings,
                         "sinks": {"video": False}})


@contextlib.contextmanager
def running(runner: LiveRunner, urls: list[str]):
    """Run ``runner`` on ``urls`` in a thread for the block; leaving it stops the run and waits for it. The dict
    yielded holds ``run`` (the LiveRun) or ``error`` once the block is over."""
    box = {}

    def target():
        try:
            box["run"] = runner.run(urls)
        except BaseException as err:  # noqa: BLE001 - re-raised by the test
            box["error"] = err

    thread = threading.Thread(target=target)
    thread.start()
    try:
        yield box
    finally:
        runner.stop()
        thread.join(30)


@needs_server
def test_two_cameras_one_killed_the_other_unaffected(clips, tmp_path):
    a = RtspServer({"/cam_a": clips["qvga"]}).start()
    b = RtspServer({"/cam_b": clips["qvga"]}).start()
    runner = LiveRunner(live_config(tmp_path), NoDetections(ModelOptions()))
    try:
        with running(runner, [a.url("/cam_a"), b.url("/cam_b")]) as box:
            assert runner.ready.wait(30), box
            streams = runner.streams
            wait_for(lambda: streams["cam_a"].processed > 20 and streams["cam_b"].processed > 20, 20, "both streams")
            a.kill()
            wait_for(lambda: not streams["cam_a"].source.up, 10, "cam_a down")
            # two seconds of cam_b's frames are processed while cam_a is down and retrying
            b_start = streams["cam_b"].processed
            wait_for(lambda: streams["cam_b"].processed >= b_start + 50, 30, "cam_b going on while cam_a is down")
            a_during = streams["cam_a"].processed
            assert not streams["cam_a"].source.up
            a.start()
            wait_for(lambda: streams["cam_a"].processed > a_during + 10, 30, "cam_a back")
    finally:
        a.kill()
        b.kill()
    assert "error" not in box, box.get("error")
    run = box["run"]
    kinds_a = [s.kind for s in run.streams["cam_a"].statuses]
    kinds_b = [s.kind for s in run.streams["cam_b"].statuses]
    assert kinds_a == ["stream_up", "stream_down", "stream_up"] and kinds_b == ["stream_up"]
    lines = [json.loads(line) for line in (tmp_path / "cam_a.streams.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in lines] == kinds_a and lines[-1]["reconnects"] == 1
    records = (tmp_path / "cam_b.detections.jsonl").read_text().splitlines()
    assert len(records) == run.streams["cam_b"].processed


@needs_server
def test_credentials_never_appear_in_any_output(clips, tmp_path, caplog):
    server = RtspServer({"/cam": clips["qvga"]}, user="operator", password=PASSWORD).start()
    config = build_config({"output_dir": str(tmp_path), "backend": "none",
                           "live": {"read_timeout": 2.0, "reconnect_initial": 0.2, "reconnect_max": 1.0,
                                    "metrics_port": 0, "segment_minutes": 0.05, "clips": True,
                                    "clip_pre": 0.5, "clip_post": 0.5}})
    caplog.set_level(logging.DEBUG)
    runner = LiveRunner(config, NoDetections(ModelOptions()))
    scraped = []
    try:
        with running(runner, [server.url("/cam")]) as box:
            assert runner.ready.wait(30), box
            cam = runner.streams["cam"]
            wait_for(lambda: cam.processed > 10, 20, "frames")
            server.kill()  # errors and down/up events carry messages that could quote the URL
            wait_for(lambda: not cam.source.up, 10, "down")
            server.start()
            wait_for(lambda: cam.source.up and cam.processed > 40, 30, "up")
            for path in ("/metrics", "/healthz", "/nothing"):
                try:
                    scraped.append(urllib.request.urlopen(runner.metrics_server.url + path, timeout=5).read().decode())
                except urllib.error.HTTPError as err:
                    scraped.append(err.read().decode())
    finally:
        server.kill()
    assert "error" not in box, box.get("error")
    # a wrong password: the error names the URL, redacted
    with pytest.raises(SourceError) as caught:
        LiveSource(server.url("/cam").replace(PASSWORD, PASSWORD + "x"), connect_attempts=1).open()
    files = "".join(p.read_text(errors="replace") for p in tmp_path.rglob("*.json*"))
    everything = "\n".join([caplog.text, files, *scraped, str(caught.value), repr(box["run"].streams["cam"].statuses),
                            box["run"].report.table()])
    assert 'stream="cam"' in everything and "stream_down" in everything  # the outputs were really looked at
    for secret in (PASSWORD, "operator"):
        assert secret not in everything
    segment_bytes = b"".join(p.read_bytes() for p in tmp_path.rglob("*.mp4"))
    assert PASSWORD.encode() not in segment_bytes


@needs_server
def test_metrics_and_healthz_on_loopback(clips, tmp_path):
    with RtspServer({"/cam": clips["qvga"]}) as server:
        runner = LiveRunner(live_config(tmp_path, metrics_port=0), NoDetections(ModelOptions()))
        with running(runner, [server.url("/cam")]) as box:
            assert runner.ready.wait(30), box
            wait_for(lambda: runner.streams["cam"].processed > 30, 20, "frames")
            assert runner.metrics_server.host == "127.0.0.1"
            metrics = urllib.request.urlopen(runner.metrics_server.url + "/metrics", timeout=5).read().decode()
            health = json.loads(urllib.request.urlopen(runner.metrics_server.url + "/healthz", timeout=5).read())
    values = {}
    for line in metrics.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    assert values['streamseg_stream_up{stream="cam"}'] == 1.0
    assert values['streamseg_frames_processed_total{stream="cam"}'] > 30
    assert values['streamseg_frames_received_total{stream="cam"}'] >= values['streamseg_frames_processed_total'
                                                                             '{stream="cam"}']
    assert 'streamseg_frames_dropped_total{stream="cam"}' in values
    assert values['streamseg_reconnects_total{stream="cam"}'] == 0
    assert values['streamseg_capture_to_result_seconds_count{stream="cam"}'] > 30
    assert values['streamseg_stream_fps{stream="cam"}'] > 0
    assert 'streamseg_queue_depth{queue="stream:cam"}' in values and 'streamseg_queue_depth{queue="stage:write"}' \
        in values
    assert health["ok"] is True and health["streams"]["cam"]["up"] is True
    # a port that is taken: a one-line configuration error, not a traceback
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with RtspServer({"/cam": clips["qvga"]}) as server:
            runner = LiveRunner(live_config(tmp_path, metrics_port=taken.getsockname()[1]),
                                NoDetections(ModelOptions()))
            with pytest.raises(ConfigError, match="live.metrics_port: cannot listen on 127.0.0.1"):
                runner.run([server.url("/cam")])


@needs_server
def test_cross_stream_batching_one_forward_for_several_cameras(clips, tmp_path):
    class Paced(NoDetections):
        """The no-detections model, remembering each batch's cameras; a forward ends only once every camera has a
        new frame waiting: a model slower than the cameras, paced by the frames themselves, not by a sleep."""

        def __init__(self):
            super().__init__(ModelOptions())
            self.batches = []
            self.runner: LiveRunner | None = None

        def predict(self, frames):
            self.batches.append(sorted(f.source_id for f in frames))
            wait_for(lambda: all(s.source.buffer_depth() for s in self.runner.streams.values()), 20,
                     "a new frame from every camera")
            return super().predict(frames)

    results = {}
    with RtspServer({"/c1": clips["qvga"], "/c2": clips["qvga"]}) as server:
        for batching in (True, False):
            backend = Paced()
            backend.runner = runner = LiveRunner(live_config(tmp_path / str(batching),
                                                             cross_stream_batching=batching), backend)
            with running(runner, [server.url("/c1"), server.url("/c2")]) as box:
                assert runner.ready.wait(30), box
                wait_for(lambda: len(backend.batches) >= 12, 30, "forwards")
            assert "error" not in box, box.get("error")
            results[batching] = backend.batches[1:]  # the first forward may come before the second camera's frame
    # both cameras had a frame waiting at every forward after the first: all of them went into one forward
    assert results[True] and all(b == ["c1", "c2"] for b in results[True]), results[True]
    # without batching, one camera per forward, taking turns (round robin)
    alone = [b[0] for b in results[False] if len(b) == 1]
    assert len(alone) == len(results[False]) and all(a != b for a, b in zip(alone, alone[1:])), results[False]


@needs_server
def test_segments_and_event_clip_from_the_pre_event_buffer(clips, tmp_path):
    recorder = SegmentRecorder(tmp_path / "segments", "cam", segment_seconds=2.0)
    bounded = SegmentRecorder(tmp_path / "bounded", "cam", segment_seconds=2.0, keep=2)
    clipper = EventClipper(tmp_path / "clips", "cam", pre=1.0, post=1.0)
    with RtspServer({"/cam": clips["qvga"]}) as server:
        with LiveSource(server.url("/cam"), taps=[recorder, bounded, clipper]) as source:
            live = iter(source)
            frames = read_until(live, lambda fs: fs[-1].time > 3.0, timeout=20)
            event_at = frames[-1].capture_time
            clipper.trigger(event_at, "enter-door-7")
            read_until(live, lambda fs: fs[-1].time > 7.5, timeout=20)
    assert len(clipper.clips) == 1 and "enter-door-7" in clipper.clips[0].name
    assert len(recorder.segments) >= 3
    # keep=2: only the two newest finished segments stay on disk
    assert [p.name for p in bounded.segments] == [p.name for p in recorder.segments[-2:]]
    assert sorted(p.name for p in (tmp_path / "bounded").iterdir()) == sorted(p.name for p in bounded.segments)
    for i, path in enumerate(recorder.segments):
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            decoded = [f for f in container.decode(stream)]
            assert decoded[0].key_frame and (stream.width, stream.height) == (320, 240)
            if i < len(recorder.segments) - 1:  # the last one ends with the run
                assert 25 * 2 <= len(decoded) <= 25 * 3 + 2, (path, len(decoded))  # cut at a keyframe after 2 s
    with av.open(str(clipper.clips[0])) as container:
        count = sum(1 for _ in container.decode(video=0))
    # from the keyframe at or before 1 s before the event to 1 s after: 2 to 3 s of 25 fps video
    assert 2 * 25 - 3 <= count <= 3 * 25 + 3, count


@needs_server
def test_cli_live_run_ctrl_c_finalizes_outputs(clips, tmp_path):
    with RtspServer({"/cam": clips["qvga"]}, user="viewer", password=PASSWORD) as server:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamseg.cli", "run", server.url("/cam"), "-o", str(tmp_path), "--backend",
             "none", "--metrics-port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        wait_for(lambda: (tmp_path / "cam.detections.jsonl").exists()
                 and len((tmp_path / "cam.detections.jsonl").read_text().splitlines()) > 30, 60, "results")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "metrics: http://127.0.0.1:" in err
    videos = sorted((tmp_path / "cam" / "annotated").glob("cam-*.mp4"))
    assert len(videos) == 1
    with av.open(str(videos[0])) as container:
        written = sum(1 for _ in container.decode(video=0))
    records = (tmp_path / "cam.detections.jsonl").read_text().splitlines()
    assert written == len(records) > 30
    assert PASSWORD not in out + err and "viewer" not in out + err


class BlockDetector(NoDetections):
    """A real (if simple) detector for the test clips: the yellow block, found by its colour, as a "person"."""

    class_names = ("__background__", "person")

    def predict(self, frames):
        import numpy as np

        from streamseg.types import Detections, InstanceMasks

        found = []
        for frame in frames:
            image = frame.image
            mask = (image[..., 0] > 170) & (image[..., 1] > 140) & (image[..., 2] < 120)
            ys, xs = np.nonzero(mask)
            if len(xs) < 100:
                found.append(Detections.empty(self.class_names, (frame.height, frame.width)))
                continue
            box = [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]
            found.append(Detections(box, [0.95], [1], self.class_names, InstanceMasks.from_dense(mask[None])))
        return found


@needs_server
def test_events_make_clips_and_count_in_metrics(clips, tmp_path):
    config = build_config({
        "output_dir": str(tmp_path), "backend": "none", "sinks": {"video": False},
        "tracker": {"min_hits": 2},
        "events": {"units": "relative", "zones": [{"name": "right", "polygon": [[0.5, 0], [1, 0], [1, 1], [0.5, 1]],
                                                     "classes": ["person"]}]},
        "live": {"clips": True, "clip_pre": 1.0, "clip_post": 0.5, "metrics_port": 0},
    })
    with RtspServer({"/cam": clips["qvga"]}) as server:
        runner = LiveRunner(config, BlockDetector())
        with running(runner, [server.url("/cam")]) as box:
            assert runner.ready.wait(30), box
            events_file = tmp_path / "cam.events.jsonl"
            clips_folder = runner.streams["cam"].outputs["clips"]
            # the block crosses into the right half about every 2.8 s; a clip is written once its 0.5 s after the
            # event were received (and finished when the run ends)
            wait_for(lambda: events_file.exists() and len(events_file.read_text().splitlines()) >= 2
                     and len(list(clips_folder.glob("*.mp4"))) >= 2, 30, "events and their clips")
            metrics = urllib.request.urlopen(runner.metrics_server.url + "/metrics", timeout=5).read().decode()
    assert "error" not in box, box.get("error")
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    assert {e["kind"] for e in events} <= {"enter", "exit"} and events[0]["region"] == "right"
    clip_files = sorted((tmp_path / "cam" / "clips").glob("*.mp4"))
    assert len(clip_files) >= 2 and all("right" in p.name for p in clip_files)
    # the first event may come before a whole second was received; the second one has its full pre-event buffer
    with av.open(str(clip_files[1])) as container:
        count = sum(1 for _ in container.decode(video=0))
    assert 25 * 1.5 - 3 <= count <= 25 * 2.5 + 3, count  # keyframe before (event - 1 s) .. event + 0.5 s
    assert f'streamseg_events_total{{kind="{events[0]["kind"]}",stream="cam"}}' in metrics


@needs_server
def test_stream_given_up_after_max_attempts_ends_alone(clips, tmp_path):
    a = RtspServer({"/cam_a": clips["qvga"]}).start()
    b = RtspServer({"/cam_b": clips["qvga"]}).start()
    runner = LiveRunner(live_config(tmp_path, max_attempts=2), NoDetections(ModelOptions()))
    try:
        with running(runner, [a.url("/cam_a"), b.url("/cam_b")]) as box:
            assert runner.ready.wait(30), box
            streams = runner.streams
            wait_for(lambda: streams["cam_a"].processed > 10, 20, "frames")
            a.kill()
            wait_for(lambda: streams["cam_a"].source.finished, 20, "cam_a given up")
            b_before = streams["cam_b"].processed
            wait_for(lambda: streams["cam_b"].processed > b_before + 10, 20, "the other camera going on")
    finally:
        a.kill()
        b.kill()
    run = box["run"]
    failed = run.streams["cam_a"].failed
    assert failed and "2 reconnect attempts failed" in failed and "\n" not in failed
    assert run.streams["cam_b"].failed is None
    assert [s.kind for s in run.streams["cam_a"].statuses] == ["stream_up", "stream_down", "stream_failed"]


@needs_server
def test_runner_survives_a_reconnect_at_a_new_resolution(clips, tmp_path):
    config = build_config({
        "output_dir": str(tmp_path), "backend": "none", "tracker": {"min_hits": 2},
        "events": {"units": "relative", "zones": [{"name": "right", "polygon": [[0.5, 0], [1, 0], [1, 1], [0.5, 1]]}]},
        "live": {"read_timeout": 2.0, "reconnect_initial": 0.2, "reconnect_max": 1.0},
    })
    sizes = []
    server = RtspServer({"/cam": clips["qvga"]}).start()
    runner = LiveRunner(config, BlockDetector(),
                        on_result=lambda result, _: sizes.append((result.frame.width, len(result.detections))))
    try:
        with running(runner, [server.url("/cam")]) as box:
            assert runner.ready.wait(30), box
            wait_for(lambda: len(sizes) > 40, 20, "frames")
            server.kill()
            server.mounts = {"/cam": clips["small"]}
            server.start()
            wait_for(lambda: sum(w == 256 for w, _ in sizes) > 60, 30, "frames at the new size")
    finally:
        server.kill()
    assert "error" not in box, box.get("error")
    assert [s.kind for s in box["run"].streams["cam"].statuses] == ["stream_up", "stream_down", "stream_up"]
    assert any(n for w, n in sizes if w == 256)  # the tracker confirms tracks again at the new size
    videos = sorted((tmp_path / "cam" / "annotated").glob("*.mp4"), key=lambda p: p.stat().st_mtime)
    shapes = []
    for path in videos:
        with av.open(str(path)) as container:
            shapes.append(next(container.decode(video=0)).to_ndarray(format="rgb24").shape)
    assert shapes == [(240, 320, 3), (144, 256, 3)]
    widths = {json.loads(line)["width"] for line in (tmp_path / "cam.detections.jsonl").read_text().splitlines()}
    assert widths == {320, 256}


def test_hls_over_http_is_the_same_source_kind(clips, tmp_path):
    """An HLS playlist on a local HTTP server (no GStreamer needed): read through LiveSource like a camera."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    folder = tmp_path / "hls"
    folder.mkdir()
    with av.open(str(clips["qvga"])) as src, av.open(str(folder / "index.m3u8"), "w", format="hls",
                                                       options={"hls_time": "1", "hls_list_size": "0",
                                                                "hls_playlist_type": "vod"}) as out:
        vin = src.streams.video[0]
        vout = out.add_stream_from_template(vin)
        for packet, _ in zip(src.demux(vin), range(150)):
            if packet.dts is not None:
                packet.stream = vout
                out.mux(packet)

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/index.m3u8"
        assert is_live_input(url)
        # a VOD playlist arrives as fast as the server sends it: a buffer that holds it all keeps every frame (with
        # the default one-frame buffer, how many survive depends on the consumer's speed)
        with open_source(url, max_frames=50, buffer=200) as source:
            assert source.info.is_live and source.source_id == "index"
            frames = list(source)
    finally:
        server.shutdown()
        server.server_close()
    assert len(frames) == 50 and frames[0].image.shape == (240, 320, 3)
    assert [f.index for f in frames] == list(range(50))
    assert [f.time for f in frames] == pytest.approx([i / 25 for i in range(50)], abs=1e-6)


@needs_server
def test_info_on_a_camera_redacts_credentials(clips):
    with RtspServer({"/cam": clips["qvga"]}, user="viewer", password=PASSWORD) as server:
        done = subprocess.run([sys.executable, "-m", "streamseg.cli", "info", server.url("/cam")],
                              capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "live stream: rtsp, video h264, 320x240, fps 25" in done.stdout
    assert PASSWORD not in done.stdout + done.stderr and "viewer" not in done.stdout + done.stderr
    with pytest.raises(ConfigError) as caught:
        open_source(server.url("/cam"), no_such_option=1)
    assert PASSWORD not in str(caught.value) and "***@" in str(caught.value)


@needs_server
def test_tracker_state_is_per_stream(clips, tmp_path):
    # min_hits 1: a track is confirmed at its first detection, so each stream's first detection has the first id
    # its tracker gives (how many frames the freshest-frame buffer drops at the start cannot change it)
    config = build_config({"output_dir": str(tmp_path), "backend": "none", "sinks": {"video": False},
                           "tracker": {"min_hits": 1}})
    with RtspServer({"/c1": clips["qvga"], "/c2": clips["small"]}) as server:
        runner = LiveRunner(config, BlockDetector())
        with running(runner, [server.url("/c1"), server.url("/c2")]) as box:
            assert runner.ready.wait(30), box
            wait_for(lambda: all(s.processed > 40 for s in runner.streams.values()), 30, "frames")
    assert "error" not in box, box.get("error")
    for sid in ("c1", "c2"):
        records = [json.loads(line) for line in (tmp_path / f"{sid}.detections.jsonl").read_text().splitlines()]
        ids = [d["track_id"] for r in records for d in r["detections"]]
        # each stream's own tracker numbers its block's track 1; one tracker shared by the two cameras would give
        # the two blocks (different sizes and places) different ids
        assert ids and ids[0] == 1, (sid, ids[:10])
        assert all(r["source"] == sid for r in records)


@needs_server
def test_target_fps_caps_the_rate_per_camera(clips, tmp_path):
    config = build_config({"output_dir": str(tmp_path), "backend": "none", "sinks": {"video": False},
                           "source": {"target_fps": 5.0}})
    indices = []
    with RtspServer({"/cam": clips["qvga"]}) as server:
        runner = LiveRunner(config, NoDetections(ModelOptions()),
                            on_result=lambda result, _: indices.append(result.frame.index))
        with running(runner, [server.url("/cam")]) as box:
            assert runner.ready.wait(30), box
            wait_for(lambda: len(indices) >= 24, 30, "results")
    assert "error" not in box, box.get("error")
    # the camera numbers its frames at 25 fps: five processed per second is one frame in five (the median gap
    # between processed frames, which the connect burst at the start and a busy moment cannot move)
    gaps = [b - a for a, b in zip(indices[3:], indices[4:])]
    assert 4 <= statistics.median(gaps) <= 6, gaps
    with pytest.raises(ConfigError, match="target_fps"):
        LiveRunner(build_config({"backend": "none", "source": {"stride": 2}, "output_dir": str(tmp_path)}),
                   NoDetections(ModelOptions())).run(["rtsp://127.0.0.1:1/x"])


@needs_server
def test_camera_down_at_start_does_not_hold_up_the_others_and_joins_later(clips, tmp_path):
    a = RtspServer({"/cam_a": clips["qvga"]})  # not started yet: the camera is off
    b = RtspServer({"/cam_b": clips["qvga"]}).start()
    config = live_config(tmp_path, connect_attempts=1, connect_timeout=1.0)
    runner = LiveRunner(config, NoDetections(ModelOptions()))
    try:
        with running(runner, [a.url("/cam_a"), b.url("/cam_b")]) as box:
            assert runner.ready.wait(30), box  # cam_a starts only after this: the run must not wait for it
            streams = runner.streams
            wait_for(lambda: streams["cam_b"].processed > 25, 20, "cam_b running while cam_a is off")
            assert streams["cam_a"].processed == 0 and not streams["cam_a"].ready
            a.start()
            wait_for(lambda: streams["cam_a"].processed > 25, 30, "cam_a joining")
    finally:
        a.kill()
        b.kill()
    assert "error" not in box, box.get("error")
    run = box["run"]
    assert [s.kind for s in run.streams["cam_a"].statuses] == ["stream_down", "stream_up"]
    assert run.streams["cam_a"].failed is None
    records = (tmp_path / "cam_a.detections.jsonl").read_text().splitlines()
    assert len(records) == run.streams["cam_a"].processed


@needs_server
def test_slow_model_works_on_the_freshest_frame(clips, tmp_path):
    """While a forward is busy the camera goes on; the next forward gets the newest frame, not the next one in
    line (a queue in front of the model would make the results fall further behind the camera every second)."""

    class Held(NoDetections):
        """The no-detections model, held by the test: each forward reports its frame and waits to be let go."""

        def __init__(self):
            super().__init__(ModelOptions())
            self.taken: queue.Queue[int] = queue.Queue()
            self.go = threading.Semaphore(0)

        def predict(self, frames):
            self.taken.put(frames[0].index)
            assert self.go.acquire(timeout=30), "the test never let the forward end"
            return super().predict(frames)

    model = Held()
    written, cycles = [], []
    with RtspServer({"/cam": clips["qvga"]}) as server:
        runner = LiveRunner(live_config(tmp_path), model,
                            on_result=lambda result, _: written.append(result.frame.index))
        with running(runner, [server.url("/cam")]) as box:
            assert runner.ready.wait(30), box
            source = runner.streams["cam"].source
            try:
                held = model.taken.get(timeout=30)
                for _ in range(3):
                    wait_for(lambda: source.received > held + 10, 20, "ten more camera frames during the forward")
                    newest = source.received - 1  # the index of the newest frame received so far
                    model.go.release()
                    following = model.taken.get(timeout=30)
                    cycles.append((held, newest, following))
                    held = following
                dropped = source.dropped
            finally:
                model.go.release(1000)  # every later forward runs freely
    assert "error" not in box, box.get("error")
    assert len(cycles) == 3
    for held, newest, following in cycles:
        assert following >= newest > held + 9, cycles
    assert dropped >= sum(following - held - 1 for held, _, following in cycles)  # skipped frames are counted
    assert written[:4] == [cycles[0][0], *(following for _, _, following in cycles)]


@needs_server
def test_recording_starts_at_the_first_keyframe_even_with_a_long_gop(clips, tmp_path):
    """FFmpeg's RTSP client gives a session's first keyframe no timestamp; with one keyframe every 10 s, losing it
    would leave recordings and clips without a start for 10 s."""
    recorder = SegmentRecorder(tmp_path / "segments", "cam", segment_seconds=60.0)
    clipper = EventClipper(tmp_path / "clips", "cam", pre=1.0, post=1.0)
    with RtspServer({"/cam": clips["long_gop"]}) as server:
        with LiveSource(server.url("/cam"), taps=[recorder, clipper]) as source:
            live = iter(source)
            frames = read_until(live, lambda fs: fs[-1].time > 3.0, timeout=20)
            clipper.trigger(frames[-1].capture_time, "early")
            frames += read_until(live, lambda fs: fs[-1].time > 4.5, timeout=20)
    assert len(recorder.segments) == 1 and len(clipper.clips) == 1
    with av.open(str(recorder.segments[0])) as container:
        recorded = sum(1 for _ in container.decode(video=0))
    assert recorded >= len(frames) - 2  # from the very first frame
    with av.open(str(clipper.clips[0])) as container:
        clipped = sum(1 for _ in container.decode(video=0))
    assert clipped >= 4.0 * 25 - 5  # from the first keyframe (t=0) to the event (3 s) + 1 s after it
