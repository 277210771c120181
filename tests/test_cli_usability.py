"""What a new user meets around a run (issue 13, items 8 and 13): `info` on many files and on edited containers,
the progress bar's end, a Ctrl-C while still starting, stale outputs of an earlier run, a run that would write
nothing, and paths in pipeline files."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from streamseg.cli import main
from streamseg.config import load_pipeline

REPO = Path(__file__).resolve().parents[1]


def _trimmed_by_edit_list(source: Path, target: Path, frames: int) -> None:
    """Remux ``source`` with its first ``frames`` frames before time 0: the MP4 muxer writes an edit list that
    trims them, so the header counts every sample while decoding yields ``frames`` fewer (as cut-by-copy clips
    from editors and phones do)."""
    with av.open(str(source)) as inp, av.open(str(target), "w") as out:
        stream = inp.streams.video[0]
        copy = out.add_stream_from_template(stream)
        step = round(1 / (stream.average_rate * stream.time_base))
        for packet in inp.demux(stream):
            if packet.dts is None:
                continue
            packet.pts -= frames * step
            packet.dts -= frames * step
            packet.stream = copy
            out.mux(packet)


@pytest.fixture(scope="module")
def edited_clip(tmp_path_factory, videos) -> Path:
    path = tmp_path_factory.mktemp("edited") / "edited.mp4"
    _trimmed_by_edit_list(videos / "driving" / "solidWhiteRight.mp4", path, 8)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 221
        assert sum(1 for _ in container.decode(video=0)) == 213
    return path


def test_info_counts_the_frames_decoding_yields(edited_clip, capsys):
    assert main(["info", str(edited_clip)]) == 0
    out = capsys.readouterr().out
    assert "frames 213 (the header says 221" in out


def test_info_goes_on_after_a_bad_file(edited_clip, tmp_path, videos, capsys):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 100)
    good = videos / "edge_cases" / "asl_again.mkv"
    assert main(["info", str(broken), str(tmp_path / "missing.mp4"), str(good)]) == 1
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("streamseg: error: ") for line in errors)
    assert "broken.mp4" in errors[0] and "missing.mp4" in errors[1]
    assert "asl_again.mkv" in captured.out and "frames 77" in captured.out


def test_progress_bar_of_a_finished_run_ends_at_100_percent(edited_clip, tmp_path, capsys):
    """The container says 221 frames, decoding gives 213: the bar's last state is 213/213, not 213/221."""
    assert main(["run", str(edited_clip), "-o", str(tmp_path), "--backend", "none", "--no-video"]) == 0
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()
    states = [line for line in bar if line.startswith("edited:")]
    assert states and "213/213" in states[-1] and "100%" in states[-1]


def test_ctrl_c_during_start_up_is_one_line(videos, tmp_path):
    """SIGINT while torch is still importing (the first second): exit 130 and one line, no traceback."""
    clip = videos / "edge_cases" / "fire2.mp4"
    process = subprocess.Popen([sys.executable, "-m", "streamseg.cli", "run", str(clip), "-o", str(tmp_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "streamseg: interrupted"


def test_a_second_run_replaces_and_removes_an_earlier_runs_outputs(videos, tmp_path, caplog):
    clip = str(videos / "edge_cases" / "fire2.mp4")
    common = [clip, "-o", str(tmp_path), "--backend", "none", "--no-progress", "--max-frames", "5"]
    assert main(["run", *common, "--track"]) == 0
    assert {p.name for p in tmp_path.iterdir()} == {"fire2.mp4", "fire2.detections.jsonl", "fire2.tracks.txt",
                                                      "fire2.summary.png"}
    (tmp_path / "other.tracks.txt").write_text("not ours to touch\n")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="streamseg"):
        assert main(["run", *common, "--no-video"]) == 0
    assert {p.name for p in tmp_path.iterdir()} == {"fire2.detections.jsonl", "other.tracks.txt"}
    lines = [r.getMessage() for r in caplog.records if "earlier run" in r.getMessage()]
    assert len(lines) == 1
    assert "replaced fire2.detections.jsonl" in lines[0]
    assert all(name in lines[0] for name in ("fire2.mp4", "fire2.tracks.txt", "fire2.summary.png"))


def test_a_run_that_writes_nothing_is_an_error(videos, tmp_path, capsys):
    clip = str(videos / "edge_cases" / "fire2.mp4")
    assert main(["run", clip, "-o", str(tmp_path), "--backend", "none", "--no-video", "--no-detections"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("streamseg: error: fire2: nothing to write")
    assert list(tmp_path.iterdir()) == []


def test_pipeline_paths_are_relative_to_the_file(tmp_path, monkeypatch):
    folder = tmp_path / "project" / "pipelines"
    folder.mkdir(parents=True)
    (folder / "p.toml").write_text('sources = ["clips/a.mp4"]\noutput_dir = "results"\n')
    monkeypatch.chdir(tmp_path)
    config = load_pipeline(folder / "p.toml")
    assert Path(config.output_dir) == folder / "results"
    assert [Path(s) for s in config.sources] == [folder / "clips" / "a.mp4"]
    # flags stay relative to the working folder
    config = load_pipeline(folder / "p.toml", {"output_dir": "here", "sources": ["b.mp4"]})
    assert config.output_dir == "here" and list(config.sources) == ["b.mp4"]
    # the shipped pipelines write under the repository's out/, wherever they are run from
    for name in ("traffic", "driving", "surveillance"):
        config = load_pipeline(REPO / "pipelines" / f"{name}.toml")
        assert Path(config.output_dir).resolve() == REPO / "out" / name
