"""The event store: every event of a run also in one SQLite file (``sinks.event_store``, default
``<output_dir>/events.db``), searchable by camera, kind and time (``streamseg events query``).

One :class:`EventStore` per file, shared by every stream of a run (:class:`~streamseg.sinks.shared.RunOutputs`,
owned by the runner, which closes it, with every queued event written, after its streams). The pipeline never waits for the disk: events go
into a bounded queue (``EventStore.queue_size``; when it is full, events are dropped for the store and counted in
:attr:`EventStore.dropped`) and ONE writer thread inserts them. The file is in WAL mode and the writer commits
every batch it takes from the queue (at least every ``commit_interval`` seconds while events come), so a crash or a
``kill -9`` loses at most the last fraction of a second of events and never leaves a damaged file (SQLite's
journal guarantees it). Retention: the writer deletes events older than ``retention_days`` when it starts and
then every ``retention_interval`` seconds.

Table ``events``: ``id`` (insertion order), ``camera`` (the source id), ``kind``, ``wall_time`` (the event's
wall-clock time, Unix seconds), ``utc`` (the same as ISO-8601 UTC, ``2026-12-01T08:30:00.250000Z``), ``frame``,
``track_id``, ``region`` and ``record`` (the ``streamseg.events/1`` record as JSON, exactly the events JSONL line);
indexed by (camera, wall_time), (kind, wall_time) and wall_time.

A file run (not live) replaces the events an earlier run stored for the same source id, as it replaces its events
JSONL; live runs add to the history.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Iterator, Sequence

from streamseg.errors import StreamsegError
from streamseg.sinks.base import Sink
from streamseg.sinks.events import event_record
from streamseg.types import FrameResult

__all__ = ["EventStore", "EventStoreSink", "store_path", "query_events", "parse_time",
           "write_events", "CSV_COLUMNS"]

log = logging.getLogger(__name__)

APPLICATION_ID = 0x53534556  # "SSEV": marks a streamseg event store
SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    camera TEXT NOT NULL,
    kind TEXT NOT NULL,
    wall_time REAL NOT NULL,
    utc TEXT NOT NULL,
    frame INTEGER NOT NULL,
    track_id INTEGER NOT NULL,
    region TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_camera_time ON events (camera, wall_time);
CREATE INDEX IF NOT EXISTS events_kind_time ON events (kind, wall_time);
CREATE INDEX IF NOT EXISTS events_time ON events (wall_time);
"""
CSV_COLUMNS = ("utc", "wall_time", "source", "kind", "frame", "time", "track_id", "class", "region", "direction",
               "dwell", "box", "anchor", "extras")
"""``--format csv``: the record's fields (lists and ``extras`` as JSON), ``utc`` first."""


def utc_text(wall_time: float) -> str:
    """Unix seconds as ISO-8601 UTC with microseconds and ``Z``."""
    return datetime.fromtimestamp(wall_time, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _connect(path: Path, *, create: bool) -> sqlite3.Connection:
    if not create and not path.is_file():
        raise StreamsegError(f"{path}: no such event store (file not found)")
    uri = f"file:{path.resolve()}{'' if create else '?mode=ro'}"
    try:
        db = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=10.0)
        app = db.execute("PRAGMA application_id").fetchone()[0]
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as err:
        raise StreamsegError(f"{path}: not an event store ({err})") from None
    if create and not tables:
        return db
    if app != APPLICATION_ID or "events" not in tables:
        db.close()
        raise StreamsegError(f"{path}: not an event store (an SQLite file without streamseg's events table)")
    return db


class EventStore:
    """The SQLite file at ``path`` (created with its folder) and its writer thread; see the module docstring.

    :meth:`add` queues one ``streamseg.events/1`` record and never blocks; :meth:`flush` waits until everything
    queued is committed; :meth:`close` (idempotent) writes what is queued and stops the writer. A failure of the
    disk (full, lost mount) ends the writer: :attr:`error` says why and :meth:`add` raises it from then on.
    """

    def __init__(self, path: str | os.PathLike, *, retention_days: float | None = None, queue_size: int = 10000,
                 commit_interval: float = 0.25, retention_interval: float = 3600.0):
        self.path = Path(path)
        self.retention_days, self.commit_interval = retention_days, commit_interval
        self.retention_interval = retention_interval
        self.dropped = 0
        """Events not stored because the queue was full (the disk could not keep up)."""
        self.written = 0
        self.deleted = 0
        """Events removed by retention."""
        self.error: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = _connect(self.path, create=True)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")  # WAL: a process crash never loses a commit
            self._db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            self._db.executescript(SCHEMA_SQL)
            self._db.commit()
        except (OSError, sqlite3.Error) as err:
            raise StreamsegError(f"{self.path}: cannot open the event store ({err})") from None
        self._queue: queue.Queue = queue.Queue(queue_size)
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"event-store:{self.path.name}", daemon=True)
        self._thread.start()

    # -- producers ------------------------------------------------------------------------------------------------

    def add(self, record: dict) -> None:
        """Queue one ``streamseg.events/1`` record (never waits; a full queue drops it, counted)."""
        if self.error is not None:
            raise StreamsegError(f"{self.path}: event store failed: {self.error}")
        if self._closed:
            raise ValueError(f"add to closed EventStore({self.path})")
        try:
            self._queue.put_nowait(("add", record))
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("event_store_dropped path=%s dropped=%d (the disk does not keep up)", self.path,
                            self.dropped)

    def forget(self, camera: str) -> None:
        """Delete the stored events of ``camera`` (queued: in order with the events added before and after)."""
        self._queue.put(("forget", camera))

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything queued so far is committed."""
        done = threading.Event()
        self._queue.put(("flush", done))
        done.wait(timeout)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(("stop", None))
        self._thread.join()
        self._db.close()  # a failure was logged when it happened and raised by add

    def __enter__(self) -> "EventStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the writer thread ------------------------------------------------------------------------------------------

    def _run(self) -> None:
        next_purge = time.monotonic()
        stop = False
        while not stop:
            try:
                now = time.monotonic()
                if self.retention_days is not None and now >= next_purge:
                    self._purge()
                    next_purge = now + self.retention_interval
                try:
                    first = self._queue.get(timeout=min(self.commit_interval, max(0.01, next_purge - now))
                                            if self.retention_days is not None else self.commit_interval)
                except queue.Empty:
                    continue
                batch = [first]
                while len(batch) < 5000:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                rows, waiting = [], []
                for op, item in batch:
                    if op == "add":
                        rows.append(_row(item))
                        continue
                    self._insert(rows)
                    rows = []
                    if op == "forget":
                        self._db.execute("DELETE FROM events WHERE camera = ?", (item,))
                    elif op == "flush":
                        waiting.append(item)
                    elif op == "stop":
                        stop = True
                self._insert(rows)
                self._db.commit()
                for done in waiting:
                    done.set()
            except (sqlite3.Error, OSError) as err:
                self.error = " ".join(str(err).split())
                log.error("event_store_failed path=%s error=%s (events are no longer stored)", self.path, self.error)
                self._drain()
                return

    def _insert(self, rows: list[tuple]) -> None:
        if rows:
            self._db.executemany("INSERT INTO events (camera, kind, wall_time, utc, frame, track_id, region, record) "
                                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self.written += len(rows)

    def _drain(self) -> None:
        """After a failure: wake whoever waits for a flush, and let the queue empty so that close returns."""
        while True:
            op, item = self._queue.get()
            if op == "flush":
                item.set()
            elif op == "stop":
                return

    def _purge(self) -> int:
        """Delete the events older than ``retention_days`` now (the writer does it periodically)."""
        if self.retention_days is None:
            return 0
        cutoff = time.time() - self.retention_days * 86400.0
        deleted = self._db.execute("DELETE FROM events WHERE wall_time < ?", (cutoff,)).rowcount
        self._db.commit()
        if deleted:
            self.deleted += deleted
            log.info("event_store_retention path=%s deleted=%d older_than_days=%g", self.path, deleted,
                     self.retention_days)
        return deleted


def _row(record: dict) -> tuple:
    wall = float(record["wall_time"])
    line = json.dumps(record, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (record["source"], record["kind"], wall, utc_text(wall), int(record["frame"]), int(record["track_id"]),
            record["region"], line)


def store_path(config) -> Path | None:
    """Where a pipeline's events are stored (None: no store: ``sinks.event_store`` off or no event rules)."""
    sinks = config.sinks
    if not (sinks.event_store and config.events.enabled and config.tracker.enabled):
        return None
    return Path(sinks.event_store_path) if sinks.event_store_path else Path(config.output_dir) / "events.db"


class EventStoreSink(Sink):
    """One stream's events into a run's shared ``store`` (closing the sink leaves the store open: the run owns
    it). ``replace``: first delete what an earlier run stored for ``source_id`` (file runs)."""

    def __init__(self, store: EventStore, source_id: str, *, replace: bool = False):
        self.path = store.path
        self.source_id = source_id
        self._store = store
        self._open = True
        if replace:
            self._store.forget(source_id)

    def write(self, result: FrameResult) -> None:
        if not self._open:
            raise ValueError(f"write to closed EventStoreSink({self.path})")
        for event in result.events:
            self._store.add(event_record(event))

    def close(self) -> None:
        self._open = False


# -- reading ----------------------------------------------------------------------------------------------------------


def parse_time(text: str, flag: str = "time") -> float:
    """``2026-12-01``, ``2026-12-01T08:30``, ``...:00.5``, with ``Z`` or an offset (without one: UTC), or Unix
    seconds, as Unix seconds; anything else is a one-line error naming ``flag``."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise StreamsegError(f"{flag}: not a date or time: {text!r} (expected ISO-8601 such as 2026-12-01T08:30, "
                             "UTC unless it has an offset, or Unix seconds)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def query_events(db_path: str | os.PathLike, *, cameras: Sequence[str] = (), kinds: Sequence[str] = (),
                 since: float | None = None, until: float | None = None) -> Iterator[dict]:
    """The stored ``streamseg.events/1`` records that match, in time order (``since`` included, ``until``
    excluded; several cameras or kinds: any of them)."""
    path = Path(db_path)
    db = _connect(path, create=False)  # here, not at the first record: a bad file fails before any output
    return _records(db, path, cameras, kinds, since, until)


def _records(db: sqlite3.Connection, path: Path, cameras, kinds, since, until) -> Iterator[dict]:
    try:
        where, args = [], []
        for column, values in (("camera", cameras), ("kind", kinds)):
            if values:
                where.append(f"{column} IN ({', '.join('?' * len(values))})")
                args += list(values)
        if since is not None:
            where.append("wall_time >= ?")
            args.append(since)
        if until is not None:
            where.append("wall_time < ?")
            args.append(until)
        sql = "SELECT record FROM events" + (f" WHERE {' AND '.join(where)}" if where else "") + \
            " ORDER BY wall_time, id"
        try:
            for (line,) in db.execute(sql, args):
                yield json.loads(line)
        except sqlite3.Error as err:
            raise StreamsegError(f"{path}: cannot read the event store ({err})") from None
    finally:
        db.close()


def write_events(records: Iterator[dict], out: IO[str], fmt: str = "jsonl") -> int:
    """``records`` as JSON Lines (the records as stored) or CSV (:data:`CSV_COLUMNS`, a header first)."""
    count = 0
    if fmt == "jsonl":
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
            count += 1
        return count
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for record in records:
        row = []
        for column in CSV_COLUMNS:
            value = utc_text(record["wall_time"]) if column == "utc" else record.get(column)
            row.append(json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict))
                       else "" if value is None else value)
        writer.writerow(row)
        count += 1
    return count
