"""The detector's loss: face/background classification (hard negative mining at 3:1, or focal loss)
plus smooth-L1 on box distances and landmark offsets of positive anchors, landmarks masked where
the label had none (-1) and weighted by ``landmark_weight``. Everything is normalised by the number
of positive anchors in the batch, so the loss scale does not depend on how many faces an image has.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from mxnet import autograd, nd

# Images without faces still teach background: at least this many hard negatives per image.
MIN_NEGATIVES = 16


@dataclass(frozen=True)
class LossConfig:
    cls_loss: str = "ohem"
    neg_pos_ratio: float = 3.0
    landmark_weight: float = 1.0
    box_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


def bce_with_logits(logits: nd.NDArray, labels: nd.NDArray) -> nd.NDArray:
    """Element-wise binary cross-entropy on logits, stable for large magnitudes."""
    return nd.relu(logits) - logits * labels + nd.log1p(nd.exp(-nd.abs(logits)))


def ohem_cls(logits: nd.NDArray, labels: nd.NDArray, cfg: LossConfig) -> nd.NDArray:
    """Sum of BCE over positives and the hardest negatives (``neg_pos_ratio`` per positive, per image)."""
    positive = labels == 1
    loss = bce_with_logits(logits, positive)
    with autograd.pause():
        negative = labels == 0
        ranked = nd.where(negative, loss, nd.ones_like(loss) * -1)
        rank = nd.argsort(nd.argsort(-ranked, axis=1), axis=1)
        quota = nd.maximum(positive.sum(axis=1, keepdims=True) * cfg.neg_pos_ratio, MIN_NEGATIVES)
        selected = positive + negative * (rank < quota)
    return (loss * selected).sum()


def focal_cls(logits: nd.NDArray, labels: nd.NDArray, cfg: LossConfig) -> nd.NDArray:
    """Sum of the focal loss over every anchor that is not ignored."""
    positive = labels == 1
    prob = nd.sigmoid(logits)
    p_t = nd.where(positive, prob, 1 - prob)
    alpha = nd.where(positive, nd.ones_like(prob) * cfg.focal_alpha, nd.ones_like(prob) * (1 - cfg.focal_alpha))
    loss = alpha * (1 - p_t) ** cfg.focal_gamma * bce_with_logits(logits, positive)
    return (loss * (labels >= 0)).sum()


CLS_LOSSES: dict[str, Callable[[nd.NDArray, nd.NDArray, LossConfig], nd.NDArray]] = {
    "ohem": ohem_cls,
    "focal": focal_cls,
}


def detection_loss(outputs: tuple[nd.NDArray, ...], labels: nd.NDArray, boxes: nd.NDArray,
                   landmarks: nd.NDArray, landmark_mask: nd.NDArray, cfg: LossConfig) -> dict[str, Any]:
    """``outputs``: the 9 arrays of :class:`train.retinaface.RetinaFace`; targets ``(N, A[, C])`` from
    :func:`train.anchors.assign`. Returns ``total`` (to backpropagate) and its parts."""
    levels = len(outputs) // 3
    logits = nd.concat(*outputs[:levels], dim=1).reshape((0, -1))
    box_pred = nd.concat(*outputs[levels:2 * levels], dim=1)
    lmk_pred = nd.concat(*outputs[2 * levels:], dim=1)
    positive = (labels == 1).expand_dims(-1)
    num_pos = nd.maximum(positive.sum(), 1)
    cls = CLS_LOSSES[cfg.cls_loss](logits, labels, cfg) / num_pos
    box = (nd.smooth_l1(box_pred - boxes, scalar=1.0) * positive).sum() / num_pos
    lmk_weight = positive * landmark_mask.expand_dims(-1)
    lmk = (nd.smooth_l1(lmk_pred - landmarks, scalar=1.0) * lmk_weight).sum() / nd.maximum(lmk_weight.sum(), 1)
    total = cls + cfg.box_weight * box + cfg.landmark_weight * lmk
    return {"total": total, "cls": cls, "box": box, "landmark": lmk}
