"""A model output chains into the next job on every backend: SageMaker writes a training job's
model as ``<outputs.model>/<job>/output/model.tar.gz``, and a job given that output (the job's
prefix, or the output path holding it) gets the files, through the local backend's staging and
through the cloud bootstrap alike (one helper, jobs.core.contract.unpack_model_archives)."""
from __future__ import annotations

import io
import json
import tarfile
import textwrap
from pathlib import Path

import pytest

from jobs.core.contract import unpack_model_archives
from jobs.store import Store
from tests.jobs.cloud import REPO, run_bootstrap, stage_bundle

JOB = "recog-mbf-v1-0123abcd"  # a SageMaker training job's name, as faceops makes them


def model_tarball(recognizer: Path) -> bytes:
    """What SageMaker uploads for a recognition job: /opt/ml/model packed, model.onnx at the top."""
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w:gz") as tar:
        tar.add(recognizer, arcname="model.onnx")
        data = b'{"val_lfw_acc": 0.99}\n'
        member = tarfile.TarInfo("metrics.json")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    return packed.getvalue()


def sagemaker_output(folder: Path, recognizer: Path) -> Path:
    """``folder`` laid out as a SageMaker training job's output path holding one job."""
    out = folder / JOB / "output"
    out.mkdir(parents=True)
    (out / "model.tar.gz").write_bytes(model_tarball(recognizer))
    (out / "output.tar.gz").write_bytes(b"not a model")  # the job's output/data, left alone
    return folder


def test_a_sagemaker_model_output_in_s3_is_the_recognizer_of_a_local_gallery_job(runner, lfw10, model_dir, tmp_path,
                                                                                s3_env, s3_bucket):
    from inference.models import sha256
    from jobs.core import storage

    recognizer = model_dir / "w600k_mbf.onnx"
    storage.upload(sagemaker_output(tmp_path / "sm", recognizer) / JOB, f"s3://{s3_bucket}/models/recog-mbf/{JOB}/",
                   progress=False)
    photos = tmp_path / "photos"
    for person in sorted(p for p in lfw10.iterdir() if p.is_dir())[:3]:
        for photo in sorted(person.glob("*.jpg"))[:2]:
            (photos / person.name).mkdir(parents=True, exist_ok=True)
            (photos / person.name / photo.name).symlink_to(photo)
    spec = tmp_path / "gallery.yaml"
    spec.write_text(textwrap.dedent(f"""\
        name: chained-gallery
        task: gallery
        inputs:
          images: {photos}
          detector: {model_dir / 'scrfd_500m_bnkps.onnx'}
          recognizer: s3://{s3_bucket}/models/recog-mbf/{JOB}/
        outputs:
          database: {tmp_path / 'db'}
        hyperparameters: {{det_size: 320, workers: 1}}
        """))
    result = runner("job", "submit", spec)
    record = Store().get("chained-gallery")
    assert record["status"] == "done", (result.output, record.get("failure_reason"))
    assert record["metrics"]["people"] == 3 and record["metrics"]["embeddings"] == 6
    manifest = json.loads((tmp_path / "db" / "gallery.json").read_text())
    assert manifest["models"]["recognizer"] == {"file": "model.onnx", "sha256": sha256(recognizer), "dim": 512}
    assert "unpacked the model archive of input recognizer" in runner("job", "logs", "chained-gallery").output


def test_the_bootstrap_unpacks_a_model_output_in_every_channel(tmp_path, model_dir):
    """The container side on SageMaker's processing layout: the output path of a training job as
    one channel (its <job>/output/model.tar.gz), the archive itself as another; both channels
    hold the model's files when the entry point starts."""
    code = tmp_path / "code-src"
    code.mkdir()
    (code / "show.py").write_text(
        "import json\n"
        "from jobs.core.contract import from_env\n"
        "job = from_env()\n"
        "print(json.dumps({name: sorted(p.relative_to(path).as_posix() for p in path.rglob('*'))\n"
        "                  for name, path in job.channels.items()}))\n")
    base = tmp_path / "opt-ml" / "processing" / "input"
    sagemaker_output(base / "recognizer", model_dir / "w600k_mbf.onnx")
    (base / "init").mkdir(parents=True)
    (base / "init" / "model.tar.gz").write_bytes(model_tarball(model_dir / "w600k_mbf.onnx"))
    (base / "images").mkdir()
    (base / "images" / "a.jpg").write_bytes(b"jpeg")
    stage_bundle(base / "faceops_code", code)
    (base / "faceops_job").mkdir()
    (base / "faceops_job" / "hyperparameters.json").write_text("{}")
    done = run_bootstrap(["sagemaker-processing", "python", "show.py"],
                         env={"FACEOPS_OPT_ML": str(tmp_path / "opt-ml"), "PYTHONPATH": str(REPO),
                              "FACEOPS_CHANNELS": "recognizer,init,images", "FACEOPS_OUTPUTS": ""})
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["init"] == ["metrics.json", "model.onnx"]
    assert {"model.onnx", "metrics.json", f"{JOB}/output/output.tar.gz"} <= set(seen["recognizer"])
    assert f"{JOB}/output/model.tar.gz" not in seen["recognizer"] and seen["images"] == ["a.jpg"]
    assert (base / "recognizer" / "model.onnx").read_bytes() == (model_dir / "w600k_mbf.onnx").read_bytes()


def test_a_read_only_channel_is_unpacked_beside_it(tmp_path, model_dir):
    """FastFile inputs are read-only mounts: the files go to a writable folder the channel then names."""
    channel = tmp_path / "recognizer"
    channel.mkdir()
    (channel / "model.tar.gz").write_bytes(model_tarball(model_dir / "w600k_mbf.onnx"))
    elsewhere = unpack_model_archives(channel, tmp_path / "unpacked")
    assert elsewhere == tmp_path / "unpacked" and (elsewhere / "model.onnx").is_file()
    assert (channel / "model.tar.gz").is_file()  # the read-only copy stays untouched


def test_unpacking_is_safe_and_never_guesses(tmp_path):
    """Members that would land outside the channel are refused (tarfile's data filter); two jobs'
    archives in one channel are ambiguous; a channel without an archive is left as it is."""
    evil = tmp_path / "evil"
    evil.mkdir()
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w:gz") as tar:
        member = tarfile.TarInfo("../escaped.txt")
        member.size = 1
        tar.addfile(member, io.BytesIO(b"x"))
    (evil / "model.tar.gz").write_bytes(packed.getvalue())
    with pytest.raises(ValueError, match="not a readable model archive"):
        unpack_model_archives(evil)
    assert not (tmp_path / "escaped.txt").exists()

    two = tmp_path / "two"
    for job in ("a-v1-1", "b-v1-2"):
        (two / job / "output").mkdir(parents=True)
        (two / job / "output" / "model.tar.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="several model archives .*a-v1-1/output/model.tar.gz"):
        unpack_model_archives(two)

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "photo.jpg").write_bytes(b"jpeg")
    assert unpack_model_archives(plain) is None and [p.name for p in plain.iterdir()] == ["photo.jpg"]
