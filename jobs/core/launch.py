"""MXNet's parameter-server launch, written once: which ``dist_sync`` roles (scheduler, servers,
workers) run where, and the ``DMLC_*`` variables that tell each process its role and the
scheduler's address. The local backend runs every role on this machine; the cloud bootstrap runs
one node's share of a cluster the service describes.

Standard library only: the images carry this file next to ``faceops-cloud-bootstrap``.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

DEFAULT_PORT = 9091
LOOPBACK = "127.0.0.1"
# SageMaker documents that a cluster's host names (algo-1, algo-2, ...) may not resolve at once:
# "Hostname information might not be immediately available ... We recommend adding a retry policy
# on hostname resolution operations as nodes become available in the cluster"
# (https://docs.aws.amazon.com/sagemaker/latest/dg/build-your-own-processing-container.html).
# Wait up to this long for them.
RESOLVE_SECONDS = 300.0
# After the worker ends well, the scheduler and servers end by themselves; this long at most.
ROLE_EXIT_SECONDS = 60.0


@dataclass(frozen=True)
class Cluster:
    """One parameter-server cluster: the scheduler's IP address and port, how many servers and
    workers take part, this node's own IP address, and the roles this node runs (workers last,
    so a launcher may run the last one in its own process)."""

    scheduler: str
    port: int
    servers: int
    workers: int
    node: str
    roles: tuple[str, ...]

    def env(self, role: str) -> dict[str, str]:
        """The variables of one process with ``role`` (``scheduler``, ``server`` or ``worker``)."""
        return {"DMLC_PS_ROOT_URI": self.scheduler, "DMLC_PS_ROOT_PORT": str(self.port),
                "DMLC_NUM_SERVER": str(self.servers), "DMLC_NUM_WORKER": str(self.workers),
                "DMLC_NODE_HOST": self.node, "DMLC_ROLE": role}


def on_this_machine(workers: int) -> Cluster:
    """Every role on this machine over loopback: one scheduler, one server and ``workers``
    workers, on a free port."""
    return Cluster(LOOPBACK, free_port(), 1, workers, LOOPBACK, ("scheduler", "server", *["worker"] * workers))


def across_hosts(hosts: list[str], me: str, port: int = DEFAULT_PORT) -> Cluster:
    """This node's share of a cluster of ``hosts``: the first host runs the scheduler, every
    host a server and a worker. ps-lite advertises and dials addresses verbatim, so host names
    are resolved to IP addresses here."""
    roles = (("scheduler",) if me == hosts[0] else ()) + ("server", "worker")
    return Cluster(resolve(hosts[0]), port, len(hosts), len(hosts), resolve(me), roles)


def resolve(host: str, seconds: float = RESOLVE_SECONDS, delay: float = 1.0,
            lookup: Callable[[str], str] = socket.gethostbyname) -> str:
    """``host``'s IP address, asking again (every ``delay`` seconds, doubling up to 10 s) while it
    does not resolve yet, for at most ``seconds``; then an error that names the host."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return lookup(host)
        except OSError as exc:
            if time.monotonic() + delay > deadline:
                raise RuntimeError(f"host {host} did not resolve within {seconds:g}s ({exc})") from None
        time.sleep(delay)
        delay = min(delay * 2, 10.0)


def run_roles(argv: list[str], env: dict[str, str], cluster: Cluster, poll: float = 0.2) -> int:
    """Run this node's roles of ``cluster`` (each ``argv`` with its role's variables) and watch
    them all: the node's exit code is the worker's, unless a scheduler or server fails (a non-zero
    exit or a signal) before the worker has finished, which would leave the worker waiting on it
    forever; then the worker is stopped and the node fails with the dead role's code. A role that
    ends with 0 has done its part (ps-lite ends them once the workers finalize the kvstore, while
    a worker may still be saving its model)."""
    running = [(role, subprocess.Popen(argv, env={**env, **cluster.env(role)})) for role in cluster.roles]
    worker = running[-1][1]
    try:
        while worker.poll() is None:
            for role, proc in running[:-1]:
                code = proc.poll()
                if code:
                    print(f"faceops: the {role} process failed (exit code {code}) while the worker was running; "
                          "stopping the job", file=sys.stderr, flush=True)
                    return code if code > 0 else 128 - code
            time.sleep(poll)
        if worker.returncode == 0:
            deadline = time.monotonic() + ROLE_EXIT_SECONDS
            for _, proc in running[:-1]:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        return worker.returncode
    except subprocess.TimeoutExpired:
        return worker.returncode
    finally:
        for _, proc in running:
            if proc.poll() is None:
                proc.terminate()
        for _, proc in running:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def free_port() -> int:
    """A TCP port nobody listens on now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def modelarts_hosts(environ: dict[str, str]) -> tuple[list[str], int]:
    """The cluster ModelArts describes to each container of a multi-node training job, and this
    node's index in it. The variables are the ones ModelArts presets in training containers
    ("Managing Environment Variables of a Training Container",
    https://support.huaweicloud.com/intl/en-us/usermanual-standard-modelarts/develop-modelarts-0104.html;
    https://support.huaweicloud.com/drawer-modelarts/ma_drawer_129.html): VC_WORKER_HOSTS, the
    nodes' domain names in order, comma-separated; VC_TASK_INDEX, this container's index from 0;
    MA_NUM_HOSTS (or VC_WORKER_NUM), the node count. Without VC_WORKER_HOSTS the names follow
    the pattern ``${MA_VJ_NAME}-${MA_TASK_NAME}-N.${MA_VJ_NAME}``."""
    count = int(environ.get("MA_NUM_HOSTS") or environ.get("VC_WORKER_NUM") or 1)
    hosts = [h for h in environ.get("VC_WORKER_HOSTS", "").split(",") if h]
    if not hosts and count > 1 and environ.get("MA_VJ_NAME"):
        job, task = environ["MA_VJ_NAME"], environ.get("MA_TASK_NAME", "worker")
        hosts = [f"{job}-{task}-{n}.{job}" for n in range(count)]
    return hosts, int(environ.get("VC_TASK_INDEX") or 0)


def modelarts_cluster(environ: dict[str, str], port: int = DEFAULT_PORT, wait: float = 300.0) -> Cluster | None:
    """This node's share of MXNet's dist_sync roles on a ModelArts multi-node job (node 0 runs
    the scheduler), once every node's name resolves; None on a single node."""
    hosts, index = modelarts_hosts(environ)
    if len(hosts) < 2:
        if int(environ.get("MA_NUM_HOSTS") or environ.get("VC_WORKER_NUM") or 1) > 1:
            raise ValueError("ModelArts reports several nodes but neither VC_WORKER_HOSTS nor MA_VJ_NAME names "
                             "them; refusing to train separate copies")
        return None
    if not 0 <= index < len(hosts):
        raise ValueError(f"VC_TASK_INDEX={index} is outside the {len(hosts)} hosts of VC_WORKER_HOSTS")
    for host in hosts:
        resolve(host, wait)
    return across_hosts(hosts, hosts[index], port)
