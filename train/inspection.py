"""Describing a RecordIO dataset for ``faceops data inspect``: kind, counts, image size, whether
``property`` agrees, and the first corrupt record (:func:`inspect`, :func:`format_report`).
"""
from __future__ import annotations

from pathlib import Path
from statistics import median
from typing import Any

from inference.faces import decode_image
from jobs.core.errors import DataError
from jobs.core.lazy import numpy as np
from train.recordio import RecordFile, faces_of, locate, property_problems, read_layout, read_property, unpack


def image_size(image: bytes, key: int) -> list[int]:
    """``[H, W]`` of the image of record ``key``, decoded by the face toolkit's one decoder
    (:class:`DataError` naming the record when it does not decode)."""
    return list(decode_image(image, f"record {key}").shape[:2])


def _spread(counts: list[int]) -> dict[str, float]:
    return {"min": min(counts), "median": median(counts), "max": max(counts)} if counts else {}


def _first_bad_span(file: RecordFile) -> dict[str, Any] | None:
    """Cheap structural check: the first and last records in file order must frame correctly and
    no key may point past the end (what a truncated upload or a foreign .idx looks like)."""
    by_offset = sorted(file.keys, key=file.offsets.__getitem__)
    inside = [k for k in by_offset if file.offsets[k] < file.size]
    for key in dict.fromkeys([*inside[:1], *inside[-1:]]):
        try:
            file.read_idx(key)
        except DataError as exc:
            return {"key": key, "error": str(exc)}
    beyond = [k for k in by_offset if file.offsets[k] >= file.size]
    if beyond:
        key = beyond[0]
        return {"key": key, "error": f"{file.uri}: record {key} starts at byte {file.offsets[key]} but the file "
                                     f"ends at byte {file.size} (truncated .rec, or an .idx of another file)"}
    return None


def _scan(file: RecordFile, keys: list[int], progress: bool) -> tuple[dict[str, Any] | None, list[Any]]:
    """Read every record in file order, decoding each image; stop at the first bad one."""
    from tqdm import tqdm

    labels = []
    order = sorted(keys, key=file.offsets.__getitem__)
    stream = file.read_many(order)
    with tqdm(total=len(order), desc="scan", unit="rec", disable=not progress, leave=False) as bar:
        for key in order:
            try:
                _, payload = next(stream)
            except DataError as exc:
                return {"key": key, "error": str(exc)}, labels
            header, image = unpack(payload)
            try:
                image_size(image, key)
            except DataError as exc:
                return {"key": key, "error": str(exc)}, labels
            labels.append(header.label)
            bar.update()
    return None, labels


def inspect(uri: str | Path, scan: bool = False, progress: bool = True) -> dict[str, Any]:
    """Describe a RecordIO dataset: kind, records, images, identities and images per identity,
    faces, image size, bytes, ``property`` and whether it agrees, and the first corrupt record.

    Without ``scan`` only the index, the header/identity records and the first and last records are
    read (a few ranged reads on S3); ``scan`` reads and decodes every record (streamed, not saved)."""
    files = locate(uri)
    file = RecordFile(files.rec, files.idx)
    report: dict[str, Any] = {"uri": str(uri), "rec": files.rec, "kind": None, "bytes": file.size,
                              "records": len(file), "first_corrupt": _first_bad_span(file), "problems": []}
    if report["first_corrupt"] is not None:
        return report
    layout = read_layout(file)
    report.update(kind=layout.kind, images=len(layout.image_keys))
    _, image = unpack(file.read_idx(layout.image_keys[0]))
    try:
        report["image_size"] = image_size(image, layout.image_keys[0])
    except DataError as exc:
        report["image_size"] = None
        report["first_corrupt"] = {"key": layout.image_keys[0], "error": str(exc)}
    labels: list[Any] = []
    if scan and report["first_corrupt"] is None:
        report["first_corrupt"], labels = _scan(file, layout.image_keys, progress)
    if layout.kind == "detection":
        report["faces"] = int(sum(faces_of(label).shape[0] for label in labels)) if labels else None
        return report
    counts = [b - a for a, b in layout.id_ranges] if layout.id_ranges is not None else _label_counts(labels)
    report["identities"] = len(counts) or None
    report["images_per_identity"] = _spread(counts) or None
    prop = read_property(files.property)
    report["property"] = list(prop) if prop else None
    report["problems"] = property_problems(prop, report["identities"], report["image_size"], files.property)
    return report


def _label_counts(labels: list[Any]) -> list[int]:
    ids = [int(np.asarray(label).reshape(-1)[0]) for label in labels]
    return list(np.bincount(ids)[np.unique(ids)]) if ids else []



def format_report(report: dict[str, Any]) -> str:
    """``faceops data inspect`` as aligned text lines."""
    rows = [("uri", report["uri"]), ("kind", report.get("kind")), ("records", report["records"]),
            ("bytes", report["bytes"]), ("images", report.get("images")),
            ("image size", "x".join(map(str, report["image_size"])) if report.get("image_size") else None)]
    if report.get("kind") == "recognition":
        spread = report.get("images_per_identity") or {}
        rows += [("identities", report.get("identities")),
                 ("images/identity", f"min {spread['min']}  median {spread['median']}  max {spread['max']}" if spread else None),
                 ("property", ",".join(map(str, report["property"])) if report.get("property") else None)]
    if report.get("kind") == "detection":
        rows.append(("faces", report.get("faces")))
    bad = report.get("first_corrupt")
    rows.append(("first corrupt", f"record {bad['key']}: {bad['error']}" if bad else "none found"))
    lines = [f"{name:<16} {'-' if value is None else value}" for name, value in rows]
    lines += [f"problem          {p}" for p in report.get("problems", [])]
    return "\n".join(lines)
