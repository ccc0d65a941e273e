"""Margin heads for training: the classifier that turns embeddings into logits with an angular
margin on the true class (insightface's combined margin ``s * (cos(m1*theta + m2) - m3)``).

ArcFace is ``(1, 0.5, 0)``, CosFace ``(1, 0, 0.35)``, SphereFace-like margins use ``m1``; the
head only exists during training, the exported model is the backbone alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from mxnet.gluon import HybridBlock

from jobs.core.errors import SpecError


@dataclass(frozen=True)
class Margin:
    """``s * (cos(m1 * theta + m2) - m3)`` for the true class, ``s * cos(theta)`` for the others."""

    s: float = 64.0
    m1: float = 1.0
    m2: float = 0.5
    m3: float = 0.0


MARGINS = {
    "arcface": Margin(64.0, 1.0, 0.5, 0.0),
    "cosface": Margin(64.0, 1.0, 0.0, 0.35),
}


def get_margin(loss: str, s: float | None = None, m1: float | None = None, m2: float | None = None,
               m3: float | None = None) -> Margin:
    """The margin of ``loss`` (``arcface``, ``cosface`` or ``combined``), any value overridden."""
    if loss != "combined" and loss not in MARGINS:
        raise SpecError(f"unknown loss '{loss}'; known: {', '.join([*MARGINS, 'combined'])}")
    base = MARGINS.get(loss, Margin())
    pick = lambda value, default: default if value is None else value  # noqa: E731
    return Margin(pick(s, base.s), pick(m1, base.m1), pick(m2, base.m2), pick(m3, base.m3))


class MarginHead(HybridBlock):
    """Normalised classifier weights ``(num_classes, embedding_size)``; ``forward(embeddings,
    labels)`` returns ``(margin logits for the loss, plain scaled cosines for accuracy)``."""

    def __init__(self, num_classes: int, embedding_size: int, margin: Margin):
        super().__init__()
        self.num_classes, self.margin = num_classes, margin
        with self.name_scope():
            self.weight = self.params.get("weight", shape=(num_classes, embedding_size))

    def hybrid_forward(self, F, x, label, weight):
        cos = F.FullyConnected(F.L2Normalization(x), F.L2Normalization(weight), no_bias=True,
                               num_hidden=self.num_classes)
        # Clipped away from +-1: arccos has an infinite gradient there.
        cos = F.clip(cos, -1.0 + 1e-6, 1.0 - 1e-6)
        return margin_logits(F, cos, F.one_hot(label, self.num_classes), self.margin), cos * self.margin.s


def margin_logits(F, cos, one_hot, m: Margin):
    """``s * cos`` with the true class (the 1 of ``one_hot``; an all-zero row has none among these
    columns) moved to ``s * (cos(m1 * theta + m2) - m3)``; ``F`` is ``mx.nd`` or ``mx.sym``, so the
    Gluon head and the Partial FC shards (train.partial_fc) compute one margin."""
    target = F.cos(F.arccos(cos) * m.m1 + m.m2) - m.m3
    if m.m2 > 0:
        # Past m1*theta + m2 = pi the margin would make cos rise again; there insightface
        # falls back to a linear penalty so the true-class logit keeps falling with theta.
        bound = math.cos((math.pi - m.m2) / m.m1)
        target = F.where(cos > bound, target, cos - math.sin(m.m2) * m.m2 - m.m3)
    return (cos + one_hot * (target - cos)) * m.s
