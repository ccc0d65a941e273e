"""A contact sheet of an identify run's doubtful faces, most doubtful first.

A reviewer looks at pictures faster than at CSV rows: the sheet shows the faces that came out
``unknown`` (those nearest the threshold first: they may be gallery people the threshold rejected),
then the matches with the smallest margin (the least change of similarity that would have changed
the answer). Each tile is the face crop with its answer, similarity, margin (``under t`` for an
unknown face: how far below the threshold; ``lead`` for a match: how far above the threshold or
the runner-up) and image name (its end, which tells photos apart, kept when it is too long).

Faces are ranked as the report streams by, keeping only the ``limit`` most doubtful crops in
memory, so a run over a million images costs the same as one over a hundred.
"""
from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.faces import read_image
from jobs.core.errors import DataError
from jobs.core.lazy import cv2
from jobs.core.lazy import numpy as np

UNKNOWN = "unknown"
TILE = 112
CAPTION = 46  # three caption lines: answer and similarity, margin, image name
COLUMNS = 8
HEADER = 30
LIMIT = 48
RED, GREEN, WHITE, GREY = (40, 40, 220), (40, 160, 40), (255, 255, 255), (90, 90, 90)


def margin(row: dict[str, Any], threshold: float) -> float:
    """How much the top similarity would have to change to change the answer: for a match, its
    distance above the threshold or above the runner-up person, whichever is closer; for an
    unknown face, its distance below the threshold."""
    top = row.get("top_k") or []
    best = top[0]["similarity"] if top else -math.inf
    if row["person"] == UNKNOWN:
        return threshold - best
    runner_up = top[1]["similarity"] if len(top) > 1 else -math.inf
    return best - max(threshold, runner_up)


def doubt(row: dict[str, Any], threshold: float) -> tuple[int, float]:
    """Sort key, smallest first: unknown faces before matches, each by its margin."""
    return (0 if row["person"] == UNKNOWN else 1, margin(row, threshold))


@dataclass
class Tile:
    """One face on the sheet: its report row, its doubt key and its crop (BGR, TILE x TILE)."""

    row: dict[str, Any]
    key: tuple[int, float]
    crop: np.ndarray


class DoubtfulFaces:
    """Collects the ``limit`` most doubtful faces of a run from its report rows."""

    def __init__(self, threshold: float, limit: int = LIMIT) -> None:
        self.threshold = threshold
        self.limit = limit
        self.seen = {"unknown": 0, "matches": 0}
        self._heap: list[tuple[int, float, int, Tile]] = []  # negated keys: the top is the least doubtful
        self._order = itertools.count()

    def add(self, image_path: Path, rows: list[dict[str, Any]]) -> None:
        """Offer one image's report rows; the image is decoded only if one of its faces is kept."""
        image = None
        for row in rows:
            if row.get("status") != "ok":
                continue
            self.seen["unknown" if row["person"] == UNKNOWN else "matches"] += 1
            key = doubt(row, self.threshold)
            entry = (-key[0], -key[1], -next(self._order))
            if len(self._heap) >= self.limit and entry <= self._heap[0][:3]:
                continue
            if image is None:
                image = read_image(image_path)
            tile = Tile(row, key, crop(image, row["box"]))
            if len(self._heap) >= self.limit:
                heapq.heapreplace(self._heap, (*entry, tile))
            else:
                heapq.heappush(self._heap, (*entry, tile))

    def ranked(self) -> list[Tile]:
        """The kept faces, most doubtful first (ties in report order)."""
        return [item[3] for item in sorted(self._heap, reverse=True)]

    def write(self, out: str | Path) -> Path:
        """Draw the sheet (``.jpg`` or ``.png``) and return its path."""
        tiles = self.ranked()
        unknown = sum(t.key[0] == 0 for t in tiles)
        title = (f"{unknown} unknown (red, of {self.seen['unknown']}), then {len(tiles) - unknown} lowest-margin "
                 f"matches (green, of {self.seen['matches']}); threshold {self.threshold:.2f}")
        sheet = layout(tiles, title)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix.lower() not in (".jpg", ".jpeg", ".png") or not cv2.imwrite(str(out), sheet):
            raise DataError(f"cannot write contact sheet {out} (use a .jpg or .png path)")
        return out


def crop(image: np.ndarray, box: list[float], pad: float = 0.2) -> np.ndarray:
    """The face box widened by ``pad`` on each side, letterboxed into TILE x TILE."""
    height, width = image.shape[:2]
    x1, y1, x2, y2 = box
    dx, dy = (x2 - x1) * pad, (y2 - y1) * pad
    left, top = max(0, int(x1 - dx)), max(0, int(y1 - dy))
    right, bottom = min(width, int(math.ceil(x2 + dx))), min(height, int(math.ceil(y2 + dy)))
    face = image[top:bottom, left:right]
    tile = np.full((TILE, TILE, 3), 40, np.uint8)
    if face.size == 0:
        return tile
    scale = TILE / max(face.shape[:2])
    h, w = max(1, round(face.shape[0] * scale)), max(1, round(face.shape[1] * scale))
    resized = cv2.resize(face, (w, h), interpolation=cv2.INTER_AREA)
    tile[(TILE - h) // 2:(TILE - h) // 2 + h, (TILE - w) // 2:(TILE - w) // 2 + w] = resized
    return tile


def layout(tiles: list[Tile], title: str) -> np.ndarray:
    """The sheet: a title band, then tiles in rows of COLUMNS with a two-line caption each."""
    columns = max(1, min(COLUMNS, len(tiles)))
    rows = max(1, math.ceil(len(tiles) / columns))
    cell = TILE + CAPTION
    width = max(columns * TILE, 8 * TILE)
    sheet = np.full((HEADER + rows * cell, width, 3), 255, np.uint8)
    cv2.putText(sheet, title, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    if not tiles:
        cv2.putText(sheet, "no faces", (6, HEADER + 40), cv2.FONT_HERSHEY_SIMPLEX, 0.5, GREY, 1, cv2.LINE_AA)
    for index, tile in enumerate(tiles):
        x, y = (index % columns) * TILE, HEADER + (index // columns) * cell
        sheet[y:y + TILE, x:x + TILE] = tile.crop
        color = RED if tile.key[0] == 0 else GREEN
        cv2.rectangle(sheet, (x, y), (x + TILE - 1, y + TILE - 1), color, 2)
        line1, line2, line3 = captions(tile)
        cv2.putText(sheet, line1, (x + 2, y + TILE + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38, color, 1, cv2.LINE_AA)
        cv2.putText(sheet, line2, (x + 2, y + TILE + 27), cv2.FONT_HERSHEY_SIMPLEX, 0.34, color, 1, cv2.LINE_AA)
        cv2.putText(sheet, line3, (x + 2, y + TILE + 41), cv2.FONT_HERSHEY_SIMPLEX, 0.34, GREY, 1, cv2.LINE_AA)
    return sheet


def captions(tile: Tile) -> tuple[str, str, str]:
    """A tile's three caption lines: the answer (``? nearest`` for an unknown face) and
    similarity; the margin, ``under t`` (below the threshold) for an unknown face and ``lead``
    (over the threshold or runner-up) for a match; the image name's end."""
    row = tile.row
    top = row.get("top_k") or [{}]
    name = row["person"] if row["person"] != UNKNOWN else f"? {top[0].get('person', '-')}"
    similarity = row.get("similarity")
    answer = f"{name[:10]} {similarity:.2f}" if similarity is not None else name[:14]
    doubt_line = f"under t {tile.key[1]:.2f}" if tile.key[0] == 0 else f"lead {tile.key[1]:.2f}"
    return answer, doubt_line, fit_end(Path(str(row["image"])).name, TILE - 4, 0.34)


def fit_end(text: str, width: int, scale: float) -> str:
    """``text`` as drawn in ``width`` pixels at font ``scale``: whole when it fits, else ``..``
    and as much of its end as fits (a file name's end tells photos apart; its start often does not)."""
    def drawn(candidate: str) -> int:
        return cv2.getTextSize(candidate, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]

    if drawn(text) <= width:
        return text
    for start in range(1, len(text)):
        if drawn(".." + text[start:]) <= width:
            return ".." + text[start:]
    return ".." + text[-1:]
