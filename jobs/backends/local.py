"""The local backend: runs a job on this machine under a detached supervisor process.

``start`` launches ``python -m jobs.backends.local NAME VERSION``. The supervisor lays out the
container contract under the version folder, stages the inputs, runs the entry point through a
:class:`~jobs.backends.Runtime` (a subprocess, or a Docker container), folds the job's metrics into
the record, uploads outputs and sets the terminal state. It outlives the CLI, so ``--detach`` works
and a closed terminal does not kill a training run. If the supervisor itself dies, the next look at
the record (``refresh``) marks the job failed instead of leaving it running forever.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from jobs import diskspace, tracking
from jobs.backends import Backend, ContainerJob, Launch, Runtime, get_runtime
from jobs.core.contract import Contract, final_metrics
from jobs.store import TERMINAL, Store, workdir

DEFAULT_GRACE = 10.0
LOG_NAME = "job.log"


class ProcessRuntime(Runtime):
    """Runs the entry point as a subprocess in its own process group (so stop reaches children)."""

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
                                     stdin=subprocess.DEVNULL, start_new_session=True)

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


class ParameterServerRuntime(Runtime):
    """``instance_count > 1`` on one machine: MXNet's own ``dist_sync`` roles (one scheduler, one
    server, N workers) as separate runtimes of the job's kind, told their roles and the scheduler's
    loopback address by the ``DMLC_*`` variables, as a cluster launcher would. The job succeeds when
    every role exits 0; the first failure stops the others."""

    def __init__(self, make: Callable[[], Runtime], workers: int) -> None:
        self.make = make
        self.workers = workers
        self.members: list[tuple[str, Runtime]] = []

    def start(self, job: ContainerJob, log: IO[bytes]) -> None:
        cluster = {"DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": str(_free_port()), "DMLC_NUM_SERVER": "1",
                   "DMLC_NUM_WORKER": str(self.workers), "DMLC_NODE_HOST": "127.0.0.1"}
        for role, count in (("scheduler", 1), ("server", 1), ("worker", self.workers)):
            for _ in range(count):
                member = self.make()
                member.start(replace(job, env={**job.env, **cluster, "DMLC_ROLE": role}), log)
                self.members.append((role, member))

    def wait(self) -> int:
        results: queue.Queue[int] = queue.Queue()
        for _, member in self.members:
            threading.Thread(target=lambda m=member: results.put(m.wait()), daemon=True).start()
        worst = 0
        for _ in self.members:
            code = results.get()
            if code != 0 and worst == 0:
                worst = code
                self.terminate()
        return worst

    def terminate(self) -> None:
        for _, member in self.members:
            member.terminate()

    def kill(self) -> None:
        for _, member in self.members:
            member.kill()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalBackend(Backend):
    name = "local"

    def plan(self, launch: Launch) -> dict[str, Any]:
        spec = launch.spec
        contract = _contract(launch.record, launch.workdir)
        return {
            "backend": "local",
            "runtime": spec["runtime"],
            "image": spec.get("image"),
            "argv": _argv(spec),
            "workdir": str(launch.workdir),
            "stage_inputs": {c: {"from": uri, "to": str(contract.channel_dir(c))} for c, uri in spec["inputs"].items()},
            "upload_outputs": {o: {"from": str(contract.output_dir(o)), "to": uri} for o, uri in spec["outputs"].items()},
            "env": contract.env(),
        }

    def start(self, launch: Launch) -> dict[str, Any]:
        launch.workdir.mkdir(parents=True, exist_ok=True)
        with open(launch.workdir / "supervisor.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "jobs.backends.local", launch.record["name"],
                                     str(launch.record["version"]), str(launch.bundle)],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=launch.workdir,
                                    env={**os.environ, "PYTHONPATH": _faceops_pythonpath()})
        return {"supervisor_pid": proc.pid}

    def refresh(self, record: dict[str, Any]) -> None:
        if record["status"] in TERMINAL:
            return
        pid = record.get("backend_info", {}).get("supervisor_pid")
        if pid and not _alive(pid):
            from jobs.store import RecordFrozen

            try:
                Store().update(record["name"], record["version"], status="failed",
                               reason=f"the local supervisor (pid {pid}) exited without finishing the job; see {workdir(record) / 'supervisor.log'}")
            except RecordFrozen:
                pass  # it finished between our read and this update

    def stop(self, record: dict[str, Any], grace: float = DEFAULT_GRACE) -> None:
        if record["status"] in TERMINAL:
            return
        folder = workdir(record)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "stop.json").write_text(json.dumps({"grace": grace, "at": time.time()}))
        pid = record.get("backend_info", {}).get("supervisor_pid")
        if pid and _alive(pid):
            os.kill(pid, signal.SIGTERM)

    def logs(self, record: dict[str, Any], follow: bool = False) -> Iterator[str]:
        path = workdir(record) / LOG_NAME
        store = Store()
        position = 0
        while True:
            if path.exists():
                with open(path, "rb") as fh:
                    fh.seek(position)
                    chunk = fh.read()
                # Only hand out complete lines; a partial last line waits for its newline.
                cut = chunk.rfind(b"\n") + 1 if follow else len(chunk)
                for line in chunk[:cut].decode(errors="replace").splitlines():
                    yield line
                position += cut
            if not follow:
                return
            current = store.get(record["name"], record["version"])
            if current["status"] in TERMINAL:
                follow = False
                continue
            self.refresh(current)
            time.sleep(0.2)


def _faceops_pythonpath() -> str:
    from jobs.core.bundle import faceops_root

    return os.pathsep.join(p for p in (str(faceops_root()), os.environ.get("PYTHONPATH")) if p)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of this process counts as gone
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """True for a process that has exited but not been reaped (its parent, often a container's
    init, may never reap it): it is dead, whatever ``kill(pid, 0)`` says."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] == "Z"


def _argv(spec: dict[str, Any]) -> list[str]:
    from jobs.core.tasks import get_task

    return list(spec.get("entrypoint") or get_task(spec["task"]).entrypoint)


def _contract(record: dict[str, Any], folder: Path) -> Contract:
    spec = record["spec"]
    return Contract(root=folder, channels=list(spec["inputs"]), outputs=list(spec["outputs"]))


class Supervisor:
    """Runs one version to a terminal state. One instance per supervisor process."""

    def __init__(self, name: str, version: int, bundle: Path) -> None:
        self.store = Store()
        self.record = self.store.get(name, version)
        self.folder = workdir(self.record)
        self.contract = _contract(self.record, self.folder)
        self.bundle = bundle
        self.runtime: Runtime | None = None
        self.stopping = threading.Event()
        self.timed_out = False
        self.log: IO[bytes] | None = None

    def run(self) -> None:
        """Stage, run, upload; every way out of here leaves the record terminal."""
        if self.record["status"] in TERMINAL:
            return
        signal.signal(signal.SIGTERM, lambda *_: self._request_stop())
        self.folder.mkdir(parents=True, exist_ok=True)
        diskspace.ensure_reserve()
        with open(self.folder / LOG_NAME, "ab", buffering=0) as self.log:
            self.tracker = tracking.start(self.record, self._say)
            try:
                self._advance("staging", backend_info={**self.record["backend_info"], "supervisor_pid": os.getpid()})
                self._stage()
                status, reason = self._run_attempts()
                if status == "done" and not self.stopping.is_set():
                    self._advance("uploading")
                    self._upload()
                self._finish(status, reason)
            except Exception as exc:  # noqa: BLE001 - any failure must end as a failed record, with its reason
                self._finish("stopped" if self.stopping.is_set() else "failed", diskspace.describe(exc, self.folder))

    def _say(self, message: str) -> None:
        if self.log is not None:
            try:
                diskspace.with_reserve(lambda: self.log.write(f"[faceops] {message}\n".encode()))
            except OSError:
                pass  # a log that cannot be written must not keep the record from its final state

    def _advance(self, status: str, **fields: Any) -> None:
        self._say(status)
        self.record = self.store.update(self.record["name"], self.record["version"], status=status, **fields)

    def _finish(self, status: str, reason: str | None) -> None:
        from jobs.store import RecordFrozen

        metrics = final_metrics(self.contract.metrics_file)
        reason = diskspace.note_full(reason, self.folder) if status == "failed" else reason
        self._say(status + (f": {reason}" if reason and status != "done" else ""))
        try:
            diskspace.with_reserve(lambda: self.store.update(self.record["name"], self.record["version"], status=status,
                                                             reason=reason, metrics=metrics))
        except RecordFrozen:
            pass  # stopped before it started: the CLI already closed the record
        self.tracker.finish(status)

    def _stage(self) -> None:
        from jobs.core import storage
        from jobs.core.bundle import extract_bundle

        self.contract.make_dirs()
        extract_bundle(self.bundle, self.contract.code_dir)
        self.contract.hyperparameters_file.write_text(json.dumps(self.record["spec"]["hyperparameters"], indent=2))
        for channel, uri in self.record["spec"]["inputs"].items():
            if self.stopping.is_set():
                return
            self._say(f"staging input {channel} from {uri}")
            storage.download(uri, self.contract.channel_dir(channel), progress=False)

    def _run_attempts(self) -> tuple[str, str | None]:
        """Run the entry point, again up to ``resources.retries`` times after a failure."""
        retries = self.record["spec"]["resources"].get("retries") or 0
        status, reason = "failed", None
        for attempt in range(retries + 1):
            if self.stopping.is_set():
                return "stopped", "stopped by user"
            if attempt:
                self._say(f"retry {attempt} of {retries}")
            status, reason = self._run_once()
            if status != "failed":
                break
        return status, reason

    def _run_once(self) -> tuple[str, str | None]:
        spec = self.record["spec"]
        if self.record["status"] != "running":
            self._advance("running")
        self.contract.failure_file.unlink(missing_ok=True)
        count = spec["resources"].get("instance_count") or 1
        self.runtime = (ParameterServerRuntime(lambda: get_runtime(spec["runtime"]), count) if count > 1
                        else get_runtime(spec["runtime"]))
        job = ContainerJob(argv=_argv(spec), contract=self.contract, env={}, image=spec.get("image"))
        self.runtime.start(job, self.log)
        if self.stopping.is_set():
            self._request_stop()
        timer = None
        if spec["resources"].get("max_runtime"):
            timer = threading.Timer(spec["resources"]["max_runtime"], self._time_out)
            timer.daemon = True
            timer.start()
        code = self.runtime.wait()
        if timer:
            timer.cancel()
        if self.timed_out:
            return "failed", f"max_runtime of {spec['resources']['max_runtime']}s exceeded"
        if self.stopping.is_set():
            return "stopped", "stopped by user"
        if code == 0:
            return "done", None
        return "failed", self._failure_reason(code)

    def _failure_reason(self, code: int) -> str:
        """The job's own reason (``output/failure``, its staged paths named as the user gave them)
        or the end of its log, with the exit code."""
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        if self.contract.failure_file.exists():
            from jobs.given import as_given

            return f"{as_given(self.contract.failure_file.read_text().strip(), self.folder, self.record['spec']['inputs'])} ({how})"
        tail = [line for line in (self.folder / LOG_NAME).read_text(errors="replace").splitlines()
                if line.strip() and not line.startswith("[faceops]")][-3:]
        return f"{how}" + (": " + " | ".join(tail) if tail else "")

    def _request_stop(self) -> None:
        """SIGTERM handler: pass SIGTERM on (the job may checkpoint), SIGKILL after the grace period."""
        self.stopping.set()
        if self.runtime is None:
            return
        grace = DEFAULT_GRACE
        request = self.folder / "stop.json"
        if request.exists():
            grace = float(json.loads(request.read_text()).get("grace", grace))
        self._say(f"stop requested: SIGTERM, SIGKILL after {grace:g}s")
        self.runtime.terminate()
        killer = threading.Timer(grace, self.runtime.kill)
        killer.daemon = True
        killer.start()

    def _time_out(self) -> None:
        self.timed_out = True
        self._say("max_runtime exceeded")
        if self.runtime is not None:
            self.runtime.terminate()
            killer = threading.Timer(DEFAULT_GRACE, self.runtime.kill)
            killer.daemon = True
            killer.start()

    def _upload(self) -> None:
        from jobs.core import storage

        for name, uri in self.record["spec"]["outputs"].items():
            self._say(f"uploading output {name} to {uri}")
            storage.upload(self.contract.output_dir(name), uri, progress=False)


def main(argv: list[str]) -> None:
    name, version, bundle = argv
    Supervisor(name, int(version), Path(bundle)).run()


if __name__ == "__main__":
    main(sys.argv[1:])
