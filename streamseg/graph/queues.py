"""Bounded edges between nodes, and the input object a node's function iterates."""

from __future__ import annotations

import threading
from collections import deque
from time import perf_counter
from typing import Any, Callable, Iterator

from streamseg.graph.metrics import StageClock

POLICIES = ("block", "drop_oldest")
"""``block``: a full inbox makes the producer wait (lossless, for files).
``drop_oldest``: the producer never waits, the oldest queued item is discarded (bounded latency, for cameras)."""

WAKE_INTERVAL = 0.1
"""Longest a waiting thread sleeps between checks; every state change also notifies, so this is only a safety net."""


class Aborted(BaseException):
    """Raised inside a node's thread when the graph aborts. A BaseException so that ``except Exception`` in a stage
    cannot swallow it and keep the thread alive."""


class ConsumerGone(BaseException):
    """Raised to a producer whose consumer has finished: it has nobody left to produce for."""


class _EndOfStream:
    def __repr__(self) -> str:
        return "EOS"


EOS = _EndOfStream()
"""What :meth:`Edge.get` returns once the producer has ended and every queued item was taken."""


class Edge:
    """A bounded FIFO between two node threads.

    End-of-stream is a flag, not a queued item, so ``drop_oldest`` can never discard it and it never needs a free slot.
    """

    def __init__(self, capacity: int, policy: str):
        self.capacity = capacity
        self.policy = policy
        self.dropped = 0
        self.high_water = 0
        self._items: deque[Any] = deque()
        self._changed = threading.Condition()
        self._ended = False
        self._aborted = False
        self._detached = False

    def put(self, item: Any) -> None:
        with self._changed:
            while True:
                if self._aborted:
                    raise Aborted
                if self._detached:
                    raise ConsumerGone
                if len(self._items) < self.capacity:
                    break
                if self.policy == "drop_oldest":
                    self._items.popleft()
                    self.dropped += 1
                    break
                self._changed.wait(WAKE_INTERVAL)
            self._items.append(item)
            self.high_water = max(self.high_water, len(self._items))
            self._changed.notify_all()

    def get(self) -> Any:
        """The next item, waiting for one; :data:`EOS` once the producer ended and the queue is empty."""
        with self._changed:
            while True:
                if self._aborted:
                    raise Aborted
                if self._items:
                    item = self._items.popleft()
                    self._changed.notify_all()
                    return item
                if self._ended:
                    return EOS
                self._changed.wait(WAKE_INTERVAL)

    def get_ready(self, max_n: int) -> list[Any]:
        """Up to ``max_n`` items that are already queued; never waits."""
        with self._changed:
            if self._aborted:
                raise Aborted
            taken = [self._items.popleft() for _ in range(min(max_n, len(self._items)))]
            if taken:
                self._changed.notify_all()
            return taken

    def end(self) -> None:
        """The producer is done: the consumer's input ends after the items already queued."""
        self._set("_ended")

    def detach(self) -> None:
        """The consumer is done: queued items are released and the producer's next put raises ConsumerGone."""
        self._set("_detached")

    def abort(self) -> None:
        """Discard queued items and wake every waiting thread with :class:`Aborted`."""
        self._set("_aborted")

    def _set(self, flag: str) -> None:
        with self._changed:
            setattr(self, flag, True)
            if flag != "_ended":
                self._items.clear()
            self._changed.notify_all()

    def stats(self) -> tuple[int, int, int]:
        """``(depth, high_water, dropped)``, read consistently from any thread."""
        with self._changed:
            return len(self._items), self.high_water, self.dropped


class StageInput:
    """What a node's function receives: iterate it for items (blocks, ends at end-of-stream), or call
    :meth:`take_ready` to gather a batch without waiting.

    Batching pattern::

        for first in inputs:
            batch = [first, *inputs.take_ready(batch_size - 1)]
    """

    def __init__(self, edge: Edge, clock: StageClock, now: Callable[[], float] = perf_counter):
        self._edge = edge
        self._clock = clock
        self._now = now
        self._finished = False

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._finished:
            raise StopIteration
        started = self._now()
        item = self._edge.get()
        waited = self._now() - started
        if item is EOS:
            self._clock.took(0, waited)
            self._finished = True
            raise StopIteration
        self._clock.took(1, waited)
        return item

    def take_ready(self, max_n: int) -> list[Any]:
        """Up to ``max_n`` items already waiting in the inbox (possibly none); never blocks."""
        if self._finished or max_n <= 0:
            return []
        items = self._edge.get_ready(max_n)
        self._clock.took(len(items), 0.0)
        return items
