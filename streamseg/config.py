"""Pipeline definitions: TOML files (``pipelines/*.toml``) and command-line overrides, validated strictly.

A file has top-level ``sources`` and ``output_dir`` plus one table per stage kind::

    sources = ["clip.mp4"]              # or [[sources]] tables: url, id, zones, lines (CameraSpec)
    output_dir = "out"
    [source]   stride, target_fps, max_frames
    [model]    backend and every field of ModelOptions
    [graph]    queue_size, policy
    [sinks]    video, detections, coco, coco_annotations, codec, preset, crf, tracks, events, zone_counts, summary,
               event_store, event_store_path, event_retention_days
    [tracker]  enabled (true when the table is present) and every field of streamseg.tracking.TrackerConfig
    [events]   units, [[events.zones]], [[events.lines]], [events.collision]  (streamseg.events.config)
    [live]     live streams (rtsp://, http(s)://, v4l2://): transport, timeouts, reconnect, metrics, recording
    [cluster]  address (a Ray cluster; absent: run here), chunk_seconds, actors, num_cpus, num_gpus, ...
    [mqtt]     events to an MQTT broker (on when the table is present): host, port, prefix, client_id, username,
               password, keepalive, qos, queue_size  (streamseg.sinks.mqtt)
    [serve]    ``streamseg serve``: host, port, token_file, live_fps, jpeg_quality  (streamseg.service)

Unknown keys, wrong types and values out of range are one-line errors that name the file, the key, what is
allowed and the value (``p.toml: sinks.crf: expected an integer 0..51, got 99``), raised while the config is
built, before any model loads: a typo must never silently fall back to a default. Each dataclass checks its own
fields (:mod:`streamseg.checks`), so Python callers get the same errors as files and flags.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from streamseg.checks import bad, booleans, choice, host, integer, names, number, text
from streamseg.errors import ConfigError
from streamseg.events.config import CollisionConfig, EventsConfig, LineConfig, ZoneConfig
from streamseg.models.backend import ModelOptions
from streamseg.tracking.tracker import TrackerConfig

GRAPH_POLICIES = ("block", "drop_oldest")
TRANSPORTS = ("tcp", "udp")
BACKEND_NAMES = ("auto", "torch", "onnx", "tensorrt", "none")
"""``backend``: the keys of ``streamseg.models.BACKENDS``, named here so that checking them does not import torch."""


@dataclass(frozen=True)
class SourceOptions:
    stride: int = 1
    """Keep every k-th frame."""
    target_fps: float | None = None
    """Keep frames so that about this many per second remain (decided from frame times, so VFR works)."""
    max_frames: int | None = None

    def __post_init__(self):
        integer("source.stride", self.stride, 1)
        number("source.target_fps", self.target_fps, above=0, optional=True)
        integer("source.max_frames", self.max_frames, 1, optional=True)

    def source_kwargs(self) -> dict:
        """Keyword arguments of a file or image-folder source (``open_source``) for these options."""
        kwargs = {"stride": self.stride, "max_frames": self.max_frames}
        return kwargs | ({"target_fps": self.target_fps} if self.target_fps is not None else {})


@dataclass(frozen=True)
class GraphOptions:
    queue_size: int = 4
    """Capacity of each queue between stages: bounds memory and latency."""
    policy: str = "block"
    """Live sources only: ``drop_oldest``, the freshest frame wins and drops are counted (what live runs do). Files
    are never dropped from, whatever this says: decoding waits for the model (``block``)."""

    def __post_init__(self):
        integer("graph.queue_size", self.queue_size, 1)
        choice("graph.policy", self.policy, GRAPH_POLICIES)


@dataclass(frozen=True)
class SinkOptions:
    video: bool = True
    """Annotated video (h264 mp4)."""
    detections: bool = True
    """Detections as JSON Lines, one record per frame."""
    coco: bool = True
    """COCO results JSON (and its companion categories file), for image sources only."""
    coco_annotations: str | None = None
    """COCO annotation file whose image ids (matched by file name) and category ids (by class name) the COCO
    results use; without one, ids come from numeric file names (else sorted positions) and COCO's standard ids."""
    codec: str = "libx264"
    preset: str = "veryfast"
    crf: int = 23
    tracks: bool = True
    """With the tracker: MOTChallenge tracks file, written at the end from the tracker's back-filled history
    (which it keeps in memory, boxes only: turn it off for endless live streams)."""
    events: bool = True
    """With events: events JSON Lines (``streamseg.events/1``), one line per event, flushed as it happens."""
    zone_counts: bool = True
    """With zones: occupancy per zone and class, one CSV row per processed frame."""
    summary: bool = True
    """With the tracker: PNG summary at the end (counts per class over time, dwell histogram)."""
    event_store: bool = True
    """With events: every event also in an SQLite event store shared by the run's streams
    (:mod:`streamseg.sinks.event_store`; ``streamseg events query``)."""
    event_store_path: str | None = None
    """The event store's file (default ``<output_dir>/events.db``)."""
    event_retention_days: float | None = 30.0
    """Events older than this many days are deleted from the store (None: kept for ever)."""

    def __post_init__(self):
        booleans(self, "sinks")
        text("sinks.coco_annotations", self.coco_annotations, optional=True)
        text("sinks.event_store_path", self.event_store_path, optional=True)
        number("sinks.event_retention_days", self.event_retention_days, above=0, optional=True)
        # the encoder's own checks (PyAV, imported here rather than with this module); opened only when it is used
        from streamseg.sinks.video import check_encoder, check_encoder_options

        (check_encoder if self.video else check_encoder_options)(self.codec, self.preset, self.crf)


@dataclass(frozen=True)
class LiveOptions:
    """``[live]``: how live streams (rtsp://, http(s)://, v4l2://, /dev/video*) are read, served and recorded."""

    transport: str = "tcp"
    """RTSP transport: ``tcp`` (interleaved, survives NAT and loss) or ``udp``."""
    connect_timeout: float = 5.0
    read_timeout: float = 5.0
    """Seconds without data after which a connected camera counts as down."""
    connect_attempts: int = 3
    """Tries of the first connection before the run fails with an error."""
    reconnect_initial: float = 0.5
    reconnect_max: float = 30.0
    """Backoff between reconnect attempts: doubles from ``reconnect_initial`` up to ``reconnect_max`` seconds,
    with +-20 % jitter."""
    max_attempts: int | None = None
    """Failed reconnects in a row after which a stream is given up (None: never; the other streams go on)."""
    buffer: int = 1
    """Frames held per stream for the model: 1 = always the freshest frame (older ones are dropped, counted)."""
    cross_stream_batching: bool = True
    """One model forward over the freshest frame of every stream that has one (off: one frame per forward)."""
    metrics_port: int | None = None
    """Serve Prometheus ``/metrics`` and ``/healthz`` on this port (0: any free port; None: off)."""
    metrics_host: str = "127.0.0.1"
    segment_minutes: float | None = None
    """Rolling recording of each camera (stream copy, no re-encoding) in MP4 segments of this many minutes."""
    keep_segments: int | None = None
    """Finished segments kept per camera; older ones are deleted so a run of weeks has bounded disk use (None: all)."""
    clips: bool = False
    """An MP4 clip per event, from ``clip_pre`` seconds before it to ``clip_post`` after (stream copy)."""
    clip_pre: float = 5.0
    clip_post: float = 5.0

    def __post_init__(self):
        choice("live.transport", self.transport, TRANSPORTS)
        for name in ("connect_timeout", "read_timeout", "reconnect_initial", "reconnect_max"):
            number(f"live.{name}", getattr(self, name), above=0)
        if self.reconnect_max < self.reconnect_initial:
            raise bad("live.reconnect_max", f"a number >= live.reconnect_initial ({self.reconnect_initial})",
                      self.reconnect_max)
        for name in ("connect_attempts", "buffer"):
            integer(f"live.{name}", getattr(self, name), 1)
        integer("live.max_attempts", self.max_attempts, 1, optional=True)
        integer("live.metrics_port", self.metrics_port, 0, 65535, optional=True)
        host("live.metrics_host", self.metrics_host)
        number("live.segment_minutes", self.segment_minutes, above=0, optional=True)
        integer("live.keep_segments", self.keep_segments, 1, optional=True)
        for name in ("clip_pre", "clip_post"):
            number(f"live.{name}", getattr(self, name), 0)
        booleans(self, "live")


CLUSTER_SHARED = ("auto", "yes", "no")


@dataclass(frozen=True)
class ClusterOptions:
    """``[cluster]`` (``streamseg run --cluster ADDRESS``): run on a Ray cluster (:mod:`streamseg.cluster`)."""

    address: str | None = None
    """A Ray address (``host:port``, ``ray://host:port``), ``auto`` (the cluster this machine belongs to), or
    ``local[:N]`` (a private cluster on this machine, N workers; default: its CPU count). None: no cluster."""
    chunk_seconds: float = 60.0
    """Files are cut into work items of about this length, at keyframes (short files are one item)."""
    chunk_images: int = 500
    """Image folders are cut into work items of this many images."""
    actors: int | None = None
    """Model actors (each holds one model). None: as many as the cluster's resources fit (at most 64)."""
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    """Resources each model or camera actor asks Ray for; fractional GPUs share a GPU between actors."""
    shared_output: str = "auto"
    """Whether every node writes to ``output_dir`` itself (``yes``: a shared filesystem), or sends its results
    through Ray's object store for this machine to write (``no``); ``auto`` finds out with a probe file."""
    max_cameras_per_node: int | None = None
    """Live cameras: at most this many camera actors on one node (None: no cap beyond resources)."""
    max_retries: int = 3
    """Times a work item is retried after its worker died or its node was lost, before the run fails."""

    def __post_init__(self):
        text("cluster.address", self.address, optional=True)
        number("cluster.chunk_seconds", self.chunk_seconds, above=0)
        integer("cluster.chunk_images", self.chunk_images, 1)
        integer("cluster.actors", self.actors, 1, optional=True)
        number("cluster.num_cpus", self.num_cpus, 0)
        number("cluster.num_gpus", self.num_gpus, 0)
        choice("cluster.shared_output", self.shared_output, CLUSTER_SHARED)
        integer("cluster.max_cameras_per_node", self.max_cameras_per_node, 1, optional=True)
        integer("cluster.max_retries", self.max_retries, 0)


@dataclass(frozen=True)
class MqttOptions:
    """``[mqtt]``: every event also as a JSON message on an MQTT broker (:mod:`streamseg.sinks.mqtt`). Without an
    ``[mqtt]`` table nothing is published; with one, ``enabled`` defaults to true. No TLS yet (plain TCP)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "streamseg"
    """Topics: ``<prefix>/<camera>/events``, ``<prefix>/<camera>/state``, ``<prefix>/availability``."""
    client_id: str | None = None
    """MQTT client id (None: ``streamseg-<pid>-<n>``)."""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    """Never logged (left out of the repr)."""
    keepalive: int = 60
    """Seconds between pings while idle."""
    qos: int = 0
    """0: at most once; 1: at least once (a message counts as delivered when the broker acknowledged it)."""
    queue_size: int = 1000
    """Messages held while the broker is unreachable; beyond it the oldest are dropped (counted)."""

    def __post_init__(self):
        booleans(self, "mqtt")
        host("mqtt.host", self.host)
        integer("mqtt.port", self.port, 1, 65535)
        text("mqtt.prefix", self.prefix)
        if any(c in self.prefix for c in "+#") or self.prefix.startswith("/") or self.prefix.endswith("/"):
            raise bad("mqtt.prefix", "a topic without +, # or a leading or trailing /", self.prefix)
        text("mqtt.client_id", self.client_id, optional=True)
        text("mqtt.username", self.username, optional=True)
        text("mqtt.password", self.password, optional=True)
        if self.password is not None and self.username is None:
            raise ConfigError("mqtt.password: needs mqtt.username")  # the value itself is never shown
        integer("mqtt.keepalive", self.keepalive, 1, 65535)
        integer("mqtt.qos", self.qos, 0, 1)
        integer("mqtt.queue_size", self.queue_size, 1)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
TOKEN_ENV = "STREAMSEG_SERVE_TOKEN"


@dataclass(frozen=True)
class ServeOptions:
    """``[serve]``: the HTTP side of ``streamseg serve`` (:mod:`streamseg.service`)."""

    host: str = "127.0.0.1"
    """Where the page and the API listen. Anything but loopback needs a token (``token_file`` or
    ``$STREAMSEG_SERVE_TOKEN``): every request then carries ``Authorization: Bearer <token>``."""
    port: int = 8080
    """0: any free port (the URL is logged)."""
    token_file: str | None = None
    """A file holding the bearer token (read at start; the token is never logged)."""
    live_fps: float = 5.0
    """Cap of each camera's ``live.mjpg`` (frames are encoded only while someone watches)."""
    jpeg_quality: int = 80

    def __post_init__(self):
        host("serve.host", self.host)
        integer("serve.port", self.port, 0, 65535)
        text("serve.token_file", self.token_file, optional=True)
        number("serve.live_fps", self.live_fps, above=0)
        integer("serve.jpeg_quality", self.jpeg_quality, 1, 100)

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS

    @property
    def token(self) -> str | None:
        """The bearer token: ``token_file``'s content, else ``$STREAMSEG_SERVE_TOKEN``, else None."""
        if self.token_file is not None:
            try:
                value = Path(self.token_file).read_text().strip()
            except OSError as err:
                raise ConfigError(f"serve.token_file: cannot read {self.token_file} ({err.strerror or err})") \
                    from None
            if not value:
                raise ConfigError(f"serve.token_file: {self.token_file} is empty")
            return value
        return os.environ.get(TOKEN_ENV) or None


CAMERA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class CameraSpec:
    """One source as a ``[[sources]]`` table (or an API request): its URL, the id that names its outputs, topics
    and page tile (default: from the URL), and zones / lines that replace ``[events]``'s for this camera only."""

    url: str = field(repr=False)  # may hold credentials
    id: str | None = None
    zones: tuple[ZoneConfig, ...] | None = None
    lines: tuple[LineConfig, ...] | None = None

    def __post_init__(self):
        text("sources.url", self.url)
        if self.id is not None and not (isinstance(self.id, str) and CAMERA_ID.fullmatch(self.id)):
            raise bad("sources.id", "1-64 letters, digits, '.', '_' or '-', not starting with '.', '_' or '-'",
                      self.id)

    def events(self, base: EventsConfig) -> EventsConfig:
        """``base`` with this camera's own zones and lines in place of the shared ones."""
        changes = {key: value for key, value in (("zones", self.zones), ("lines", self.lines)) if value is not None}
        return dataclasses.replace(base, **changes) if changes else base


@dataclass(frozen=True)
class TrackerOptions:
    """``[tracker]``: ``enabled`` plus the tracker's own settings (every field of :class:`TrackerConfig`). Without
    a ``[tracker]`` table tracking is off; with one, ``enabled`` defaults to true."""

    enabled: bool = False
    config: TrackerConfig = field(default_factory=TrackerConfig)

    def __post_init__(self):
        booleans(self, "tracker")


@dataclass(frozen=True)
class PipelineConfig:
    sources: tuple[str, ...] = ()
    output_dir: str = "out"
    backend: str = "auto"
    source: SourceOptions = field(default_factory=SourceOptions)
    model: ModelOptions = field(default_factory=ModelOptions)
    graph: GraphOptions = field(default_factory=GraphOptions)
    sinks: SinkOptions = field(default_factory=SinkOptions)
    tracker: TrackerOptions = field(default_factory=TrackerOptions)
    events: EventsConfig = field(default_factory=EventsConfig)
    live: LiveOptions = field(default_factory=LiveOptions)
    cluster: ClusterOptions = field(default_factory=ClusterOptions)
    mqtt: MqttOptions = field(default_factory=MqttOptions)
    serve: ServeOptions = field(default_factory=ServeOptions)
    cameras: tuple[CameraSpec, ...] = ()
    """Every source as a CameraSpec, in order, when the file gives any as a table (``[[sources]]``: id, zones,
    lines); empty otherwise. ``sources`` holds the URLs as well."""

    def __post_init__(self):
        object.__setattr__(self, "sources", names("sources", self.sources))
        text("output_dir", self.output_dir)
        choice("backend", self.backend, BACKEND_NAMES)
        if self.events.enabled and not self.tracker.enabled:
            raise ConfigError("[events] needs tracks: add a [tracker] table (enabled = true) or pass --track")
        if self.model.detect_interval > 1 and not self.tracker.enabled:
            raise ConfigError(f"model.detect_interval = {self.model.detect_interval} needs [tracker]: the frames "
                              "between model runs are filled by its predictions (add a [tracker] table or pass "
                              "--track)")


SECTIONS = {"source": SourceOptions, "model": ModelOptions, "graph": GraphOptions, "sinks": SinkOptions,
            "live": LiveOptions, "cluster": ClusterOptions, "mqtt": MqttOptions, "serve": ServeOptions}


def camera_specs(config: PipelineConfig) -> list[CameraSpec]:
    """Every source as a :class:`CameraSpec` (plain URLs have no id and the shared rules)."""
    if [spec.url for spec in config.cameras] == list(config.sources):
        return list(config.cameras)  # one per source, in order (one file may be listed twice, with two ids)
    tables = {spec.url: spec for spec in config.cameras}  # sources changed since (a glob expanded)
    return [tables.get(url) or CameraSpec(url) for url in config.sources]


def config_for_camera(config: PipelineConfig, spec: CameraSpec) -> PipelineConfig:
    """The pipeline as one camera runs it: its own zones and lines (checked like the file's)."""
    events = spec.events(config.events)
    if events is config.events:
        return config
    try:
        return dataclasses.replace(config, events=events)
    except ConfigError as err:
        raise ConfigError(f"camera {spec.id or spec.url}: {err}") from None


def build_camera_spec(table: Mapping[str, Any], origin: str = "camera") -> CameraSpec:
    """A ``[[sources]]`` table (or an API body) as a checked :class:`CameraSpec`; one-line errors."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{origin}: a camera is a table with url (and id, zones, lines), got {table!r}")
    known = ("url", "id", "zones", "lines")
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"{origin}: unknown key 'sources.{unknown[0]}' (known: {', '.join(known)})")
    if "url" not in table:
        raise ConfigError(f"{origin}: a camera needs a url")
    values: dict[str, Any] = {"url": table["url"], "id": table.get("id")}
    for key in ("zones", "lines"):
        if key in table:
            values[key] = _build_events({key: table[key]}, origin).__getattribute__(key)
    try:
        return CameraSpec(**values)
    except ConfigError as err:
        raise ConfigError(f"{origin}: {err}") from None


def load_pipeline(path: str | Path, overrides: Mapping[str, Any] | None = None) -> PipelineConfig:
    """Read a pipeline file and apply ``overrides`` (``{"model.min_size": 512, "sources": [...]}``)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"pipeline file not found: {path}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from None
    base = Path(path).parent
    # Relative paths in a pipeline file are relative to the file, like includes in any config format: the file
    # means the same from any working folder. Paths given on the command line (overrides) stay relative to it.
    if "sources" in raw and isinstance(raw["sources"], list):
        def beside(s):
            return s if not isinstance(s, str) or "://" in s or Path(s).is_absolute() else str(base / s)

        raw["sources"] = [{**s, "url": beside(s.get("url"))} if isinstance(s, dict) else beside(s)
                          for s in raw["sources"]]
    if isinstance(raw.get("output_dir"), str):
        raw["output_dir"] = str(base / raw["output_dir"])
    sinks = raw.get("sinks")
    if isinstance(sinks, dict) and isinstance(sinks.get("coco_annotations"), str):
        sinks["coco_annotations"] = str(base / sinks["coco_annotations"])  # data, like sources: next to the file
    if isinstance(sinks, dict) and isinstance(sinks.get("event_store_path"), str):
        sinks["event_store_path"] = str(base / sinks["event_store_path"])  # an output, like output_dir
    return build_config(raw, overrides, origin=str(path))


def build_config(raw: Mapping[str, Any], overrides: Mapping[str, Any] | None = None, origin: str = "config") -> PipelineConfig:
    """Validate a nested mapping (as parsed from TOML) plus dotted overrides into a :class:`PipelineConfig`."""
    merged: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in raw.items()}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.rpartition(".")
        if section:
            merged.setdefault(section, {})[key] = value
        else:
            merged[key] = value
    top_fields = typing.get_type_hints(PipelineConfig)
    del top_fields["cameras"]  # built from [[sources]] tables, not a key of its own
    unknown = sorted(set(merged) - set(top_fields))
    if unknown:
        raise ConfigError(f"{origin}: unknown key {unknown[0]!r} (known: {', '.join(top_fields)})")
    sources = merged.get("sources")
    if isinstance(sources, (list, tuple)) and any(isinstance(item, Mapping) for item in sources):
        cameras = tuple(build_camera_spec(item, f"{origin}: sources[{i}]") if isinstance(item, Mapping)
                        else CameraSpec(str(item)) for i, item in enumerate(sources))
        ids = [c.id for c in cameras if c.id is not None]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ConfigError(f"{origin}: sources: id {repeated[0]!r} is given to two cameras")
        merged["sources"] = [camera.url for camera in cameras]
        merged["cameras"] = cameras
    values: dict[str, Any] = {}
    for name, value in merged.items():
        if name in SECTIONS or name in ("tracker", "events"):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{origin}: [{name}] must be a table, got {type(value).__name__}")
            if name == "tracker":
                values[name] = _build_tracker(value, origin)
            elif name == "events":
                values[name] = _build_events(value, origin)
            elif name == "mqtt":  # an [mqtt] table means publishing unless it says enabled = false
                values[name] = _build_section(MqttOptions, {"enabled": True, **value}, name, origin)
            else:
                values[name] = _build_section(SECTIONS[name], value, name, origin)
        elif name == "cameras":
            values[name] = value
        else:
            values[name] = _coerce(value, top_fields[name])
    try:
        return PipelineConfig(**values)
    except ConfigError as err:
        raise ConfigError(f"{origin}: {err}") from None


def _build_section(cls, table: Mapping[str, Any], section: str, origin: str):
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(table) - set(hints))
    if unknown:
        raise ConfigError(f"{origin}: unknown key '{section}.{unknown[0]}' (known: {', '.join(hints)})")
    try:
        return cls(**{k: _coerce(v, hints[k]) for k, v in table.items()})
    except ConfigError as err:
        raise ConfigError(f"{origin}: {err}") from None


def _build_tracker(table: Mapping[str, Any], origin: str) -> TrackerOptions:
    hints = typing.get_type_hints(TrackerConfig)
    known = ["enabled", *hints]
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"{origin}: unknown key 'tracker.{unknown[0]}' (known: {', '.join(known)})")
    # a [tracker] table means tracking unless it says enabled = false: settings written for nothing would mislead
    enabled = table.get("enabled", True)
    settings = {k: _coerce(v, hints[k]) for k, v in table.items() if k != "enabled"}
    try:
        return TrackerOptions(enabled, TrackerConfig(**settings))
    except ConfigError as err:  # its messages name "TrackerConfig.<field>": say where the user wrote it
        raise ConfigError(f"{origin}: {str(err).replace('TrackerConfig.', 'tracker.')}") from None


_POINT_KEYS = ("polygon", "points", "ego_lane")  # validated by the events' own dataclasses
_EVENT_TABLES = {"zones": ZoneConfig, "lines": LineConfig}
_RULE_KINDS = {ZoneConfig: "zone", LineConfig: "line", CollisionConfig: "collision"}
"""How each rule names itself in its errors (``zone 'door'.dwell_seconds``, ``collision.ttc_seconds``)."""


def _build_events(table: Mapping[str, Any], origin: str) -> EventsConfig:
    known = ("units", "occlusion_hold", "occlusion_ratio", "zones", "lines", "collision")
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"{origin}: unknown key 'events.{unknown[0]}' (known: {', '.join(known)})")
    values: dict[str, Any] = {}
    for key in ("zones", "lines"):
        items = table.get(key, [])
        if not isinstance(items, list) or not all(isinstance(item, Mapping) for item in items):
            raise ConfigError(f"{origin}: events.{key}: expected an array of tables ([[events.{key}]]), "
                              f"got {items!r}")
        values[key] = tuple(_build_rule(_EVENT_TABLES[key], item, f"events.{key}[{i}]", origin)
                            for i, item in enumerate(items))
    if "collision" in table:
        if not isinstance(table["collision"], Mapping):
            raise ConfigError(f"{origin}: events.collision: expected a table ([events.collision]), "
                              f"got {table['collision']!r}")
        values["collision"] = _build_rule(CollisionConfig, table["collision"], "events.collision", origin)
    for key, kind in (("units", str), ("occlusion_hold", float), ("occlusion_ratio", float)):
        if key in table:
            values[key] = _coerce(table[key], kind)
    try:
        return EventsConfig(**values)
    except ConfigError as err:
        raise ConfigError(f"{origin}: {err}") from None


def _build_rule(cls, table: Mapping[str, Any], key: str, origin: str):
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(table) - set(hints))
    if unknown:
        raise ConfigError(f"{origin}: unknown key '{key}.{unknown[0]}' (known: {', '.join(hints)})")
    required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in table]
    if missing:
        raise ConfigError(f"{origin}: {key}: missing key '{missing[0]}'")
    values = {k: v if k in _POINT_KEYS else _coerce(v, hints[k]) for k, v in table.items()}
    try:
        return cls(**values)
    except ConfigError as err:  # say the key as the file writes it: events.zones[0].dwell_seconds
        message, kind = str(err), _RULE_KINDS[cls]
        for label in (f"{kind} {table.get('name')!r}.", f"{kind}."):
            if message.startswith(label):
                raise ConfigError(f"{origin}: {key}.{message[len(label):]}") from None
        raise ConfigError(f"{origin}: {key}: {message}") from None


def _coerce(value: Any, hint: Any) -> Any:
    """An int where a float is expected becomes a float (TOML ``5`` for ``5.0``). Everything else is left as
    written for the dataclass, whose own checks name the key, what is allowed and the value."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
