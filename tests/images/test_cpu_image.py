"""The shipped CPU image built for real and used for real: ``Dockerfile.cpu`` with real apt and pip
installs on a Debian bookworm base that the test makes itself (debootstrap from the machine's Debian
mirror, imported into a private engine: there is no Docker Hub here), then every module the tasks
use imported in it, a recognition job trained for a few steps and a gallery + identify job run with
``runtime: docker``, their outputs uploaded to a real S3 server.

Building costs a few minutes, so the root file system and the built image are cached under
``$FACEOPS_TEST_CACHE`` (default ``~/.cache/faceops-tests``): the image is saved after a build and
loaded before the next one, which then finds it up to date by its content hash (or, when the
Dockerfile's context changed, reuses its unchanged layers). The engine lets dockerd choose its
storage driver: with vfs every container would copy the whole 1.2 GB image first."""
from __future__ import annotations

import json
import os
import shutil
import ssl
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from images.build import IMAGES_DIR, build
from images.debian_base import BUILD_CA, host_mirror, import_rootfs, rootfs
from jobs.core.contract import BOOTSTRAP_PATH, IMAGE_PYTHON
from jobs.core.tasks import get_task
from jobs.store import Store
from tests.harness.docker import DockerEngine, running_docker_engine

ROOT = IMAGES_DIR.parent
CACHE = Path(os.environ.get("FACEOPS_TEST_CACHE") or Path.home() / ".cache" / "faceops-tests")
HOST_CA = os.environ.get("PIP_CERT") or ssl.get_default_verify_paths().cafile
SAVED_IMAGE = CACHE / "train-cpu-image.tar"
TASKS = ("recognition", "detection", "gallery", "identify")
# Every third-party module the tasks import, and the distributions the image must not hold.
LIBRARIES = ("mxnet", "numpy", "onnx", "onnxruntime", "cv2", "faiss", "insightface", "insightface.app",
             "insightface.model_zoo", "insightface.utils.face_align", "scipy", "skimage", "boto3", "yaml",
             "click", "tqdm", "simplejpeg")
IMPORTS = """
import importlib, importlib.metadata as meta, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
found = {d.metadata["Name"].lower() for d in meta.distributions()}
print(json.dumps({"versions": {n: meta.version(n) for n in ("mxnet", "numpy", "insightface", "faiss-cpu", "onnxruntime")},
                  "opencv": sorted(n for n in found if n.startswith("opencv"))}))
"""


@pytest.fixture(scope="module")
def image_engine() -> Iterator[DockerEngine]:
    """A private engine with the storage driver dockerd picks (overlay2 where the kernel has it)."""
    try:
        with running_docker_engine(storage_driver=None) as engine:
            yield engine
    except RuntimeError as exc:
        pytest.skip(f"Docker engine cannot start: {exc}")


@pytest.fixture(scope="module")
def debian_base(image_engine) -> str:
    """Debian bookworm with Python 3.11 from the distribution, debootstrapped from the mirror this
    machine's apt uses, with this machine's CA bundle for pip behind a TLS-inspecting proxy."""
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap not found (Debian package debootstrap; scripts/setup-dev.sh installs it)")
    ca = Path(HOST_CA) if HOST_CA else None
    tarball = rootfs(CACHE, "bookworm", ("python3.11",), host_mirror("bookworm"), ca)
    ref, saved = f"faceops-test/debian:{tarball.stem}", tarball.with_name(f"{tarball.stem}-image.tar")
    # Imported once and then saved: an import is stamped with its time, and a build reuses the
    # layers of a cached image only on the very same base.
    if saved.exists():
        load(image_engine.client(), saved)
    else:
        save(image_engine.client(), import_rootfs(image_engine.client(), tarball, ref), saved)
    return ref


def load(client, path: Path) -> list[str]:
    """``docker load``; returns the tags loaded."""
    with path.open("rb") as fh:
        return [tag for image in client.images.load(fh) for tag in image.tags]


def save(client, ref: str, path: Path) -> None:
    """``docker save`` to ``path``, replaced whole only once written."""
    partial = path.with_suffix(".partial")
    with partial.open("wb") as fh:
        for chunk in client.api.get_image(ref):
            fh.write(chunk)
    partial.replace(path)


@pytest.fixture(scope="module")
def cpu_image(image_engine, debian_base, monkeypatch_module) -> str:
    """``faceops/train:cpu-<hash>`` built on the Debian base, or loaded from the cache."""
    monkeypatch_module.setenv("DOCKER_HOST", image_engine.host)
    client = image_engine.client()
    cached = load(client, SAVED_IMAGE) if SAVED_IMAGE.exists() else []
    args = {"PIP_OPTIONS": f"--cert {BUILD_CA}"} if HOST_CA else {}
    result = build(target="cpu", base=debian_base, build_args=args, cache_from=cached,
                   echo=lambda line: print(line, file=sys.stderr))
    if result.built:
        save(client, result.ref, SAVED_IMAGE)
    return result.ref


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture
def in_image(cpu_image, image_engine, s3_env, monkeypatch) -> str:
    """Jobs run on the image engine; outputs go to the test S3 server."""
    monkeypatch.setenv("DOCKER_HOST", image_engine.host)
    return cpu_image


def submit(runner, path: Path, text: str):
    path.write_text(textwrap.dedent(text))
    return runner("job", "submit", path)


def keys(client, bucket: str, prefix: str) -> set[str]:
    listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {item["Key"][len(prefix):] for item in listing}


def test_every_module_the_tasks_use_imports(cpu_image, image_engine):
    """The tasks' entry points (with the faceops code where a job's bundle goes) and every library
    they load import in the image; one OpenCV, the headless one, and the pinned versions."""
    entries = [get_task(name).entrypoint[2] for name in TASKS]
    out = image_engine.client().containers.run(
        cpu_image, ["python", "-c", IMPORTS, *entries, *LIBRARIES], remove=True, network_mode="none",
        volumes={str(ROOT): {"bind": "/opt/ml/code", "mode": "ro"}})
    found = json.loads(out.decode().strip().splitlines()[-1])
    assert found["opencv"] == ["opencv-python-headless"], found
    versions = found["versions"]
    assert versions["mxnet"] == "1.9.1" and versions["insightface"] == "2.1", versions
    assert tuple(int(p) for p in versions["numpy"].split(".")[:2]) < (1, 24), versions


def test_image_scripts_find_the_contract_next_to_them(cpu_image, image_engine):
    """faceops-task and the cloud bootstrap import the contract and launcher modules the image
    carries beside them (no faceops code mounted): faceops-task without arguments gets as far as
    its usage (exit 2), which it prints only after importing them."""
    check = "cd /opt/faceops/bin && python -c 'import contract, launch' && (faceops-task 2>/dev/null; echo $?)"
    out = image_engine.client().containers.run(cpu_image, ["sh", "-c", check], remove=True, network_mode="none")
    assert out.decode().split() == ["2"]


def test_recognition_job_trains_in_the_image(runner, in_image, s3_bucket, s3_env, lfw10, tmp_path):
    from train.pack import pack_recognition

    for person in sorted(p for p in lfw10.iterdir() if p.is_dir())[:5]:
        (tmp_path / "photos" / person.name).mkdir(parents=True)
        for photo in sorted(person.glob("*.jpg"))[:4]:
            (tmp_path / "photos" / person.name / photo.name).symlink_to(photo)
    pack_recognition(tmp_path / "photos", str(tmp_path / "packed"), resize="112", progress=False)
    result = submit(runner, tmp_path / "recognition.yaml", f"""\
        name: recog-in-image
        task: recognition
        runtime: docker
        image: {in_image}
        inputs:
          train: {tmp_path / 'packed'}
        outputs:
          model: s3://{s3_bucket}/models/recog/
        hyperparameters:
          network: mbf_s1
          batch_size: 10
          max_steps: 3
          log_every: 1
          workers: 0
        """)
    record = Store().get("recog-in-image")
    assert result.exit_code == 0 and record["status"] == "done", result.output
    assert record["metrics"]["step"] == 3, record["metrics"]
    assert {"model.onnx", "model-symbol.json", "model-0000.params"} <= keys(s3_env.client(), s3_bucket, "models/recog/")


def test_gallery_and_identify_jobs_run_in_the_image(runner, in_image, s3_bucket, s3_env, lfw10, model_dir, tmp_path):
    """The pretrained models as an input channel, a gallery of 4 people, probes of theirs and of a
    person not in it: the report is right and lands in S3."""
    people = sorted(p for p in lfw10.iterdir() if p.is_dir())[:5]
    for rank, person in enumerate(people):
        for n, photo in enumerate(sorted(person.glob("*.jpg"))[:5]):
            part = "gallery" if rank < 4 and n < 3 else "probes"
            (tmp_path / part / person.name).mkdir(parents=True, exist_ok=True)
            (tmp_path / part / person.name / photo.name).symlink_to(photo)
    gallery = f"s3://{s3_bucket}/galleries/lfw/"
    result = submit(runner, tmp_path / "gallery.yaml", f"""\
        name: gallery-in-image
        task: gallery
        runtime: docker
        image: {in_image}
        inputs:
          images: {tmp_path / 'gallery'}
          models: {model_dir}
        outputs:
          database: {gallery}
        """)
    record = Store().get("gallery-in-image")
    assert result.exit_code == 0 and record["status"] == "done", result.output
    assert (record["metrics"]["people"], record["metrics"]["embeddings"]) == (4, 12), record["metrics"]

    result = submit(runner, tmp_path / "identify.yaml", f"""\
        name: identify-in-image
        task: identify
        runtime: docker
        image: {in_image}
        inputs:
          images: {tmp_path / 'probes'}
          gallery: {gallery}
          models: {model_dir}
        outputs:
          report: s3://{s3_bucket}/reports/lfw/
        hyperparameters:
          truth_from_folders: true
        """)
    record = Store().get("identify-in-image")
    assert result.exit_code == 0 and record["status"] == "done", result.output
    metrics = record["metrics"]
    assert metrics["faces"] >= 13 and metrics["rank1"] >= 0.9 and metrics["unknown_rejection"] >= 0.8, metrics
    assert "report.jsonl" in keys(s3_env.client(), s3_bucket, "reports/lfw/")


def test_bootstrap_runs_as_the_modelarts_user_in_the_image(cpu_image, image_engine, tmp_path):
    """ModelArts starts custom images as ma-user (uid 1000, gid 100) with the inputs it
    downloaded: in the image that user unpacks the code bundle, and the task writes its model,
    metrics and checkpoints under /opt/ml."""
    from tests.jobs.cloud import stage_bundle

    code = tmp_path / "src"
    code.mkdir()
    (code / "train.py").write_text(textwrap.dedent("""\
        import json, os
        from contract import from_env, log_metrics
        job = from_env()
        (job.model_dir / "model.txt").write_text("weights")
        (job.checkpoint_dir / "ckpt").write_text("state")
        log_metrics(step=1)
        print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "hp": job.hyperparameters,
                          "model": sorted(os.listdir(job.model_dir)), "metrics": job.metrics_file.exists()}))
    """))
    channel = tmp_path / "faceops_code"
    stage_bundle(channel, code)
    for path in (channel, *channel.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    job = tmp_path / "faceops_job"
    job.mkdir()
    (job / "hyperparameters.json").write_text('{"lr": 0.1}')
    job.chmod(0o755), (job / "hyperparameters.json").chmod(0o644)
    # As ModelArts starts it: interpreter and bootstrap by absolute path, under a PATH without the image's folders.
    env = {"FACEOPS_CHANNELS": "", "FACEOPS_OUTPUTS": "model", "PATH": "/usr/bin:/bin",
           "faceops_code": "/opt/ml/input/data/faceops_code", "faceops_job": "/opt/ml/input/data/faceops_job",
           "PYTHONPATH": "/opt/faceops/bin"}
    out = image_engine.client().containers.run(
        cpu_image, [IMAGE_PYTHON, BOOTSTRAP_PATH, "modelarts", "python", "train.py", "--faceops-parameters"],
        user="1000:100", environment=env, remove=True, network_mode="none", working_dir="/home/ma-user",
        volumes={str(channel): {"bind": "/opt/ml/input/data/faceops_code", "mode": "ro"},
                 str(job): {"bind": "/opt/ml/input/data/faceops_job", "mode": "ro"}})
    seen = json.loads(out.decode().strip().splitlines()[-1])
    assert seen == {"uid": 1000, "gid": 100, "hp": {"lr": 0.1}, "model": ["model.txt"], "metrics": True}
