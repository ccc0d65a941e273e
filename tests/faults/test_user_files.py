"""Item 1 of the second fault run: an output folder that holds a user's files. One rule for
``file://`` and ``s3://``: faceops publishes only its own files and ``_manifest.json``, removes
nothing else, refuses (at submit and in ``--dry-run``, exit 2, naming the folder) a non-empty
folder without a manifest of ours unless ``--into-existing`` is given, and never writes into a
system folder."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.core import storage
from tests.faults.helpers import cli, custom_job

WRITE_MODEL = """\
import os, pathlib
(pathlib.Path(os.environ["FACEOPS_MODEL_DIR"]) / "model.bin").write_bytes(b"weights")
"""


def _user_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "thesis.tex").write_text("years of work")
    (root / "data").mkdir()
    (root / "data" / "results.csv").write_text("a,b\n1,2\n")
    return root


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_file_output_into_a_users_folder_is_refused_and_never_deletes(tmp_path):
    user = _user_folder(tmp_path / "mine")
    before = _tree(user)
    spec = custom_job(tmp_path / "proj", script=WRITE_MODEL, extra=f"outputs:\n  model: file://{user}/\n")
    for extra in (("--dry-run",), ()):
        result = cli("job", "submit", str(spec), *extra)
        assert result.returncode == 2, (extra, result.stdout, result.stderr)
        assert str(user) in result.stderr and "--into-existing" in result.stderr and "Traceback" not in result.stderr
        assert _tree(user) == before
    result = cli("job", "submit", str(spec), "--into-existing")
    assert result.returncode == 0, result.stderr
    after = _tree(user)
    assert {k: after[k] for k in before} == before, "a user's file changed"
    assert after["model.bin"] == b"weights" and json.loads(after[storage.MANIFEST])["files"][0]["path"] == "model.bin"
    # the next version publishes into a folder that now holds a manifest of ours: no flag needed,
    # and still nothing of the user's is removed
    again = cli("job", "submit", str(spec))
    assert again.returncode == 0, again.stderr
    assert {k: _tree(user)[k] for k in before} == before


def test_s3_output_follows_the_same_rule(s3_bucket, s3_env, tmp_path):
    client = storage.s3_client()
    client.put_object(Bucket=s3_bucket, Key="shared/report.pdf", Body=b"theirs")
    uri = f"s3://{s3_bucket}/shared/"
    spec = custom_job(tmp_path / "proj", script=WRITE_MODEL, extra=f"outputs:\n  model: {uri}\n")
    refused = cli("job", "submit", str(spec), "--dry-run")
    assert refused.returncode == 2 and uri in refused.stderr, refused.stderr
    done = cli("job", "submit", str(spec), "--into-existing")
    assert done.returncode == 0, done.stderr
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="shared/")["Contents"])
    assert keys == ["shared/_manifest.json", "shared/model.bin", "shared/report.pdf"]


@pytest.mark.parametrize("folder", ["/", "/proc/", "/etc/faceops", "/usr/share/models", "/home"])
def test_system_folders_are_refused(tmp_path, folder):
    spec = custom_job(tmp_path / "proj", script=WRITE_MODEL, extra=f"outputs:\n  model: file://{folder}\n")
    for extra in (("--dry-run",), ("--into-existing",)):
        result = cli("job", "submit", str(spec), *extra)
        assert result.returncode == 2 and "system folder" in result.stderr, (folder, result.stderr)
    assert not Path("/etc/faceops").exists() and not Path("/usr/share/models").exists()


def test_every_writer_refuses_a_users_folder(tmp_path):
    """The same check sits in the storage layer, so a writer other than a job (here ``job
    publish`` and a storage upload as gallery build and data pack make it) refuses too."""
    user = _user_folder(tmp_path / "mine")
    before = _tree(user)
    src = tmp_path / "src"
    src.mkdir()
    (src / "index.faiss").write_bytes(b"x")
    with pytest.raises(storage.UnsafeTarget, match=str(user)):
        storage.upload(src, f"file://{user}", progress=False)
    assert _tree(user) == before
    spec = custom_job(tmp_path / "proj", script=WRITE_MODEL, extra=f"outputs:\n  model: {tmp_path / 'out'}\n")
    assert cli("job", "submit", str(spec)).returncode == 0
    (tmp_path / "out" / storage.MANIFEST).unlink()
    published = cli("job", "publish", "fault-job:1")
    assert published.returncode == 2 and "--into-existing" in published.stderr, published.stderr


def test_model_import_refuses_a_users_folder(tmp_path):
    user = _user_folder(tmp_path / "mine")
    before = _tree(user)
    onnx = tmp_path / "rec.onnx"
    onnx.write_bytes(b"not read: the folder is refused first")
    result = cli("model", "import", str(onnx), str(user))
    assert result.returncode == 2 and str(user) in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert _tree(user) == before
