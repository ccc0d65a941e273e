"""jobs.core.storage against a real SeaweedFS S3 server and real local folders."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from jobs.core import storage
from jobs.core.errors import NotFoundError, StorageError
from tests.harness.net import LoopbackProxy

MIB = 1024 * 1024


def make_tree(root: Path) -> dict[str, bytes]:
    """A small nested folder; returns relative path -> content."""
    files = {"train.rec": os.urandom(3000), "train.idx": b"0\t0\n1\t1500\n", "property": b"2,112,112",
             "sub/deeper/notes.txt": b"nested"}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def check_manifest(raw: bytes, files: dict[str, bytes]) -> None:
    manifest = json.loads(raw)
    assert [e["path"] for e in manifest["files"]] == sorted(files)
    for entry in manifest["files"]:
        data = files[entry["path"]]
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["total_size"] == sum(len(d) for d in files.values())


@pytest.mark.parametrize("uri, scheme, bucket, key, path", [
    ("s3://faces/recognition/train.rec", "s3", "faces", "recognition/train.rec", None),
    ("s3://faces", "s3", "faces", "", None),
    ("s3://faces/models/", "s3", "faces", "models/", None),
    ("file:///data/x.rec", "file", "", "", Path("/data/x.rec")),
    ("relative/dir", "file", "", "", Path("relative/dir")),
])
def test_parse(uri, scheme, bucket, key, path):
    assert storage.parse(uri) == storage.Location(scheme, bucket=bucket, key=key, path=path)
    assert storage.is_remote(uri) == (scheme == "s3")


@pytest.mark.parametrize("bad", ["s3:///key-without-bucket", "gs://bucket/key", "http://host/x"])
def test_parse_rejects(bad):
    with pytest.raises(StorageError, match="s3://"):
        storage.parse(bad)


def test_join():
    assert storage.join("s3://b/models/", "v1", "/model.onnx") == "s3://b/models/v1/model.onnx"
    assert storage.join("s3://b", "k") == "s3://b/k"
    assert storage.join("file:///out", "a/b") == "file:///out/a/b"
    assert storage.join("out", "") == "out"


def test_bytes_round_trip_and_stat(s3_bucket):
    uri = f"s3://{s3_bucket}/dir/blob.bin"
    data = os.urandom(1000)
    storage.write_bytes(uri, data)
    assert storage.read_bytes(uri) == data
    info = storage.stat(uri)
    assert (info.size, info.etag, info.is_dir) == (1000, hashlib.md5(data).hexdigest(), False)
    assert storage.exists(uri) and not storage.exists(uri + ".missing")
    folder = storage.stat(f"s3://{s3_bucket}/dir")
    assert folder.is_dir and folder.size == 1000


def test_folder_round_trip_through_s3(s3_bucket, tmp_path):
    files = make_tree(tmp_path / "src")
    uri = f"s3://{s3_bucket}/data/recognition/"
    storage.upload(tmp_path / "src", uri, progress=False)

    listed = storage.list(uri)
    assert [i.uri for i in listed] == sorted(f"{uri}{rel}" for rel in [*files, storage.MANIFEST])
    assert {i.uri.removeprefix(uri): i.size for i in listed if not i.uri.endswith(storage.MANIFEST)} == \
        {rel: len(d) for rel, d in files.items()}
    check_manifest(storage.read_bytes(uri + storage.MANIFEST), files)

    info = storage.stat(uri.rstrip("/"))
    assert info.is_dir and info.size == sum(i.size for i in listed)
    out = storage.download(uri, tmp_path / "back", progress=False)
    assert out == tmp_path / "back"
    back = read_tree(out)
    assert back.pop(storage.MANIFEST)
    assert back == files


def test_folder_etag_follows_content(s3_bucket, tmp_path):
    make_tree(tmp_path / "src")
    storage.upload(tmp_path / "src", f"s3://{s3_bucket}/a", progress=False)
    storage.upload(tmp_path / "src", f"s3://{s3_bucket}/b", progress=False)
    etag_a = storage.stat(f"s3://{s3_bucket}/a").etag
    storage.write_bytes(f"s3://{s3_bucket}/a/property", b"3,112,112")
    assert storage.stat(f"s3://{s3_bucket}/a").etag != etag_a


def test_single_file_upload_and_download_into_folder(s3_bucket, tmp_path):
    src = tmp_path / "model.onnx"
    src.write_bytes(b"onnx-bytes")
    storage.upload(src, f"s3://{s3_bucket}/models/", progress=False)
    assert storage.read_bytes(f"s3://{s3_bucket}/models/model.onnx") == b"onnx-bytes"
    dest = tmp_path / "staged"
    dest.mkdir()
    assert storage.download(f"s3://{s3_bucket}/models/model.onnx", dest, progress=False) == dest / "model.onnx"
    assert (dest / "model.onnx").read_bytes() == b"onnx-bytes"
    assert storage.list(f"s3://{s3_bucket}/models/model.onnx")[0].size == 10


def test_multipart_upload(s3_bucket, tmp_path):
    part = 5 * MIB  # the smallest part S3 allows
    src = tmp_path / "big.rec"
    src.write_bytes(os.urandom(part + 12345))
    uri = f"s3://{s3_bucket}/big.rec"
    storage.upload(src, uri, progress=False, part_size=part)
    info = storage.stat(uri)
    assert info.size == part + 12345
    assert info.etag.endswith("-2"), "an etag without a part count means it went up in one PUT"
    assert storage.read_range(uri, part - 10, 20) == src.read_bytes()[part - 10:part + 10]
    assert storage.download(uri, tmp_path / "copy.rec", progress=False).read_bytes() == src.read_bytes()


@pytest.mark.parametrize("where", ["s3", "local"])
def test_read_range(where, request, tmp_path):
    data = bytes(range(256)) * 4
    if where == "s3":
        uri = f"s3://{request.getfixturevalue('s3_bucket')}/x.rec"
        storage.write_bytes(uri, data)
    else:
        uri = str(tmp_path / "x.rec")
        Path(uri).write_bytes(data)
    assert storage.read_range(uri, 0, 10) == data[:10]
    assert storage.read_range(uri, 500, 100) == data[500:600]
    assert storage.read_range(uri, len(data) - 7, 7) == data[-7:]
    assert storage.read_range(uri, len(data) - 3, 50) == data[-3:]
    assert storage.read_range(uri, len(data) + 5, 10) == b""
    assert storage.read_range(uri, 3, 0) == b""


def test_local_folder_upload_writes_its_files_and_keeps_others(tmp_path):
    """Publishing again into a folder of ours replaces our files and manifest and leaves a file we
    did not write in place; a folder of someone else's files is refused unless asked."""
    files = make_tree(tmp_path / "src")
    dest = tmp_path / "out" / "model"
    storage.upload(tmp_path / "src", f"file://{dest}", progress=False)
    (dest / "notes.txt").write_bytes(b"the user's")
    storage.upload(tmp_path / "src", f"file://{dest}", progress=False)
    written = read_tree(dest)
    check_manifest(written.pop(storage.MANIFEST), files)
    assert written == {**files, "notes.txt": b"the user's"}
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model"], "temporary siblings left behind"
    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "thesis.tex").write_bytes(b"years of work")
    with pytest.raises(storage.UnsafeTarget, match="--into-existing"):
        storage.upload(tmp_path / "src", f"file://{foreign}", progress=False)
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]
    storage.upload(tmp_path / "src", f"file://{foreign}", progress=False, into_existing=True)
    assert (foreign / "thesis.tex").read_bytes() == b"years of work" and (foreign / storage.MANIFEST).is_file()


def test_local_stat_list_download(tmp_path):
    files = make_tree(tmp_path / "src")
    info = storage.stat(tmp_path / "src")
    assert info.is_dir and info.size == sum(len(d) for d in files.values())
    assert [Path(i.uri).relative_to(tmp_path / "src").as_posix() for i in storage.list(tmp_path / "src")] == sorted(files)
    storage.download(str(tmp_path / "src"), tmp_path / "copy", progress=False)
    assert read_tree(tmp_path / "copy") == files
    before = storage.stat(tmp_path / "src" / "property").etag
    (tmp_path / "src" / "property").write_bytes(b"10,112,112")
    assert storage.stat(tmp_path / "src" / "property").etag != before


def test_failed_folder_upload_leaves_no_manifest(s3_bucket, tmp_path, s3_env):
    src = tmp_path / "src"
    (src / "a.txt").parent.mkdir()
    (src / "a.txt").write_bytes(b"first")
    deep = src.joinpath(*["d" * 200] * 6)  # a key over S3's 1024-byte limit: the server refuses it
    deep.mkdir(parents=True)
    (deep / "z.txt").write_bytes(b"never")
    uri = f"s3://{s3_bucket}/out"
    with pytest.raises(StorageError, match="KeyTooLong") as err:
        storage.upload(src, uri, progress=False)
    assert not storage.exists(uri)  # staged beside the target: nothing of it was published
    assert s3_env.secret_key not in str(err.value)


def test_missing_object_and_bucket(s3_bucket, s3_env):
    with pytest.raises(NotFoundError, match=f"s3://{s3_bucket}/nope.rec"):
        storage.stat(f"s3://{s3_bucket}/nope.rec")
    with pytest.raises(NotFoundError, match="no such object"):
        storage.read_bytes(f"s3://{s3_bucket}/nope.rec")
    with pytest.raises(NotFoundError, match="bucket 'no-such-bucket-here' does not exist") as err:
        storage.stat("s3://no-such-bucket-here/train.rec")
    assert s3_env.secret_key not in str(err.value)
    with pytest.raises(NotFoundError, match="does not exist"):
        storage.download("s3://no-such-bucket-here/data/", Path("unused"), progress=False)
    with pytest.raises(NotFoundError, match="no such file"):
        storage.upload(Path("no/such/folder"), f"s3://{s3_bucket}/x", progress=False)


def test_wrong_secret_is_access_denied_without_leaking(s3_bucket, s3_env, monkeypatch):
    storage.write_bytes(f"s3://{s3_bucket}/k", b"x")
    wrong = "wrong-" + s3_env.secret_key[::-1]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    for call in (lambda: storage.stat(f"s3://{s3_bucket}/k"), lambda: storage.read_bytes(f"s3://{s3_bucket}/k")):
        with pytest.raises(StorageError, match="access denied") as err:
            call()
        message = str(err.value)
        assert s3_bucket in message and "AWS_SECRET_ACCESS_KEY" in message
        assert wrong not in message and s3_env.secret_key not in message


def test_unreachable_endpoint_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("FACEOPS_S3_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    config = storage.s3_client().meta.config
    assert config.retries["mode"] == "standard" and config.connect_timeout <= 5
    with pytest.raises(StorageError, match=r"cannot reach S3 endpoint http://127\.0\.0\.1:1") as err:
        storage.stat("s3://faces/train.rec")
    assert "very-secret-value" not in str(err.value)


def test_settings_from_config_yaml(s3_bucket, s3_env, faceops_home, monkeypatch):
    for name in ("FACEOPS_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    faceops_home.mkdir(parents=True, exist_ok=True)
    (faceops_home / "config.yaml").write_text(
        f"s3:\n  endpoint_url: {s3_env.endpoint}\n  access_key: {s3_env.access_key}\n"
        f"  secret_key: {s3_env.secret_key}\n  addressing_style: path\n")
    storage.write_bytes(f"s3://{s3_bucket}/from-config", b"ok")
    assert s3_env.client().get_object(Bucket=s3_bucket, Key="from-config")["Body"].read() == b"ok"


def test_client_follows_settings(monkeypatch):
    monkeypatch.setenv("FACEOPS_S3_ENDPOINT", "http://127.0.0.1:9")
    first = storage.s3_client()
    assert storage.s3_client() is first
    assert first.meta.endpoint_url == "http://127.0.0.1:9"
    monkeypatch.setenv("FACEOPS_S3_ENDPOINT", "http://127.0.0.1:10")
    assert storage.s3_client().meta.endpoint_url == "http://127.0.0.1:10"


def test_progress_bar_only_for_big_transfers(tmp_path, capsys):
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (storage.PROGRESS_MIN_BYTES + 1))
    storage.upload(big, tmp_path / "copy1.bin", progress=True)
    assert "big.bin" in capsys.readouterr().err
    storage.upload(big, tmp_path / "copy2.bin", progress=False)
    small = tmp_path / "small.bin"
    small.write_bytes(b"x")
    storage.upload(small, tmp_path / "copy3.bin", progress=True)
    assert capsys.readouterr().err == ""
    assert (tmp_path / "copy1.bin").read_bytes() == big.read_bytes()


def test_read_range_refetches_a_range_that_broke_off(s3_bucket, s3_env, monkeypatch):
    data = os.urandom(300_000)
    storage.write_bytes(f"s3://{s3_bucket}/stream.rec", data)
    proxy = LoopbackProxy(s3_env.endpoint, cut_first=5000)
    try:
        monkeypatch.setenv("FACEOPS_S3_ENDPOINT", proxy.endpoint)
        assert storage.read_range(f"s3://{s3_bucket}/stream.rec", 1000, 250_000) == data[1000:251_000]
        assert proxy.connections >= 2, "the first connection was cut, so the range must have been fetched again"
    finally:
        proxy.close()
