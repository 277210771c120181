"""A real multi-node Ray cluster on this one machine, confined to loopback, for tests (``tests/test_ray_cluster.py``
and the ``streamseg run --cluster`` tests).

How it is built (as root; ``unshare``, ``nsenter``, ``setpriv`` from util-linux, ``ip``, ``ss`` from iproute2):

* private network and mount namespaces: a holder process (``unshare --net --mount`` running a small Python
  script), then ``ip link set lo up`` in it, so ``lo`` is the only interface. Every process of the cluster (head,
  worker nodes, the drivers started with :meth:`RayTestCluster.popen`/:meth:`RayTestCluster.run`) runs inside
  through ``nsenter --net=/proc/<holder>/ns/net --mount=... --wd=<cwd>``. Nothing can listen on a non-loopback
  address there, because there is none; :meth:`RayTestCluster.listening_sockets` reads what does listen with
  ``ss -Hltunp`` inside the namespace, so tests check it rather than trust it. The mount namespace only
  bind-mounts a /etc/hosts of its own (host name -> 127.0.0.1): with no route out, Ray takes the node's address
  from the host name, and a machine whose /etc/hosts maps it to a real address (Docker does) would make Ray pick
  an address that does not exist in the namespace. A private namespace has every port free, so clusters of
  several engineers never collide; nodes get fixed port blocks (see ``PORTS_BASE``) and temp dirs of their own,
  because nodes started together in one temp dir took the same socket names (a raylet aborted on "bind: Address
  already in use") and could race for the ports Ray picks by probing.
* one ``ray start --block`` process per node (this venv's ``ray``: ``Path(sys.executable).parent / "ray"``), each
  started in a new session. The raylet gives every worker process its own process group ("Per-worker process
  group cleanup is ENABLED"), so a node's processes do NOT share one process group, but they all keep the session
  of their ``ray start``: :meth:`RayTestCluster.kill_node` SIGKILLs every process of that session id that is in
  this namespace (``ray start``, raylet, workers, agents, log monitor: a machine switched off). Nothing here ever
  runs ``ray stop``, which kills every Ray process on the machine, other engineers' included.
* token auth on: ``RAY_AUTH_MODE=token`` and a random ``RAY_AUTH_TOKEN`` in the environment of every process;
  no ``~/.ray/auth_token`` is read or written. Session files live in the cluster's own folder (``--temp-dir``).
* dead-node detection: ``--system-config`` of the head sets ``health_check_period_ms=500``,
  ``health_check_failure_threshold=3`` and ``health_check_initial_delay_ms=1000`` (Ray's defaults: ~14 s).
* teardown (``close()``/``__exit__``; also when start-up fails, and when a test fails inside ``with`` or a
  fixture) SIGKILLs by session id every driver and node, then whatever is left in the namespace (only this
  cluster's processes can be in it), then the holder, and removes the folder. If the test process itself is
  SIGKILLed, ``setpriv --pdeathsig`` kills each ``ray start`` and signals the holder, which SIGKILLs everything in
  its namespace (Ray's agents outlive a killed raylet otherwise); only the folder is then left behind.

Findings (ray 2.60.0, 2 cores shared with other engineers' test runs, measured 2026-12-04 with this module):

* A driver inside the namespace uses plain ``ray.init(address=cluster.address)`` (``"127.0.0.1:6379"``), no
  ``_node_ip_address``, no ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``. The exact environment it needs is
  ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN=<token>``, nothing else (the driver test runs with only those
  two; :attr:`RayTestCluster.env` adds the inherited environment, the venv's bin first on PATH, RAY_TMPDIR).
  ``RAY_AUTH_TOKEN`` without ``RAY_AUTH_MODE`` is refused like a wrong token: the mode of a driver defaults to
  disabled and the token is not sent. A driver outside the namespace cannot reach the cluster at all.
  ``ray.init`` logs a harmless warning "Failed to determine local IP via external connectivity ... falling back
  to hostname resolution".
* No token: ``ray.init`` raises ``ray.exceptions.AuthenticationError`` ("Token authentication is enabled but no
  authentication token was found") at once (whole driver process 0.5-0.9 s). Wrong token: the GCS answers
  ``AuthenticationError: RPC error: InvalidAuthToken``, which ``ray.init`` retries once a second for 20 s before
  it raises ``ConnectionError: Failed to connect to Ray cluster at 127.0.0.1:6379`` (caused by it): ~21 s;
  ``RAY_gcs_server_port_wait_time_s=N`` in the driver's environment makes it N tries (2: 2.9 s).
* Start-up: namespace 0.02-0.07 s; head alive in the GCS 3-9.5 s; head + 1 worker node (started together)
  6-16 s (6 s on a quiet machine, up to 16 s while other test suites ran); head + 3 worker nodes 13 s; a node
  added later 1.3-8.8 s. A driver: ``ray.init`` 0.8-1.0 s, the whole process with two tasks 2.6-2.8 s.
  ``close()`` 0.3 s.
* A SIGKILLed worker node is reported dead by the GCS 1.0-1.5 s after the kill when it had run a few seconds,
  2.0 s when killed right after it joined (6.5 s with Ray's default 5 s initial delay).
* Listening sockets of a 2-node cluster: 15-16 TCP with ray[default]'s packages installed (dashboard agent),
  7 with plain ``ray``; all on 127.0.0.1 or ``::ffff:127.0.0.1`` (gRPC servers bound to the IPv4-mapped
  loopback), none on ``::``/``0.0.0.0``; no UDP. The harness works the same with plain ``ray`` (the
  ``cluster`` extra) and with ray[default].

Usage::

    with RayTestCluster(tmp_path, worker_nodes=1) as cluster:
        done = cluster.run([".venv/bin/streamseg", "run", "--cluster", cluster.address, ...], timeout=120)
        cluster.kill_node(1)  # SIGKILL worker node 1, raylet and workers
        cluster.wait_for_nodes(1, timeout=10)  # the GCS reports only the head alive
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
RAY_BIN = VENV_BIN / "ray"
TOOLS = ("unshare", "nsenter", "ip", "ss", "setpriv")
# the GCS checks each raylet every 500 ms and marks it dead after 3 failures in a row; checks of a new node start
# 1 s after it registers (Ray's default 5 s: a node killed soon after it joined took ~6.5 s to be reported dead)
HEALTH_CHECKS = {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                 "health_check_initial_delay_ms": 1000}
# Node i listens on PORTS_BASE + PORTS_PER_NODE * i + (0..5) and its workers on the next 100..499: all below the
# ephemeral range (32768-60999 in every new namespace), from which the kernel picks the ports of outgoing
# connections and of bind(0)
PORTS_BASE, PORTS_PER_NODE, MAX_NODES = 20000, 500, 25
# AF_UNIX socket paths are limited to 107 bytes; Ray's longest is <temp dir>/session_<date>_<time>_<pid>/sockets/
# plasma_store, 64 more
MAX_TEMP_DIR_LEN = 43

# Holds the namespaces open. On SIGTERM (which it gets when the test process dies, through setpriv --pdeathsig)
# it SIGKILLs every other process in its network namespace, which holds nothing but this cluster's processes:
# Ray's agents outlive a SIGKILLed raylet, so the death of each `ray start` alone would leave them running.
_HOLDER = r"""
import os, signal, time
def sweep(*_):
    me, ns, deadline = os.getpid(), os.readlink("/proc/self/ns/net"), time.monotonic() + 10
    while time.monotonic() < deadline:
        left = 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if int(pid) != me and os.readlink(f"/proc/{pid}/ns/net") == ns and \
                        open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
                    os.kill(int(pid), signal.SIGKILL)
                    left += 1
            except OSError:
                pass
        if not left:
            break
        time.sleep(0.05)
    os._exit(0)
signal.signal(signal.SIGTERM, sweep)
print("ready", flush=True)
while True:
    signal.pause()
"""

# Answers node queries from inside the namespace: one JSON line per request line, with a GcsClient kept open
# (a fresh `python -c "import ray"` per query would take ~1 s and blur the timings measured with it).
_PROBE = r"""
import json, sys
from ray._raylet import GcsClient
address, client = sys.argv[1], None
for line in sys.stdin:
    try:
        if client is None:
            client = GcsClient(address=address)
        infos = client.get_all_node_info(timeout=5)
        nodes = [{"node_id": i.node_id.hex(), "alive": i.state == 0, "address": i.node_manager_address,
                  "port": i.node_manager_port, "is_head": i.is_head_node,
                  "cpus": i.resources_total.get("CPU", 0.0)} for i in infos.values()]
        reply = {"ok": True, "nodes": nodes}
    except Exception as e:
        reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(reply), flush=True)
"""


def unavailable() -> str | None:
    """Why this machine cannot run a :class:`RayTestCluster`, or None when it can (a reason to skip on)."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found (apt-get install iproute2 util-linux)"
    if not RAY_BIN.exists():
        return f"{RAY_BIN} not found (pip install -e '.[cluster]')"
    if os.geteuid() != 0:
        return "creating a network namespace needs root (unshare --net)"
    done = subprocess.run(["unshare", "--net", "--mount", "ip", "link", "set", "lo", "up"], capture_output=True,
                          text=True, timeout=30)
    if done.returncode:
        return f"unshare --net --mount not permitted here: {done.stderr.strip()}"
    return None


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, session id) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[3])


def _ns(pid: int | str, kind: str = "net") -> str | None:
    """A process's namespace of ``kind`` (``"net:[inode]"``), None when it is gone."""
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


@dataclass
class Node:
    """One ``ray start --block`` process; its pid is the session id of every process of the node."""
    index: int
    process: subprocess.Popen
    num_cpus: int
    ports: dict[str, int]
    log_path: Path
    started: float
    node_id: str | None = None
    killed: bool = False
    log_file: object = field(default=None, repr=False)

    @property
    def session(self) -> int:
        return self.process.pid


class RayTestCluster:
    """A head node plus ``worker_nodes`` worker nodes in a private, loopback-only network namespace.

    ``tmp_dir``: the folder for the cluster's files (under pytest, ``tmp_path_factory.mktemp("ray")``), None: a
    new one under /tmp. The nodes' Ray temp dirs go to ``<tmp_dir>/r/n<i>`` (to a new folder under /tmp when
    that path is too long for Ray's AF_UNIX socket names, or taken) and are removed at ``close()``; the
    ``ray start`` logs go to ``<tmp_dir>/ray-cluster-logs-*/`` and stay (a folder under /tmp made here is removed
    whole). ``keep_files``: remove nothing. Node 0 is the head; nodes 1.. are worker nodes (``ray start --address``).
    ``*_resources``: custom resources of the nodes (``--resources``). ``system_config``: added to the health
    check settings (``--system-config`` of the head). ``port``: the GCS port; the namespace is private, so any
    port is free in it (Ray's default 6379 is). ``startup_s`` holds the measured start-up times (seconds)."""

    def __init__(self, tmp_dir: str | os.PathLike | None = None, worker_nodes: int = 1, head_cpus: int = 1,
                 worker_cpus: int = 1, head_resources: dict | None = None, worker_resources: dict | None = None,
                 token: str | None = None, system_config: dict | None = None, port: int = 6379,
                 start_timeout: float = 60.0, keep_files: bool = False):
        self.worker_nodes, self.head_cpus, self.worker_cpus = worker_nodes, head_cpus, worker_cpus
        self.head_resources, self.worker_resources = head_resources, worker_resources
        self.token = token or os.urandom(24).hex()
        self.system_config = {**HEALTH_CHECKS, **(system_config or {})}
        self.port, self.start_timeout, self.keep_files = port, start_timeout, keep_files
        self._given_dir = Path(tmp_dir) if tmp_dir is not None else None
        self.dir: Path | None = None  # the given folder, or one under /tmp
        self.logs: Path | None = None  # each node's `ray start` output (node<i>.log) and the probe's
        self.ray_dir: Path | None = None  # the nodes' Ray temp dirs n<i>/, and the namespace's /etc/hosts
        self.holder: subprocess.Popen | None = None
        self.netns: str | None = None  # "net:[inode]" of the private namespace
        self.nodes: list[Node] = []
        self._drivers: list[subprocess.Popen] = []
        self._probe: subprocess.Popen | None = None
        self._probe_buffer = b""
        self.startup_s: dict[str, float] = {}
        self.env: dict[str, str] = {}

    # ---- set-up -------------------------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``host:port`` of the GCS, as a driver inside the namespace passes it to ``ray.init(address=...)``."""
        return f"127.0.0.1:{self.port}"

    @property
    def temp_dir(self) -> Path:
        """The head's Ray temp dir (``--temp-dir``; its session folder holds the logs)."""
        return self.node_temp_dir(0)

    def node_temp_dir(self, i: int) -> Path:
        """Node ``i``'s own temp dir: nodes started together in one temp dir race for the names of their sockets
        and logs (two raylets took one plasma socket name and one aborted: "bind: Address already in use")."""
        return self.ray_dir / f"n{i}"

    def ns(self, argv: list, cwd: str | os.PathLike | None = None) -> list[str]:
        """``argv`` wrapped to run inside the namespaces (in ``cwd``, default the current folder) and to die
        with the test process."""
        return ["setpriv", "--pdeathsig", "KILL", "nsenter", f"--net=/proc/{self.holder.pid}/ns/net",
                f"--mount=/proc/{self.holder.pid}/ns/mnt", f"--wd={os.path.abspath(cwd or os.getcwd())}",
                *map(str, argv)]

    def start(self) -> "RayTestCluster":
        t0 = time.monotonic()
        try:
            self._make_dirs()
            self._make_namespace()
            self.startup_s["namespace"] = time.monotonic() - t0
            self.env = self._make_env()
            head = self._start_node(head=True, num_cpus=self.head_cpus, resources=self.head_resources)
            # worker nodes start at once: `ray start --address` waits for the GCS by itself
            for _ in range(self.worker_nodes):
                self._start_node(head=False, num_cpus=self.worker_cpus, resources=self.worker_resources)
            self.wait_for_nodes(1, self.start_timeout, nodes=[0])
            self.startup_s["head"] = time.monotonic() - head.started
            self.wait_for_nodes(1 + self.worker_nodes, self.start_timeout)
            self.startup_s["total"] = time.monotonic() - t0
        except BaseException:
            self.close()
            raise
        return self

    def _make_dirs(self) -> None:
        if self._given_dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="rtc-"))
        else:
            self.dir = self._given_dir
            self.dir.mkdir(parents=True, exist_ok=True)
        self.logs = Path(tempfile.mkdtemp(prefix="ray-cluster-logs-", dir=self.dir))
        self.ray_dir = self.dir / "r"
        if self.ray_dir.exists() or len(str(self.ray_dir / f"n{MAX_NODES - 1}")) > MAX_TEMP_DIR_LEN:
            self.ray_dir = Path(tempfile.mkdtemp(prefix="rtc-"))  # a long path would overflow AF_UNIX socket names
        self.ray_dir.mkdir(exist_ok=True)

    def _make_namespace(self) -> None:
        self.holder = subprocess.Popen(["setpriv", "--pdeathsig", "TERM", "unshare", "--net", "--mount",
                                        "--propagation", "private", sys.executable, "-c", _HOLDER],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       start_new_session=True)
        if not select.select([self.holder.stdout], [], [], 30)[0] or self.holder.stdout.readline() != b"ready\n":
            self.holder.kill()
            self.holder.wait()
            raise RuntimeError(f"unshare --net --mount failed: {self.holder.stderr.read().decode().strip()}")
        self.netns = _ns(self.holder.pid)
        assert self.netns != _ns("self") and _ns(self.holder.pid, "mnt") != _ns("self", "mnt")
        # Ray takes the node's address from the host name when it finds no route out: a /etc/hosts of its own
        # makes that 127.0.0.1 whatever the machine's says (Docker maps the host name to the container's address)
        hosts = self.ray_dir / "hosts"
        hosts.write_text(f"127.0.0.1 localhost {socket.gethostname()}\n::1 localhost ip6-localhost ip6-loopback\n")
        for argv in (["mount", "--bind", hosts, "/etc/hosts"], ["ip", "link", "set", "lo", "up"]):
            done = subprocess.run(self.ns(argv, cwd="/"), capture_output=True, text=True, timeout=30)
            if done.returncode:
                raise RuntimeError(f"{' '.join(map(str, argv))} in the namespace failed: {done.stderr.strip()}")

    def _make_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH") and not k.startswith("RAY_health_check")}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, RAY_TMPDIR=str(self.temp_dir),
                   RAY_USAGE_STATS_ENABLED="0", PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        return env

    def _start_node(self, head: bool, num_cpus: int, resources: dict | None = None) -> Node:
        index = len(self.nodes)
        if index >= MAX_NODES:
            raise ValueError(f"at most {MAX_NODES} nodes")
        base = PORTS_BASE + PORTS_PER_NODE * index
        argv = [RAY_BIN, "start", "--block", "--num-cpus", num_cpus, "--disable-usage-stats",
                "--temp-dir", self.node_temp_dir(index)]
        # Ports of its own for every node: Ray picks several (agents, metrics) by probing for a free one that the
        # process binds later, which nodes started together on one machine can race for, and by default the
        # workers of every node share 10002-19999.
        ports = {"node-manager": base, "object-manager": base + 1, "metrics-export": base + 2,
                 "runtime-env-agent": base + 3, "dashboard-agent-grpc": base + 4, "dashboard-agent-listen": base + 5,
                 "min-worker": base + 100, "max-worker": base + PORTS_PER_NODE - 1}
        for name, port in ports.items():
            argv += [f"--{name}-port", port]
        if head:
            argv += ["--head", "--port", self.port, "--include-dashboard=false",
                     "--system-config", json.dumps(self.system_config)]
        else:
            argv += ["--address", self.address]
        if resources:
            argv += ["--resources", json.dumps(resources)]
        log_path = self.logs / f"node{index}.log"
        log_file = open(log_path, "wb")
        process = subprocess.Popen(self.ns(argv), env=self.env, stdin=subprocess.DEVNULL, stdout=log_file,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        node = Node(index, process, num_cpus, ports, log_path, time.monotonic(), log_file=log_file)
        self.nodes.append(node)
        return node

    def add_node(self, num_cpus: int = 1, resources: dict | None = None, timeout: float | None = None) -> int:
        """Start one more worker node and wait until the GCS reports it alive; returns its index."""
        node = self._start_node(head=False, num_cpus=num_cpus, resources=resources)
        self.wait_for_nodes(1, timeout or self.start_timeout, nodes=[node.index])
        self.startup_s[f"node{node.index}"] = time.monotonic() - node.started
        return node.index

    # ---- nodes --------------------------------------------------------------------------------------------------

    def _processes(self, session: int | None = None) -> list[int]:
        """Live (non-zombie) processes in this namespace; of one session only when ``session`` is given."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or _ns(entry) != self.netns:
                continue
            stat = _stat(int(entry))
            if stat is None or stat[0] == "Z" or (session is not None and stat[1] != session):
                continue
            found.append(int(entry))
        return found

    def node_processes(self, i: int) -> list[int]:
        """Process ids of node ``i`` (its ``ray start``, GCS on the head, raylet, agents, workers)."""
        return self._processes(self.nodes[i].session)

    def _find_node_id(self, node: Node) -> str | None:
        if node.node_id is None:
            for pid in self._processes(node.session):
                argv = _cmdline(pid)
                if argv and argv[0].endswith("/raylet"):
                    node.node_id = next((a.split("=", 1)[1] for a in argv if a.startswith("--node_id=")), None)
        return node.node_id

    def node_id(self, i: int, timeout: float = 30.0) -> str:
        """Ray's node id (hex) of node ``i``, read from its raylet's command line (waits for the raylet)."""
        deadline = time.monotonic() + timeout
        while self._find_node_id(self.nodes[i]) is None:
            if self.nodes[i].process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"node {i} has no raylet\n{self.log_tail(i)}")
            time.sleep(0.1)
        return self.nodes[i].node_id

    def node_ids(self) -> list[str]:
        """Ray node ids of every node started, by index (dead ones included)."""
        return [self.node_id(i) for i in range(len(self.nodes))]

    def gcs_nodes(self, timeout: float = 30.0) -> list[dict]:
        """The GCS's node table: dicts with node_id, alive, address, port, is_head, cpus."""
        if self._probe is None or self._probe.poll() is not None:
            with open(self.logs / "probe.log", "ab") as log:
                self._probe = self.popen([sys.executable, "-c", _PROBE, self.address], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=log)
            self._probe_buffer = b""
        self._probe.stdin.write(b"nodes\n")
        self._probe.stdin.flush()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._probe_buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._probe.stdout], [], [], left)[0]:
                raise TimeoutError(f"GCS node query got no answer in {timeout} s")
            chunk = os.read(self._probe.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"GCS probe exited: {(self.logs / 'probe.log').read_text()[-2000:]}")
            self._probe_buffer += chunk
        line, self._probe_buffer = self._probe_buffer.split(b"\n", 1)
        reply = json.loads(line)
        if not reply["ok"]:
            raise RuntimeError(reply["error"])
        return reply["nodes"]

    def alive_node_ids(self) -> set[str]:
        """Ids of the nodes the GCS reports alive (empty while the head's raylet is not up)."""
        if self._find_node_id(self.nodes[0]) is None:  # the GCS answers once the head's raylet has registered
            return set()
        return {n["node_id"] for n in self.gcs_nodes() if n["alive"]}

    def wait_for_nodes(self, n: int, timeout: float = 30.0, nodes: list[int] | None = None) -> float:
        """Wait until exactly ``n`` nodes (of the indices ``nodes`` when given) are alive in the GCS; returns
        the seconds waited. A node that exits on its own, or the timeout, raises with the nodes' log tails."""
        t0 = time.monotonic()
        watched = self.nodes if nodes is None else [self.nodes[i] for i in nodes]
        while True:
            for node in watched:
                if not node.killed and node.process.poll() is not None:
                    raise RuntimeError(f"node {node.index} exited ({node.process.returncode})\n"
                                       f"{self.log_tail(node.index)}")
            alive = self.alive_node_ids()
            if nodes is not None:
                alive &= {self._find_node_id(node) for node in watched}
            if len(alive) == n:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                tails = "\n".join(self.log_tail(node.index) for node in watched)
                raise TimeoutError(f"{len(alive)} nodes alive, not {n}, after {timeout} s\n{tails}")
            time.sleep(0.05)

    def kill_node(self, i: int) -> None:
        """SIGKILL every process of node ``i`` at once (its session: ``ray start``, raylet, agents, workers), as a
        machine that is switched off. The GCS notices after the health checks (~2 s)."""
        node = self.nodes[i]
        self.node_id(i)  # known before it is gone
        node.killed = True
        self._kill_session(node.process)

    def _kill_session(self, process: subprocess.Popen, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            pids = self._processes(process.pid)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes {pids} of session {process.pid} survive SIGKILL")
            time.sleep(0.02)
        process.wait()

    def log_tail(self, i: int, chars: int = 3000) -> str:
        node = self.nodes[i]
        try:
            text = node.log_path.read_text(errors="replace")
        except OSError:
            text = ""
        return f"--- node {i} log ({node.log_path}) ---\n{text[-chars:]}"

    # ---- drivers ------------------------------------------------------------------------------------------------

    def popen(self, argv: list, env: dict | None = None, **popen_kwargs) -> subprocess.Popen:
        """Start ``argv`` inside the namespace, in its own session, with :attr:`env` (or ``env``, whole).
        Killed at ``close()`` if still running."""
        process = subprocess.Popen(self.ns(argv, popen_kwargs.get("cwd")), env=self.env if env is None else env,
                                   start_new_session=True, **popen_kwargs)
        self._drivers.append(process)
        return process

    def run(self, argv: list, timeout: float = 120.0, env: dict | None = None, check: bool = False,
            **popen_kwargs) -> subprocess.CompletedProcess:
        """``subprocess.run`` of ``argv`` inside the namespace (text output captured unless told otherwise);
        on timeout the whole session of the command is killed and TimeoutExpired raised."""
        popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
        if "stdout" not in popen_kwargs and "stderr" not in popen_kwargs:
            popen_kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        popen_kwargs.setdefault("text", True)
        process = self.popen(argv, env=env, **popen_kwargs)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill_session(process)
            stdout, stderr = process.communicate()
            raise subprocess.TimeoutExpired(argv, timeout, stdout, stderr) from None
        done = subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)
        if check:
            done.check_returncode()
        return done

    def listening_sockets(self) -> list[tuple[str, str, int, str]]:
        """Every listening TCP/UDP socket in the namespace, as (proto, address, port, process) from
        ``ss -Hltunp``; address without brackets or interface (``127.0.0.1``, ``::1``, ``0.0.0.0``, ``::``...)."""
        out = subprocess.run(self.ns(["ss", "-Hltunp"]), capture_output=True, text=True, check=True,
                             timeout=30).stdout
        sockets = []
        for line in out.splitlines():
            cols = line.split()
            if len(cols) < 5:
                continue
            host, _, port = cols[4].rpartition(":")
            host = host.strip("[]").split("%")[0]
            sockets.append((cols[0], "::" if host == "*" else host, int(port) if port.isdigit() else -1,
                            " ".join(cols[6:])))
        return sockets

    # ---- teardown -----------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Kill everything this cluster started (by session id, then whatever is left in the namespace), the
        namespace holder, and remove the files. Safe to call twice."""
        errors = []
        if self._probe is not None:
            for pipe in (self._probe.stdin, self._probe.stdout):
                pipe.close()
        for process in [*self._drivers, *(node.process for node in reversed(self.nodes))]:
            try:
                self._kill_session(process)
            except Exception as e:  # keep tearing down
                errors.append(e)
        if self.netns is not None:
            for _ in range(500):
                left = [pid for pid in self._processes() if pid != self.holder.pid]
                if not left:
                    break
                for pid in left:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.02)
            else:
                errors.append(RuntimeError(f"processes {left} in the test namespace survive SIGKILL"))
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait()
            self.holder.stdout.close()
            self.holder.stderr.close()
        for node in self.nodes:
            node.log_file.close()
        if not self.keep_files:  # the Ray temp dirs; all files when the folder is ours, else logs are kept
            for folder in (self.ray_dir, self.dir if self._given_dir is None else None):
                if folder is not None:
                    shutil.rmtree(folder, ignore_errors=True)
        self._drivers, self._probe = [], None
        self.netns = None
        if errors:
            raise errors[0]

    def __enter__(self) -> "RayTestCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":  # a start-up measurement: python tests/ray_cluster.py [worker nodes]
    reason = unavailable()
    if reason:
        sys.exit(reason)
    with RayTestCluster(worker_nodes=int(sys.argv[1]) if len(sys.argv) > 1 else 1) as c:
        print({k: round(v, 2) for k, v in c.startup_s.items()}, f"{len(c.listening_sockets())} listening sockets")
