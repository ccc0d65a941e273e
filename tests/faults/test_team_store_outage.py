"""A team store whose database goes away: a submit says so at once (bounded, no traceback), a
running version keeps running and its final state reaches the store when the database is back
(the outbox), and doctor checks the shared store. The database is a real PostgreSQL behind a
loopback proxy that stands in for the network link (tests/harness/net.py)."""
from __future__ import annotations

import json

import pytest

from jobs.store import CONNECT_SECONDS, Outbox, Store
from tests.faults.helpers import PassThrough, cli, custom_job, submit_here, supervise_here
from tests.harness.net import OutageProxy
from tests.harness.process import wait_for


@pytest.fixture
def link(postgres_server, s3_env, s3_bucket, monkeypatch):
    """An upgraded team store reached through an OutageProxy, with an artifact root."""
    url = postgres_server.database()
    proxy = OutageProxy(f"http://{postgres_server.host}:{postgres_server.port}")
    host_port = f"{postgres_server.host}:{postgres_server.port}"
    monkeypatch.setenv("FACEOPS_STORE_URL", url.replace(host_port, f"127.0.0.1:{proxy.port}"))
    monkeypatch.setenv("FACEOPS_STORE_ARTIFACTS", f"s3://{s3_bucket}/team/")
    Store().upgrade()
    yield proxy
    proxy.down()


def test_a_submit_to_a_database_that_is_down_says_so(link, tmp_path):
    spec = custom_job(tmp_path / "proj")
    link.down()
    for args in (("job", "submit", str(spec), "--detach"), ("job", "list"), ("doctor",)):
        result = cli(*args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (args, result.stderr)
        assert f"did not answer within {CONNECT_SECONDS}s" in result.stderr and "start it or check store.url" in result.stderr
    link.up()
    assert cli("job", "submit", str(spec)).returncode == 0
    doctor = cli("doctor")
    assert doctor.returncode == 0 and doctor.stdout.strip().endswith(": OK"), doctor.stdout + doctor.stderr


def test_a_running_version_outlives_a_lost_database(link, tmp_path):
    release = tmp_path / "release"
    script = ("import pathlib, time\nfrom jobs.core.contract import log_metrics\nprint('started', flush=True)\n"
              "deadline = time.time() + 120\n"
              f"while not pathlib.Path({str(release)!r}).exists() and time.time() < deadline:\n    time.sleep(0.2)\n"
              "log_metrics(step=1, loss=0.25)\nprint('finished', flush=True)\n")
    spec = custom_job(tmp_path / "proj", script=script)
    assert cli("job", "submit", str(spec), "--detach").returncode == 0
    wait_for(lambda: Store().get("fault-job", 1)["status"] == "running", what="the version running")
    link.down()
    release.touch()
    record = {"name": "fault-job", "version": 1}
    log = Outbox(record).path.parent / "job.log"
    outbox = Outbox(record).path
    kept = wait_for(lambda: outbox.exists() and (rows := [json.loads(line) for line in outbox.read_text().splitlines()])
                    and rows[-1]["status"] == "done" and rows, timeout=60, what="the final state kept in the outbox")
    assert "[faceops] done" in log.read_text() and "unreachable" in log.read_text()
    assert kept[-1]["status"] == "done" and kept[-1]["fields"]["metrics"] == {"loss": 0.25, "step": 1}
    link.up()
    done = wait_for(lambda: (r := Store().get("fault-job", 1))["status"] == "done" and r, timeout=60,
                    what="the final state delivered once the store is back")
    assert done["metrics"]["loss"] == 0.25 and not Outbox(record).pending()
    assert [h["status"] for h in done["status_history"]] == ["queued", "staging", "running", "uploading", "done"]


def test_the_next_command_delivers_what_a_supervisor_could_not(link, tmp_path, monkeypatch):
    """The database stays down longer than the supervisor waits: its final state stays in the
    outbox, and the first command on this machine once the database is back records it."""
    monkeypatch.setenv("FACEOPS_STORE_OUTBOX_SECONDS", "1")
    release = tmp_path / "release"
    script = ("import pathlib, time\ndeadline = time.time() + 120\n"
              f"while not pathlib.Path({str(release)!r}).exists() and time.time() < deadline:\n    time.sleep(0.2)\n")
    spec = custom_job(tmp_path / "proj", script=script)
    assert cli("job", "submit", str(spec), "--detach").returncode == 0
    wait_for(lambda: Store().get("fault-job", 1)["status"] == "running", what="the version running")
    link.down()
    release.touch()
    log = Outbox({"name": "fault-job", "version": 1}).path.parent / "job.log"
    wait_for(lambda: "final state stays in" in log.read_text(), timeout=60, what="the supervisor giving up")
    assert "still unreachable after 1s" in log.read_text()
    link.up()  # the supervisor exits right after saying so; the next look finds it gone
    wait_for(lambda: " done " in cli("job", "list").stdout, timeout=60, what="job list delivering the outbox")
    assert Store().get("fault-job", 1)["status"] == "done" and not Outbox({"name": "fault-job", "version": 1}).pending()


def test_the_store_lost_as_the_entry_point_starts_costs_no_update(link, tmp_path, monkeypatch):
    """The store goes away just after the entry point starts, when the supervisor records the
    job's process groups (the supervisor runs in this process, with the outage injected at that
    step, so the case does not depend on timing): that update waits in the outbox like every
    other, the job runs to its end and the version is done once the store is back. A supervisor
    that sends it straight to the store records the version failed with the store's error while
    its job runs on."""
    spec = custom_job(tmp_path / "proj", script="import time\ntime.sleep(1)\nprint('finished', flush=True)\n")
    record, bundle = submit_here(spec, monkeypatch)

    class LosesTheStore(PassThrough):
        """The link to the database drops once the job's process has started."""

        def start(self, job, log) -> None:
            self.runtime.start(job, log)
            link.down()

    monkeypatch.setenv("FACEOPS_STORE_OUTBOX_SECONDS", "1")
    supervise_here(record, bundle, monkeypatch, LosesTheStore)
    outbox = Outbox(record)
    log = (outbox.path.parent / "job.log").read_text()
    assert "finished" in log and "[faceops] done" in log and "[faceops] failed" not in log, log
    link.up()
    assert outbox.flush(Store())
    done = Store().get(record["name"], record["version"])
    assert done["status"] == "done" and done["backend_info"]["process_groups"], done["status_history"]
