"""Gluon datasets read the same samples from a local pack and from a real S3 server (SeaweedFS)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from mxnet import gluon

from jobs.core import storage
from train.data import RecognitionDataset


@pytest.fixture(scope="module")
def local_pack(runner, lfw10, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "rec"
    result = runner("data", "pack-recognition", lfw10, out, "--resize", "112")
    assert result.exit_code == 0, result.output
    return out


def test_streaming_from_s3_gives_the_same_samples_as_the_local_file(runner, lfw10, local_pack, s3_bucket):
    uri = f"s3://{s3_bucket}/faces/recognition_train_data"
    result = runner("data", "pack-recognition", lfw10, uri, "--resize", "112")
    assert result.exit_code == 0, result.output
    assert storage.exists(f"{uri}/_manifest.json")
    local = RecognitionDataset(local_pack)
    # Small chunks and buffer so the stream needs many ranged reads and waits on its memory bound.
    remote = RecognitionDataset(uri, chunk_bytes=20_000, buffer_bytes=60_000, readers=3)
    assert (len(remote), remote.num_classes, remote.image_size) == (100, 10, (112, 112))
    for i in (0, 37, 99):
        (a, la), (b, lb) = local[i], remote[i]
        assert la == lb and np.array_equal(a.asnumpy(), b.asnumpy())
    sampler = remote.sampler(shuffle=True, seed=3, block=8, window=2)
    order = list(local.sampler(shuffle=True, seed=3, block=8, window=2))
    assert sorted(order) == list(range(100)) and order != list(range(100))
    batches = zip(gluon.data.DataLoader(local, batch_size=16, sampler=local.sampler(shuffle=True, seed=3, block=8, window=2)),
                  gluon.data.DataLoader(remote, batch_size=16, sampler=sampler))
    count = 0
    for (xa, ya), (xb, yb) in batches:
        assert np.array_equal(xa.asnumpy(), xb.asnumpy()) and np.array_equal(ya.asnumpy(), yb.asnumpy())
        count += len(ya)
    assert count == 100
    assert not remote._stash, "every streamed record was consumed"


def test_inspect_works_on_an_s3_prefix(runner, local_pack, s3_bucket):
    uri = f"s3://{s3_bucket}/copy/"
    storage.upload(local_pack, uri, progress=False)
    result = runner("data", "inspect", uri, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["kind"], report["images"], report["identities"], report["image_size"]) == ("recognition", 100, 10, [112, 112])
    assert report["rec"] == f"s3://{s3_bucket}/copy/train.rec"
