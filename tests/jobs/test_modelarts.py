"""The ModelArts backend through the CLI: Huawei's real SDK (request classes, serialisation, AK/SK
signing) against a loopback ModelArts (tests/harness/modelarts.py) that checks every signature, and a
real S3 server (SeaweedFS) standing in for OBS for inputs, the code bundle and the job's outputs."""
from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from jobs.store import Store, workdir
from tests.harness.modelarts import ModelArtsServer
from jobs.core.contract import BOOTSTRAP_PATH, IMAGE_PYTHON, JOB_CHANNEL, RESUME_CHANNEL
from tests.jobs.cloud import (METRICS_JOB, REPO, printed_metrics, pushed_job, refused, run_bootstrap, stage_bundle,
                              stage_job_file, training_code)

SWR = "swr.cn-north-4.myhuaweicloud.com"
DIGEST = "sha256:" + "cd" * 32


@pytest.fixture(scope="module")
def modelarts_server():
    with ModelArtsServer("AK" + secrets.token_hex(8).upper(), secrets.token_hex(20), secrets.token_hex(16)) as server:
        yield server


@pytest.fixture
def modelarts(modelarts_server, s3_env, fast_cloud, monkeypatch) -> ModelArtsServer:
    state = modelarts_server.state
    state.jobs.clear(), state.logs.clear(), state.requests.clear(), state.quota_flavors.clear()
    state.images = {"faceops/train:gpu", f"faceops/train@{DIGEST}"}
    state.throttle, state.log_window = 0, 5 * 1024 * 1024
    monkeypatch.setenv("HUAWEICLOUD_SDK_AK", state.access_key)
    monkeypatch.setenv("HUAWEICLOUD_SDK_SK", state.secret_key)
    monkeypatch.setenv("HUAWEICLOUD_SDK_PROJECT_ID", state.project_id)
    monkeypatch.setenv("HUAWEICLOUD_SDK_REGION", "cn-north-4")
    monkeypatch.setenv("FACEOPS_MODELARTS_ENDPOINT", modelarts_server.endpoint)
    return modelarts_server


@pytest.fixture
def spec(tmp_path, s3_env, s3_bucket) -> Path:
    """The seed tutorial's recognition job as a spec: RecordIO on OBS, an SWR image, a GPU flavor."""
    s3_env.client().put_object(Bucket=s3_bucket, Key="recognition_train_data/cele.rec", Body=b"r" * 500)
    training_code(tmp_path)
    return pushed_job(tmp_path, f"{SWR}/faceops/train:gpu", DIGEST, f"""\
name: face-recognition
task: custom
backend: modelarts
image: {SWR}/faceops/train:gpu
entrypoint: [python, train.py, --log-every, "10"]
code: code
inputs:
  train: s3://{s3_bucket}/recognition_train_data/
outputs:
  model: s3://{s3_bucket}/models/face-recognition/
hyperparameters: {{lr: 0.1, epochs: 20, network: r50, flip: true}}
resources: {{instance_type: modelarts.p3.large.public, instance_count: 2, max_runtime: 90m, retries: 2}}
""")


def test_dry_run_shows_the_request_without_keys(runner, modelarts, spec, s3_bucket):
    result = runner("job", "submit", spec, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    plan = out["plan"]
    assert plan["api"] == f"POST /v2/{modelarts.state.project_id}/training-jobs"
    assert plan["note"] == ("max_runtime 90m is rounded up to auto_stop 2 HOURS: ModelArts stops jobs in whole hours, "
                            "so this one may run (and bill) up to 2h")
    assert modelarts.state.secret_key not in result.output and modelarts.state.access_key not in result.output
    body = plan["request"]
    code_hash = out["record"]["code"]["hash"]
    name = body["metadata"]["name"]
    assert name.startswith("face-recognition-v1-")
    assert body["kind"] == "job"
    assert body["metadata"]["annotations"] == {"faceops/job": "face-recognition", "faceops/version": "1",
                                               "faceops/code": code_hash[:12], "faceops/image-digest": DIGEST,
                                               "fault-tolerance/job-retry-num": "2"}
    algorithm = body["algorithm"]
    # Interpreter and bootstrap by absolute path; no parameters on the command (they travel as a file).
    assert algorithm["command"] == ("/opt/venv/bin/python3 /opt/faceops/bin/faceops-cloud-bootstrap modelarts "
                                    "python train.py --log-every 10 --faceops-parameters")
    assert "parameters" not in algorithm
    assert plan["uploads"][-2:] == [
        {"from": "job file", "to": f"s3://{s3_bucket}/faceops/jobs/{name}/config/hyperparameters.json"},
        {"from": "job file", "to": f"s3://{s3_bucket}/faceops/checkpoints/{name}/.faceops-checkpoints"}]
    assert algorithm["engine"] == {"image_url": f"faceops/train@{DIGEST}"}  # the pushed digest, not the tag
    assert algorithm["inputs"] == [
        {"name": "train", "local_dir": "/opt/ml/input/data/train", "access_method": "env",
         "remote": {"obs": {"obs_url": f"/{s3_bucket}/recognition_train_data/"}}},
        {"name": "faceops_code", "local_dir": "/opt/ml/input/data/faceops_code", "access_method": "env",
         "remote": {"obs": {"obs_url": f"/{s3_bucket}/faceops/bundles/{code_hash}/"}}},
        {"name": "faceops_job", "local_dir": "/opt/ml/input/data/faceops_job", "access_method": "env",
         "remote": {"obs": {"obs_url": f"/{s3_bucket}/faceops/jobs/{name}/config/"}}},
        {"name": "faceops_resume", "local_dir": "/opt/ml/input/data/faceops_resume", "access_method": "env",
         "remote": {"obs": {"obs_url": f"/{s3_bucket}/faceops/checkpoints/{name}/"}}}]
    assert algorithm["outputs"] == [
        {"name": "model", "local_dir": "/opt/ml/model", "access_method": "env",
         "remote": {"obs": {"obs_url": f"/{s3_bucket}/models/face-recognition/"}}},
        {"name": "faceops_output", "local_dir": "/opt/ml/output/faceops", "access_method": "env",
         "remote": {"obs": {"obs_url": f"/{s3_bucket}/faceops/jobs/{name}/output/"}}},
        # Checkpoints synced to OBS under the remote job's unique name, and downloaded again (faceops_resume).
        {"name": "faceops_checkpoints", "local_dir": "/opt/ml/checkpoints", "access_method": "env",
         "remote": {"obs": {"obs_url": f"/{s3_bucket}/faceops/checkpoints/{name}/"}}}]
    assert algorithm["environments"] == {"FACEOPS_CHANNELS": "train", "FACEOPS_OUTPUTS": "model",
                                         "FACEOPS_PARAMETER_SERVER": "1"}
    assert body["spec"] == {"resource": {"flavor_id": "modelarts.p3.large.public", "node_count": 2},
                            "log_export_path": {"obs_url": f"/{s3_bucket}/faceops/jobs/{name}/logs/"},
                            "auto_stop": {"time_unit": "HOURS", "duration": 2}}
    assert modelarts.state.requests == [] and Store().list() == []


def test_training_job_lifecycle_through_the_sdk(runner, modelarts, spec, s3_env, s3_bucket):
    planned = json.loads(runner("job", "submit", spec, "--dry-run", "--json").output)["plan"]["request"]
    result = runner("job", "submit", spec, "--detach")
    assert result.exit_code == 0, result.output
    info = Store().get("face-recognition", 1)["backend_info"]
    job_id = info["job_id"]
    assert info["remote_name"] == planned["metadata"]["name"]
    assert info["console"].endswith(job_id) and "region=cn-north-4" in info["console"]
    (method, path, body), = modelarts.state.requests
    assert (method, path) == ("POST", f"/v2/{modelarts.state.project_id}/training-jobs")
    assert body == planned  # field by field, what the dry run showed is what the SDK sent
    assert modelarts.state.auth_checked >= 1
    bundle = s3_env.client().get_object(Bucket=s3_bucket, Key=f"faceops/bundles/{Store().get('face-recognition', 1)['code']['hash']}/code.tar.gz")
    with tarfile.open(fileobj=io.BytesIO(bundle["Body"].read())) as tar:
        assert "train.py" in tar.getnames()

    for phase, ours in (("Creating", "queued"), ("Pending", "queued"), ("Running", "running")):
        modelarts.set_phase(job_id, phase)
        assert json.loads(runner("job", "show", "face-recognition", "--json").output)["status"] == ours

    runner("job", "show", "face-recognition")
    modelarts.append_log(job_id, "worker-0", "epoch 1 loss 3.2\nepoch 2 loss 2.1\n")
    modelarts.append_log(job_id, "worker-1", "worker 1 joined\n")
    assert runner("job", "logs", "face-recognition").output.splitlines() == [
        "[worker-0] epoch 1 loss 3.2", "[worker-0] epoch 2 loss 2.1", "[worker-1] worker 1 joined"]

    s3_env.client().put_object(Bucket=s3_bucket, Key=f"faceops/jobs/{info['remote_name']}/output/metrics.jsonl",
                               Body=b'{"epoch": 20, "lfw": 0.991}\n')
    modelarts.set_phase(job_id, "Completed")
    follow = runner("job", "logs", "face-recognition", "--follow")
    assert follow.exit_code == 0 and follow.output.count("worker 1 joined") == 1
    done = Store().get("face-recognition", 1)
    assert done["status"] == "done" and done["metrics"] == {"epoch": 20, "lfw": 0.991}
    searches = [r for r in modelarts.state.requests if r[1].endswith("/training-job-searches")]
    assert searches == []  # no collision, no search


def test_failed_job_reports_the_task_exit(runner, modelarts, spec):
    assert runner("job", "submit", spec, "--detach").exit_code == 0
    job_id = Store().get("face-recognition", 1)["backend_info"]["job_id"]
    modelarts.set_phase(job_id, "Failed", secondary_phase="Failed",
                        task_statuses=[{"task": "worker-0", "exit_code": 137, "message": "Out of memory"}])
    shown = runner("job", "show", "face-recognition")
    record = Store().get("face-recognition", 1)
    assert record["status"] == "failed" and record["failure_reason"] == "worker-0: exit code 137: Out of memory"
    assert "Out of memory" in shown.output


def test_stop_terminates_the_job(runner, modelarts, spec):
    assert runner("job", "submit", spec, "--detach").exit_code == 0
    job_id = Store().get("face-recognition", 1)["backend_info"]["job_id"]
    modelarts.set_phase(job_id, "Running")
    assert runner("job", "stop", "face-recognition", "--no-wait").exit_code == 0
    assert ("POST", f"/v2/{modelarts.state.project_id}/training-jobs/{job_id}/actions", {"action_type": "terminate"}) in modelarts.state.requests
    modelarts.set_phase(job_id, "Terminated")
    assert "face-recognition:1 stopped" in runner("job", "stop", "face-recognition").output


@pytest.mark.parametrize("variable, expected", [
    ("HUAWEICLOUD_SDK_AK", "no access key (AK); set HUAWEICLOUD_SDK_AK or modelarts.ak in $FACEOPS_HOME/config.yaml"),
    ("HUAWEICLOUD_SDK_SK", "no secret key (SK); set HUAWEICLOUD_SDK_SK or modelarts.sk"),
    ("HUAWEICLOUD_SDK_PROJECT_ID", "no project id (My Credentials > Projects); set HUAWEICLOUD_SDK_PROJECT_ID or modelarts.project_id"),
])
def test_missing_credentials_name_the_setting(runner, modelarts, spec, monkeypatch, variable, expected):
    monkeypatch.delenv(variable)
    output = refused(runner, spec, "--detach")
    assert expected in output, output
    assert modelarts.state.requests == []


def test_a_dry_run_names_every_missing_setting_at_once(runner, modelarts, spec, monkeypatch):
    for name in ("HUAWEICLOUD_SDK_AK", "HUAWEICLOUD_SDK_SK", "HUAWEICLOUD_SDK_PROJECT_ID"):
        monkeypatch.delenv(name)
    output = refused(runner, spec, "--dry-run", "--set", "resources.instance_type=")
    assert "modelarts: 4 things to set before this job can run" in output, output
    for expected in ("resources.instance_type: ModelArts needs a flavor", "no access key (AK)", "no secret key (SK)",
                     "no project id"):
        assert expected in output, output
    assert modelarts.state.requests == []


def test_missing_region_without_endpoint(runner, modelarts, spec, monkeypatch):
    monkeypatch.delenv("HUAWEICLOUD_SDK_REGION")
    monkeypatch.delenv("FACEOPS_MODELARTS_ENDPOINT")
    output = refused(runner, spec, "--dry-run")
    assert "no region, like cn-north-4; set HUAWEICLOUD_SDK_REGION" in output


def test_wrong_secret_key_is_refused_by_the_signature_check(runner, modelarts, spec, monkeypatch):
    monkeypatch.setenv("HUAWEICLOUD_SDK_SK", "not-the-secret")
    output = refused(runner, spec, "--detach")
    assert "refused the credentials" in output and "verify aksk signature fail" in output
    assert "not-the-secret" not in output


def test_image_outside_swr(runner, modelarts, spec):
    output = refused(runner, spec, "--set", "image=ghcr.io/team/train:gpu", "--dry-run")
    assert "not in SWR" in output and "faceops image push" in output


def test_image_missing_from_swr_passes_the_service_message_on(runner, modelarts, spec):
    output = refused(runner, spec, "--set", f"image={SWR}/faceops/train:never-pushed", "--detach")
    assert "Image faceops/train:never-pushed does not exist in SWR" in output
    assert Store().get("face-recognition", 1)["status"] == "failed"


def test_flavor_rejected_and_quota(runner, modelarts, spec):
    output = refused(runner, spec, "--set", "resources.instance_type=modelarts.p9.huge", "--detach")
    assert "Flavor modelarts.p9.huge is not supported" in output
    modelarts.state.quota_flavors.add("modelarts.p3.large.public")
    output = refused(runner, spec, "--detach")
    assert "ModelArts quota reached" in output and "ModelArts.0116: The expected modelarts.p3.large.public nodes exceeds the quota limit" in output


def test_throttling_backs_off(runner, modelarts, spec, monkeypatch):
    modelarts.state.throttle = 2
    assert runner("job", "submit", spec, "--detach").exit_code == 0
    assert len(modelarts.state.jobs) == 1 and len(modelarts.state.requests) == 3
    monkeypatch.setenv("FACEOPS_CLOUD_MAX_ATTEMPTS", "2")
    modelarts.state.throttle = 5
    output = refused(runner, spec, "--set", "lr=0.05", "--detach")
    assert "still throttling after 2 tries" in output


def test_name_collision_names_the_existing_job(runner, modelarts, spec):
    planned = json.loads(runner("job", "submit", spec, "--dry-run", "--json").output)["plan"]["request"]
    modelarts.state.jobs["existing-id"] = {**planned, "metadata": {**planned["metadata"], "id": "existing-id"},
                                           "status": {"phase": "Running"}}
    output = refused(runner, spec, "--detach")
    assert "already exists" in output and "job id existing-id, Running" in output


SHOW = ("import json, os, sys\nfrom jobs.core.contract import from_env\njob = from_env()\n"
        "(job.model_dir / 'seen.json').write_text(json.dumps({'hp': job.hyperparameters, 'argv': sys.argv[1:],\n"
        "    'train': str(job.channel('train')), 'uid': os.getuid(), 'checkpoints': sorted(os.listdir(job.checkpoint_dir))}))\n")


def download_obs(s3_env, obs_url: str, dest: Path) -> None:
    """What ModelArts does for an input before the container starts: the OBS folder's objects into ``dest``."""
    bucket, _, prefix = obs_url.strip("/").partition("/")
    dest.mkdir(parents=True, exist_ok=True)
    for item in s3_env.client().list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", []):
        target = dest / item["Key"][len(prefix) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(s3_env.client().get_object(Bucket=bucket, Key=item["Key"])["Body"].read())


def container_run(modelarts, s3_env, job_id: str, root: Path, tmp_path: Path, access: str | None = None,
                  program: str = SHOW, shell: bool = True, extra: dict[str, str] | None = None):
    """Node 0's container of a created job, as ModelArts starts it (tests/harness/modelarts.py),
    run here with its /opt/ml at ``root``, faceops' own inputs downloaded from the object storage
    the submit staged them on, ``program`` as the spec's train.py, and the command read through a
    shell or not (``shell``); ``access`` overrides every channel's access_method (None: as
    submitted) to see what a job edited in the console would pass. The image's interpreter and
    bootstrap (named by absolute path) are this Python and the checkout's; the start folder is an
    empty stand-in for /home/ma-user."""
    submitted = modelarts.state.jobs[job_id]
    job = modelarts.state.jobs[job_id] = json.loads(json.dumps(submitted))  # this run's copy, for a restart to start afresh
    for channel in [*job["algorithm"]["inputs"], *job["algorithm"]["outputs"]]:
        if access == "parameter":
            channel.pop("access_method", None)  # the SDK's default
        channel["local_dir"] = channel["local_dir"].replace("/opt/ml", str(root))
        if channel["name"] in (JOB_CHANNEL, RESUME_CHANNEL):
            download_obs(s3_env, channel["remote"]["obs"]["obs_url"], Path(channel["local_dir"]))
    code = tmp_path / "src"
    code.mkdir(exist_ok=True)
    (code / "train.py").write_text(program)  # the spec's entrypoint
    stage_bundle(root / "input" / "data" / "faceops_code", code)
    argv, env = modelarts.container(job_id, shell=shell)
    modelarts.state.jobs[job_id] = submitted
    assert argv[:2] == [IMAGE_PYTHON, BOOTSTRAP_PATH] and "/opt/faceops/bin" not in env["PATH"]
    start = tmp_path / "home-ma-user"
    start.mkdir(exist_ok=True)
    return run_bootstrap(argv[2:], env={**env, **(extra or {}), "FACEOPS_OPT_ML": str(root), "PYTHONPATH": str(REPO)},
                         cwd=start)


@pytest.mark.parametrize("access", [None, "parameter"])
def test_bootstrap_takes_what_a_modelarts_container_passes(runner, modelarts, spec, tmp_path, s3_env, access):
    """The container side, started as the harness says ModelArts starts it: with the submitted
    ``access_method: env`` the channels arrive as variables (faceops' own are named with letters,
    digits and underscores, as variable names must be); with the default ``parameter`` (a job
    edited in the console) they are appended as --train=... --model=..., and neither is taken for
    a hyperparameter."""
    spec.write_text(spec.read_text().replace("instance_count: 2", "instance_count: 1"))
    assert runner("job", "submit", spec, "--detach").exit_code == 0
    job_id = Store().get("face-recognition", 1)["backend_info"]["job_id"]
    root = tmp_path / "opt-ml"
    argv, env = modelarts.container(job_id)
    if access is None:
        assert env["train"] == "/opt/ml/input/data/train" and not any(a.startswith("--train=") for a in argv)
        assert {"faceops_code", "faceops_job", "faceops_resume", "faceops_output", "faceops_checkpoints"} <= set(env)
    done = container_run(modelarts, s3_env, job_id, root, tmp_path, access)
    assert done.returncode == 0, done.stderr
    seen = json.loads((root / "model" / "seen.json").read_text())
    assert seen["hp"] == {"lr": 0.1, "network": "r50", "flip": True, "epochs": 20}
    assert seen["argv"] == ["--log-every", "10"] and seen["train"] == str(root / "input" / "data" / "train")
    assert "ignoring" not in done.stderr


def test_a_channel_name_that_is_no_variable_name_falls_back_to_its_folder(runner, modelarts, spec, tmp_path, s3_env):
    """ModelArts names a variable after each ``env`` channel, and variable names are letters,
    digits and underscores: ``train-set`` gets none, and the bootstrap finds it in its folder."""
    spec.write_text(spec.read_text().replace("instance_count: 2", "instance_count: 1").replace("  train: ", "  train-set: "))
    assert runner("job", "submit", spec, "--detach").exit_code == 0
    job_id = Store().get("face-recognition", 1)["backend_info"]["job_id"]
    assert "train-set" not in modelarts.container(job_id)[1]
    root = tmp_path / "opt-ml"
    program = SHOW.replace("job.channel('train')", "job.channel('train-set')")
    done = container_run(modelarts, s3_env, job_id, root, tmp_path, program=program)
    assert done.returncode == 0, done.stderr
    assert json.loads((root / "model" / "seen.json").read_text())["train"] == str(root / "input" / "data" / "train-set")


@pytest.mark.parametrize("shell", [True, False])
def test_parameters_read_the_same_with_and_without_a_shell(runner, modelarts, spec, tmp_path, s3_env, shell):
    """The hyperparameters travel as a file in the faceops_job input and the command holds none, so
    quotes, ``${env:NAME}`` and lists arrive typed whichever way ModelArts reads the command. The
    double shows what parameters on the command would suffer: a shell strips JSON's quotes."""
    spec.write_text(spec.read_text().replace("instance_count: 2", "instance_count: 1").replace(
        "flip: true}", 'flip: true, token: "${env:API_TOKEN}", sizes: [112, 96], note: "a b; c"}'))
    assert runner("job", "submit", spec, "--detach").exit_code == 0
    job_id = Store().get("face-recognition", 1)["backend_info"]["job_id"]
    root = tmp_path / "opt-ml"
    done = container_run(modelarts, s3_env, job_id, root, tmp_path, shell=shell, extra={"API_TOKEN": "tok-123"})
    assert done.returncode == 0, done.stderr
    seen = json.loads((root / "model" / "seen.json").read_text())
    assert seen["hp"] == {"lr": 0.1, "epochs": 20, "network": "r50", "flip": True, "token": "tok-123",
                          "sizes": [112, 96], "note": "a b; c"}
    assert seen["argv"] == ["--log-every", "10"]

    modelarts.state.jobs[job_id]["algorithm"]["parameters"] = [{"name": "network", "value": '"r50"'}]
    assert modelarts.container(job_id, shell=shell)[0][-1] == ("--network=r50" if shell else '--network="r50"')


def test_an_entrypoint_word_a_shell_would_change_is_refused(runner, modelarts, spec):
    spec.write_text(spec.read_text().replace('--log-every, "10"]', '--name, "a b"]'))
    output = refused(runner, spec, "--dry-run")
    assert "'a b' would read differently with and without a shell" in output


def test_training_resumes_from_its_checkpoints_on_obs(runner, modelarts, spec, tmp_path, s3_env, s3_bucket):
    """The checkpoint folder sits under the remote job's unique name; what the job's earlier run
    synced there (the faceops_checkpoints output) is downloaded on a restart (faceops_resume) and
    put where the training loop restores it, without the folder's marker."""
    spec.write_text(spec.read_text().replace("instance_count: 2", "instance_count: 1"))
    assert runner("job", "submit", spec, "--detach").exit_code == 0
    record = Store().get("face-recognition", 1)
    job_id, name = record["backend_info"]["job_id"], record["backend_info"]["remote_name"]
    folder = f"faceops/checkpoints/{name}/"
    assert s3_env.client().get_object(Bucket=s3_bucket, Key=folder + ".faceops-checkpoints")
    first = tmp_path / "first"
    assert container_run(modelarts, s3_env, job_id, first, tmp_path).returncode == 0
    assert json.loads((first / "model" / "seen.json").read_text())["checkpoints"] == []

    s3_env.client().put_object(Bucket=s3_bucket, Key=folder + "model-0003.params", Body=b"weights")
    again = tmp_path / "restart"
    done = container_run(modelarts, s3_env, job_id, again, tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads((again / "model" / "seen.json").read_text())["checkpoints"] == ["model-0003.params"]
    assert (again / "checkpoints" / "model-0003.params").read_bytes() == b"weights"


def test_bootstrap_ignores_arguments_that_are_not_the_jobs(tmp_path):
    """Anything else ModelArts (or a console edit) appends is left out of the hyperparameters, said on stderr."""
    code = tmp_path / "src"
    code.mkdir()
    (code / "show.py").write_text(SHOW)
    root = tmp_path / "opt-ml"
    stage_bundle(root / "input" / "data" / "faceops_code", code)
    stage_job_file(root, {"lr": 0.1})
    done = run_bootstrap(["modelarts", "python", "show.py", "--faceops-parameters", "--lr=0.5", "--task_name=worker",
                          "--train=/elsewhere/train", "stray"],
                         env={"FACEOPS_OPT_ML": str(root), "FACEOPS_CHANNELS": "train", "FACEOPS_OUTPUTS": "model",
                              "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    seen = json.loads((root / "model" / "seen.json").read_text())
    assert seen["hp"] == {"lr": 0.1} and seen["train"] == "/elsewhere/train"
    assert "ignoring '--lr=0.5'" in done.stderr
    assert "ignoring '--task_name=worker'" in done.stderr and "ignoring 'stray'" in done.stderr


def test_request_body_is_held_to_the_sdk_models(modelarts):
    """The harness refuses what the service would: unknown fields, wrong types, missing mandatory fields."""
    from tests.harness.modelarts import job_problems

    body = {"kind": "job", "metadata": {"name": "ok-name"},
            "algorithm": {"inputs": [{"name": "train", "local_dir": "/x", "access_method": "file",
                                      "remote": {"obs": {"obs_url": "/b/k/"}}}],
                          "parameters": [{"name": "lr", "value": 0.1}], "environments": {"A": "1"}},
            "spec": {"resource": {"flavor_id": "f", "node_count": "2"}, "nodes": 2}}
    assert job_problems(body) == ["body.algorithm.parameters[0].value: expected str, got float",
                                  "body.spec.resource.node_count: expected int, got str",
                                  "body.spec.nodes: not a field of Spec"]
    body["algorithm"]["parameters"][0]["value"] = "0.1"
    body["spec"] = {"resource": {"node_count": 2}}
    assert job_problems(body) == ["body.spec.resource.flavor_id: mandatory"]
    body["spec"]["resource"]["flavor_id"] = "f"
    assert job_problems(body) == ["body.algorithm.inputs[0].access_method: one of parameter, env"]
    del body["metadata"]
    assert job_problems(body) == ["body.metadata: mandatory"]


def test_logs_follow_past_the_preview_window(runner, modelarts, spec, s3_env, s3_bucket):
    """The preview holds only the newest bytes (5 MB; 64 here): following by byte offset, nothing
    is given twice and what slid out is said; once ModelArts has exported the log to OBS, it is
    read from there by ranged reads and no preview is asked for."""
    modelarts.state.log_window = 64
    spec.write_text(spec.read_text().replace("instance_count: 2", "instance_count: 1"))
    assert runner("job", "submit", spec, "--detach").exit_code == 0
    info = Store().get("face-recognition", 1)["backend_info"]
    job_id = info["job_id"]
    modelarts.set_phase(job_id, "Running")
    modelarts.append_log(job_id, "worker-0", "line 1\nline 2\npart")
    assert runner("job", "logs", "face-recognition").output.splitlines() == ["line 1", "line 2"]
    modelarts.append_log(job_id, "worker-0", "ial 3\n" + "".join(f"line {n}\n" for n in range(4, 30)))
    out = runner("job", "logs", "face-recognition").output.splitlines()
    assert out[0].startswith("[faceops] ") and "slid out of ModelArts' 5 MB preview" in out[0]
    assert out[-1] == "line 29" and "line 1" not in out and len(out) < 15

    modelarts.export_logs(lambda bucket, key, data: s3_env.client().put_object(Bucket=bucket, Key=key, Body=data))
    assert f"modelarts-job-{job_id}-worker-0.log" in modelarts_export_keys(s3_env, s3_bucket)
    previews = sum(1 for r in modelarts.state.requests if r[1].endswith("/logs/preview"))
    modelarts.set_phase(job_id, "Completed")
    follow = runner("job", "logs", "face-recognition", "--follow").output.splitlines()
    assert follow == ["line 1", "line 2", "partial 3", *[f"line {n}" for n in range(4, 30)]]
    assert sum(1 for r in modelarts.state.requests if r[1].endswith("/logs/preview")) == previews


def test_a_rotated_exported_log_is_read_as_one_stream(runner, modelarts, spec, s3_env, s3_bucket):
    """Newer platform versions rotate the exported log: the pieces named after the task's log are
    read oldest first and the documented file last, from the same byte offsets, so a follower
    misses and repeats nothing across a rotation; no preview is asked for."""
    spec.write_text(spec.read_text().replace("instance_count: 2", "instance_count: 1"))
    assert runner("job", "submit", spec, "--detach").exit_code == 0
    job_id = Store().get("face-recognition", 1)["backend_info"]["job_id"]
    modelarts.set_phase(job_id, "Running")
    from jobs.backends.modelarts import ModelArtsBackend

    def put(bucket: str, key: str, data: bytes) -> None:
        s3_env.client().put_object(Bucket=bucket, Key=key, Body=data)

    record = Store().get("face-recognition", 1)
    modelarts.append_log(job_id, "worker-0", "".join(f"line {n}\n" for n in range(1, 8)))
    modelarts.export_logs(put, rotate_at=20)
    first, cursor = ModelArtsBackend().read_logs(record, None)
    assert first == [f"line {n}" for n in range(1, 8)]
    modelarts.append_log(job_id, "worker-0", "".join(f"line {n}\n" for n in range(8, 13)))
    modelarts.export_logs(put, rotate_at=20)
    assert f"modelarts-job-{job_id}-worker-0-3.log" in modelarts_export_keys(s3_env, s3_bucket)
    assert ModelArtsBackend().read_logs(record, cursor)[0] == [f"line {n}" for n in range(8, 13)]
    modelarts.set_phase(job_id, "Completed")
    follow = runner("job", "logs", "face-recognition", "--follow").output.splitlines()
    assert follow == [f"line {n}" for n in range(1, 13)]
    assert not [r for r in modelarts.state.requests if r[1].endswith("/logs/preview")]


def test_a_running_jobs_metrics_are_read_live_from_its_log(runner, modelarts, spec, s3_env, s3_bucket, tmp_path):
    """While ModelArts runs the job, `job metrics` returns the rows its container printed so far:
    from the log preview before the first export, then from the log exported to OBS; once the job
    completes, the metrics file ModelArts uploaded wins, with the same rows."""
    from jobs import metrics as history

    spec.write_text(spec.read_text().replace("instance_count: 2", "instance_count: 1"))
    assert runner("job", "submit", spec, "--detach").exit_code == 0
    info = Store().get("face-recognition", 1)["backend_info"]
    job_id = info["job_id"]
    root = tmp_path / "opt-ml"
    printed, uploaded = printed_metrics(container_run(modelarts, s3_env, job_id, root, tmp_path, program=METRICS_JOB),
                                        root / "output" / "faceops" / "metrics.jsonl")
    modelarts.set_phase(job_id, "Running")
    half = printed.index(next(line for line in printed if '"step": 4' in line))
    modelarts.append_log(job_id, "worker-0", "\n".join(printed[:half]) + "\n")

    def shown() -> list[dict]:
        result = runner("job", "metrics", "face-recognition", "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    assert [r["step"] for r in shown()] == [1, 2, 3]
    modelarts.append_log(job_id, "worker-0", "\n".join(printed[half:]) + "\n")
    modelarts.export_logs(lambda bucket, key, data: s3_env.client().put_object(Bucket=bucket, Key=key, Body=data))
    previews = sum(1 for r in modelarts.state.requests if r[1].endswith("/logs/preview"))
    live = shown()
    assert [r["step"] for r in live] == [1, 2, 3, 4, 5, 6]
    assert sum(1 for r in modelarts.state.requests if r[1].endswith("/logs/preview")) == previews  # read from OBS

    s3_env.client().put_object(Bucket=s3_bucket, Key=f"faceops/jobs/{info['remote_name']}/output/metrics.jsonl",
                               Body=uploaded)
    modelarts.set_phase(job_id, "Completed")
    assert shown() == live == history.parse_rows(uploaded)
    assert (workdir(Store().get("face-recognition", 1)) / history.METRICS_PATH).read_bytes() == uploaded


def modelarts_export_keys(s3_env, bucket: str) -> list[str]:
    listed = s3_env.client().list_objects_v2(Bucket=bucket, Prefix="faceops/jobs/")
    return [o["Key"].rsplit("/", 1)[1] for o in listed.get("Contents", [])]


def test_multi_node_environment_for_each_node(modelarts, runner, spec):
    """Two nodes: each container gets its index and the host list, and the job asks the bootstrap
    for MXNet's dist_sync roles; the launcher turns that into node 0 = scheduler + server + worker."""
    from jobs.core import launch

    assert runner("job", "submit", spec, "--detach").exit_code == 0
    job_id = Store().get("face-recognition", 1)["backend_info"]["job_id"]
    assert modelarts.state.jobs[job_id]["status"]["tasks"] == ["worker-0", "worker-1"]
    roles = []
    for node in (0, 1):
        _, env = modelarts.container(job_id, node, hosts=["localhost", "127.0.0.1"])
        assert env["FACEOPS_PARAMETER_SERVER"] == "1" and env["VC_TASK_INDEX"] == str(node)
        cluster = launch.modelarts_cluster(env, port=9999, wait=1)
        assert (cluster.scheduler, cluster.servers, cluster.workers, cluster.port) == ("127.0.0.1", 2, 2, 9999)
        roles.append(cluster.roles)
    assert roles == [("scheduler", "server", "worker"), ("server", "worker")]


def test_batch_job_on_two_nodes_takes_one_shard_per_node(runner, modelarts, spec, tmp_path, s3_bucket):
    """A gallery/identify job on two ModelArts nodes: no parameter server, each container is told
    its shard by its node index and writes its part of the outputs under its own name (every
    node uploads to the same OBS folder)."""
    spec.write_text(spec.read_text().split("task:")[0] + f"""\
task: gallery
backend: modelarts
image: {SWR}/faceops/train:gpu
inputs:
  images: s3://{s3_bucket}/recognition_train_data/
outputs:
  database: s3://{s3_bucket}/galleries/staff/
resources: {{instance_type: modelarts.p3.large.public, instance_count: 2}}
""")
    result = runner("job", "submit", spec, "--detach")
    assert result.exit_code == 0 and "job_id" in Store().get("face-recognition", 1)["backend_info"], \
        (result.output, Store().get("face-recognition", 1))
    job_id = Store().get("face-recognition", 1)["backend_info"]["job_id"]
    job = modelarts.state.jobs[job_id]
    assert job["algorithm"]["environments"]["FACEOPS_SHARDED"] == "1"
    assert "FACEOPS_PARAMETER_SERVER" not in job["algorithm"]["environments"]
    code = tmp_path / "src"
    code.mkdir()
    (code / "shard.py").write_text(
        "import json\nfrom jobs.core.contract import PARTS, from_env, shard_from_env\njob, shard = from_env(), shard_from_env()\n"
        "part = job.output('database') / PARTS / shard.part\npart.mkdir(parents=True)\n"
        "(part / 'part.json').write_text(json.dumps([shard.index, shard.count]))\n")
    for node in (0, 1):
        root = tmp_path / f"node{node}"
        stage_bundle(root / "input" / "data" / "faceops_code", code)
        argv, env = modelarts.container(job_id, node)
        env = {**env, "faceops_code": str(root / "input" / "data" / "faceops_code"), "database": str(root / "db"),
               "faceops_job": str(root / "input" / "data" / "faceops_job"),
               "images": str(root / "input" / "data" / "images")}
        stage_job_file(root, {})
        done = run_bootstrap(["modelarts", "python", "shard.py", *argv[argv.index("--faceops-parameters"):]],
                             env={**env, "FACEOPS_OPT_ML": str(root), "PYTHONPATH": str(REPO)})
        assert done.returncode == 0, done.stderr
        assert json.loads((root / "db" / "parts" / f"node-{node}" / "part.json").read_text()) == [node, 2]
    # The nodes upload their parts to the job's staging folder, never into the user's output.
    database = next(o for o in job["algorithm"]["outputs"] if o["name"] == "database")
    assert "/shards/database/" in database["remote"]["obs"]["obs_url"] and "galleries/staff" not in database["remote"]["obs"]["obs_url"]


def test_host_names_follow_the_documented_pattern_without_a_host_list():
    from jobs.core import launch

    env = {"MA_NUM_HOSTS": "3", "VC_TASK_INDEX": "2", "MA_VJ_NAME": "modelarts-job-abc", "MA_TASK_NAME": "worker"}
    assert launch.modelarts_hosts(env) == ([f"modelarts-job-abc-worker-{n}.modelarts-job-abc" for n in range(3)], 2)
    assert launch.modelarts_hosts({"MA_NUM_HOSTS": "1"}) == ([], 0)
    assert launch.modelarts_cluster({"MA_NUM_HOSTS": "1"}) is None
    with pytest.raises(ValueError, match="refusing to train separate copies"):
        launch.modelarts_cluster({"MA_NUM_HOSTS": "2", "VC_TASK_INDEX": "1"})


def test_unresolvable_host_is_retried_then_named():
    import time

    from jobs.core import launch

    began = time.monotonic()
    with pytest.raises(RuntimeError, match="host no-such-node.invalid did not resolve within 1s"):
        launch.resolve("no-such-node.invalid", 1.0, delay=0.3)
    assert time.monotonic() - began >= 0.6  # asked again, not given up at the first miss


MA_USER, MA_GROUP = 1000, 100  # ModelArts runs custom images as ma-user:ma-group (images/service-user.sh)


def system_python() -> str | None:
    """A Python that uid 1000 can run (the bootstrap needs only the standard library)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK) and os.stat(os.path.realpath(candidate)).st_mode & 0o005 == 0o005:
            return candidate
    return None


@pytest.mark.skipif(os.geteuid() != 0 or system_python() is None,
                    reason="needs root (to run as uid 1000) and a Python outside root's home")
def test_bootstrap_runs_as_the_modelarts_user(tmp_path):
    """As uid 1000 / gid 100, on a layout whose /opt/ml is set up as the images do it (owned by
    1000:100, group-writable) and whose inputs are root's (downloaded by the platform), the
    bootstrap unpacks the bundle and the task writes its model and metrics; on a root-owned
    /opt/ml the same run fails, so this checks the ownership the images must give."""
    base = Path(tempfile.mkdtemp(prefix="faceops-ma-user-", dir="/tmp"))
    try:
        base.chmod(0o755)
        code = tmp_path / "src"
        code.mkdir()
        (code / "train.py").write_text(SHOW + "from jobs.core.contract import log_metrics\nlog_metrics(step=1)\n")
        (code / "jobs" / "core").mkdir(parents=True)
        shutil.copy(REPO / "jobs" / "core" / "contract.py", code / "jobs" / "core" / "contract.py")
        for package in (code / "jobs", code / "jobs" / "core"):
            (package / "__init__.py").write_text("")
        runs = {}
        for owner in ("ma-user", "root"):
            root = base / owner
            root.mkdir(mode=0o755)
            stage_bundle(root / "input" / "data" / "faceops_code", code)
            for path in [root / "input" / "data" / "faceops_code", *(root / "input" / "data" / "faceops_code").iterdir()]:
                path.chmod(0o755 if path.is_dir() else 0o644)
            (root / "input" / "data" / "train").mkdir()
            stage_job_file(root, {"lr": 0.1})
            if owner == "ma-user":
                os.chown(root, MA_USER, MA_GROUP)
                root.chmod(0o2775)
            env = {"PATH": "/usr/bin:/bin", "FACEOPS_OPT_ML": str(root), "FACEOPS_CHANNELS": "train",
                   "FACEOPS_OUTPUTS": "model", "train": str(root / "input" / "data" / "train")}
            runs[owner] = subprocess.run([system_python(), str(REPO / "images" / "bin" / "faceops-cloud-bootstrap"),
                                          "modelarts", "python", "train.py", "--faceops-parameters"],
                                         env=env, user=MA_USER, group=MA_GROUP, cwd="/", capture_output=True,
                                         text=True, timeout=60)
        assert runs["ma-user"].returncode == 0, runs["ma-user"].stderr
        seen = json.loads((base / "ma-user" / "model" / "seen.json").read_text())
        assert seen["uid"] == MA_USER and seen["hp"] == {"lr": 0.1}
        assert (base / "ma-user" / "output" / "faceops" / "metrics.jsonl").exists()
        assert runs["root"].returncode != 0 and "Permission denied" in runs["root"].stderr
    finally:
        shutil.rmtree(base)


def test_europe_regions_use_their_own_domain(runner, modelarts, spec, monkeypatch):
    """Huawei Cloud Europe (eu-west-101, Dublin) serves its APIs and SWR under myhuaweicloud.eu
    (the Europe site's "Endpoints" pages); other regions, Paris's eu-west-0 too, under .com."""
    from jobs.backends.modelarts import console_link

    monkeypatch.delenv("FACEOPS_MODELARTS_ENDPOINT")
    for region, endpoint in (("eu-west-101", "https://modelarts.eu-west-101.myhuaweicloud.eu"),
                             ("eu-west-0", "https://modelarts.eu-west-0.myhuaweicloud.com")):
        monkeypatch.setenv("HUAWEICLOUD_SDK_REGION", region)
        result = runner("job", "submit", spec, "--set", f"image=swr.{region}.{endpoint.rsplit('.', 2)[1]}."
                        f"{endpoint.rsplit('.', 1)[1]}/faceops/train:gpu", "--dry-run", "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["plan"]["endpoint"] == endpoint
    assert console_link("eu-west-101", "j1").startswith("https://console.eu.huaweicloud.com/modelarts/?region=eu-west-101")


def test_image_given_by_digest_is_pulled_by_digest(runner, modelarts, spec):
    """`image: .../name@sha256:...` stays a digest reference (never `name:sha256:...`)."""
    pinned = "sha256:" + "ef" * 32
    result = runner("job", "submit", spec, "--set", f"image={SWR}/faceops/train@{pinned}", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["plan"]["request"]["algorithm"]["engine"] == {"image_url": f"faceops/train@{pinned}"}


def test_retries_over_the_services_limit_are_refused_before_anything_is_stored(runner, modelarts, spec):
    """ModelArts restarts a job at most 128 times (fault-tolerance/job-retry-num, 1 to 128)."""
    result = runner("job", "submit", spec, "--dry-run", "--set", "resources.retries=129")
    assert result.exit_code == 2 and "at most 128" in result.output
    assert runner("job", "submit", spec, "--dry-run", "--set", "resources.retries=128").exit_code == 0


def test_a_dry_run_without_a_reachable_obs_endpoint_plans_anyway_and_names_what_it_skipped(runner, modelarts, spec,
                                                                                            s3_bucket, s3_nowhere):
    """The request is built and checked against the SDK's models without OBS; a dry run probes
    the endpoint once and names the checks it left to the real submit."""
    result = runner("job", "submit", spec, "--dry-run")
    assert result.exit_code == 0, result.output
    assert f"POST /v2/{modelarts.state.project_id}/training-jobs" in result.output
    assert f'"obs_url": "/{s3_bucket}/recognition_train_data/"' in result.output
    assert f"S3 endpoint {s3_nowhere}" in result.output and "a real submit still runs these checks" in result.output
    for check in (f"outputs.model: s3://{s3_bucket}/models/face-recognition/ is writable",
                  f"inputs.train: s3://{s3_bucket}/recognition_train_data/ exists (its size and ETag)"):
        assert f"  skipped: {check}" in result.output, result.output
    assert modelarts.state.requests == [] and Store().list() == []

    output = refused(runner, spec, "--detach")
    assert f"cannot reach S3 endpoint {s3_nowhere}" in output, output
    assert modelarts.state.requests == [] and Store().list() == []
