"""The ``docker`` runtime of the local backend: runs a job's entry point in its image with the
container contract mounted at /opt/ml, the same layout SageMaker and ModelArts give it, so an
entry point that works here works there.

The version's host folders are bind-mounted part by part (inputs and hyperparameters read-only),
the code bundle extracted by the local backend is the working directory and on ``PYTHONPATH``,
GPUs are requested when the job wants them, and the container's output is streamed into the
job log. Stopping is SIGTERM (the job may checkpoint), then SIGKILL; the engine's init process
is PID 1 so the entry point gets SIGTERM's default action like any process. The container
shares the host network so it reaches the same storage endpoints and training peers.
"""
from __future__ import annotations

import threading
from typing import IO

from jobs.backends import ContainerJob, Runtime
from jobs.core.contract import CONTAINER_ROOT, Contract
from jobs.core.errors import SpecError

LABEL = "org.faceops.job"


def mounts(contract: Contract) -> dict[str, dict[str, str]]:
    """Host folder -> container folder (docker SDK ``volumes``) for every part of the contract."""
    inside = Contract(root=CONTAINER_ROOT, channels=contract.channels, outputs=contract.outputs)
    pairs = [(contract.channel_dir(c), inside.channel_dir(c), "ro") for c in contract.channels]
    pairs += [
        (contract.hyperparameters_file.parent, inside.hyperparameters_file.parent, "ro"),
        (contract.model_dir, inside.model_dir, "rw"),
        (contract.failure_file.parent, inside.failure_file.parent, "rw"),
        (contract.checkpoint_dir, inside.checkpoint_dir, "rw"),
        (contract.code_dir, inside.code_dir, "rw"),
    ]
    return {str(host): {"bind": str(target), "mode": mode} for host, target, mode in pairs}


def environment(job: ContainerJob) -> dict[str, str]:
    """The contract's variables as the container sees them, the job's own, and the code path."""
    inside = Contract(root=CONTAINER_ROOT, channels=job.contract.channels, outputs=job.contract.outputs)
    return {**inside.env(), "PYTHONPATH": str(inside.code_dir), "PYTHONUNBUFFERED": "1", **job.env}


class DockerRuntime(Runtime):
    """One container per run; ``wait`` returns its exit code (negative for a signal) and removes it."""

    def __init__(self) -> None:
        self.container = None
        self._pump: threading.Thread | None = None

    def start(self, job: ContainerJob, log: IO[bytes]) -> None:
        """Create and start the container, then copy its output into ``log`` on a thread."""
        import docker as sdk

        from images.engine import EngineError, client

        if not job.image:
            raise SpecError("runtime 'docker' needs an image: set `image:` in the job spec")
        job.contract.make_dirs()
        docker = client()
        requests = [sdk.types.DeviceRequest(count=-1, capabilities=[["gpu"]])] if job.gpus else None
        try:
            self.container = docker.containers.create(
                job.image, command=job.argv or None, environment=environment(job), volumes=mounts(job.contract),
                working_dir=str(CONTAINER_ROOT / "code"), device_requests=requests, network_mode="host",
                labels={LABEL: str(job.contract.root)}, init=True, detach=True)
            self.container.start()
        except sdk.errors.ImageNotFound:
            raise SpecError(f"image {job.image} is not on this Docker engine; build or pull it first") from None
        except sdk.errors.APIError as exc:
            if self.container is not None:
                self.container.remove(force=True)
            raise EngineError(f"cannot start {job.image}: {exc.explanation or exc}") from None
        self._pump = threading.Thread(target=self._copy_logs, args=(log,), daemon=True)
        self._pump.start()

    def _copy_logs(self, log: IO[bytes]) -> None:
        for chunk in self.container.logs(stream=True, follow=True, stdout=True, stderr=True):
            log.write(chunk)
            log.flush()

    def wait(self) -> int:
        """Block until the container exits; 128+N (a signal, as docker reports it) becomes -N."""
        code = self.container.wait()["StatusCode"]
        if self._pump is not None:
            self._pump.join(timeout=30)
        self.container.remove(force=True)
        return -(code - 128) if 128 < code <= 128 + 64 else code

    def terminate(self) -> None:
        """SIGTERM to the entry point, so it can write a checkpoint."""
        self._signal("SIGTERM")

    def kill(self) -> None:
        """SIGKILL: the container ends now."""
        self._signal("SIGKILL")

    def _signal(self, name: str) -> None:
        import docker as sdk

        if self.container is None:
            return
        try:
            self.container.kill(signal=name)
        except sdk.errors.APIError:
            pass  # already exited: nothing to stop
