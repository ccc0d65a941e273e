"""Gallery operations: build a gallery from photos, add people or photos, remove people,
recalibrate; each bumps the revision and records it in the history. The database itself (model,
on-disk format, search) is :mod:`inference.gallery_store`, the index kinds :mod:`inference.index`,
the threshold :mod:`inference.calibration`.
"""
from __future__ import annotations

import difflib
import time
from pathlib import Path
from typing import Any

from inference import faces as facelib
from inference import shards
from inference.calibration import DEFAULT_FAR, calibrate, check_separation, reference_for
from inference.calibration import warnings as calibration_warnings
from inference.gallery_store import MANIFEST, Gallery, load, new_manifest, normalise, publish, save
from inference.index import check_kind, index_recall
from inference.models import Models, load_models, sha256
from inference.sources import ImageItem, list_images, local
from jobs.core import storage
from jobs.core.contract import Shard
from jobs.core.errors import DataError, NotFoundError
from jobs.core.lazy import numpy as np

DEFAULT_DET_SIZE = 640
DEFAULT_DET_THRESH = 0.5


def recalibrate(gallery: Gallery, far: float = DEFAULT_FAR) -> dict[str, Any]:
    """Calibrate ``gallery``'s threshold for ``far`` from its own pairs, its stored background and
    its recognizer's reference distribution (:func:`inference.calibration.calibrate`), and store
    the result in its manifest."""
    reference = reference_for(gallery.manifest["models"]["recognizer"]["sha256"])
    gallery.manifest["calibration"] = calibrate(gallery.embeddings, gallery.labels, far,
                                                background=gallery.background, reference=reference)
    return gallery.manifest["calibration"]


def background_embeddings(models: Models, source: str | Path, det_size: int = DEFAULT_DET_SIZE,
                          det_thresh: float = DEFAULT_DET_THRESH, workers: int | None = None) -> np.ndarray:
    """Embeddings of every face in the photos of ``source`` (folder, list or object-storage
    prefix): people who are not in the gallery, whose scores against it are impostor pairs."""
    with local(source) as folder:
        items = list_images(folder).items
        found = [face.embedding for result in facelib.analyse(models, items, det_size=det_size, det_thresh=det_thresh,
                                                              workers=workers) for face in result.faces]
    if not found:
        raise DataError(f"{source}: no faces found for the calibration background")
    return np.stack(found).astype(np.float32)


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
    gallery.embeddings = np.concatenate([gallery.embeddings, normalise(embeddings.reshape(len(rows), gallery.dim))])
    gallery.changed()


def _add_faces(gallery: Gallery, kept: list[tuple[ImageItem, facelib.Face]], digests: dict[str, str]) -> None:
    details = []
    for item, face in kept:
        x1, y1, x2, y2 = (round(float(v), 1) for v in face.box)
        details.append({"image": item.name, "x1": x1, "y1": y1, "x2": x2, "y2": y2, "det_score": round(face.score, 4),
                        "sha256": digests[item.name]})
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
    gallery = Gallery(new_manifest(identity, index, DEFAULT_DET_SIZE, DEFAULT_DET_THRESH), np.zeros((0, embeddings.shape[1]), np.float32), [])
    _append(gallery, persons, np.asarray(embeddings, np.float32), [{} for _ in persons])
    _record(gallery, "import", added=len(persons))
    return gallery


def _record(gallery: Gallery, action: str, **detail: Any) -> None:
    gallery.manifest["revision"] += 1
    gallery.manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    gallery.manifest["history"].append({"revision": gallery.manifest["revision"], "action": action,
                                        "time": gallery.manifest["updated"], **detail})


def _finish(gallery: Gallery, far: float | None, force: bool = True) -> dict[str, Any]:
    """Recalibrate, refuse a recognizer that does not separate people unless ``force``
    (:func:`inference.calibration.check_separation`), measure an approximate index's recall, and
    summarise."""
    calibration = recalibrate(gallery, far) if far is not None and gallery.entries else gallery.manifest.get("calibration")
    check_separation(calibration, force)
    if gallery.manifest["index"]["type"] != "flat" and gallery.entries:
        gallery.manifest["index"]["recall_at_1"] = index_recall(gallery.index(), gallery.embeddings)
    return {
        "revision": gallery.manifest["revision"], "people": len(gallery.people), "embeddings": len(gallery.entries),
        "threshold": gallery.threshold, "calibration": calibration, "index": gallery.manifest["index"],
        "warnings": calibration_warnings(calibration, gallery.labels) if gallery.entries else [],
    }


def _issue_counts(issues: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for issue in issues:
        counts[issue["issue"]] = counts.get(issue["issue"], 0) + 1
    return counts


def _skipped(names: list[str]) -> list[dict[str, Any]]:
    """Issue rows for files that were not read: not an image by extension, or outside a person folder."""
    return [{"image": name, "issue": "not_an_image", "detail": "skipped by extension or location"} for name in names]


def _new_photos(entries: list[dict[str, Any]], items: list[ImageItem]) -> tuple[list[ImageItem], list[dict[str, Any]], dict[str, str]]:
    """``items`` without the photos ``entries`` already hold (or that repeat within ``items``), by
    content hash, so adding the same folder twice never doubles anyone; an issue row per photo
    left out, naming the copy that is kept; and each kept photo's hash (stored in its entry)."""
    seen = {e["sha256"]: e["image"] for e in entries if e.get("sha256")}
    fresh, duplicates, digests = [], [], {}
    for item in items:
        digest = sha256(item.path)
        if digest in seen:
            duplicates.append({"image": item.name, "issue": "duplicate", "detail": f"same photo as {seen[digest]}; skipped"})
        else:
            seen[digest], digests[item.name] = item.name, digest
            fresh.append(item)
    return fresh, duplicates, digests


def _existing_gallery(out: str | Path) -> Gallery | None:
    """The gallery already at ``out`` (None when there is none), so build never replaces one unasked."""
    return load(out) if storage.exists(storage.join(str(out), MANIFEST)) else None


def _target_far(gallery: Gallery) -> float:
    """The FAR the gallery was last calibrated for, so updates keep the user's choice."""
    return (gallery.manifest.get("calibration") or {}).get("target_far", DEFAULT_FAR)


def _labelled(source: str | Path, folder: Path, at: Shard | None = None) -> tuple[list[ImageItem], list[str]]:
    """The labelled images of ``folder`` and the files skipped, this instance's share of them when
    the job is sharded (where an instance may also get none: SageMaker hands out whole objects)."""
    listing = list_images(folder, labels=True)
    if not listing.items and at is None:
        raise DataError(f"{source}: no images found (expected one sub-folder of photos per person, or a path,person CSV)")
    return shards.share(listing.items, at), shards.share(listing.skipped, at, str)


def _embed(source: str | Path, models: Models, at: Shard | None, *, det_size: int, det_thresh: float,
           batch_size: int, workers: int | None, strict: bool, index: str, progress: bool) -> tuple[Gallery, int]:
    """A new, uncalibrated gallery of the faces in ``source`` (this instance's share of them),
    with an issue row for every photo left out; and the number of images read."""
    with local(source) as folder:
        items, skipped = _labelled(source, folder, at)
        fresh, duplicates, digests = _new_photos([], items)
        kept, issues = _collect(models, fresh, strict, progress, det_size=det_size, det_thresh=det_thresh,
                                batch_size=batch_size, workers=workers)
    gallery = Gallery(new_manifest(models.identity(), index, det_size, det_thresh), np.zeros((0, models.dim), np.float32), [],
                      issues + duplicates + _skipped(skipped))
    _add_faces(gallery, kept, digests)
    return gallery, len(items)


def build_gallery(source: str | Path, out: str | Path, models: Models | str | Path | None = None, *,
                  det: str | Path | None = None, rec: str | Path | None = None, det_size: int = DEFAULT_DET_SIZE,
                  det_thresh: float = DEFAULT_DET_THRESH, batch_size: int = 16, workers: int | None = None,
                  strict: bool = False, far: float = DEFAULT_FAR, index: str = "flat", force: bool = False,
                  background: str | Path | None = None, progress: bool = False,
                  shard: Shard | None = None) -> dict[str, Any]:
    """Build a gallery at ``out`` from ``source`` (folder of per-person folders, ``path,person``
    CSV, or an object-storage prefix of either); ``background`` names photos of other people for
    the calibration (kept with the gallery). Returns a summary (people, embeddings, images,
    issues, calibration).

    A gallery already at ``out`` is refused unless ``force``; then the new one continues its
    revision numbers and history (the rebuild is one more revision), so nothing is lost silently.
    So is a recognizer that does not separate people (strangers scoring like the same person),
    with the figures, before anything is written.
    With ``shard`` this instance embeds its share of the photos into the part folder ``out``
    (uncalibrated; :func:`merge_galleries` makes the parts one gallery)."""
    check_kind(index)
    previous = None if shard else _existing_gallery(out)
    if previous is not None and not force:
        raise DataError(f"{out} already holds a gallery (revision {previous.manifest['revision']}, "
                        f"{len(previous.people)} people); add photos with `faceops gallery add`, or "
                        "rebuild it as a new revision with --force")
    models = load_models(models, det, rec)
    gallery, images = _embed(source, models, shard, det_size=det_size, det_thresh=det_thresh, batch_size=batch_size,
                             workers=workers, strict=strict, index=index, progress=progress)
    if shard:
        save(gallery, Path(out))
        shards.write_part(Path(out), source=str(source), images=images)
        return {"part": shard.part, "images": images, "embeddings": len(gallery.entries)}
    if not gallery.entries:
        raise DataError(f"{source}: no faces found in {images} images; nothing to build")
    if background is not None:
        gallery.background = background_embeddings(models, background, det_size, det_thresh, workers)
    if previous is not None:
        gallery.manifest.update(revision=previous.manifest["revision"], history=previous.manifest["history"])
    _record(gallery, "build", source=str(source), images=images, added=len(gallery.entries),
            **({"replaced_revision": previous.manifest["revision"]} if previous is not None else {}))
    summary = _finish(gallery, far, force)
    publish(gallery, out)
    return {**summary, "gallery": str(out), "images": images, "issues": _issue_counts(gallery.issues)}


def merge_galleries(parts: list[tuple[Path, dict[str, Any]]], out: Path, far: float = DEFAULT_FAR,
                    force: bool = False) -> dict[str, Any]:
    """One gallery at ``out`` from the parts sharded instances built (:func:`build_gallery` with
    ``shard``), as one instance over all the photos builds it: entries in image order (so people
    get the same ids), a photo that two parts hold kept once, calibrated over all the embeddings.
    Returns the same summary :func:`build_gallery` does."""
    galleries = [load(folder) for folder, _ in parts]
    first = galleries[0]
    rows = sorted(((entry, embedding) for g in galleries for entry, embedding in zip(g.entries, g.embeddings)),
                  key=lambda row: row[0]["image"])
    kept, issues, seen = [], [], {}
    for entry, embedding in rows:
        if entry.get("sha256") in seen:
            issues.append({"image": entry["image"], "issue": "duplicate",
                           "detail": f"same photo as {seen[entry['sha256']]}; skipped"})
            continue
        seen[entry.get("sha256")] = entry["image"]
        kept.append((entry, embedding))
    images = sum(int(info["images"]) for _, info in parts)
    source = parts[0][1]["source"]
    if not kept:
        raise DataError(f"{source}: no faces found in {images} images; nothing to build")
    detection = first.manifest["detection"]
    gallery = Gallery(new_manifest(first.manifest["models"], first.manifest["index"]["type"], detection["det_size"],
                                   detection["det_thresh"]), np.zeros((0, first.dim), np.float32), [],
                      sorted([i for g in galleries for i in g.issues] + issues, key=lambda row: row["image"]))
    details = [{k: v for k, v in entry.items() if k not in ("person_id", "person")} for entry, _ in kept]
    _append(gallery, [entry["person"] for entry, _ in kept], np.stack([e for _, e in kept]), details)
    _record(gallery, "build", source=source, images=images, added=len(kept))
    summary = _finish(gallery, far, force)
    save(gallery, out)
    return {**summary, "gallery": str(out), "images": images, "issues": _issue_counts(gallery.issues)}


def add_to_gallery(path: str | Path, source: str | Path, models: Models | str | Path | None = None, *,
                   det: str | Path | None = None, rec: str | Path | None = None, batch_size: int = 16,
                   workers: int | None = None, strict: bool = False, progress: bool = False) -> dict[str, Any]:
    """Add the people/photos of ``source`` to the gallery at ``path`` (a folder or an
    object-storage prefix) without rebuilding it: same models enforced, detection settings and
    calibration target kept; the new revision is published atomically (:func:`publish`)."""
    gallery = load(path)
    models = load_models(models, det, rec)
    gallery.check_models(models, path)
    settings = gallery.manifest["detection"]
    with local(source) as folder:
        items, skipped = _labelled(source, folder)
        fresh, duplicates, digests = _new_photos(gallery.entries, items)
        kept, issues = _collect(models, fresh, strict, progress, det_size=settings["det_size"],
                                det_thresh=settings["det_thresh"], batch_size=batch_size, workers=workers)
    _add_faces(gallery, kept, digests)
    issues += duplicates
    gallery.issues.extend(issues + _skipped(skipped))
    _record(gallery, "add", source=str(source), images=len(items), added=len(kept), duplicates=len(duplicates))
    summary = _finish(gallery, _target_far(gallery))
    publish(gallery, path)
    return {**summary, "gallery": str(path), "images": len(items), "added": len(kept), "duplicates": len(duplicates),
            "issues": _issue_counts(issues)}


def remove_from_gallery(path: str | Path, people: list[str]) -> dict[str, Any]:
    """Remove every embedding of the named people from the gallery at ``path`` (a folder or an
    object-storage prefix), published as a new revision."""
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
    publish(gallery, path)
    return {**summary, "gallery": str(path), "removed": int((~keep).sum())}


def calibrate_gallery(path: str | Path, far: float = DEFAULT_FAR, background: str | Path | None = None,
                      models: Models | str | Path | None = None, *, det: str | Path | None = None,
                      rec: str | Path | None = None, force: bool = False) -> dict[str, Any]:
    """Recalibrate the gallery at ``path`` for a new target false-accept rate and save it;
    ``background`` (photos of other people, embedded with the gallery's models) replaces the
    stored background. A recognizer that does not separate people is refused (nothing saved)
    unless ``force``."""
    gallery = load(path)
    if not gallery.entries:
        raise DataError(f"{path}: the gallery is empty; nothing to calibrate")
    if background is not None:
        models = load_models(models, det, rec)
        gallery.check_models(models, path)
        settings = gallery.manifest["detection"]
        gallery.background = background_embeddings(models, background, settings["det_size"], settings["det_thresh"])
    calibration = recalibrate(gallery, far)
    check_separation(calibration, force)
    _record(gallery, "calibrate", target_far=far, **({"background": str(background)} if background is not None else {}))
    save(gallery, path)
    return {"gallery": str(path), "revision": gallery.manifest["revision"], **calibration,
            "warnings": calibration_warnings(calibration, gallery.labels)}
