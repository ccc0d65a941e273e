"""``faces.analyse`` takes images one per task and embeds each image's faces in pieces any worker
takes: whatever the worker count, the results must be those of each image taken alone, in input
order, with unreadable files as error results (real photos, real models)."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from inference import faces
from inference.sources import ImageItem


@pytest.fixture(scope="module")
def items(lfw10, model_dir) -> list[ImageItem]:
    """A crowd (players.jpg, 22 faces), LFW portraits and a file that does not exist, mixed."""
    lfw = [p for person in sorted(lfw10.iterdir())[:3] for p in sorted(person.glob("*.jpg"))[:2]]
    paths = [model_dir / "players.jpg", *lfw[:3], Path("/nonexistent/photo.jpg"), *lfw[3:]]
    return [ImageItem(path=p, name=p.name) for p in paths]


def alone(models, item: ImageItem) -> faces.ImageResult:
    """One image decoded, detected, aligned and embedded by itself, all its faces in one call."""
    result, crops = faces._prepare(models, item, 640, 0.5)
    for face, embedding in zip(result.faces, faces.embed(models, crops) if crops else []):
        face.embedding = embedding
    return result


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_results_come_in_order_and_equal_each_image_taken_alone(models, items, workers):
    expected = [alone(models, item) for item in items]
    assert len(expected[0].faces) > 16 and expected[4].error  # the crowd takes several pieces
    got = list(faces.analyse(models, items, batch_size=4, workers=workers))
    assert [r.item.name for r in got] == [item.name for item in items]
    for ours, theirs in zip(got, expected):
        assert ours.error == theirs.error and len(ours.faces) == len(theirs.faces)
        for a, b in zip(ours.faces, theirs.faces):
            assert np.array_equal(a.box, b.box)
            assert float(a.embedding @ b.embedding) > 0.9999  # batching may move the last float bits


def test_pieces_share_an_image_among_workers_within_the_batch_size():
    crops = list(range(22))
    assert [len(p) for p in faces.pieces(crops, 16, 2)] == [11, 11]
    assert [len(p) for p in faces.pieces(crops, 4, 2)] == [4, 4, 4, 4, 4, 2]
    assert [len(p) for p in faces.pieces(crops, 16, 1)] == [16, 6]
    assert faces.pieces([], 16, 2) == [] and faces.pieces([0], 16, 2) == [[0]]
    assert sum(faces.pieces(crops, 3, 5), []) == crops


def test_a_failing_recognizer_call_is_raised_with_its_image(models, items, monkeypatch):
    """A bug in a task (not a bad file) stops the run where that image's result is read."""
    real = faces.embed

    def embed(models, crops):
        if len(crops) == 1:
            raise RuntimeError("recognizer broke")
        return real(models, crops)

    monkeypatch.setattr(faces, "embed", embed)
    results = faces.analyse(models, items, batch_size=4, workers=2)
    assert len(next(results).faces) == 22  # the crowd's pieces hold several faces each
    with pytest.raises(RuntimeError, match="recognizer broke"):
        next(results)


def test_a_reader_that_stops_early_leaves_no_worker_behind(models, items):
    results = faces.analyse(models, items * 5, workers=2)
    next(results)
    results.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("faces")]
