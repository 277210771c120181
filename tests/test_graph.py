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


@pytest.fixture(autouse=True)
def no_leftover_threads():
    """Every case must end with exactly the threads it started with: run() joins all of its own."""
    before = set(threading.enumerate())
    yield
    leftover = [t.name for t in set(threading.enumerate()) - before]
    assert leftover == []


def counting(n: int | None = None, delay: float = 0.0, finalized: set | None = None, name: str = "source"):
    """A source fn yielding 0, 1, 2, ... (forever when n is None); records its finally block in ``finalized``."""

    def fn(_: StageInput):
        try:
            for i in itertools.count() if n is None else range(n):
                if delay:
                    time.sleep(delay)
                yield i
        finally:
            if finalized is not None:
                finalized.add(name)

    return fn


def passing(delay: float = 0.0, seen: list | None = None, finalized: set | None = None, name: str = "stage"):
    def fn(items: StageInput):
        try:
            for item in items:
                if delay:
                    time.sleep(delay)
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


def test_block_policy_is_lossless_and_ordered_under_a_slow_consumer():
    seen: list[int] = []
    pipe = Pipeline([
        Node("source", counting(60)),
        Node("double", lambda items: [2 * x for x in items], inbox=3),  # a plain list-returning fn is a node too
        Node("sink", passing(delay=0.002, seen=seen), inbox=4),
    ])
    report = pipe.run()
    assert seen == [2 * i for i in range(60)]
    stages = by_name(report)
    assert [s.dropped for s in report.stages] == [0, 0, 0]
    assert (stages["source"].items_out, stages["double"].items_in, stages["double"].items_out) == (60, 60, 60)
    assert (stages["sink"].items_in, stages["sink"].items_out) == (60, 60)
    # the producer outruns the sleeping sink, so its inbox fills exactly to capacity and never beyond
    assert (stages["sink"].queue_high_water, stages["sink"].queue_capacity) == (4, 4)
    assert report.interrupted is False


def test_drop_oldest_drops_and_counts_keeps_the_freshest_and_eos_survives():
    seen: list[int] = []
    pipe = Pipeline([Node("camera", counting(200)), Node("slow", passing(0.005, seen), inbox=4, policy="drop_oldest")])
    started = time.perf_counter()
    report = pipe.run()
    slow = by_name(report)["slow"]
    assert slow.dropped > 100  # 200 items in microseconds against 5 ms each
    assert slow.items_in == len(seen) and slow.items_in + slow.dropped == 200
    assert seen == sorted(seen) and seen[-1] == 199  # order kept, the freshest item always arrives
    assert slow.queue_high_water == 4
    assert time.perf_counter() - started < 1.0  # ended by EOS, not by a timeout


def test_take_ready_forms_batches_without_waiting():
    source_done = threading.Event()
    batches: list[list[int]] = []

    def source(_):
        yield from range(10)
        source_done.set()

    def batcher(items: StageInput):
        source_done.wait(5)  # everything is queued: batches are then deterministic
        for first in items:
            batch = [first, *items.take_ready(3)]
            batches.append(batch)
            yield batch
        assert items.take_ready(5) == []  # after end-of-stream: empty, not blocking

    report = Pipeline([Node("source", source), Node("model", batcher, inbox=16)]).run()
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    model = by_name(report)["model"]
    assert (model.items_in, model.items_out) == (10, 3)


def test_take_ready_returns_empty_on_an_empty_inbox():
    results = []

    def stage(items: StageInput):
        started = time.perf_counter()
        results.append(items.take_ready(4))
        results.append(time.perf_counter() - started)
        yield from items

    Pipeline([Node("source", counting(delay=0.3, n=1)), Node("model", stage)]).run()
    assert results[0] == [] and results[1] < 0.1


@pytest.mark.parametrize("failing", ["source", "middle", "sink"])
def test_exception_in_any_node_raises_stage_error_promptly(failing: str):
    """Other nodes are blocked on queues when the failure happens: they must all wake and close."""
    finalized: set[str] = set()
    boom = ValueError(f"boom in {failing}")

    def source(_):
        try:
            for i in itertools.count():
                if failing == "source":
                    time.sleep(0.02)  # slow producer: middle and sink sit blocked on empty inboxes
                    if i == 5:
                        raise boom
                yield i  # otherwise: unbounded and fast, so it sits blocked on a full inbox
        finally:
            finalized.add("source")

    def stage(name: str):
        def fn(items):
            try:
                for i, item in enumerate(items):
                    if failing == name and i == 3:
                        time.sleep(0.2)  # let every other queue settle into a blocked state first
                        raise boom
                    yield item
            finally:
                finalized.add(name)

        return fn

    kept: list = []
    pipe = Pipeline([Node(name, kept_alive(fn, kept)) for name, fn in
                     [("source", source), ("middle", stage("middle")), ("sink", stage("sink"))]])
    started = time.perf_counter()
    with pytest.raises(StageError) as caught:
        pipe.run()
    assert time.perf_counter() - started < 2.0
    assert caught.value.stage == failing
    assert caught.value.__cause__ is boom and caught.value.original is boom
    assert f"stage '{failing}' failed: ValueError: boom in {failing}" == str(caught.value)
    assert finalized == {"source", "middle", "sink"}


def test_first_failure_wins_when_several_fail():
    def source(_):
        yield 1
        time.sleep(0.05)
        raise KeyError("first")

    def sink(items):
        try:
            yield from items
        finally:
            raise RuntimeError("second")  # fails too, while the graph aborts after the first failure

    with pytest.raises(StageError) as caught:
        Pipeline([Node("source", source), Node("sink", sink)]).run()
    assert caught.value.stage == "source" and isinstance(caught.value.__cause__, KeyError)


def test_stop_drains_queued_items_and_reports_interrupted():
    seen: list[int] = []
    finalized: set[str] = set()
    kept: list = []
    pipe = Pipeline([
        Node("source", kept_alive(counting(finalized=finalized), kept)),
        Node("middle", passing(0.01, finalized=finalized, name="middle")),
        Node("sink", passing(seen=seen, finalized=finalized, name="sink")),
    ])
    seen_at_stop: list[int] = []

    def stop_later():
        time.sleep(0.15)
        seen_at_stop.append(len(seen))
        pipe.stop()

    stopper = threading.Thread(target=stop_later)
    stopper.start()
    report = pipe.run()
    stopper.join()
    stages = by_name(report)
    assert report.interrupted is True
    # nothing produced was lost: every item the source yielded reached the sink, in order
    assert seen == list(range(stages["source"].items_out))
    assert len(seen) > seen_at_stop[0] + 2  # the items queued at stop time (up to 4 + 4 + 1) did drain
    assert finalized == {"source", "middle", "sink"}


@pytest.mark.parametrize("abort", ["drain_false", "second_stop"])
def test_abort_discards_queued_items_quickly(abort: str):
    seen: list[int] = []
    finalized: set[str] = set()
    kept: list = []
    pipe = Pipeline([
        Node("source", kept_alive(counting(finalized=finalized), kept)),
        Node("slow", kept_alive(passing(0.05, finalized=finalized, name="slow"), kept), inbox=100),
        Node("sink", kept_alive(passing(seen=seen, finalized=finalized, name="sink"), kept)),
    ])
    aborted_at: list[float] = []

    def abort_later():
        time.sleep(0.2)
        if abort == "drain_false":
            pipe.stop(drain=False)
        else:
            pipe.stop()
            pipe.stop()
        aborted_at.append(time.perf_counter())

    stopper = threading.Thread(target=abort_later)
    stopper.start()
    report = pipe.run()  # no exception: the user asked for the abort
    returned_at = time.perf_counter()
    stopper.join()
    assert report.interrupted is True
    assert returned_at - aborted_at[0] < 0.5  # at most one 50 ms item in flight, not 100 queued ones
    assert by_name(report)["source"].items_out >= 100 > len(seen)
    assert finalized == {"source", "slow", "sink"}


def test_sigint_during_run_with_handle_signals_stops_gracefully():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed from the main thread")
    seen: list[int] = []
    pipe = Pipeline([Node("source", counting()), Node("sink", passing(0.005, seen=seen))])
    handler_before = signal.getsignal(signal.SIGINT)
    timer = threading.Timer(0.15, os.kill, args=(os.getpid(), signal.SIGINT))
    timer.start()
    report = pipe.run(handle_signals=True)  # a KeyboardInterrupt here would fail the test
    timer.join()
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
    report = pipe.run()
    assert seen == [0, 1, 2] and finalized == {"source"} and report.interrupted is False


def test_busy_fraction_and_latency_tell_a_sleeping_stage_from_a_waiting_one():
    pipe = Pipeline([
        Node("source", counting(20)),
        Node("worker", passing(delay=0.02)),  # 20 ms of its own work per item: the bottleneck
        Node("sink", passing()),  # spends its time waiting on its inbox
    ])
    report = pipe.run()
    stages = by_name(report)
    assert 0.4 <= report.wall_time < 1.5
    assert stages["worker"].busy_fraction > 0.85
    assert stages["sink"].busy_fraction < 0.05
    assert stages["source"].busy_fraction < 0.05  # blocked on the worker's full inbox, not busy
    assert 0.019 <= stages["worker"].latency_p50 < 0.05 and stages["worker"].latency_p99 >= stages["worker"].latency_p50
    assert stages["sink"].latency_p50 < 0.005
    assert stages["worker"].busy_time == pytest.approx(20 * 0.02, rel=0.5)
    table = report.table()
    assert len(table.splitlines()) == 2 + 3 + 1 and table.splitlines()[3].startswith("worker")


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
    pipe = Pipeline([Node("source", counting(5000)), Node("sink", passing(), inbox=64)])
    pipe.run()
    assert len(pipe._clocks[1]._latencies) == 4096


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
