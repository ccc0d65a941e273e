"""MXNet's parameter-server launch, written once: which ``dist_sync`` roles (scheduler, servers,
workers) run where, and the ``DMLC_*`` variables that tell each process its role and the
scheduler's address. The local backend runs every role on this machine; the cloud bootstrap runs
one node's share of a cluster the service describes.

Standard library only: the images carry this file next to ``faceops-cloud-bootstrap``.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass

DEFAULT_PORT = 9091
LOOPBACK = "127.0.0.1"


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
    return Cluster(socket.gethostbyname(hosts[0]), port, len(hosts), len(hosts), socket.gethostbyname(me), roles)


def free_port() -> int:
    """A TCP port nobody listens on now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def resolve(host: str, wait: float = 300.0, delay: float = 2.0) -> str:
    """``host``'s IP address, asked again every ``delay`` seconds for up to ``wait`` seconds:
    on a cloud cluster a peer's name may not resolve until its container is up."""
    import time

    deadline = time.monotonic() + wait
    while True:
        try:
            return socket.gethostbyname(host)
        except OSError as exc:
            if time.monotonic() + delay > deadline:
                raise OSError(f"cannot resolve cluster host {host!r} after {wait:.0f} s: {exc}") from None
            time.sleep(delay)


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
