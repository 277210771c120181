"""The multi-node Ray test cluster (tests/ray_cluster.py), on real Ray: a head and a worker node in a private
network namespace, token auth, loopback only, dead-node detection. Skips only where namespaces cannot be made."""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import sys
import time
from pathlib import Path

import pytest

from ray_cluster import RAY_BIN, VENV_BIN, RayTestCluster, unavailable

pytestmark = pytest.mark.timeout(180)

RAY_PACKAGE = Path(importlib.util.find_spec("ray").origin).parent

# A driver: connects, runs one task pinned to each node id given, prints where each ran as JSON.
DRIVER = r"""
import json, os, sys, time
t0 = time.monotonic()
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On
ray.init(address=sys.argv[1], log_to_driver=False)
t1 = time.monotonic()

@ray.remote(num_cpus=1)
def where():
    return ray.get_runtime_context().get_node_id()

ran = ray.get([where.options(scheduling_strategy=On(node, soft=False)).remote() for node in sys.argv[2:]])
print(json.dumps({"ran": ran, "init_s": t1 - t0, "tasks_s": time.monotonic() - t1}))
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    with RayTestCluster(tmp_path_factory.mktemp("ray"), worker_nodes=1) as c:
        print(f"\ncluster start-up: { {k: round(v, 2) for k, v in c.startup_s.items()} }")
        netns, ray_dir = c.netns, c.ray_dir
        yield c
    # teardown left nothing: no process in the namespace, the holder gone, Ray's files removed
    left = [pid for pid in os.listdir("/proc") if pid.isdigit() and _netns(pid) == netns]
    assert not left, f"processes {left} outlive the cluster"
    assert not ray_dir.exists()


def _netns(pid):
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def _driver(cluster, nodes, env=None, timeout=90):
    t0 = time.monotonic()
    done = cluster.run([sys.executable, "-c", DRIVER, cluster.address, *nodes], env=env, timeout=timeout)
    return done, time.monotonic() - t0


def _is_loopback(host: str) -> bool:
    ip = ipaddress.ip_address(host)
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


def test_nodes_run_this_venvs_ray(cluster):
    assert RAY_BIN == VENV_BIN / "ray" and RAY_BIN.parent == Path(sys.executable).parent
    for i in range(2):
        argvs = [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") for pid in cluster.node_processes(i)]
        assert [a for a in argvs if str(RAY_BIN).encode() in a and b"start" in a], f"node {i}: no {RAY_BIN} start"
        raylets = [a[0].decode() for a in argvs if a[0].endswith(b"/raylet")]
        assert raylets == [str(RAY_PACKAGE / "core" / "src" / "ray" / "raylet" / "raylet")]


def test_driver_runs_a_task_on_each_node(cluster):
    nodes = cluster.node_ids()
    gcs = {n["node_id"]: n for n in cluster.gcs_nodes()}
    assert len(set(nodes)) == 2 and all(gcs[n]["alive"] for n in nodes) and gcs[nodes[0]]["is_head"]
    assert {gcs[n]["address"] for n in nodes} == {"127.0.0.1"}
    # the whole environment a driver needs: the token and the mode (RAY_AUTH_TOKEN alone is not sent)
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": cluster.token}
    done, seconds = _driver(cluster, nodes, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ran"] == nodes
    print(f"\ndriver: {seconds:.2f} s in all, ray.init {result['init_s']:.2f} s, 2 tasks {result['tasks_s']:.2f} s")


def test_only_loopback_listens(cluster):
    sockets = cluster.listening_sockets()
    # what must listen does (ss sees Ray's sockets): the GCS, each raylet's node and object managers
    expected = {cluster.port} | {node.ports[name] for node in cluster.nodes[:2]
                                 for name in ("node-manager", "object-manager")}
    assert expected <= {port for _, _, port, _ in sockets}, sockets
    assert {proc.split('"')[1] for *_, proc in sockets} >= {"gcs_server", "raylet"}
    outside = [s for s in sockets if not _is_loopback(s[1])]
    assert not outside, f"listening beyond loopback: {outside}"
    print(f"\n{len(sockets)} listening sockets, all on loopback")


def test_driver_without_token_is_refused(cluster, tmp_path):
    env = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_TOKEN"}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
    done, seconds = _driver(cluster, cluster.node_ids()[:1], env=env, timeout=60)
    assert done.returncode != 0
    assert "AuthenticationError: Token authentication is enabled but no authentication token" in done.stderr
    print(f"\nno token: refused after {seconds:.2f} s")


def test_driver_with_wrong_token_is_refused(cluster, tmp_path):
    # Ray retries the GCS once a second for 20 s before it gives up on a refused token; one retry is enough here
    env = {**cluster.env, "RAY_AUTH_TOKEN": os.urandom(24).hex(), "HOME": str(tmp_path),
           "RAY_gcs_server_port_wait_time_s": "2"}
    done, seconds = _driver(cluster, cluster.node_ids()[:1], env=env, timeout=60)
    assert done.returncode != 0
    assert "InvalidAuthToken: Authentication token is missing or incorrect" in done.stderr
    assert "ConnectionError: Failed to connect to Ray cluster at 127.0.0.1" in done.stderr
    print(f"\nwrong token: refused after {seconds:.2f} s")


def test_killed_worker_node_is_reported_dead(cluster):
    i = cluster.add_node(num_cpus=1)
    print(f"\nnode {i} added in {cluster.startup_s[f'node{i}']:.2f} s")
    dead_id, others = cluster.node_id(i), set(cluster.node_ids()[:i])
    assert cluster.alive_node_ids() == others | {dead_id}
    t0 = time.monotonic()
    cluster.kill_node(i)
    assert cluster.node_processes(i) == []
    while cluster.alive_node_ids() != others:
        assert time.monotonic() - t0 < 5, f"node {i} still alive 5 s after SIGKILL: {cluster.gcs_nodes()}"
        time.sleep(0.05)
    print(f"node {i} reported dead {time.monotonic() - t0:.2f} s after SIGKILL")
    gcs = {n["node_id"]: n["alive"] for n in cluster.gcs_nodes()}
    assert gcs[dead_id] is False and all(gcs[n] for n in others)


def test_failed_start_leaves_nothing(tmp_path):
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    c = RayTestCluster(tmp_path, worker_nodes=0, head_cpus=-1, start_timeout=30)
    with pytest.raises(RuntimeError, match="node 0 exited"):
        c.start()
    assert c.netns is None and c.holder.poll() is not None and not c.ray_dir.exists()
    assert "Error" in (c.logs / "node0.log").read_text()  # the log stays for a look (tmp_path is pytest's)
