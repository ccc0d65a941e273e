"""The gallery and identify commands and job tasks as a user runs them: CliRunner for the CLI, the
real local backend (supervisor + subprocess entry point) for jobs, a real S3 server for storage."""
from __future__ import annotations

import json
import textwrap


from jobs.store import Store
from jobs.core.tasks import get_task


def test_gallery_commands_and_identify(runner, split, model_dir, tmp_path):
    db = tmp_path / "db"
    result = runner("gallery", "build", split / "gal", db, "--models", model_dir, "--json")
    assert result.exit_code == 0, result.output
    built = json.loads(result.output)
    assert built["people"] == 8 and built["embeddings"] == 40 and (db / "gallery.json").exists()

    # --detector/--recognizer: the names `faceops serve` documents, accepted by every model command
    result = runner("identify", split / "probe", "--gallery", db, "--out", tmp_path / "report",
                    "--detector", model_dir, "--recognizer", model_dir, "--truth-from-folders",
                    "--top-k", "3", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["metrics"]["rank1"] >= 0.9 and summary["metrics"]["unknown_rejection"] >= 0.85
    assert (tmp_path / "report" / "report.csv").exists()

    result = runner("gallery", "remove", db, "Ariel_Sharon", "Colin_Powell")
    assert result.exit_code == 0 and "people: 6" in result.output, result.output
    result = runner("gallery", "calibrate", db, "--far", "0.05", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["target_far"] == 0.05


def test_cli_errors_are_one_line_with_exit_code_2(runner, split, model_dir, tmp_path):
    result = runner("identify", split / "probe", "--gallery", split / "gal", "--models", model_dir)
    assert result.exit_code == 2
    assert "is not a faceops gallery" in result.output and "Traceback" not in result.output
    result = runner("gallery", "build", tmp_path / "missing", tmp_path / "db", "--models", model_dir)
    assert result.exit_code == 2 and "image source not found" in result.output


def test_tasks_are_registered_as_processing_jobs():
    for name in ("gallery", "identify"):
        task = get_task(name)
        assert task.kind == "processing" and task.entrypoint[:3] == ("python", "-m", "inference.job")
    assert get_task("identify").check("top_k", "3") == 3
    assert get_task("gallery").check("index", "hnsw") == "hnsw"


def _spec(path, text):
    path.write_text(textwrap.dedent(text))
    return path


def test_gallery_and_identify_jobs_record_metrics(runner, split, model_dir, tmp_path):
    db_uri = tmp_path / "outputs" / "db"
    spec = _spec(tmp_path / "gallery.yaml", f"""\
        name: lfw-gallery
        task: gallery
        inputs:
          images: {split / 'gal'}
          models: {model_dir}
        outputs:
          database: {db_uri}
        hyperparameters:
          far: 0.01
        """)
    result = runner("job", "submit", spec)
    assert result.exit_code == 0, result.output
    record = Store().get("lfw-gallery")
    assert record["status"] == "done", result.output
    assert record["metrics"]["people"] == 8 and record["metrics"]["embeddings"] == 40
    assert (db_uri / "gallery.json").exists()

    spec = _spec(tmp_path / "identify.yaml", f"""\
        name: lfw-identify
        task: identify
        inputs:
          images: {split / 'probe'}
          gallery: {db_uri}
          models: {model_dir}
        outputs:
          report: {tmp_path / 'outputs' / 'report'}
        hyperparameters:
          truth_from_folders: true
        """)
    result = runner("job", "submit", spec)
    assert result.exit_code == 0, result.output
    record = Store().get("lfw-identify")
    assert record["status"] == "done", result.output
    assert record["metrics"]["rank1"] >= 0.9 and record["metrics"]["unknown_rejection"] >= 0.85
    assert record["metrics"]["faces"] > 0 and record["metrics"]["faces_per_s"] > 0
    assert (tmp_path / "outputs" / "report" / "report.jsonl").exists()


def test_identify_job_writes_the_contact_sheet_into_its_report(runner, split, built, model_dir, tmp_path):
    """Hyperparameter sheet: the report output holds sheet.jpg, the doubtful faces of the report's
    rows (unknown first, framed red), as `identify --sheet` draws it; without it there is none."""
    import cv2

    from inference.sheet import CAPTION, COLUMNS, HEADER, LIMIT, TILE

    for name, sheet in (("sheet-off", "false"), ("sheet-on", "true")):
        spec = _spec(tmp_path / f"{name}.yaml", f"""\
            name: {name}
            task: identify
            inputs:
              images: {split / 'probe'}
              gallery: {built[0]}
              models: {model_dir}
            outputs:
              report: {tmp_path / name}
            hyperparameters:
              sheet: {sheet}
            """)
        result = runner("job", "submit", spec)
        assert result.exit_code == 0 and Store().get(name)["status"] == "done", result.output
    assert not (tmp_path / "sheet-off" / "sheet.jpg").exists()
    faces = [r for r in map(json.loads, (tmp_path / "sheet-on" / "report.jsonl").read_text().splitlines())
             if r["status"] == "ok"]
    image = cv2.imread(str(tmp_path / "sheet-on" / "sheet.jpg"))
    rows = -(-min(len(faces), LIMIT) // COLUMNS)
    assert image.shape[:2] == (HEADER + rows * (TILE + CAPTION), COLUMNS * TILE)
    first = image[HEADER + 1, 1:TILE - 1].astype(int)  # the most doubtful: an unknown face, framed red
    assert (first[:, 2] > 150).all() and (first[:, 1] < 100).all()
    assert image[HEADER + 10:HEADER + TILE - 10, 10:TILE - 10].std() > 20  # a face, not a blank tile


def test_gallery_job_calibrates_against_a_background_channel(runner, split, model_dir, tmp_path):
    db_uri = tmp_path / "outputs" / "db"
    spec = _spec(tmp_path / "gallery.yaml", f"""\
        name: lfw-gallery-bg
        task: gallery
        inputs:
          images: {split / 'gal'}
          models: {model_dir}
          background: {split / 'probe' / 'Vladimir_Putin'}
        outputs:
          database: {db_uri}
        hyperparameters:
          far: 0.01
        """)
    result = runner("job", "submit", spec)
    assert result.exit_code == 0 and Store().get("lfw-gallery-bg")["status"] == "done", result.output
    calibration = json.loads((db_uri / "gallery.json").read_text())["calibration"]
    assert calibration["background_pairs"] >= 40 * 10 and calibration["source"] == "gallery pairs + background"
    assert (db_uri / "background.npy").exists()


def test_identify_job_fails_with_a_reason_on_a_non_gallery(runner, split, model_dir, tmp_path):
    spec = _spec(tmp_path / "identify.yaml", f"""\
        name: bad-identify
        task: identify
        inputs:
          images: {split / 'probe' / 'Tony_Blair'}
          gallery: {split / 'gal'}
          models: {model_dir}
        outputs:
          report: {tmp_path / 'report'}
        """)
    result = runner("job", "submit", spec)
    record = Store().get("bad-identify")
    assert result.exit_code == 1 and record["status"] == "failed"
    assert "not a faceops gallery" in record["failure_reason"]


def test_gallery_from_and_to_object_storage(split, models, s3_bucket, tmp_path):
    from inference.gallery import build_gallery
    from inference.gallery_store import load
    from inference.identify import identify
    from jobs.core import storage

    storage.upload(split / "gal", f"s3://{s3_bucket}/photos/", progress=False)
    summary = build_gallery(f"s3://{s3_bucket}/photos/", f"s3://{s3_bucket}/galleries/lfw/", models)
    assert summary["people"] == 8 and summary["embeddings"] == 40
    assert storage.exists(f"s3://{s3_bucket}/galleries/lfw/gallery.json")
    assert len(load(f"s3://{s3_bucket}/galleries/lfw/").entries) == 40
    result = identify(split / "probe" / "Hugo_Chavez", f"s3://{s3_bucket}/galleries/lfw/", tmp_path / "out", models)
    assert result["faces"] >= 5 and result["unknown"] < result["faces"]
