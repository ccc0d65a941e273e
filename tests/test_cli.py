"""The job lifecycle through the CLI, as a user drives it: real supervisor processes, real
subprocess entry points, real files and a real S3 server."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.process import wait_for

from jobs.store import Store, workdir

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "line-fit"


@pytest.fixture
def line_fit(tmp_path) -> Path:
    """A private copy of the example job, so tests can edit its code."""
    folder = tmp_path / "line-fit"
    shutil.copytree(EXAMPLE, folder)
    return folder / "job.yaml"




def test_submit_rerun_versions_diff(runner, line_fit):
    result = runner("job", "submit", line_fit)
    assert result.exit_code == 0, result.output
    assert "epoch 60/60" in result.output and "line-fit:1 done" in result.output
    first = Store().get("line-fit", 1)
    assert first["status"] == "done" and first["parent"] is None
    assert first["metrics"]["epoch"] == 60 and first["metrics"]["loss"] < 0.5
    assert set(first["timings"]) >= {"queued", "staging", "running", "uploading"}
    assert first["inputs"]["train"]["size"] == (line_fit.parent / "data" / "points.csv").stat().st_size
    model = json.loads((workdir(first) / "model" / "model.json").read_text())
    assert abs(model["a"] - 3) < 0.5, model  # it really learned y = 3x + 1

    result = runner("job", "rerun", "line-fit:1", "--set", "lr=0.1")
    assert result.exit_code == 0, result.output
    second = Store().get("line-fit", 2)
    assert second["parent"] == 1 and second["spec"]["hyperparameters"] == {"lr": 0.1, "epochs": 60}
    assert second["code"]["hash"] == first["code"]["hash"]  # rerun keeps the exact code
    assert second["metrics"]["loss"] < first["metrics"]["loss"]

    result = runner("job", "diff", "line-fit:1", "line-fit:2", "--json")
    changed = {row["key"] for row in json.loads(result.output)}
    assert changed - {k for k in changed if k.startswith(("metrics.", "best."))} == {"hyperparameters.lr"}
    assert "metrics.loss" in changed and "best.loss (min)" in changed
    assert "hyperparameters.lr  0.05" in runner("job", "diff", "line-fit:1", "line-fit:2").output
    diff = json.loads(runner("job", "diff", "line-fit:1", "line-fit:2", "--all", "--json").output)
    everything = {row["key"] for row in diff}
    assert {"hyperparameters.epochs", "code.hash", "inputs.train.etag", "status"} <= everything

    table = runner("job", "versions", "line-fit").output
    assert "lr: 0.05 -> 0.1" in table and table.count("done") == 2
    shown = runner("job", "show", "line-fit").output
    assert "line-fit:2" in shown and "parent:    1" in shown and first["code"]["hash"][:12] in shown
    assert "line-fit:1" in runner("job", "list").output
    assert "fitted y =" in runner("job", "logs", "line-fit:1").output


def test_failing_entry_point_fails_with_its_reason(runner, line_fit):
    (line_fit.parent / "data" / "points.csv").write_text("x,y\n")
    result = runner("job", "submit", line_fit)
    assert result.exit_code == 1
    record = Store().get("line-fit")
    assert record["status"] == "failed"
    assert "no points found" in record["failure_reason"] and "exit code 1" in record["failure_reason"]

    (line_fit.parent / "fit_line.py").write_text("import sys\nprint('about to crash')\nraise SystemExit(7)\n")
    runner("job", "submit", line_fit)
    assert Store().get("line-fit")["failure_reason"] == "exit code 7: about to crash"


def test_stop_sends_sigterm_then_records_stopped(runner, line_fit):
    result = runner("job", "submit", line_fit, "--set", "epochs=1000", "--set", "sleep=0.05", "--detach")
    assert result.exit_code == 0 and "submitted line-fit:1" in result.output
    wait_for(lambda: "epoch 3/" in runner("job", "logs", "line-fit:1").output)
    result = runner("job", "stop", "line-fit:1", "--grace", "5")
    assert "line-fit:1 stopped" in result.output
    record = Store().get("line-fit", 1)
    assert record["status"] == "stopped" and record["failure_reason"] == "stopped by user"
    assert "SIGTERM: checkpoint saved" in runner("job", "logs", "line-fit:1").output
    assert 0 < record["metrics"]["epoch"] < 1000


def test_dead_supervisor_marks_the_job_failed(runner, line_fit):
    runner("job", "submit", line_fit, "--set", "epochs=1000", "--set", "sleep=0.05", "--detach")
    pid = wait_for(lambda: Store().get("line-fit", 1)["backend_info"].get("supervisor_pid"))
    wait_for(lambda: Store().get("line-fit", 1)["status"] == "running")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: "failed" in runner("job", "show", "line-fit:1").output)
    assert "supervisor" in Store().get("line-fit", 1)["failure_reason"]
    wait_for(lambda: _entry_point() is None, timeout=30, what="the entry point dying with its supervisor")


def _entry_point() -> int | None:
    """The process group of a running fit_line.py, if any is left."""
    out = subprocess.run(["ps", "-eo", "pid,ppid,pgid,stat,args"], capture_output=True, text=True).stdout
    for line in out.splitlines()[1:]:
        fields = line.split(None, 4)
        if "fit_line.py" in fields[4] and not fields[3].startswith("Z"):
            return int(fields[2])
    return None


def test_dry_run_touches_nothing(runner, line_fit, faceops_home):
    result = runner("job", "submit", line_fit, "--dry-run", "--set", "lr=0.2")
    assert result.exit_code == 0, result.output
    assert "would create line-fit:1" in result.output and '"FACEOPS_CHANNEL_TRAIN"' in result.output
    assert not (faceops_home / "jobs").exists() and not (faceops_home / "bundles").exists()
    assert runner("job", "list").output.strip() == "no jobs yet"


@pytest.mark.parametrize("args, message", [
    (["--set", "inputs.train=does/not/exist"], "does/not/exist"),
    (["--set", "resources.spot=perhaps"], "--set resources.spot=perhaps: resources.spot: expected true or false"),
])
def test_bad_submit_exits_2_and_creates_nothing(runner, line_fit, faceops_home, args, message):
    result = runner("job", "submit", line_fit, *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (faceops_home / "jobs").exists()


def test_unknown_version_exits_2(runner, line_fit):
    result = runner("job", "show", "line-fit:99")
    assert result.exit_code == 2 and "no job named 'line-fit'" in result.output


def test_s3_inputs_and_outputs(runner, line_fit, s3_bucket, s3_env):
    from jobs.core import storage

    storage.upload(line_fit.parent / "data", f"s3://{s3_bucket}/data/", progress=False)
    result = runner("job", "submit", line_fit, "--set", f"inputs.train=s3://{s3_bucket}/data/",
                    "--set", f"outputs.model=s3://{s3_bucket}/models/line-fit/")
    assert result.exit_code == 0, result.output
    record = Store().get("line-fit")
    assert record["inputs"]["train"]["uri"] == f"s3://{s3_bucket}/data/" and record["inputs"]["train"]["size"] > 0
    model = json.loads(storage.read_bytes(f"s3://{s3_bucket}/models/line-fit/model.json"))
    assert abs(model["a"] - 3) < 0.5
    assert storage.exists(f"s3://{s3_bucket}/models/line-fit/_manifest.json")
    assert s3_env.secret_key not in json.dumps(record)

    result = runner("job", "submit", line_fit, "--set", f"inputs.train=s3://{s3_bucket}/nothing-here/")
    assert result.exit_code == 2 and f"s3://{s3_bucket}/nothing-here/" in result.output


def test_installed_executable(line_fit):
    exe = Path(sys.executable).with_name("faceops")
    result = subprocess.run([str(exe), "job", "submit", str(line_fit), "--json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["status"] == "done"
    assert subprocess.run([str(exe), "--version"], capture_output=True, text=True).stdout.startswith("faceops, version")


def test_instance_count_starts_parameter_server_roles(runner, tmp_path):
    """Every role gets the DMLC variables; a failing worker fails the job and stops the rest."""
    script = ("import os, pathlib, sys, time\n"
              "role = os.environ['DMLC_ROLE']\n"
              "out = pathlib.Path(os.environ['FACEOPS_MODEL_DIR'])\n"
              "(out / f'{role}-{os.getpid()}').write_text(os.environ['DMLC_NUM_WORKER'] + ' ' + os.environ['DMLC_PS_ROOT_URI'])\n"
              "if role == 'worker' and os.environ.get('FAIL'): sys.exit(3)\n"
              "time.sleep(0.5 if role == 'worker' else 0)\n")
    (tmp_path / "role.py").write_text(script)
    (tmp_path / "job.yaml").write_text("name: roles\ntask: custom\nentrypoint: [python, role.py]\n"
                                       "resources: {instance_count: 2}\n")
    assert runner("job", "submit", tmp_path / "job.yaml").exit_code == 0
    record = Store().get("roles")
    roles = sorted(p.name.split("-")[0] for p in (workdir(record) / "model").iterdir())
    assert roles == ["scheduler", "server", "worker", "worker"]
    assert {p.read_text() for p in (workdir(record) / "model").iterdir()} == {"2 127.0.0.1"}

    (tmp_path / "role.py").write_text("import os\nos.environ['FAIL'] = '1'\n" + script)
    assert runner("job", "submit", tmp_path / "job.yaml").exit_code == 1
    assert Store().get("roles")["failure_reason"].startswith("exit code 3")


def test_root_help_lines_are_each_groups_own_first_sentence():
    """`faceops --help` lists the groups without importing them (cli.COMMANDS); each line must
    still say what the group's own docstring says, so the two cannot drift apart."""
    import click

    import cli
    from jobs.core.commandline import _first_sentence

    for name in cli.main.list_commands(None):
        command = cli.main.get_command(None, name)
        assert isinstance(command, click.Command) and command.name == name, name
        assert cli.COMMANDS[name][2] == (command.short_help or _first_sentence(command.help or "")), name
