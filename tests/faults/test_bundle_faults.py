"""Item 0 and 1 of the fault run: a spec in a huge folder, and many submits at once."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

from jobs.store import TERMINAL, Store
from tests.faults.helpers import REPO, cli, custom_job
from tests.harness.process import wait_for


def _sparse(path, size: int) -> None:
    """A file of ``size`` bytes that takes no disk space (a dataset next to the code)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.truncate(size)


def test_code_folder_over_the_limit_is_refused_before_it_is_read(tmp_path):
    spec = custom_job(tmp_path / "home-like")
    _sparse(tmp_path / "home-like" / "dataset" / "faces.bin", 3 * 1024 ** 3)
    result = cli("job", "submit", str(spec), "--detach", timeout=60)
    assert result.returncode == 2, result.stderr
    assert "3072.0 MB" in result.stderr and "dataset/" in result.stderr and "Traceback" not in result.stderr
    assert not Store().list()


def test_ignored_folders_virtualenvs_and_caches_are_not_packed(tmp_path):
    folder = tmp_path / "proj"
    spec = custom_job(folder)
    _sparse(folder / "dataset" / "faces.bin", 3 * 1024 ** 3)
    _sparse(folder / "logs" / "run.log", 10)
    (folder / "env").mkdir()
    (folder / "env" / "pyvenv.cfg").write_text("home = /usr\n")
    _sparse(folder / "env" / "lib" / "big.so", 2 * 1024 ** 3)
    _sparse(folder / ".cache" / "blob", 1024 ** 3)
    (folder / ".faceopsignore").write_text("dataset/\n")
    (folder / ".gitignore").write_text("*.log\n!keep.log\n")
    (folder / "logs" / "keep.log").write_text("kept\n")
    plan = cli("job", "submit", str(spec), "--dry-run", timeout=60)
    assert plan.returncode == 0, plan.stderr
    assert "code bundle" in plan.stdout and "biggest" in plan.stdout
    result = cli("job", "submit", str(spec), "--detach", "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    with tarfile.open(tmp_path / "faceops-home" / "bundles" / f"{record['code']['hash']}.tar.gz") as tar:
        names = set(tar.getnames())
    assert names == {".faceopsignore", ".gitignore", "job.yaml", "main.py", "logs/keep.log"}
    wait_for(lambda: Store().get("fault-job", 1)["status"] in TERMINAL)


def test_bundle_streams_in_bounded_memory(tmp_path):
    """Packing 256 MB of code grows the process by far less than that: the peak RSS of a dry run
    over a 256 MB folder against the same dry run over a tiny one (what the CLI imports is the same)."""
    code = ("import resource, sys, cli\n"
            "try:\n    cli.main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "FACEOPS_BUNDLE_MAX_BYTES": str(1024 ** 3)}

    def dry_run(folder: Path) -> tuple[int, subprocess.CompletedProcess]:
        result = subprocess.run([sys.executable, "-c", code, "job", "submit", str(custom_job(folder)), "--dry-run"],
                                capture_output=True, text=True, timeout=120, env=env)
        assert result.returncode == 0, result.stderr
        return int(result.stderr.strip().splitlines()[-1]), result

    tiny_kb, _ = dry_run(tmp_path / "tiny")
    _sparse(tmp_path / "proj" / "weights" / "big.bin", 256 * 1024 ** 2)
    peak_kb, result = dry_run(tmp_path / "proj")
    assert peak_kb - tiny_kb < 64 * 1024, f"packing 256 MB grew the peak RSS by {peak_kb - tiny_kb} kB"
    assert "would create fault-job:1" in result.stdout


def test_parallel_submits_all_land_with_a_chain_of_parents(tmp_path):
    spec = custom_job(tmp_path / "proj")
    count = 12
    with ThreadPoolExecutor(count) as pool:
        results = list(pool.map(lambda _: cli("job", "submit", str(spec), "--detach", timeout=120), range(count)))
    assert [r.returncode for r in results] == [0] * count, [r.stderr[-500:] for r in results if r.returncode]
    records = Store().versions("fault-job")
    assert [r["version"] for r in records] == list(range(1, count + 1))
    assert [r["parent"] for r in records] == [None, *range(1, count)]
    wait_for(lambda: all(r["status"] in TERMINAL for r in Store().versions("fault-job")), timeout=150)
