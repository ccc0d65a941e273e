"""The commands that drive training data and models: ``data``, ``eval`` and ``model``. Thin: they
parse arguments, call the train package and print; ``cli.py`` adds them to ``faceops``."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from inference.models import default_model_dir, pretrained_file
from jobs.core import storage
from jobs.core.commandline import FaceopsGroup
from train import fresh
from train.importer import IMPORT_RECORD
from train.inspection import format_report, inspect
from train.pack import pack_detection, pack_recognition
from train.pairs import pack_verification
from train.verification import evaluate_bins, onnx_forward
from train.widerface import evaluate as evaluate_detection


@click.group(cls=FaceopsGroup)
def data() -> None:
    """Pack, inspect and stream RecordIO face datasets."""


PRETRAINED = "pretrained"  # --align given without a detector


def _packed(report) -> None:
    """Print a pack's summary; skipped files go to stderr so the last stdout line stays the URI."""
    click.echo(report.summary(), err=bool(report.skipped))
    if report.skipped:
        click.echo(f"packed {report.uri}")


@data.command("pack-recognition")
@click.argument("src_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("out_uri")
@click.option("--align", metavar="[DETECTOR]", is_flag=False, flag_value=PRETRAINED,
              help="Align with this detector (an ONNX file or model folder, e.g. SCRFD) instead of the pretrained one.")
@click.option("--resize", metavar="SIZE|HxW",
              help="Resize every photo (e.g. 112 or 112x112) instead of aligning it, stored as JPEG.")
@click.option("--as-is", "as_is", is_flag=True, help="Store the photos untouched (they are aligned crops already).")
@click.option("--workers", type=int, help="Encoding threads (default: one per CPU).")
@click.option("--quality", default=95, show_default=True, help="JPEG quality for aligned/resized photos.")
def data_pack_recognition(src_dir: str, out_uri: str, align: str | None, resize: str | None, as_is: bool,
                          workers: int | None, quality: int) -> None:
    """Pack SRC_DIR (one folder of photos per identity) into insightface recognition RecordIO at
    OUT_URI (a folder or s3:// prefix): train.rec, train.idx, train.lst and property.

    By default the main face of every photo is detected and 5-point aligned to 112x112 with the
    pretrained SCRFD detector (the models extra), the crops recognizers are trained and used on;
    photos without a face are skipped. --resize only resizes, --as-is stores the photos untouched.
    Unreadable photos are skipped and listed at the end. OUT_URI is replaced in one step once
    everything is written."""
    if sum(bool(option) for option in (align, resize, as_is)) > 1:
        raise click.UsageError("give one of --align, --resize and --as-is")
    if not (resize or as_is):
        align = align or PRETRAINED
    if align == PRETRAINED and default_model_dir() is None:
        raise click.UsageError("aligning needs a face detector: install the pretrained models "
                               "(pip install 'faceops[models]'), or give --align DETECTOR, --resize 112 or --as-is")
    _packed(pack_recognition(src_dir, out_uri, resize=resize, align=True if align == PRETRAINED else align,
                             workers=workers, quality=quality))


@data.command("pack-detection")
@click.argument("src_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("out_uri")
@click.option("--workers", type=int, help="Reading threads (default: one per CPU).")
def data_pack_detection(src_dir: str, out_uri: str, workers: int | None) -> None:
    """Pack SRC_DIR/images/ + SRC_DIR/label.txt (RetinaFace/WIDER format) into indexed RecordIO at
    OUT_URI: each record holds the image bytes and its faces (box, 5 landmarks, blur).

    A label.txt line with the wrong number of fields stops the pack naming file:line; missing or
    unreadable images are skipped and listed at the end."""
    _packed(pack_detection(src_dir, out_uri, workers=workers))


@data.command("pack-verification")
@click.argument("photos", type=click.Path(exists=True, file_okay=False))
@click.argument("out_bin", type=click.Path(dir_okay=False))
@click.option("--pairs", default=600, show_default=True, help="Number of pairs, half positive, half negative.")
@click.option("--seed", default=0, show_default=True, help="Random seed of the pair choice.")
@click.option("--detector", type=click.Path(exists=True),
              help="Align faces with this ONNX detector (file or model folder) instead of the pretrained one.")
@click.option("--resize", is_flag=True, help="Resize the photos to 112x112 instead of aligning them "
              "(they are aligned crops already); recognizers score unaligned photos far lower.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def data_pack_verification(photos: str, out_bin: str, pairs: int, seed: int, detector: str | None, resize: bool,
                           as_json: bool) -> None:
    """Write OUT_BIN, an insightface verification .bin (the format of lfw.bin, cfp_fp.bin,
    agedb_30.bin), of balanced pairs from PHOTOS (one folder of photos per person): a test set of
    your own held-out people for faceops eval recognition and a job's val input.

    Faces are 5-point aligned to 112x112 with the pretrained SCRFD detector (the models extra)
    unless --detector names another or --resize asks for plain resizing."""
    if detector and resize:
        raise click.UsageError("give --detector or --resize, not both")
    report = pack_verification(Path(photos), Path(out_bin), pairs, seed,
                               None if resize else (Path(detector) if detector else True))
    if as_json:
        click.echo(json.dumps(report.as_dict()))
        return
    for line in report.skipped:
        click.echo(f"skipped {line}", err=True)
    click.echo(f"wrote {report.positive} positive and {report.negative} negative pairs of {report.people} people "
               f"({report.photos} photos) to {out_bin}")


@data.command("inspect")
@click.argument("uri")
@click.option("--scan", is_flag=True, help="Read and decode every record (streamed) to find the first corrupt one.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def data_inspect(uri: str, scan: bool, as_json: bool) -> None:
    """Describe the RecordIO dataset at URI (folder, .rec or s3:// prefix): kind, records, images,
    identities and images per identity, image size, bytes, property, first corrupt record.

    Reads only the index and a few records (ranged reads on S3) unless --scan. Exits 2 when a
    corrupt record or a disagreeing property is found."""
    report = inspect(uri, scan=scan)
    click.echo(json.dumps(report) if as_json else format_report(report))
    if report["first_corrupt"] or report["problems"]:
        sys.exit(2)


@click.group(cls=FaceopsGroup)
def eval() -> None:  # noqa: A001 - the command's name
    """Measure models with the published protocols."""


@eval.command("recognition")
@click.argument("model_path", metavar="MODEL", type=click.Path(exists=True))
@click.option("--bin", "bins", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False),
              help="A verification .bin (lfw.bin, cfp_fp.bin, agedb_30.bin or your own). Repeatable.")
@click.option("--flip/--no-flip", default=True, show_default=True, help="Add each face's mirror image's embedding.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object.")
def eval_recognition(model_path: str, bins: tuple[str, ...], flip: bool, as_json: bool) -> None:
    """Verification accuracy of MODEL (a recognizer .onnx or a model folder with model.onnx) on
    each .bin with insightface's 10-fold protocol: the best threshold on nine folds, accuracy on
    the tenth, mean +- std. A job's val input is measured by the same code."""
    results = evaluate_bins(onnx_forward(Path(model_path)), [Path(b) for b in bins], flip, progress=not as_json)
    if as_json:
        click.echo(json.dumps(results))
        return
    for path in bins:
        name = Path(path).stem
        click.echo(f"{name}: {100 * results[f'val_{name}_acc']:.2f}% +- {100 * results[f'val_{name}_std']:.2f}")


@eval.command("detection")
@click.argument("model_path", metavar="MODEL", type=click.Path(exists=True))
@click.option("--widerface", "val_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="WIDER FACE val folder (images/<event>/<file>.jpg).")
@click.option("--gt", "gt_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder with wider_face_val.mat and wider_easy/medium/hard_val.mat.")
@click.option("--det-size", default=640, show_default=True, help="Longest detector input side (never upscaled).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object.")
def eval_detection(model_path: str, val_dir: str, gt_dir: str, det_size: int, as_json: bool) -> None:
    """Easy/medium/hard AP of MODEL (a face detector .onnx, SCRFD or RetinaFace, or a model
    folder) with the WIDER FACE protocol, as the evaluation code that ships with WIDER computes it."""
    results = evaluate_detection(model_path, val_dir, gt_dir, det_size)
    if as_json:
        click.echo(json.dumps({f"{name}_ap": round(ap, 5) for name, ap in results.items()}))
        return
    for name, ap in results.items():
        click.echo(f"{name:<6} AP {100 * ap:.2f}%")


@click.group(cls=FaceopsGroup)
def model() -> None:
    """Bring published insightface models into faceops."""


@model.command("import")
@click.argument("onnx_file")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--network", type=click.Choice(["r18", "r34", "r50", "r100", "mbf", "mbf_s1"]),
              help="Our backbone to load it into (default: the one whose layers match).")
@click.option("--faces", type=click.Path(exists=True, file_okay=False),
              help="Photos to verify on (default: the pretrained models' sample photos).")
@click.option("--detector", type=click.Path(exists=True), help="Face detector ONNX (file or folder) for the crops.")
@click.option("--min-cosine", default=0.999, show_default=True, help="Fail below this embedding agreement.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def model_import(onnx_file: str, out_dir: str, network: str | None, faces: str | None, detector: str | None,
                 min_cosine: float, as_json: bool) -> None:
    """Turn an insightface ONNX recognizer into our Gluon model folder (batch norms unfolded),
    verified against onnxruntime on aligned real faces. ONNX_FILE is a file, or the name of a
    pretrained model of the models extra (e.g. w600k_mbf, the usual start of a fine-tune)."""
    # A model folder of ours (its import record) may be written again; anyone else's files are refused.
    storage.check_target(out_dir, into_existing=(Path(out_dir) / IMPORT_RECORD).is_file())
    args = [str(pretrained_file(onnx_file)), out_dir, "--min-cosine", str(min_cosine)]
    for flag, value in (("--network", network), ("--faces", faces), ("--detector", detector)):
        if value:
            args += [flag, value]
    report = json.loads(fresh.run("train.importer", *args, capture=True).stdout.strip().splitlines()[-1])
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(f"imported {report['source']} as {report['network']} ({report['embedding_size']}-d) into {out_dir}")
    click.echo(f"agreement with onnxruntime on {report['faces']} faces: min cosine {report['min_cosine']}, "
               f"mean {report['mean_cosine']}")
