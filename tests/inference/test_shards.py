"""Batch jobs that scale out, on the local backend: ``instance_count: 2`` runs two instances of
the entry point over shards of the photos and merges their parts into the output one instance
would have written (same gallery, same report rows, same metrics)."""
from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from inference.shards import shard
from jobs.store import Store


def test_shards_split_by_a_stable_key_without_overlap():
    names = [f"person-{p}/photo-{n}.jpg" for p in range(20) for n in range(5)]
    parts = [shard(names, i, 3, key=str) for i in range(3)]
    assert sorted(sum(parts, [])) == sorted(names) and all(parts)
    assert parts == [shard(list(reversed(names)), i, 3, key=str)[::-1] for i in range(3)]  # order-free
    grown = [shard(names + ["new/1.jpg"], i, 3, key=str) for i in range(3)]
    assert [set(g) - {"new/1.jpg"} for g in grown] == [set(p) for p in parts]  # a new file moves no other
    assert shard(names, 0, 1, key=str) == names
    with pytest.raises(ValueError, match="expected 0 <= index < count"):
        shard(names, 3, 3, key=str)


def submit(runner, tmp_path: Path, name: str, body: str) -> dict:
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(f"name: {name}\n" + textwrap.dedent(body))
    result = runner("job", "submit", spec)
    record = Store().get(name)
    assert record["status"] == "done", (result.output, record.get("failure_reason"))
    return record


def entries(folder: Path) -> list[tuple[str, str, str]]:
    with open(folder / "entries.csv", newline="") as fh:
        return [(row["image"], row["person"], row["person_id"]) for row in csv.DictReader(fh)]


def test_a_gallery_on_two_instances_is_the_gallery_of_one(runner, split, built, model_dir, tmp_path):
    record = submit(runner, tmp_path, "gal-2", f"""\
        task: gallery
        inputs: {{images: {split / 'gal'}, models: {model_dir}}}
        outputs: {{database: {tmp_path / 'db'}}}
        resources: {{instance_count: 2}}
        """)
    log = runner("job", "logs", "gal-2").output
    assert "merging the parts of 2 shards" in log
    one, two = built[0], tmp_path / "db"
    assert not (two / "parts").exists()
    assert sorted(entries(two)) == sorted(entries(one))  # same people, same ids, same photos
    order = {image: i for i, (image, _, _) in enumerate(entries(one))}
    mine = np.load(two / "embeddings.npy")[np.argsort([order[image] for image, _, _ in entries(two)])]
    np.testing.assert_allclose(mine, np.load(one / "embeddings.npy"), atol=1e-5)
    manifest, theirs = (json.loads((folder / "gallery.json").read_text()) for folder in (two, one))
    assert manifest["calibration"] == pytest.approx(theirs["calibration"])  # over all embeddings, once
    assert manifest["people"] == theirs["people"] and manifest["revision"] == theirs["revision"] == 1
    summary = built[1]
    assert {k: record["metrics"][k] for k in ("people", "embeddings", "images", "threshold")} == \
        {k: summary[k] for k in ("people", "embeddings", "images", "threshold")}


def rows(folder: Path) -> list[dict]:
    found = [json.loads(line) for line in (folder / "report.jsonl").read_text().splitlines()]
    return sorted(found, key=lambda row: (row["image"], row["face"] if row["face"] is not None else -1))


def test_identify_on_two_instances_gives_the_rows_and_metrics_of_one(runner, split, built, model_dir, tmp_path):
    records = {}
    for count in (1, 2):
        records[count] = submit(runner, tmp_path, f"ident-{count}", f"""\
            task: identify
            inputs: {{images: {split / 'probe'}, gallery: {built[0]}, models: {model_dir}}}
            outputs: {{report: {tmp_path / f'report-{count}'}}}
            hyperparameters: {{truth_from_folders: true, sheet: true}}
            resources: {{instance_count: {count}}}
            """)
    one, two = tmp_path / "report-1", tmp_path / "report-2"
    assert (one / "sheet.jpg").is_file()  # each instance's own sheet: it alone read its share of the photos
    assert len([p for p in (two / "sheets").iterdir() if p.suffix == ".jpg" and p.stat().st_size]) == 2
    assert rows(two) == rows(one) and len(rows(one)) >= 60
    csv_rows = []
    for folder in (one, two):
        with open(folder / "report.csv", newline="") as fh:
            csv_rows.append(sorted(map(str, csv.DictReader(fh))))
    assert csv_rows[0] == csv_rows[1]
    assert json.loads((two / "metrics.json").read_text()) == json.loads((one / "metrics.json").read_text())
    assert sorted({p.name for p in two.iterdir()} - {"sheets"}) == sorted({p.name for p in one.iterdir()} - {"sheet.jpg"})  # no parts left
    timing = {"seconds", "faces_per_s"}
    assert {k: v for k, v in records[2]["metrics"].items() if k not in timing} == \
        {k: v for k, v in records[1]["metrics"].items() if k not in timing}
    assert records[2]["metrics"]["faces_per_s"] > 0
