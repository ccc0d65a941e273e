"""Bad input: unreadable files are reported rows and the run goes on; odd image formats work;
galleries from other models, empty galleries and non-galleries are refused with clear messages."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import onnx
import pytest
from onnx import helper

from inference import gallery as gallerylib
from inference import gallery_store
from inference.identify import identify
from inference.models import load_models, model_role, resolve
from jobs.core.errors import DataError, NotFoundError


@pytest.fixture
def odd_images(split, tmp_path):
    """One known person's photo in several awkward forms, plus files that are not images."""
    from PIL import Image

    photo = sorted((split / "probe" / "Colin_Powell").glob("*.jpg"))[0]
    bgr = cv2.imread(str(photo))
    folder = tmp_path / "odd"
    folder.mkdir()
    cv2.imwrite(str(folder / "grey.png"), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(folder / "alpha.png"), np.dstack([bgr, np.full(bgr.shape[:2], 200, np.uint8)]))
    Image.fromarray(bgr[:, :, ::-1]).convert("CMYK").save(folder / "cmyk.jpg")
    cv2.imwrite(str(folder / "huge.jpg"), cv2.resize(bgr, (5000, 5000), interpolation=cv2.INTER_LINEAR))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "corrupt.jpg").write_bytes(photo.read_bytes()[:64] + b"\x00" * 64)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_odd_images_are_identified_and_bad_files_reported(odd_images, built, models, tmp_path):
    summary = identify(odd_images, built[0], tmp_path / "out", models)
    rows = {r["image"]: r for r in map(json.loads, (tmp_path / "out" / "report.jsonl").read_text().splitlines())
            if r["face"] in (0, None)}
    assert summary["errors"] == 2 and summary["skipped_files"] == 1
    assert rows["empty.jpg"]["status"] == "error" and "empty file" in rows["empty.jpg"]["error"]
    assert rows["corrupt.jpg"]["status"] == "error" and "not a decodable image" in rows["corrupt.jpg"]["error"]
    for name in ("grey.png", "alpha.png", "cmyk.jpg", "huge.jpg"):
        assert rows[name]["status"] == "ok" and rows[name]["person"] == "Colin_Powell", rows[name]
    # The huge photo is downscaled for detection only: its box is in the photo's own pixels.
    x1, y1, x2, y2 = rows["huge.jpg"]["box"]
    assert x2 - x1 > 1000 and y2 - y1 > 1000


def test_empty_gallery_is_refused(gallery_copy, split, models, tmp_path):
    db = gallery_store.load(gallery_copy)
    gallerylib.remove_from_gallery(gallery_copy, db.names)
    assert gallery_store.load(gallery_copy).entries == []
    with pytest.raises(DataError, match="empty"):
        identify(split / "probe" / "Colin_Powell", gallery_copy, tmp_path / "out", models)
    with pytest.raises(DataError, match="empty"):
        gallerylib.calibrate_gallery(gallery_copy)


def test_not_a_gallery_is_refused(split, models, tmp_path):
    with pytest.raises(DataError, match="not a faceops gallery"):
        identify(split / "probe", split / "gal", tmp_path / "out", models)


def test_gallery_from_another_recognizer_is_refused(model_dir, built, split, tmp_path):
    # Same weights, different file: the hash is the model's identity.
    model = onnx.load(str(model_dir / "w600k_mbf.onnx"))
    helper.set_model_props(model, {"retrained": "yes"})
    onnx.save(model, str(tmp_path / "other.onnx"))
    other = load_models(det=model_dir / "scrfd_500m_bnkps.onnx", rec=tmp_path / "other.onnx")
    with pytest.raises(DataError, match="not comparable"):
        identify(split / "probe", built[0], tmp_path / "out", other)
    with pytest.raises(DataError, match="not comparable"):
        gallerylib.add_to_gallery(shutil.copytree(built[0], tmp_path / "db"), split / "gal", other)


def test_mismatched_embedding_dimensions_are_refused(model_dir, built, split, tiny_recognizer, tmp_path):
    tiny_recognizer(tmp_path / "tiny128.onnx", 128)
    assert model_role(tmp_path / "tiny128.onnx") == "recognizer"
    tiny = load_models(det=model_dir / "scrfd_500m_bnkps.onnx", rec=tmp_path / "tiny128.onnx")
    assert tiny.dim == 128
    with pytest.raises(DataError, match="512 dimensions but recognizer tiny128.onnx gives 128"):
        identify(split / "probe", built[0], tmp_path / "out", tiny)


def test_model_folder_roles_are_read_from_the_graphs(model_dir, tmp_path):
    det, rec = resolve(model_dir)
    assert (det.name, rec.name) == ("scrfd_500m_bnkps.onnx", "w600k_mbf.onnx")
    assert model_role(model_dir / "2d106det.onnx") is None  # landmark model: neither role
    with pytest.raises(NotFoundError, match="model path not found"):
        resolve(tmp_path / "missing")
    shutil.copy(model_dir / "scrfd_500m_bnkps.onnx", tmp_path / "det.onnx")
    with pytest.raises(DataError, match="no ONNX recognizer"):
        resolve(tmp_path)
    (tmp_path / "broken.onnx").write_bytes(b"\x08garbage")
    with pytest.raises(DataError, match="not a readable ONNX model"):
        resolve(tmp_path)
