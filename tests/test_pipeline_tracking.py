"""The pipeline with a tracker and event rules: decode -> detect -> track -> events -> write on a generated scene video,
its outputs, the [tracker] / [events] sections of pipeline files and their errors."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamseg.config import build_config, load_pipeline
from streamseg.errors import ConfigError
from streamseg.events import TimedEvent, match_events
from streamseg.pipeline import Runner
from streamseg.scenes import Scene, SceneConfig, write_scene
from streamseg.sinks import read_detections_jsonl, read_events_jsonl
from streamseg.tracking import evaluate_mot, read_mot
from streamseg.types import Detections

REPO = Path(__file__).resolve().parents[1]
SCENE = SceneConfig(seed=3, frames=80)


class SceneOracle:
    """A backend that 'detects' the scene's ground-truth boxes (no identities) in the frames of its video."""

    name = origin = "scene-oracle"

    def __init__(self, scene: Scene):
        self.scene = scene
        self.class_names = scene.class_names

    def predict(self, frames):
        out = []
        for frame in frames:
            truth = self.scene.ground_truth_detections(self.scene.render(frame.index))
            out.append(Detections(truth.boxes, truth.scores, truth.labels, truth.class_names, truth.masks))
        return out

    def close(self):
        pass


class _FrameAt:
    def __init__(self, index: int):
        self.index = index


def assert_jsonl_agrees_with_tracks(records: list[dict], tracks) -> None:
    """Every tracked JSONL detection is a row of the tracks file (same frame, id and box); the file's other rows
    are the interpolated boxes of gaps, in frames where that track has no detection."""
    jsonl = {(r["frame"] + 1, d["track_id"]): d["box"] for r in records for d in r["detections"]
             if d["track_id"] is not None}
    rows = {(int(f), int(i)): b for f, i, b in zip(tracks.frames, tracks.ids, tracks.boxes)}
    assert jsonl and set(jsonl) <= set(rows)
    for key, (x1, y1, x2, y2) in jsonl.items():
        x, y, w, h = rows[key]
        assert np.allclose([x - 1, y - 1, x - 1 + w, y - 1 + h], [x1, y1, x2, y2], atol=0.011), key
    for frame, track_id in set(rows) - set(jsonl):  # a gap fill: the frame has no detection of that track
        assert not any(d["track_id"] == track_id for r in records if r["frame"] + 1 == frame for d in r["detections"])


@pytest.fixture(scope="module")
def scene_video(tmp_path_factory) -> tuple[Scene, dict[str, Path]]:
    paths = write_scene(SCENE, tmp_path_factory.mktemp("scene"), preset="ultrafast")
    return Scene(SCENE), paths


def tracking_config(out: Path, **sinks) -> dict:
    cfg = SCENE
    return {
        "output_dir": str(out),
        "tracker": {"enabled": True, "max_distance": 0.9, "max_distance_tentative": 0.95},
        "events": {
            "zones": [{"name": "zone", "polygon": [list(p) for p in cfg.zone], "classes": ["person", "car"],
                       "dwell_seconds": 1.0}],
            "lines": [{"name": "line", "points": [list(p) for p in cfg.line]}],
        },
        "sinks": {"preset": "ultrafast", **sinks},
    }


def test_scene_video_through_the_whole_graph(scene_video, tmp_path, caplog):
    scene, paths = scene_video
    with caplog.at_level(logging.INFO, logger="streamseg.events"):
        with Runner(build_config(tracking_config(tmp_path)), backend=SceneOracle(scene)) as runner:
            run = runner.process(str(paths["video"]), source_id="street")
    assert [s.name for s in run.report.stages] == ["decode", "detect", "track", "events", "write"]
    assert run.frames_written == SCENE.frames
    assert set(run.outputs) == {"video", "detections", "tracks", "events", "zone_counts", "summary"}
    assert all(path.name.startswith("street.") and path.is_file() for path in run.outputs.values())

    # detections JSONL: every detection the model gave stays, tracked or not
    records = list(read_detections_jsonl(run.outputs["detections"]))
    assert len(records) == SCENE.frames
    given = [len(SceneOracle(scene).predict([_FrameAt(i)])[0]) for i in range(SCENE.frames)]
    assert [len(r["detections"]) for r in records] == given
    ids = [d["track_id"] for r in records for d in r["detections"]]
    assert all(i is None or (isinstance(i, int) and i >= 1) for i in ids)
    assert sum(i is not None for i in ids) > 0.9 * len(ids)

    # tracks.txt: MOTChallenge, back-filled, scores like the oracle against the scene's gt.txt
    tracks = read_mot(run.outputs["tracks"])
    scores = evaluate_mot(read_mot(paths["mot"], min_confidence=1), tracks)
    assert scores.mota >= 0.9 and scores.idf1 >= 0.85
    assert_jsonl_agrees_with_tracks(records, tracks)

    # events: the scene's ground truth, found again through video decoding and the tracker
    events = list(read_events_jsonl(run.outputs["events"]))
    assert events and all(e["source"] == "street" for e in events)
    truth = [json.loads(line) for line in paths["events"].read_text().splitlines()]
    matched = match_events([TimedEvent(e["kind"], e["region"], e["direction"], e["time"]) for e in events
                            if e["kind"] != "dwell"],
                           [TimedEvent(e["event"], e["target"], e.get("direction"), e["time"]) for e in truth])
    assert matched["all"].precision >= 0.8 and matched["all"].recall >= 0.8
    logged = [r.getMessage() for r in caplog.records if r.name == "streamseg.events"]
    assert len(logged) == len(events) and all("\n" not in line and line.startswith("street ") for line in logged)

    # zone counts: one row per frame, the columns of the zone's classes, totals add up, agree with the events
    with open(run.outputs["zone_counts"], newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["frame", "time", "zone:person", "zone:car", "zone:total"]
    assert [int(r["frame"]) for r in rows] == list(range(SCENE.frames))
    assert all(int(r["zone:total"]) == int(r["zone:person"]) + int(r["zone:car"]) for r in rows)
    assert max(int(r["zone:total"]) for r in rows) >= 1

    summary = cv2.imread(str(run.outputs["summary"]))
    assert summary is not None and summary.shape[1] == 1000 and summary.shape[0] > 700  # four panels


def test_tracker_alone_and_no_detections(scene_video, tmp_path):
    """[tracker] without [events]: tracks, summary, ids in the JSONL; the 'none' backend gives valid empty outputs."""
    _, paths = scene_video
    config = build_config({"output_dir": str(tmp_path), "backend": "none", "tracker": {"enabled": True},
                           "sinks": {"video": False}})
    with Runner(config) as runner:
        run = runner.process(str(paths["video"]), source_id="empty")
    assert [s.name for s in run.report.stages] == ["decode", "detect", "track", "write"]
    assert set(run.outputs) == {"detections", "tracks", "summary"}
    assert run.outputs["tracks"].read_text() == "" and len(read_mot(run.outputs["tracks"])) == 0
    assert cv2.imread(str(run.outputs["summary"])) is not None

    events = build_config({**tracking_config(tmp_path, video=False), "backend": "none"})
    with Runner(events) as runner:
        run = runner.process(str(paths["video"]), source_id="empty-events")
    assert run.outputs["events"].read_text() == ""
    with open(run.outputs["zone_counts"], newline="") as file:
        rows = list(csv.reader(file))
    # the 'none' backend has no classes but zone:person, zone:car were configured
    assert rows[0] == ["frame", "time", "zone:person", "zone:car", "zone:total"] and len(rows) == SCENE.frames + 1
    assert {tuple(r[2:]) for r in rows[1:]} == {("0", "0", "0")}


def test_sinks_can_be_switched_off(scene_video, tmp_path):
    scene, paths = scene_video
    config = build_config(tracking_config(tmp_path, video=False, detections=False, tracks=False, events=False,
                                          zone_counts=False, summary=False))
    with Runner(config, backend=SceneOracle(scene)) as runner:
        run = runner.process(str(paths["video"]), source_id="quiet")
    assert run.outputs == {} and [s.name for s in run.report.stages][2:4] == ["track", "events"]


def test_zone_without_classes_counts_the_model_vocabulary(scene_video, tmp_path):
    scene, paths = scene_video
    raw = tracking_config(tmp_path, video=False)
    raw["events"]["zones"][0].pop("classes")
    raw["source"] = {"max_frames": 5}
    with Runner(build_config(raw), backend=SceneOracle(scene)) as runner:
        run = runner.process(str(paths["video"]), source_id="all")
    header = run.outputs["zone_counts"].read_text().splitlines()[0]
    assert header == "frame,time,zone:person,zone:car,zone:bicycle,zone:total"


# --- pipeline files ---------------------------------------------------------------------------------------------------

def test_every_shipped_pipeline_loads_and_configures_what_it_says():
    files = {p.stem: load_pipeline(p) for p in sorted((REPO / "pipelines").glob("*.toml"))}
    assert {"batch_annotate", "surveillance", "traffic", "driving"} <= set(files)
    surveillance = files["surveillance"]
    assert surveillance.sources == ("rtsp://127.0.0.1:8554/cam",) and surveillance.tracker.enabled
    assert surveillance.model.classes == ("person",) and surveillance.graph.policy == "drop_oldest"
    assert any(z.dwell_seconds for z in surveillance.events.zones) and surveillance.events.units == "relative"
    traffic = files["traffic"]
    assert traffic.events.lines and not traffic.events.zones and "car" in traffic.events.lines[0].classes
    driving = files["driving"]
    assert driving.events.collision is not None and driving.events.collision.ttc_seconds > 0
    assert all(0 <= x <= 960 and 0 <= y <= 540 for x, y in driving.events.collision.ego_lane)
    assert not files["batch_annotate"].tracker.enabled
    service = files["service"]
    assert [c.id for c in service.cameras] == ["door", "yard"] and service.serve.host == "127.0.0.1"
    assert [line.name for line in service.cameras[0].lines] == ["door"] and service.cameras[1].lines is None


BAD = [
    ("[tracker]\nenabled = true\nmax_lsot = 3\n", "tracker.max_lsot"),
    ("[tracker]\nenabled = true\nmin_hits = 0\n", "tracker.min_hits"),
    ("[tracker]\nenabled = true\n[[events.zones]]\nname = 'a'\npolygon = [[0, 0], [1, 1]]\n", "events.zones[0]"),
    ("[tracker]\nenabled = true\n[[events.zones]]\nname = 'a'\npolygon = [[0, 0], [1, 1], [1, 0]]\ndwel = 3\n",
     "events.zones[0].dwel"),
    ("[tracker]\nenabled = true\n[[events.lines]]\nname = 'a'\n", "missing key 'points'"),
    ("[tracker]\nenabled = true\n[events]\nzone = []\n", "events.zone"),
    ("[tracker]\nenabled = true\n[events.collision]\nego_lane = [[0, 0], [1, 0], [1, 1]]\nttc_seconds = 'soon'\n",
     "events.collision.ttc_seconds"),
    ("[[events.lines]]\nname = 'a'\npoints = [[0, 0], [1, 1]]\n", "needs tracks"),
    ("[tracker]\nenabled = true\n[events]\nocclusion_ratio = 1.5\n", "events.occlusion_ratio"),
]


@pytest.mark.parametrize("text, message", BAD)
def test_bad_tracker_or_event_config_is_a_config_error(tmp_path, text, message):
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        load_pipeline(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_bad_event_config_on_the_command_line_is_one_line(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(BAD[3][0])
    result = subprocess.run([sys.executable, "-m", "streamseg.cli", "run", "--pipeline", str(path), "x.mp4"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "events.zones[0].dwel" in lines[0] and lines[0].startswith("streamseg: error:")


def test_a_tracker_table_turns_tracking_on_unless_disabled():
    assert build_config({"tracker": {"max_lost": 5}}).tracker.enabled
    assert not build_config({"tracker": {"enabled": False, "max_lost": 5}}).tracker.enabled
    assert not build_config({}).tracker.enabled


def test_track_flag_enables_the_tracker():
    from streamseg.cli import build_parser, config_from_args

    args = build_parser().parse_args(["run", "--track", "x.mp4"])
    assert config_from_args(args).tracker.enabled
    assert not config_from_args(build_parser().parse_args(["run", "x.mp4"])).tracker.enabled


def test_eval_scene_events_command(capsys):
    from streamseg.cli import main

    assert main(["eval", "--scene-events", "1", "--oracle", "--frames-per-scene", "100", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "MOTA" in out and "IDF1" in out
    assert [line.split()[0] for line in out.splitlines()[3:]] == ["enter", "exit", "cross", "all"]
    assert main(["eval", "--scenes", "1", "--oracle"]) == 1


def test_overlays_are_drawn_even_without_detections():
    from streamseg.sinks import Annotator, Overlay

    image = np.zeros((100, 200, 3), np.uint8)
    annotator = Annotator(overlays=[Overlay("zone", [(20, 20), (80, 20), (80, 80), (20, 80)]),
                                    Overlay("line", [(150, 90), (150, 10)], "arrow")])
    out = annotator.annotate(image, Detections.empty(("__background__",)))
    assert out is image and out[50, 19:21].min() > 128 and out[50, 149:151].min() > 128  # white edges, anti-aliased
    assert out[50, 50].max() == 0 and out[50, 100].max() == 0
    with pytest.raises(ValueError, match="overlay"):
        Annotator(overlays=[Overlay("x", [(0, 0)])])


def test_tracker_history_without_masks():
    from streamseg.tracking import Tracker, TrackerConfig
    from streamseg.types import InstanceMasks

    masks = InstanceMasks([np.ones((10, 10), bool)], np.array([[5, 5]]), (40, 40))
    dets = Detections([[5, 5, 15, 15]], [0.9], [1], ("__background__", "person"), masks)
    for keep_masks in (True, False):
        tracker = Tracker(TrackerConfig(min_hits=1), keep_history=True, history_masks=keep_masks)
        live = tracker.update(dets)
        assert live.masks is not None  # the live output keeps its masks either way
        (_, past), = tracker.history()
        assert (past.masks is not None) == keep_masks


def test_summary_memory_is_bounded(tmp_path, monkeypatch):
    import streamseg.sinks.summary as summary
    from streamseg.sinks import SummarySink
    from streamseg.types import Frame, FrameResult, SourceInfo

    monkeypatch.setattr(summary, "MAX_POINTS", 50)
    image, names = np.zeros((4, 4, 3), np.uint8), ("__background__", "person")
    with SummarySink(tmp_path / "s.png", SourceInfo("x", "x", 4, 4), zones=["z"]) as sink:
        for i in range(1000):
            n = 4 if i == 555 else i % 3
            dets = Detections(np.zeros((n, 4)), np.ones(n), np.ones(n), names, track_ids=np.arange(n))
            sink.write(FrameResult(Frame(image, "x", i, i / 10), dets, (), {"z": {"person": n}}))
        assert len(sink._times) < 100 and np.allclose(np.diff(sink._times), 1.6)  # evenly spaced
        assert max(c["person"] for c in sink._objects) == 4  # a one-frame peak survives the merging
    assert cv2.imread(str(tmp_path / "s.png")) is not None


@pytest.mark.slow
def test_tracking_keeps_every_detection_of_a_real_clip(videos, tmp_path):
    """Issue 13.2: with --track the JSONL holds the same detections as without (fire2: a car from frame 0, whose
    track is confirmed at frame 2), ids back-filled from a track's first frame, agreeing with the tracks file."""
    from streamseg.cli import main

    clip = str(videos / "edge_cases" / "fire2.mp4")
    assert main(["run", clip, "-o", str(tmp_path / "plain"), "--no-progress", "--no-video"]) == 0
    assert main(["run", clip, "-o", str(tmp_path / "tracked"), "--no-progress", "--no-video", "--track"]) == 0
    plain = list(read_detections_jsonl(tmp_path / "plain" / "fire2.detections.jsonl"))
    tracked = list(read_detections_jsonl(tmp_path / "tracked" / "fire2.detections.jsonl"))
    assert len(plain) == len(tracked) == 25

    def model_output(records):
        return [[(d["box"], d["score"], d["label"]) for d in r["detections"]] for r in records]

    assert model_output(tracked) == model_output(plain)
    assert sum(map(len, model_output(plain))) > 25  # the model does find things in this clip
    assert any(d["track_id"] is not None for d in tracked[0]["detections"])  # back-filled from frame 0
    assert_jsonl_agrees_with_tracks(tracked, read_mot(tmp_path / "tracked" / "fire2.tracks.txt"))


def test_smoothed_boxes_stay_inside_the_frame():
    """Issue 13.11: an object driving out of the right edge: Kalman-smoothed boxes overshoot the border unless
    clipped; they are clipped to the image (given, or the masks' size)."""
    from streamseg.tracking import Tracker, TrackerConfig
    from streamseg.types import InstanceMasks

    width, height = 960, 540
    tracker = Tracker(TrackerConfig(smooth_boxes=True, min_hits=1))
    boxes = []
    for i in range(40):  # 25 px/frame to the right and up, cut by the frame like a detector's box
        x1, y1 = 700 + 25 * i, 100 - 8 * i
        box = [min(x1, width - 5), max(y1, 0), min(x1 + 200, width), max(y1 + 150, 5)]
        crops = [np.ones((1, 1), bool)]
        dets = Detections([box], [0.9], [1], ("bg", "car"), InstanceMasks(crops, np.array([[0, 0]]), (height, width)))
        out = tracker.update(dets, i)
        boxes += out.boxes.tolist()
    boxes = np.array(boxes)
    assert len(boxes) >= 30
    assert boxes[:, [0, 2]].max() <= width and boxes[:, [1, 3]].min() >= 0
    explicit = Tracker(TrackerConfig(smooth_boxes=True, min_hits=1))
    for i in range(40):
        x1 = 700 + 25 * i
        dets = Detections([[min(x1, width - 5), 100, min(x1 + 200, width), 250]], [0.9], [1], ("bg", "car"))
        assert explicit.update(dets, i, image_size=(height, width)).boxes[:, 2].max() <= width


@pytest.mark.slow
def test_camera_pipeline_on_a_file_drops_nothing(videos, tmp_path):
    """Issue 13.1: pipelines/surveillance.toml says graph.policy = drop_oldest (for cameras); a file run with it
    still processes every frame: the video and JSONL hold all of them, the report counts no drops."""
    import av

    from streamseg.cli import main

    clip = str(videos / "surveillance" / "vtest_pets09_480x360.mp4")
    assert main(["run", "--pipeline", str(REPO / "pipelines" / "surveillance.toml"), clip, "--arch", "demo",
                 "--max-frames", "30", "-o", str(tmp_path), "--no-progress"]) == 0
    records = list(read_detections_jsonl(tmp_path / "vtest_pets09_480x360.detections.jsonl"))
    assert [r["frame"] for r in records] == list(range(30))
    with av.open(str(tmp_path / "vtest_pets09_480x360.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 30


def test_event_rules_naming_unknown_classes_warn_once(tmp_path, caplog):
    """Issue 13.10: a traffic rule set (truck, bus) with the demo model (person, car, bicycle) warns once, naming
    the rule and the classes it can never see; rules the model fully knows give no warning."""
    events = {"lines": [{"name": "bridge", "points": [[0, 100], [400, 100]], "classes": ["car", "truck", "bus"]}],
              "zones": [{"name": "walk", "polygon": [[0, 0], [10, 0], [10, 10]], "classes": ["person"]}]}
    config = build_config({"output_dir": str(tmp_path), "model": {"arch": "demo"}, "tracker": {"enabled": True},
                           "events": events})
    with caplog.at_level(logging.WARNING, logger="streamseg"):
        Runner(config).close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "bridge: truck, bus" in warnings[0] and "walk" not in warnings[0]
    caplog.clear()
    events["lines"][0]["classes"] = ["car"]
    with caplog.at_level(logging.WARNING, logger="streamseg"):
        Runner(build_config({"output_dir": str(tmp_path), "model": {"arch": "demo"}, "tracker": {"enabled": True},
                             "events": events})).close()
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_live_streams_show_an_id_from_the_tracks_confirmation_on(scene_video):
    """A live stream has no lookahead: a detection is written at once, with a null id (UNTRACKED) until its track is
    confirmed (min_hits 3: the first two frames), then with the id; a file run back-fills those two."""
    from streamseg.stream import StreamProcessor
    from streamseg.types import UNTRACKED, Frame, FrameResult, SourceInfo

    config = build_config({"tracker": {"enabled": True, "min_hits": 3}})
    info = SourceInfo("cam", "rtsp://cam", 640, 360, is_live=True)
    box = Detections([[100, 100, 140, 180]], [0.9], [1], ("bg", "person"))
    for live, expected in ((True, [UNTRACKED, UNTRACKED, 1, 1]), (False, [1, 1, 1, 1])):
        stream = StreamProcessor(config, info, ("bg", "person"), None, live=live)
        out = []
        for i in range(4):
            frame = Frame(np.zeros((360, 640, 3), np.uint8), "cam", i, i / 10)
            out += stream.analyze(FrameResult(frame, box))
        out += stream.finish()
        assert [int(r.detections.track_ids[0]) for r in out] == expected, live
