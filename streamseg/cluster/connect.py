"""Joining a Ray cluster, or starting a private one on this machine, for the length of a run.

``ADDRESS`` is what ``ray.init`` takes (``host:port``, ``ray://host:port``, ``auto``), or ``local[:N]``: a
single-node cluster with this machine's CPUs and N workers (default: one per CPU) that lives as long as the run. A local cluster listens on
loopback only (Ray binds every interface by default; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps a single node on
127.0.0.1, measured) and uses Ray's token auth with a fresh random token held in this process's environment, never
written to the home folder. An existing cluster is joined with the caller's own Ray settings (``RAY_AUTH_TOKEN``
or ``~/.ray/auth_token``): its auth is used as configured, never switched off here.

Ray is an optional dependency (``pip install 'streamseg[cluster]'``); importing this module does not import it.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import tempfile
from contextlib import contextmanager, nullcontext
from typing import Iterator

from streamseg.errors import ConfigError, StreamsegError

log = logging.getLogger(__name__)

INSTALL_HINT = "Ray is not installed: pip install 'streamseg[cluster]' (or: pip install ray)"
_LOCAL = re.compile(r"^local(?::(\d+))?$")


def import_ray():
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise StreamsegError(f"--cluster: {INSTALL_HINT}") from None
    return ray


def local_workers(address: str) -> int | None:
    """N of ``local[:N]`` (this machine's CPU count for plain ``local``); None for a real cluster address."""
    match = _LOCAL.match(address.strip())
    if match is None:
        return None
    cpus = int(match.group(1)) if match.group(1) else os.cpu_count() or 1
    if cpus < 1:
        raise ConfigError(f"--cluster {address}: local:N needs N >= 1")
    return cpus


@contextmanager
def connected(address: str, *, namespace: str = "streamseg") -> Iterator[object]:
    """Ray, initialised for this process on ``address`` (see the module docstring); shut down on exit."""
    workers = local_workers(address)
    if workers:
        # Inherited by every Ray process this driver starts (GCS, raylet, workers). Ray reads the token once, when
        # first used: one token per driver process, kept for its later local clusters.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(24))
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    else:
        _check_reachable(address)
    ray = import_ray()
    with tempfile.TemporaryDirectory(prefix="streamseg-ray-") if workers else nullcontext() as temp:
        try:
            if workers:
                ray.init(num_cpus=max(workers, os.cpu_count() or 1), include_dashboard=False, _temp_dir=temp,
                         namespace=namespace, logging_level=logging.WARNING, log_to_driver=True)
            else:
                ray.init(address=address, namespace=namespace, logging_level=logging.WARNING, log_to_driver=True)
        except ray.exceptions.AuthenticationError:
            raise StreamsegError(f"--cluster {address}: the cluster wants an auth token: set RAY_AUTH_TOKEN (or "
                                 "~/.ray/auth_token) to the cluster's") from None
        except ConnectionError as err:
            if "InvalidAuthToken" in repr(err.__cause__) or "uthenticat" in str(err):
                raise StreamsegError(f"--cluster {address}: the cluster refused this auth token (RAY_AUTH_TOKEN or "
                                     "~/.ray/auth_token is not the cluster's)") from None
            raise StreamsegError(f"--cluster {address}: cannot connect ({_one_line(err)})") from None
        except (RuntimeError, ValueError) as err:
            raise StreamsegError(f"--cluster {address}: cannot start Ray ({_one_line(err)})") from None
        try:
            yield ray
        finally:
            ray.shutdown()


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A one-line error at once for a ``host:port`` nothing answers on (``ray.init`` would wait for minutes)."""
    match = re.match(r"^(?:ray://)?\[?([^\]/]+?)\]?:(\d+)$", address.strip())
    if match is None:
        if address.strip() != "auto":
            raise ConfigError(f"--cluster {address}: expected host:port, ray://host:port, auto or local[:N]")
        return
    host, port = match.group(1), int(match.group(2))
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        reason = getattr(err, "strerror", None) or type(err).__name__
        raise StreamsegError(f"--cluster {address}: cannot connect ({reason}); is a Ray head node running there "
                             "(ray start --head)?") from None


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:300] + ("..." if len(text) > 300 else "")
