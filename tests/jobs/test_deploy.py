"""`faceops deploy`: the dry runs' requests hold to botocore's SageMaker model and the ModelArts
SDK's models; a real deploy against moto's SageMaker and a real S3 server uploads a model archive
that the image's `serve` entry point, started as SageMaker starts it, answers from (GET /ping,
POST /invocations) with the gallery's people."""
from __future__ import annotations

import json
import os
import sys
import tarfile
from pathlib import Path

import pytest
import requests

from tests.harness.modelarts import model_problems
from tests.harness.net import free_port
from tests.harness.process import running
from tests.harness.sagemaker import REGION, SageMakerServer

ROLE = "arn:aws:iam::123456789012:role/faceops-test"
ECR_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/faceops/train:cpu"
SWR_IMAGE = "swr.cn-north-4.myhuaweicloud.com/faceops/train:cpu"
SERVE = Path(__file__).resolve().parents[2] / "images" / "bin" / "serve"
PEOPLE = 3


@pytest.fixture(scope="module")
def gallery(lfw10, model_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A small gallery (3 LFW people x 3 photos) and a probe photo of its first person."""
    from inference.gallery import build_gallery

    root = tmp_path_factory.mktemp("deploy")
    people = sorted(p for p in lfw10.iterdir() if p.is_dir())[:PEOPLE]
    for person in people:
        (root / "photos" / person.name).mkdir(parents=True)
        for photo in sorted(person.glob("*.jpg"))[:3]:
            (root / "photos" / person.name / photo.name).symlink_to(photo)
    build_gallery(root / "photos", root / "db", model_dir)
    return root / "db", sorted(people[0].glob("*.jpg"))[-1]


@pytest.fixture
def sagemaker_env(s3_env, s3_bucket, monkeypatch):
    monkeypatch.setenv("FACEOPS_SAGEMAKER_ROLE_ARN", ROLE)
    monkeypatch.setenv("FACEOPS_SAGEMAKER_STAGING", f"s3://{s3_bucket}/faceops")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    return s3_bucket


def test_sagemaker_dry_run_shows_checked_requests_and_creates_nothing(runner, gallery, sagemaker_env, s3_env):
    from jobs.backends.service_model import problems

    result = runner("deploy", gallery[0], "--backend", "sagemaker", "--image", ECR_IMAGE, "--instance-type", "ml.c5.xlarge",
                    "--dry-run")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert [r["api"] for r in plan["requests"]] == ["CreateModel", "CreateEndpointConfig", "CreateEndpoint"]
    for request in plan["requests"]:
        assert problems("sagemaker", request["api"], request["body"]) == []
    model = plan["requests"][0]["body"]["PrimaryContainer"]
    assert model["Image"] == ECR_IMAGE and model["ModelDataUrl"] == plan["artifact"].rstrip("/")
    assert plan["artifact"].startswith(f"s3://{sagemaker_env}/faceops/deploy/") and plan["gallery_revision"] == 1
    assert "Contents" not in s3_env.client().list_objects_v2(Bucket=sagemaker_env)

    refused = runner("deploy", gallery[0], "--backend", "sagemaker", "--image", ECR_IMAGE, "--instance-type", "c5.xlarge",
                     "--dry-run")
    assert refused.exit_code == 2 and "InstanceType" in refused.output and "would refuse" in refused.output
    elsewhere = runner("deploy", gallery[0], "--backend", "sagemaker", "--image", "docker.io/faceops/train:cpu",
                       "--instance-type", "ml.c5.xlarge", "--dry-run")
    assert elsewhere.exit_code == 2 and "Amazon ECR" in elsewhere.output


def test_modelarts_dry_run_body_holds_to_the_sdk_models(runner, gallery, s3_bucket, monkeypatch):
    monkeypatch.setenv("HUAWEICLOUD_SDK_PROJECT_ID", "0123456789abcdef0123456789abcdef")
    monkeypatch.setenv("FACEOPS_MODELARTS_STAGING", f"s3://{s3_bucket}/faceops")
    result = runner("deploy", gallery[0], "--backend", "modelarts", "--image", SWR_IMAGE,
                    "--instance-type", "modelarts.vm.cpu.2u", "--dry-run")
    assert result.exit_code == 0, result.output
    [request] = json.loads(result.output)["requests"]
    assert request["api"] == "POST /v2/0123456789abcdef0123456789abcdef/services"
    body = request["body"]
    assert model_problems(body, "ServiceCreateRequest", "body") == []
    unit = body["group_configs"][0]["unit_configs"][0]
    assert unit["cmd"] == "serve" and unit["port"] == 8080 and unit["image"]["swr_path"] == "faceops/train:cpu"
    assert unit["readiness_health"]["url"] == "/healthz" and unit["files"][0]["mount_path"] == "/opt/ml/model/"
    assert body["type"] == "REAL_TIME"
    assert model_problems({**body, "replicas": 2}, "ServiceCreateRequest", "body"), "the check refuses unknown fields"


def test_a_gallery_built_with_other_models_is_refused(runner, gallery, sagemaker_env, tmp_path):
    manifest = json.loads((gallery[0] / "gallery.json").read_text())
    manifest["models"]["recognizer"]["sha256"] = "0" * 64
    other = tmp_path / "db"
    other.mkdir()
    (other / "gallery.json").write_text(json.dumps(manifest))
    result = runner("deploy", other, "--backend", "sagemaker", "--image", ECR_IMAGE, "--instance-type", "ml.c5.xlarge",
                    "--dry-run")
    assert result.exit_code == 2 and "not the gallery's" in result.output


def test_sagemaker_deploy_uploads_an_archive_the_serve_entry_point_answers_from(runner, gallery, sagemaker_env, s3_env,
                                                                               tmp_path, monkeypatch):
    import boto3

    with SageMakerServer() as server:
        monkeypatch.setenv("FACEOPS_SAGEMAKER_ENDPOINT", server.endpoint)
        result = runner("deploy", gallery[0], "--backend", "sagemaker", "--image", ECR_IMAGE,
                        "--instance-type", "ml.c5.xlarge", "--json")
        assert result.exit_code == 0, result.output
        deployed = json.loads(result.output)
        client = boto3.client("sagemaker", endpoint_url=server.endpoint, region_name=REGION)
        endpoint = client.describe_endpoint(EndpointName=deployed["name"])
        assert endpoint["EndpointConfigName"] == deployed["name"]
        model = client.describe_model(ModelName=deployed["name"])
        assert model["PrimaryContainer"]["ModelDataUrl"] == deployed["artifact"]

    # What SageMaker does with it: unpack the archive under /opt/ml/model and run `IMAGE serve`.
    archive = tmp_path / "model.tar.gz"
    bucket, key = deployed["artifact"][len("s3://"):].split("/", 1)
    s3_env.client().download_file(bucket, key, str(archive))
    model_dir = tmp_path / "opt-ml-model"
    with tarfile.open(archive) as tar:
        tar.extractall(model_dir, filter="data")
    assert {p.name for p in model_dir.iterdir()} == {"code", "gallery", "models"}
    port = free_port()
    env = {**os.environ, "FACEOPS_SERVE_MODEL_DIR": str(model_dir), "FACEOPS_SERVE_PORT": str(port)}
    env.pop("PYTHONPATH", None)  # the code comes from the archive, as in the image

    def ping() -> bool:
        return requests.get(f"http://127.0.0.1:{port}/ping", timeout=5).status_code == 200

    with running([sys.executable, str(SERVE)], tmp_path / "serve.log", ping, timeout=180, grace=15, env=env):
        answer = requests.post(f"http://127.0.0.1:{port}/invocations", data=gallery[1].read_bytes(), timeout=120,
                               headers={"Content-Type": "image/jpeg"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["faces"][0]["person"] == gallery[1].parent.name


def test_a_gallery_version_deploys_by_its_name(runner, lfw10, sagemaker_env, tmp_path):
    for person in sorted(p for p in lfw10.iterdir() if p.is_dir())[:2]:
        (tmp_path / "photos" / person.name).mkdir(parents=True)
        for photo in sorted(person.glob("*.jpg"))[:2]:
            (tmp_path / "photos" / person.name / photo.name).symlink_to(photo)
    (tmp_path / "gallery.yaml").write_text(f"name: door-gallery\ntask: gallery\ninputs:\n  images: {tmp_path / 'photos'}\n"
                                           f"outputs:\n  database: {tmp_path / 'db'}\n")
    assert runner("job", "submit", tmp_path / "gallery.yaml").exit_code == 0
    result = runner("deploy", "door-gallery:1", "--backend", "sagemaker", "--image", ECR_IMAGE,
                    "--instance-type", "ml.c5.xlarge", "--dry-run")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["gallery"] == str(tmp_path / "db")
    missing = runner("deploy", "no-such-gallery:1", "--backend", "sagemaker", "--image", ECR_IMAGE,
                     "--instance-type", "ml.c5.xlarge", "--dry-run")
    assert missing.exit_code != 0 and "no-such-gallery" in missing.output
