"""Item 3 of the second fault run: a job must not outlive its supervisor. After kill -9 of the
supervisor the entry point dies with it (PR_SET_PDEATHSIG), what it started is killed as soon as
anyone looks at the version, ``job stop`` reaches a leftover process of a version whose record is
already terminal, and a final record's values never change afterwards."""
from __future__ import annotations

import json
import os
import time

from jobs.core.contract import Contract
from jobs.store import TERMINAL, Store, workdir
from tests.faults.helpers import PassThrough, cli, custom_job, submit_here, supervise_here
from tests.harness.process import wait_for

# The entry point notes its pid, starts a child of its own (same process group) that also keeps
# writing, and writes a rising metric every 0.1 s: a survivor would change the version's values.
BUSY = """\
import json, os, pathlib, subprocess, sys, time
here = pathlib.Path(os.environ["FACEOPS_MODEL_DIR"])
child = subprocess.Popen([sys.executable, "-c", "import time\\nwhile True: time.sleep(0.1)"])
(here.parent / "pids.json").write_text(json.dumps({"entry": os.getpid(), "child": child.pid}))
step = 0
while True:
    step += 1
    with open(os.environ["FACEOPS_METRICS_FILE"], "a") as fh:
        fh.write(json.dumps({"time": time.time(), "step": step, "accuracy": step / 1e6}) + "\\n")
    (here / "model.bin").write_bytes(str(step).encode())
    time.sleep(0.1)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _started(tmp_path) -> tuple[int, dict]:
    spec = custom_job(tmp_path / "proj", script=BUSY)
    assert cli("job", "submit", str(spec), "--detach").returncode == 0
    supervisor = wait_for(lambda: Store().get("fault-job", 1)["backend_info"].get("supervisor_pid"))
    wait_for(lambda: Store().get("fault-job", 1)["backend_info"].get("process_groups"))
    folder = workdir(Store().get("fault-job", 1))
    noted = Contract(folder).model_dir.parent / "pids.json"
    pids = wait_for(lambda: noted.exists() and json.loads(noted.read_text()))
    return supervisor, pids


def _cleanup(pids: dict) -> None:
    for pid in pids.values():
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def test_job_dies_with_its_supervisor_and_its_record_stays_final(tmp_path):
    supervisor, pids = _started(tmp_path)
    try:
        os.kill(supervisor, 9)
        wait_for(lambda: not _alive(pids["entry"]), timeout=30)  # the kernel's doing, no command needed
        shown = cli("job", "show", "fault-job:1", "--json")
        record = json.loads(shown.stdout)
        assert record["status"] == "failed", record
        wait_for(lambda: not _alive(pids["child"]), timeout=30)
        best = json.loads(cli("job", "show", "fault-job:1", "--json").stdout)
        time.sleep(1)  # give a survivor time to write; none may be left
        assert json.loads(cli("job", "show", "fault-job:1", "--json").stdout) == best
        assert not _alive(pids["entry"]) and not _alive(pids["child"])
    finally:
        _cleanup(pids)


def test_job_stop_reaches_a_leftover_of_a_terminal_version(tmp_path):
    supervisor, pids = _started(tmp_path)
    try:
        # The supervisor dies first, so it cannot record the entry point's end itself (killed the
        # other way round, a quick supervisor closes the record before this test can).
        os.kill(supervisor, 9)
        wait_for(lambda: not _alive(supervisor))
        try:
            os.kill(pids["entry"], 9)
        except ProcessLookupError:
            pass  # the lifeline already took it with the supervisor
        # the record was closed by someone who did not kill the group (an older faceops, say)
        Store().update("fault-job", 1, status="failed", reason="supervisor gone")
        assert _alive(pids["child"])
        stopped = cli("job", "stop", "fault-job:1")
        assert stopped.returncode == 0 and "killed its leftover processes" in stopped.stdout, stopped.stdout
        wait_for(lambda: not _alive(pids["child"]), timeout=30)
        assert Store().get("fault-job", 1)["status"] in TERMINAL
    finally:
        _cleanup(pids)


def test_metrics_written_after_the_final_state_are_discarded(tmp_path):
    spec = custom_job(tmp_path / "proj", script="import json, os, time\n"
                      "open(os.environ['FACEOPS_METRICS_FILE'], 'a').write(json.dumps({'time': time.time(), 'step': 1, 'accuracy': 0.5}) + '\\n')\n")
    assert cli("job", "submit", str(spec)).returncode == 0
    before = json.loads(cli("job", "metrics", "fault-job:1", "--json").stdout)
    metrics = Contract(workdir(Store().get("fault-job", 1))).metrics_file
    with open(metrics, "a") as fh:
        fh.write(json.dumps({"time": time.time() + 5, "step": 2, "accuracy": 0.99}) + "\n")
    assert json.loads(cli("job", "metrics", "fault-job:1", "--json").stdout) == before


def test_a_supervisor_error_while_the_job_runs_ends_the_job(tmp_path, monkeypatch):
    """An unexpected error in the supervisor after the entry point started (injected where it
    notes the job's process groups; the supervisor runs in this process, so the kernel's
    parent-death signal cannot help) records the version failed with that error and kills the
    job: a version recorded failed must not have a job still writing into it."""
    record, bundle = submit_here(custom_job(tmp_path / "proj", script=BUSY), monkeypatch)
    pids = workdir(record) / "pids.json"

    class BreaksAfterStart(PassThrough):
        """Asking for the job's process groups fails once the job is up."""

        def process_groups(self) -> list[int]:
            wait_for(pids.exists, timeout=30, what="the job's processes up")
            raise RuntimeError("a bug in the supervisor")

    supervise_here(record, bundle, monkeypatch, BreaksAfterStart)
    failed = Store().get(record["name"], record["version"])
    assert failed["status"] == "failed" and "a bug in the supervisor" in failed["failure_reason"]
    started = json.loads(pids.read_text())
    wait_for(lambda: not _alive(started["entry"]) and not _alive(started["child"]), timeout=10,
             what="the job and its child killed")


def test_a_container_dies_with_its_supervisor(tmp_path, docker_env, base_image):
    """A docker-runtime job's container is killed and removed when its supervisor is killed
    (SIGKILL: no handler of ours runs); its reaper sees the supervisor's end of a pipe close and
    says so in the job log.
    Without the reaper the container runs on, writing into a version whose record says failed."""
    from jobs.backends.runtimes import LABEL

    spec = tmp_path / "job.yaml"
    spec.write_text(f"name: fault-job\ntask: custom\nruntime: docker\nimage: {base_image}\nentrypoint: "
                    '[sh, -c, "while true; do date > $FACEOPS_MODEL_DIR/alive; sleep 0.2; done"]\n')
    assert cli("job", "submit", str(spec), "--detach").returncode == 0
    engine = docker_env.client()

    def ours() -> list:
        return engine.containers.list(all=True, filters={"label": LABEL})

    wait_for(ours, timeout=60, what="the job's container running")
    supervisor = wait_for(lambda: Store().get("fault-job", 1)["backend_info"].get("supervisor_pid"))
    os.kill(supervisor, 9)
    wait_for(lambda: not ours(), timeout=60, what="the container killed and removed by its reaper")
    log = (workdir(Store().get("fault-job", 1)) / "job.log").read_text()
    assert "the supervisor is gone: container" in log, log
    assert json.loads(cli("job", "show", "fault-job:1", "--json").stdout)["status"] == "failed"
