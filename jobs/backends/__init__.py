"""The backend interface: one contract for every place a job can run.

A backend takes a :class:`Launch` (a frozen version record plus where its files are) and starts
it; the CLI only ever talks to this interface, so sagemaker/modelarts plug in without touching it.
The local backend additionally delegates *how* the entry point runs to a :class:`Runtime`
(a plain process, or a Docker container).
"""
from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import IO, Any, Iterator

from jobs.core.contract import PARTS, Contract
from jobs.core.entry import scalars
from jobs.core.errors import SpecError
from jobs.core.tasks import get_task

# Seconds between SIGTERM and SIGKILL when a job is stopped (where the backend can choose).
DEFAULT_GRACE = 10.0


@dataclass
class Launch:
    """Everything a backend needs to start one job version.

    ``record`` is the version record as stored (a dict, see jobs.store); ``workdir`` is the
    version's local folder ($FACEOPS_HOME/jobs/NAME/VERSION); ``bundle`` the code bundle tarball."""

    record: dict[str, Any]
    workdir: Path
    bundle: Path

    @property
    def spec(self) -> dict[str, Any]:
        return self.record["spec"]


class Backend(ABC):
    """Where jobs run. Implementations keep the version record's status current in the store."""

    name: str = ""

    def check(self, spec: dict[str, Any]) -> None:
        """Refuse (SpecError) a resolved spec this backend cannot run, before any version is
        stored or anything uploaded: the service's limits, secrets it would show. Default: none."""

    @abstractmethod
    def plan(self, launch: Launch) -> dict[str, Any]:
        """What ``start`` would do, as data for ``--dry-run`` (secrets masked). Touches nothing."""

    @abstractmethod
    def start(self, launch: Launch) -> dict[str, Any]:
        """Start the job without waiting for it; return details to keep in the record
        (a pid, a remote job id or ARN, a console link)."""

    @abstractmethod
    def refresh(self, record: dict[str, Any]) -> None:
        """Bring the stored status of a non-terminal record up to date (poll a service, or notice
        that a local supervisor died and mark the job failed)."""

    @abstractmethod
    def stop(self, record: dict[str, Any], grace: float = DEFAULT_GRACE) -> None:
        """Ask the job to stop (SIGTERM or the service's stop call), force it after ``grace``."""

    @abstractmethod
    def logs(self, record: dict[str, Any], follow: bool = False) -> Iterator[str]:
        """Yield the job's log lines; with ``follow``, until the job reaches a terminal state."""


@dataclass
class ContainerJob:
    """One entry-point run as a runtime sees it: argv, the contract (host folders), extra env."""

    argv: list[str]
    contract: Contract
    env: dict[str, str]
    image: str | None = None
    gpus: bool = False


class Runtime(ABC):
    """How the local backend runs an entry point: a subprocess, or a container."""

    @abstractmethod
    def start(self, job: ContainerJob, log: IO[bytes]) -> None:
        """Start the entry point with stdout/stderr going to ``log``."""

    @abstractmethod
    def wait(self) -> int:
        """Block until it exits; return its exit code (negative for a signal, like subprocess)."""

    @abstractmethod
    def terminate(self) -> None:
        """Send SIGTERM so the job can checkpoint."""

    @abstractmethod
    def kill(self) -> None:
        """Force it to end (SIGKILL)."""


BACKENDS = {
    "local": "jobs.backends.local:LocalBackend",
    "sagemaker": "jobs.backends.sagemaker:SageMakerBackend",
    "modelarts": "jobs.backends.modelarts:ModelArtsBackend",
}

RUNTIMES = {
    "process": "jobs.backends.runtimes:ProcessRuntime",
    "docker": "jobs.backends.runtimes:DockerRuntime",
}


def entry_argv(spec: dict[str, Any]) -> list[str]:
    """The command a job (a resolved spec, as a version record holds it) runs in the container
    contract: a custom job's ``entrypoint``, or its task's own entry point."""
    return list(spec.get("entrypoint") or get_task(spec["task"]).entrypoint)


def _load(table: dict[str, str], name: str, what: str) -> Any:
    if name not in table:
        raise SpecError(f"unknown {what} '{name}'; known: {', '.join(sorted(table))}")
    module, attr = table[name].split(":")
    try:
        return getattr(import_module(module), attr)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(module.split(".")[0]):
            raise SpecError(f"{what} '{name}' is not available in this version of faceops") from None
        raise


def get_backend(name: str) -> Backend:
    """The backend called ``name`` (``local``, ``sagemaker``, ``modelarts``)."""
    return _load(BACKENDS, name, "backend")()


def get_runtime(name: str) -> Runtime:
    """A fresh runtime of kind ``name`` (``process`` or ``docker``)."""
    return _load(RUNTIMES, name, "runtime")()


def sharded(spec: dict[str, Any]) -> bool:
    """True when a version runs as several shards whose parts are merged: a task that can scale
    out (its :class:`~jobs.core.tasks.Sharding`) on ``instance_count > 1``."""
    return (spec["resources"].get("instance_count") or 1) > 1 and get_task(spec["task"]).sharding is not None


def merge_parts(spec: dict[str, Any], outputs: dict[str, Path]) -> dict[str, Any]:
    """Run the task's merge over the parts in the local output folders ``outputs``
    (``<output>/parts/<part>/``), remove the parts, and return the job's metrics as one
    instance would have logged them (numbers only, nested ones flattened)."""
    sharding = get_task(spec["task"]).sharding
    module, attr = sharding.merge.split(":")
    metrics = getattr(import_module(module), attr)(spec["hyperparameters"], outputs)
    for folder in outputs.values():
        shutil.rmtree(folder / PARTS, ignore_errors=True)
    return scalars(metrics)
