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
