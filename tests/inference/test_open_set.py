"""Open-set identification with small galleries (one photo per person), where the gallery's own
pairs cannot resolve the target FAR: the threshold must come from the recognizer's shipped
reference distribution or a --background of other people, and say so."""
from __future__ import annotations

import json

import numpy as np
import pytest

from inference import calibration, gallery_store
from inference.gallery import add_to_gallery, build_gallery
from inference.identify import identify

GALLERY = 5  # people with one photo each; the other 5 LFW people are strangers


@pytest.fixture(scope="module")
def one_each(lfw10, tmp_path_factory):
    """``gal/`` with the first photo of 5 people, ``known/`` their other 9 photos each, and
    ``strangers/<person>/`` all 10 photos of each of the other 5 people (linked, not copied)."""
    root = tmp_path_factory.mktemp("one-each")
    for rank, person in enumerate(sorted(p.name for p in lfw10.iterdir() if p.is_dir())):
        for n, photo in enumerate(sorted((lfw10 / person).glob("*.jpg"))):
            part = ("gal" if n == 0 else "known") if rank < GALLERY else "strangers"
            link = root / part / person / photo.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(photo)
    return root


@pytest.fixture(scope="module")
def small(one_each, models, tmp_path_factory):
    out = tmp_path_factory.mktemp("small") / "db"
    return out, build_gallery(one_each / "gal", out, models)


def test_one_photo_each_rejects_strangers_at_the_default_settings(one_each, small, models, tmp_path):
    db, summary = small
    cal = summary["calibration"]
    assert cal["impostor_pairs"] == 10 and cal["genuine_pairs"] == 0 and not cal["resolvable"]
    assert "reference" in cal["source"] and cal["reference_pairs"] >= 500 and "not resolved" in cal["warning"]
    strangers = identify(one_each / "strangers", db, tmp_path / "s", models, truth_from_folders=True)["metrics"]
    known = identify(one_each / "known", db, tmp_path / "k", models, truth_from_folders=True)["metrics"]
    # Measured: threshold 0.329 (the own pairs alone gave 0.11 and accepted 32% of the strangers);
    # rejection 1.0 of 50 strangers, rank-1 1.0 and TAR 1.0 over 45 known photos.
    assert strangers["unknown_probes"] == 50 and strangers["unknown_rejection"] >= 0.95
    assert known["known_probes"] == 45 and known["rank1"] >= 0.95 and known["tar_at_far"] >= 0.9


def test_own_pairs_alone_would_accept_strangers(small):
    """Why the reference is needed: the 10 own impostor pairs put the threshold far too low."""
    db = gallery_store.load(small[0])
    alone = calibration.calibrate(db.embeddings, db.labels, reference=None)
    with_reference = small[1]["calibration"]["threshold"]
    own_max = float(np.max((db.embeddings @ db.embeddings.T)[np.triu_indices(GALLERY, 1)]))
    assert alone["source"] == "gallery pairs + default floor" and alone["threshold"] == calibration.DEFAULT_THRESHOLD
    assert own_max < 0.2 < with_reference


def test_background_measures_the_threshold_and_is_kept(one_each, small, models, tmp_path):
    """Photos of 4 strangers as the background: 5 x 40+ impostor pairs resolve a FAR of 0.05."""
    db = tmp_path / "db"
    background = tmp_path / "background"
    for person in sorted(p.name for p in (one_each / "strangers").iterdir())[:4]:
        for photo in (one_each / "strangers" / person).iterdir():
            link = background / person / photo.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(photo.resolve())
    built = build_gallery(one_each / "gal", db, models, far=0.05, background=background)["calibration"]
    faces = len(gallery_store.load(db).background)  # every face of the 40 photos
    assert faces >= 40 and built["background_pairs"] == GALLERY * faces
    assert built["resolvable"] and built["warning"] is None and built["reference_pairs"] is None
    assert built["source"] == "gallery pairs + background" and built["far"] <= 0.05
    # A later change recalibrates with the stored background, for the stored target.
    after = add_to_gallery(db, one_each / "known", models)["calibration"]
    assert after["background_pairs"] == len(gallery_store.load(db).embeddings) * faces and after["target_far"] == 0.05


def test_calibrate_prints_what_the_threshold_rests_on(runner, small, model_dir, one_each, tmp_path):
    import shutil

    db = shutil.copytree(small[0], tmp_path / "db")
    result = runner("gallery", "calibrate", db)
    assert result.exit_code == 0, result.output
    assert "source: gallery pairs + reference" in result.output and "min_resolvable_far: 0.1" in result.output
    assert "warning: target FAR 0.001 is not resolved by measurement" in result.output
    result = runner("gallery", "calibrate", db, "--far", "0.05", "--background", one_each / "strangers",
                    "--models", model_dir, "--json")
    assert result.exit_code == 0, result.output
    cal = json.loads(result.output[result.output.index("{"):])
    assert cal["background_pairs"] >= GALLERY * 50 and cal["resolvable"] and cal["warning"] is None


def test_reference_is_keyed_by_the_recognizer_hash(models):
    reference = calibration.reference_for(models.rec_file.sha256)
    assert reference is not None and reference["pairs"] == reference["faces"] * (reference["faces"] - 1) // 2
    assert calibration.reference_for("0" * 64) is None
    # The tail fit never goes below the highest reference score when the FAR is not resolvable.
    assert calibration.reference_threshold(reference, 1e-3) >= reference["top"][0]
    assert calibration.reference_threshold(reference, 0.1) < calibration.reference_threshold(reference, 1e-3)
