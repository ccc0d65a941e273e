"""Items 4 and 9 of the fault run: a full disk under $FACEOPS_HOME, a dead supervisor behind a
busy store, and the failure line written once."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time

import pytest

from jobs.store import TERMINAL, Store
from tests.faults.helpers import cli, custom_job, tmpfs
from tests.harness.process import wait_for

FILL = """\
import os, pathlib
out = pathlib.Path(os.environ["FACEOPS_MODEL_DIR"]) / "filler.bin"
with open(out, "wb", buffering=0) as fh:
    while True:
        fh.write(b"x" * 65536)
"""


def test_job_that_fills_the_disk_is_recorded_failed_with_enospc(tmp_path, home_on_tmpfs):
    small_disk = home_on_tmpfs(20)
    spec = custom_job(tmp_path / "proj", script=FILL)
    result = cli("job", "submit", str(spec), "--detach")
    assert result.returncode == 0, result.stderr
    record = wait_for(lambda: (r := Store().get("fault-job", 1))["status"] in TERMINAL and r, timeout=90)
    assert record["status"] == "failed", record
    assert "No space left on device" in record["failure_reason"] or "ENOSPC" in record["failure_reason"]
    assert "supervisor" not in record["failure_reason"]
    # the disk is still full: reading commands work
    for args in (("job", "list"), ("job", "show", "fault-job:1"), ("job", "show", "fault-job:1", "--json"),
                 ("job", "versions", "fault-job"), ("job", "logs", "fault-job:1")):
        read = cli(*args)
        assert read.returncode == 0 and "Traceback" not in read.stderr, (args, read.stderr)
    assert json.loads(cli("job", "show", "fault-job:1", "--json").stdout)["status"] == "failed"
    log = (small_disk / "home" / "jobs" / "fault-job" / "1" / "job.log").read_text(errors="replace")
    assert sum(1 for line in log.splitlines() if line.startswith("[faceops] failed")) == 1, log[-2000:]


def test_supervisor_enospc_names_the_path(tmp_path, home_on_tmpfs):
    """The job is fine but its 8 MB output cannot be copied to a full disk: the reason is ENOSPC
    with the path, and the submit on that disk still reports cleanly."""
    small_disk = home_on_tmpfs(20)
    script = ("import os, pathlib\n"
              "(pathlib.Path(os.environ['FACEOPS_MODEL_DIR']) / 'model.bin').write_bytes(os.urandom(8 * 1024 * 1024))\n")
    out = small_disk / "outputs" / "model"
    spec = custom_job(tmp_path / "proj", script=script, extra=f"outputs:\n  model: {out}\n")
    filler = small_disk / "filler.bin"
    filler.write_bytes(b"\0" * (5 * 1024 * 1024))
    result = cli("job", "submit", str(spec))
    assert result.returncode == 1, result.stderr
    record = Store().get("fault-job", 1)
    assert record["status"] == "failed" and "ENOSPC" in record["failure_reason"], record["failure_reason"]
    assert str(small_disk) in record["failure_reason"]
    log = (small_disk / "home" / "jobs" / "fault-job" / "1" / "job.log").read_text()
    assert sum(1 for line in log.splitlines() if line.startswith("[faceops] failed")) == 1, log


def test_job_list_says_checking_instead_of_hanging(tmp_path):
    spec = custom_job(tmp_path / "proj", script="import time\ntime.sleep(60)\n")
    assert cli("job", "submit", str(spec), "--detach").returncode == 0
    pid = wait_for(lambda: Store().get("fault-job", 1)["backend_info"].get("supervisor_pid"))
    wait_for(lambda: Store().get("fault-job", 1)["status"] == "running")
    entry_point = wait_for(lambda: _group_of_child(pid))
    os.kill(pid, 9)
    holder = sqlite3.connect(Store().path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the store's write lock
    try:
        started = time.monotonic()
        listing = cli("job", "list", timeout=60)
        assert listing.returncode == 0 and "checking" in listing.stdout, listing.stderr
        assert time.monotonic() - started < 15
        holder.execute("ROLLBACK")
        assert wait_for(lambda: "failed" in (out := cli("job", "list").stdout) and out)
    finally:
        holder.close()
        try:
            os.killpg(entry_point, 9)
        except ProcessLookupError:
            pass  # it died with its supervisor, as it should

def _group_of_child(parent: int) -> int | None:
    """The process group of the entry point a supervisor started (killed along with the test)."""
    out = subprocess.run(["ps", "-eo", "pid,ppid,pgid"], capture_output=True, text=True).stdout
    for line in out.splitlines()[1:]:
        pid, ppid, pgid = map(int, line.split())
        if ppid == parent:
            return pgid
    return None


@pytest.fixture
def full_output_disk(tmp_path):
    """A 4 MB tmpfs for outputs only ($FACEOPS_HOME stays on the big disk), unmounted afterwards."""
    with tmpfs(tmp_path / "output-disk", 4) as mount:
        yield mount


def test_enospc_on_the_output_disk_names_that_disk(tmp_path, full_output_disk):
    """Item 11 of the second fault run: the reason names the full output folder and its free
    space, not the version folder's roomy disk."""
    script = ("import os, pathlib\n"
              "(pathlib.Path(os.environ['FACEOPS_MODEL_DIR']) / 'model.bin').write_bytes(os.urandom(8 * 1024 * 1024))\n")
    out = full_output_disk / "model"
    spec = custom_job(tmp_path / "proj", script=script, extra=f"outputs:\n  model: {out}\n")
    assert cli("job", "submit", str(spec)).returncode == 1
    reason = Store().get("fault-job", 1)["failure_reason"]
    assert "ENOSPC" in reason and f"writing {out}/model.bin" in reason, reason
    free = int(reason.split("(")[-1].split(" bytes free")[0])
    assert free <= shutil.disk_usage(full_output_disk).total, reason  # that disk's free space, not the home disk's
