"""The local backend's supervisor: ``python -m jobs.backends.supervisor NAME VERSION BUNDLE`` runs
one job version to a terminal state in a process of its own, detached from the CLI.

It lays out the container contract under the version folder, stages the inputs, runs the entry
point through a :class:`~jobs.backends.Runtime` (a subprocess, or a Docker container; several for
``instance_count > 1``: parameter-server roles for a training task, shards for a processing task,
whose parts it then merges), retries it after a failure up to ``resources.retries`` times, folds the
job's metrics into the record, uploads outputs and sets the terminal state. SIGTERM (``job stop``)
is passed on to the job, SIGKILL follows after the grace period.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from jobs import artifacts, diskspace, tracking
from jobs.backends import DEFAULT_GRACE, ContainerJob, Runtime, entry_argv, get_runtime, merge_parts, sharded
from jobs.backends.runtimes import ParameterServerRuntime, ShardRuntime
from jobs.core import storage
from jobs.core.bundle import extract_bundle
from jobs.core.config import setting
from jobs.core.contract import PARTS, Contract, final_metrics, log_metrics, unpack_model_archives
from jobs.core.errors import DataError, FaceopsError
from jobs.core.files import atomic_write
from jobs.core.secrets import read_secrets, reveal
from jobs.core.tasks import get_task
from jobs.given import as_given
from jobs.store import TERMINAL, Outbox, RecordFrozen, Store, moved, workdir

LOG_NAME = "job.log"


# How long a finished version's supervisor waits for an unreachable store to take its final state
# (store.outbox_seconds / FACEOPS_STORE_OUTBOX_SECONDS).
OUTBOX_SECONDS = 300.0
OUTBOX_RETRY_SECONDS = 2.0


def contract_for(record: dict[str, Any], folder: Path) -> Contract:
    """The contract's layout for a version, rooted at its local folder."""
    spec = record["spec"]
    return Contract(root=folder, channels=list(spec["inputs"]), outputs=list(spec["outputs"]))


class Supervisor:
    """Runs one version to a terminal state. One instance per supervisor process."""

    def __init__(self, name: str, version: int, bundle: Path) -> None:
        self.store = Store()
        self.record = self.store.get(name, version)
        self.folder = workdir(self.record)
        self.contract = contract_for(self.record, self.folder)
        self.bundle = bundle
        self.runtime: Runtime | None = None
        self.stopping = threading.Event()
        self.timed_out = False
        self.log: IO[bytes] | None = None
        self.outbox = Outbox(self.record)
        self.said: set[str] = set()

    def run(self) -> None:
        """Stage, run, upload; every way out of here leaves the record terminal."""
        if self.record["status"] in TERMINAL:
            return
        signal.signal(signal.SIGTERM, lambda *_: self._request_stop())
        self.folder.mkdir(parents=True, exist_ok=True)
        diskspace.ensure_reserve()
        with open(self.folder / LOG_NAME, "ab", buffering=0) as self.log:
            self.tracker = tracking.start(self.record, self._say)
            self.uploader = artifacts.Uploader(self.record, self._say, artifacts.root() if self.store.shared else None)
            try:
                self._advance("staging", backend_info={**self.record["backend_info"], "supervisor_pid": os.getpid()})
                self._stage()
                status, reason = self._run_attempts()
                if status == "done" and not self.stopping.is_set():
                    self._advance("uploading")
                    self._upload()
                self._finish(status, reason)
            except Exception as exc:  # noqa: BLE001 - any failure must end as a failed record, with its reason
                if self.runtime is not None:
                    self.runtime.kill()  # a version recorded failed must not have its job writing on
                self._finish("stopped" if self.stopping.is_set() else "failed", diskspace.describe(exc, self.folder))

    def _say(self, message: str) -> None:
        if self.log is not None:
            try:
                diskspace.with_reserve(lambda: self.log.write(f"[faceops] {message}\n".encode()))
            except OSError:
                pass  # a log that cannot be written must not keep the record from its final state

    def _advance(self, status: str, **fields: Any) -> None:
        self._say(status)
        self._record(status=status, **fields)

    def _record(self, status: str | None = None, reason: str | None = None, **fields: Any) -> None:
        """Store an update, or keep it in the version's outbox while the store is unreachable
        (the job goes on; the outbox is delivered when the store answers again)."""
        stored = self.outbox.update(self.store, status=status, reason=reason, **fields)
        if stored is not None:
            self.record = stored
            return
        self.record = moved(dict(self.record), status, reason, fields)
        self._say_once(f"the store {self.store.where} is unreachable; keeping its updates in {self.outbox.path} "
                       "until it answers")

    def _say_once(self, message: str) -> None:
        if message not in self.said:
            self.said.add(message)
            self._say(message)

    def _deliver(self) -> None:
        """Wait (at most :data:`OUTBOX_SECONDS`) for the store to take the kept updates; what is
        left then is delivered by the next command on this machine (LocalBackend.refresh)."""
        bound = float(setting("store", "outbox_seconds", ("FACEOPS_STORE_OUTBOX_SECONDS",), OUTBOX_SECONDS))
        deadline = time.monotonic() + bound
        while not self.outbox.flush(self.store) and time.monotonic() < deadline:
            time.sleep(OUTBOX_RETRY_SECONDS)
        if self.outbox.pending():
            self._say(f"the store is still unreachable after {bound:g}s; the final state stays in "
                      f"{self.outbox.path} for the next faceops command on this machine to deliver")

    def _finish(self, status: str, reason: str | None) -> None:
        metrics = final_metrics(self.contract.metrics_file)
        reason = diskspace.note_full(reason, self.folder) if status == "failed" else reason
        # Tracking first, bounded: its run is complete, or its warning said, before the user sees the end.
        self.tracker.finish(status, self.stopping)
        self._say(status + (f": {reason}" if reason and status != "done" else ""))
        if getattr(self, "uploader", None) is not None:
            self.uploader.finish()  # everything another machine reads is there before the record ends
        try:
            diskspace.with_reserve(lambda: self._record(status=status, reason=reason, metrics=metrics))
        except RecordFrozen:
            pass  # stopped before it started: the CLI already closed the record
        self._deliver()

    def _stage(self) -> None:
        self.contract.make_dirs()
        extract_bundle(self.bundle, self.contract.code_dir)
        # The job alone sees the literal secrets kept beside the record, so the file is its owner's only.
        hyperparameters = reveal(self.record["spec"]["hyperparameters"], read_secrets(self.folder))
        atomic_write(self.contract.hyperparameters_file, json.dumps(hyperparameters, indent=2), mode=0o600)
        for channel, uri in self.record["spec"]["inputs"].items():
            if self.stopping.is_set():
                return
            self._say(f"staging input {channel} from {uri}")
            storage.download(uri, self.contract.channel_dir(channel), progress=False)
            self._unpack(channel)

    def _unpack(self, channel: str) -> None:
        """A SageMaker model output staged as channel ``channel`` becomes its files, as the
        cloud bootstrap does in a container (:func:`jobs.core.contract.unpack_model_archives`)."""
        try:
            if unpack_model_archives(self.contract.channel_dir(channel)) is not None:
                self._say(f"unpacked the model archive of input {channel}")
        except ValueError as exc:
            raise DataError(f"inputs.{channel}: {as_given(str(exc), self.folder, self.record['spec']['inputs'])}") from None

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

        def make() -> Runtime:
            return get_runtime(spec["runtime"])

        if sharded(spec):  # an earlier attempt's parts must not be merged with this one's
            for name in spec["outputs"]:
                shutil.rmtree(self.contract.output_dir(name) / PARTS, ignore_errors=True)
        if count == 1:
            self.runtime = make()
        elif get_task(spec["task"]).kind == "training":
            self.runtime = ParameterServerRuntime(make, count)
        else:
            self.runtime = ShardRuntime(make, count)
        job = ContainerJob(argv=entry_argv(spec), contract=self.contract, env={}, image=spec.get("image"))
        self.runtime.start(job, self.log)
        groups = self.runtime.process_groups()
        if groups:  # through the outbox like every update: a store lost now must not fail a running job
            self._record(backend_info={**self.record["backend_info"], "process_groups": groups})
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
            return self._merge() if sharded(spec) else ("done", None)
        return "failed", self._failure_reason(code)

    def _merge(self) -> tuple[str, str | None]:
        """The shards' parts made one output, their metrics logged as one instance would have."""
        spec = self.record["spec"]
        self._say(f"merging the parts of {spec['resources']['instance_count']} shards")
        try:
            metrics = merge_parts(spec, {name: self.contract.output_dir(name) for name in spec["outputs"]})
        except FaceopsError as exc:
            return "failed", f"merging the shards' parts: {exc}"
        log_metrics(self.contract.metrics_file, **metrics)
        return "done", None

    def _failure_reason(self, code: int) -> str:
        """The job's own reason (``output/failure``, its staged paths named as the user gave them)
        or the end of its log, with the exit code."""
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        if self.contract.failure_file.exists():
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
        for name, uri in self.record["spec"]["outputs"].items():
            self._say(f"uploading output {name} to {uri}")
            with storage.reporting_retries(self._say):
                storage.upload(self.contract.output_dir(name), uri, progress=False,
                               into_existing=bool(self.record.get("outputs_into_existing")),
                               about={"version": f"{self.record['name']}:{self.record['version']}",
                                      "status": "done", "complete": True})


def main(argv: list[str]) -> None:
    name, version, bundle = argv
    Supervisor(name, int(version), Path(bundle)).run()


if __name__ == "__main__":
    main(sys.argv[1:])
