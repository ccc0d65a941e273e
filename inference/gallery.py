"""The gallery database: embeddings of known people, built from photos and searched by identify.

A gallery is a folder, written file by file with the manifest last (so a reader never sees half a
revision):

``gallery.json``   format, revision and history, the models' identities (file SHA-256 + dim), the
                   people (id, name), index type, calibration (threshold for a target FAR)
``embeddings.npy`` float32 (N, D), L2-normalised, one per gallery image
``entries.csv``    per embedding: person id and name, source image, box, detection score
``templates.npy``  float32 (P, D), each person's normalised mean embedding
``index.faiss``    faiss inner-product index over the embeddings (exact ``flat`` by default)
``issues.csv``     images that gave no face, several faces, or could not be read

``build``/``add``/``remove``/``calibrate`` bump the revision; ``search`` returns top-k *people*.
"""
from __future__ import annotations

import csv
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from inference import faces as facelib
from inference.models import Models, load_models
from inference.sources import ImageItem, list_images, local
from jobs.core.errors import DataError, NotFoundError
from jobs.core.files import atomic_write

FORMAT = "faceops-gallery"
FORMAT_VERSION = 1
MANIFEST = "gallery.json"
ENTRY_FIELDS = ["person_id", "person", "image", "x1", "y1", "x2", "y2", "det_score"]
ISSUE_FIELDS = ["image", "issue", "detail"]
DEFAULT_FAR = 1e-3
# Used only when a gallery cannot be calibrated (fewer than two people); typical for ArcFace cosines.
DEFAULT_THRESHOLD = 0.3
DEFAULT_DET_SIZE = 640
DEFAULT_DET_THRESH = 0.5
CALIBRATION_SAMPLE = 4000  # embeddings used for genuine/impostor pairs (4000^2/2 = 8M pairs)


def _flat(dim: int, vectors: np.ndarray) -> Any:
    import faiss

    index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    return index


def _hnsw(dim: int, vectors: np.ndarray) -> Any:
    import faiss

    index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efSearch = 128
    index.add(vectors)
    return index


def _ivf(dim: int, vectors: np.ndarray) -> Any:
    import faiss

    nlist = max(1, min(4096, int(4 * np.sqrt(len(vectors)))))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.nprobe = max(1, nlist // 16)
    index.add(vectors)
    return index


INDEXES: dict[str, Callable[[int, np.ndarray], Any]] = {"flat": _flat, "hnsw": _hnsw, "ivf": _ivf}


def make_index(kind: str, vectors: np.ndarray) -> Any:
    """A faiss inner-product index of ``kind`` (flat = exact; hnsw, ivf = approximate) over ``vectors``."""
    if kind not in INDEXES:
        raise DataError(f"unknown index type '{kind}'; expected one of {', '.join(INDEXES)}")
    return INDEXES[kind](vectors.shape[1], np.ascontiguousarray(vectors, dtype=np.float32))


def index_recall(index: Any, vectors: np.ndarray, queries: int = 1000, seed: int = 0) -> float:
    """Recall@1 of ``index`` against exact search, for noisy copies of up to ``queries`` stored
    vectors (a stored vector would trivially find itself)."""
    rng = np.random.default_rng(seed)
    picked = vectors[rng.choice(len(vectors), size=min(queries, len(vectors)), replace=False)]
    probe = picked + rng.normal(0, 0.5 / np.sqrt(vectors.shape[1]), picked.shape).astype(np.float32)
    probe /= np.linalg.norm(probe, axis=1, keepdims=True)
    exact = (probe @ vectors.T).argmax(axis=1)
    _, found = index.search(probe, 1)
    return float(np.mean(found[:, 0] == exact))


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


@dataclass
class Gallery:
    """A gallery in memory. ``entries[i]`` describes ``embeddings[i]``."""

    manifest: dict[str, Any]
    embeddings: np.ndarray
    entries: list[dict[str, Any]]
    issues: list[dict[str, Any]] = field(default_factory=list)
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
        return _normalise(sums)

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


def is_gallery(path: Path) -> bool:
    return (path / MANIFEST).is_file()


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


def calibrate(gallery: Gallery, far: float = DEFAULT_FAR, seed: int = 0) -> dict[str, Any] | None:
    """Estimate the similarity threshold that accepts at most ``far`` of impostor pairs, from the
    gallery's own genuine (same person) and impostor (different people) embedding pairs.

    Stores and returns the calibration (threshold, TAR at it, measured FAR, pair counts); None
    when there are fewer than two people. The smallest FAR that can be resolved is 1/impostors."""
    if not 0 < far < 1:
        raise DataError(f"target false-accept rate must be between 0 and 1, got {far}")
    labels = gallery.labels
    if len(np.unique(labels)) < 2:
        gallery.manifest["calibration"] = None
        return None
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(labels), size=min(CALIBRATION_SAMPLE, len(labels)), replace=False)
    emb, lab = gallery.embeddings[pick], labels[pick]
    sims = emb @ emb.T
    upper = np.triu(np.ones_like(sims, dtype=bool), k=1)
    same = lab[:, None] == lab[None, :]
    genuine, impostor = sims[upper & same], np.sort(sims[upper & ~same])[::-1]
    allowed = int(np.floor(far * len(impostor)))
    threshold = float(np.nextafter(impostor[allowed], np.float32(np.inf))) if allowed < len(impostor) else float(impostor[-1])
    calibration = {
        "target_far": far,
        "threshold": round(threshold, 6),
        "far": float(np.mean(impostor >= threshold)),
        "tar": float(np.mean(genuine >= threshold)) if len(genuine) else None,
        "genuine_pairs": int(len(genuine)),
        "impostor_pairs": int(len(impostor)),
        "min_resolvable_far": 1.0 / len(impostor),
    }
    gallery.manifest["calibration"] = calibration
    return calibration


def _new_manifest(identity: dict[str, Any], index: str, det_size: int, det_thresh: float) -> dict[str, Any]:
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "revision": 0, "history": [],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "models": identity, "detection": {"det_size": det_size, "det_thresh": det_thresh},
        "index": {"type": index}, "people": [], "next_person_id": 0, "calibration": None, "count": 0,
    }


def _collect(models: Models, items: list[ImageItem], strict: bool, progress: bool,
             **analyse: Any) -> tuple[list[tuple[ImageItem, facelib.Face]], list[dict[str, Any]]]:
    """One face per image (the largest; none with ``strict`` when there are several) plus an issue
    row for every image that did not give exactly one face."""
    from tqdm import tqdm

    kept, issues = [], []
    for result in tqdm(facelib.analyse(models, items, **analyse), total=len(items), unit="img",
                       desc="gallery", disable=not progress):
        name = result.item.name
        if result.error:
            issues.append({"image": name, "issue": "unreadable", "detail": result.error})
        elif not result.faces:
            issues.append({"image": name, "issue": "no_face", "detail": ""})
        elif len(result.faces) > 1:
            action = "skipped (--strict)" if strict else "largest face used"
            issues.append({"image": name, "issue": "several_faces", "detail": f"{len(result.faces)} faces; {action}"})
            if not strict:
                kept.append((result.item, result.faces[0]))
        else:
            kept.append((result.item, result.faces[0]))
    return kept, issues


def _append(gallery: Gallery, persons: list[str], embeddings: np.ndarray, details: list[dict[str, Any]]) -> None:
    """Append embeddings with their person names (new names become new people) and entry details."""
    ids = {p["name"]: p["id"] for p in gallery.people}
    for name in dict.fromkeys(persons):
        if name not in ids:
            ids[name] = gallery.manifest["next_person_id"]
            gallery.manifest["people"].append({"id": ids[name], "name": name})
            gallery.manifest["next_person_id"] += 1
    rows = [{"person_id": ids[name], "person": name, **detail} for name, detail in zip(persons, details)]
    gallery.entries.extend(rows)
    gallery.embeddings = np.concatenate([gallery.embeddings, _normalise(embeddings.reshape(len(rows), gallery.dim))])
    gallery.changed()


def _add_faces(gallery: Gallery, kept: list[tuple[ImageItem, facelib.Face]]) -> None:
    details = []
    for item, face in kept:
        x1, y1, x2, y2 = (round(float(v), 1) for v in face.box)
        details.append({"image": item.name, "x1": x1, "y1": y1, "x2": x2, "y2": y2, "det_score": round(face.score, 4)})
    embeddings = np.stack([face.embedding for _, face in kept]) if kept else np.zeros((0, gallery.dim), np.float32)
    _append(gallery, [item.label for item, _ in kept], embeddings, details)


def from_embeddings(embeddings: np.ndarray, persons: list[str], identity: dict[str, Any],
                    index: str = "flat") -> Gallery:
    """A gallery from embeddings computed elsewhere (one person name per row; rows are
    L2-normalised here). ``identity`` is the recognizer's as in :meth:`Models.identity`, so
    identify can still refuse other models' embeddings."""
    if embeddings.ndim != 2 or embeddings.shape[1] != identity["recognizer"]["dim"] or len(persons) != len(embeddings):
        raise DataError(f"expected {len(persons)} embeddings of {identity['recognizer']['dim']} dimensions, "
                        f"got an array of shape {embeddings.shape}")
    gallery = Gallery(_new_manifest(identity, index, DEFAULT_DET_SIZE, DEFAULT_DET_THRESH), np.zeros((0, embeddings.shape[1]), np.float32), [])
    _append(gallery, persons, np.asarray(embeddings, np.float32), [{} for _ in persons])
    _record(gallery, "import", added=len(persons))
    return gallery


def _record(gallery: Gallery, action: str, **detail: Any) -> None:
    gallery.manifest["revision"] += 1
    gallery.manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    gallery.manifest["history"].append({"revision": gallery.manifest["revision"], "action": action,
                                        "time": gallery.manifest["updated"], **detail})


def _finish(gallery: Gallery, far: float | None) -> dict[str, Any]:
    """Recalibrate, measure an approximate index's recall, and summarise."""
    calibration = calibrate(gallery, far) if far is not None and gallery.entries else gallery.manifest.get("calibration")
    if gallery.manifest["index"]["type"] != "flat" and gallery.entries:
        gallery.manifest["index"]["recall_at_1"] = index_recall(gallery.index(), gallery.embeddings)
    return {
        "revision": gallery.manifest["revision"], "people": len(gallery.people), "embeddings": len(gallery.entries),
        "threshold": gallery.threshold, "calibration": calibration, "index": gallery.manifest["index"],
    }


def _issue_counts(issues: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for issue in issues:
        counts[issue["issue"]] = counts.get(issue["issue"], 0) + 1
    return counts


def _skipped(names: list[str]) -> list[dict[str, Any]]:
    """Issue rows for files that were not read: not an image by extension, or outside a person folder."""
    return [{"image": name, "issue": "not_an_image", "detail": "skipped by extension or location"} for name in names]


def _target_far(gallery: Gallery) -> float:
    """The FAR the gallery was last calibrated for, so updates keep the user's choice."""
    return (gallery.manifest.get("calibration") or {}).get("target_far", DEFAULT_FAR)


def _labelled(source: str | Path, folder: Path) -> tuple[list[ImageItem], list[str]]:
    listing = list_images(folder, labels=True)
    if not listing.items:
        raise DataError(f"{source}: no images found (expected one sub-folder of photos per person, or a path,person CSV)")
    return listing.items, listing.skipped


def build_gallery(source: str | Path, out: str | Path, models: Models | str | Path | None = None, *,
                  det: str | Path | None = None, rec: str | Path | None = None, det_size: int = DEFAULT_DET_SIZE,
                  det_thresh: float = DEFAULT_DET_THRESH, batch_size: int = 16, workers: int = 2, strict: bool = False,
                  far: float = DEFAULT_FAR, index: str = "flat", progress: bool = False) -> dict[str, Any]:
    """Build a gallery at ``out`` from ``source`` (folder of per-person folders, ``path,person``
    CSV, or an object-storage prefix of either). Returns a summary (people, embeddings, images,
    issues, calibration)."""
    if index not in INDEXES:
        raise DataError(f"unknown index type '{index}'; expected one of {', '.join(INDEXES)}")
    models = load_models(models, det, rec)
    with local(source) as folder:
        items, skipped = _labelled(source, folder)
        kept, issues = _collect(models, items, strict, progress, det_size=det_size, det_thresh=det_thresh,
                                batch_size=batch_size, workers=workers)
    if not kept:
        raise DataError(f"{source}: no faces found in {len(items)} images; nothing to build")
    gallery = Gallery(_new_manifest(models.identity(), index, det_size, det_thresh), np.zeros((0, models.dim), np.float32), [],
                      issues + _skipped(skipped))
    _add_faces(gallery, kept)
    _record(gallery, "build", source=str(source), images=len(items), added=len(kept))
    summary = _finish(gallery, far)
    publish(gallery, out)
    return {**summary, "gallery": str(out), "images": len(items), "issues": _issue_counts(gallery.issues)}


def add_to_gallery(path: str | Path, source: str | Path, models: Models | str | Path | None = None, *,
                   det: str | Path | None = None, rec: str | Path | None = None, batch_size: int = 16,
                   workers: int = 2, strict: bool = False, progress: bool = False) -> dict[str, Any]:
    """Add the people/photos of ``source`` to the gallery at ``path`` (a local folder) without
    rebuilding it: same models enforced, detection settings and calibration target kept."""
    gallery = load(path)
    models = load_models(models, det, rec)
    gallery.check_models(models, path)
    settings = gallery.manifest["detection"]
    with local(source) as folder:
        items, skipped = _labelled(source, folder)
        kept, issues = _collect(models, items, strict, progress, det_size=settings["det_size"],
                                det_thresh=settings["det_thresh"], batch_size=batch_size, workers=workers)
    gallery.issues.extend(issues + _skipped(skipped))
    _add_faces(gallery, kept)
    _record(gallery, "add", source=str(source), images=len(items), added=len(kept))
    summary = _finish(gallery, _target_far(gallery))
    save(gallery, path)
    return {**summary, "gallery": str(path), "images": len(items), "added": len(kept), "issues": _issue_counts(issues)}


def remove_from_gallery(path: str | Path, people: list[str]) -> dict[str, Any]:
    """Remove every embedding of the named people from the gallery at ``path``."""
    import difflib

    gallery = load(path)
    for name in people:
        if name not in gallery.names:
            close = difflib.get_close_matches(name, gallery.names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise NotFoundError(f"{path}: no person '{name}' in the gallery{hint}")
    keep = np.array([e["person"] not in people for e in gallery.entries], dtype=bool)
    gallery.entries = [e for e, k in zip(gallery.entries, keep) if k]
    gallery.embeddings = gallery.embeddings[keep]
    gallery.manifest["people"] = [p for p in gallery.people if p["name"] not in people]
    gallery.changed()
    _record(gallery, "remove", people=people, removed=int((~keep).sum()))
    summary = _finish(gallery, _target_far(gallery))
    save(gallery, path)
    return {**summary, "gallery": str(path), "removed": int((~keep).sum())}


def calibrate_gallery(path: str | Path, far: float = DEFAULT_FAR) -> dict[str, Any]:
    """Recalibrate the gallery at ``path`` for a new target false-accept rate and save it."""
    gallery = load(path)
    if not gallery.entries:
        raise DataError(f"{path}: the gallery is empty; nothing to calibrate")
    calibration = calibrate(gallery, far)
    if calibration is None:
        raise DataError(f"{path}: calibration needs at least two people (impostor pairs); the gallery has {len(gallery.people)}")
    _record(gallery, "calibrate", target_far=far)
    save(gallery, path)
    return {"gallery": str(path), "revision": gallery.manifest["revision"], **calibration}
