"""How the local backend runs an entry point: a :class:`ProcessRuntime` (a subprocess), a
:class:`DockerRuntime` (a container of the job's image with the contract mounted at /opt/ml, the
layout SageMaker and ModelArts give it, so an entry point that works here works there) and, for
``instance_count > 1``, a :class:`ParameterServerRuntime` that runs MXNet's ``dist_sync`` roles
(training tasks) or a :class:`ShardRuntime` that runs one instance per shard (processing tasks),
as several runtimes of the job's kind.

The docker runtime bind-mounts the version's host folders part by part (inputs and
hyperparameters read-only), makes the extracted code bundle the working directory and puts it on
``PYTHONPATH``, requests GPUs when the job wants them and streams the container's output into the
job log. Stopping is SIGTERM (the job may checkpoint), then SIGKILL; the engine's init process is
PID 1 so the entry point gets SIGTERM's default action like any process. The container shares
the host network so it reaches the same storage endpoints and training peers. A container does
not die with the process that started it, so each one has a reaper: a small process of its own
that kills the container when the supervisor's end of a pipe closes, however the supervisor ends.
"""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from typing import IO, Callable

from images.engine import EngineError, client
from jobs.backends import ContainerJob, Runtime
from jobs.core import launch
from jobs.core.bundle import faceops_pythonpath
from jobs.core.lifeline import dies_with_this_process
from jobs.core.contract import CONTAINER_ROOT, Contract, shard_env
from jobs.core.errors import SpecError
from jobs.core.lazy import docker as sdk


class ProcessRuntime(Runtime):
    """Runs the entry point as a subprocess in its own process group (so stop reaches children)
    that the kernel kills if the supervisor dies (:mod:`jobs.core.lifeline`)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def start(self, job: ContainerJob, log: IO[bytes]) -> None:
        argv = list(job.argv)
        if argv and argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        code = str(job.contract.code_dir)
        env = {**os.environ, **job.contract.env(), **job.env, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (code, os.environ.get("PYTHONPATH")) if p)}
        self.proc = subprocess.Popen(argv, cwd=code, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, preexec_fn=dies_with_this_process())

    def process_groups(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None else []

    def wait(self) -> int:
        assert self.proc is not None
        return self.proc.wait()

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass


class GroupRuntime(Runtime):
    """Several runtimes of the job's kind, each with its own extra variables, run as one: the job
    succeeds when every member exits 0; the first failure stops the others."""

    def __init__(self, make: Callable[[], Runtime], envs: list[dict[str, str]]) -> None:
        self.make = make
        self.envs = envs
        self.members: list[Runtime] = []

    def start(self, job: ContainerJob, log: IO[bytes]) -> None:
        for env in self.envs:
            member = self.make()
            member.start(replace(job, env={**job.env, **env}), log)
            self.members.append(member)

    def wait(self) -> int:
        results: queue.Queue[int] = queue.Queue()
        for member in self.members:
            threading.Thread(target=lambda m=member: results.put(m.wait()), daemon=True).start()
        worst = 0
        for _ in self.members:
            code = results.get()
            if code != 0 and worst == 0:
                worst = code
                self.terminate()
        return worst

    def process_groups(self) -> list[int]:
        return [pgid for member in self.members for pgid in member.process_groups()]

    def terminate(self) -> None:
        for member in self.members:
            member.terminate()

    def kill(self) -> None:
        for member in self.members:
            member.kill()


class ParameterServerRuntime(GroupRuntime):
    """``instance_count > 1`` for a training task on one machine: MXNet's own ``dist_sync`` roles
    (one scheduler, one server, N workers, see :func:`jobs.core.launch.on_this_machine`) as
    separate runtimes of the job's kind, as a cluster launcher would start them."""

    def __init__(self, make: Callable[[], Runtime], workers: int) -> None:
        cluster = launch.on_this_machine(workers)
        super().__init__(make, [cluster.env(role) for role in cluster.roles])


class ShardRuntime(GroupRuntime):
    """``instance_count > 1`` for a processing task on one machine: N instances of the entry
    point, each told its shard by the contract's ``FACEOPS_SHARD_*`` variables, as N cloud
    instances would be; each writes its part, the supervisor merges them."""

    def __init__(self, make: Callable[[], Runtime], count: int) -> None:
        super().__init__(make, [shard_env(index, count) for index in range(count)])


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


def container_env(job: ContainerJob) -> dict[str, str]:
    """The contract's variables as the container sees them, the job's own, and the code path."""
    inside = Contract(root=CONTAINER_ROOT, channels=job.contract.channels, outputs=job.contract.outputs)
    return {**inside.env(), "PYTHONPATH": str(inside.code_dir), "PYTHONUNBUFFERED": "1", **job.env}


class DockerRuntime(Runtime):
    """One container per run; ``wait`` returns its exit code (negative for a signal) and removes it."""

    def __init__(self) -> None:
        self.container = None
        self._pump: threading.Thread | None = None
        self._reaper: subprocess.Popen | None = None

    def start(self, job: ContainerJob, log: IO[bytes]) -> None:
        """Create and start the container, then copy its output into ``log`` on a thread."""
        if not job.image:
            raise SpecError("runtime 'docker' needs an image: set `image:` in the job spec")
        job.contract.make_dirs()
        docker = client()
        requests = [sdk.types.DeviceRequest(count=-1, capabilities=[["gpu"]])] if job.gpus else None
        try:
            self.container = docker.containers.create(
                job.image, command=job.argv or None, environment=container_env(job), volumes=mounts(job.contract),
                working_dir=str(CONTAINER_ROOT / "code"), device_requests=requests, network_mode="host",
                labels={LABEL: str(job.contract.root)}, init=True, detach=True)
            self._reaper = _start_reaper(self.container.id, log)
            self.container.start()
        except sdk.errors.ImageNotFound:
            raise SpecError(f"image {job.image} is not on this Docker engine; build or pull it first") from None
        except sdk.errors.APIError as exc:
            if self.container is not None:
                self.container.remove(force=True)
            self._stop_reaper()
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
        self._stop_reaper()
        return -(code - 128) if 128 < code <= 128 + 64 else code

    def _stop_reaper(self) -> None:
        """End the reaper without its pipe closing first: the container is gone or never ran."""
        if self._reaper is not None:
            self._reaper.kill()
            self._reaper.wait()
            self._reaper.stdin.close()

    def terminate(self) -> None:
        """SIGTERM to the entry point, so it can write a checkpoint."""
        self._signal("SIGTERM")

    def kill(self) -> None:
        """SIGKILL: the container ends now."""
        self._signal("SIGKILL")

    def _signal(self, name: str) -> None:
        if self.container is None:
            return
        try:
            self.container.kill(signal=name)
        except sdk.errors.APIError:
            pass  # already exited: nothing to stop


# Blocks until every copy of the pipe's write end is closed: the supervisor holds the only one
# (Python's descriptors are not inherited), and the kernel closes it when the supervisor dies.
REAPER = "import sys; sys.stdin.buffer.read(); from jobs.backends.runtimes import reap; reap(sys.argv[1])"


def _start_reaper(container_id: str, log: IO[bytes]) -> subprocess.Popen:
    """The process that kills ``container_id`` once this one is gone; in a session of its own, so
    a signal to the supervisor's process group does not take it along."""
    try:
        out = log.fileno()
    except (AttributeError, OSError):  # a log in memory (the runtime's tests): say nothing
        out = subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-c", REAPER, container_id], stdin=subprocess.PIPE, stdout=out,
                            stderr=out, env={**os.environ, "PYTHONPATH": faceops_pythonpath()}, start_new_session=True)


def reap(container_id: str) -> None:
    """Remove the container, killing it if it still runs (its supervisor is gone, and with it
    whoever would have removed it), and say so in the job log (our stdout); each call to the
    engine is bounded by the client's 60 s timeout."""
    try:
        container = client().containers.get(container_id)
        running = container.status == "running"
        container.remove(force=True)
    except (sdk.errors.APIError, EngineError):
        return  # removed already, or no engine left to run it
    if running:
        print(f"[faceops] the supervisor is gone: container {container_id[:12]} killed", flush=True)
