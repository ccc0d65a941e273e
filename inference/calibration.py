"""Calibrating a gallery's similarity threshold for a target false-accept rate (FAR).

A threshold at FAR f needs impostor scores (different people) to count from: about 10/f of them to
stand on measurement alone (1e4 pairs for f = 1e-3, a gallery of ~140 people with one photo each).
Most galleries have far fewer, so the impostor scores come from three sources, pooled:

- the gallery's own impostor pairs (and genuine pairs, for the TAR);
- a background: faces of people who are not in the gallery (``--background DIR``), scored against
  every gallery embedding (each such pair is an impostor pair by construction);
- the reference distribution of the recognizer in use, shipped as :data:`REFERENCE_FILE` keyed by
  the model's SHA-256 (computed once by ``scripts/reference_impostors.py`` from faces of public
  sample photos). It holds few pairs, so its tail beyond what they resolve is a normal fit
  (mean + z * std), never below the highest reference score.

When the measured pairs (own + background) resolve the target, they decide alone. Otherwise the
threshold is the larger of their own estimate (never accepting a measured impostor pair) and the
reference's; without a reference for the model, :data:`DEFAULT_THRESHOLD` is the floor. The result
says what it rests on and carries a warning whenever the target is not resolved by measurement.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from statistics import NormalDist
from typing import Any

from jobs.core.errors import DataError
from jobs.core.lazy import numpy as np

DEFAULT_FAR = 1e-3
# The floor for a recognizer without a reference distribution and too few measured pairs: typical
# for ArcFace cosines (SCRFD-500M + MobileFaceNet on the shared LFW photos: no impostor pair above it).
DEFAULT_THRESHOLD = 0.3
CALIBRATION_SAMPLE = 4000  # embeddings used for genuine/impostor pairs (4000^2/2 = 8M pairs)
TAIL_PAIRS = 10  # measured impostor pairs above the threshold needed for it to stand alone
REFERENCE_FILE = Path(__file__).with_name("reference_impostors.json")
REFERENCE_TOP = 0.05  # share of the highest reference scores stored (for empirical quantiles)


def reference_summary(scores: np.ndarray) -> dict[str, Any]:
    """What a reference distribution stores of its impostor ``scores``: count, mean, std, a few
    quantiles and the highest :data:`REFERENCE_TOP` of them (sorted, highest first)."""
    ordered = np.sort(np.asarray(scores, np.float64))[::-1]
    top = ordered[:max(1, int(np.ceil(REFERENCE_TOP * len(ordered))))]
    return {"pairs": int(len(ordered)), "mean": round(float(ordered.mean()), 5), "std": round(float(ordered.std()), 5),
            "quantiles": {q: round(float(np.quantile(ordered, float(q))), 4) for q in ("0.5", "0.9", "0.99")},
            "top": [round(float(s), 4) for s in top]}


@lru_cache(maxsize=1)
def _references() -> dict[str, Any]:
    return json.loads(REFERENCE_FILE.read_text()) if REFERENCE_FILE.is_file() else {}


def reference_for(recognizer_sha256: str) -> dict[str, Any] | None:
    """The shipped reference impostor distribution of the recognizer with this SHA-256, or None."""
    return _references().get(recognizer_sha256)


def reference_threshold(reference: dict[str, Any], far: float) -> float:
    """The threshold the reference distribution gives for ``far``: the normal tail fit, and never
    below the empirical quantile it resolves (or its highest score when it resolves none)."""
    tail = reference["mean"] + NormalDist().inv_cdf(1 - far) * reference["std"]
    rank = int(np.floor(far * reference["pairs"]))
    measured = reference["top"][rank] if rank < len(reference["top"]) else float("-inf")
    return float(max(tail, measured))


def _threshold_at(impostor: np.ndarray, far: float) -> float:
    """The lowest threshold that accepts at most ``far`` of ``impostor`` (sorted, highest first)."""
    allowed = int(np.floor(far * len(impostor)))
    if allowed >= len(impostor):
        return float(impostor[-1])
    return float(np.nextafter(np.float32(impostor[allowed]), np.float32(np.inf)))


def _pairs(embeddings: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Genuine and impostor scores among a sample of the gallery's embeddings (and the sample)."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(labels), size=min(CALIBRATION_SAMPLE, len(labels)), replace=False)
    emb, lab = embeddings[pick], labels[pick]
    sims = emb @ emb.T
    upper = np.triu(np.ones_like(sims, dtype=bool), k=1)
    same = lab[:, None] == lab[None, :]
    return sims[upper & same], sims[upper & ~same], emb


def calibrate(embeddings: np.ndarray, labels: np.ndarray, far: float = DEFAULT_FAR, *,
              background: np.ndarray | None = None, reference: dict[str, Any] | None = None,
              seed: int = 0) -> dict[str, Any]:
    """The similarity threshold for ``far`` over a gallery's ``embeddings`` (unit rows, ``labels``
    their person), from its own pairs, the ``background`` embeddings (people not in the gallery)
    and the recognizer's ``reference`` distribution, as the module docstring describes. Returns the
    threshold with what it rests on: pair counts, sources, measured FAR and TAR, the smallest FAR
    the measured pairs resolve, and a ``warning`` when they do not resolve ``far``."""
    if not 0 < far < 1:
        raise DataError(f"target false-accept rate must be between 0 and 1, got {far}")
    genuine, own, sample = _pairs(embeddings, labels, seed)
    cross = (sample @ background.T).ravel() if background is not None and len(background) else np.zeros(0)
    impostor = np.sort(np.concatenate([own, cross]))[::-1]
    sources = ["gallery pairs"] + (["background"] if len(cross) else [])
    resolvable = len(impostor) * far >= TAIL_PAIRS
    measured = _threshold_at(impostor, far) if len(impostor) else None
    floor = reference_threshold(reference, far) if reference is not None else DEFAULT_THRESHOLD
    threshold = measured if resolvable else max(c for c in (measured, floor) if c is not None)
    warning = None
    if not resolvable:
        sources.append(f"reference ({reference['pairs']} pairs, normal tail fit)" if reference is not None
                       else "default floor")
        warning = _unresolved(far, len(impostor), threshold, measured, floor, reference is not None, background is not None)
    return {
        "target_far": far,
        "threshold": round(threshold, 6),
        "source": " + ".join(sources),
        "far": float(np.mean(impostor >= threshold)) if len(impostor) else None,
        "tar": float(np.mean(genuine >= threshold)) if len(genuine) else None,
        "genuine_pairs": int(len(genuine)),
        "impostor_pairs": int(len(own)),
        "background_pairs": int(len(cross)),
        "min_resolvable_far": 1.0 / len(impostor) if len(impostor) else None,
        "resolvable": bool(resolvable),
        "reference_pairs": reference["pairs"] if reference is not None and not resolvable else None,
        **separation(genuine, impostor),
        "warning": warning,
    }


def _unresolved(far: float, pairs: int, threshold: float, measured: float | None, floor: float,
                has_reference: bool, has_background: bool) -> str:
    """Why the threshold for ``far`` is not measured alone, naming the number it really is and
    which of the estimates set it, and what would resolve it."""
    counted = (f"{pairs} measured impostor pairs leave {int(far * pairs)} above a FAR {far:g} threshold; standing "
               f"on measurement alone takes {TAIL_PAIRS}, i.e. ~{int(TAIL_PAIRS / far)} pairs") if pairs \
        else "there are no measured impostor pairs"
    floor_name = "the recognizer's reference distribution" if has_reference else "the default floor (this recognizer has no reference distribution)"
    if measured is not None and measured >= floor:
        rests = f"the threshold {threshold:.6g} is the measured estimate, above the {floor:.6g} of {floor_name}"
    else:
        rests = f"the threshold {threshold:.6g} comes from {floor_name}"
    more = ("add more background photos (people not in the gallery)" if has_background
            else "pass --background DIR (photos of people not in the gallery)")
    return f"target FAR {far:g} is not resolved by measurement ({counted}): {rests}; {more} to measure it"


# A recognizer separates people when strangers score well below the same person: trained ArcFace
# models give impostor cosines around 0 (pretrained MobileFaceNet on the shared LFW photos: mean 0.017,
# genuine 0.63, AUC 1.0); an untrained or collapsed one scores everyone alike (the example recognizer
# after 4 steps: 1.0; a random colour projection: 0.58).
IMPOSTOR_MEAN_CEILING = 0.5
MIN_AUC = 0.75
AUC_PAIRS = 10  # genuine pairs below which the AUC is too coarse to judge by


def separation(genuine: np.ndarray, impostor: np.ndarray) -> dict[str, Any]:
    """How far apart a recognizer puts people: the mean impostor and genuine similarity and the
    AUC (the chance that a genuine pair scores above an impostor pair; None without both kinds)."""
    auc = None
    if len(genuine) and len(impostor):
        ascending = np.sort(impostor)
        below = np.searchsorted(ascending, genuine, side="left")
        ties = np.searchsorted(ascending, genuine, side="right") - below
        auc = round(float(np.mean((below + ties / 2) / len(ascending))), 4)
    return {"impostor_mean": round(float(impostor.mean()), 4) if len(impostor) else None,
            "genuine_mean": round(float(genuine.mean()), 4) if len(genuine) else None, "auc": auc}


def separation_problem(calibration: dict[str, Any] | None) -> str | None:
    """Why the calibrated recognizer does not separate people, with the figures, or None when it
    does (or when there are no impostor pairs to tell)."""
    if not calibration or calibration.get("impostor_mean") is None:
        return None
    pairs = calibration["impostor_pairs"] + calibration["background_pairs"]
    found = []
    if calibration["impostor_mean"] > IMPOSTOR_MEAN_CEILING:
        found.append(f"different people score {calibration['impostor_mean']:.3g} on average against each other "
                     f"({pairs} impostor pairs; a trained recognizer stays below {IMPOSTOR_MEAN_CEILING})")
    if calibration.get("auc") is not None and calibration["genuine_pairs"] >= AUC_PAIRS and calibration["auc"] < MIN_AUC:
        found.append(f"a photo scores above a stranger's for the same person only {calibration['auc']:.3g} of the time "
                     f"(AUC over {calibration['genuine_pairs']} genuine and {pairs} impostor pairs; genuine mean "
                     f"{calibration['genuine_mean']:.3g}, impostor mean {calibration['impostor_mean']:.3g}; "
                     f"0.5 is chance, at least {MIN_AUC} expected)")
    if not found:
        return None
    return ("the recognizer does not separate people: " + "; ".join(found)
            + f"; at threshold {calibration['threshold']:.6g} identify would not tell them apart")


def check_separation(calibration: dict[str, Any] | None, force: bool) -> None:
    """Refuse (:class:`DataError`, with the figures) a calibration whose recognizer does not
    separate people, unless ``force``: such a gallery would name strangers as anyone."""
    problem = separation_problem(calibration)
    if problem and not force:
        raise DataError(f"{problem}. Use a trained recognizer (check it with `faceops eval recognition`), "
                        "or pass --force (a gallery job: hyperparameters force: true) to keep it anyway")


LOW_TAR = 0.2  # below this most genuine photos fall under the threshold: identify says "unknown"


def warnings(calibration: dict[str, Any] | None, labels: np.ndarray) -> list[str]:
    """What makes a calibration unfit to trust, in words a user can act on: a target FAR that
    measurement does not resolve (:func:`calibrate`'s own ``warning``), a TAR near 0 (the
    recognizer does not tell these people apart at this threshold), and people with a single
    photo (no genuine pairs, so the TAR rests on the others). Empty when none applies."""
    found = []
    _, photos = np.unique(labels, return_counts=True)
    if calibration is None:
        found.append(f"not calibrated: it needs at least two people; the default threshold {DEFAULT_THRESHOLD} is used")
        return found
    if calibration.get("warning"):
        found.append(calibration["warning"])
    if separation_problem(calibration):
        found.append(separation_problem(calibration))
    tar = calibration.get("tar")
    if calibration.get("genuine_pairs") and (tar is None or tar < LOW_TAR):
        found.append(f"TAR {0 if tar is None else tar:.3g} at threshold {calibration['threshold']:.6g}: almost no photo "
                     "matches another of the same person, so identify will answer `unknown` for most faces; "
                     "the recognizer may be undertrained, or the target FAR too strict for it")
    single = int(np.sum(photos == 1))
    if single * 2 > len(photos):
        found.append(f"{single} of {len(photos)} people have one photo: they give no genuine pairs, so the TAR rests "
                     f"on {calibration['genuine_pairs']} pairs of the others; add a second photo per person")
    return found
