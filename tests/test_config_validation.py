"""Issue 14.6: every option of every section is checked when the config is built, with one line naming the key,
what is allowed and the value, before any model loads.

``ROWS`` holds one bad value (with the exact text of what is allowed) and one good boundary value per key;
``test_every_field_has_a_row`` fails for a field added without a row, so a new option cannot skip validation.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, NamedTuple

import pytest

from streamseg.cli import main
from streamseg.config import (BACKEND_NAMES, ClusterOptions, GraphOptions, LiveOptions, MqttOptions, PipelineConfig,
                              ServeOptions, SinkOptions, SourceOptions, TrackerOptions, build_config)
from streamseg.errors import ConfigError
from streamseg.events.config import CollisionConfig, EventsConfig, LineConfig, ZoneConfig
from streamseg.models.backend import ModelOptions
from streamseg.sinks.video import X264_PRESETS
from streamseg.tracking.tracker import TrackerConfig

ZONE = {"name": "door", "polygon": [[0, 0], [10, 0], [10, 10]]}
LINE = {"name": "gate", "points": [[0, 0], [0, 10]]}
COLLISION = {"ego_lane": [[0, 10], [5, 0], [10, 10]]}
RULES = {"zones": ZONE, "lines": LINE, "collision": COLLISION}

# where each dataclass's fields are written in a pipeline file
SECTIONS = {SourceOptions: "source.", ModelOptions: "model.", GraphOptions: "graph.", SinkOptions: "sinks.",
            LiveOptions: "live.", ClusterOptions: "cluster.", MqttOptions: "mqtt.", ServeOptions: "serve.",
            TrackerOptions: "tracker.", TrackerConfig: "tracker.", EventsConfig: "events.",
            ZoneConfig: "events.zones.", LineConfig: "events.lines.", CollisionConfig: "events.collision.",
            PipelineConfig: ""}
NOT_KEYS = {"tracker.config",  # TrackerOptions.config: the TrackerConfig whose fields are keys of [tracker]
            "cameras"}  # built from [[sources]] tables (tests/test_serve.py)


class Row(NamedTuple):
    key: str
    bad: Any
    allowed: str
    good: Any
    context: dict = {}
    """Other keys of the same table, for both values (checks that depend on another key)."""


PRESETS = ", ".join(X264_PRESETS)
NUMBER_01 = "a number in [0, 1]"
BOOL = "true or false"
TEXT = "a non-empty string"
POSITIVE = "a number > 0"

ROWS = [
    Row("sources", 5, "a list of non-empty strings", ["clip.mp4"]),
    Row("output_dir", "", TEXT, "o"),
    Row("backend", "tensorflow", "one of auto, torch, onnx, tensorrt, none", "none"),
    Row("source.stride", 0, "an integer >= 1", 1),
    Row("source.target_fps", 0.0, POSITIVE, 0.01),
    Row("source.max_frames", 0, "an integer >= 1", 1),
    Row("model.arch", "", TEXT, "v1"),
    Row("model.weights", "", TEXT, "random:0"),
    Row("model.min_size", 0, "an integer >= 1", 1),
    Row("model.max_size", 0, "an integer >= 1", 1),
    Row("model.max_size", 799, "an integer >= model.min_size (800)", 800, {"min_size": 800}),
    Row("model.score_threshold", 1.5, NUMBER_01, 1.0),
    Row("model.score_threshold", -0.1, NUMBER_01, 0.0),
    Row("model.mask_threshold", 1.0, "a number in (0, 1)", 0.99),
    Row("model.classes", 7, "a list of non-empty strings", ["person"]),
    Row("model.max_detections", 0, "an integer >= 1", 1),
    Row("model.rpn_post_nms_top_n", 0, "an integer >= 1", 1),
    Row("model.batch_size", 0, "an integer >= 1", 1),
    Row("model.detect_interval", 1.5, "an integer >= 1", 1),
    Row("model.device", "cuda:x", "cpu, cuda or cuda:N (N: a GPU index)", "cuda:1"),
    Row("model.device", "gpu", "cpu, cuda or cuda:N (N: a GPU index)", "cpu"),
    Row("model.fp16", "true", BOOL, False),
    Row("model.cache_dir", "", TEXT, "cache"),
    Row("model.fp16", True, "false unless model.device is cuda[:N] (half precision is ~100x slower on this CPU)",
        False),
    Row("graph.queue_size", 0, "an integer >= 1", 1),
    Row("graph.policy", "fifo", "one of block, drop_oldest", "drop_oldest"),
    Row("sinks.video", 1, BOOL, False),
    Row("sinks.detections", "false", BOOL, False),
    Row("sinks.coco", 0, BOOL, False),
    Row("sinks.coco_annotations", "", TEXT, "instances.json"),
    Row("sinks.codec", "libnope", "an encoder this FFmpeg has (such as libx264)", "libx265"),
    Row("sinks.preset", "ludicrous", f"one of {PRESETS}", "placebo"),
    Row("sinks.crf", 99, "an integer 0..51", 51),
    Row("sinks.crf", -1, "an integer 0..51", 0),
    Row("sinks.crf", 23.5, "an integer >= 0", 63, {"codec": "libvpx-vp9"}),  # vp9's own scale: 0..63
    Row("sinks.tracks", 1, BOOL, False),
    Row("sinks.events", 1, BOOL, False),
    Row("sinks.zone_counts", 1, BOOL, False),
    Row("sinks.summary", 1, BOOL, False),
    Row("sinks.event_store", "yes", BOOL, False),
    Row("sinks.event_store_path", "", TEXT, "events.db"),
    Row("sinks.event_retention_days", 0.0, POSITIVE, 0.5),
    Row("live.transport", "http", "one of tcp, udp", "udp"),
    Row("live.connect_timeout", 0.0, POSITIVE, 0.001),
    Row("live.read_timeout", -1.0, POSITIVE, 0.001),
    Row("live.connect_attempts", 0, "an integer >= 1", 1),
    Row("live.reconnect_initial", 0.0, POSITIVE, 30.0),
    Row("live.reconnect_max", 0.0, POSITIVE, 0.5),
    Row("live.reconnect_max", 4.0, "a number >= live.reconnect_initial (5.0)", 5.0, {"reconnect_initial": 5.0}),
    Row("live.max_attempts", 0, "an integer >= 1", 1),
    Row("live.buffer", 0, "an integer >= 1", 1),
    Row("live.cross_stream_batching", "no", BOOL, False),
    Row("live.metrics_port", 65536, "an integer 0..65535", 65535),
    Row("live.metrics_port", -1, "an integer 0..65535", 0),
    Row("live.metrics_host", "my host", "an IP address or a host name", "0.0.0.0"),
    Row("live.segment_minutes", 0.0, POSITIVE, 0.1),
    Row("live.keep_segments", 0, "an integer >= 1", 1),
    Row("live.clips", 1, BOOL, True),
    Row("live.clip_pre", -1.0, "a number >= 0", 0.0),
    Row("live.clip_post", float("inf"), "a finite number >= 0", 0.0),
    Row("cluster.address", "", TEXT, "local:2"),
    Row("cluster.chunk_seconds", 0.0, POSITIVE, 0.001),
    Row("cluster.chunk_images", 0, "an integer >= 1", 1),
    Row("cluster.actors", 0, "an integer >= 1", 1),
    Row("cluster.num_cpus", -1.0, "a number >= 0", 0.0),
    Row("cluster.num_gpus", -0.5, "a number >= 0", 0.25),
    Row("cluster.shared_output", "maybe", "one of auto, yes, no", "no"),
    Row("cluster.max_cameras_per_node", 0, "an integer >= 1", 1),
    Row("cluster.max_retries", -1, "an integer >= 0", 0),
    Row("mqtt.enabled", "yes", BOOL, False),
    Row("mqtt.host", "my host", "an IP address or a host name", "broker.local"),
    Row("mqtt.port", 0, "an integer 1..65535", 65535),
    Row("mqtt.prefix", "", TEXT, "site/a"),
    Row("mqtt.prefix", "cams/#", "a topic without +, # or a leading or trailing /", "cams"),
    Row("mqtt.client_id", "", TEXT, "streamseg-1"),
    Row("mqtt.username", "", TEXT, "user"),
    Row("mqtt.password", "", TEXT, "secret", {"username": "user"}),
    Row("mqtt.keepalive", 0, "an integer 1..65535", 1),
    Row("mqtt.qos", 2, "an integer 0..1", 1),
    Row("mqtt.queue_size", 0, "an integer >= 1", 1),
    Row("serve.host", "my host", "an IP address or a host name", "0.0.0.0"),
    Row("serve.port", 65536, "an integer 0..65535", 0),
    Row("serve.token_file", "", TEXT, "token.txt"),
    Row("serve.live_fps", 0.0, POSITIVE, 0.5),
    Row("serve.jpeg_quality", 0, "an integer 1..100", 100),
    Row("tracker.enabled", "yes", BOOL, False),
    Row("tracker.high_threshold", "high", "a number", 0.1),
    Row("tracker.low_threshold", 0.9, "a number <= high_threshold (0.5)", 0.5),
    Row("tracker.new_track_threshold", float("nan"), "a finite number", 0.0),
    Row("tracker.max_distance", 1.5, NUMBER_01, 1.0),
    Row("tracker.max_distance_low", -0.5, NUMBER_01, 0.0),
    Row("tracker.max_distance_tentative", 2.0, NUMBER_01, 1.0),
    Row("tracker.min_hits", 0, "an integer >= 1", 1),
    Row("tracker.max_lost", -1, "an integer >= 0", 0),
    Row("tracker.max_lost_seconds", -0.5, "a number >= 0", 0.0),
    Row("tracker.smooth_boxes", 1, BOOL, True),
    Row("tracker.class_agnostic", "true", BOOL, True),
    Row("tracker.distance", "cosine", "one of iou, mask_iou", "mask_iou"),
    Row("tracker.assignment", "greedy", "one of scipy, lap", "scipy"),
    Row("tracker.position_noise", 0.0, POSITIVE, 1e-6),
    Row("tracker.velocity_noise", -1.0, POSITIVE, 1e-6),
    Row("events.units", "meters", "one of pixels, relative", "relative"),
    Row("events.occlusion_hold", -1.0, "a number >= 0", 0.0),
    Row("events.occlusion_ratio", 1.0, "a number in (0, 1)", 0.99),
    Row("events.zones", 5, "an array of tables ([[events.zones]])", [ZONE]),
    Row("events.lines", {"name": "a"}, "an array of tables ([[events.lines]])", [LINE]),
    Row("events.collision", 5, "a table ([events.collision])", COLLISION),
    Row("events.zones.name", "", TEXT, "z"),
    Row("events.zones.polygon", [[0, 0], [1, 1]], "at least 3 [x, y] points", [[0, 0], [1, 1], [1, 0]]),
    Row("events.zones.classes", 3, "a list of non-empty strings", ["person"]),
    Row("events.zones.dwell_seconds", 0.0, POSITIVE, 0.001),
    Row("events.zones.anchor", "top", "one of bottom_center, center", "center"),
    Row("events.zones.min_frames", 0, "an integer >= 1", 1),
    Row("events.lines.name", 5, TEXT, "l"),
    Row("events.lines.points", [[0, 0], [0, 0]], "two distinct points", [[0, 0], [0, 1]]),
    Row("events.lines.points", [[0, 0], [0, 1], [1, 1]], "exactly 2 [x, y] points", [[0, 0], [0, 1]]),
    Row("events.lines.classes", [""], "a list of non-empty strings", ["car"]),
    Row("events.lines.anchor", "left", "one of bottom_center, center", "bottom_center"),
    Row("events.lines.min_frames", 1.5, "an integer >= 1", 1),
    Row("events.collision.ego_lane", [[0, 0]], "at least 3 [x, y] points", [[0, 0], [1, 0], [1, 1]]),
    Row("events.collision.ttc_seconds", 0.0, POSITIVE, 0.001),
    Row("events.collision.classes", 5, "a list of non-empty strings", "car,person"),
    Row("events.collision.window_seconds", -1.0, POSITIVE, 0.001),
    Row("events.collision.min_samples", 1, "an integer >= 2", 2),
    Row("events.collision.min_height", -1.0, "a number >= 0", 0.0),
    Row("events.collision.rearm_factor", 0.5, "a number >= 1", 1.0),
    Row("events.collision.name", "", TEXT, "lane"),
    Row("events.collision.anchor", "middle", "one of bottom_center, center", "center"),
]


def raw_config(key: str, value: Any, context: dict) -> tuple[dict, str]:
    """The parsed TOML that sets ``key`` (and ``context``) to ``value``, and the key as an error names it."""
    parts = key.split(".")
    if len(parts) == 1:
        return {key: value, **context}, key
    if len(parts) == 3:  # a field of one zone, line or the collision rule
        _, kind, name = parts
        rule = {**RULES[kind], **context, name: value}
        written = f"events.{kind}.{name}" if kind == "collision" else f"events.{kind}[0].{name}"
        return {"tracker": {}, "events": {kind: rule if kind == "collision" else [rule]}}, written
    section, name = parts
    raw = {section: {**context, name: value}}
    if section == "events":
        raw["tracker"] = {}  # rules need tracks
    return raw, key


def build(key: str, value: Any, context: dict | None = None) -> tuple[PipelineConfig, str]:
    raw, written = raw_config(key, value, context or {})
    return build_config(raw, origin="p.toml"), written


def test_every_field_has_a_row():
    """A field added to any section without a row here (and so without a tested check) fails."""
    keys = {row.key for row in ROWS}
    sections = {f.name for f in dataclasses.fields(PipelineConfig) if f.default_factory is not dataclasses.MISSING
                and dataclasses.is_dataclass(f.default_factory)}
    assert sections == {"source", "model", "graph", "sinks", "tracker", "events", "live", "cluster", "mqtt",
                        "serve"}
    missing = [prefix + f.name for cls, prefix in SECTIONS.items() for f in dataclasses.fields(cls)
               if not (cls is PipelineConfig and f.name in sections)]
    assert sorted(set(missing) - keys - NOT_KEYS) == []


@pytest.mark.parametrize("row", ROWS, ids=lambda row: f"{row.key}={row.bad!r}")
def test_a_bad_value_is_one_line_naming_key_range_and_value(row):
    with pytest.raises(ConfigError) as caught:
        build(row.key, row.bad, row.context)
    _, written = raw_config(row.key, row.bad, row.context)
    assert str(caught.value) == f"p.toml: {written}: expected {row.allowed}, got {row.bad!r}"


@pytest.mark.parametrize("row", ROWS, ids=lambda row: f"{row.key}={row.good!r}")
def test_the_boundary_value_is_accepted(row):
    build(row.key, row.good, row.context)


WRONG_TYPE = {bool: "true", int: True, float: True, str: 7, tuple: 7}
"""A value of the wrong TOML type per field type: a string for a boolean, a boolean for a number."""


def _field_types():
    for cls, prefix in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = prefix + f.name
            if key in NOT_KEYS or (cls is PipelineConfig and f.name not in ("sources", "output_dir", "backend")):
                continue
            hint = hints[f.name]
            if typing.get_origin(hint) in (typing.Union, type(int | None)):
                hint = typing.get_args(hint)[0]
            yield key, WRONG_TYPE.get(typing.get_origin(hint) or hint, 7)


@pytest.mark.parametrize("key, value", list(_field_types()))
def test_a_value_of_the_wrong_type_names_the_key(key, value):
    """Booleans are TOML true/false, never 1 or "true"; numbers are never booleans."""
    with pytest.raises(ConfigError) as caught:
        build(key, value)
    _, written = raw_config(key, value, {})
    assert f"p.toml: {written}: expected " in str(caught.value) and str(caught.value).endswith(f"got {value!r}")


def test_a_float_key_accepts_an_int():
    config = build_config({"source": {"target_fps": 5}, "model": {"score_threshold": 1},
                           "live": {"connect_timeout": 2, "segment_minutes": 10},
                           "tracker": {"max_lost_seconds": 2}, "events": {"occlusion_hold": 0}})
    values = (config.source.target_fps, config.model.score_threshold, config.live.connect_timeout,
              config.live.segment_minutes, config.tracker.config.max_lost_seconds, config.events.occlusion_hold)
    assert values == (5.0, 1.0, 2.0, 10.0, 2.0, 0.0) and all(type(v) is float for v in values)


def test_backend_names_are_the_backends():
    """config.py names them so that checking ``backend`` does not import the models (torch)."""
    from streamseg.models import BACKENDS

    assert BACKEND_NAMES == tuple(BACKENDS)


def test_python_callers_get_the_same_checks():
    with pytest.raises(ConfigError, match=r"^model.device: expected cpu, cuda or cuda:N \(N: a GPU index\), got 'cuda:x'$"):
        ModelOptions(device="cuda:x")
    with pytest.raises(ConfigError, match=r"^sinks.crf: expected an integer 0..51, got 99$"):
        SinkOptions(crf=99)
    with pytest.raises(ConfigError, match=r"^TrackerConfig.min_hits: expected an integer >= 1, got 0$"):
        TrackerConfig(min_hits=0)


# --- through the command line: one line, before any model loads ----------------------------------------------------

MISSING_WEIGHTS = "/nonexistent/weights.pth"
FLAGS = [
    (["--crf", "99"], "sinks.crf: expected an integer 0..51, got 99"),
    (["--preset", "fastest"], f"sinks.preset: expected one of {PRESETS}, got 'fastest'"),
    (["--device", "cuda:x"], "model.device: expected cpu, cuda or cuda:N (N: a GPU index), got 'cuda:x'"),
    (["--stride", "0"], "source.stride: expected an integer >= 1, got 0"),
    (["--score-threshold", "1.5"], "model.score_threshold: expected a number in [0, 1], got 1.5"),
    (["--min-size", "500", "--max-size", "400"], "model.max_size: expected an integer >= model.min_size (500), got 400"),
    (["--metrics-port", "70000"], "live.metrics_port: expected an integer 0..65535, got 70000"),
    (["--backend", "tensorflow"], "backend: expected one of auto, torch, onnx, tensorrt, none, got 'tensorflow'"),
]
PIPELINES = [
    ("[live]\nread_timeout = 0\n", "live.read_timeout: expected a number > 0, got 0.0"),
    ("[sinks]\nvideo = 1\n", "sinks.video: expected true or false, got 1"),
    ("[tracker]\nmax_distance = 2\n", "tracker.max_distance: expected a number in [0, 1], got 2.0"),
    ("[tracker]\n[[events.zones]]\nname = 'a'\npolygon = [[0, 0], [1, 0], [1, 1]]\ndwell_seconds = 0\n",
     "events.zones[0].dwell_seconds: expected a number > 0, got 0.0"),
]


def run_cli(capsys, args) -> list[str]:
    """``streamseg run`` in this process: its exit code is 1 and stderr is the lines returned (no traceback)."""
    assert main(["run", *map(str, args), "--weights", MISSING_WEIGHTS, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()


@pytest.fixture(scope="module")
def clip(videos):
    return videos / "edge_cases" / "fire2.mp4"


def test_without_a_bad_option_the_run_gets_to_the_weights(capsys, clip, tmp_path):
    """The control for the tests below: with these arguments the next thing to fail is loading the model."""
    lines = run_cli(capsys, [clip, "-o", tmp_path])
    assert len(lines) == 1 and lines[0].startswith("streamseg: error:") and MISSING_WEIGHTS in lines[0]


@pytest.mark.parametrize("flags, message", FLAGS, ids=lambda x: x[0] if isinstance(x, list) else None)
def test_a_bad_flag_is_reported_before_the_model_loads(capsys, clip, tmp_path, flags, message):
    assert run_cli(capsys, [clip, "-o", tmp_path, *flags]) == [f"streamseg: error: command line: {message}"]


@pytest.mark.parametrize("text, message", PIPELINES)
def test_a_bad_pipeline_key_is_reported_before_the_model_loads(capsys, clip, tmp_path, text, message):
    path = tmp_path / "p.toml"
    path.write_text(text)
    lines = run_cli(capsys, [clip, "-o", tmp_path / "out", "--pipeline", path])
    assert lines == [f"streamseg: error: {path}: {message}"]
