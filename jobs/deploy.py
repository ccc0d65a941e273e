"""``faceops deploy``: a gallery (or the gallery a job version built) as a real-time endpoint on
SageMaker or ModelArts, answered by ``faceops serve`` inside the same faceops image jobs run in.

What is deployed is one model folder: ``gallery/`` (the gallery), ``models/`` (its detector and
recognizer ONNX, checked against the gallery's recorded recognizer) and ``code/`` (the faceops
code bundle, as jobs ship it: the images hold no faceops code). The image's ``serve`` entry
point (images/bin/serve) runs ``faceops serve`` on port 8080 over that folder at /opt/ml/model.

- SageMaker (the hosting contract: the container is started as ``docker run IMAGE serve`` and
  must answer ``GET /ping`` and ``POST /invocations`` on port 8080, with the model archive
  unpacked under /opt/ml/model;
  https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-inference-code.html):
  ``model.tar.gz`` is uploaded to the staging bucket, then CreateModel, CreateEndpointConfig and
  CreateEndpoint, each request checked against botocore's model of the API first.
- ModelArts (a real-time service, CreateInferService ``POST /v2/{project_id}/services``,
  built from the official SDK's request models): the folder is uploaded to OBS and mounted at
  /opt/ml/model, the unit runs the image's ``serve`` on port 8080 with an HTTP readiness check
  on ``/healthz``.

``--dry-run`` builds and checks the same requests and shows them; nothing is uploaded or created.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from images.digests import lookup
from inference.models import resolve, sha256
from jobs import report
from jobs.backends import cloud
from jobs.backends import modelarts as ma
from jobs.backends import sagemaker as sm
from jobs.backends.service_model import problems
from jobs.core import storage
from jobs.core.bundle import FACEOPS_CODE, build_bundle, extract_bundle, faceops_root
from jobs.core.config import setting
from jobs.core.errors import DataError, SpecError
from jobs.store import Store

BACKENDS = ("sagemaker", "modelarts")
MODEL_DIR = "/opt/ml/model"  # where both services put the model folder in the container
PORT = 8080  # SageMaker's fixed serving port; ModelArts is told it
SERVE = "serve"  # the images' serving entry point (images/bin/serve)
HEALTH = "/healthz"
GALLERY_MANIFEST = "gallery.json"


@dataclass
class Deployment:
    """A deployment's name, what gets uploaded where, and the API requests in the order they run."""

    backend: str
    name: str
    source: str
    revision: int
    artifact: str  # where the model folder (ModelArts) or model.tar.gz (SageMaker) is uploaded
    requests: list[tuple[str, Any]] = field(default_factory=list)  # (API, request object)

    def shown(self) -> dict[str, Any]:
        """The deployment as JSON-ready data (what --dry-run prints)."""
        return {"backend": self.backend, "name": self.name, "gallery": self.source, "gallery_revision": self.revision,
                "artifact": self.artifact,
                "requests": [{"api": api, "body": body if isinstance(body, dict) else _serialised(body)}
                             for api, body in self.requests]}


def _serialised(model: Any) -> dict[str, Any]:
    """A ModelArts SDK model as the JSON the SDK sends."""
    from huaweicloudsdkcore.utils.http_utils import sanitize_for_serialization

    return sanitize_for_serialization(model)


def gallery_of(source: str) -> str:
    """The gallery to deploy: ``source`` itself (a folder or an object-storage prefix holding
    gallery.json), or the ``database`` output of the job version ``NAME:V``."""
    if storage.exists(storage.join(source, GALLERY_MANIFEST)):
        return source
    if ":" not in source or storage.is_remote(source) or Path(source).exists():
        raise DataError(f"{source}: not a gallery (no {GALLERY_MANIFEST}) and not a job version NAME:V")
    record = Store().resolve(source)
    if record.get("status") != "done":
        raise DataError(f"{source}: the version is {record.get('status')}; only a finished version's gallery deploys")
    where = report.locations(record).get("database")
    if not where:
        raise DataError(f"{source}: task {record['spec']['task']} has no 'database' output; deploy a gallery version")
    uri = where["remote"] or where["local"]
    if not storage.exists(storage.join(uri, GALLERY_MANIFEST)):
        raise DataError(f"{source}: its gallery output {uri} holds no {GALLERY_MANIFEST}")
    return uri


def deployment_name(manifest: dict[str, Any], source: str, image: str, instance_type: str) -> str:
    """``faceops-r<revision>-<hash>``: the hash covers the gallery's place, revision and models, the
    image and the instance type, so the same deployment keeps its name and a changed one gets a new
    one (SageMaker names: letters, digits and hyphens, at most 63)."""
    content = json.dumps([source, manifest["revision"], manifest["models"], image, instance_type], sort_keys=True)
    return f"faceops-r{manifest['revision']}-{hashlib.sha256(content.encode()).hexdigest()[:12]}"


def model_files(manifest: dict[str, Any], models: str | None, det: str | None, rec: str | None) -> tuple[Path, Path]:
    """The detector and recognizer to ship; a recognizer other than the gallery's is refused."""
    det_path, rec_path = resolve(models, det, rec)
    have = manifest["models"]["recognizer"]
    if sha256(rec_path) != have["sha256"]:
        raise DataError(f"recognizer {rec_path.name} is not the gallery's ({have['file']}, sha256 {have['sha256'][:12]}); "
                        "pass the models the gallery was built with")
    return det_path, rec_path


def package(gallery: str, det: Path, rec: Path, folder: Path) -> Path:
    """Write the model folder (gallery/, models/, code/) into ``folder`` and return it."""
    storage.download(gallery, folder / "gallery", progress=False)
    (folder / "models").mkdir(parents=True)
    for path in (det, rec):
        shutil.copyfile(path, folder / "models" / path.name)
    extract_bundle(build_bundle(faceops_root(), FACEOPS_CODE).path, folder / "code")
    return folder


def archive(folder: Path, out: Path) -> Path:
    """``folder``'s contents as ``out`` (a model.tar.gz, entries relative to the folder, as
    SageMaker unpacks it into /opt/ml/model)."""
    with tarfile.open(out, "w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
    return out


def staging(section: str) -> str:
    """The backend's staging prefix (``<section>.staging`` or ``FACEOPS_<SECTION>_STAGING``)."""
    configured = setting(section, "staging", (f"FACEOPS_{section.upper()}_STAGING",))
    if not configured:
        raise SpecError(f"deploy uploads the model folder to object storage: set FACEOPS_{section.upper()}_STAGING "
                        f"or {section}.staging in $FACEOPS_HOME/config.yaml (an s3:// prefix)")
    return str(configured).rstrip("/")


def sagemaker_requests(name: str, image: str, model_data: str, role: str, instance_type: str,
                       count: int) -> list[tuple[str, dict[str, Any]]]:
    """CreateModel, CreateEndpointConfig and CreateEndpoint, each checked against botocore's model."""
    tags = [{"Key": "faceops:deployment", "Value": name}]
    calls = [
        ("CreateModel", {"ModelName": name, "ExecutionRoleArn": role, "Tags": tags,
                         "PrimaryContainer": {"Image": image, "ModelDataUrl": model_data, "Mode": "SingleModel",
                                              "Environment": {"FACEOPS_SERVE_MODEL_DIR": MODEL_DIR}}}),
        ("CreateEndpointConfig", {"EndpointConfigName": name, "Tags": tags,
                                  "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": name,
                                                          "InitialInstanceCount": count, "InstanceType": instance_type}]}),
        ("CreateEndpoint", {"EndpointName": name, "EndpointConfigName": name, "Tags": tags}),
    ]
    for api, request in calls:
        found = problems("sagemaker", api, request)
        if found:
            raise SpecError(f"SageMaker would refuse this {api} request (botocore's model of the API):\n  "
                            + "\n  ".join(found))
    return calls


def modelarts_request(name: str, image: str, model_folder: str, flavor: str, count: int) -> Any:
    """The CreateInferService body, built from the SDK's models (an unknown field cannot be set)."""
    from huaweicloudsdkmodelarts.v1 import model as m

    health = m.Health(check_method="HTTP", url=HEALTH, protocol="HTTP", initial_delay_seconds=30,
                      timeout_seconds=10, period_seconds=10, failure_threshold=3)
    unit = m.UnitConfig(role="COMMON", flavor=flavor, count=count, cmd=SERVE, port=PORT,
                        image=m.ImageInfo(source="SWR", swr_path=image),
                        files=[m.FileInfo(source="OBS", address=model_folder, mount_path=MODEL_DIR + "/")],
                        envs={"FACEOPS_SERVE_MODEL_DIR": MODEL_DIR},
                        readiness_health=health, startup_health=health, liveness_health=health)
    return m.ServiceCreateRequest(name=name, description="faceops serve: online identify", type="REAL_TIME",
                                  deploy_type="SINGLE", group_configs=[m.GroupConfig(name=name, count=count, weight=100,
                                                                                      unit_configs=[unit])],
                                  runtime_config=m.RuntimeConfigCreateRequest(
                                      service_invoke=m.ServiceInvokeCreateRequest(port=PORT, protocol="HTTP")),
                                  tags=[m.ServiceCreateRequestTags(key="faceops-deployment", value=name)])


def plan(source: str, backend: str, image: str, instance_type: str, count: int = 1, models: str | None = None,
         det: str | None = None, rec: str | None = None) -> Deployment:
    """The deployment of ``source`` (a gallery or ``NAME:V``) on ``backend``, its requests built
    and checked; nothing is uploaded or created."""
    if backend not in BACKENDS:
        raise SpecError(f"--backend: one of {', '.join(BACKENDS)}, got {backend!r}")
    if count < 1:
        raise SpecError(f"--instance-count: at least 1, got {count}")
    gallery = gallery_of(source)
    manifest = json.loads(storage.read_bytes(storage.join(gallery, GALLERY_MANIFEST)))
    model_files(manifest, models, det, rec)
    name = deployment_name(manifest, str(gallery), image, instance_type)
    revision = int(manifest["revision"])
    if backend == "sagemaker":
        pinned = cloud.image_in_registry(image, lookup(image), "SageMaker", "Amazon ECR", sm._is_ecr)
        artifact = f"{staging('sagemaker')}/deploy/{name}/model.tar.gz"
        calls = sagemaker_requests(name, pinned, artifact, sm.ROLE.require(), instance_type, count)
        return Deployment(backend, name, str(gallery), revision, artifact, calls)
    pinned = ma.image_url(image, lookup(image))
    artifact = f"{staging('modelarts')}/deploy/{name}/model/"
    body = modelarts_request(name, pinned, artifact, instance_type, count)
    return Deployment(backend, name, str(gallery), revision, artifact,
                      [(f"POST /v2/{ma.PROJECT.require()}/services", body)])


def deploy(source: str, backend: str, image: str, instance_type: str, count: int = 1, models: str | None = None,
           det: str | None = None, rec: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Plan, then (unless ``dry_run``) upload the model folder and send the requests; returns
    what was (or would be) done, with the endpoint's name."""
    deployment = plan(source, backend, image, instance_type, count, models, det, rec)
    if dry_run:
        return {"dry_run": True, **deployment.shown()}
    manifest = json.loads(storage.read_bytes(storage.join(deployment.source, GALLERY_MANIFEST)))
    det_path, rec_path = model_files(manifest, models, det, rec)
    with tempfile.TemporaryDirectory(prefix="faceops-deploy-") as tmp:
        folder = package(deployment.source, det_path, rec_path, Path(tmp) / "model")
        if backend == "sagemaker":
            storage.upload(archive(folder, Path(tmp) / "model.tar.gz"), deployment.artifact, progress=False)
        else:
            storage.upload(folder, deployment.artifact, progress=False)
    answers = [_send(backend, api, request) for api, request in deployment.requests]
    return {"dry_run": False, **deployment.shown(), "answers": answers}


def _send(backend: str, api: str, request: Any) -> dict[str, Any]:
    """One API call, with the backends' retry on throttling and their error wording."""
    if backend == "sagemaker":
        method = "sagemaker." + re.sub(r"(?<!^)(?=[A-Z])", "_", api).lower()
        answer = sm.call(f"{api} {request.get('ModelName') or request.get('EndpointConfigName') or request['EndpointName']}",
                          method, **request)
        return {k: v for k, v in answer.items() if k.endswith("Arn")}
    from huaweicloudsdkcore.utils.http_utils import sanitize_for_serialization
    from huaweicloudsdkmodelarts.v1 import model as m

    answer = ma.call(f"create service {request.name}", "create_infer_service", m.CreateInferServiceRequest(body=request))
    return {k: v for k, v in sanitize_for_serialization(answer).items() if k in ("id", "name", "status")}
