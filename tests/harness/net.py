"""Loopback networking for test services: free ports, a port probe, a server answering from a
thread, and a TCP proxy that stands in for a slow or flaky network link."""
from __future__ import annotations

import socket
import threading
import time
from typing import Any


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (so parallel test runs do not clash)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(host: str) -> bool:
    """Whether something accepts connections at ``host`` (``ADDRESS:PORT``)."""
    address, port = host.rsplit(":", 1)
    with socket.socket() as sock:
        return sock.connect_ex((address, int(port))) == 0


class ServerThread:
    """A server object with ``serve_forever``/``shutdown`` and a loopback ``server_address``
    (http.server's or werkzeug's) answering from a daemon thread while the context is open."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        self.thread = threading.Thread(target=server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.thread.join()


class LoopbackProxy:
    """A real TCP proxy on loopback in front of a server (S3 here), standing in for the network:
    ``cut_first`` cuts the first connection's response after that many bytes, the way a flaky link
    breaks a long ranged GET; ``bytes_per_s`` caps the server-to-client rate of all connections
    together, like one link of that speed."""

    def __init__(self, target: str, cut_first: int | None = None, bytes_per_s: float | None = None):
        host, port = target.removeprefix("http://").split(":")
        self.target, self.cut_first, self.rate, self.connections = (host, int(port)), cut_first, bytes_per_s, 0
        self.lock = threading.Lock()
        self.next_free = time.perf_counter()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(self.target)
            limit = self.cut_first if self.connections == 1 else None
            threading.Thread(target=self._pipe, args=(client, upstream, None, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, limit, True), daemon=True).start()

    def _wait_for_link(self, size: int) -> None:
        """Reserve the link for ``size`` bytes after what is already queued and sleep until then."""
        with self.lock:
            now = time.perf_counter()
            self.next_free = max(now, self.next_free) + size / self.rate
            until = self.next_free
        time.sleep(max(0.0, until - now))

    def _pipe(self, src: socket.socket, dst: socket.socket, limit: int | None, downstream: bool) -> None:
        sent = 0
        try:
            while (data := src.recv(65536)) and (limit is None or sent < limit):
                data = data if limit is None else data[:limit - sent]
                if downstream and self.rate:
                    self._wait_for_link(len(data))
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self.listener.close()


class OutageProxy:
    """A TCP proxy in front of the S3 server that can fail like the server does: ``down()`` stops
    listening and cuts every open connection (as if the server was stopped), ``up()`` listens on
    the same port again; ``budget`` takes it down on its own once that many bytes went upstream
    (an outage in the middle of an upload); ``freeze`` accepts connections and never answers."""

    def __init__(self, target: str, budget: int | None = None, freeze: bool = False) -> None:
        host, port = target.removeprefix("http://").split(":")
        self.target, self.budget, self.freeze = (host, int(port)), budget, freeze
        self.sent = 0
        self.lock = threading.Lock()
        self.sockets: list = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._serve()

    def _serve(self) -> None:
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self.lock:
                self.sockets.append(client)
            if self.freeze:
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets.append(upstream)
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src, dst, upstream: bool) -> None:
        try:
            while data := src.recv(65536):
                if upstream and self.budget is not None:
                    with self.lock:
                        self.sent += len(data)
                        over = self.sent > self.budget
                    if over:
                        self.down()
                        return
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.close()
            except OSError:
                pass

    def down(self) -> None:
        with self.lock:
            sockets, self.sockets = self.sockets, []
            self.budget = None
        try:  # shutdown wakes the thread blocked in accept(); close alone would not
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            except OSError:
                pass

    def up(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self._serve()
