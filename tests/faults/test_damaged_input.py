"""Item 4 of the second fault run: damaged input ends in one line and exit 2, never a
traceback: a disk that fills while the code bundle is written at submit, a spec of 100,000
nested ``[``, random bytes in a gallery's ``index.faiss``, a truncated ``embeddings.npy``. A
gallery records each file's SHA-256 and names the damaged file when it is loaded."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from inference.gallery_store import MANIFEST, Gallery, new_manifest, save
from tests.faults.helpers import cli, custom_job

PEOPLE, PER_PERSON, DIM = 3, 4, 16


def _one_line_exit_2(result) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def test_disk_full_while_writing_the_bundle(tmp_path, home_on_tmpfs):
    tiny_disk = home_on_tmpfs(4)
    folder = tmp_path / "proj"
    spec = custom_job(folder)
    (folder / "weights.bin").write_bytes(os.urandom(8 * 1024 * 1024))  # does not compress below 4 MB
    message = _one_line_exit_2(cli("job", "submit", str(spec), "--detach"))
    assert "ENOSPC" in message and str(tiny_disk / "home" / "bundles") in message
    assert not [p for p in (tiny_disk / "home" / "bundles").iterdir()], "a partial bundle was left"


def test_a_spec_of_nested_brackets(tmp_path):
    spec = tmp_path / "deep.yaml"
    spec.write_text("name: deep\ntask: custom\nhyperparameters: " + "[" * 100_000 + "\n")
    for extra in ((), ("--dry-run",)):
        assert "nested too deeply" in _one_line_exit_2(cli("job", "submit", str(spec), *extra))


def _gallery(folder) -> None:
    """A small real gallery written by faceops's own writer (embeddings made up: no model needed
    to damage and load one)."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(PEOPLE * PER_PERSON, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    identity = {"detector": {"file": "det.onnx", "sha256": "0" * 64},
                "recognizer": {"file": "rec.onnx", "sha256": "1" * 64, "dim": DIM}}
    manifest = new_manifest(identity, "flat", 640, 0.5)
    manifest["people"] = [{"id": i, "name": f"person{i}"} for i in range(PEOPLE)]
    manifest["next_person_id"] = PEOPLE
    entries = [{"person_id": i // PER_PERSON, "person": f"person{i // PER_PERSON}", "image": f"{i}.jpg",
                "x1": 0, "y1": 0, "x2": 1, "y2": 1, "det_score": 0.9, "sha256": "2" * 64}
               for i in range(PEOPLE * PER_PERSON)]
    save(Gallery(manifest, vectors, entries), folder)


def _random_index(db) -> None:
    (db / "index.faiss").write_bytes(os.urandom((db / "index.faiss").stat().st_size))


def _truncated_embeddings(db) -> None:
    os.truncate(db / "embeddings.npy", (db / "embeddings.npy").stat().st_size // 2)


# An older gallery (no checksums) with a flat index never reads index.faiss (flat galleries are
# scanned), so random bytes there harm nothing; its truncated embeddings are still named.
@pytest.mark.parametrize("damage, named, checksums", [
    (_random_index, "index.faiss", True),
    (_truncated_embeddings, "embeddings.npy", True),
    (_truncated_embeddings, "embeddings.npy", False),
], ids=["index-checksummed", "embeddings-checksummed", "embeddings-older-gallery"])
def test_a_damaged_gallery_file_is_named(tmp_path, damage, named, checksums):
    control, db = tmp_path / "control", tmp_path / "db"
    _gallery(control)
    _gallery(db)
    assert cli("gallery", "remove", str(control), "person0").returncode == 0  # an intact one loads
    if not checksums:  # a gallery written before checksums were recorded: read errors still name the file
        manifest = json.loads((db / MANIFEST).read_text())
        del manifest["files"]
        (db / MANIFEST).write_text(json.dumps(manifest))
    damage(db)
    message = _one_line_exit_2(cli("gallery", "remove", str(db), "person0"))
    assert str(db / named) in message and "damaged" in message
