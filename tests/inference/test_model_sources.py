"""Where a gallery or identify run takes its models from: a detector and a recognizer each given
on their own (an ONNX file, a folder, or a training job's model.tar.gz as SageMaker writes it),
a folder holding both, or the pretrained models for whichever is left out."""
from __future__ import annotations

import json
import shutil
import tarfile

import pytest

from inference.models import resolve, sha256
from jobs.core.errors import DataError

RECOGNIZER = "w600k_mbf.onnx"
DETECTOR = "scrfd_500m_bnkps.onnx"


def test_a_recognizer_alone_pairs_with_the_pretrained_detector(model_dir, tmp_path):
    own = tmp_path / "model"
    own.mkdir()
    shutil.copy(model_dir / RECOGNIZER, own / "model.onnx")
    det, rec = resolve(rec=own)
    assert det == model_dir / DETECTOR and rec == own / "model.onnx"


def test_a_model_archive_in_the_channel_is_unpacked_once(model_dir, tmp_path, faceops_home):
    channel = tmp_path / "channel" / "recog-job" / "output"
    channel.mkdir(parents=True)
    with tarfile.open(channel / "model.tar.gz", "w:gz") as tar:
        tar.add(model_dir / RECOGNIZER, arcname="model.onnx")
    _, rec = resolve(rec=tmp_path / "channel")
    assert sha256(rec) == sha256(model_dir / RECOGNIZER) and faceops_home in rec.parents
    assert resolve(rec=channel / "model.tar.gz")[1] == rec  # the archive itself, and no second copy
    assert len(list((faceops_home / "models").iterdir())) == 1


def test_a_folder_without_the_role_says_how_to_give_it(model_dir, tmp_path):
    own = tmp_path / "model"
    own.mkdir()
    shutil.copy(model_dir / RECOGNIZER, own / "model.onnx")
    with pytest.raises(DataError, match=r"no ONNX detector here \(looked at 1 \.onnx files\); give the detector separately"):
        resolve(models=own)


def test_roles_are_kept_per_file_and_asked_again_when_the_file_changes(model_dir, tmp_path, faceops_home, monkeypatch):
    """A new process finds the roles of unchanged files in $FACEOPS_HOME's cache without parsing
    a graph; a file replaced by another model is parsed again; a damaged cache is ignored."""
    from inference import models

    own = tmp_path / "own.onnx"
    shutil.copy(model_dir / RECOGNIZER, own)
    assert models.model_role(own) == "recognizer"
    assert (faceops_home / models.ROLE_CACHE).is_file()

    def parse(path):
        raise AssertionError(f"parsed {path} again")

    models._ROLES.clear()  # as a new process starts
    with monkeypatch.context() as patch:
        patch.setattr(models, "_parse_role", parse)
        assert models.model_role(own) == "recognizer"
    own.unlink()
    shutil.copy(model_dir / DETECTOR, own)  # a new file (inode, size, time) under the same name
    assert models.model_role(own) == "detector"
    kept = json.loads((faceops_home / models.ROLE_CACHE).read_text())
    assert list(kept.values()) == ["detector"]  # the replaced file's answer is gone
    (faceops_home / models.ROLE_CACHE).write_text("{not json")
    models._ROLES.clear()
    assert models.model_role(own) == "detector"


def test_the_role_cache_forgets_its_oldest_files(tiny_recognizer, tmp_path, faceops_home, monkeypatch):
    """Past ROLE_CACHE_ENTRIES files the oldest answers are dropped, so the cache stays small."""
    from inference import models

    monkeypatch.setattr(models, "ROLE_CACHE_ENTRIES", 2)
    files = [tmp_path / f"{name}.onnx" for name in ("a", "b", "c")]
    for path in files:
        tiny_recognizer(path, 96)
        assert models.model_role(path) == "recognizer"
    kept = json.loads((faceops_home / models.ROLE_CACHE).read_text())
    assert [key.split("|")[0] for key in kept] == [str(path.resolve()) for path in files[1:]]


def test_a_recognizer_with_a_symbolic_embedding_size_is_probed(model_dir, tiny_recognizer, tmp_path):
    import onnx

    from inference.models import load_models

    tiny_recognizer(tmp_path / "tiny.onnx", 96)
    graph = onnx.load(str(tmp_path / "tiny.onnx"))
    graph.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "D"
    onnx.save(graph, str(tmp_path / "symbolic.onnx"))
    assert load_models(det=model_dir / DETECTOR, rec=tmp_path / "symbolic.onnx").dim == 96
