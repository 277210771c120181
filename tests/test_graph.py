"""The threaded graph runtime: policies, end-of-stream, failures, stop, signals, metrics, and no leaked threads."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time

import pytest

from streamseg.errors import ConfigError, StageError
from streamseg.graph import GraphReport, Node, Pipeline, StageInput
from streamseg.graph.metrics import LATENCY_SAMPLES


@pytest.fixture(autouse=True)
def no_leftover_threads():
    """Every case must end with exactly the threads it started with: run() joins all of its own."""
    before = set(threading.enumerate())
    yield
    leftover = [t.name for t in set(threading.enumerate()) - before]
    assert leftover == []


def counting(n: int | None = None, finalized: set | None = None, name: str = "source"):
    """A source fn yielding 0, 1, 2, ... (forever when n is None); records its finally block in ``finalized``."""

    def fn(_: StageInput):
        try:
            yield from itertools.count() if n is None else range(n)
        finally:
            if finalized is not None:
                finalized.add(name)

    return fn


def passing(seen: list | None = None, finalized: set | None = None, name: str = "stage", gate=None, started=None):
    """A stage passing items on; ``gate`` (an Event) holds each item until it is set, ``started`` (an Event) is set
    once the stage's code runs (from then on, closing it runs its finally block)."""

    def fn(items: StageInput):
        try:
            if started is not None:
                started.set()
            for item in items:
                if gate is not None:
                    assert gate.wait(30), "the test never opened the gate"
                if seen is not None:
                    seen.append(item)
                yield item
        finally:
            if finalized is not None:
                finalized.add(name)

    return fn


def kept_alive(fn, kept: list):
    """Keep a reference to each generator, as a stage object holding its generator would: only an explicit close()
    by the runtime can then run its finally block (garbage collection cannot)."""

    def wrapped(items):
        outputs = fn(items)
        kept.append(outputs)
        return outputs

    return wrapped


def by_name(report: GraphReport) -> dict:
    return {s.name: s for s in report.stages}


def stages(pipe: Pipeline) -> dict:
    """The running pipeline's live counters by stage name (the public ``metrics()`` view)."""
    return {s.name: s for s in pipe.metrics()}


def until(predicate, what: str, timeout: float = 30.0) -> None:
    """Wait for a state of the graph; the timeout is a deadline for a broken runtime, not a measurement."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.001)


def start(pipe: Pipeline):
    """``pipe.run()`` on a thread; the returned ``finish()`` gives its report (or raises its error) within a deadline,
    so that a runtime that fails to wake a blocked node fails the test instead of hanging it."""
    box: dict = {}

    def target():
        try:
            box["report"] = pipe.run()
        except BaseException as err:  # noqa: BLE001 - re-raised by finish()
            box["error"] = err

    thread = threading.Thread(target=target, name="test:run")
    thread.start()

    def finish(timeout: float = 30.0) -> GraphReport:
        thread.join(timeout)
        if thread.is_alive():
            pipe.stop(drain=False)
            thread.join(timeout)
            raise AssertionError(f"the run did not end within {timeout} s")
        if "error" in box:
            raise box["error"]
        return box["report"]

    return finish


def run_within(pipe: Pipeline) -> GraphReport:
    return start(pipe)()


def test_block_policy_is_lossless_and_ordered_under_a_slow_consumer():
    seen: list[int] = []
    holder: dict[str, Pipeline] = {}

    def sink(items: StageInput):
        for item in items:
            if not seen:  # the consumer holds its first item until everything behind it has piled up
                until(lambda: stages(holder["pipe"])["sink"].queue_depth == 4, "the sink's inbox to fill")
            seen.append(item)
            yield item

    holder["pipe"] = pipe = Pipeline([
        Node("source", counting(60)),
        Node("double", lambda items: [2 * x for x in items], inbox=3),  # a plain list-returning fn is a node too
        Node("sink", sink, inbox=4),
    ])
    report = run_within(pipe)
    assert seen == [2 * i for i in range(60)]
    stages_ = by_name(report)
    assert [s.dropped for s in report.stages] == [0, 0, 0]
    assert (stages_["source"].items_out, stages_["double"].items_in, stages_["double"].items_out) == (60, 60, 60)
    assert (stages_["sink"].items_in, stages_["sink"].items_out) == (60, 60)
    # the producer waited on the full inbox: it filled exactly to capacity and never beyond
    assert (stages_["sink"].queue_high_water, stages_["sink"].queue_capacity) == (4, 4)
    assert report.interrupted is False


def test_drop_oldest_drops_and_counts_keeps_the_freshest_and_eos_survives():
    """The consumer is busy while all 200 items arrive: it then gets the newest ``inbox`` of them, and the end."""
    seen: list[int] = []
    produced = threading.Event()

    def camera(_):
        yield from range(200)
        produced.set()

    def slow(items: StageInput):
        assert produced.wait(30)
        for item in items:
            seen.append(item)
            yield item

    report = run_within(Pipeline([Node("camera", camera), Node("slow", slow, inbox=4, policy="drop_oldest")]))
    slow_ = by_name(report)["slow"]
    assert seen == [196, 197, 198, 199]  # order kept, the freshest items always arrive
    assert (slow_.dropped, slow_.items_in, slow_.queue_high_water) == (196, 4, 4)
    assert by_name(report)["camera"].items_out == 200  # the producer never waited


def test_take_ready_forms_batches_without_waiting():
    source_done = threading.Event()
    batches: list[list[int]] = []

    def source(_):
        yield from range(10)
        source_done.set()

    def batcher(items: StageInput):
        assert source_done.wait(30)  # everything is queued: batches are then deterministic
        for first in items:
            batch = [first, *items.take_ready(3)]
            batches.append(batch)
            yield batch
        assert items.take_ready(5) == []  # after end-of-stream: empty, not blocking

    report = run_within(Pipeline([Node("source", source), Node("model", batcher, inbox=16)]))
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    model = by_name(report)["model"]
    assert (model.items_in, model.items_out) == (10, 3)


def test_take_ready_returns_empty_on_an_empty_inbox():
    """The source produces only once take_ready has returned: a take_ready that waited for an item would get it."""
    checked = threading.Event()
    results = []

    def source(_):
        checked.wait(30)
        yield "late"

    def stage(items: StageInput):
        results.append(items.take_ready(4))
        checked.set()
        yield from items

    report = run_within(Pipeline([Node("source", source), Node("model", stage)]))
    assert results == [[]] and by_name(report)["model"].items_in == 1


@pytest.mark.parametrize("failing", ["source", "middle", "sink"])
def test_exception_in_any_node_raises_stage_error_and_wakes_every_node(failing: str):
    """The failure comes while the other nodes are blocked on queues (earlier ones on full inboxes, later ones on
    empty ones): they must all wake and close."""
    finalized: set[str] = set()
    boom = ValueError(f"boom in {failing}")
    holder: dict[str, Pipeline] = {}

    def others_blocked() -> bool:
        s = stages(holder["pipe"])
        if failing == "source":  # middle and sink passed on all 5 items and wait for more
            return s["sink"].items_out == 5
        if failing == "middle":  # the source waits on the middle's full inbox, the sink on its empty one
            return s["middle"].queue_depth == 4 and s["sink"].items_out == 3
        return s["middle"].queue_depth == 4 and s["sink"].queue_depth == 4  # both upstream wait on full inboxes

    def source(_):
        try:
            for i in itertools.count():
                if failing == "source" and i == 5:
                    until(others_blocked, "the later nodes to wait")
                    raise boom
                yield i
        finally:
            finalized.add("source")

    def stage(name: str):
        def fn(items):
            try:
                for i, item in enumerate(items):
                    if failing == name and i == 3:
                        until(others_blocked, "the other nodes to block")
                        raise boom
                    yield item
            finally:
                finalized.add(name)

        return fn

    kept: list = []
    holder["pipe"] = pipe = Pipeline([Node(name, kept_alive(fn, kept)) for name, fn in
                                      [("source", source), ("middle", stage("middle")), ("sink", stage("sink"))]])
    with pytest.raises(StageError) as caught:
        run_within(pipe)
    assert caught.value.stage == failing
    assert caught.value.__cause__ is boom and caught.value.original is boom
    assert f"stage '{failing}' failed: ValueError: boom in {failing}" == str(caught.value)
    assert finalized == {"source", "middle", "sink"}


def test_first_failure_wins_when_several_fail():
    received = threading.Event()

    def source(_):
        yield 1
        assert received.wait(30)
        raise KeyError("first")

    def sink(items):
        try:
            for item in items:
                received.set()
                yield item
        finally:
            raise RuntimeError("second")  # fails too, while the graph ends after the first failure

    with pytest.raises(StageError) as caught:
        run_within(Pipeline([Node("source", source), Node("sink", sink)]))
    assert caught.value.stage == "source" and isinstance(caught.value.__cause__, KeyError)


def test_stop_drains_queued_items_and_reports_interrupted():
    """Stop comes while the middle node holds an item and its inbox is full behind it: all of them still go on."""
    seen: list[int] = []
    finalized: set[str] = set()
    kept: list = []
    gate = threading.Event()
    pipe = Pipeline([
        Node("source", kept_alive(counting(finalized=finalized), kept)),
        Node("middle", passing(finalized=finalized, name="middle", gate=gate)),
        Node("sink", passing(seen=seen, finalized=finalized, name="sink")),
    ])
    finish = start(pipe)
    until(lambda: (stages(pipe)["middle"].items_in, stages(pipe)["middle"].queue_depth) == (1, 4),
          "the middle node to hold an item with a full inbox behind it")
    pipe.stop()
    gate.set()
    report = finish()
    stages_ = by_name(report)
    assert report.interrupted is True
    # nothing produced was lost: every item the source yielded reached the sink, in order
    assert seen == list(range(stages_["source"].items_out))
    assert len(seen) >= 1 + 4  # the held item and the four queued behind it drained
    assert finalized == {"source", "middle", "sink"}


@pytest.mark.parametrize("abort", ["drain_false", "second_stop"])
def test_abort_discards_queued_items(abort: str):
    """The abort comes while the slow node holds an item, 100 wait in its inbox and the sink waits for them: none of
    them goes on, and every node is closed."""
    seen: list[int] = []
    finalized: set[str] = set()
    kept: list = []
    gate, sink_started = threading.Event(), threading.Event()
    pipe = Pipeline([
        Node("source", kept_alive(counting(finalized=finalized), kept)),
        Node("slow", kept_alive(passing(finalized=finalized, name="slow", gate=gate), kept), inbox=100),
        Node("sink", kept_alive(passing(seen=seen, finalized=finalized, name="sink", started=sink_started), kept)),
    ])
    finish = start(pipe)
    until(lambda: (stages(pipe)["slow"].items_in, stages(pipe)["slow"].queue_depth) == (1, 100) and
          sink_started.is_set(), "the slow node to hold an item with 100 queued behind it")
    if abort == "drain_false":
        pipe.stop(drain=False)
    else:
        pipe.stop()
        pipe.stop()
    gate.set()  # the slow node now passes its item on at once, into an aborted graph
    report = finish()  # no exception: the user asked for the abort
    assert report.interrupted is True
    assert seen == []
    assert by_name(report)["source"].items_out >= 101
    assert finalized == {"source", "slow", "sink"}


def test_sigint_during_run_with_handle_signals_stops_gracefully():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed from the main thread")
    seen: list[int] = []
    flowing = threading.Event()

    def sink(items):
        for item in items:
            seen.append(item)
            flowing.set()
            yield item

    def interrupt():
        if flowing.wait(30):  # items flow: run() has installed its handlers
            os.kill(os.getpid(), signal.SIGINT)

    pipe = Pipeline([Node("source", counting()), Node("sink", sink)])
    handler_before = signal.getsignal(signal.SIGINT)
    interrupter = threading.Thread(target=interrupt)
    interrupter.start()
    report = pipe.run(handle_signals=True)  # a KeyboardInterrupt here would fail the test
    interrupter.join()
    assert report.interrupted is True
    assert len(seen) > 0 and seen == list(range(by_name(report)["source"].items_out))
    assert signal.getsignal(signal.SIGINT) is handler_before


def test_a_consumer_that_finishes_early_ends_an_endless_upstream():
    seen: list[int] = []
    finalized: set[str] = set()
    pipe = Pipeline([
        Node("source", counting(finalized=finalized)),
        Node("first3", lambda items: itertools.islice(items, 3)),
        Node("sink", passing(seen=seen)),
    ])
    report = run_within(pipe)
    assert seen == [0, 1, 2] and finalized == {"source"} and report.interrupted is False


class WorkClock:
    """A pipeline clock that moves only when the worker stage does work of a known length, and only while both
    other stages are waiting: the source on the worker's full inbox, the sink inside its inbox wait (the sink
    announces that its next clock read starts that wait). Busy times and latencies are then exact, whatever the
    machine's load."""

    def __init__(self, inbox: int):
        self.now = 0.0
        self.inbox = inbox
        self.pipe: Pipeline | None = None
        self._lock = threading.Lock()
        self._announcer: int | None = None
        self._sink_waits = threading.Event()

    def __call__(self) -> float:
        with self._lock:
            now = self.now
            if threading.get_ident() == self._announcer:
                self._announcer = None
                self._sink_waits.set()
            return now

    def next_read_starts_a_wait(self) -> None:
        self._announcer = threading.get_ident()

    def work(self, seconds: float) -> None:
        """Called by the worker holding an item it took: the source refills the inbox and blocks on it."""
        until(lambda: stages(self.pipe)["source"].items_out == stages(self.pipe)["worker"].items_in + self.inbox + 1,
              "the source to block on the worker's full inbox")
        assert self._sink_waits.wait(30), "the sink never waited"
        self._sink_waits.clear()
        with self._lock:
            self.now += seconds


def test_busy_fraction_and_latency_tell_a_working_stage_from_waiting_ones():
    clock = WorkClock(inbox=4)

    def worker(items: StageInput):
        for item in itertools.islice(items, 20):
            clock.work(0.02)  # 20 ms of its own work per item: the bottleneck
            yield item

    def sink(items: StageInput):
        while True:
            clock.next_read_starts_a_wait()
            try:
                item = next(items)
            except StopIteration:
                return
            yield item

    clock.pipe = pipe = Pipeline([Node("source", counting()), Node("worker", worker, inbox=clock.inbox),
                                  Node("sink", sink)], clock=clock)
    report = run_within(pipe)
    s = by_name(report)
    assert report.wall_time == pytest.approx(0.4)
    assert s["worker"].busy_time == pytest.approx(0.4) and s["worker"].busy_fraction == pytest.approx(1.0)
    assert s["worker"].latency_p50 == pytest.approx(0.02) and s["worker"].latency_p99 == pytest.approx(0.02)
    # the time passed while the source sat on a full inbox and the sink on an empty one: neither was busy
    assert (s["source"].busy_time, s["sink"].busy_time, s["sink"].latency_p50) == (0.0, 0.0, 0.0)
    assert s["source"].busy_fraction == 0.0 and s["sink"].busy_fraction == 0.0
    assert (s["worker"].items_in, s["sink"].items_out) == (20, 20)
    table = report.table()
    assert len(table.splitlines()) == 2 + 3 + 1 and table.splitlines()[3].startswith("worker")
    assert "100%" in table.splitlines()[3]


def test_live_metrics_snapshot_while_running():
    snapshots = []
    holder: dict[str, Pipeline] = {}

    def watcher(items):
        for i, item in enumerate(items, 1):
            if i == 5:
                snapshots.append(holder["pipe"].metrics())
            yield item

    holder["pipe"] = pipe = Pipeline([Node("source", counting(10)), Node("watcher", watcher)])
    pipe.run()
    live = {s.name: s for s in snapshots[0]}
    assert (live["watcher"].items_in, live["watcher"].items_out) == (5, 4)
    assert live["source"].items_out >= 5
    assert [s.items_out for s in pipe.metrics()] == [10, 10]


def test_latency_reservoir_is_bounded():
    report = Pipeline([Node("source", counting(5000)), Node("sink", passing(), inbox=64)]).run()
    sink = by_name(report)["sink"]
    assert sink.items_out == 5000 and sink.latency_samples == LATENCY_SAMPLES == 4096


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"policy": "drop_newest"}, "policy must be one of 'block', 'drop_oldest', got 'drop_newest'"),
        ({"inbox": 0}, "inbox must be an int >= 1, got 0"),
        ({"name": ""}, "expected a non-empty string"),
    ],
)
def test_invalid_node_options_raise_config_error(kwargs: dict, message: str):
    options = {"name": "model", "fn": passing(), **kwargs}
    with pytest.raises(ConfigError, match=message):
        Node(**options)


def test_pipeline_validation_and_single_run():
    with pytest.raises(ConfigError, match="at least one node"):
        Pipeline([])
    with pytest.raises(ConfigError, match="repeated: a"):
        Pipeline([Node("a", counting(1)), Node("a", passing())])
    pipe = Pipeline([Node("source", counting(2))])
    assert by_name(pipe.run())["source"].items_out == 2
    with pytest.raises(RuntimeError, match="runs once"):
        pipe.run()
