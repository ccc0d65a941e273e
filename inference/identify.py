"""Batch identification: every face in a set of images matched against a gallery.

Writes ``report.csv`` and ``report.jsonl`` (one row per face, and one per image that gave no face or
could not be read), ``metrics.json`` with ground truth, and optionally annotated copies of the
images. Faces below the gallery's calibrated threshold (or ``threshold``) are ``unknown``.
"""
from __future__ import annotations

import csv
import json
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from inference import faces as facelib
from inference import gallery_store, shards
from inference.models import Models, load_models
from inference.sheet import DoubtfulFaces
from inference.sources import ImageItem, list_images, local, read_truth
from jobs.core import storage
from jobs.core.contract import Shard
from jobs.core.errors import DataError
from jobs.core.lazy import cv2
from jobs.core.lazy import numpy as np

UNKNOWN = "unknown"
CSV_FIELDS = ["image", "face", "status", "person", "similarity", "x1", "y1", "x2", "y2", "det_score",
              "landmarks", "top_k", "truth", "error"]
CHUNK = 256  # faces searched per faiss call


def _rows(result: facelib.ImageResult, people: np.ndarray, sims: np.ndarray, names: list[str],
          threshold: float, truth: str | None) -> list[dict[str, Any]]:
    """Report rows for one image; ``people``/``sims`` are its faces' top-k search results."""
    base = {"image": result.item.name, "truth": truth}
    if result.error:
        return [{**base, "face": None, "status": "error", "error": result.error}]
    if not result.faces:
        return [{**base, "face": None, "status": "no_face"}]
    rows = []
    for i, face in enumerate(result.faces):
        top = [{"person": names[p], "similarity": round(float(s), 4)} for p, s in zip(people[i], sims[i]) if p >= 0]
        best = top[0]["similarity"] if top else float("-inf")
        rows.append({**base, "face": i, "status": "ok",
                     "person": top[0]["person"] if top and best >= threshold else UNKNOWN,
                     "similarity": best if top else None,
                     "box": [round(float(v), 1) for v in face.box], "det_score": round(face.score, 4),
                     "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in face.landmarks],
                     "top_k": top})
    return rows


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    flat = {k: v for k, v in row.items() if k in CSV_FIELDS and k not in ("landmarks", "top_k")}
    if "box" in row:
        flat.update(zip(("x1", "y1", "x2", "y2"), row["box"]))
        flat["landmarks"] = json.dumps(row["landmarks"])
        flat["top_k"] = ";".join(f"{t['person']}:{t['similarity']}" for t in row["top_k"])
    return flat


def _search_chunks(gallery: gallery_store.Gallery, results: Iterator[facelib.ImageResult],
                   top_k: int) -> Iterator[tuple[facelib.ImageResult, np.ndarray, np.ndarray]]:
    """Search the faces of many images per faiss call (batched search is far cheaper per query)."""
    batch: list[facelib.ImageResult] = []

    def flush() -> Iterator[tuple[facelib.ImageResult, np.ndarray, np.ndarray]]:
        embeddings = [f.embedding for r in batch for f in r.faces]
        if embeddings and gallery.entries:
            people, sims = gallery.search(np.stack(embeddings), top_k)
        else:  # no faces, or nobody to match them with (a served gallery whose last person was removed)
            people, sims = np.zeros((len(embeddings), 0), np.int64), np.zeros((len(embeddings), 0), np.float32)
        start = 0
        for result in batch:
            n = len(result.faces)
            yield result, people[start:start + n], sims[start:start + n]
            start += n
        batch.clear()

    count = 0
    for result in results:
        batch.append(result)
        count += len(result.faces)
        if count >= CHUNK:
            yield from flush()
            count = 0
    yield from flush()


def answers(gallery: gallery_store.Gallery, results: Iterator[facelib.ImageResult], threshold: float, top_k: int = 5,
            labels: dict[str, str] | None = None,
            truth_from_folders: bool = False) -> Iterator[tuple[facelib.ImageResult, list[dict[str, Any]]]]:
    """Each analysed image with its report rows: its faces searched in ``gallery`` (many images per
    search) and named at ``threshold``. The one matching step of batch identify and ``faceops serve``."""
    for result, people, sims in _search_chunks(gallery, results, top_k):
        yield result, _rows(result, people, sims, gallery.names, threshold, _truth(result.item, labels or {}, truth_from_folders))


def metrics(rows: list[dict[str, Any]], known: set[str], threshold: float) -> dict[str, Any]:
    """Ground-truth metrics over the images that have a truth label, judged on each image's largest
    face (face 0): rank-1 accuracy and TAR at the threshold for people in the gallery, rejection
    rate for people who are not, images where no face was found, and the most common confusions."""
    probes = [r for r in rows if r.get("truth") and r["face"] in (0, None)]
    known_rows = [r for r in probes if r["truth"] in known and r["status"] == "ok"]
    unknown_rows = [r for r in probes if r["truth"] not in known and r["status"] == "ok"]
    top1 = [r["top_k"][0]["person"] if r["top_k"] else None for r in known_rows]
    correct = [t == r["truth"] for t, r in zip(top1, known_rows)]
    accepted = [c and r["similarity"] >= threshold for c, r in zip(correct, known_rows)]
    confusions = Counter(f"{r['truth']} -> {r['person']}" for r in probes
                         if r["status"] == "ok" and r["person"] != (r["truth"] if r["truth"] in known else UNKNOWN))
    return {
        "probes": len(probes), "known_probes": len(known_rows), "unknown_probes": len(unknown_rows),
        "missed_probes": sum(r["status"] != "ok" for r in probes),
        "rank1": float(np.mean(correct)) if known_rows else None,
        "tar_at_far": float(np.mean(accepted)) if known_rows else None,
        "unknown_rejection": float(np.mean([r["person"] == UNKNOWN for r in unknown_rows])) if unknown_rows else None,
        "threshold": threshold,
        "confusions": dict(confusions.most_common(10)),
    }


def _truth(item: ImageItem, labels: dict[str, str], from_folders: bool) -> str | None:
    """The ground-truth person of an image: from the truth CSV (by report name or file name), or
    its first folder."""
    folder = item.name.split("/")[0] if from_folders and "/" in item.name else None
    return labels.get(item.name) or labels.get(item.path.name) or folder


def _inside(name: str) -> Path:
    """``name`` as a path that stays inside the folder it is joined to: list files may name
    absolute paths, and an annotated copy must never land on (or overwrite) the original."""
    path = Path(name)
    return Path(*[part for part in path.parts if part not in (path.anchor, "..")])


def label_origin(box: tuple[int, int, int, int], text: tuple[int, int], image: tuple[int, int]) -> tuple[int, int]:
    """Bottom-left corner for a label of ``text`` (width, height) over a face ``box`` in an image of
    ``image`` (width, height): above the box, shifted left to end inside the image and moved under
    the box's top edge when there is no room above, so no label is cut at an edge."""
    (x1, y1, _, _), (text_w, text_h), (width, height) = box, text, image
    x = max(0, min(x1, width - text_w - 1))
    y = y1 - 4 if y1 - 4 - text_h >= 0 else min(height - 2, y1 + text_h + 4)
    return x, y


DRAWING_SIDE = 800  # pixels of the longer side up to which labels and boxes keep their base size


def drawing_size(width: int, height: int) -> float:
    """How much larger than on an 800 px photo labels and boxes are drawn, so they read the same
    share of a large photo viewed whole (a 4352 px photo: 5.4 times)."""
    return max(1.0, max(width, height) / DRAWING_SIDE)


def annotate(image_path: Path, rows: list[dict[str, Any]], out: Path) -> None:
    """Write a copy of the image with each face's box and name (green known, red unknown), each
    label on a filled band kept inside the image, both sized with the image (:func:`drawing_size`)."""
    image = facelib.read_image(image_path)
    size = drawing_size(image.shape[1], image.shape[0])
    font, scale, line = cv2.FONT_HERSHEY_SIMPLEX, 0.45 * size, max(1, round(size))
    for row in rows:
        if row["status"] != "ok":
            continue
        x1, y1, x2, y2 = (int(v) for v in row["box"])
        color = (0, 0, 255) if row["person"] == UNKNOWN else (0, 200, 0)
        cv2.rectangle(image, (x1, y1), (x2, y2), color, 2 * line)
        label = f"{row['person']} {row['similarity']:.2f}"
        (text_w, text_h), base = cv2.getTextSize(label, font, scale, line)
        x, y = label_origin((x1, y1, x2, y2), (text_w, text_h), (image.shape[1], image.shape[0]))
        cv2.rectangle(image, (x, y - text_h - 2 * line), (x + text_w, y + base), color, cv2.FILLED)
        cv2.putText(image, label, (x, y), font, scale, (255, 255, 255), line, cv2.LINE_AA)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out.with_suffix(".jpg")), image):
        raise DataError(f"cannot write annotated image {out}")


def identify(images: str | Path, gallery: str | Path | gallery_store.Gallery, out: str | Path,
             models: Models | str | Path | None = None, *, det: str | Path | None = None,
             rec: str | Path | None = None, threshold: float | None = None, top_k: int = 5,
             det_size: int = 640, det_thresh: float = 0.5, batch_size: int = 16, workers: int | None = None,
             truth: str | Path | None = None, truth_from_folders: bool = False,
             annotate_dir: str | Path | None = None, progress: bool = False,
             sheet: str | Path | None = None, shard: Shard | None = None) -> dict[str, Any]:
    """Identify every face in ``images`` (folder, list, CSV or object-storage prefix) against
    ``gallery`` and write the report to the folder ``out``.

    Ground truth comes from a ``path,person`` CSV (``truth``) or from each image's first folder
    (``truth_from_folders``); with it the summary carries rank-1, TAR@FAR and unknown rejection.
    ``sheet`` names a contact sheet image of the doubtful faces (see inference.sheet). With
    ``shard`` this instance identifies its share of the images and ``out`` is its part folder
    (:func:`merge_reports` makes the parts one report)."""
    db = gallery if isinstance(gallery, gallery_store.Gallery) else gallery_store.load(gallery)
    if not db.entries:
        raise DataError(f"{gallery}: the gallery is empty; add people with `faceops gallery add`")
    models = load_models(models, det, rec)
    db.check_models(models, gallery if not isinstance(gallery, gallery_store.Gallery) else "gallery")
    threshold = db.threshold if threshold is None else float(threshold)
    labels = read_truth(Path(truth)) if truth else {}
    out = Path(out)
    storage.check_target(out, into_existing=(out / "report.csv").is_file())  # a report folder of ours, or a new one
    probes: list[dict[str, Any]] = []
    counts: Counter[str] = Counter()
    start = time.perf_counter()
    doubtful = DoubtfulFaces(threshold) if sheet else None
    with local(images) as folder:
        listing = list_images(folder)
        if not listing.items and shard is None:  # a sharded instance may get none of the objects
            raise DataError(f"{images}: no images found")
        if truth_from_folders and listing.items and not any("/" in item.name for item in listing.items):
            raise DataError(f"{images}: --truth-from-folders takes each image's first folder as its person, but "
                            "every image sits directly in it (expected IMAGES/<person>/photo.jpg); use --truth CSV")
        items, skipped = shards.share(listing.items, shard), shards.share(listing.skipped, shard, str)
        results = facelib.analyse(models, items, det_size=det_size, det_thresh=det_thresh,
                                  batch_size=batch_size, workers=workers)
        if progress:  # tqdm costs ~0.1 s to import: only when a bar is shown
            from tqdm import tqdm

            results = tqdm(results, total=len(items), unit="img", desc="identify")
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "report.csv", "w", newline="") as csv_fh, open(out / "report.jsonl", "w") as jsonl_fh:
            writer = csv.DictWriter(csv_fh, fieldnames=CSV_FIELDS)
            writer.writeheader()
            for result, image_rows in answers(db, results, threshold, top_k, labels, truth_from_folders):
                for row in image_rows:
                    writer.writerow(_csv_row(row))
                    jsonl_fh.write(json.dumps(row) + "\n")
                if annotate_dir and result.faces:
                    annotate(result.item.path, image_rows, Path(annotate_dir) / _inside(result.item.name))
                if doubtful:
                    doubtful.add(result.item.path, image_rows)
                counts.update(r["status"] for r in image_rows)
                counts["unknown"] += sum(r.get("person") == UNKNOWN for r in image_rows)
                probes.extend(r for r in image_rows if r["truth"])
    seconds = time.perf_counter() - start
    faces = counts["ok"]
    summary = {
        "images": len(items), "faces": faces, "no_face": counts["no_face"], "errors": counts["error"],
        "skipped_files": len(skipped), "unknown": counts["unknown"], "threshold": threshold,
        "seconds": round(seconds, 3), "faces_per_s": round(faces / seconds, 2) if seconds else None,
        "report": str(out / "report.csv"),
    }
    if doubtful:
        summary["sheet"] = str(doubtful.write(sheet))
    if shard:
        shards.write_part(out, summary=summary, known=db.names, truth=bool(labels or truth_from_folders))
        return summary
    if labels or truth_from_folders:
        summary["metrics"] = metrics(probes, set(db.names), threshold)
        (out / "metrics.json").write_text(json.dumps(summary["metrics"], indent=2) + "\n")
    return summary


COUNTS = ("images", "faces", "no_face", "errors", "skipped_files", "unknown")


def merge_reports(parts: list[tuple[Path, dict[str, Any]]], out: Path) -> dict[str, Any]:
    """One report in ``out`` from the parts sharded instances wrote (:func:`identify` with
    ``shard``): report.csv and report.jsonl in image order, annotated/ joined, metrics.json over
    all the rows; the summary :func:`identify` returns, its speed the faces of all parts over the
    slowest part's time (the instances run side by side)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for folder, _ in parts
            for line in (folder / "report.jsonl").read_text().splitlines() if line.strip()]
    rows.sort(key=lambda row: (row["image"], -1 if row["face"] is None else row["face"]))
    with open(out / "report.csv", "w", newline="") as csv_fh, open(out / "report.jsonl", "w") as jsonl_fh:
        writer = csv.DictWriter(csv_fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow(_csv_row(row))
            jsonl_fh.write(json.dumps(row) + "\n")
    for folder, _ in parts:
        if (folder / "annotated").is_dir():
            shutil.copytree(folder / "annotated", out / "annotated", dirs_exist_ok=True)
    infos = [info for _, info in parts]
    summaries = [info["summary"] for info in infos]
    seconds = max(s["seconds"] for s in summaries)
    summary: dict[str, Any] = {key: sum(s[key] for s in summaries) for key in COUNTS}
    summary.update(threshold=summaries[0]["threshold"], seconds=seconds,
                   faces_per_s=round(summary["faces"] / seconds, 2) if seconds else None, report=str(out / "report.csv"))
    if infos[0]["truth"]:
        summary["metrics"] = metrics([r for r in rows if r["truth"]], set(infos[0]["known"]), summary["threshold"])
        (out / "metrics.json").write_text(json.dumps(summary["metrics"], indent=2) + "\n")
    return summary
