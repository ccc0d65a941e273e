"""``faceops data pack-verification``: a verification ``.bin`` of balanced pairs from one folder of
photos per person, in insightface's format (the one ``lfw.bin``, ``cfp_fp.bin`` and
``agedb_30.bin`` use), so a team can measure a model on its own held-out people with the same
10-fold protocol as the published benchmarks.

Pairs alternate positive, negative, so every one of the protocol's ten consecutive folds is
balanced (a fold of only positives would make its threshold meaningless). Photos are aligned
with the packer's 5-point aligner when a detector is given, else resized to 112x112 (for photos
that are already aligned crops).
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from pathlib import Path

from jobs.core.errors import DataError
from train.pack import encode_image, face_aligner, identity_images
from train.verification import write_bin

SIDE = 112


@dataclass
class PairsReport:
    """What a pack wrote: pairs by kind, people and photos used, photos skipped and why."""

    path: Path
    positive: int
    negative: int
    people: int
    photos: int
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"path": str(self.path), "pairs": self.positive + self.negative, "positive": self.positive,
                "negative": self.negative, "people": self.people, "photos": self.photos, "skipped": self.skipped}


def choose_pairs(people: dict[str, list[int]], count: int, seed: int) -> list[tuple[int, int, bool]]:
    """``count`` distinct pairs of photo indices, half of one person (positive) and half of two
    different people (negative), alternating; fewer positives when the photos do not allow more
    (then as many negatives, so the set stays balanced)."""
    rng = random.Random(seed)
    positives = [pair for photos in people.values() for pair in itertools.combinations(photos, 2)]
    rng.shuffle(positives)
    half = min(count // 2, len(positives))
    names = [name for name, photos in people.items() if photos]
    if half == 0 or len(names) < 2:
        raise DataError("need at least two people with photos and one person with two photos for verification pairs")
    negatives: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    tries = 0
    while len(negatives) < half and tries < 100 * half:
        tries += 1
        a, b = rng.sample(names, 2)
        pair = tuple(sorted((rng.choice(people[a]), rng.choice(people[b]))))
        if pair not in seen:
            seen.add(pair)
            negatives.append(pair)
    if len(negatives) < half:
        raise DataError(f"only {len(negatives)} distinct negative pairs found for {half} positives")
    pairs: list[tuple[int, int, bool]] = []
    for (p1, p2), (n1, n2) in zip(positives[:half], negatives):
        pairs += [(p1, p2, True), (n1, n2, False)]
    return pairs


def pack_verification(photos_dir: Path, out: Path, pairs: int = 600, seed: int = 0,
                      detector: Path | bool | None = None, quality: int = 95) -> PairsReport:
    """Write ``out`` (a ``.bin``) with ``pairs`` pairs from ``photos_dir/<person>/<photo>``, faces
    aligned by ``detector`` (True: the pretrained one) or, without one, resized."""
    if pairs < 2:
        raise DataError("--pairs: at least 2 (one positive, one negative)")
    identities, skipped = identity_images(Path(photos_dir))
    align = face_aligner(detector, SIDE) if detector else None
    encoded: list[bytes] = []
    people: dict[str, list[int]] = {}
    for name, files in identities:
        for path in files:
            try:
                data, _ = encode_image(path, resize=None if align else (SIDE, SIDE), align=align, quality=quality)
            except DataError as exc:
                skipped.append(f"{path}: {exc}")
                continue
            people.setdefault(name, []).append(len(encoded))
            encoded.append(data)
    chosen = choose_pairs(people, pairs, seed)
    images = [encoded[i] for a, b, _ in chosen for i in (a, b)]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bin(images, [same for *_, same in chosen], out)
    positive = sum(same for *_, same in chosen)
    return PairsReport(out, positive, len(chosen) - positive, len(people), len(encoded), skipped)
