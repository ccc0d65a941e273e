"""Faces/s of `faceops identify` against a plain insightface loop, same photos, same models, one run.

Baseline: ``FaceAnalysis(detection + recognition).get(img)`` per photo at det_size 640 (what the
insightface README does), then numpy cosine matching of each face against the gallery.
Ours: ``inference.identify.identify`` (thread pool decode/detect/align, detector at the photo's own
size, batched recognizer, faiss search), including writing report.csv/report.jsonl.
Both load their models before the clock starts; each side runs ``--rounds`` times, interleaved,
and its best round counts (the machine is shared, so the best round is the least disturbed one).

Ratio = baseline seconds per face / ours (higher is better). Goal: 2x.
Run: .venv/bin/python benchmarks/identify.py [--photos DIR] [--repeat N] [--rounds N]
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from common import parse_args, report
from tests.harness import LFW10


def baseline_app(model_dir: Path, det: Path, rec: Path, workdir: Path):
    """insightface FaceAnalysis over a folder holding only the two models (the package folder has
    other ONNX files FaceAnalysis would try to load). A folder path as name: never downloads."""
    from insightface.app import FaceAnalysis

    folder = workdir / "models"
    folder.mkdir()
    for path in (det, rec):
        (folder / path.name).symlink_to(path)
    app = FaceAnalysis(name=str(folder), root=str(workdir), allowed_modules=["detection", "recognition"],
                       providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(640, 640))
    return app


def run_baseline(app, photos: list[Path], gallery: np.ndarray, top_k: int) -> tuple[float, int]:
    """The plain loop: decode, FaceAnalysis.get, numpy matching per face. Returns (seconds, faces)."""
    import cv2

    start, faces = time.perf_counter(), 0
    for photo in photos:
        img = cv2.imread(str(photo))
        if img is None:
            continue
        for face in app.get(img):
            emb = face.embedding / np.linalg.norm(face.embedding)
            sims = gallery @ emb
            np.argsort(-sims)[:top_k]
            faces += 1
    return time.perf_counter() - start, faces


def run_ours(listing: Path, db: Path, out: Path, models, top_k: int) -> tuple[float, int]:
    from inference.identify import identify

    start = time.perf_counter()
    summary = identify(listing, db, out, models, top_k=top_k)
    return time.perf_counter() - start, summary["faces"]


def main() -> None:
    args = parse_args(__doc__, {
        "--photos": {"type": Path, "default": LFW10, "help": "folder of per-person photo folders"},
        "--repeat": {"type": int, "default": 2, "help": "pass over the photos this many times per round"},
        "--rounds": {"type": int, "default": 2},
        "--top-k": {"type": int, "default": 5},
    })

    from inference.gallery import build_gallery
    from inference.gallery_store import load
    from inference.models import load_models, resolve

    det, rec = resolve()
    models = load_models()
    photos = sorted(args.photos.rglob("*.jpg")) * args.repeat
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        gallery_src = work / "gallery"
        for person in sorted(p for p in args.photos.iterdir() if p.is_dir()):
            (gallery_src / person.name).mkdir(parents=True)
            for photo in sorted(person.glob("*.jpg"))[:5]:
                (gallery_src / person.name / photo.name).symlink_to(photo.resolve())
        build_gallery(gallery_src, work / "db", models)
        embeddings = load(work / "db").embeddings
        listing = work / "photos.txt"
        listing.write_text("\n".join(str(p) for p in photos) + "\n")
        app = baseline_app(det.parent, det, rec, work)
        run_baseline(app, photos[:5], embeddings, args.top_k)  # warm-up
        run_ours(listing, work / "db", work / "warm", models, args.top_k)
        base, ours = [], []
        for r in range(args.rounds):
            base.append(run_baseline(app, photos, embeddings, args.top_k))
            ours.append(run_ours(listing, work / "db", work / f"out{r}", models, args.top_k))
    base_s, base_faces = min(base)
    ours_s, ours_faces = min(ours)
    base_fps, ours_fps = base_faces / base_s, ours_faces / ours_s
    print(f"baseline FaceAnalysis loop: {base_faces} faces in {base_s:.2f} s = {base_fps:.1f} faces/s")
    print(f"faceops identify          : {ours_faces} faces in {ours_s:.2f} s = {ours_fps:.1f} faces/s")
    report("identify", round(ours_fps / base_fps, 3), 2.0, faces_per_s=round(ours_fps, 1),
           baseline_faces_per_s=round(base_fps, 1), faces=ours_faces, baseline_faces=base_faces, photos=len(photos),
           rounds=args.rounds)


if __name__ == "__main__":
    main()
