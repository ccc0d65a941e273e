"""Online identify: ``faceops serve``, an ASGI app (Starlette on uvicorn) that answers one photo
at a time with the same face toolkit, models, threshold and matching as batch ``faceops identify``.

Why it is faster than calling ``FaceAnalysis.get`` per request: requests that wait together are
micro-batched (:class:`Batcher`): one loop thread per core takes its share of the waiting photos
through :func:`inference.faces.analyse` (detector at each photo's own size, each photo decoded
once and halved down for it, the batch's faces embedded in shared recognizer calls) and searches them in the gallery
at once (:func:`inference.identify.answers`), the steps batch identify takes. The event loop
only parses requests and waits.

The gallery is a folder or an object-storage prefix. ``POST``/``DELETE /people/NAME`` change it
through :mod:`inference.gallery` (a new revision, published atomically); every few seconds the
server reads the gallery's manifest and loads a revision published by anyone else (a batch job,
``faceops gallery add``) before the next request.
"""
from __future__ import annotations

import hmac
import json
import math
import os
import queue
import re
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from inference import faces as facelib
from inference import gallery_store
from inference.gallery import add_to_gallery, remove_from_gallery
from inference.identify import UNKNOWN, answers
from inference.models import Models
from inference.page import PAGE
from inference.sheet import margin
from inference.sources import ImageItem
from jobs.core import storage
from jobs.core.errors import DataError, FaceopsError, NotFoundError

DEFAULT_MAX_BYTES = 20 << 20  # a 48-megapixel phone JPEG is ~15 MB
DEFAULT_MAX_PIXELS = 60_000_000  # decoded, that is 180 MB of BGR: refused before decoding
DEFAULT_MAX_BATCH = 32
DEFAULT_RELOAD_EVERY = 5.0  # seconds between reads of the gallery's manifest
IMAGE_TYPES = ("image/jpeg", "image/png")
PERSON_NAME = re.compile(r"^[^/\\\x00-\x1f]{1,200}$")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UPLOAD_NAME = "upload"  # the name an uploaded photo has in error messages (never a path)


class RequestError(Exception):
    """A request the server refuses: an HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Limits:
    """What one request may carry."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS


def check_photo(data: bytes, limits: Limits) -> None:
    """Refuse what is not a JPEG or PNG (400) or holds more pixels than allowed (413), from the
    header alone: a small file can declare a huge image that would exhaust memory when decoded."""
    size = facelib.image_size(data)
    if size is None:
        raise RequestError(400, "not a JPEG or PNG image (no readable image header)")
    width, height = size
    if width * height > limits.max_pixels:
        raise RequestError(413, f"image of {width}x{height} pixels is over the limit of {limits.max_pixels} pixels")
    if width == 0 or height == 0:
        raise RequestError(400, f"image header declares {width}x{height} pixels")


class Metrics:
    """Counters and a latency histogram, written in Prometheus' text format for ``GET /metrics``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[str, list[float]] = {}  # path -> bucket counts, then sum and count
        self.faces = 0
        self.photos = 0
        self.batches = 0
        self.largest_batch = 0
        self.errors: dict[tuple[str, int], int] = {}

    def observe(self, method: str, path: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (method, path, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            row = self.latency.setdefault(path, [0.0] * (len(LATENCY_BUCKETS) + 2))
            for i, bound in enumerate(LATENCY_BUCKETS):
                row[i] += seconds <= bound
            row[-2] += seconds
            row[-1] += 1
            if status >= 400:
                self.errors[(path, status)] = self.errors.get((path, status), 0) + 1

    def batch(self, photos: int, faces: int) -> None:
        with self._lock:
            self.batches += 1
            self.photos += photos
            self.faces += faces
            self.largest_batch = max(self.largest_batch, photos)

    def text(self, revision: int) -> str:
        """The metrics in Prometheus' text exposition format (version 0.0.4)."""
        with self._lock:
            lines = ["# HELP faceops_serve_requests_total Requests answered, by method, route and status.",
                     "# TYPE faceops_serve_requests_total counter"]
            lines += [f'faceops_serve_requests_total{{method="{m}",path="{p}",status="{s}"}} {n}'
                      for (m, p, s), n in sorted(self.requests.items())]
            lines += ["# HELP faceops_serve_request_seconds Time to answer a request.",
                      "# TYPE faceops_serve_request_seconds histogram"]
            for path, row in sorted(self.latency.items()):
                for bound, count in zip(LATENCY_BUCKETS, row):
                    lines.append(f'faceops_serve_request_seconds_bucket{{path="{path}",le="{bound}"}} {int(count)}')
                lines.append(f'faceops_serve_request_seconds_bucket{{path="{path}",le="+Inf"}} {int(row[-1])}')
                lines.append(f'faceops_serve_request_seconds_sum{{path="{path}"}} {row[-2]:.6f}')
                lines.append(f'faceops_serve_request_seconds_count{{path="{path}"}} {int(row[-1])}')
            lines += ["# HELP faceops_serve_errors_total Requests answered with an error status.",
                      "# TYPE faceops_serve_errors_total counter"]
            lines += [f'faceops_serve_errors_total{{path="{p}",status="{s}"}} {n}' for (p, s), n in sorted(self.errors.items())]
            for name, kind, value, text in (
                    ("faces_total", "counter", self.faces, "Faces found in identified photos."),
                    ("photos_total", "counter", self.photos, "Photos identified."),
                    ("batches_total", "counter", self.batches, "Micro-batches run through the models."),
                    ("largest_batch", "gauge", self.largest_batch, "Most photos in one micro-batch so far."),
                    ("gallery_revision", "gauge", revision, "Revision of the gallery in use.")):
                lines += [f"# HELP faceops_serve_{name} {text}", f"# TYPE faceops_serve_{name} {kind}",
                          f"faceops_serve_{name} {value}"]
        return "\n".join(lines) + "\n"


class GalleryHolder:
    """The gallery in use: loaded at start, replaced when a newer revision is published (read from
    its manifest every ``reload_every`` seconds) or after this server changed it."""

    def __init__(self, uri: str, models: Models, reload_every: float = DEFAULT_RELOAD_EVERY) -> None:
        self.uri = uri
        self.models = models
        self.reload_every = reload_every
        self.write_lock = threading.Lock()  # one change of the gallery at a time
        self.gallery = self._load()
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="gallery-watch", daemon=True)

    def _load(self) -> gallery_store.Gallery:
        gallery = gallery_store.load(self.uri)
        gallery.check_models(self.models, self.uri)
        return gallery

    @property
    def revision(self) -> int:
        return int(self.gallery.manifest["revision"])

    def published_revision(self) -> int:
        """The revision in the gallery's manifest now (one small read)."""
        return int(json.loads(storage.read_bytes(storage.join(self.uri, gallery_store.MANIFEST)))["revision"])

    def refresh(self) -> bool:
        """Load the published gallery when its revision differs from the one in use; whether it did."""
        if self.published_revision() == self.revision:
            return False
        self.gallery = self._load()
        return True

    def start(self) -> None:
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(self.reload_every):
            try:
                if self.refresh():
                    print(f"gallery revision {self.revision} loaded ({len(self.gallery.people)} people)", file=sys.stderr)
            except FaceopsError as exc:  # storage down or a revision half-published: keep serving the last one
                print(f"gallery not reloaded: {exc}", file=sys.stderr)

    def add_photos(self, person: str, photos: list[tuple[str, bytes]]) -> dict[str, Any]:
        """Add ``photos`` (name, bytes) of ``person`` as a new revision, then use it."""
        with self.write_lock, tempfile.TemporaryDirectory(prefix="faceops-serve-") as tmp:
            folder = Path(tmp) / person
            folder.mkdir()
            for i, (name, data) in enumerate(photos):
                (folder / f"{i:03d}-{safe_name(name)}").write_bytes(data)
            summary = add_to_gallery(self.uri, tmp, self.models)
            self.gallery = self._load()
        return summary

    def remove(self, person: str) -> dict[str, Any]:
        """Remove ``person`` as a new revision, then use it."""
        with self.write_lock:
            summary = remove_from_gallery(self.uri, [person])
            self.gallery = self._load()
        return summary


def safe_name(name: str) -> str:
    """An uploaded file's name reduced to a plain file name (what the gallery's entries record)."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name or "").name)[-80:].lstrip(".")
    return stem if Path(stem).suffix.lower() in (".jpg", ".jpeg", ".png") else f"{stem or 'photo'}.jpg"


@dataclass
class Job:
    """One photo waiting in the batcher and the future its request awaits."""

    item: ImageItem
    future: Future = field(default_factory=Future)


class Batcher:
    """Micro-batching: requests put photos on a queue; one loop thread per core takes its share of
    the photos waiting (up to ``max_batch``) through the models and the gallery together. A lone
    request is taken at once (no added latency when idle); under load each loop's photos share one
    gallery search (on one-thread sessions a recognizer call costs the same per face whatever its
    batch), and no core waits for another's batch to finish."""

    def __init__(self, holder: GalleryHolder, metrics: Metrics, *, det_size: int, det_thresh: float,
                 batch_size: int, workers: int | None, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        self.holder = holder
        self.metrics = metrics
        self.settings = {"det_size": det_size, "det_thresh": det_thresh, "batch_size": batch_size}
        self.loops = workers or os.cpu_count() or 1
        self.max_batch = max_batch
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.threads = [threading.Thread(target=self._loop, name=f"batcher-{i}", daemon=True) for i in range(self.loops)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        for _ in self.threads:
            self.queue.put(None)
        for thread in self.threads:
            thread.join(timeout=30)  # bounded: a batch in flight finishes within seconds

    def submit(self, data: bytes) -> Future:
        job = Job(ImageItem(Path(UPLOAD_NAME), UPLOAD_NAME, data=data))
        self.queue.put(job)
        return job.future

    def _take(self) -> list[Job] | None:
        """The first photo waiting (blocking) plus this loop's share of the others."""
        first = self.queue.get()
        if first is None:
            return None
        share = min(self.max_batch, math.ceil((1 + self.queue.qsize()) / self.loops))
        jobs = [first]
        while len(jobs) < share:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                break
            if job is None:  # stopping: leave it for this loop's next take
                self.queue.put(None)
                break
            jobs.append(job)
        return jobs

    def _loop(self) -> None:
        while (jobs := self._take()) is not None:
            try:
                answered = self.run([job.item for job in jobs])
            except Exception as exc:  # the requests answer 500; the server keeps serving
                for job in jobs:
                    job.future.set_exception(exc)
                continue
            for job, answer in zip(jobs, answered):
                job.future.set_result(answer)

    def run(self, items: list[ImageItem]) -> list[dict[str, Any]]:
        """Each photo's answer (faces, or the reason it has none), all through one gallery
        revision, on one worker of this loop's own (the other loops take the other cores)."""
        gallery = self.holder.gallery
        threshold = gallery.threshold
        results = facelib.analyse(self.holder.models, items, workers=1, **self.settings)
        answered = []
        for result, rows in answers(gallery, results, threshold):
            faces = [face_answer(row, threshold) for row in rows if row["status"] == "ok"]
            answered.append({"faces": faces, "error": result.error, "gallery_revision": int(gallery.manifest["revision"])})
        self.metrics.batch(len(items), sum(len(a["faces"]) for a in answered))
        return answered


def face_answer(row: dict[str, Any], threshold: float) -> dict[str, Any]:
    """The API's view of one report row of :func:`inference.identify.answers`."""
    known = row["person"] != UNKNOWN
    return {"box": row["box"], "person": row["person"] if known else None, "known": known,
            "score": row["similarity"], "det_score": row["det_score"],
            "margin": round(margin(row, threshold), 4) if row["top_k"] else None}


def create_app(holder: GalleryHolder, batcher: Batcher, metrics: Metrics, limits: Limits,
               token: str | None = None) -> Any:
    """The Starlette application; ``token`` (when given) must come as ``Authorization: Bearer``
    on every route but ``/healthz`` and the page. Starlette is imported here, with the app: the
    serve extra is optional."""
    import asyncio  # with the web framework: only a running server needs an event loop

    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse
    from starlette.routing import Route

    def refuse(status: int, reason: str) -> JSONResponse:
        return JSONResponse({"error": reason}, status_code=status)

    def guarded(handler: Callable) -> Callable:
        async def endpoint(request: Request) -> Any:
            if token is not None:
                given = request.headers.get("authorization", "")
                scheme, _, value = given.partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
                    return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401,
                                        headers={"WWW-Authenticate": "Bearer"})
            try:
                return await handler(request)
            except RequestError as exc:
                return refuse(exc.status, exc.reason)
            except NotFoundError as exc:
                return refuse(404, one_line(exc))
            except DataError as exc:
                return refuse(400, one_line(exc))
        return endpoint

    async def body(request: Request) -> bytes:
        """The request body, refused (413) as soon as it is over the limit."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_bytes:
            raise RequestError(413, f"body of {declared} bytes is over the limit of {limits.max_bytes} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_bytes:
                raise RequestError(413, f"body is over the limit of {limits.max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def photos(request: Request, field_name: str, many: bool) -> list[tuple[str, bytes]]:
        """The photos of a request: its body (image/jpeg or image/png) or the ``field_name`` fields
        of a multipart form."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        data = await body(request)
        if kind in IMAGE_TYPES:
            found = [("photo", data)]
        elif kind == "multipart/form-data":
            request._body = data  # the form is parsed from the body read (and size-checked) above
            try:
                form = await request.form(max_files=64 if many else 1, max_fields=64)
            except Exception as exc:  # starlette raises several types for a malformed form
                raise RequestError(400, f"malformed multipart form ({type(exc).__name__})") from None
            found = [(upload.filename or "photo", await upload.read()) for upload in form.getlist(field_name)
                     if hasattr(upload, "read")]
            if not found:
                raise RequestError(400, f"the multipart form has no file field '{field_name}'")
        else:
            raise RequestError(400, f"send the photo as image/jpeg, image/png or a multipart '{field_name}' field, "
                                    f"not {kind or 'no content type'}")
        if not many and len(found) > 1:
            raise RequestError(400, f"one photo per request, got {len(found)}")
        for _, photo in found:
            check_photo(photo, limits)
        return found

    async def identify(request: Request) -> JSONResponse:
        start = time.perf_counter()
        [(_, data)] = await photos(request, "image", many=False)
        answer = await asyncio.wrap_future(batcher.submit(data))
        if answer["error"]:
            raise RequestError(400, answer["error"])
        return JSONResponse({"faces": answer["faces"], "gallery_revision": answer["gallery_revision"],
                             "seconds": round(time.perf_counter() - start, 4)})

    async def people(request: Request) -> JSONResponse:
        gallery = holder.gallery
        counts: dict[str, int] = {}
        for entry in gallery.entries:
            counts[entry["person"]] = counts.get(entry["person"], 0) + 1
        return JSONResponse({"people": [{"name": name, "photos": counts.get(name, 0)} for name in gallery.names],
                             "gallery_revision": holder.revision, "threshold": gallery.threshold})

    def person(request: Request) -> str:
        name = request.path_params["name"]
        if not PERSON_NAME.match(name) or name in (".", ".."):
            raise RequestError(400, "a person's name is 1 to 200 characters without '/', '\\' or control characters")
        return name

    async def add_person(request: Request) -> JSONResponse:
        name = person(request)
        found = await photos(request, "image", many=True)
        summary = await run_in_threadpool(holder.add_photos, name, found)
        return JSONResponse({"person": name, "added": summary["added"], "duplicates": summary["duplicates"],
                             "issues": summary["issues"], "gallery_revision": summary["revision"],
                             "threshold": summary["threshold"]})

    async def remove_person(request: Request) -> JSONResponse:
        name = person(request)
        summary = await run_in_threadpool(holder.remove, name)
        return JSONResponse({"person": name, "removed": summary["removed"], "gallery_revision": summary["revision"],
                             "threshold": summary["threshold"]})

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "gallery_revision": holder.revision, "people": len(holder.gallery.people)})

    async def prometheus(request: Request) -> PlainTextResponse:
        return PlainTextResponse(metrics.text(holder.revision), media_type="text/plain; version=0.0.4")

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE)

    async def failed(request: Request, exc: Exception) -> JSONResponse:
        print(f"error answering {request.method} {request.url.path}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return refuse(500, "internal error; the server log has the details")

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/identify", guarded(identify), methods=["POST"]),
        Route("/people", guarded(people), methods=["GET"]),
        Route("/people/{name:path}", guarded(add_person), methods=["POST"]),
        Route("/people/{name:path}", guarded(remove_person), methods=["DELETE"]),
        Route("/metrics", guarded(prometheus), methods=["GET"]),
        # SageMaker's hosting contract (faceops deploy): the same answers under its names.
        Route("/ping", healthz, methods=["GET"]),
        Route("/invocations", guarded(identify), methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={Exception: failed})
    return Measured(app, metrics, {route.path for route in routes})


def one_line(exc: Exception) -> str:
    """An error's message as one line, for a response."""
    return " ".join(str(exc).split())


class Measured:
    """ASGI middleware: every HTTP request counted in :class:`Metrics` under its route (never the
    raw path, so a scan of random URLs cannot grow the metrics)."""

    def __init__(self, app: Any, metrics: Metrics, paths: set[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.paths = paths

    def route(self, path: str) -> str:
        if path.startswith("/people/"):
            return "/people/{name}"
        return path if path in self.paths else "other"

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.observe(scope["method"], self.route(scope["path"]), status[0], time.perf_counter() - start)


def serve(gallery: str, models: Models, *, host: str = "127.0.0.1", port: int = 8080, token: str | None = None,
          limits: Limits | None = None, det_size: int = 640, det_thresh: float = 0.5, batch_size: int = 16,
          workers: int | None = None, max_batch: int = DEFAULT_MAX_BATCH, reload_every: float = DEFAULT_RELOAD_EVERY, say: Callable[[str], Any] = print) -> None:
    """Load the gallery, then answer on ``host``:``port`` until interrupted (uvicorn, one process:
    the models and the batcher are shared by every request)."""
    import uvicorn  # the server library: loaded when serving starts, not with the package

    holder = GalleryHolder(gallery, models, reload_every)
    metrics = Metrics()
    batcher = Batcher(holder, metrics, det_size=det_size, det_thresh=det_thresh, batch_size=batch_size,
                      workers=workers, max_batch=max_batch)
    app = create_app(holder, batcher, metrics, limits or Limits(), token)
    holder.start()
    batcher.start()
    say(f"serving gallery revision {holder.revision} ({len(holder.gallery.people)} people) on http://{host}:{port}"
        f"{' (bearer token required)' if token else ''}")
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=10)
    finally:
        holder.stop()
        batcher.stop()
