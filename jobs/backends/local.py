"""The local backend: runs a job on this machine under a detached supervisor process.

``start`` launches ``python -m jobs.backends.supervisor NAME VERSION BUNDLE`` (see
:mod:`jobs.backends.supervisor`), which outlives the CLI, so ``--detach`` works and a closed
terminal does not kill a training run. If the supervisor itself dies, the next look at the record
(``refresh``) marks the job failed instead of leaving it running forever.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from jobs import artifacts
from jobs.backends import DEFAULT_GRACE, Backend, Launch, entry_argv
from jobs.backends.supervisor import LOG_NAME, contract_for
from jobs.core.bundle import faceops_pythonpath
from jobs.core.errors import FaceopsError, NotFoundError
from jobs.core.lifeline import kill_groups
from jobs.store import TERMINAL, Outbox, RecordFrozen, Store, is_here, is_ours, workdir


# How often `job logs --follow` fetches another home's version folder from the artifact root.
FETCH_SECONDS = 2.0


class LocalBackend(Backend):
    name = "local"

    def plan(self, launch: Launch) -> dict[str, Any]:
        spec = launch.spec
        contract = contract_for(launch.record, launch.workdir)
        return {
            "backend": "local",
            "runtime": spec["runtime"],
            "image": spec.get("image"),
            "argv": entry_argv(spec),
            "workdir": str(launch.workdir),
            "stage_inputs": {c: {"from": uri, "to": str(contract.channel_dir(c))} for c, uri in spec["inputs"].items()},
            "upload_outputs": {o: {"from": str(contract.output_dir(o)), "to": uri} for o, uri in spec["outputs"].items()},
            "env": contract.env(),
        }

    def start(self, launch: Launch) -> dict[str, Any]:
        launch.workdir.mkdir(parents=True, exist_ok=True)
        with open(launch.workdir / "supervisor.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "jobs.backends.supervisor", launch.record["name"],
                                     str(launch.record["version"]), str(launch.bundle)],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=launch.workdir,
                                    env={**os.environ, "PYTHONPATH": faceops_pythonpath()})
        return {"supervisor_pid": proc.pid}

    def refresh(self, record: dict[str, Any]) -> None:
        if record["status"] in TERMINAL or not is_here(record):  # another machine's pid means nothing here
            return
        pid = record.get("backend_info", {}).get("supervisor_pid")
        if pid and not _alive(pid) and Outbox(record).pending():
            Outbox(record).flush(Store())  # its final state, kept while the store was unreachable
            return
        if pid and not _alive(pid):
            self.leftovers(record)  # the job must not go on writing into a version now failed
            try:
                Store().update(record["name"], record["version"], status="failed",
                               reason=f"the local supervisor (pid {pid}) exited without finishing the job; see {workdir(record) / 'supervisor.log'}")
            except RecordFrozen:
                pass  # it finished between our read and this update

    def leftovers(self, record: dict[str, Any]) -> list[int]:
        """SIGKILL the entry point's process groups (kept in the record by the supervisor) once
        the supervisor is gone; a live supervisor still owns them."""
        info = record.get("backend_info", {})
        if info.get("supervisor_pid") and _alive(info["supervisor_pid"]):
            return []
        return kill_groups([int(g) for g in info.get("process_groups", [])])

    def stop(self, record: dict[str, Any], grace: float = DEFAULT_GRACE) -> None:
        if record["status"] in TERMINAL:
            return
        if not is_here(record):
            raise FaceopsError(f"{record['name']}:{record['version']} runs on {record['host']}; stop it there "
                               f"(faceops job stop {record['name']}:{record['version']} on that machine)")
        folder = workdir(record)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "stop.json").write_text(json.dumps({"grace": grace, "at": time.time()}))
        pid = record.get("backend_info", {}).get("supervisor_pid")
        if pid and _alive(pid):
            os.kill(pid, signal.SIGTERM)

    def logs(self, record: dict[str, Any], follow: bool = False) -> Iterator[str]:
        """The log in the version's folder; with ``follow``, until the version ends. A version
        another home runs is followed in this home's copy of its folder, fetched from the
        artifact root every FETCH_SECONDS (it is uploaded there at most LAG_SECONDS behind) and
        once more when the version ends, so the last lines come too."""
        ours = is_ours(record)
        if not workdir(record).is_dir() and (ours or not follow):  # another home's new version may have uploaded nothing yet
            raise NotFoundError(f"{record['name']}:{record['version']}: its version folder {workdir(record)} is "
                                "missing, so its log is gone (faceops doctor lists such versions)")
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
            time.sleep(0.2 if ours else FETCH_SECONDS)
            current = store.get(record["name"], record["version"])
            if not ours:
                artifacts.localized(current)  # fetched again while live, and once more as it ends
            if current["status"] in TERMINAL:
                follow = False
                continue
            self.refresh(current)


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
