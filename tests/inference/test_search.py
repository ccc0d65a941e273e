"""Person-level search is exact whatever the photos per person: checked against a brute-force
per-person maximum on a gallery where one person has 300 photos and the rest 1-5."""
from __future__ import annotations

import numpy as np

from inference.gallery import from_embeddings

DIM = 64
IDENTITY = {"detector": {"file": "synthetic", "sha256": ""}, "recognizer": {"file": "synthetic", "sha256": "", "dim": DIM}}


def test_top_people_match_brute_force_with_one_person_of_many_photos():
    rng = np.random.default_rng(1)
    counts = np.concatenate([[300], rng.integers(1, 6, size=400)])
    centres = rng.standard_normal((len(counts), DIM)).astype(np.float32)
    persons = np.repeat(np.arange(len(counts)), counts)
    embeddings = centres[persons] + 0.8 * rng.standard_normal((len(persons), DIM)).astype(np.float32)
    gallery = from_embeddings(embeddings, [f"p{i}" for i in persons], IDENTITY)
    # Half the queries sit near the 300-photo person: their first hits are all that person.
    queries = np.concatenate([centres[:1] + 0.3 * rng.standard_normal((50, DIM)), centres[rng.integers(1, 400, 50)]])
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    people, sims = gallery.search(queries, top_k=5)
    labels = gallery.labels
    best = np.full((len(queries), len(gallery.people)), -np.inf)
    np.maximum.at(best.T, labels, (queries @ gallery.embeddings.T).T)
    expected = np.argsort(-best, axis=1)[:, :5]
    assert (people == expected).all()
    assert np.allclose(sims, np.take_along_axis(best, expected, axis=1), atol=1e-5)
    assert (people[:50, 0] == labels[0]).all()


def test_faiss_path_is_exact_on_an_exact_index():
    """The path approximate galleries take, run on an exact faiss index, must equal the scan."""
    import faiss

    from inference.gallery_store import search_index

    rng = np.random.default_rng(2)
    persons = np.repeat(np.arange(200), np.concatenate([[120], rng.integers(1, 4, 199)]))
    rng.shuffle(persons)  # photos of a person need not be stored together
    embeddings = rng.standard_normal((len(persons), DIM)).astype(np.float32)
    gallery = from_embeddings(embeddings, [f"p{i}" for i in persons], IDENTITY)
    queries = gallery.embeddings[rng.choice(len(persons), 60)] + 0.05
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    index = faiss.IndexFlatIP(DIM)
    index.add(gallery.embeddings)
    scanned = gallery.search(queries, 5)
    indexed = search_index(index, gallery.labels, queries, 5)
    assert (scanned[0] == indexed[0]).all() and np.allclose(scanned[1], indexed[1], atol=1e-5)


def test_an_exact_gallery_is_loaded_and_searched_without_faiss(tmp_path):
    """faiss costs 0.1-0.2 s to import: a flat gallery (scanned) never needs it, an approximate one
    still reads its stored index. Run in a fresh interpreter, where nothing imported faiss before."""
    import subprocess
    import sys

    from inference.gallery_store import save

    rng = np.random.default_rng(3)
    embeddings = rng.standard_normal((40, DIM)).astype(np.float32)
    names = [f"p{i // 4}" for i in range(40)]
    for kind in ("flat", "hnsw"):
        gallery = from_embeddings(embeddings, names, IDENTITY, index=kind)
        save(gallery, tmp_path / kind)
    probe = ("import sys; from inference.gallery_store import load; g = load(sys.argv[1]); "
             "p, _ = g.search(g.embeddings[:3], 2); print(int(p[0, 0]), 'faiss' in sys.modules)")
    runs = {kind: subprocess.run([sys.executable, "-c", probe, str(tmp_path / kind)], capture_output=True, text=True,
                                 timeout=120, check=True).stdout.split() for kind in ("flat", "hnsw")}
    assert runs == {"flat": ["0", "False"], "hnsw": ["0", "True"]}
