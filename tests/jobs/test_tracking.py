"""MLflow tracking against real tracking stores: a local `mlflow server` (SQLite backend) on
loopback, started by the test, and a plain ``sqlite:///`` store. Jobs are real custom jobs run by
real supervisors; the assertions read MLflow back with its own client."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from jobs.store import Store, workdir
from tests.jobs.test_metrics import ROWS, SPEC, TRAIN

mlflow = pytest.importorskip("mlflow")

from tests.harness.mlflow import mlflow_server  # noqa: E402
from tests.harness.process import wait_for  # noqa: E402




def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == 0
    except ChildProcessError:
        return True


def client(uri: str):
    return mlflow.tracking.MlflowClient(tracking_uri=uri)


def run_of(uri: str, name: str, version: int):
    experiment = client(uri).get_experiment_by_name(name)
    if experiment is None:
        return None
    runs = client(uri).search_runs([experiment.experiment_id],
                                   filter_string=f"tags.`faceops.job` = '{name}' and tags.`faceops.version` = '{version}'")
    return runs[0] if runs else None


def history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client(uri).get_metric_history(run_id, key))


def job_rows(name: str, version: int) -> list[dict]:
    from jobs import metrics

    return metrics.rows(Store().get(name, version))


def check_run(uri: str, name: str, version: int) -> None:
    """The run holds exactly the job's rows, its parameters and the version record's tags."""
    record = Store().get(name, version)
    run = run_of(uri, name, version)
    assert run is not None and run.info.status == "FINISHED" and run.info.run_name == f"{name}:{version}"
    rows = job_rows(name, version)
    assert len(rows) == ROWS
    for key in ("loss", "acc", "epoch"):
        assert history(uri, run.info.run_id, key) == [(r["step"], pytest.approx(r[key])) for r in rows]
    assert run.data.params == {k: json.dumps(v) if not isinstance(v, str) else v
                               for k, v in record["spec"]["hyperparameters"].items()}
    tags = run.data.tags
    assert tags["faceops.job"] == name and tags["faceops.version"] == str(version)
    assert tags["faceops.parent"] == ("" if record["parent"] is None else str(record["parent"]))
    assert tags["faceops.code_hash"] == record["code"]["hash"] and tags["faceops.backend"] == "local"
    assert tags["faceops.image_digest"] == (record["image"]["digest"] or "")
    assert tags["faceops.workdir"] == str(workdir(record))


@pytest.fixture
def job_folder(tmp_path) -> Path:
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "train.py").write_text(TRAIN)
    (folder / "job.yaml").write_text(SPEC)
    return folder


def test_versions_log_live_to_a_tracking_server_with_lineage(runner, job_folder, tmp_path, monkeypatch):
    with mlflow_server(tmp_path / "server-a") as server:
        monkeypatch.setenv("FACEOPS_MLFLOW_URI", server.uri)
        assert runner("job", "submit", str(job_folder / "job.yaml")).exit_code == 0
        supervisor = Store().get("curves", 1)["backend_info"]["supervisor_pid"]
        wait_for(lambda: not alive(supervisor), 60, "the supervisor delivers and exits")
        assert runner("job", "rerun", "curves:1", "--set", "lr=0.1").exit_code == 0
        supervisor = Store().get("curves", 2)["backend_info"]["supervisor_pid"]
        wait_for(lambda: not alive(supervisor), 60, "the supervisor delivers and exits")
        for version in (1, 2):
            check_run(server.uri, "curves", version)
        first, second = run_of(server.uri, "curves", 1), run_of(server.uri, "curves", 2)
        assert second.data.tags["mlflow.parentRunId"] == first.info.run_id  # nested under its parent in the UI
        assert "mlflow.parentRunId" not in first.data.tags


def test_server_down_at_the_end_is_said_before_done_and_the_supervisor_lets_go(runner, job_folder, tmp_path, monkeypatch):
    go = tmp_path / "go"
    with mlflow_server(tmp_path / "server-b") as server:
        monkeypatch.setenv("FACEOPS_MLFLOW_URI", server.uri)
        monkeypatch.setenv("FACEOPS_TRACKING_FLUSH_SECONDS", "2")
        result = runner("job", "submit", str(job_folder / "job.yaml"), "--detach", "--set", "pause_at=20",
                        "--set", f"go_file={go}")
        assert result.exit_code == 0, result.output
        wait_for(lambda: (run := run_of(server.uri, "curves", 1)) and len(history(server.uri, run.info.run_id, "loss")) == 20,
                 90, "the first 20 rows reach the server while the job runs")
        server.stop()
        go.touch()
        record = wait_for(lambda: (r := Store().get("curves", 1))["status"] in ("done", "failed", "stopped") and r,
                          60, "the job ends while the server is down")
        assert record["status"] == "done" and record["metrics"]["step"] == ROWS
        wait_for(lambda: not alive(record["backend_info"]["supervisor_pid"]), 30, "the supervisor exits, not retrying on")
        log = (workdir(record) / "job.log").read_text()
        assert "warning: MLflow tracking store unreachable" in log
        # The user following the log sees how to send the rest before the job's last line.
        warning = log.index("warning: MLflow run of curves:1 incomplete")
        assert "send the rest with: faceops job export curves:1 --mlflow URI" in log
        assert log.rstrip().splitlines()[-1] == "[faceops] done" and warning < log.rindex("[faceops] done")
        server.start()
        assert runner("job", "export", "curves:1", "--mlflow", server.uri).exit_code == 0
        check_run(server.uri, "curves", 1)


def test_sigterm_ends_a_supervisor_flushing_to_a_server_that_is_down(runner, job_folder, tmp_path, monkeypatch):
    import signal

    go = tmp_path / "go"
    with mlflow_server(tmp_path / "server-c") as server:
        monkeypatch.setenv("FACEOPS_MLFLOW_URI", server.uri)
        monkeypatch.setenv("FACEOPS_TRACKING_FLUSH_SECONDS", "600")
        result = runner("job", "submit", str(job_folder / "job.yaml"), "--detach", "--set", "pause_at=5",
                        "--set", f"go_file={go}")
        assert result.exit_code == 0, result.output
        wait_for(lambda: run_of(server.uri, "curves", 1), 90, "the run is created while the job runs")
        server.stop()
        go.touch()
        log = workdir(Store().get("curves", 1)) / "job.log"
        wait_for(lambda: "[faceops] uploading" in log.read_text(), 60, "the job ends; its supervisor flushes")
        supervisor = Store().get("curves", 1)["backend_info"]["supervisor_pid"]
        os.kill(supervisor, signal.SIGTERM)
        wait_for(lambda: not alive(supervisor), 30, "the supervisor ends on SIGTERM instead of flushing for 10 minutes")
        assert "warning: MLflow run of curves:1 incomplete" in log.read_text()


def test_live_tracking_to_sqlite_keeps_artifacts_beside_the_database(runner, job_folder, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    monkeypatch.setenv("FACEOPS_MLFLOW_URI", uri)
    assert runner("job", "submit", str(job_folder / "job.yaml")).exit_code == 0
    record = Store().get("curves", 1)
    check_run(uri, "curves", 1)  # complete when the job is seen done: flushed before the end
    assert not (workdir(record) / "mlruns").exists()
    location = client(uri).get_experiment_by_name("curves").artifact_location
    assert location.removeprefix("file://").startswith(str(tmp_path / "store" / "mlruns")), location


def test_export_versions_that_already_ran_to_a_sqlite_store(runner, job_folder, tmp_path, monkeypatch):
    assert runner("job", "submit", str(job_folder / "job.yaml")).exit_code == 0
    assert runner("job", "rerun", "curves:1", "--set", "lr=0.1").exit_code == 0
    uri = f"sqlite:///{tmp_path / 'tracking.db'}"
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    result = runner("job", "export", "curves:1..2", "--mlflow", uri)
    assert result.exit_code == 0, result.output
    assert list((tmp_path / "project").iterdir()) == []  # no mlruns/ in the folder the user ran it from
    assert f"curves:2 -> run {run_of(uri, 'curves', 2).info.run_id} ({ROWS} rows)" in result.output
    for version in (1, 2):
        check_run(uri, "curves", version)
    assert run_of(uri, "curves", 2).data.tags["mlflow.parentRunId"] == run_of(uri, "curves", 1).info.run_id
    assert runner("job", "export", "curves", "--mlflow", uri).exit_code == 0  # again: nothing doubles
    check_run(uri, "curves", 1)
    assert len(client(uri).search_runs([client(uri).get_experiment_by_name("curves").experiment_id])) == 2


def test_no_uri_is_a_usage_error(runner):
    result = runner("job", "export", "curves", "--mlflow", "")
    assert result.exit_code == 2 and "no MLflow URI" in result.output


def test_a_recognition_run_links_its_model_even_without_an_outputs_section(tmp_path):
    from jobs.tracking import run_tags

    record = {"name": "recog", "version": 1, "parent": None, "code": {"hash": "c"}, "image": {"digest": None},
              "backend": "local", "task": "recognition", "spec": {"task": "recognition", "outputs": {}}}
    assert run_tags(record)["faceops.output.model"] == str(workdir(record) / "model")
