"""A Ray instance that ezvtb starts itself listens on loopback only (Ray's own single-machine mode).

`ensure_ray()` without an address and without a cluster to join (what `ezvtb render-batch` and `ezvtb serve
--ray` do) starts a local instance in a child process; every TCP socket that the child and its descendants
(GCS server, raylet, agents, workers) listen on must be a loopback address. Before, the GCS server, the raylet
and the workers listened on every interface (``*``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("ray", reason="ezvtb.cluster needs Ray (pip install 'ezvtb[cluster]')")
pytestmark = pytest.mark.slow

CHILD = textwrap.dedent("""
    import json, os, socket, struct, sys, time
    from ezvtb.cluster._ray import ensure_ray

    def listeners():
        \"\"\"(address, pid, command) of every listening TCP socket of this process and its descendants.\"\"\"
        parents = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    stat = open(f"/proc/{d}/stat").read()
                    parents[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    pass
        tree, grew = {os.getpid()}, True
        while grew:
            new = {p for p, pp in parents.items() if pp in tree} - tree
            tree |= new
            grew = bool(new)
        owner = {}
        for pid in tree:
            try:
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        owner[int(link[8:-1])] = pid
            except OSError:
                pass
        found = []
        for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
            for line in open(table).read().splitlines()[1:]:
                f = line.split()
                if f[3] != "0A" or int(f[9]) not in owner:  # 0A: LISTEN
                    continue
                host, port = f[1].split(":")
                raw = b"".join(struct.pack("<I", int(host[i:i + 8], 16)) for i in range(0, len(host), 8))
                pid = owner[int(f[9])]
                comm = open(f"/proc/{pid}/comm").read().strip()
                found.append([socket.inet_ntop(family, raw), int(port, 16), pid, comm])
        return found

    ray = ensure_ray(num_cpus=1)

    @ray.remote
    def where():
        return os.getpid()

    worker = ray.get(where.remote(), timeout=300)  # a worker process runs (and listens) too
    time.sleep(2)
    print(json.dumps({"listeners": listeners(), "worker": worker, "node_ip": ray.util.get_node_ip_address(),
                      "address": ray.get_runtime_context().gcs_address}), flush=True)
    sys.stdin.read()  # until the test has joined this instance from another process
    ray.shutdown()
""")


JOIN = textwrap.dedent("""
    import json, os, sys
    from ezvtb.cluster._ray import ensure_ray

    ray = ensure_ray(sys.argv[1] if len(sys.argv) > 1 else None)
    print(json.dumps({"node_ip": ray.util.get_node_ip_address(), "nodes": len(ray.nodes()),
                      "single_machine": os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"),
                      "gcs": ray.get_runtime_context().gcs_address}), flush=True)
    ray.shutdown()
""")


def _loopback(addr: str) -> bool:
    import ipaddress

    ip = ipaddress.ip_address(addr)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net/tcp")
def test_a_local_ray_instance_started_by_ezvtb_listens_on_loopback_only():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env.update(PYTHONPATH=os.pathsep.join(sys.path), RAY_USAGE_STATS_ENABLED="0",
               RAY_raylet_start_wait_time_s="120",  # a busy 2-core CI machine starts Ray slowly
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=__import__("secrets").token_hex(16))  # shared by the joiner
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = child.stdout.readline()
        assert line, child.stderr.read()[-4000:] if child.poll() is not None else "no report from the child"
        res = json.loads(line)
        # another process (`ezvtb serve --ray ADDRESS`, a client) joins it by its loopback address
        p = subprocess.run([sys.executable, "-c", JOIN, res["address"]], capture_output=True, text=True, env=env,
                           timeout=300)
        assert p.returncode == 0, p.stderr[-4000:]
        joined = json.loads(p.stdout.strip().splitlines()[-1])
        assert joined["gcs"] == res["address"] and joined["nodes"] == 1 and joined["node_ip"] == "127.0.0.1", joined
    finally:
        child.stdin.close()
        try:
            child.wait(timeout=120)
        except subprocess.TimeoutExpired:
            child.kill()
    assert res["address"].startswith("127.0.0.1:"), res
    comms = {c for _, _, _, c in res["listeners"]}
    assert "gcs_server" in comms and "raylet" in comms, res  # the instance's own servers were found
    assert any(pid == res["worker"] for _, _, pid, _ in res["listeners"]), res  # and a worker's
    exposed = [x for x in res["listeners"] if not _loopback(x[0])]
    assert not exposed, exposed  # was: gcs_server, raylet and workers on '*' (0.0.0.0 / ::)
    assert res["node_ip"] == "127.0.0.1", res


HEAD = textwrap.dedent("""
    import json, sys
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False)  # Ray's default node: the machine's address
    print(json.dumps({"address": ray.get_runtime_context().gcs_address,
                      "node_ip": ray.util.get_node_ip_address()}), flush=True)
    sys.stdin.read()  # until the test closes stdin
    ray.shutdown()
""")



@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Ray head in a child process")
def test_joining_a_running_cluster_is_unchanged():
    """A head node started the usual way (node IP = the machine's address), joined by `ensure_ray(address)` and
    by `ensure_ray()` with RAY_ADDRESS: both connect to it as Ray would, on its address, and neither switches
    this driver to single-machine mode."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env.update(PYTHONPATH=os.pathsep.join(sys.path), RAY_USAGE_STATS_ENABLED="0", RAY_raylet_start_wait_time_s="120",
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=__import__("secrets").token_hex(16))  # shared by the joiners
    head = subprocess.Popen([sys.executable, "-c", HEAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = head.stdout.readline()
        assert line, head.stderr.read()[-4000:] if head.poll() is not None else "no address from the head"
        info = json.loads(line)
        for argv, extra in (([info["address"]], {}), ([], {"RAY_ADDRESS": info["address"]})):
            p = subprocess.run([sys.executable, "-c", JOIN, *argv], capture_output=True, text=True,
                               env={**env, **extra}, timeout=300)
            assert p.returncode == 0, p.stderr[-4000:]
            res = json.loads(p.stdout.strip().splitlines()[-1])
            assert res["gcs"] == info["address"] and res["nodes"] == 1, (res, info)
            assert res["node_ip"] == info["node_ip"] and res["single_machine"] is None, (res, info)
    finally:
        head.stdin.close()
        try:
            head.wait(timeout=120)
        except subprocess.TimeoutExpired:
            head.kill()
