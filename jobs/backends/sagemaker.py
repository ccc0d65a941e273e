"""The SageMaker backend: training tasks become CreateTrainingJob, batch tasks (gallery, identify)
CreateProcessingJob, from the same spec the local backend runs.

The image is named by digest when faceops pushed it (so a moved tag cannot change what ran),
inputs are S3 channels, the code bundle is one more channel, hyperparameters travel as the
JSON-encoded strings SageMaker requires and ``faceops-cloud-bootstrap`` types them again inside
the container. A batch task on several instances shards its images input (``ShardedByS3Key``) and
the client merges the instances' parts when the job completes. Status comes from Describe*
(polled with growing intervals), logs from CloudWatch,
stop is Stop*. Settings (config.yaml section ``sagemaker`` or the variables named below): region,
role_arn, staging, input_mode (File or FastFile), volume_gb, endpoint_url (for a test server).
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from jobs.backends import cloud, entry_argv, sharded
from jobs.backends.cloud import CloudError, Setting
from jobs.backends.service_model import limits, problems
from jobs.core import storage
from jobs.core.config import setting
from jobs.core.contract import (BOOTSTRAP, CODE_CHANNEL, CONTAINER_ROOT, JOB_CHANNEL, OUTPUT_CHANNEL, SHARD_COUNT,
                                SHARD_INDEX, Contract, metric_regex, service_layout)
from jobs.core.errors import FaceopsError, SpecError
from jobs.core.tasks import get_task
from jobs.metrics import metrics_from
from jobs.store import TERMINAL
from jobs.core.lazy import botocore

REGION_VARIABLES = ("FACEOPS_SAGEMAKER_REGION",)
ROLE = Setting("sagemaker", "role_arn", ("FACEOPS_SAGEMAKER_ROLE_ARN",),
               "execution role ARN (the IAM role SageMaker assumes to read inputs and write outputs)")
INPUT_MODES = ("File", "FastFile")
DEFAULT_MAX_RUNTIME = 24 * 3600
# StoppingCondition.MaxRuntimeInSeconds: "The default value is 1 day. The maximum value is 28 days."
# (SageMaker API Reference, StoppingCondition; botocore's model carries the sentence, not a max).
MAX_TRAINING_RUNTIME = 28 * 24 * 3600
PROCESSING = service_layout("sagemaker-processing")
THROTTLED = {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded",
             "ServiceUnavailable", "InternalFailure"}
# Describe's status (and a training job's secondary status) -> our state.
TRAINING_STATES = {
    "Starting": "queued", "Pending": "queued", "LaunchingMLInstances": "queued", "PreparingTrainingStack": "queued",
    "Downloading": "staging", "DownloadingTrainingImage": "staging",
    "Training": "running", "Restarting": "running", "Interrupted": "running", "Updating": "running",
    "Stopping": "running", "Uploading": "uploading",
    "Completed": "done", "Failed": "failed", "MaxRuntimeExceeded": "failed", "MaxWaitTimeExceeded": "failed",
    "Stopped": "stopped",
}
PROCESSING_STATES = {"InProgress": "running", "Stopping": "running", "Completed": "done", "Failed": "failed",
                     "Stopped": "stopped"}


@lru_cache(maxsize=1)
def _loader() -> Any:
    """One botocore data loader for the process: a client's session reads the service's model
    through it, so the models (megabytes of JSON) are parsed once, not on every status poll."""
    return botocore.loaders.create_loader()


def client(service: str = "sagemaker"):
    """A botocore client for ``sagemaker`` or ``logs`` in the configured region. Its session is
    made afresh each time (sharing only the parsed models) so credentials and settings changed
    since the last call are honoured."""
    region = region_name()
    # One retry policy for both services: cloud.retrying backs off on throttling.
    config = botocore.config.Config(region_name=region, connect_timeout=5, read_timeout=60,
                                    retries={"total_max_attempts": 1})
    endpoint = setting("sagemaker", "endpoint_url", ("FACEOPS_SAGEMAKER_ENDPOINT",))
    session = botocore.session.Session()
    session.register_component("data_loader", _loader())
    return session.create_client(service, endpoint_url=endpoint, config=config)


def region_name() -> str:
    """The AWS region as the AWS CLI and boto3 find it (:func:`jobs.core.storage.aws_region`:
    sagemaker.region, FACEOPS_SAGEMAKER_REGION, AWS_REGION, AWS_DEFAULT_REGION, then the profile's
    ``region`` in the AWS config file), or a SpecError that names every place."""
    region = storage.aws_region("sagemaker", REGION_VARIABLES)
    if not region:
        raise SpecError("sagemaker: no AWS region; set FACEOPS_SAGEMAKER_REGION or AWS_REGION or AWS_DEFAULT_REGION, "
                        "sagemaker.region in $FACEOPS_HOME/config.yaml, or region in the AWS profile "
                        "(aws configure; AWS_PROFILE picks the profile)")
    return region


def is_training(record: dict[str, Any]) -> bool:
    return get_task(record["spec"]["task"]).kind == "training"


def console_link(region: str, name: str, training: bool) -> str:
    page = "jobs" if training else "processing-jobs"
    return f"https://{region}.console.aws.amazon.com/sagemaker/home?region={region}#/{page}/{name}"


def _is_ecr(host: str) -> bool:
    parts = host.split(".")
    return len(parts) >= 6 and parts[1:3] == ["dkr", "ecr"] and parts[4] == "amazonaws"


def check_image_region(image: str, region: str) -> None:
    """SageMaker pulls images only from Amazon ECR in the job's own region: the Docker image "in
    Amazon EC2 Container Registry must be in the same region" (ContainerDefinition.Image, SageMaker
    API Reference), and Create*Job answers an image elsewhere with ValidationException ("Invalid
    region ... in image URI", "Cross region ECR image pulls are not allowed"), after the uploads;
    refuse it here, with the ways out."""
    host = image.split("/", 1)[0]
    image_region = host.split(".")[3]
    if image_region != region:
        raise SpecError(f"image: {image.split('@')[0]} is in Amazon ECR in {image_region}, but the job runs in {region}; "
                        f"SageMaker pulls only from ECR in the job's region: push the image to {region} "
                        f"(faceops image push ... --registry <account>.dkr.ecr.{region}.amazonaws.com/<namespace>) "
                        f"or run the job in {image_region}")


def _tags(record: dict[str, Any]) -> list[dict[str, str]]:
    return [{"Key": "faceops:job", "Value": record["name"]},
            {"Key": "faceops:version", "Value": str(record["version"])},
            {"Key": "faceops:code", "Value": record["code"]["hash"][:12]}]


def _job_folder(staging: str, name: str) -> str:
    return f"{staging}/jobs/{name}/"


def _instance_type(resources: dict[str, Any]) -> None:
    if not resources.get("instance_type"):
        raise SpecError("resources.instance_type: SageMaker needs an instance type, like ml.p3.2xlarge")


def build_request(record: dict[str, Any], staging: str) -> tuple[str, dict[str, Any]]:
    """The API call (``CreateTrainingJob`` or ``CreateProcessingJob``) and its exact request."""
    spec, res = record["spec"], record["spec"]["resources"]
    cloud.check_remote_uris("sagemaker", spec)
    _instance_type(res)
    image = cloud.image_in_registry(spec.get("image"), (record.get("image") or {}).get("digest"), "SageMaker",
                                    "Amazon ECR", _is_ecr)
    check_image_region(image, region_name())
    name = cloud.remote_name(record)
    max_runtime = res.get("max_runtime") or DEFAULT_MAX_RUNTIME
    volume = int(setting("sagemaker", "volume_gb", ("FACEOPS_SAGEMAKER_VOLUME_GB",), 50))
    code = cloud.bundle_folder(staging, record["code"]["hash"])
    role = ROLE.require()
    if is_training(record):
        api, request = "CreateTrainingJob", _training(record, name, image, role, code, staging, max_runtime, volume)
    else:
        if res.get("spot"):
            raise SpecError("resources.spot: SageMaker processing jobs (gallery, identify) cannot run on spot capacity")
        api, request = "CreateProcessingJob", _processing(record, name, image, role, code, staging, max_runtime, volume)
    found = problems("sagemaker", api, request)
    if found:
        raise SpecError(f"SageMaker would refuse this {api} request (botocore's model of the API):\n  "
                        + "\n  ".join(found))
    return api, request


def _training(record: dict[str, Any], name: str, image: str, role: str, code: str, staging: str,
              max_runtime: int, volume: int) -> dict[str, Any]:
    spec, res = record["spec"], record["spec"]["resources"]
    extra = sorted(set(spec["outputs"]) - {"model"})
    if extra or "model" not in spec["outputs"]:
        raise SpecError(f"outputs: a SageMaker training job uploads one output, 'model' (/opt/ml/model); "
                        f"got {', '.join(spec['outputs']) or 'none'}")
    mode = str(setting("sagemaker", "input_mode", ("FACEOPS_SAGEMAKER_INPUT_MODE",), "File"))
    if mode not in INPUT_MODES:
        raise SpecError(f"sagemaker.input_mode: expected one of {', '.join(INPUT_MODES)}, got {mode!r}")
    channels = [_channel(c, uri, mode) for c, uri in cloud.remote_inputs(record, staging).items()]
    channels.append(_channel(CODE_CHANNEL, code, "File"))
    stopping = {"MaxRuntimeInSeconds": max_runtime}
    if res.get("spot"):
        stopping["MaxWaitTimeInSeconds"] = spot_wait(max_runtime)
    request = {
        "TrainingJobName": name,
        "AlgorithmSpecification": {"TrainingImage": image, "TrainingInputMode": mode,
                                   "ContainerEntrypoint": [BOOTSTRAP, "sagemaker-training"],
                                   "ContainerArguments": entry_argv(spec)},
        "RoleArn": role,
        "HyperParameters": cloud.typed_strings(spec["hyperparameters"]),
        "InputDataConfig": channels,
        "OutputDataConfig": {"S3OutputPath": spec["outputs"]["model"]},
        "ResourceConfig": {"InstanceType": res["instance_type"], "InstanceCount": res.get("instance_count") or 1,
                           "VolumeSizeInGB": volume},
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": bool(res.get("spot")),
        # Under the remote job's own name: unique to this machine, state folder and version, so
        # nobody else's submit of the same NAME:V resumes from these checkpoints.
        "CheckpointConfig": {"S3Uri": f"{staging}/checkpoints/{name}/",
                             "LocalPath": str(Contract(root=CONTAINER_ROOT).checkpoint_dir)},
        "Tags": _tags(record),
    }
    if res.get("retries"):  # MaximumRetryAttempts counts retries, not runs (1-30)
        request["RetryStrategy"] = {"MaximumRetryAttempts": res["retries"]}
    definitions = metric_definitions(spec)
    if definitions:
        request["AlgorithmSpecification"]["MetricDefinitions"] = definitions
    if (res.get("instance_count") or 1) > 1:
        # The bootstrap then starts MXNet's dist_sync roles across the hosts SageMaker lists.
        request["Environment"] = {"FACEOPS_PARAMETER_SERVER": "1"}
    return request


def spot_wait(max_runtime: int) -> int:
    """MaxWaitTimeInSeconds for a spot job: "the amount of time spent waiting for Spot capacity
    plus the amount of time the job can run", which "must be equal to or greater than
    MaxRuntimeInSeconds" (StoppingCondition). Twice the runtime leaves as long again to wait for
    capacity, held to the 28 days a job may take at most, never below the runtime itself."""
    return max(max_runtime, min(2 * max_runtime, MAX_TRAINING_RUNTIME))


def metric_definitions(spec: dict[str, Any]) -> list[dict[str, str]]:
    """SageMaker's MetricDefinitions for the metrics the task's schema declares (a custom job's
    ``metrics:``), each matching the line :func:`jobs.core.contract.log_metrics` prints, so the
    console charts them live and DescribeTrainingJob's FinalMetricDataList holds their last values."""
    names = [*get_task(spec["task"]).metrics, *(spec.get("metrics") or {})]
    return [{"Name": name, "Regex": metric_regex(name)} for name in dict.fromkeys(names)]


def _channel(name: str, uri: str, mode: str) -> dict[str, Any]:
    return {"ChannelName": name, "InputMode": mode,
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri,
                                            "S3DataDistributionType": "FullyReplicated"}}}


def _processing(record: dict[str, Any], name: str, image: str, role: str, code: str, staging: str,
                max_runtime: int, volume: int) -> dict[str, Any]:
    spec, res = record["spec"], record["spec"]["resources"]
    job_folder = _job_folder(staging, name)
    count = res.get("instance_count") or 1
    inputs = {**cloud.remote_inputs(record, staging), CODE_CHANNEL: code, JOB_CHANNEL: job_folder + "config/"}
    outputs = {**spec["outputs"], OUTPUT_CHANNEL: job_folder + "output/"}
    environment = {"FACEOPS_CHANNELS": ",".join(spec["inputs"]), "FACEOPS_OUTPUTS": ",".join(spec["outputs"])}
    split = None
    if sharded(spec):
        # ShardedByS3Key hands each instance its own objects of the sharded input, so each keeps
        # all it got (shard 0 of 1; the bootstrap names its part after the host) and uploads its
        # part under the job's folder; the client merges them into the outputs once the job has
        # completed (SageMakerBackend._merged): no instance knows when the others are done.
        split = get_task(spec["task"]).sharding.input
        outputs.update({o: _parts_folder(staging, name, o) for o in spec["outputs"]})
        environment.update({SHARD_INDEX: "0", SHARD_COUNT: "1"})
    return {
        "ProcessingJobName": name,
        "ProcessingResources": {"ClusterConfig": {"InstanceCount": count,
                                                  "InstanceType": res["instance_type"], "VolumeSizeInGB": volume}},
        "StoppingCondition": {"MaxRuntimeInSeconds": max_runtime},
        "AppSpecification": {"ImageUri": image, "ContainerEntrypoint": [BOOTSTRAP, "sagemaker-processing"],
                             "ContainerArguments": entry_argv(spec)},
        "Environment": environment,
        "ProcessingInputs": [{"InputName": c, "S3Input": {"S3Uri": uri, "LocalPath": str(PROCESSING.channel_dir(c)),
                                                          "S3DataType": "S3Prefix", "S3InputMode": "File",
                                                          **({"S3DataDistributionType": "ShardedByS3Key"} if c == split else {})}}
                             for c, uri in inputs.items()],
        "ProcessingOutputConfig": {"Outputs": [{"OutputName": o, "S3Output": {"S3Uri": uri, "LocalPath": str(PROCESSING.output_dir(o)),
                                                                              "S3UploadMode": "EndOfJob"}}
                                               for o, uri in outputs.items()]},
        "RoleArn": role,
        "Tags": _tags(record),
    }


def _parts_folder(staging: str, name: str, output: str) -> str:
    """Where the instances of a sharded processing job upload their parts of ``output``
    (``<this>/parts/<host>/``): the job's own folder, never the user's output."""
    return f"{_job_folder(staging, name)}shards/{output}/"


def check_limits(spec: dict[str, Any]) -> None:
    """What the spec asks against SageMaker's limits, in the spec's own terms, before a version is
    stored: retries (MaximumRetryAttempts 1-30, training jobs only), the hyperparameters' count
    and lengths, the instance count. The numbers are botocore's model of CreateTrainingJob and
    CreateProcessingJob (the SageMaker API Reference's constraints), read here, not copied."""
    res, training = spec["resources"], get_task(spec["task"]).kind == "training"
    api = "CreateTrainingJob" if training else "CreateProcessingJob"
    retries = res.get("retries") or 0
    if retries and not training:
        raise SpecError("resources.retries: SageMaker processing jobs (gallery, identify) have no retry strategy; "
                        "set resources.retries=0 and submit again if one fails")
    most = limits("sagemaker", api, "RetryStrategy", "MaximumRetryAttempts")["max"] if training else 0
    check_runtime(res.get("max_runtime") or DEFAULT_MAX_RUNTIME, api)
    if retries > most:
        raise SpecError(f"resources.retries: SageMaker retries a training job at most {most} times "
                        f"(RetryStrategy.MaximumRetryAttempts); got {retries}")
    path = ("ResourceConfig", "InstanceCount") if training else ("ProcessingResources", "ClusterConfig", "InstanceCount")
    count, bound = res.get("instance_count") or 1, limits("sagemaker", api, *path).get("max")
    if bound is not None and count > bound:
        raise SpecError(f"resources.instance_count: a SageMaker {api[6:-3].lower()} job takes at most {bound} "
                        f"instances; got {count}")
    if not training:
        return  # a processing job's hyperparameters travel as a file, not in the request
    hyperparameters = cloud.typed_strings(spec["hyperparameters"])
    most = limits("sagemaker", api, "HyperParameters")["max"]
    if len(hyperparameters) > most:
        raise SpecError(f"hyperparameters: SageMaker takes at most {most}; got {len(hyperparameters)}")
    key_max = limits("sagemaker", api, "HyperParameters", "key")["max"]
    value_max = limits("sagemaker", api, "HyperParameters", "value")["max"]
    for key, value in hyperparameters.items():
        if len(key) > key_max:
            raise SpecError(f"hyperparameters.{key[:40]}...: SageMaker takes names of at most {key_max} characters")
        if len(value) > value_max:
            raise SpecError(f"hyperparameters.{key}: SageMaker takes values of at most {value_max} characters "
                            f"(JSON-encoded, this one has {len(value)}); put large values in an input channel")


def check_runtime(max_runtime: int, api: str) -> None:
    """resources.max_runtime against MaxRuntimeInSeconds: at most 28 days for a training job (the
    StoppingCondition reference; the limit is in its text, not in botocore's model), and the
    model's own maximum for a processing job (ProcessingStoppingCondition)."""
    if api == "CreateTrainingJob":
        most = MAX_TRAINING_RUNTIME
    else:
        most = limits("sagemaker", api, "StoppingCondition", "MaxRuntimeInSeconds")["max"]
    if max_runtime > most:
        kind = "training" if api == "CreateTrainingJob" else "processing"
        raise SpecError(f"resources.max_runtime: a SageMaker {kind} job runs at most {most // 86400} days "
                        f"({most} s, StoppingCondition.MaxRuntimeInSeconds); got {max_runtime} s")


def _throttled(exc: Exception) -> bool:
    return isinstance(exc, botocore.exceptions.ClientError) and exc.response.get("Error", {}).get("Code") in THROTTLED


def call(what: str, method: str, **kwargs: Any) -> dict[str, Any]:
    """One SageMaker/CloudWatch call with backoff, its errors turned into messages to act on (the
    backend's calls and ``faceops deploy``'s go through it alike)."""
    service, _, operation = method.partition(".")
    api = getattr(client(service), operation)
    try:
        return cloud.retrying(lambda: api(**kwargs), _throttled, what)
    except botocore.exceptions.NoCredentialsError:
        raise SpecError("sagemaker: no AWS credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                        "(or AWS_PROFILE) the way the AWS CLI reads them") from None
    except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError) as exc:
        raise CloudError(f"{what}: cannot reach SageMaker ({type(exc).__name__}); check the region and "
                         "sagemaker.endpoint_url") from None
    except botocore.exceptions.ClientError as exc:
        raise _service_error(what, exc) from None


def _service_error(what: str, exc: Any) -> FaceopsError:
    error = exc.response.get("Error", {})
    code, message = error.get("Code", "Error"), error.get("Message", str(exc))
    if code == "ResourceInUse" or "already exists" in message:
        return CloudError(f"{what}: a SageMaker job with this name already exists ({message}); faceops names each "
                          "version uniquely, so this one was already submitted: see faceops job list")
    if code == "ResourceLimitExceeded":
        return CloudError(f"{what}: SageMaker quota reached: {message} (request more in AWS Service Quotas, or "
                          "use another instance type with --set resources.instance_type=...)")
    if code in ("AccessDeniedException", "AccessDenied", "UnrecognizedClientException", "InvalidSignatureException"):
        return CloudError(f"{what}: SageMaker refused the credentials or role: {message}")
    return CloudError(f"{what}: SageMaker rejected the request ({code}): {message}")


class SageMakerBackend(cloud.CloudBackend):
    """SageMaker's requests and calls; the flow is :class:`cloud.CloudBackend`'s."""

    name = "sagemaker"
    id_key = "remote_name"

    def needs(self, spec: dict[str, Any]) -> list[str]:
        """Outputs and staging on S3, an instance type, an image in ECR, the execution role and
        the region: what :func:`build_request` and :meth:`build` would otherwise refuse one by one."""
        return cloud.staging_needs(self.name, spec) + cloud.gather(
            lambda: _instance_type(spec["resources"]),
            lambda: cloud.image_in_registry(spec.get("image"), None, "SageMaker", "Amazon ECR", _is_ecr),
            ROLE.require, region_name)

    def check(self, spec: dict[str, Any]) -> None:
        super().check(spec)
        check_limits(spec)

    def build(self, record: dict[str, Any], staging: str) -> cloud.Request:
        api, request = build_request(record, staging)
        region = region_name()
        training = api == "CreateTrainingJob"
        name = request["TrainingJobName" if training else "ProcessingJobName"]
        files = {} if training else {_job_folder(staging, name) + "config/hyperparameters.json":
                                     json.dumps(record["spec"]["hyperparameters"]).encode()}
        return cloud.Request(api=api, name=name, body=request, files=files,
                             about={"region": region, "console": console_link(region, name, training)})

    def secrets(self, record: dict[str, Any]) -> list[str]:
        credentials = [setting("s3", key, env) for key, env in (("secret_key", ("AWS_SECRET_ACCESS_KEY",)),
                                                                ("session_token", ("AWS_SESSION_TOKEN",)))]
        return [str(c) for c in credentials if c]

    def submit(self, request: cloud.Request) -> dict[str, Any]:
        training = request.api == "CreateTrainingJob"
        method = "sagemaker.create_training_job" if training else "sagemaker.create_processing_job"
        answer = call(f"{request.api} {request.name}", method, **request.body)
        region = region_name()
        return {"arn": answer.get("TrainingJobArn") or answer.get("ProcessingJobArn"),
                "kind": "training" if training else "processing", "region": region,
                "console": console_link(region, request.name, training)}

    def describe(self, record: dict[str, Any]) -> cloud.Remote:
        info = record["backend_info"]
        name, training = info["remote_name"], info["kind"] == "training"
        if training:
            job = call(f"DescribeTrainingJob {name}", "sagemaker.describe_training_job", TrainingJobName=name)
            primary = job["TrainingJobStatus"]
            remote = job.get("SecondaryStatus") or primary
            status = TRAINING_STATES.get(remote, "running")
            if primary in TRAINING_STATES and TRAINING_STATES[primary] in TERMINAL and status not in TERMINAL:
                status = TRAINING_STATES[primary]  # the job's own state wins once it has ended
        else:
            job = call(f"DescribeProcessingJob {name}", "sagemaker.describe_processing_job", ProcessingJobName=name)
            remote = job["ProcessingJobStatus"]
            status = PROCESSING_STATES.get(remote, "running")
        if status not in TERMINAL:
            return cloud.Remote(status, remote)
        if status == "done" and not training and sharded(record["spec"]):
            return self._merged(record, remote, job)
        return cloud.Remote(status, remote, _reason(job, remote, status), _final_info(job),
                            _final_metrics(job, info, training))

    def _merged(self, record: dict[str, Any], remote: str, job: dict[str, Any]) -> cloud.Remote:
        """A completed sharded processing job: its instances' parts merged here, on the client,
        into the spec's outputs, and the merge's metrics the version's (see :func:`cloud.merge_shards`)."""
        info = record["backend_info"]
        sources = {o: _parts_folder(info["staging"], info["remote_name"], o) for o in record["spec"]["outputs"]}
        try:
            metrics = cloud.merge_shards(record["spec"], sources)
        except FaceopsError as exc:
            return cloud.Remote("failed", remote, f"merging the shards' parts: {exc}", _final_info(job), {})
        return cloud.Remote("done", remote, None, _final_info(job), metrics)

    def cancel(self, record: dict[str, Any]) -> None:
        """SageMaker sends SIGTERM and waits its own fixed 120 s before SIGKILL."""
        info = record["backend_info"]
        if info["kind"] == "training":
            call(f"StopTrainingJob {info['remote_name']}", "sagemaker.stop_training_job", TrainingJobName=info["remote_name"])
        else:
            call(f"StopProcessingJob {info['remote_name']}", "sagemaker.stop_processing_job", ProcessingJobName=info["remote_name"])

    def read_logs(self, record: dict[str, Any], cursor: Any) -> tuple[list[str], Any]:
        info = record["backend_info"]
        group = "/aws/sagemaker/TrainingJobs" if info["kind"] == "training" else "/aws/sagemaker/ProcessingJobs"
        return _read_logs(group, info["remote_name"], cursor or {})


def _final_info(job: dict[str, Any]) -> dict[str, Any]:
    info = {}
    if job.get("ModelArtifacts", {}).get("S3ModelArtifacts"):
        info["model_artifact"] = job["ModelArtifacts"]["S3ModelArtifacts"]
    for key, out in (("BillableTimeInSeconds", "billable_seconds"), ("TrainingTimeInSeconds", "training_seconds")):
        if job.get(key) is not None:
            info[out] = job[key]
    return info


def _final_metrics(job: dict[str, Any], info: dict[str, Any], training: bool) -> dict[str, Any]:
    """SageMaker's own final metrics plus what the entry point logged (metrics.jsonl, which the
    bootstrap writes where the service uploads it)."""
    metrics = {m["MetricName"]: m["Value"] for m in job.get("FinalMetricDataList") or []}
    output_path = job["OutputDataConfig"]["S3OutputPath"] if training else None
    metrics.update(metrics_from(*_metrics_location(info, training, output_path)))
    return metrics


def _metrics_location(info: dict[str, Any], training: bool, output_path: str | None) -> tuple[str, str | None]:
    """A training job's metrics file is inside ``output.tar.gz`` under its output path; a
    processing job's is uploaded to its folder under staging."""
    name = info["remote_name"]
    if training:
        return f"{str(output_path).rstrip('/')}/{name}/output/output.tar.gz", "metrics.jsonl"
    return _job_folder(info["staging"], name) + "output/metrics.jsonl", None


def metrics_source(record: dict[str, Any]) -> tuple[str, str | None]:
    """Where the version's metrics file is once SageMaker has uploaded it (at the job's end)."""
    info = record["backend_info"]
    return _metrics_location(info, info["kind"] == "training", record["spec"]["outputs"].get("model"))


def _reason(job: dict[str, Any], remote: str, status: str) -> str | None:
    if status not in ("failed", "stopped"):
        return None
    if remote == "MaxRuntimeExceeded":
        return f"max_runtime of {job.get('StoppingCondition', {}).get('MaxRuntimeInSeconds')}s exceeded"
    if remote == "MaxWaitTimeExceeded":
        return "no spot capacity within the wait time (MaxWaitTimeInSeconds); retry or set resources.spot=false"
    # A processing container's own reason is its /opt/ml/output/message, reported as ExitMessage
    # ("Save and Access Metadata Information About Your Processing Job",
    # https://docs.aws.amazon.com/sagemaker/latest/dg/byoc-metadata.html); a training container's
    # /opt/ml/output/failure becomes FailureReason.
    reasons = [text.strip() for text in (job.get("FailureReason"), job.get("ExitMessage")) if text and text.strip()]
    return "; ".join(reasons) or ("stopped" if status == "stopped" else f"SageMaker reports {remote}")


def _read_logs(group: str, name: str, tokens: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """New CloudWatch lines of every stream of job ``name`` (one per instance), and the tokens
    to continue from. A group or stream that does not exist yet just means no lines yet."""
    logs = client("logs")
    try:
        streams = [s["logStreamName"] for s in cloud.retrying(
            lambda: logs.describe_log_streams(logGroupName=group, logStreamNamePrefix=f"{name}/"), _throttled,
            f"logs of {name}")["logStreams"]]
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            return [], tokens
        raise _service_error(f"logs of {name}", exc) from None
    lines: list[str] = []
    tokens = dict(tokens)
    for stream in sorted(streams):
        host = stream.split("/", 1)[-1]
        while True:
            kwargs = {"logGroupName": group, "logStreamName": stream, "startFromHead": True}
            if tokens.get(stream):
                kwargs["nextToken"] = tokens[stream]
            page = cloud.retrying(lambda: logs.get_log_events(**kwargs), _throttled, f"logs of {name}")
            lines += [f"[{host}] {e['message']}" if len(streams) > 1 else e["message"] for e in page["events"]]
            if page.get("nextForwardToken") in (None, tokens.get(stream)):
                break
            tokens[stream] = page["nextForwardToken"]
    return lines, tokens
