"""The gallery database, in memory and on disk: embeddings of known people, searched by identify.

A gallery is a folder, written file by file with the manifest last (so a reader never sees half a
revision), each file replaced atomically:

``gallery.json``   format, revision and history, the models' identities (file SHA-256 + dim), the
                   people (id, name), index type, calibration (threshold for a target FAR)
``embeddings.npy`` float32 (N, D), L2-normalised, one per gallery image
``entries.csv``    per embedding: person id and name, source image, box, detection score
``templates.npy``  float32 (P, D), each person's normalised mean embedding
``index.faiss``    faiss inner-product index over the embeddings (exact ``flat`` by default)
``issues.csv``     images that gave no face, several faces, or could not be read
``background.npy`` float32 (M, D), optional: faces of people not in the gallery, for calibration

The operations that change a gallery (build, add, remove, calibrate) are in :mod:`inference.gallery`.
"""
from __future__ import annotations

import csv
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from inference.calibration import DEFAULT_THRESHOLD
from inference.index import make_index
from inference.models import Models
from inference.sources import local
from jobs.core.errors import DataError
from jobs.core.files import atomic_write

FORMAT = "faceops-gallery"
FORMAT_VERSION = 1
MANIFEST = "gallery.json"
ENTRY_FIELDS = ["person_id", "person", "image", "x1", "y1", "x2", "y2", "det_score"]
ISSUE_FIELDS = ["image", "issue", "detail"]


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as float32."""
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


@dataclass
class Gallery:
    """A gallery in memory. ``entries[i]`` describes ``embeddings[i]``."""

    manifest: dict[str, Any]
    embeddings: np.ndarray
    entries: list[dict[str, Any]]
    issues: list[dict[str, Any]] = field(default_factory=list)
    background: np.ndarray | None = None  # embeddings of people not in the gallery (calibration)
    _index: Any = None
    _labels: np.ndarray | None = None

    @property
    def people(self) -> list[dict[str, Any]]:
        return self.manifest["people"]

    @property
    def names(self) -> list[str]:
        return [p["name"] for p in self.people]

    @property
    def dim(self) -> int:
        return int(self.manifest["models"]["recognizer"]["dim"])

    @property
    def labels(self) -> np.ndarray:
        """Row in ``people`` of each embedding's person (cached: search needs it per call)."""
        if self._labels is None:
            row = {p["id"]: i for i, p in enumerate(self.people)}
            self._labels = np.array([row[int(e["person_id"])] for e in self.entries], dtype=np.int64)
        return self._labels

    def changed(self) -> None:
        """Forget the index and labels after entries or people change."""
        self._index = None
        self._labels = None

    @property
    def threshold(self) -> float:
        """The calibrated similarity threshold, or :data:`DEFAULT_THRESHOLD` when uncalibrated."""
        calibration = self.manifest.get("calibration") or {}
        return float(calibration.get("threshold", DEFAULT_THRESHOLD))

    def templates(self) -> np.ndarray:
        """Each person's normalised mean embedding, in ``people`` order."""
        labels = self.labels
        sums = np.zeros((len(self.people), self.embeddings.shape[1]), np.float32)
        np.add.at(sums, labels, self.embeddings)
        return normalise(sums)

    def index(self) -> Any:
        if self._index is None:
            self._index = make_index(self.manifest["index"]["type"], self.embeddings)
        return self._index

    def check_models(self, models: Models, where: Path | str = "gallery") -> None:
        """Refuse to compare embeddings from a recognizer other than the gallery's."""
        have = self.manifest["models"]["recognizer"]
        mine = models.identity()["recognizer"]
        if have["dim"] != mine["dim"]:
            raise DataError(f"{where}: gallery embeddings have {have['dim']} dimensions but recognizer "
                            f"{mine['file']} gives {mine['dim']}; use the models the gallery was built with")
        if have["sha256"] != mine["sha256"]:
            raise DataError(f"{where}: gallery was built with recognizer {have['file']} (sha256 {have['sha256'][:12]}) "
                            f"but this run uses {mine['file']} (sha256 {mine['sha256'][:12]}); embeddings of "
                            "different models are not comparable: rebuild the gallery or pass its models")

    def search(self, queries: np.ndarray, top_k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Top-k people for each query: (rows in ``people`` (Q, k), cosine similarities (Q, k)),
        best first, -1 / -inf where the gallery has fewer people.

        Exact at the person level: a person's score is their best embedding, and the k best people
        always appear within the first (k-1)*M+1 hits when nobody has more than M embeddings."""
        if not self.entries:
            raise DataError("the gallery is empty: add people with `faceops gallery add`")
        labels = self.labels
        top_k = max(1, min(top_k, len(self.people)))
        per_person = int(np.bincount(labels).max())
        hits = min(len(labels), (top_k - 1) * per_person + 1)
        sims, rows = self.index().search(np.ascontiguousarray(queries, dtype=np.float32), hits)
        if per_person == 1:
            people = np.where(rows >= 0, labels[rows], -1)[:, :top_k]
            return people, np.where(people >= 0, sims[:, :top_k], -np.inf)
        return _best_people(labels, rows, sims, top_k)


def _best_people(labels: np.ndarray, rows: np.ndarray, sims: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reduce embedding hits (sorted best first) to the first ``top_k`` distinct people per query."""
    people = np.full((len(rows), top_k), -1, np.int64)
    scores = np.full((len(rows), top_k), -np.inf, np.float32)
    for q in range(len(rows)):
        valid = rows[q] >= 0
        hit_people = labels[rows[q][valid]]
        _, first = np.unique(hit_people, return_index=True)
        first = np.sort(first)[:top_k]
        people[q, :len(first)] = hit_people[first]
        scores[q, :len(first)] = sims[q][valid][first]
    return people, scores


def load(path: str | Path) -> Gallery:
    """Read a gallery folder (or an object-storage prefix holding one)."""
    with local(path) as folder:
        manifest_file = folder / MANIFEST
        if not manifest_file.is_file():
            raise DataError(f"{path} is not a faceops gallery (no {MANIFEST}); build one with `faceops gallery build`")
        try:
            manifest = json.loads(manifest_file.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{manifest_file}: not valid JSON ({exc})") from None
        if manifest.get("format") != FORMAT:
            raise DataError(f"{manifest_file}: not a faceops gallery manifest (format {manifest.get('format')!r})")
        if manifest.get("format_version", 0) > FORMAT_VERSION:
            raise DataError(f"{manifest_file}: gallery format {manifest['format_version']} is newer than this faceops reads")
        entries = _read_csv(folder / "entries.csv")
        embeddings = np.load(folder / "embeddings.npy") if entries else np.zeros((0, manifest["models"]["recognizer"]["dim"]), np.float32)
        if embeddings.shape != (len(entries), manifest["models"]["recognizer"]["dim"]):
            raise DataError(f"{path}: embeddings.npy has shape {embeddings.shape}, expected "
                            f"({len(entries)}, {manifest['models']['recognizer']['dim']}) from entries.csv and {MANIFEST}")
        gallery = Gallery(manifest, embeddings.astype(np.float32), entries, _read_csv(folder / "issues.csv"))
        if (folder / "background.npy").is_file():
            gallery.background = np.load(folder / "background.npy").astype(np.float32)
            if gallery.background.ndim != 2 or gallery.background.shape[1] != gallery.dim:
                raise DataError(f"{path}: background.npy has shape {gallery.background.shape}, expected (M, {gallery.dim})")
        if entries and (folder / "index.faiss").is_file():
            import faiss

            gallery._index = faiss.read_index(str(folder / "index.faiss"))
            if gallery._index.ntotal != len(entries):
                raise DataError(f"{path}: index.faiss holds {gallery._index.ntotal} vectors but entries.csv has {len(entries)}")
        return gallery


def _read_csv(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _write_csv(path: Path, fields: list[str], rows: Iterable[dict[str, Any]]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            out = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            out.writeheader()
            out.writerows(rows)
    atomic_write(path, write)


def _write_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, array)
    atomic_write(path, write)


def save(gallery: Gallery, path: str | Path) -> Path:
    """Write ``gallery`` to the folder ``path`` (created), manifest last."""
    import faiss

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    _write_npy(folder / "embeddings.npy", gallery.embeddings)
    _write_npy(folder / "templates.npy", gallery.templates() if gallery.entries else np.zeros((0, gallery.dim), np.float32))
    _write_csv(folder / "entries.csv", ENTRY_FIELDS, gallery.entries)
    _write_csv(folder / "issues.csv", ISSUE_FIELDS, gallery.issues)
    if gallery.background is not None:
        _write_npy(folder / "background.npy", gallery.background)
    if gallery.entries:
        atomic_write(folder / "index.faiss", lambda tmp: faiss.write_index(gallery.index(), str(tmp)))
    else:
        (folder / "index.faiss").unlink(missing_ok=True)
    gallery.manifest["count"] = len(gallery.entries)
    atomic_write(folder / MANIFEST, json.dumps(gallery.manifest, indent=2) + "\n")
    return folder


def publish(gallery: Gallery, out: str | Path) -> None:
    """Save to a local folder, or to an object-storage prefix (written locally, then uploaded
    through jobs.core.storage, whose manifest-last upload keeps readers from seeing half a gallery)."""
    from jobs.core import storage

    if not storage.is_remote(out):
        save(gallery, storage.parse(out).path)
        return
    with tempfile.TemporaryDirectory(prefix="faceops-gallery-") as tmp:
        storage.upload(save(gallery, Path(tmp) / "gallery"), out, progress=False)


def new_manifest(identity: dict[str, Any], index: str, det_size: int, det_thresh: float) -> dict[str, Any]:
    """The manifest of a new, empty gallery (revision 0) for models of ``identity``."""
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "revision": 0, "history": [],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "models": identity, "detection": {"det_size": det_size, "det_thresh": det_thresh},
        "index": {"type": index}, "people": [], "next_person_id": 0, "calibration": None, "count": 0,
    }

