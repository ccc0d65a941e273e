"""Item 6 of the second fault run: submits from two homes kept inside the code folder, all at
once. ``$FACEOPS_HOME`` is never packed, and a file that vanishes while the folder is packed
(another submit's temporary bundle, the store's journal) is skipped and reported, not a crash."""
from __future__ import annotations

import json
import os
import tarfile
from concurrent.futures import ThreadPoolExecutor

from jobs.core import bundle
from jobs.core.bundle import build_bundle
from tests.faults.helpers import cli, custom_job

PER_HOME = 3


def test_submits_from_two_homes_inside_the_code_folder(tmp_path):
    folder = tmp_path / "proj"
    spec = custom_job(folder)
    homes = [folder / "home-a", folder / "home-b"]

    def submit(home) -> tuple:
        result = cli("job", "submit", str(spec), "--wait", "--json", timeout=170,
                     env={"FACEOPS_HOME": str(home)})
        return home, result

    with ThreadPoolExecutor(max_workers=2 * PER_HOME) as pool:
        results = list(pool.map(submit, homes * PER_HOME))
    for home, result in results:
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
        record = json.loads(result.stdout)
        with tarfile.open(home / "bundles" / f"{record['code']['hash']}.tar.gz") as tar:
            names = tar.getnames()
        assert sorted(names) == ["job.yaml", "main.py"], names
    for home in homes:
        versions = cli("job", "versions", "fault-job", "--json", env={"FACEOPS_HOME": str(home)})
        assert len(json.loads(versions.stdout)) == PER_HOME, versions.stdout


def test_a_file_that_vanishes_while_packing_is_skipped_and_reported(tmp_path, monkeypatch):
    folder = tmp_path / "proj"
    custom_job(folder)
    doomed = folder / "scratch.tmp"
    doomed.write_bytes(b"temporary")
    survey = bundle._survey

    def survey_then_remove(root, include):
        found = survey(root, include)
        os.remove(doomed)  # another process's temporary file goes away between walk and pack
        return found

    monkeypatch.setattr(bundle, "_survey", survey_then_remove)
    packed = build_bundle(folder)
    assert packed.vanished == ("scratch.tmp",) and packed.files == 2
    with tarfile.open(packed.path) as tar:
        assert sorted(tar.getnames()) == ["job.yaml", "main.py"]
