"""Evaluate the Gluon detector: detections per image (score threshold + NMS, both hyperparameters)
and average precision at IoU 0.5 over a split, the figure reported as the job's ``val_ap50``.

Images are fed like insightface feeds the exported model: scaled so the long side is ``size``
(never up), placed top-left on a ``size x size`` canvas, RGB ``(x - 127.5) / 128``; so the Gluon
net and the exported ONNX see the same pixels and must give the same boxes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from jobs.core.lazy import cv2
from train.anchors import anchors_for, decode, iou, nms
from train.detection_data import Faces
from train.retinaface import INPUT_MEAN, INPUT_STD

IOU_MATCH = 0.5


@dataclass(frozen=True)
class EvalConfig:
    size: int = 640
    score_threshold: float = 0.02
    nms_threshold: float = 0.4


def letterbox(img: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """``img`` scaled (down only) so its long side fits ``size`` and padded to ``size x size``."""
    scale = min(1.0, size / max(img.shape[:2]))
    if scale < 1:
        img = cv2.resize(img, (int(img.shape[1] * scale), int(img.shape[0] * scale)))
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[:img.shape[0], :img.shape[1]] = img
    return canvas, scale


def to_input(images: np.ndarray) -> Any:
    """``(N, H, W, 3)`` RGB uint8 -> the network's ``(N, 3, H, W)`` normalised input."""
    from mxnet import nd

    batch = (images.astype(np.float32) - INPUT_MEAN) / INPUT_STD
    return nd.array(batch.transpose(0, 3, 1, 2))


def postprocess(outputs: list[np.ndarray], height: int, width: int, cfg: EvalConfig) -> tuple[np.ndarray, np.ndarray]:
    """One image's raw head outputs (score logits, boxes, landmarks per level) -> ``(k, 5)``
    detections ``x1 y1 x2 y2 score`` and ``(k, 5, 2)`` landmarks, best first."""
    levels = len(outputs) // 3
    logits = np.concatenate(outputs[:levels]).reshape(-1)
    scores = 1 / (1 + np.exp(-logits))
    anchors = anchors_for(height, width)
    keep = scores >= cfg.score_threshold
    boxes, points = decode(anchors, np.concatenate(outputs[levels:2 * levels])[keep],
                           np.concatenate(outputs[2 * levels:])[keep], keep)
    dets = np.concatenate([boxes, scores[keep, None]], axis=1).astype(np.float32)
    order = nms(dets, cfg.nms_threshold) if len(dets) else np.zeros(0, np.int64)
    return dets[order], points[order].astype(np.float32)


def detect(net: Any, img: np.ndarray, cfg: EvalConfig) -> tuple[np.ndarray, np.ndarray]:
    """Faces in one RGB image, in the image's coordinates (run where the net's weights are)."""
    canvas, scale = letterbox(img, cfg.size)
    ctx = next(iter(net.collect_params().values())).list_ctx()[0]
    outputs = [o[0].asnumpy() for o in net(to_input(canvas[None]).as_in_context(ctx))]
    dets, points = postprocess(outputs, cfg.size, cfg.size, cfg)
    dets[:, :4] /= scale
    return dets, points / scale


def average_precision(detections: list[np.ndarray], truths: list[np.ndarray], threshold: float = IOU_MATCH) -> float:
    """VOC-style AP (area under the interpolated precision/recall curve) over images: each
    detection, best score first, matches the unmatched truth box it overlaps most (IoU >= threshold)."""
    total = sum(len(t) for t in truths)
    if total == 0:
        return float("nan")
    overlaps = [iou(d[:, :4], g) if len(d) and len(g) else np.zeros((len(d), len(g))) for d, g in zip(detections, truths)]
    scored = sorted(((float(d[4]), image, row) for image, dets in enumerate(detections) for row, d in enumerate(dets)),
                    key=lambda s: -s[0])
    used = [np.zeros(len(g), bool) for g in truths]
    hits = np.zeros(len(scored))
    for k, (_, image, row) in enumerate(scored):
        candidates = np.where(used[image], -1.0, overlaps[image][row])
        if candidates.size and candidates.max() >= threshold:
            used[image][int(candidates.argmax())] = True
            hits[k] = 1
    tp = np.cumsum(hits)
    recall = np.concatenate([[0], tp / total])
    precision = np.concatenate([[1], tp / np.arange(1, len(tp) + 1)])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(recall) * precision[1:]))


def evaluate(net: Any, samples: Iterable[tuple[np.ndarray, Faces]], cfg: EvalConfig) -> dict[str, float]:
    """AP@0.5 and detection counts of ``net`` over ``(image, faces)`` samples."""
    detections, truths = [], []
    for img, faces in samples:
        dets, _ = detect(net, img, cfg)
        detections.append(dets)
        truths.append(faces.boxes)
    ap = average_precision(detections, truths)
    return {"ap50": ap, "images": len(truths), "faces": int(sum(len(t) for t in truths))}
