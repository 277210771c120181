"""Issue 16.5: ``model.detect_interval = N``: the model runs on every N-th processed frame (files and live); the
tracker's predictions fill the frames between (boxes and masks moved), outputs stay at full frame rate and the
detections JSONL marks the filled frames ``"predicted": true``. Real parts: a generated scene video decoded by the
file pipeline, the scene's own ground truth as the detector, the real tracker and event rules; a live run through
the RTSP test server."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from streamseg.config import build_config
from streamseg.errors import ConfigError
from streamseg.events import TimedEvent, match_events
from streamseg.pipeline import Runner
from streamseg.scenes import Scene, SceneConfig, write_scene
from streamseg.sinks import read_detections_jsonl, read_events_jsonl
from streamseg.tracking import Tracker, TrackerConfig
from streamseg.tracking.association import box_iou
from streamseg.types import Detections, InstanceMasks

sys.path.insert(0, str(Path(__file__).resolve().parent))

SCENE = SceneConfig(seed=3, frames=90)
TRACKER = {"enabled": True, "max_distance": 0.9, "max_distance_tentative": 0.95}


class CountingSceneOracle:
    """A backend that 'detects' the scene's ground truth (boxes and masks, no identities) in the frames it is given,
    and records the index of every frame it saw."""

    name = origin = "scene-oracle"

    def __init__(self, scene: Scene):
        self.scene, self.class_names = scene, scene.class_names
        self.seen: list[int] = []
        self.calls = 0

    def predict(self, frames):
        self.calls += 1
        out = []
        for frame in frames:
            self.seen.append(frame.index)
            truth = self.scene.ground_truth_detections(self.scene.render(frame.index))
            out.append(Detections(truth.boxes, truth.scores, truth.labels, truth.class_names, truth.masks))
        return out

    def close(self):
        pass


@pytest.fixture(scope="module")
def scene_video(tmp_path_factory):
    paths = write_scene(SCENE, tmp_path_factory.mktemp("scene"), preset="ultrafast")
    return Scene(SCENE), paths


def pipeline(out: Path, interval: int, **extra) -> dict:
    cfg = SCENE
    return {"output_dir": str(out), "model": {"detect_interval": interval, **extra}, "tracker": TRACKER,
            "events": {"zones": [{"name": "zone", "polygon": [list(p) for p in cfg.zone]}],
                       "lines": [{"name": "line", "points": [list(p) for p in cfg.line]}]},
            "sinks": {"preset": "ultrafast", "summary": False}}


def test_config_key_and_its_one_line_error_without_a_tracker():
    assert build_config({}).model.detect_interval == 1
    assert build_config({"model": {"detect_interval": 3}, "tracker": {}}).model.detect_interval == 3
    with pytest.raises(ConfigError) as err:
        build_config({"model": {"detect_interval": 3}})
    assert "model.detect_interval = 3 needs [tracker]" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="model.detect_interval: expected an integer >= 1, got 0"):
        build_config({"model": {"detect_interval": 0}, "tracker": {}})


@pytest.mark.parametrize("batch_size", [1, 4])
def test_scene_video_every_third_frame_through_the_model(scene_video, tmp_path, batch_size):
    scene, paths = scene_video
    oracle = CountingSceneOracle(scene)
    with Runner(build_config(pipeline(tmp_path, 3, batch_size=batch_size)), backend=oracle) as runner:
        run = runner.process(str(paths["video"]), source_id="street")
    # the skipped frames never reach the model
    assert oracle.seen == list(range(0, SCENE.frames, 3))
    assert run.frames_written == SCENE.frames

    # every frame is in the JSONL, the ones the model did not see marked predicted
    records = list(read_detections_jsonl(run.outputs["detections"]))
    assert [r["frame"] for r in records] == list(range(SCENE.frames))
    assert [r.get("predicted", False) for r in records] == [i % 3 != 0 for i in range(SCENE.frames)]
    assert all("predicted" not in r for r in records if r["frame"] % 3 == 0)

    # predicted boxes follow the moving objects: they overlap the ground truth, better than the boxes of the last
    # model frame held still would
    ious, held, masked, last = [], [], 0, {}
    for record in records:
        if not record.get("predicted"):
            last = {d["track_id"]: d["box"] for d in record["detections"]}
            continue
        assert all(d["track_id"] is not None for d in record["detections"])  # confirmed tracks only
        truth = scene.ground_truth_detections(scene.render(record["frame"])).boxes.astype(np.float64)
        for d in record["detections"]:
            masked += "mask" in d
            if len(truth) and d["track_id"] in last:
                ious.append(box_iou(np.array([d["box"]], np.float64), truth).max())
                held.append(box_iou(np.array([last[d["track_id"]]], np.float64), truth).max())
    assert len(ious) > 50 and masked >= len(ious)
    ious, held = np.array(ious), np.array(held)
    assert np.median(ious) > 0.65 and np.mean(ious > 0.5) > 0.75, (np.median(ious), np.mean(ious > 0.5))
    assert ious.mean() > held.mean() + 0.05, (ious.mean(), held.mean())

    # events are still found, at full frame rate
    events = list(read_events_jsonl(run.outputs["events"]))
    truth = [json.loads(line) for line in paths["events"].read_text().splitlines()]
    truth = [TimedEvent(e["event"], e["target"], e.get("direction"), e["time"]) for e in truth
             if e["time"] < SCENE.frames / SCENE.fps]
    matched = match_events([TimedEvent(e["kind"], e["region"], e["direction"], e["time"]) for e in events], truth)
    assert truth and matched["all"].recall >= 0.7 and matched["all"].precision >= 0.7, matched["all"]


def test_interval_one_calls_the_model_on_every_frame(scene_video, tmp_path):
    scene, paths = scene_video
    oracle = CountingSceneOracle(scene)
    raw = pipeline(tmp_path, 1)
    raw["source"] = {"max_frames": 10}
    with Runner(build_config(raw), backend=oracle) as runner:
        run = runner.process(str(paths["video"]), source_id="street")
    assert oracle.seen == list(range(10))
    assert not any("predicted" in r for r in read_detections_jsonl(run.outputs["detections"]))


def test_tracker_predict_moves_confirmed_tracks_and_their_masks_without_ageing_any():
    tracker = Tracker(TrackerConfig(min_hits=2), keep_history=True)
    size = (100, 200)

    def detections(x: float) -> Detections:
        mask = np.zeros(size, bool)
        mask[20:40, int(x):int(x) + 10] = True
        return Detections([[x, 20, x + 10, 40], [150, 60, 160, 70]], [0.9, 0.9], [1, 1], ("bg", "thing"),
                          InstanceMasks.from_dense(np.stack([mask, np.zeros(size, bool)])))

    for index in range(4):  # an object moving 5 px a frame; a second one seen once (tentative)
        dets = detections(10 + 5 * index)
        if index < 3:
            dets = dets[[0]]
        tracker.update(dets, index)
    before = {t.track_id: (t.state, t.misses) for t in tracker.tracks}
    moved = tracker.predict(4, image_size=size)
    assert list(moved.track_ids) == [1] and moved.masks is not None  # the tentative track is not shown
    assert abs(moved.boxes[0, 0] - 30) < 2.5 and abs(moved.boxes[0, 2] - 40) < 2.5
    x0 = int(moved.masks.origins[0][0])
    assert abs(x0 - 30) <= 2 and moved.masks.crops[0].shape == (20, 10)
    assert {t.track_id: (t.state, t.misses) for t in tracker.tracks} == before  # nothing aged or died
    # the next model frame still pairs both tracks (the tentative one kept its place)
    tracked = tracker.update(detections(35), 5)
    assert sorted(tracked.track_ids.tolist()) == [1, 2]
    assert 4 in dict(tracker.history())


def test_live_camera_every_second_frame(tmp_path):
    from live_server import gstreamer_missing, make_clip
    from test_live import BlockDetector, RtspServer, running, wait_for

    if gstreamer_missing() is not None:
        pytest.skip(gstreamer_missing())

    class Counting(BlockDetector):
        frames = 0

        def predict(self, frames):
            Counting.frames += len(frames)
            return super().predict(frames)

    clip = make_clip(tmp_path / "clip.mp4", 20)
    config = build_config({"output_dir": str(tmp_path / "out"), "backend": "none", "sinks": {"video": False},
                           "model": {"detect_interval": 2}, "tracker": {"min_hits": 1}})
    from streamseg.live import LiveRunner

    with RtspServer({"/cam": clip}) as server:
        runner = LiveRunner(config, Counting())
        with running(runner, [server.url("/cam")]) as box:
            assert runner.ready.wait(30), box
            wait_for(lambda: runner.streams["cam"].processed > 30, 30, "frames")
    assert "error" not in box, box.get("error")
    records = [json.loads(line) for line in (tmp_path / "out" / "cam.detections.jsonl").read_text().splitlines()]
    flags = [r.get("predicted", False) for r in records]
    assert len(records) > 30 and flags == [i % 2 == 1 for i in range(len(records))]
    assert Counting.frames == flags.count(False)
    assert any(d["track_id"] is not None for r in records if r.get("predicted") for d in r["detections"])
