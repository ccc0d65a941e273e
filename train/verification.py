"""Verification on insightface's ``.bin`` pair sets (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``):
the standard protocol, so our numbers compare with published ones.

A ``.bin`` is a pickle of ``(bins, issame)``: ``2 * len(issame)`` encoded 112x112 images, pairs
side by side. Each image is embedded together with its mirror image (sum, then L2-normalised);
accuracy is the mean over 10 folds of the test-fold accuracy at the squared-distance threshold
that is best on the other nine folds.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Callable, Sequence

from inference.models import onnx_session
from jobs.core.errors import DataError
from jobs.core.lazy import cv2
from jobs.core.lazy import numpy as np
from train.importer import init_source

# Distance thresholds tried: 0 to 4 (squared distance of unit vectors) in steps of 0.01.
THRESHOLD_RANGE = (0.0, 4.0, 0.01)


def load_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, H, W)`` uint8 RGB and ``issame`` ``(N/2,)`` bool from a ``.bin`` file."""
    try:
        with open(path, "rb") as fh:
            bins, issame = pickle.load(fh, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: not an insightface verification .bin (pickle of (images, issame)): {exc}") from None
    if len(bins) != 2 * len(issame):
        raise DataError(f"{path}: {len(bins)} images for {len(issame)} pairs (expected {2 * len(issame)})")
    images = []
    for i, data in enumerate(bins):
        img = cv2.imdecode(np.frombuffer(bytes(data), np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise DataError(f"{path}: image {i} does not decode")
        images.append(img[:, :, ::-1].transpose(2, 0, 1))
    return np.stack(images), np.asarray(issame, bool)


def write_bin(images: Sequence[bytes], issame: Sequence[bool], path: Path) -> Path:
    """Write encoded images (pairs side by side) and their same/different flags as a ``.bin``."""
    if len(images) != 2 * len(issame):
        raise ValueError(f"{len(images)} images for {len(issame)} pairs")
    with open(path, "wb") as fh:
        pickle.dump(([bytes(b) for b in images], [bool(s) for s in issame]), fh, protocol=4)
    return path


def embeddings(forward: Callable[[np.ndarray], np.ndarray], images: np.ndarray, flip: bool = True,
               batch_size: int = 64, progress: str | None = None) -> np.ndarray:
    """L2-normalised embeddings of uint8 RGB ``(N, 3, H, W)`` images; with ``flip`` the protocol's
    ``f(x) + f(mirror(x))``. ``forward`` maps a normalised float32 batch to ``(n, D)``: a Gluon
    network in a job, onnxruntime in ``faceops eval``, the same protocol for both. ``progress``
    names a progress bar (on stderr) over the faces; None draws none."""
    from tqdm import tqdm

    out = []
    bar = tqdm(total=len(images), unit="face", desc=progress, disable=progress is None)
    for start in range(0, len(images), batch_size):
        bar.update(min(batch_size, len(images) - start))
        x = (images[start:start + batch_size].astype(np.float32) - 127.5) / 127.5
        emb = forward(x)
        out.append(emb + forward(np.ascontiguousarray(x[:, :, :, ::-1])) if flip else emb)
    bar.close()
    emb = np.concatenate(out)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def accuracy(embeddings: np.ndarray, issame: np.ndarray, folds: int = 10) -> tuple[float, float]:
    """Mean and std of the 10-fold verification accuracy, threshold chosen on the training folds."""
    dist = np.sum((embeddings[0::2] - embeddings[1::2]) ** 2, axis=1)
    issame = np.asarray(issame, bool)
    # predictions[t, i]: pair i called "same" at threshold t.
    correct = (dist[None, :] < np.arange(*THRESHOLD_RANGE)[:, None]) == issame[None, :]
    folds = min(folds, len(dist))
    scores = []
    for test in np.array_split(np.arange(len(dist)), folds):
        train = np.setdiff1d(np.arange(len(dist)), test)
        best = np.argmax(correct[:, train].mean(axis=1)) if len(train) else 0
        scores.append(correct[best, test].mean())
    return float(np.mean(scores)), float(np.std(scores))


def evaluate_bins(forward: Callable[[np.ndarray], np.ndarray], paths: Sequence[Path],
                  flip: bool = True, progress: bool = False) -> dict[str, float]:
    """``{"val_<name>_acc": mean, "val_<name>_std": std}`` for every ``.bin`` in ``paths``; with
    ``progress`` a bar per set on stderr."""
    results: dict[str, float] = {}
    for path in paths:
        images, issame = load_bin(Path(path))
        mean, std = accuracy(embeddings(forward, images, flip, progress=Path(path).stem if progress else None), issame)
        results[f"val_{Path(path).stem}_acc"], results[f"val_{Path(path).stem}_std"] = round(mean, 5), round(std, 5)
    return results


def evaluate(net: Any, folder: Path, ctx: Any) -> dict[str, float]:
    """:func:`evaluate_bins` of a Gluon ``net`` on every ``*.bin`` in ``folder`` (a job's ``val``)."""
    import mxnet as mx

    return evaluate_bins(lambda x: net(mx.nd.array(x, ctx=ctx)).asnumpy(), sorted(Path(folder).glob("*.bin")))


def onnx_forward(model: Path, threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """A recognizer ONNX file (or a model folder's ``model.onnx``) as a batch function."""
    session = onnx_session(init_source(Path(model)), threads)
    name = session.get_inputs()[0].name

    def forward(x: np.ndarray) -> np.ndarray:
        try:
            return session.run(None, {name: x})[0]
        except Exception as exc:  # as above, at run time (e.g. shapes the graph cannot broadcast)
            raise DataError(f"{path}: onnxruntime cannot run it: {str(exc).splitlines()[0]}") from None

    return forward
