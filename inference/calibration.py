"""Calibrating a gallery's similarity threshold for a target false-accept rate, from its own
genuine (same person) and impostor (different people) embedding pairs.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from jobs.core.errors import DataError

DEFAULT_FAR = 1e-3
# Used only when a gallery cannot be calibrated (fewer than two people); typical for ArcFace cosines.
DEFAULT_THRESHOLD = 0.3
CALIBRATION_SAMPLE = 4000  # embeddings used for genuine/impostor pairs (4000^2/2 = 8M pairs)


def calibrate(embeddings: np.ndarray, labels: np.ndarray, far: float = DEFAULT_FAR,
              seed: int = 0) -> dict[str, Any] | None:
    """The similarity threshold that accepts at most ``far`` of impostor pairs among ``embeddings``
    (unit rows, ``labels`` their person), with the TAR at it, the measured FAR and the pair counts;
    None when there are fewer than two people. The smallest FAR that can be resolved is 1/impostors."""
    if not 0 < far < 1:
        raise DataError(f"target false-accept rate must be between 0 and 1, got {far}")
    if len(np.unique(labels)) < 2:
        return None
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(labels), size=min(CALIBRATION_SAMPLE, len(labels)), replace=False)
    emb, lab = embeddings[pick], labels[pick]
    sims = emb @ emb.T
    upper = np.triu(np.ones_like(sims, dtype=bool), k=1)
    same = lab[:, None] == lab[None, :]
    genuine, impostor = sims[upper & same], np.sort(sims[upper & ~same])[::-1]
    allowed = int(np.floor(far * len(impostor)))
    threshold = float(np.nextafter(impostor[allowed], np.float32(np.inf))) if allowed < len(impostor) else float(impostor[-1])
    return {
        "target_far": far,
        "threshold": round(threshold, 6),
        "far": float(np.mean(impostor >= threshold)),
        "tar": float(np.mean(genuine >= threshold)) if len(genuine) else None,
        "genuine_pairs": int(len(genuine)),
        "impostor_pairs": int(len(impostor)),
        "min_resolvable_far": 1.0 / len(impostor),
    }


LOW_TAR = 0.2  # below this most genuine photos fall under the threshold: identify says "unknown"


def warnings(calibration: dict[str, Any] | None, labels: np.ndarray) -> list[str]:
    """What makes a calibration unfit to trust, in words a user can act on: a TAR near 0 (the
    recognizer does not tell these people apart at this FAR), a target FAR below what the
    gallery's impostor pairs can resolve, and people with a single photo (no genuine pairs, so
    the TAR rests on the others). Empty when none applies."""
    found = []
    _, photos = np.unique(labels, return_counts=True)
    if calibration is None:
        found.append(f"not calibrated: it needs at least two people; the default threshold {DEFAULT_THRESHOLD} is used")
        return found
    tar = calibration.get("tar")
    if tar is None or tar < LOW_TAR:
        found.append(f"TAR {0 if tar is None else tar:.3g} at threshold {calibration['threshold']:.6g}: almost no photo "
                     "matches another of the same person, so identify will answer `unknown` for most faces; "
                     "the recognizer may be undertrained, or the target FAR too strict for it")
    if calibration["target_far"] < calibration["min_resolvable_far"]:
        found.append(f"target FAR {calibration['target_far']:g} is below the smallest this gallery can resolve "
                     f"({calibration['min_resolvable_far']:.3g} = 1/{calibration['impostor_pairs']} impostor pairs); the "
                     "threshold is the highest impostor similarity. More people (or photos) make it reachable")
    single = int(np.sum(photos == 1))
    if single * 2 > len(photos):
        found.append(f"{single} of {len(photos)} people have one photo: they give no genuine pairs, so the TAR rests "
                     f"on {calibration['genuine_pairs']} pairs of the others; add a second photo per person")
    return found
