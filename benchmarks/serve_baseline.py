"""The serve benchmark's baseline server: a Starlette app that calls ``FaceAnalysis.get`` per
request with the same models, then matches the faces against the same gallery with numpy (each
person's best embedding, the gallery's calibrated threshold). Competent: run under uvicorn with one
worker process per core, each with one-thread onnxruntime sessions (no core oversubscribed), the
work off the event loop. Started by benchmarks/serve.py as
``uvicorn serve_baseline:app --workers N`` with BASELINE_MODELS (a folder holding only the two
models) and BASELINE_GALLERY (a gallery folder) in the environment."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import cv2
import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from identify import face_analysis

FACES = face_analysis(Path(os.environ["BASELINE_MODELS"]), threads=1)
GALLERY = Path(os.environ["BASELINE_GALLERY"])
EMBEDDINGS = np.load(GALLERY / "embeddings.npy")
with open(GALLERY / "entries.csv", newline="") as fh:
    PERSONS = [row["person"] for row in csv.DictReader(fh)]
NAMES = sorted(set(PERSONS))
COLUMNS = [np.array([i for i, p in enumerate(PERSONS) if p == name]) for name in NAMES]
THRESHOLD = json.loads((GALLERY / "gallery.json").read_text())["calibration"]["threshold"]


def answer(data: bytes) -> list[dict]:
    """The faces of one photo, each with its best person (or None below the threshold)."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    faces = FACES.get(image)
    if not faces:
        return []
    embeddings = np.array([f.embedding for f in faces], np.float32)
    sims = (embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)) @ EMBEDDINGS.T
    best = np.stack([sims[:, cols].max(axis=1) for cols in COLUMNS], axis=1)
    top = best.argmax(axis=1)
    return [{"box": [round(float(v), 1) for v in f.bbox], "person": NAMES[t] if best[i, t] >= THRESHOLD else None,
             "score": round(float(best[i, t]), 4)} for i, (f, t) in enumerate(zip(faces, top))]


async def identify(request: Request) -> JSONResponse:
    data = await request.body()
    return JSONResponse({"faces": await run_in_threadpool(answer, data)})


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


app = Starlette(routes=[Route("/identify", identify, methods=["POST"]), Route("/healthz", healthz)])
