"""Fixtures for the inference tests: the pretrained models loaded once, the LFW photos split into a
gallery (8 people x 5 photos) and probes (their other photos + 2 people left out), built once.

The photos are linked, never copied, into temporary folders."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest

GALLERY_PEOPLE = 8
GALLERY_PHOTOS = 5


@pytest.fixture(scope="session")
def models(model_dir):
    from inference.models import load_models

    return load_models(model_dir)


@pytest.fixture(scope="session")
def split(lfw10, tmp_path_factory) -> Path:
    """``gal/<person>/`` with the first 5 photos of 8 people; ``probe/<person>/`` with the rest of
    theirs and all 10 photos of the last 2 people."""
    root = tmp_path_factory.mktemp("lfw-split")
    for rank, person in enumerate(sorted(p.name for p in lfw10.iterdir() if p.is_dir())):
        for n, photo in enumerate(sorted((lfw10 / person).glob("*.jpg"))):
            part = "gal" if rank < GALLERY_PEOPLE and n < GALLERY_PHOTOS else "probe"
            link = root / part / person / photo.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(photo)
    return root


@pytest.fixture(scope="session")
def built(split, models, tmp_path_factory) -> tuple[Path, dict]:
    """The gallery built from ``split/gal`` (path, build summary). Read-only: copy it to change it."""
    from inference.gallery import build_gallery

    out = tmp_path_factory.mktemp("gallery") / "db"
    return out, build_gallery(split / "gal", out, models)


@pytest.fixture
def gallery_copy(built, tmp_path) -> Path:
    """A private copy of the built gallery that a test may modify."""
    return Path(shutil.copytree(built[0], tmp_path / "db"))


@pytest.fixture(scope="session")
def tiny_recognizer() -> Callable[[Path, int], Path]:
    """Writes a real, untrained ONNX recognizer (N,3,112,112) -> (N,dim) to a path: a random
    projection of each crop's mean colour, so it scores any two faces alike."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    def write(path: Path, dim: int) -> Path:
        rng = np.random.default_rng(0)
        weight = helper.make_tensor("w", TensorProto.FLOAT, [3, dim], rng.normal(size=3 * dim).astype(np.float32).tolist())
        graph = helper.make_graph(
            [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["embedding"])],
            "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 112, 112])],
            [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim])], [weight])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
        return path

    return write
