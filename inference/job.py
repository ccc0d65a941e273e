"""Entry point of the ``gallery`` and ``identify`` jobs: ``python -m inference.job gallery|identify [KEY=VALUE ...]``.

:func:`jobs.core.entry.run` reads the container contract, checks the hyperparameters against the
task's schema, answers ``--help`` and applies the one exit-code policy; the library function runs
on the staged channel folders and writes into the output folders (the backend uploads them). The
summary's numbers are logged as metrics, so ``faceops job diff`` compares versions by rank-1,
TAR@FAR and speed.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Callable

from inference import shards
from inference.gallery import build_gallery, merge_galleries
from inference.identify import identify, merge_reports
from inference.tasks import GALLERY, IDENTIFY
from jobs.core import entry
from jobs.core.contract import JobEnv, shard_from_env
from jobs.core.errors import DataError
from jobs.core.tasks import Task

DETECTION_KEYS = ("det_size", "det_thresh", "batch_size", "workers")
SHEET = "sheet.jpg"  # the identify report's contact sheet of doubtful faces (hyperparameter sheet)


def _pick(hp: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: hp[k] for k in keys if k in hp}


def _truth_file(env: JobEnv) -> Path | None:
    """The ``truth`` channel: a CSV file, or a folder holding exactly one."""
    if "truth" not in env.channels:
        return None
    path = env.channels["truth"]
    if path.is_file():
        return path
    found = sorted(path.rglob("*.csv"))
    if len(found) != 1:
        raise DataError(f"channel truth: expected one path,person CSV, found {len(found)}")
    return found[0]


def _models(env: JobEnv) -> dict[str, Path | None]:
    """The model channels as :func:`inference.models.load_models` takes them: ``detector`` and
    ``recognizer`` each win over the ``models`` folder; a missing one is the pretrained model."""
    return {"models": env.channels.get("models"), "det": env.channels.get("detector"), "rec": env.channels.get("recognizer")}


def run_gallery(hp: dict[str, Any], env: JobEnv) -> dict[str, Any] | None:
    at = shard_from_env()
    out = env.output("database") if at is None else shards.part_folder(env.output("database"), at)
    summary = build_gallery(env.channel("images"), out, **_models(env), shard=at,
                            background=None if at else env.channels.get("background"),
                            **_pick(hp, DETECTION_KEYS + ("strict", "far", "index", "force")), progress=False)
    return None if at else summary


def _identify_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """An identify summary as job metrics: the truth metrics at the top, confusions left to
    metrics.json (job metrics are numbers)."""
    truth_metrics = dict(summary.pop("metrics", {}))
    truth_metrics.pop("confusions", None)
    return {**summary, **truth_metrics}


def run_identify(hp: dict[str, Any], env: JobEnv) -> dict[str, Any] | None:
    at = shard_from_env()
    out = env.output("report") if at is None else shards.part_folder(env.output("report"), at)
    summary = identify(env.channel("images"), env.channel("gallery"), out, **_models(env), truth=_truth_file(env),
                       annotate_dir=out / "annotated" if hp.get("annotate") else None,
                       sheet=out / SHEET if hp.get("sheet") else None, shard=at,
                       **_pick(hp, DETECTION_KEYS + ("threshold", "top_k", "truth_from_folders")), progress=False)
    return None if at else _identify_metrics(summary)


def merge_gallery(hp: dict[str, Any], outputs: dict[str, Path]) -> dict[str, Any]:
    """The gallery task's merge (its :class:`~jobs.core.tasks.Sharding`): the instances' parts of
    output ``database`` become one gallery, calibrated for ``far`` over all the embeddings."""
    out = outputs["database"]
    return merge_galleries(shards.read_parts(out), out, hp.get("far", GALLERY.params["far"].default),
                           force=bool(hp.get("force")))


def merge_identify(hp: dict[str, Any], outputs: dict[str, Path]) -> dict[str, Any]:
    """The identify task's merge: the instances' parts of output ``report`` become one report. Each
    instance's contact sheet (``sheet``) ranks the doubtful faces of its own share of the photos,
    which only it could read, so the sheets are kept side by side as ``sheets/<part>.jpg``."""
    out = outputs["report"]
    parts = shards.read_parts(out)
    for folder, _ in parts:
        if (folder / SHEET).is_file():
            (out / "sheets").mkdir(exist_ok=True)
            shutil.copy(folder / SHEET, out / "sheets" / f"{folder.name}.jpg")
    return _identify_metrics(merge_reports(parts, out))


RUNNERS: dict[str, tuple[Task, Callable[[dict[str, Any], JobEnv], dict[str, Any]]]] = {
    "gallery": (GALLERY, run_gallery), "identify": (IDENTIFY, run_identify)}
USAGE = f"usage: python -m inference.job {{{','.join(RUNNERS)}}} [KEY=VALUE ...] (--help after the task lists its parameters)"


def main(argv: list[str] | None = None) -> int:
    """Run the task named by the first argument under :func:`jobs.core.entry.run`."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["--help"], ["-h"]):
        print(USAGE)
        return 0
    if not argv or argv[0] not in RUNNERS:
        print(USAGE, file=sys.stderr)
        return 2
    task, runner = RUNNERS[argv[0]]
    return entry.run(task, runner, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
