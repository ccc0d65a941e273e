"""The identify contact sheet on real photos: the probes of 8 gallery people and 2 people left out,
through the CLI; the sheet holds the unknown faces first, then the lowest-margin matches."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from inference.identify import UNKNOWN
from inference.sheet import CAPTION, COLUMNS, HEADER, TILE, DoubtfulFaces, captions, doubt, fit_end, margin


@pytest.fixture(scope="module")
def sheet_run(runner, split, built, model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sheet")
    result = runner("identify", split / "probe", "--gallery", built[0], "--out", out / "report",
                    "--models", model_dir, "--sheet", out / "sheet.jpg", "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "report" / "report.jsonl").read_text().splitlines()]
    return out, json.loads(result.output), [r for r in rows if r["status"] == "ok"]


def test_sheet_shows_unknown_faces_then_lowest_margin_matches(sheet_run):
    import cv2

    out, summary, faces = sheet_run
    assert summary["sheet"] == str(out / "sheet.jpg")
    threshold = summary["threshold"]
    expected = sorted(faces, key=lambda r: doubt(r, threshold))[:48]
    unknown = [r for r in faces if r["person"] == UNKNOWN]
    assert len(unknown) >= 15  # the 20 photos of the 2 people left out are mostly rejected
    assert [r["person"] == UNKNOWN for r in expected[:len(unknown)]] == [True] * len(unknown)
    image = cv2.imread(str(out / "sheet.jpg"))
    rows = math.ceil(len(expected) / COLUMNS)
    assert image.shape[:2] == (HEADER + rows * (TILE + CAPTION), COLUMNS * TILE)
    # The first tile is framed red (unknown), the last drawn one green (a match); tiles hold faces.
    first = image[HEADER + 1, 1:TILE - 1].astype(int)
    assert (first[:, 2] > 150).all() and (first[:, 1] < 100).all()
    last = len(expected) - 1
    x, y = (last % COLUMNS) * TILE, HEADER + (last // COLUMNS) * (TILE + CAPTION)
    assert (image[y + 1, x + 2:x + TILE - 2, 1].astype(int) > 120).all()
    assert image[HEADER + 10:HEADER + TILE - 10, 10:TILE - 10].std() > 20


def test_ranking_keeps_the_most_doubtful_and_decodes_only_those(tmp_path, lfw10):
    photo = next(p for p in sorted(lfw10.rglob("*.jpg")))
    face = {"status": "ok", "image": photo.name, "box": [70, 70, 180, 180]}
    rows = [{**face, "person": "a", "similarity": 0.9, "top_k": [{"person": "a", "similarity": 0.9}, {"person": "b", "similarity": 0.2}]},
            {**face, "person": "a", "similarity": 0.5, "top_k": [{"person": "a", "similarity": 0.5}, {"person": "b", "similarity": 0.45}]},
            {**face, "person": UNKNOWN, "similarity": 0.1, "top_k": [{"person": "c", "similarity": 0.1}]},
            {**face, "person": UNKNOWN, "similarity": 0.25, "top_k": [{"person": "c", "similarity": 0.25}]},
            {"status": "no_face", "image": "x.jpg", "face": None}]
    assert margin(rows[1], 0.3) == pytest.approx(0.05) and margin(rows[0], 0.3) == pytest.approx(0.6)
    assert margin(rows[3], 0.3) == pytest.approx(0.05)
    faces = DoubtfulFaces(threshold=0.3, limit=3)
    faces.add(photo, rows)
    ranked = faces.ranked()
    assert [r.row["similarity"] for r in ranked] == [0.25, 0.1, 0.5]
    assert all(t.crop.shape == (TILE, TILE, 3) and t.crop.std() > 10 for t in ranked)
    faces.add(tmp_path / "never-read.jpg", [rows[0]])  # less doubtful than all kept: not decoded
    assert faces.seen == {"unknown": 2, "matches": 3}
    assert [captions(t)[1] for t in ranked] == ["under t 0.05", "under t 0.20", "lead 0.05"]
    out = faces.write(tmp_path / "s.png")
    assert out.exists() and np.asarray(bytearray(out.read_bytes())).size > 1000


def test_captions_keep_the_end_of_a_long_file_name():
    import cv2

    assert fit_end("Jane_Doe_0001.jpg", 200, 0.34) == "Jane_Doe_0001.jpg"
    cut = fit_end("a_very_long_name_of_many_people_0042.jpg", TILE - 4, 0.34)
    assert cut.startswith("..") and cut.endswith("_0042.jpg") and len(cut) > 11
    assert cv2.getTextSize(cut, cv2.FONT_HERSHEY_SIMPLEX, 0.34, 1)[0][0] <= TILE - 4
