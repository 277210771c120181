"""The SQLite event store (streamseg.sinks.event_store): a real run's events in the store as in the events JSONL,
``streamseg events query`` filters and formats, retention, a writer killed with SIGKILL, bad inputs."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamseg.cli import main
from streamseg.config import build_config
from streamseg.pipeline import Runner
from streamseg.scenes import Scene, write_scene
from streamseg.sinks.event_store import CSV_COLUMNS, EventStore, parse_time, query_events
from streamseg.sinks.events import EVENTS_SCHEMA
from test_pipeline_tracking import SCENE, SceneOracle, tracking_config

REPO = Path(__file__).resolve().parents[1]
T0 = parse_time("2026-12-01T00:00")


def record(camera: str, kind: str, wall_time: float, frame: int = 0) -> dict:
    return {"schema": EVENTS_SCHEMA, "source": camera, "kind": kind, "frame": frame, "time": frame / 25,
            "wall_time": wall_time, "track_id": 7, "label": 1, "class": "person", "region": "door",
            "direction": "in" if kind == "cross" else None, "dwell": None, "box": [1.0, 2.0, 3.0, 4.0],
            "anchor": [2.0, 4.0], "extras": {}}


def query(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["events", "query", *args])
    out, err = capsys.readouterr()
    return code, out, err


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_run_events_land_in_the_store_as_in_the_events_jsonl(tmp_path, capsys):
    scene_paths = write_scene(SCENE, tmp_path / "scene", preset="ultrafast")
    video, out = str(scene_paths["video"]), tmp_path / "out"
    config = build_config(tracking_config(out, video=False, detections=False, summary=False, zone_counts=False))
    with Runner(config, backend=SceneOracle(Scene(SCENE))) as runner:  # two streams, one store for the run
        runs = [runner.process(video, source_id=sid) for sid in ("street", "door")]
    db = out / "events.db"
    assert db.is_file() and not any(run.errors for run in runs)
    for sid in ("street", "door"):
        lines = (out / f"{sid}.events.jsonl").read_text().splitlines()
        assert len(lines) >= 3  # the scene has enter, exit and cross events
        with sqlite3.connect(db) as conn:  # the stored JSON is the JSONL line, byte for byte, in order
            stored = [r for (r,) in conn.execute("SELECT record FROM events WHERE camera = ? ORDER BY id", (sid,))]
        assert stored == lines
        code, printed, _ = query(capsys, "--db", str(db), "--camera", sid)
        assert code == 0 and sorted(printed.splitlines()) == sorted(lines)

    # a file run again replaces that source's stored events (as it replaces its JSONL), the others stay
    with Runner(config, backend=SceneOracle(Scene(SCENE))) as runner:
        runner.process(video, source_id="street")
    with sqlite3.connect(db) as conn:
        counts = dict(conn.execute("SELECT camera, count(*) FROM events GROUP BY camera").fetchall())
    assert counts == {sid: len((out / f"{sid}.events.jsonl").read_text().splitlines()) for sid in ("street", "door")}

    # switched off: no store
    off = tmp_path / "off"
    config = build_config(tracking_config(off, video=False, detections=False, summary=False, event_store=False))
    with Runner(config, backend=SceneOracle(Scene(SCENE))) as runner:
        runner.process(video, source_id="street")
    assert (off / "street.events.jsonl").stat().st_size > 0 and not (off / "events.db").exists()


@pytest.fixture
def store_db(tmp_path) -> Path:
    db = tmp_path / "events.db"
    with EventStore(db) as store:
        for i, (camera, kind) in enumerate([("door", "enter"), ("door", "cross"), ("yard", "cross"),
                                            ("door", "exit"), ("yard", "enter"), ("door", "cross")]):
            store.add(record(camera, kind, T0 + 3600 * i, frame=i))
    return db


def test_query_filters_by_camera_kind_and_time(store_db, capsys):
    def frames(*args):
        code, out, err = query(capsys, "--db", str(store_db), *args)
        assert code == 0 and err == ""
        return [r["frame"] for r in jsonl(out)]

    assert frames() == [0, 1, 2, 3, 4, 5]
    assert frames("--camera", "door") == [0, 1, 3, 5]
    assert frames("--kind", "cross") == [1, 2, 5]
    assert frames("--camera", "door", "--kind", "cross") == [1, 5]
    assert frames("--camera", "door", "--camera", "yard", "--kind", "enter") == [0, 4]
    assert frames("--since", "2026-12-01T02:00") == [2, 3, 4, 5]  # included
    assert frames("--until", "2026-12-01T02:00") == [0, 1]  # excluded
    assert frames("--since", "2026-12-01T03:00:00+02:00", "--until", "2026-12-01T04:00Z") == [1, 2, 3]
    assert frames("--since", str(T0 + 3600 * 4)) == [4, 5]  # Unix seconds
    assert frames("--camera", "gate") == []
    code, out, _ = query(capsys, "--db", str(store_db), "--camera", "door")
    assert jsonl(out)[0] == record("door", "enter", T0, 0)  # the streamseg.events/1 record as written

    code, out, _ = query(capsys, "--db", str(store_db), "--kind", "cross", "--format", "csv")
    rows = list(csv.reader(io.StringIO(out)))
    assert code == 0 and tuple(rows[0]) == CSV_COLUMNS and len(rows) == 4
    first = dict(zip(rows[0], rows[1]))
    assert first["utc"] == "2026-12-01T01:00:00.000000Z" and first["source"] == "door"
    assert first["direction"] == "in" and first["dwell"] == "" and json.loads(first["box"]) == [1, 2, 3, 4]


def test_retention_deletes_events_older_than_the_days(tmp_path):
    db, now = tmp_path / "events.db", time.time()
    with EventStore(db, retention_days=2, retention_interval=0.1) as store:
        for days in (10, 3, 1, 0):
            store.add(record("door", "enter", now - days * 86400, frame=days))
        store.flush()
        deadline = time.monotonic() + 10
        while store.deleted < 2 and time.monotonic() < deadline:  # the writer's next retention pass
            time.sleep(0.05)
        assert store.deleted == 2
    assert [r["frame"] for r in query_events(db)] == [1, 0]


def test_a_disk_that_does_not_keep_up_drops_events_counted_never_waits(tmp_path):
    """Another process holds the file's write lock (a disk that stalls): add() never waits, the queue fills,
    what does not fit is counted in ``dropped``; once the lock goes, everything queued is stored."""
    db = tmp_path / "events.db"
    with EventStore(db, queue_size=50) as store:
        store.add(record("door", "enter", T0))
        store.flush()
        blocker = sqlite3.connect(db, timeout=0)
        blocker.execute("BEGIN EXCLUSIVE")  # the writer's next commit waits (its busy timeout is 10 s)
        try:
            started = time.monotonic()
            for i in range(1, 500):
                store.add(record("door", "enter", T0 + i, frame=i))
            assert time.monotonic() - started < 0.5  # never waited for the disk
            assert 400 <= store.dropped <= 499 - 50
        finally:
            blocker.rollback()
            blocker.close()
        store.flush(10)
        assert store.written + store.dropped == 500
    assert len(list(query_events(db))) == 500 - store.dropped


WRITER = """
import sys, time
from streamseg.sinks.event_store import EventStore
sys.path.insert(0, sys.argv[2])
from test_event_store import record
store = EventStore(sys.argv[1])
i = 0
while True:
    now = time.time()
    store.add(record("cam", "cross", now, frame=i))
    print(i, now, flush=True)
    i += 1
    time.sleep(0.002)
"""


def test_writer_killed_with_sigkill_leaves_a_sound_file_with_all_but_the_last_second(tmp_path):
    db = tmp_path / "events.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(Path(__file__).parent)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True, env=os.environ | {"PYTHONPATH": str(REPO)})
    queued = []
    try:
        first = proc.stdout.readline()
        assert first, "the writer did not start"
        queued.append(first)
        started = time.monotonic()
        while time.monotonic() - started < 2.0:
            queued.append(proc.stdout.readline())
        killed_at = time.time()
        proc.send_signal(signal.SIGKILL)
        queued += proc.stdout.read().splitlines()
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    sent = [(int(i), float(t)) for i, t in (line.split() for line in queued if line.strip())]
    older = {i for i, t in sent if t < killed_at - 1.0}
    assert len(older) > 50
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    stored = {r["frame"] for r in query_events(db, cameras=["cam"])}
    assert older <= stored, f"lost {len(older - stored)} events older than 1 s"
    assert stored <= {i for i, _ in sent}
    with EventStore(db) as store:  # and it takes more events
        store.add(record("cam", "enter", time.time(), frame=-1))
    assert -1 in {r["frame"] for r in query_events(db, kinds=["enter"])}


def test_bad_inputs_are_one_line(tmp_path, store_db, capsys):
    text_file = tmp_path / "notes.db"
    text_file.write_text("not a database at all, " * 100)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE things (x)")
    cases = [
        (["--db", str(tmp_path / "missing.db")], "missing.db: no such event store"),
        (["--db", str(text_file)], "notes.db: not an event store"),
        (["--db", str(other)], "other.db: not an event store"),
        (["--db", str(tmp_path)], "no such event store"),
        (["--db", str(store_db), "--since", "yesterday"], "--since: not a date or time: 'yesterday'"),
        (["--db", str(store_db), "--until", "2026-13-01"], "--until: not a date or time"),
    ]
    for args, message in cases:
        code, out, err = query(capsys, *args)
        assert code == 1 and out == "", args
        assert len(err.splitlines()) == 1 and err.startswith("streamseg: error: ") and message in err, err
    assert text_file.read_text().startswith("not a database")  # a query never writes


def test_live_run_events_land_in_the_store(tmp_path):
    from live_server import RtspServer, make_clip
    from test_live import BlockDetector, needs_server, running, wait_for

    if needs_server.args[0]:
        pytest.skip(needs_server.kwargs["reason"])
    from streamseg.live import LiveRunner

    clip = make_clip(tmp_path / "clip.mp4", 12)
    config = build_config({
        "output_dir": str(tmp_path / "out"), "backend": "none", "sinks": {"video": False, "detections": False},
        "tracker": {"min_hits": 2},
        "events": {"units": "relative", "zones": [{"name": "right", "polygon": [[0.5, 0], [1, 0], [1, 1], [0.5, 1]],
                                                     "classes": ["person"]}]},
    })
    events_file, db = tmp_path / "out" / "cam.events.jsonl", tmp_path / "out" / "events.db"
    with RtspServer({"/cam": clip}) as server, LiveRunner(config, BlockDetector()) as runner:
        with running(runner, [server.url("/cam")]) as box:
            assert runner.ready.wait(30), box
            wait_for(lambda: events_file.exists() and len(events_file.read_text().splitlines()) >= 2, 30,
                     "two events")
            wait_for(lambda: len(list(query_events(db))) >= 2, 2, "two events in the store within 2 s")
    assert "error" not in box, box.get("error")
    lines = events_file.read_text().splitlines()
    with sqlite3.connect(db) as conn:
        assert [r for (r,) in conn.execute("SELECT record FROM events ORDER BY id")] == lines
