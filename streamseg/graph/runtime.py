"""A linear pipeline of nodes, one thread each, joined by bounded queues.

The runtime knows a stage only as "a function that takes an iterable of items and returns an iterable of items";
sources, models and sinks are all just nodes to it.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Callable, Iterable, Iterator, Sequence

from streamseg.errors import ConfigError, StageError
from streamseg.graph.metrics import GraphReport, StageClock, StageMetrics
from streamseg.graph.queues import POLICIES, WAKE_INTERVAL, Aborted, ConsumerGone, Edge, StageInput


@dataclass(frozen=True)
class Node:
    """One stage of a pipeline.

    ``fn`` receives the node's :class:`StageInput` (already exhausted for the first node) and returns an iterable,
    usually a generator, of output items for the next node. ``inbox`` and ``policy`` describe the queue in front of
    this node: ``"block"`` for lossless backpressure, ``"drop_oldest"`` to keep latency bounded on live input.
    """

    name: str
    fn: Callable[[StageInput], Iterable[Any]]
    inbox: int = 4
    policy: str = "block"

    def __post_init__(self):
        if not self.name or not isinstance(self.name, str):
            raise ConfigError(f"Node name: expected a non-empty string, got {self.name!r}")
        if self.policy not in POLICIES:
            allowed = ", ".join(repr(p) for p in POLICIES)
            raise ConfigError(f"Node '{self.name}': policy must be one of {allowed}, got {self.policy!r}")
        if isinstance(self.inbox, bool) or not isinstance(self.inbox, int) or self.inbox < 1:
            raise ConfigError(f"Node '{self.name}': inbox must be an int >= 1, got {self.inbox!r}")
        if not callable(self.fn):
            raise TypeError(f"Node '{self.name}': fn must be callable, got {type(self.fn).__name__}")


class Pipeline:
    """Runs nodes in a line, each on its own thread; items flow from the first node to the last.

    >>> report = Pipeline([Node("numbers", lambda _: range(3)), Node("double", lambda xs: (2 * x for x in xs))]).run()
    >>> [s.items_out for s in report.stages]
    [3, 3]

    A Pipeline runs once. :meth:`stop` and :meth:`metrics` may be called from any thread while it runs.

    ``clock`` (seconds, monotonic) times the run, the stages' busy time and their latencies; a simulation or a
    test can pass its own, for example one that advances only when a stage does known work.
    """

    def __init__(self, nodes: Sequence[Node], clock: Callable[[], float] = perf_counter):
        nodes = list(nodes)
        if not nodes:
            raise ConfigError("Pipeline: expected at least one node, got none")
        names = [node.name for node in nodes]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ConfigError(f"Pipeline: node names must be unique, repeated: {', '.join(duplicates)}")
        self._nodes = nodes
        # The first node reads from an edge that has already ended; the others from a real bounded inbox.
        self._inboxes = [Edge(node.inbox, node.policy) for node in nodes]
        self._inboxes[0].end()
        self._clocks = [StageClock() for _ in nodes]
        self._now = clock
        self._lock = threading.RLock()  # reentrant: stop() may run in a signal handler on a thread that holds it
        self._stop_requested = threading.Event()
        self._aborted = threading.Event()
        self._failure: tuple[str, BaseException] | None = None
        self._started = False
        self._start_time: float | None = None
        self._end_time: float | None = None

    def run(self, handle_signals: bool = False) -> GraphReport:
        """Run until every node has finished; raise :class:`StageError` for the first node that failed.

        A failure ends the run the way a stop does, at the failed node: the items it had already passed on still
        go through every later node (a truncated input's decoded frames all reach the outputs), and the nodes
        before it stop at their next output (nothing is decoded for a sink that can no longer write).

        With ``handle_signals``, SIGINT and SIGTERM call :meth:`stop` (first one drains, second aborts) instead of
        killing the process; this only takes effect on the main thread, and the old handlers come back afterwards.
        """
        with self._lock:
            if self._started:
                raise RuntimeError("Pipeline.run() was already called: a Pipeline runs once, build a new one")
            self._started = True
        threads = [
            threading.Thread(target=self._run_node, args=(i,), name=f"streamseg:{node.name}", daemon=False)
            for i, node in enumerate(self._nodes)
        ]
        self._start_time = self._now()
        with self._signals_call_stop(handle_signals):
            try:
                for thread in threads:
                    thread.start()
                for thread in threads:
                    while thread.is_alive():  # short joins keep the main thread responsive to signals
                        thread.join(WAKE_INTERVAL)
            except BaseException:  # e.g. KeyboardInterrupt without handle_signals: no thread may outlive run()
                self._abort()
                for thread in threads:
                    if thread.ident is not None:
                        thread.join()
                raise
            finally:
                self._end_time = self._now()
        if self._failure is not None:
            stage, original = self._failure
            raise StageError(stage, original) from original
        return GraphReport(self.metrics(), self._end_time - self._start_time, self._stop_requested.is_set())

    def stop(self, drain: bool = True) -> None:
        """Ask the run to end. Thread-safe and signal-safe.

        The first call stops the first node and lets queued items drain through the rest; a second call, or
        ``drain=False``, aborts: queued items are discarded and every node is closed. Neither raises from ``run()``.
        """
        with self._lock:
            abort = not drain or self._stop_requested.is_set()
            self._stop_requested.set()
        if abort:
            self._abort()

    def metrics(self) -> list[StageMetrics]:
        """A consistent-per-stage snapshot of every node's counters; callable while running."""
        if self._start_time is None:
            wall = 0.0
        else:
            wall = (self._now() if self._end_time is None else self._end_time) - self._start_time
        snapshot = []
        for i, (node, clock, inbox) in enumerate(zip(self._nodes, self._clocks, self._inboxes)):
            depth, high_water, dropped = inbox.stats()
            items_in, items_out, busy, p50, p99, samples = clock.read()
            snapshot.append(StageMetrics(
                name=node.name, policy=node.policy if i else "-", queue_capacity=node.inbox if i else 0,
                queue_depth=depth, queue_high_water=high_water, dropped=dropped, items_in=items_in,
                items_out=items_out, busy_time=busy, busy_fraction=busy / wall if wall > 0 else 0.0,
                latency_p50=p50, latency_p99=p99, latency_samples=samples,
            ))
        return snapshot

    def _run_node(self, index: int) -> None:
        """Thread body: pull outputs from the node's iterable and push them into the next inbox."""
        node, inbox, clock = self._nodes[index], self._inboxes[index], self._clocks[index]
        outbox = self._inboxes[index + 1] if index + 1 < len(self._nodes) else None
        outputs: Iterator[Any] | None = None
        now = self._now
        try:
            step_start = now()
            outputs = iter(node.fn(StageInput(inbox, clock, now)))
            while not self._aborted.is_set() and not (index == 0 and self._stop_requested.is_set()):
                try:
                    item = next(outputs)
                except StopIteration:
                    clock.step_done(now() - step_start, produced=False)
                    break
                clock.step_done(now() - step_start, produced=True)
                if outbox is not None:
                    outbox.put(item)
                step_start = now()
        except (Aborted, ConsumerGone):
            pass  # the graph is aborting, or nobody downstream wants more: not this node's failure
        except BaseException as exc:
            self._fail(node.name, exc)
        finally:
            self._close(node.name, outputs)  # runs the generator's finally blocks: sinks finalize their files
            if outbox is not None:
                outbox.end()
            inbox.detach()  # an upstream node blocked on this inbox must not wait forever for a finished consumer

    def _close(self, name: str, outputs: Iterator[Any] | None) -> None:
        close = getattr(outputs, "close", None)
        if close is None:
            return
        try:
            close()
        except (Aborted, ConsumerGone):
            pass
        except BaseException as exc:
            self._fail(name, exc)

    def _fail(self, name: str, exc: BaseException) -> None:
        """Record the first failure; the failed node's thread then ends its outbox (later nodes drain) and detaches
        its inbox (earlier nodes stop), as every finished node does."""
        with self._lock:
            if self._failure is None:
                self._failure = (name, exc)

    def _abort(self) -> None:
        self._aborted.set()
        for inbox in self._inboxes:
            inbox.abort()

    @contextmanager
    def _signals_call_stop(self, enabled: bool) -> Iterator[None]:
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            signal.signal(sig, lambda signum, frame: self.stop())
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
