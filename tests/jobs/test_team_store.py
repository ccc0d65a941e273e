"""The team store: a real PostgreSQL server (tests/harness/postgres.py), two FACEOPS_HOMEs
acting as two machines that submit at once and read each other's versions."""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys

import pytest

from jobs.store import PostgresStore, RecordFrozen, Store
from tests.faults.helpers import REPO, custom_job
from tests.jobs.test_store import make


def machine(home, url: str, user: str) -> dict[str, str]:
    """The environment of one "machine": its own FACEOPS_HOME and login, the shared store."""
    return {**os.environ, "FACEOPS_HOME": str(home), "FACEOPS_STORE_URL": url, "USER": user, "LOGNAME": user,
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}


def faceops(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """``faceops ARGS`` as its own process on that machine."""
    return subprocess.run([sys.executable, "-c", "import cli; cli.main()", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_a_new_database_is_used_only_after_store_upgrade(postgres_server, monkeypatch, runner):
    url = postgres_server.database()
    monkeypatch.setenv("FACEOPS_STORE_URL", url)
    assert isinstance(Store(), PostgresStore)
    listing = runner("job", "list")
    assert listing.exit_code == 2 and "is at schema 0" in listing.output and "run faceops store upgrade" in listing.output
    doctor = runner("doctor")
    assert doctor.exit_code == 1 and "an upgrade is due" in doctor.output
    upgraded = runner("store", "upgrade")
    assert upgraded.exit_code == 0 and "applied schema 1" in upgraded.output and "applied schema 2" in upgraded.output
    assert "(up to date)" in runner("store", "upgrade").output
    assert runner("job", "list").output.strip() == "no jobs yet"
    assert runner("doctor").exit_code == 0


def test_round_trip_freeze_and_missing_on_postgres(team_store):
    store = Store()
    first = store.create(make())
    assert store.create(make(parent=1))["version"] == 2
    assert store.get("recog", 1) == first and [r["version"] for r in store.versions("recog")] == [1, 2]
    done = store.update("recog", 1, status="done", metrics={"loss": 0.5})
    assert [h["status"] for h in done["status_history"]] == ["queued", "done"]
    assert store.list(status="done") == [done]
    with pytest.raises(RecordFrozen, match="can no longer change"):
        store.update("recog", 1, metrics={"loss": 0.1})
    with pytest.raises(Exception, match="recog:9 does not exist; versions of recog: 1, 2"):
        store.get("recog", 9)


def _submit_many(home: str, url: str, count: int) -> None:
    os.environ.update(FACEOPS_HOME=home, FACEOPS_STORE_URL=url)
    store = Store()
    for _ in range(count):
        store.create(make(), parent_is_latest=True)


def test_concurrent_submits_from_two_machines_get_dense_versions_and_right_parents(team_store, tmp_path):
    """Four processes on two "machines" submit the same job at once: every number 1..40 once,
    each version's parent the one before it (the lock is the database's, not a file's)."""
    spawn = multiprocessing.get_context("spawn")
    procs = [spawn.Process(target=_submit_many, args=(str(tmp_path / home), team_store, 10))
             for home in ("a", "a", "b", "b")]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [proc.exitcode for proc in procs] == [0, 0, 0, 0]
    records = Store().versions("recog")
    assert [r["version"] for r in records] == list(range(1, 41))
    assert [r["parent"] for r in records] == [None, *range(1, 40)]


# The job both machines run: metrics rows and log lines that depend on the learning rate.
TRAIN = ("from jobs.core.contract import from_env, log_metrics\n"
         "lr = from_env().hyperparameters['lr']\n"
         "for step in range(1, 4):\n"
         "    print(f'step {step} lr {lr}', flush=True)\n"
         "    log_metrics(step=step, loss=round(lr / step, 4))\n")


def test_two_machines_share_versions(team_store, s3_env, s3_bucket, tmp_path):
    """Alice and Bob submit at once from their own FACEOPS_HOMEs; each lists, shows, diffs,
    reads the log and metrics of, and reruns the other's version; `job list --user` tells
    them apart. Only the store and the artifact root are shared."""
    artifacts = f"s3://{s3_bucket}/team/"
    alice, bob = (machine(tmp_path / user, team_store, user) | {"FACEOPS_STORE_ARTIFACTS": artifacts}
                  for user in ("alice", "bob"))
    spec = custom_job(tmp_path / "proj", name="shared", script=TRAIN, hyperparameters={"lr": 0.1})
    runs = [subprocess.Popen([sys.executable, "-c", "import cli; cli.main()", "job", "submit", str(spec), "--set", f"lr={lr}"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for env, lr in ((alice, 0.1), (bob, 0.2))]
    outcomes = [run.communicate(timeout=180) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outcomes
    for env, other in ((alice, "bob"), (bob, "alice")):
        versions = faceops(env, "job", "versions", "shared", "--json")
        assert versions.returncode == 0, versions.stderr
        records = json.loads(versions.stdout)
        assert [(r["version"], r["parent"], r["status"]) for r in records] == [(1, None, "done"), (2, 1, "done")]
        assert {r["user"] for r in records} == {"alice", "bob"}
        theirs = next(r for r in records if r["user"] == other)
        ref, lr = f"shared:{theirs['version']}", theirs["spec"]["hyperparameters"]["lr"]
        shown = faceops(env, "job", "show", ref)
        assert shown.returncode == 0 and f"by:        {other}@" in shown.stdout, shown.stderr
        logs = faceops(env, "job", "logs", ref)
        assert f"step 3 lr {lr}" in logs.stdout and "[faceops] done" in logs.stdout, logs.stdout + logs.stderr
        rows = json.loads(faceops(env, "job", "metrics", ref, "--json").stdout)
        assert [row["loss"] for row in rows] == [round(lr / step, 4) for step in (1, 2, 3)]
        listing = faceops(env, "job", "list", "--user", other)
        assert f"{ref} " in listing.stdout and listing.stdout.count("shared:") == 1
        diff = faceops(env, "job", "diff", "shared:1", "shared:2")
        assert diff.returncode == 0 and "hyperparameters.lr" in diff.stdout and "loss" in diff.stdout, diff.stdout
    rerun = faceops(alice, "job", "rerun", f"shared:{theirs['version']}", "--set", "lr=0.4")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    again = json.loads(faceops(bob, "job", "show", "shared:3", "--json").stdout)
    assert (again["parent"], again["user"], again["code"]["hash"]) == (theirs["version"], "alice", theirs["code"]["hash"])
    assert again["metrics"]["loss"] == 0.1333
    assert faceops(alice, "doctor").returncode == 0


def test_local_jobs_need_an_artifact_root_on_a_shared_store(team_store, tmp_path, runner):
    result = runner("job", "submit", custom_job(tmp_path / "proj"), "--detach")
    assert result.exit_code == 2 and "FACEOPS_STORE_ARTIFACTS=s3://BUCKET/PREFIX/" in result.output, result.output
    assert Store().list() == []


def test_literal_secrets_never_enter_a_shared_store(team_store, s3_env, s3_bucket, tmp_path, runner, monkeypatch):
    monkeypatch.setenv("FACEOPS_STORE_ARTIFACTS", f"s3://{s3_bucket}/team/")
    spec = custom_job(tmp_path / "proj", hyperparameters={"api_token": "s3cr3t-value"})
    result = runner("job", "submit", spec, "--detach")
    assert result.exit_code == 2 and "hyperparameters.api_token" in result.output
    assert "api_token: ${env:API_TOKEN}" in result.output and "s3cr3t-value" not in result.output
    assert Store().list() == []
    referenced = custom_job(tmp_path / "ok", hyperparameters={"api_token": "${env:API_TOKEN}"})
    monkeypatch.setenv("API_TOKEN", "s3cr3t-value")
    assert runner("job", "submit", referenced).exit_code == 0
    assert Store().get("fault-job", 1)["spec"]["hyperparameters"]["api_token"] == "${env:API_TOKEN}"


def test_a_store_url_of_another_kind_is_a_usage_error(monkeypatch, runner):
    monkeypatch.setenv("FACEOPS_STORE_URL", "mysql://db/faceops")
    result = runner("job", "list")
    assert result.exit_code == 2 and "expected sqlite:///PATH or postgresql://" in result.output


def test_a_running_version_is_readable_elsewhere_within_the_upload_lag(team_store, s3_env, s3_bucket, tmp_path):
    """Bob reads Alice's version while it runs: its log reaches him through the artifact root
    within a few upload rounds, and the final log once it ends. Carol follows it with `job logs
    --follow`, which fetches on its own (a follower that read only its first copy would miss
    every line after "halfway") and ends by itself when the version does."""
    from tests.harness.process import wait_for

    artifacts = f"s3://{s3_bucket}/team/"
    alice, bob = (machine(tmp_path / user, team_store, user) | {"FACEOPS_STORE_ARTIFACTS": artifacts}
                  for user in ("alice", "bob"))
    release = tmp_path / "release"
    script = ("import pathlib, time\nprint('halfway', flush=True)\ndeadline = time.time() + 120\n"
              f"while not pathlib.Path({str(release)!r}).exists() and time.time() < deadline:\n    time.sleep(0.2)\n"
              "print('finished', flush=True)\n")
    spec = custom_job(tmp_path / "proj", name="slow", script=script)
    assert faceops(alice, "job", "submit", spec, "--detach").returncode == 0
    wait_for(lambda: "halfway" in faceops(bob, "job", "logs", "slow:1").stdout, timeout=60,
             what="the running version's log on the other machine")
    assert json.loads(faceops(bob, "job", "show", "slow:1", "--json").stdout)["status"] == "running"
    carol = machine(tmp_path / "carol", team_store, "carol") | {"FACEOPS_STORE_ARTIFACTS": artifacts}
    followed = tmp_path / "followed.txt"
    with open(followed, "w") as out:
        follower = subprocess.Popen([sys.executable, "-c", "import cli; cli.main()", "job", "logs", "slow:1", "--follow"],
                                    stdout=out, stderr=subprocess.STDOUT, env=carol)
    try:
        wait_for(lambda: "halfway" in followed.read_text(), timeout=60, what="carol following the running version")
        release.touch()
        wait_for(lambda: "finished" in faceops(bob, "job", "logs", "slow:1").stdout, timeout=90,
                 what="the final log on the other machine")
        assert "[faceops] done" in faceops(bob, "job", "logs", "slow:1").stdout
        follower.wait(timeout=60)  # it ends by itself once the version has
    finally:
        follower.kill()
    lines = followed.read_text().splitlines()
    assert follower.returncode == 0 and lines.count("halfway") == lines.count("finished") == 1, lines
    assert any(line.startswith("[faceops] done") for line in lines), lines


def test_store_migrate_copies_a_personal_history_once(team_store, s3_env, s3_bucket, tmp_path):
    """Alice ran two versions on her laptop's SQLite store while Bob already ran one in the team
    store; migrating appends hers as 2 and 3 (parents renumbered), a second run copies nothing,
    and both read her versions from the team store afterwards."""
    artifacts = f"s3://{s3_bucket}/team/"
    bob = machine(tmp_path / "bob", team_store, "bob") | {"FACEOPS_STORE_ARTIFACTS": artifacts}
    laptop = {k: v for k, v in machine(tmp_path / "alice", team_store, "alice").items() if k != "FACEOPS_STORE_URL"}
    alice = laptop | {"FACEOPS_STORE_URL": team_store, "FACEOPS_STORE_ARTIFACTS": artifacts}
    spec = custom_job(tmp_path / "proj", name="shared", script=TRAIN, hyperparameters={"lr": 0.1})
    assert faceops(bob, "job", "submit", spec).returncode == 0
    for lr in (0.2, 0.3):
        assert faceops(laptop, "job", "submit", spec, "--set", f"lr={lr}").returncode == 0
    first = faceops(laptop | {"FACEOPS_STORE_ARTIFACTS": artifacts}, "store", "migrate", "--to", team_store, "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"copied": {"shared:1": "shared:2", "shared:2": "shared:3"}, "present": {},
                                        "skipped": []}
    again = faceops(laptop | {"FACEOPS_STORE_ARTIFACTS": artifacts}, "store", "migrate", "--to", team_store)
    assert again.returncode == 0 and again.stdout.strip().endswith("0 versions copied, 2 already there"), again.stdout
    records = json.loads(faceops(bob, "job", "versions", "shared", "--json").stdout)
    assert [(r["version"], r["parent"], r["user"]) for r in records] == [(1, None, "bob"), (2, None, "alice"), (3, 2, "alice")]
    assert [row["loss"] for row in json.loads(faceops(bob, "job", "metrics", "shared:3", "--json").stdout)] == [0.3, 0.15, 0.1]
    assert "step 3 lr 0.3" in faceops(alice, "job", "logs", "shared:3").stdout
    bobs = faceops(alice, "job", "logs", "shared:1").stdout
    assert "step 1 lr 0.1" in bobs and "lr 0.2" not in bobs  # Bob's version 1, not her laptop's
    assert "step 1 lr 0.2" in faceops(alice, "job", "logs", "shared:2").stdout
    assert faceops(alice, "doctor").returncode == 0
