"""The docker runtime against a real engine: a `custom`-style command in the busybox image reads
its channel and hyperparameters through the container contract and writes into the model
folder; stop is SIGTERM, then SIGKILL for a job that ignores it."""
from __future__ import annotations

import io
import json
import threading
import time

import pytest

from jobs.backends import ContainerJob, get_runtime
from jobs.core.contract import Contract
from jobs.core.errors import SpecError

READ_AND_WRITE = (
    'cat "$FACEOPS_CHANNEL_TRAIN/names.txt" > "$FACEOPS_MODEL_DIR/copied.txt" && '
    'cat "$FACEOPS_HYPERPARAMETERS" > "$FACEOPS_MODEL_DIR/hp.json" && '
    'echo "cwd=$(pwd) code=$(cat note.txt) path=$PYTHONPATH extra=$EXTRA" && '
    'echo "to stderr" >&2'
)


@pytest.fixture
def contract(tmp_path) -> Contract:
    """A version folder laid out like the local backend stages it."""
    contract = Contract(root=tmp_path / "version", channels=["train"], outputs=["model"])
    contract.make_dirs()
    (contract.channel_dir("train") / "names.txt").write_text("Alice\nBob\n")
    contract.hyperparameters_file.write_text(json.dumps({"lr": 0.1, "epochs": 3}))
    (contract.code_dir / "note.txt").write_text("bundle")
    return contract


def test_runs_custom_command_with_the_contract(docker_env, base_image, contract):
    runtime = get_runtime("docker")
    log = io.BytesIO()
    job = ContainerJob(argv=["sh", "-c", READ_AND_WRITE], contract=contract, env={"EXTRA": "yes"}, image=base_image)
    runtime.start(job, log)
    assert runtime.wait() == 0
    assert (contract.model_dir / "copied.txt").read_text() == "Alice\nBob\n"
    assert json.loads((contract.model_dir / "hp.json").read_text()) == {"lr": 0.1, "epochs": 3}
    output = log.getvalue().decode()
    assert "cwd=/opt/ml/code code=bundle path=/opt/ml/code extra=yes" in output
    assert "to stderr" in output
    assert not docker_env.client().containers.list(all=True, filters={"label": "org.faceops.job"})


def test_inputs_are_read_only_and_exit_code_comes_back(docker_env, base_image, contract):
    runtime = get_runtime("docker")
    log = io.BytesIO()
    job = ContainerJob(argv=["sh", "-c", 'echo x > "$FACEOPS_CHANNEL_TRAIN/new.txt" || exit 7'],
                       contract=contract, env={}, image=base_image)
    runtime.start(job, log)
    assert runtime.wait() == 7
    assert not (contract.channel_dir("train") / "new.txt").exists()
    assert "Read-only file system" in log.getvalue().decode()


def _started(log: io.BytesIO, marker: bytes, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while marker not in log.getvalue():
        assert time.monotonic() < deadline, log.getvalue()
        time.sleep(0.05)


def test_terminate_delivers_sigterm(docker_env, base_image, contract):
    runtime = get_runtime("docker")
    log = io.BytesIO()
    script = ('trap \'echo got-term > "$FACEOPS_CHECKPOINT_DIR/saved"; exit 3\' TERM; '
              'echo ready; while true; do sleep 0.1; done')
    runtime.start(ContainerJob(argv=["sh", "-c", script], contract=contract, env={}, image=base_image), log)
    _started(log, b"ready")
    runtime.terminate()
    assert runtime.wait() == 3
    assert (contract.checkpoint_dir / "saved").read_text() == "got-term\n"


def test_kill_ends_a_job_that_ignores_sigterm(docker_env, base_image, contract):
    runtime = get_runtime("docker")
    log = io.BytesIO()
    script = "trap '' TERM; echo ready; while true; do sleep 0.1; done"
    runtime.start(ContainerJob(argv=["sh", "-c", script], contract=contract, env={}, image=base_image), log)
    _started(log, b"ready")
    runtime.terminate()
    code = []
    waiter = threading.Thread(target=lambda: code.append(runtime.wait()))
    waiter.start()
    waiter.join(1.0)
    assert waiter.is_alive(), "the job ignores SIGTERM, so it must still be running"
    runtime.kill()
    waiter.join(30)
    assert code == [-9]


def test_needs_an_image(docker_env, contract):
    with pytest.raises(SpecError, match="needs an image"):
        get_runtime("docker").start(ContainerJob(argv=["true"], contract=contract, env={}), io.BytesIO())


def test_unknown_image_is_a_clear_error(docker_env, contract):
    with pytest.raises(SpecError, match="not on this Docker engine"):
        get_runtime("docker").start(ContainerJob(argv=["true"], contract=contract, env={}, image="nope/missing:1"), io.BytesIO())


def test_custom_job_runs_in_the_container_through_the_cli(runner, docker_env, base_image, tmp_path):
    """`faceops job submit` with `runtime: docker`: the local backend stages the code bundle and
    the input channel, the container reads them and writes the model folder, and the job is done."""
    from jobs.store import Store, workdir

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "names.txt").write_text("Carol\n")
    (tmp_path / "job.sh").write_text('echo "hello $(cat $FACEOPS_CHANNEL_TRAIN/names.txt)" > "$FACEOPS_MODEL_DIR/out.txt"\n'
                                     'cat "$FACEOPS_HYPERPARAMETERS"\n')
    (tmp_path / "job.yaml").write_text(
        f"name: in-docker\ntask: custom\nruntime: docker\nimage: {base_image}\n"
        "entrypoint: [sh, job.sh]\ninputs:\n  train: data/\nhyperparameters:\n  epochs: 2\n")
    result = runner("job", "submit", tmp_path / "job.yaml", "--wait")
    assert result.exit_code == 0, result.output
    record = Store().get("in-docker", 1)
    assert record["status"] == "done", record
    assert (workdir(record) / "model" / "out.txt").read_text() == "hello Carol\n"
    assert '"epochs": 2' in result.output
