"""Large photos are decoded once and halved down for detection, each face aligned from the
coarsest level it allows; the results must match detection and alignment on the full-size decode
(real photos, real models)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from inference import faces
from inference.sources import ImageItem


@pytest.fixture(scope="module")
def canvas(lfw10, tmp_path_factory):
    """A 12 MP JPEG: LFW photos at native size (faces ~110 px, small for 4032x3024) on grey, and
    one photo enlarged 8x (a face of ~900 px, as a phone portrait has)."""
    photos = [cv2.imread(str(sorted(p.glob("*.jpg"))[0])) for p in sorted(lfw10.iterdir())[:4]]
    image = np.full((3024, 4032, 3), 128, np.uint8)
    for i, photo in enumerate(photos[:3]):
        image[200:450, 200 + 400 * i:450 + 400 * i] = photo
    image[1000:3000, 1800:3800] = cv2.resize(photos[3], (2000, 2000), interpolation=cv2.INTER_CUBIC)
    path = tmp_path_factory.mktemp("large") / "canvas.jpg"
    cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return path


def test_jpeg_header_gives_the_size_without_decoding(canvas, lfw10):
    assert faces.jpeg_size(canvas.read_bytes()) == (4032, 3024)
    assert faces.reduction(canvas.read_bytes(), 640) == 4
    assert faces.reduction(next(lfw10.glob("*/*.jpg")).read_bytes(), 640) == 1
    assert faces.jpeg_size(b"\x89PNG\r\n") is None


def test_reduced_decode_matches_a_full_decode(canvas, models):
    result, crops = faces._prepare(models, ImageItem(path=canvas, name=canvas.name), 640, 0.5)
    full = faces.read_image(canvas)
    reference = faces.detect(models.detector, full, 640, 0.5)
    assert len(result.faces) == len(reference) == 4
    ours = faces.embed(models, crops)
    theirs = faces.embed(models, [faces.align(full, f.landmarks) for f in reference])
    for i, face in enumerate(result.faces):  # both lists are largest first
        assert np.abs(face.box - reference[i].box).max() < 4  # full-size pixels
        assert float(ours[i] @ theirs[i]) > 0.9
    assert result.faces[0].area > 500 ** 2 and result.size == (4032, 3024)


def test_each_face_picks_the_coarsest_decode_that_does_not_enlarge_it():
    # zoom = crop pixels per pixel of the 1/4 image: <= 1 keeps it, <= 2 needs 1/2, more needs full size.
    assert [faces._finest(zoom, 4) for zoom in (0.5, 1.0, 1.5, 2.0, 3.5)] == [4, 4, 2, 2, 1]
    assert faces._finest(3.5, 1) == 1


def test_halving_averages_2x2_blocks_and_keeps_a_pixel():
    image = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    half = faces.halve(image)
    assert half.shape == (2, 3, 3)  # the odd last row and column are dropped
    assert np.array_equal(half[1, 2], np.round(image[2:4, 4:6].reshape(4, 3).mean(0)).astype(np.uint8))
    assert faces.halve(np.zeros((1, 3000, 3), np.uint8)).shape == (1, 1500, 3)


def test_the_pyramid_decodes_once_down_to_the_detectors_size(canvas):
    levels = faces.pyramid(canvas.read_bytes(), canvas.name, 640)
    assert {r: level.shape[:2] for r, level in levels.items()} == {1: (3024, 4032), 2: (1512, 2016), 4: (756, 1008)}
    assert abs(levels[4].astype(int) - faces.decode_image(canvas.read_bytes(), "c", 4)[:756, :1008]).mean() < 2


def test_the_pixel_limit_starts_the_pyramid_lower_or_refuses_the_photo(canvas, models, monkeypatch):
    monkeypatch.setenv("FACEOPS_MAX_PIXELS", "4000000")  # 12 MP over it, 3 MP at 1/2 under it
    assert sorted(faces.pyramid(canvas.read_bytes(), canvas.name, 640)) == [2, 4]
    result, crops = faces._prepare(models, ImageItem(path=canvas, name=canvas.name), 640, 0.5)
    assert len(crops) == len(result.faces) == 4 and result.size == (4032, 3024)
    monkeypatch.setenv("FACEOPS_MAX_PIXELS", "100000")  # even the detector's 1/4 is over it
    result, crops = faces._prepare(models, ImageItem(path=canvas, name=canvas.name), 640, 0.5)
    assert "over the 100000 limit" in result.error and crops == []


def test_a_one_pixel_high_panorama_is_a_result_not_a_crash(models, tmp_path):
    path = tmp_path / "strip.jpg"
    cv2.imwrite(str(path), np.full((1, 3000, 3), 200, np.uint8))
    result, crops = faces._prepare(models, ImageItem(path=path, name=path.name), 640, 0.5)
    assert result.error is None and result.faces == [] and result.size == (3000, 1)
