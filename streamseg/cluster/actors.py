"""Model actors on the cluster: a pool of :class:`~streamseg.cluster.work.ChunkWorker` s and the bookkeeping that
turns Ray's at-least-once execution into every item done once.

Each actor holds one model and asks Ray for ``[cluster] num_cpus`` / ``num_gpus`` (fractions allowed), so a mixed
cluster places actors where they fit (``local:N``: N actors share this machine's CPUs). Ray restarts an actor whose process died (``max_restarts=-1``), on another
node when its node is gone and another has room. The pool, not Ray, re-runs the calls a dead actor was on: it
hands them at once to an actor that is up (Ray's own call retries would wait for that very actor, which may find
no room for a long time after its node was lost), up to ``max_retries`` times per item, and pings the dead actor
until it is back. Items are idempotent (:func:`~streamseg.cluster.work.commit`), so one that ran twice leaves one
output.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from streamseg.config import PipelineConfig
from streamseg.errors import StreamsegError

log = logging.getLogger(__name__)

MAX_AUTO_ACTORS = 64
PING_INTERVAL = 1.0
"""Seconds between pings of an actor that is down (restarting, or waiting for room after its node was lost)."""
IN_FLIGHT_PER_ACTOR = 2
"""Calls running on one actor at once: decoding and encoding overlap the model (a local run's threads do the same),
and the next item is there when one ends (no round trip in between)."""


@dataclass
class Call:
    """A submitted call: what it does (to resubmit it elsewhere) and what to do with its outcome."""

    method: str
    args: tuple
    on_done: Callable[[Any], None]
    label: str
    attempts: int = 1
    actor: int = -1


class WorkerPool:
    """``actors`` model actors; :meth:`submit` queues calls, :meth:`poll` runs the finished calls' callbacks.
    ``backend_factory`` (a picklable callable returning a Backend) replaces the configured model: your own model
    on the cluster."""

    def __init__(self, ray, config: PipelineConfig, actors: int | None = None, backend_factory=None):
        self.ray = ray
        opts = config.cluster
        self.max_retries = opts.max_retries
        from streamseg.cluster.connect import local_workers
        from streamseg.cluster.work import ChunkWorker

        workers = local_workers(opts.address or "")
        self.count = actors or opts.actors or workers or fitting_actors(ray, opts.num_cpus, opts.num_gpus)
        # local:N: the N actors share this machine's CPUs (Ray gives an actor as many model threads as CPUs)
        num_cpus = ray.cluster_resources().get("CPU", 1) / self.count if workers else opts.num_cpus
        remote = ray.remote(num_cpus=num_cpus, num_gpus=opts.num_gpus, max_restarts=-1, max_task_retries=0,
                            max_concurrency=IN_FLIGHT_PER_ACTOR)(ChunkWorker)
        self.actors = [remote.remote(config, backend_factory) for _ in range(self.count)]
        # ready (models loaded) before work is handed out; where each runs, for whoever operates the cluster
        places = ray.get([actor.where.remote() for actor in self.actors])
        log.info("cluster: %d model actor%s ready: %s", self.count, "s" * (self.count != 1),
                 ", ".join(f"{host} pid {pid}" for host, pid in places))
        self._busy = [0] * self.count
        self._down: dict[int, Any] = {}  # actor -> its pending ping (None: ping again after PING_INTERVAL)
        self._next_ping = 0.0
        self._waiting: list[Call] = []
        self._running: dict[Any, Call] = {}
        self.retried = 0

    def submit(self, method: str, args: tuple, on_done: Callable[[Any], None], label: str) -> None:
        self._waiting.append(Call(method, args, on_done, label))
        self._dispatch()

    def submit_first(self, method: str, args: tuple, on_done: Callable[[Any], None], label: str) -> None:
        """Like :meth:`submit`, ahead of calls not yet handed to an actor."""
        self._waiting.insert(0, Call(method, args, on_done, label))
        self._dispatch()

    @property
    def idle(self) -> bool:
        return not self._waiting and not self._running

    def _dispatch(self) -> None:
        while self._waiting:
            up = [i for i in range(self.count) if i not in self._down]
            if not up:
                return
            actor = min(up, key=lambda i: self._busy[i])
            if self._busy[actor] >= IN_FLIGHT_PER_ACTOR:
                return
            call = self._waiting.pop(0)
            call.actor = actor
            self._busy[actor] += 1
            ref = getattr(self.actors[actor], call.method).remote(*call.args)
            self._running[ref] = call

    def _check_down(self) -> None:
        """Ping the actors that failed a call; one that answers takes work again."""
        now = time.monotonic()
        for actor, ping in list(self._down.items()):
            if ping is None:
                if now >= self._next_ping:
                    self._down[actor] = self.actors[actor].where.remote()
                continue
            ready, _ = self.ray.wait([ping], timeout=0)
            if not ready:
                continue
            try:
                host, pid = self.ray.get(ping)
            except self.ray.exceptions.RayError:
                self._down[actor] = None
                continue
            del self._down[actor]
            log.info("cluster: model actor %d is back on %s pid %d", actor, host, pid)
        if now >= self._next_ping:
            self._next_ping = now + PING_INTERVAL

    def poll(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for calls to finish; run their callbacks; returns how many finished."""
        self._check_down()
        self._dispatch()
        if not self._running:
            time.sleep(timeout if self._waiting else 0)
            return 0
        ready, _ = self.ray.wait(list(self._running), num_returns=1, timeout=timeout)
        ready += self.ray.wait([r for r in self._running if r not in ready], num_returns=len(self._running) - 1,
                               timeout=0)[0] if len(self._running) > 1 else []
        for ref in ready:
            call = self._running.pop(ref)
            self._busy[call.actor] -= 1
            try:
                outcome = self.ray.get(ref)
            except (self.ray.exceptions.RayActorError, self.ray.exceptions.ActorUnavailableError,
                    self.ray.exceptions.ObjectLostError) as err:
                if call.attempts > self.max_retries:
                    raise StreamsegError(f"{call.label}: failed {call.attempts} times, last: {_first_line(err)}") \
                        from None
                log.warning("%s: worker lost (%s); retrying elsewhere", call.label, _first_line(err))
                self._down.setdefault(call.actor, None)
                call.attempts += 1
                self.retried += 1
                self._waiting.insert(0, call)
                continue
            except self.ray.exceptions.RayError as err:  # the item itself failed: no retry cures that
                cause = getattr(err, "cause", None)
                if isinstance(cause, StreamsegError):
                    raise cause from None
                raise StreamsegError(f"{call.label}: worker failed: {_first_line(err)}") from None
            call.on_done(outcome)
        self._dispatch()
        return len(ready)

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []


def fitting_actors(ray, num_cpus: float, num_gpus: float) -> int:
    """How many actors of that size the cluster's resources hold now (at least 1, at most 64)."""
    total = ray.cluster_resources()
    fits = [int(total.get("CPU", 0) // num_cpus)] if num_cpus else []
    if num_gpus:
        fits.append(int(total.get("GPU", 0) // num_gpus))
        if not fits[-1]:
            raise StreamsegError(f"--cluster: no GPU on the cluster for actors of num_gpus = {num_gpus}")
    return max(1, min([MAX_AUTO_ACTORS, *fits]))


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return (lines[-1] if lines else type(err).__name__)[:300]
