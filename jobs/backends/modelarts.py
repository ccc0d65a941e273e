"""The ModelArts backend: every task becomes a ModelArts training job (API v2) through Huawei's
official SDK (``huaweicloudsdkmodelarts``, ``huaweicloudsdkcore``), from the same spec the local
backend runs: a custom image from SWR, OBS inputs and outputs, a flavor and node count; the
hyperparameters travel as a JSON file in an input (``faceops-cloud-bootstrap`` reads it), training
checkpoints are synced to OBS under the remote job's name and downloaded again on a restart.

Settings (config.yaml section ``modelarts``, or the variables Huawei's SDKs read): ak, sk,
project_id, region; endpoint (default ``https://modelarts.<region>.myhuaweicloud.com``, ``.eu`` in
Huawei Cloud Europe), staging.
Object storage goes through jobs.core.storage pointed at OBS (it speaks S3), so specs use ``s3://``
URIs; the API gets them as OBS paths (``/bucket/key``). AK/SK are never printed or stored.
"""
from __future__ import annotations

import json
import math
import re
import shlex
from typing import Any

from jobs.backends import cloud, entry_argv, sharded
from jobs.backends.cloud import CloudError, Setting
from jobs.core import storage
from jobs.core.config import setting
from jobs.core.contract import (BOOTSTRAP_PATH, CHECKPOINT_CHANNEL, CHECKPOINT_MARKER, CODE_CHANNEL, CONTAINER_ROOT,
                                IMAGE_PYTHON, JOB_CHANNEL, OUTPUT_CHANNEL, PARAMETERS_FLAG, RESUME_CHANNEL, Contract,
                                service_layout)
from jobs.core.errors import FaceopsError, NotFoundError, SpecError
from jobs.core.tasks import get_task
from jobs.metrics import metrics_from
from jobs.store import TERMINAL, Store

AK = Setting("modelarts", "ak", ("HUAWEICLOUD_SDK_AK",), "access key (AK)")
SK = Setting("modelarts", "sk", ("HUAWEICLOUD_SDK_SK",), "secret key (SK)")
PROJECT = Setting("modelarts", "project_id", ("HUAWEICLOUD_SDK_PROJECT_ID",), "project id (My Credentials > Projects)")
REGION = Setting("modelarts", "region", ("HUAWEICLOUD_SDK_REGION",), "region, like cn-north-4")
ENDPOINT = Setting("modelarts", "endpoint", ("FACEOPS_MODELARTS_ENDPOINT",), "endpoint")
# Where ModelArts puts inputs and collects outputs in the container (the job's local_dir settings).
LAYOUT = service_layout("modelarts")
# How ModelArts hands each channel's folder to the container: as a variable named after the
# channel, never as an argument appended to the command (see build_job).
ACCESS_METHOD = "env"
# "The expected {0} exceeds the quota limit." in ModelArts' error-code list
# (https://support.huaweicloud.com/intl/en-us/api-modelarts/modelarts_03_0095.html).
QUOTA_CODE = "ModelArts.0116"
# Regions of Huawei Cloud Europe, whose endpoints are under myhuaweicloud.eu, not .com (the
# Europe site's API references, https://support.huaweicloud.com/eu/, "Endpoints": EU-Dublin,
# eu-west-101, ``<service>.eu-west-101.myhuaweicloud.eu``).
EUROPE_REGIONS = ("eu-west-101",)
# Bytes of an exported log read per ranged request.
LOG_CHUNK = 1024 * 1024
# status.phase -> our state (Terminating is still running until it is Terminated).
PHASES = {"Creating": "queued", "Pending": "queued", "Running": "running", "Terminating": "running",
          "Completed": "done", "Failed": "failed", "Abnormal": "failed", "Terminated": "stopped"}


def obs_path(uri: str) -> str:
    """``s3://bucket/key`` -> ``/bucket/key``, the OBS path form training jobs take."""
    loc = storage.parse(uri)
    return f"/{loc.bucket}/{loc.key}"


def domain(region: str) -> str:
    """The domain of the region's service endpoints: ``myhuaweicloud.eu`` in Huawei Cloud Europe."""
    return "myhuaweicloud.eu" if region in EUROPE_REGIONS else "myhuaweicloud.com"


def _is_swr(host: str) -> bool:
    configured = setting("modelarts", "swr_registry", ("FACEOPS_SWR_REGISTRY",))
    return host == configured or (host.startswith("swr.") and host.endswith((".myhuaweicloud.com", ".myhuaweicloud.eu")))


def _job_folder(staging: str, name: str) -> str:
    return f"{staging}/jobs/{name}/"


def image_url(ref: str | None, digest: str | None) -> str:
    """The ``image_url`` ModelArts pulls: ``org/name@sha256:...`` when faceops pushed the image
    (the digest, never a movable tag), else ``org/name:tag``; the image must be in SWR."""
    pinned = cloud.image_in_registry(ref, digest, "ModelArts", "SWR (Huawei Cloud's SoftWare Repository)", _is_swr)
    return pinned.split("/", 1)[1]


def environments(record: dict[str, Any]) -> dict[str, str]:
    """What the bootstrap needs to read the container ModelArts starts: which channels and outputs
    are the job's, and on several nodes whether to start MXNet's dist_sync roles (training) or to
    take one shard of the inputs (batch tasks)."""
    spec = record["spec"]
    env = {"FACEOPS_CHANNELS": ",".join(spec["inputs"]), "FACEOPS_OUTPUTS": ",".join(spec["outputs"])}
    if (spec["resources"].get("instance_count") or 1) > 1 and get_task(spec["task"]).kind == "training":
        env["FACEOPS_PARAMETER_SERVER"] = "1"
    elif sharded(spec):
        env["FACEOPS_SHARDED"] = "1"
    return env


def _resources(resources: dict[str, Any]) -> None:
    if not resources.get("instance_type"):
        raise SpecError("resources.instance_type: ModelArts needs a flavor, like modelarts.p3.large.public")
    if resources.get("spot"):
        raise SpecError("resources.spot: ModelArts training jobs have no spot capacity; set resources.spot=false")


def runtime_note(resources: dict[str, Any]) -> dict[str, str]:
    """A ``note`` for the plan when ``max_runtime`` is not whole hours: ModelArts' auto_stop counts
    hours, so the job may run up to the next whole hour, and the user should know before paying."""
    seconds = resources.get("max_runtime")
    if not seconds or seconds % 3600 == 0:
        return {}
    hours = math.ceil(seconds / 3600)
    return {"note": f"max_runtime {seconds / 60:g}m is rounded up to auto_stop {hours} HOURS: ModelArts stops "
                    f"jobs in whole hours, so this one may run (and bill) up to {hours}h"}


def start_command(spec: dict[str, Any]) -> str:
    """The job's start command: the images' interpreter and bootstrap by absolute path (ModelArts
    presets PATH in training containers: "Environment Variables Preset in a Training Container",
    https://support.huaweicloud.com/intl/en-us/usermanual-standard-modelarts/develop-modelarts-0104.html),
    then the entry point, then the marker after which anything ModelArts appends comes. It holds no
    parameter (they travel as a file, see :func:`build_job`), and every word must read the same
    whether ModelArts runs the command through a shell or splits it itself (its docs say both),
    so a word a shell would change (quotes, spaces, ``$``, ``;``, globs) is refused."""
    words = [IMAGE_PYTHON, BOOTSTRAP_PATH, "modelarts", *entry_argv(spec), PARAMETERS_FLAG]
    for word in words:
        if shlex.quote(word) != word:
            raise SpecError(f"entrypoint: {word!r} would read differently with and without a shell in ModelArts' start "
                            "command; pass such values as hyperparameters (they travel as a file)")
    return " ".join(words)


def checkpoint_folder(staging: str, name: str) -> str:
    """Where a training job's checkpoints live on OBS: under the remote job's own name (unique to
    this machine, state folder and version, as on SageMaker), so a restart after a fault resumes
    from them and nobody else's job does."""
    return f"{staging}/checkpoints/{name}/"


def job_files(record: dict[str, Any], staging: str, name: str) -> dict[str, bytes]:
    """What :class:`ModelArtsBackend` puts on OBS before the create call: the typed hyperparameters
    the bootstrap reads (the ``faceops_job`` input), and for a training job the marker that makes
    its checkpoint folder exist before its first start."""
    files = {_job_folder(staging, name) + "config/hyperparameters.json": json.dumps(record["spec"]["hyperparameters"]).encode()}
    if _is_training(record["spec"]):
        files[checkpoint_folder(staging, name) + CHECKPOINT_MARKER] = b"faceops: this job's checkpoints\n"
    return files


def _is_training(spec: dict[str, Any]) -> bool:
    return get_task(spec["task"]).kind == "training"


def build_job(record: dict[str, Any], staging: str):
    """The SDK's ``Job`` body for CreateTrainingJob. Inputs and outputs use ``access_method: env``:
    the SDK's Input/Output default, ``parameter``, would append ``--<name>=<local_dir>`` to the
    command. The hyperparameters are not job parameters (ModelArts appends those to the command,
    where a shell would strip their quotes and expand ``${...}``): they are a JSON file in the
    ``faceops_job`` input (:func:`job_files`). A training job's checkpoints are an output synced to
    OBS while it runs and the same folder an input downloaded when it starts (the documented way to
    resume on ModelArts: "Resumable Training and Incremental Training",
    https://support.huaweicloud.com/intl/en-us/develop-modelarts/develop-modelarts-0023.html)."""
    from huaweicloudsdkmodelarts.v1 import model as m

    spec, res = record["spec"], record["spec"]["resources"]
    cloud.check_remote_uris("modelarts", spec)
    _resources(res)
    digest = (record.get("image") or {}).get("digest")
    image = image_url(spec.get("image"), digest)
    name = cloud.remote_name(record)
    folder = _job_folder(staging, name)
    annotations = {"faceops/job": record["name"], "faceops/version": str(record["version"]),
                   "faceops/code": record["code"]["hash"][:12]}
    if digest:
        annotations["faceops/image-digest"] = digest
    if res.get("retries"):
        annotations["fault-tolerance/job-retry-num"] = str(res["retries"])
    inputs = {**cloud.remote_inputs(record, staging), CODE_CHANNEL: cloud.bundle_folder(staging, record["code"]["hash"]),
              JOB_CHANNEL: folder + "config/"}
    # A sharded batch job's nodes all upload to the same OBS folder, each its own part
    # (parts/node-<index>/); the parts go to the job's staging folder and are merged into the
    # spec's outputs on the client once the job is done (cloud.merge_shards).
    outputs = {**({o: _parts_folder(folder, o) for o in spec["outputs"]} if sharded(spec) else spec["outputs"]),
               OUTPUT_CHANNEL: folder + "output/"}
    local = {name: str(LAYOUT.output_dir(name)) for name in outputs}
    if _is_training(spec):
        inputs[RESUME_CHANNEL] = outputs[CHECKPOINT_CHANNEL] = checkpoint_folder(staging, name)
        local[CHECKPOINT_CHANNEL] = str(Contract(root=CONTAINER_ROOT).checkpoint_dir)
    algorithm = m.JobAlgorithm(
        command=start_command(spec),
        engine=m.JobEngine(image_url=image),
        inputs=[m.Input(name=c, local_dir=str(LAYOUT.channel_dir(c)), access_method=ACCESS_METHOD,
                        remote=m.InputDataInfo(obs=m.InputDataInfoObs(obs_url=obs_path(uri))))
                for c, uri in inputs.items()],
        outputs=[m.Output(name=o, local_dir=local[o], access_method=ACCESS_METHOD,
                          remote=m.Remote(obs=m.RemoteObs(obs_url=obs_path(uri))))
                 for o, uri in outputs.items()],
        environments=environments(record),
    )
    job_spec = m.Spec(resource=m.SpecResource(flavor_id=res["instance_type"], node_count=res.get("instance_count") or 1),
                      log_export_path=m.LogExportPath(obs_url=obs_path(folder + "logs/")))
    if res.get("max_runtime"):
        job_spec.auto_stop = m.AutoStop(time_unit="HOURS", duration=math.ceil(res["max_runtime"] / 3600))
    return m.Job(kind="job", metadata=m.JobMetadata(name=name, description=f"faceops {record['name']}:{record['version']} ({spec['task']})",
                                                    annotations=annotations),
                 algorithm=algorithm, spec=job_spec)


def endpoint() -> str:
    region = None if ENDPOINT.get() else REGION.require()
    return str(ENDPOINT.get() or f"https://modelarts.{region}.{domain(region)}")


def client():
    """An SDK client with AK/SK and project id; each missing one is named with where to set it."""
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.http.http_config import HttpConfig
    from huaweicloudsdkmodelarts.v1 import ModelArtsClient

    credentials = BasicCredentials(AK.require(), SK.require(), PROJECT.require())
    config = HttpConfig.get_default_config()
    config.timeout = (5, 60)
    return ModelArtsClient.new_builder().with_credentials(credentials).with_endpoints([endpoint()]) \
        .with_http_config(config).build()


def _throttled(exc: Exception) -> bool:
    from huaweicloudsdkcore.exceptions.exceptions import ServiceResponseException

    return isinstance(exc, ServiceResponseException) and (exc.status_code in (429, 503) or exc.error_code == "APIGW.0308")


def call(what: str, method: str, request: Any) -> Any:
    """One SDK call with backoff on throttling, its errors turned into messages to act on (the
    backend's calls and ``faceops deploy``'s go through it alike)."""
    from huaweicloudsdkcore.exceptions.exceptions import ConnectionException, ServiceResponseException

    api = getattr(client(), method)
    try:
        return cloud.retrying(lambda: api(request), _throttled, what)
    except ConnectionException:
        raise CloudError(f"{what}: cannot reach ModelArts at {endpoint()}; check modelarts.region / modelarts.endpoint") from None
    except ServiceResponseException as exc:
        raise _service_error(what, exc) from None


def _service_error(what: str, exc: Any) -> FaceopsError:
    message = f"{exc.error_code}: {exc.error_msg}"
    lowered = str(exc.error_msg).lower()
    if exc.status_code in (401, 403) and "quota" not in lowered:
        return CloudError(f"{what}: ModelArts refused the credentials ({message}); check the AK/SK and project id")
    if exc.error_code == QUOTA_CODE or "quota" in lowered or "insufficient" in lowered:
        return CloudError(f"{what}: ModelArts quota reached ({message}); free resources, ask for more quota or "
                          "use another flavor with --set resources.instance_type=...")
    if "already exist" in lowered:
        return CloudError(f"{what}: a ModelArts training job with this name already exists ({message}); faceops names "
                          "each version uniquely, so this one was already submitted: see faceops job list")
    return CloudError(f"{what}: ModelArts rejected the request ({message})")


def console_link(region: str, job_id: str) -> str:
    console = "console.eu.huaweicloud.com" if region in EUROPE_REGIONS else "console.huaweicloud.com"
    return f"https://{console}/modelarts/?region={region}#/trainingJobs/{job_id}"


MAX_RETRIES = 128


class ModelArtsBackend(cloud.CloudBackend):
    """ModelArts' requests and calls; the flow is :class:`cloud.CloudBackend`'s."""

    name = "modelarts"
    id_key = "job_id"

    def needs(self, spec: dict[str, Any]) -> list[str]:
        """Outputs and staging on OBS, a flavor, an image in SWR, AK/SK, the project id and the
        region (or endpoint): what building the request, masking its secrets and naming its API
        call would otherwise refuse one by one."""
        return cloud.staging_needs(self.name, spec) + cloud.gather(
            lambda: _resources(spec["resources"]), lambda: image_url(spec.get("image"), None),
            AK.require, SK.require, PROJECT.require, endpoint)

    def check(self, spec: dict[str, Any]) -> None:
        """ModelArts' own limit, before anything is stored or uploaded: the auto-restart count
        (``fault-tolerance/job-retry-num``) takes 1 to 128 ("Enabling Unconditional Auto Restart",
        https://support.huaweicloud.com/intl/en-us/usermanual-standard-modelarts/develop-modelarts-0041.html)."""
        super().check(spec)
        retries = spec["resources"].get("retries") or 0
        if retries > MAX_RETRIES:
            raise SpecError(f"resources.retries: ModelArts restarts a job at most {MAX_RETRIES} times, got {retries}")

    def build(self, record: dict[str, Any], staging: str) -> cloud.Request:
        from huaweicloudsdkcore.utils.http_utils import sanitize_for_serialization

        job = build_job(record, staging)
        return cloud.Request(api=f"POST /v2/{PROJECT.require()}/training-jobs", name=job.metadata.name, body=job,
                             shown=sanitize_for_serialization(job), files=job_files(record, staging, job.metadata.name),
                             about={"endpoint": endpoint(), **runtime_note(record["spec"]["resources"])})

    def ready(self) -> None:
        client()  # fail on missing credentials before uploading anything

    def secrets(self, record: dict[str, Any]) -> list[str]:
        return [AK.require(), SK.require()]

    def submit(self, request: cloud.Request) -> dict[str, Any]:
        from huaweicloudsdkmodelarts.v1 import model as m

        name = request.name
        try:
            answer = call(f"create training job {name}", "create_training_job", m.CreateTrainingJobRequest(body=request.body))
        except CloudError as exc:
            existing = _find(name) if "already exists" in str(exc) else None
            if existing:
                raise CloudError(f"{exc} (job id {existing.metadata.id}, {existing.status.phase})") from None
            raise
        job_id = answer.metadata.id
        return {"job_id": job_id, "region": REGION.get(), "console": console_link(str(REGION.get() or ""), job_id)}

    def describe(self, record: dict[str, Any]) -> cloud.Remote:
        from huaweicloudsdkmodelarts.v1 import model as m

        info = record["backend_info"]
        job = call(f"show training job {info['remote_name']}", "show_training_job_details",
                    m.ShowTrainingJobDetailsRequest(training_job_id=info["job_id"]))
        phase = job.status.phase
        status = PHASES.get(phase, "running")
        info_out = {"tasks": list(job.status.tasks or [])}
        if status == "done" and sharded(record["spec"]):
            folder = _job_folder(info["staging"], info["remote_name"])
            try:
                metrics = cloud.merge_shards(record["spec"], {o: _parts_folder(folder, o) for o in record["spec"]["outputs"]})
            except FaceopsError as exc:
                return cloud.Remote("failed", phase, f"merging the nodes' parts: {exc}", info_out, {})
            return cloud.Remote(status, phase, None, info_out, metrics)
        metrics = metrics_from(*metrics_source(record)) if status in TERMINAL else None
        return cloud.Remote(status, phase, _reason(job, phase, status), info_out, metrics)

    def cancel(self, record: dict[str, Any]) -> None:
        from huaweicloudsdkmodelarts.v1 import model as m

        info = record["backend_info"]
        call(f"stop training job {info['remote_name']}", "stop_training_job",
              m.StopTrainingJobRequest(training_job_id=info["job_id"], body=m.JobActionType(action_type="terminate")))

    def read_logs(self, record: dict[str, Any], cursor: Any) -> tuple[list[str], Any]:
        return _read_logs(record, cursor or {})


def _parts_folder(job_folder: str, output: str) -> str:
    """Where the nodes of a sharded batch job upload their parts of ``output``."""
    return f"{job_folder}shards/{output}/"


def metrics_source(record: dict[str, Any]) -> tuple[str, None]:
    """Where the version's metrics file is: the faceops output channel, which ModelArts uploads."""
    info = record["backend_info"]
    return _job_folder(info["staging"], info["remote_name"]) + "output/metrics.jsonl", None


def _find(name: str) -> Any:
    """The training job called ``name``, from a name search (None when there is none)."""
    from huaweicloudsdkmodelarts.v1 import model as m

    found = call(f"search training job {name}", "list_training_jobs", m.ListTrainingJobsRequest(
        body=m.JobSearches(filters=[m.Filter(key="name", operator="like", value=[name])])))
    return next((job for job in found.items or [] if job.metadata.name == name), None)


def _reason(job: Any, phase: str, status: str) -> str | None:
    if status not in ("failed", "stopped"):
        return None
    failures = [f"{t.task}: exit code {t.exit_code}" + (f": {t.message}" if t.message else "")
                for t in job.status.task_statuses or [] if t.exit_code]
    if failures:
        return "; ".join(failures)
    return "stopped" if status == "stopped" else f"ModelArts reports {phase}" + (
        f" ({job.status.secondary_phase})" if job.status.secondary_phase else "")


def log_export(info: dict[str, Any], task: str) -> str:
    """Where ModelArts exports one task's full log: ``modelarts-job-<job id>-<task>.log`` in the
    job's ``log_export_path``, uploaded every few seconds while the job runs ("Common Logs",
    https://support.huaweicloud.com/intl/en-us/develop-modelarts/develop-modelarts-0095.html)."""
    return _job_folder(info["staging"], info["remote_name"]) + f"logs/modelarts-job-{info['job_id']}-{task}.log"


def log_pieces(info: dict[str, Any], task: str) -> list[tuple[str, int]]:
    """The exported log files of one task as (URI, size), oldest first: the documented
    ``modelarts-job-<job id>-<task>.log`` last (the one being written), after any pieces rotated
    out of it and named after it (``...-<task>-<n>.log``, ``...-<task>.log.<n>``, as newer
    platform versions write; their names are not documented, so any such name is taken), ordered
    by upload time, then by their numbers."""
    documented = log_export(info, task)
    folder, name = documented.rsplit("/", 1)
    stem = name[:-len(".log")]
    try:
        listed = storage.list(folder + "/")
    except NotFoundError:
        return []
    found = [f for f in listed if f.uri.rsplit("/", 1)[1] == name
             or f.uri.rsplit("/", 1)[1].startswith((name + ".", stem + "-", stem + "_"))]

    def order(piece: Any) -> tuple[bool, float, list[int]]:
        suffix = piece.uri.rsplit("/", 1)[1][len(stem):]
        return piece.uri == documented, piece.mtime, [int(n) for n in re.findall(r"\d+", suffix)]

    return [(f.uri, f.size) for f in sorted(found, key=order)]


def _exported(info: dict[str, Any], task: str, offset: int) -> bytes | None:
    """The exported log from byte ``offset`` on (its pieces read as one stream, by ranged reads);
    None before the first export."""
    pieces, data, base = log_pieces(info, task), b"", 0
    if not pieces:
        return None
    for uri, size in pieces:
        position = offset + len(data) - base
        if position < size or uri == pieces[-1][0]:  # the current file may have grown since the listing
            try:
                while True:
                    chunk = storage.read_range(uri, position, LOG_CHUNK)
                    data, position = data + chunk, position + len(chunk)
                    if len(chunk) < LOG_CHUNK:
                        break
            except NotFoundError:
                pass
        base += size
    return data


def _previewed(info: dict[str, Any], task: str, offset: int) -> tuple[bytes, int]:
    """The log preview from byte ``offset`` on, and the offset it really starts at: the preview
    holds only the last 5 MB (``content`` is the newest ``current_size`` bytes of ``full_size``:
    ShowTrainingJobLogsPreview), so bytes that slid out of it are skipped, up to a line start."""
    from huaweicloudsdkmodelarts.v1 import model as m

    preview = call(f"logs of {info['remote_name']}", "show_training_job_logs_preview",
                    m.ShowTrainingJobLogsPreviewRequest(training_job_id=info["job_id"], task_id=task))
    data = (preview.content or "").encode()
    start = max((preview.full_size or len(data)) - len(data), 0)
    if offset >= start:
        return data[offset - start:], offset
    cut = data.find(b"\n") + 1
    return data[cut:], start + cut


def _read_logs(record: dict[str, Any], seen: dict[str, int]) -> tuple[list[str], dict[str, int]]:
    """New lines of each task's log (one task per node); ``seen`` holds the byte offset given out
    so far per task, which stays right however long the log grows. The exported log on OBS is read
    from that offset (a few bytes per poll); the preview API, which can only return the whole last
    5 MB, is used only until the first export. Lines are given out whole, the last partial one once
    the job has ended."""
    current = Store().get(record["name"], record["version"])
    info, final = current["backend_info"], current["status"] in TERMINAL
    tasks = info.get("tasks") or ["worker-0"]
    lines, seen = [], dict(seen)
    for task in tasks:
        offset = seen.get(task, 0)
        data = _exported(info, task, offset)
        start = offset
        if data is None:
            data, start = _previewed(info, task, offset)
        new = data if final else data[:data.rfind(b"\n") + 1]
        seen[task] = start + len(new)
        text = new.decode(errors="replace").splitlines()
        if start > offset:
            text.insert(0, f"[faceops] {start - offset} bytes of this log slid out of ModelArts' 5 MB preview before "
                           f"they were read; the whole log is exported to {log_export(info, task)}")
        lines += [f"[{task}] {line}" for line in text] if len(tasks) > 1 else text
    return lines, seen
