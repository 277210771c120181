"""The user's view: `streamseg run` / `streamseg info` on real clips, bad inputs, interruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from streamseg.sinks import read_detections_jsonl

from evalkit_clips import CLIP_PATHS as CLIPS

STREAMSEG = [sys.executable, "-m", "streamseg.cli"]
FAST_ENCODE = ["--preset", "ultrafast"]
SMALL_MODEL = ["--arch", "v1", "--weights", "random:0", "--min-size", "256", "--max-size", "448", "--rpn-top-n", "50",
               "--max-detections", "10", "--score-threshold", "0.3"]


def streamseg(*args, check=True, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run([*STREAMSEG, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return proc


def video_frames(path: Path) -> tuple[list[float], tuple[int, int]]:
    """Presentation times (s) of every decodable video frame, and the coded size."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times = [float(f.pts * f.time_base) for f in container.decode(stream)]
        return times, (stream.codec_context.width, stream.codec_context.height)


def one_line_error(proc: subprocess.CompletedProcess, pattern: str) -> str:
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("streamseg: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert pattern in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("clip", CLIPS)
def test_every_evalkit_clip_is_processed_fully(clip, videos, tmp_path):
    source = videos / clip
    stem = source.stem
    streamseg("run", source, "-o", tmp_path, "--backend", "none", "--no-progress", *FAST_ENCODE)
    source_times, _ = video_frames(source)
    out_times, _ = video_frames(tmp_path / f"{stem}.mp4")
    assert abs(len(out_times) - len(source_times)) <= 1
    records = list(read_detections_jsonl(tmp_path / f"{stem}.detections.jsonl"))
    assert len(records) == len(out_times)
    assert [r["frame"] for r in records] == list(range(len(records)))
    # Duration kept: the output spans the source's presentation times (within one frame). AVI stores no
    # presentation times (its pts come in decode order), hence spans over sorted times.
    frame_step = np.median(np.diff(sorted(source_times)))
    assert abs(np.ptp(out_times) - np.ptp(source_times)) <= frame_step + 1e-3


def test_rotated_vfr_clip_comes_out_upright_with_its_own_timestamps(videos, tmp_path):
    source = videos / "edge_cases" / "fire2.mp4"
    streamseg("run", source, "-o", tmp_path, "--backend", "none", "--no-progress", "--crf", "12")
    with av.open(str(source)) as container:
        raw = [f for f in container.decode(video=0)]
        raw_first = raw[0].to_ndarray(format="rgb24")
        source_times = [float((f.pts - raw[0].pts) * f.time_base) for f in raw]
    out_times, size = video_frames(tmp_path / "fire2.mp4")
    assert size == (1280, 720)
    assert np.allclose(np.array(out_times) - out_times[0], source_times, atol=1e-3)
    assert np.ptp(np.diff(source_times)) > 0.01  # the clip really is variable frame rate
    with av.open(str(tmp_path / "fire2.mp4")) as container:
        written = next(container.decode(video=0)).to_ndarray(format="rgb24").astype(np.int16)
    upright = np.rot90(raw_first, 2).astype(np.int16)
    assert np.abs(written - upright).mean() < 4 < np.abs(written - raw_first).mean()
    record = next(read_detections_jsonl(tmp_path / "fire2.detections.jsonl"))
    assert (record["width"], record["height"]) == (1280, 720)


def test_real_model_run_writes_masks(videos, tmp_path):
    source = videos / "driving" / "solidWhiteRight.mp4"
    proc = streamseg("run", source, "-o", tmp_path, *SMALL_MODEL, "--max-frames", "3", *FAST_ENCODE)
    records = list(read_detections_jsonl(tmp_path / "solidWhiteRight.detections.jsonl"))
    assert len(records) == 3
    detections = [d for r in records for d in r["detections"]]
    assert detections and all(d["mask"]["size"] == [540, 960] for d in detections)
    assert all(d["score"] >= 0.3 for d in detections)
    assert len(video_frames(tmp_path / "solidWhiteRight.mp4")[0]) == 3
    for column in ("decode", "detect", "write"):  # per-stage summary table
        assert column in proc.stderr


def test_image_folder_gives_coco_results(evalkit, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    picked = sorted((evalkit / "coco" / "val2017").glob("*.jpg"))[:2]
    for path in picked:
        (images / path.name).symlink_to(path)
    streamseg("run", images, "-o", tmp_path / "out", *SMALL_MODEL, "--no-video")
    results = json.loads((tmp_path / "out" / "images.coco.json").read_text())
    assert results, "the random model always finds something at threshold 0.3"
    assert {r["image_id"] for r in results} <= {int(p.stem) for p in picked}
    assert all(len(r["bbox"]) == 4 and "counts" in r["segmentation"] for r in results)


def test_pipeline_file_and_flag_override(videos, tmp_path):
    pipeline = tmp_path / "p.toml"
    pipeline.write_text('backend = "none"\n[source]\nstride = 5\n[sinks]\nvideo = false\n')
    streamseg("run", "--pipeline", pipeline, videos / "edge_cases" / "fire2.mp4", "-o", tmp_path, "--stride", "2")
    records = list(read_detections_jsonl(tmp_path / "fire2.detections.jsonl"))
    assert [r["frame"] for r in records] == list(range(0, 25, 2))  # the flag won over the file
    assert not (tmp_path / "fire2.mp4").exists()


def test_shipped_pipeline_files_are_valid():
    from streamseg.config import load_pipeline

    for path in (Path(__file__).parents[1] / "pipelines").glob("*.toml"):
        load_pipeline(path)


def faststart_copy(source: Path, dst: Path) -> Path:
    """Remux with the index first, as streaming-friendly files are: truncating it leaves a readable prefix."""
    with av.open(str(source)) as src, av.open(str(dst), "w", options={"movflags": "faststart"}) as out:
        vin = src.streams.video[0]
        vout = out.add_stream_from_template(vin)
        for packet in src.demux(vin):
            if packet.dts is not None:
                packet.stream = vout
                out.mux(packet)
    return dst


def test_truncated_file_errors_and_keeps_a_playable_prefix(videos, tmp_path):
    good = faststart_copy(videos / "traffic" / "car-detection.mp4", tmp_path / "full.mp4")
    broken = tmp_path / "broken.mp4"
    data = good.read_bytes()
    broken.write_bytes(data[: int(len(data) * 0.6)])
    proc = streamseg("run", broken, "-o", tmp_path / "out", "--backend", "none", "--no-progress", check=False)
    one_line_error(proc, "truncated")
    written, _ = video_frames(tmp_path / "out" / "broken.mp4")
    records = list(read_detections_jsonl(tmp_path / "out" / "broken.detections.jsonl"))
    assert 50 < len(written) < 377 and len(records) == len(written)


@pytest.mark.parametrize("args, message", [
    (["run", "{tmp}/missing.mp4", "-o", "{tmp}/o", "--backend", "none"], "missing.mp4"),
    (["run", "{tmp}/empty_dir", "-o", "{tmp}/o", "--backend", "none"], "empty_dir"),
    (["run", "{tmp}/notavideo.mp4", "-o", "{tmp}/o", "--backend", "none"], "notavideo.mp4"),
    (["run", "--pipeline", "{tmp}/typo.toml", "{clip}", "-o", "{tmp}/o"], "model.scor_threshold"),
    (["run", "{clip}", "-o", "{tmp}/o", "--weights", "{tmp}/none.pth"], "weights file not found"),
    (["run", "{clip}", "-o", "{tmp}/o", "--backend", "none", "--stride", "0"], "source.stride"),
    (["info", "{tmp}/missing.mp4"], "missing.mp4"),
])
def test_bad_input_gives_one_line_error(args, message, videos, tmp_path):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "notavideo.mp4").write_text("hello, I am text")
    (tmp_path / "typo.toml").write_text("[model]\nscor_threshold = 0.3\n")
    clip = videos / "edge_cases" / "fire2.mp4"
    proc = streamseg(*[a.format(tmp=tmp_path, clip=clip) for a in args], check=False)
    one_line_error(proc, message)


def test_missing_weights_offline_names_the_file(videos, tmp_path):
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch")}
    env.pop("STREAMSEG_WEIGHTS", None)
    proc = subprocess.run([*STREAMSEG, "run", str(videos / "edge_cases" / "fire2.mp4"), "-o", str(tmp_path),
                           "--arch", "v1"],
                          capture_output=True, text=True, env=env, timeout=120)
    if proc.returncode == 0:
        pytest.skip("download.pytorch.org is reachable from this machine, so weights were downloaded")
    line = one_line_error(proc, "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth")
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in line


def test_info_describes_streams(videos):
    out = streamseg("info", videos / "edge_cases" / "fire2.mp4").stdout
    assert "h264" in out and "1280" in out and "180" in out


def test_ctrl_c_leaves_playable_video_and_complete_jsonl(videos, tmp_path):
    jsonl = tmp_path / "car_traffic_small.detections.jsonl"
    proc = subprocess.Popen(
        [*STREAMSEG, "run", str(videos / "traffic" / "car_traffic_small.mp4"), "-o", str(tmp_path), *SMALL_MODEL,
         "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and (not jsonl.exists() or jsonl.read_text().count("\n") < 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    records = list(read_detections_jsonl(jsonl))
    written, _ = video_frames(tmp_path / "car_traffic_small.mp4")
    assert 2 <= len(records) < 917 and len(written) == len(records)
    assert jsonl.read_text().endswith("\n")
