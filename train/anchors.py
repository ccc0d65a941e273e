"""Anchors of the detector, training targets, decoding and NMS (numpy; no MXNet needed).

Anchor order is the network's output order and insightface's: level by level (strides 8, 16, 32),
locations row-major, the 2 anchors of a location adjacent. Anchor centres are ``(x*s, y*s)``
(insightface's convention). Box targets are ``l, t, r, b`` distances from the centre and landmark
targets offsets from it, both divided by the stride: the units the exported heads output.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

STRIDES = (8, 16, 32)
ANCHORS_PER_LOCATION = 2
# RetinaFace's square anchor sides per level (two per location).
ANCHOR_SIZES = ((16, 32), (64, 128), (256, 512))
POSITIVE_IOU, NEGATIVE_IOU, BEST_MATCH_IOU = 0.5, 0.3, 0.2


@dataclass(frozen=True)
class Anchors:
    """Every anchor of an ``H x W`` input: centre, stride and square box, in output order."""

    centers: np.ndarray  # (A, 2)
    strides: np.ndarray  # (A,)
    boxes: np.ndarray    # (A, 4) x1 y1 x2 y2

    def __len__(self) -> int:
        return len(self.strides)


@lru_cache(maxsize=32)
def anchors_for(height: int, width: int) -> Anchors:
    """The anchors of an input of ``height x width`` (multiples of 32), cached per size."""
    centers, strides, boxes = [], [], []
    for stride, sizes in zip(STRIDES, ANCHOR_SIZES):
        rows, cols = height // stride, width // stride
        grid = np.stack(np.mgrid[:rows, :cols][::-1], axis=-1).reshape(-1, 1, 2).astype(np.float32) * stride
        grid = np.repeat(grid, ANCHORS_PER_LOCATION, axis=1)
        half = np.asarray(sizes, np.float32).reshape(1, -1, 1) / 2
        centers.append(grid.reshape(-1, 2))
        strides.append(np.full(rows * cols * ANCHORS_PER_LOCATION, stride, np.float32))
        boxes.append(np.concatenate([grid - half, grid + half], axis=-1).reshape(-1, 4))
    return Anchors(np.concatenate(centers), np.concatenate(strides), np.concatenate(boxes))


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes ``a (n, 4)`` and ``b (m, 4)`` (x1 y1 x2 y2) -> ``(n, m)``."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


@dataclass
class Targets:
    """Per-anchor training targets of one image: ``labels`` 1 face, 0 background, -1 ignored."""

    labels: np.ndarray     # (A,)
    boxes: np.ndarray      # (A, 4)
    landmarks: np.ndarray  # (A, 10)
    landmark_mask: np.ndarray  # (A,) 1 where the matched face has landmarks


def assign(anchors: Anchors, boxes: np.ndarray, landmarks: np.ndarray, landmark_valid: np.ndarray) -> Targets:
    """Match faces to anchors: IoU >= 0.5 positive, < 0.3 negative, in between ignored; each face
    also claims its best anchor (if IoU >= 0.2) so small or odd-shaped faces are not lost."""
    count = len(anchors)
    labels = np.zeros(count, np.float32)
    box_t = np.zeros((count, 4), np.float32)
    lmk_t = np.zeros((count, 10), np.float32)
    lmk_mask = np.zeros(count, np.float32)
    if len(boxes) == 0:
        return Targets(labels, box_t, lmk_t, lmk_mask)
    overlaps = iou(anchors.boxes, boxes)
    best_face = overlaps.argmax(axis=1)
    best_iou = overlaps[np.arange(count), best_face]
    best_anchor = overlaps.argmax(axis=0)
    claimed = overlaps[best_anchor, np.arange(len(boxes))] >= BEST_MATCH_IOU
    best_face[best_anchor[claimed]] = np.nonzero(claimed)[0]
    best_iou[best_anchor[claimed]] = 1.0
    labels[(best_iou >= NEGATIVE_IOU) & (best_iou < POSITIVE_IOU)] = -1
    positive = best_iou >= POSITIVE_IOU
    labels[positive] = 1
    face = best_face[positive]
    centers, strides = anchors.centers[positive], anchors.strides[positive, None]
    matched = boxes[face]
    box_t[positive] = np.concatenate([centers - matched[:, :2], matched[:, 2:] - centers], axis=1) / strides
    lmk_t[positive] = ((landmarks[face] - centers[:, None, :]) / strides[:, :, None]).reshape(-1, 10)
    lmk_mask[positive] = landmark_valid[face]
    return Targets(labels, box_t, lmk_t, lmk_mask)


def decode(anchors: Anchors, boxes: np.ndarray, landmarks: np.ndarray | None = None,
           keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Predicted distances/offsets (stride units) -> absolute ``x1 y1 x2 y2`` and ``(k, 5, 2)``
    points; ``keep`` (mask or indices) says which anchors the predictions belong to (default all)."""
    centers, strides = (anchors.centers, anchors.strides) if keep is None else (anchors.centers[keep], anchors.strides[keep])
    s = strides[:, None]
    out = np.concatenate([centers - boxes[:, :2] * s, centers + boxes[:, 2:] * s], axis=1)
    if landmarks is None:
        return out, None
    points = centers[:, None, :] + landmarks.reshape(-1, 5, 2) * s[:, :, None]
    return out, points


def nms(dets: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression of ``(n, 5)`` ``x1 y1 x2 y2 score``: indices kept, best first.

    Overlap is measured with pixel-inclusive sides (``x2 - x1 + 1``), insightface's SCRFD convention,
    so the Gluon model and its exported ONNX keep exactly the same boxes."""
    x1, y1, x2, y2 = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-dets[:, 4], kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= threshold]
    return np.asarray(keep, np.int64)
