"""Batch identification on real photos: the held-out photos of the gallery's 8 people and all
photos of 2 people left out, at the gallery's calibrated threshold."""
from __future__ import annotations

import csv
import json
import shutil

import pytest

from inference.identify import UNKNOWN, identify


@pytest.fixture(scope="session")
def probe_run(split, built, models, tmp_path_factory):
    out = tmp_path_factory.mktemp("identify")
    summary = identify(split / "probe", built[0], out / "report", models, truth_from_folders=True,
                       annotate_dir=out / "annotated")
    return out, summary


def test_known_people_are_found_and_left_out_people_rejected(probe_run, built):
    _, summary = probe_run
    metrics = summary["metrics"]
    assert metrics["known_probes"] == 40 and metrics["unknown_probes"] == 20 and metrics["missed_probes"] == 0
    # Measured with SCRFD-500M + MobileFaceNet: rank-1 1.0, TAR 1.0, rejection 1.0 at threshold 0.224.
    assert metrics["rank1"] >= 0.9
    assert metrics["tar_at_far"] >= 0.85
    assert metrics["unknown_rejection"] >= 0.85
    assert summary["threshold"] == built[1]["calibration"]["threshold"]


def test_report_has_one_row_per_face_in_csv_and_jsonl(probe_run, split):
    out, summary = probe_run
    with open(out / "report" / "report.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    lines = [json.loads(line) for line in (out / "report" / "report.jsonl").read_text().splitlines()]
    assert len(rows) == len(lines) == summary["faces"] + summary["no_face"] + summary["errors"]
    assert {r["image"] for r in rows} == {p.relative_to(split / "probe").as_posix() for p in (split / "probe").rglob("*.jpg")}
    for row, line in zip(rows, lines):
        assert row["image"] == line["image"] and row["person"] == line["person"]
        if line["status"] == "ok":
            assert len(line["landmarks"]) == 5 and len(line["box"]) == 4 and 0 < line["det_score"] <= 1
            assert 1 <= len(line["top_k"]) <= 5
            sims = [t["similarity"] for t in line["top_k"]]
            assert sims == sorted(sims, reverse=True) and line["similarity"] == sims[0]
            assert (line["person"] == UNKNOWN) == (sims[0] < summary["threshold"])
    assert (out / "report" / "metrics.json").exists()


def test_annotated_images_are_written(probe_run, split):
    out, _ = probe_run
    written = sorted(p.relative_to(out / "annotated").as_posix() for p in (out / "annotated").rglob("*.jpg"))
    assert written == sorted(p.relative_to(split / "probe").as_posix() for p in (split / "probe").rglob("*.jpg"))


def test_annotations_scale_with_the_photo(split, built, models, tmp_path):
    """Boxes and labels cover the same share of a photo enlarged to 4000 px as of it at 1000 px,
    not a sixteenth of it: above 800 px they are drawn to be read on the whole picture."""
    import cv2
    import numpy as np

    photo = cv2.imread(str(sorted((split / "probe").rglob("*.jpg"))[0]))  # 250 x 250
    for name, side in (("small", 1000), ("large", 4000)):
        (tmp_path / "photos" / name).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "photos" / name / "face.png"),
                    cv2.resize(photo, (side, side), interpolation=cv2.INTER_CUBIC))
    identify(tmp_path / "photos", built[0], tmp_path / "out", models, annotate_dir=tmp_path / "annotated")

    def drawn_share(name: str) -> float:
        image = cv2.imread(str(tmp_path / "annotated" / name / "face.jpg")).astype(int)
        green, red = (image[..., 1] > 170) & (image[..., 2] < 80), (image[..., 2] > 200) & (image[..., 1] < 60)
        return float(np.mean(green | red))

    small_share, large_share = drawn_share("small"), drawn_share("large")
    assert small_share > 0.002  # a box and a label were drawn
    assert 0.5 < large_share / small_share < 2, (small_share, large_share)


def test_group_photo_gives_one_row_per_face(model_dir, built, models, tmp_path):
    shutil.copy(model_dir / "players.jpg", tmp_path / "players.jpg")
    summary = identify(tmp_path / "players.jpg", built[0], tmp_path / "out", models)
    lines = [json.loads(line) for line in (tmp_path / "out" / "report.jsonl").read_text().splitlines()]
    # Measured: 22 faces at det_size 640 (16 players plus smaller faces behind them).
    assert 16 <= summary["faces"] <= 28
    assert len(lines) == summary["faces"] and [r["face"] for r in lines] == list(range(len(lines)))
    assert len({tuple(r["box"]) for r in lines}) == len(lines)
    areas = [(r["box"][2] - r["box"][0]) * (r["box"][3] - r["box"][1]) for r in lines]
    assert areas == sorted(areas, reverse=True)
    # None of them is in a gallery of LFW politicians.
    assert sum(r["person"] == UNKNOWN for r in lines) >= len(lines) - 1


def test_truth_csv_and_a_fixed_threshold(split, built, models, tmp_path):
    truth = tmp_path / "truth.csv"
    photos = sorted((split / "probe").rglob("*.jpg"))[:12]
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(str(p) for p in photos) + "\n")
    truth.write_text("path,person\n" + "".join(f"{p.name},{p.parent.name}\n" for p in photos))
    summary = identify(listing, built[0], tmp_path / "out", models, truth=truth, threshold=0.99, top_k=2,
                       annotate_dir=tmp_path / "annotated")
    metrics = summary["metrics"]
    # The list names absolute paths: annotated copies still land inside the annotate folder.
    assert len(list((tmp_path / "annotated").rglob("*.jpg"))) == 12
    assert summary["images"] == 12 and metrics["probes"] == 12
    # Nobody reaches 0.99: every known face is below the threshold, yet rank-1 still counts hits.
    assert metrics["tar_at_far"] == 0.0 and metrics["rank1"] >= 0.9
    assert summary["unknown"] == summary["faces"]


def test_truth_from_folders_of_a_flat_folder_is_refused(runner, split, built, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for photo in sorted((split / "probe").rglob("*.jpg"))[:2]:
        (flat / photo.name).symlink_to(photo)
    result = runner("identify", flat, "--gallery", built[0], "--out", tmp_path / "out", "--truth-from-folders")
    assert result.exit_code == 2
    assert "--truth-from-folders takes each image's first folder as its person, but every image sits directly in it" in result.output
    assert not (tmp_path / "out").exists()  # refused before any work


def test_labels_stay_inside_the_image():
    from inference.identify import label_origin

    # A face at the right edge: the label ends inside the image instead of running off it.
    assert label_origin((230, 50, 256, 90), (80, 10), (256, 256)) == (175, 46)
    # A face at the top: no room above, so the label goes just under the box's top edge.
    assert label_origin((10, 2, 60, 60), (80, 10), (256, 256)) == (10, 16)
    assert label_origin((10, 40, 60, 90), (300, 10), (256, 256))[0] == 0  # wider than the image: from its left edge
