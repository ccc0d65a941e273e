"""The commands that drive jobs: ``job``, ``task``, ``storage``, ``store``, ``doctor``, ``demo`` and ``deploy``. Thin: they
parse arguments, call the jobs orchestration and print; ``cli.py`` adds them to ``faceops``."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from inference.commands import _model_options
from jobs import demo as demo_steps
from jobs import artifacts, metrics, report, spec, submit, tracking
from jobs import deploy as deployment
from jobs.backends import BACKENDS, DEFAULT_GRACE
from jobs.core import storage as store
from jobs.core.bundle import remove_stale_temporaries
from jobs.core.commandline import FaceopsGroup
from jobs.core.errors import NotFoundError
from jobs.core.tasks import describe, get_task, reference, registry
from jobs.metrics import with_summary
from jobs.migrate import migrate
from jobs.plot import plot_versions
from jobs.store import LIST_LIMIT, STATUSES, TERMINAL, Store


@click.command()
@click.option("--workdir", default="faceops-demo", show_default=True, type=click.Path(file_okay=False),
              help="Where the demo's photos, datasets, gallery and report go.")
def demo(workdir: str) -> None:
    """Run the whole local pipeline offline, one printed faceops command per step: a custom job in
    two versions and their diff, then (with the pretrained models extra) demo photos -> RecordIO ->
    two versions of a trained recognizer -> diff -> gallery -> identification report."""
    root = click.get_current_context().find_root().command  # the faceops group, which imports this module
    demo_steps.run(lambda argv: root.main(argv, prog_name="faceops", standalone_mode=False), click.echo,
                   Path(workdir).resolve())


@click.group(cls=FaceopsGroup)
def job() -> None:
    """Submit, inspect, compare, rerun and stop versioned jobs.

    A job is a name; every submit or rerun freezes a new numbered version (NAME:V) with its
    resolved spec, code hash, image digest, inputs, status history and metrics."""


# How long `job list` waits for one live version's status check before showing it as "checking".
LIST_CHECK_SECONDS = 2.0


SET_HELP = "Override a setting: lr=0.05 (hyperparameter), resources.spot=true, inputs.train=s3://b/p. Repeatable."
INTO_EXISTING_HELP = ("Let outputs go into folders that already hold files faceops did not write; the job's files are "
                      "added beside them and nothing is removed. Without it such a folder is refused.")


def _start(record_or_plan: dict, dry_run: bool, wait: bool, as_json: bool) -> None:
    """Shared tail of submit and rerun: print the plan, or the new version, and follow it."""
    record = record_or_plan["record"] if dry_run else record_or_plan
    vanished = record.get("code", {}).get("vanished")
    if vanished:
        click.echo(f"note: {len(vanished)} file(s) vanished from {record['code']['source']} while it was packed and "
                   f"are not in the code bundle: {', '.join(vanished[:5])}" + (" ..." if len(vanished) > 5 else ""),
                   err=True)
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
        skipped = record_or_plan.get("skipped")
        if skipped:
            click.echo(f"{skipped['reason']}; planned without it, so a real submit still runs these checks:")
            for check in skipped["checks"]:
                click.echo(f"  skipped: {check}")
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
                   + (f"  [{report.metrics_summary(record, declared=metrics.schema(record))}]" if record["metrics"] else ""))
    if record["status"] != "done":
        sys.exit(1)


@job.command("submit")
@click.argument("spec_file", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--backend", help=f"Run on this backend instead of the spec's ({', '.join(BACKENDS)}).")
@click.option("--dry-run", is_flag=True, help="Validate and show what would run; create nothing.")
@click.option("--wait/--detach", default=True, show_default=True, help="Follow the log until the job ends, or return at once.")
@click.option("--json", "as_json", is_flag=True, help="Print the version record (or the plan) as JSON.")
@click.option("--into-existing", is_flag=True, help=INTO_EXISTING_HELP)
def job_submit(spec_file: str, overrides: tuple[str, ...], backend: str | None, dry_run: bool, wait: bool, as_json: bool,
               into_existing: bool) -> None:
    """Submit SPEC_FILE (YAML) as a new version of its job.

    The new version's parent is the job's latest version, so `faceops job versions NAME` shows
    what changed. Exit code: 0 done, 1 failed or stopped, 2 invalid spec or input."""
    if backend:
        overrides = (*overrides, f"backend={backend}")
    _start(submit.submit(spec.load_spec(spec_file, overrides), dry_run=dry_run, into_existing=into_existing),
           dry_run, wait, as_json)


@job.command("rerun")
@click.argument("ref", metavar="NAME[:V]")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--new-code", is_flag=True, help="Pack the code folder again instead of reusing the version's exact code bundle.")
@click.option("--dry-run", is_flag=True, help="Validate and show what would run; create nothing.")
@click.option("--wait/--detach", default=True, show_default=True, help="Follow the log until the job ends, or return at once.")
@click.option("--json", "as_json", is_flag=True, help="Print the version record (or the plan) as JSON.")
@click.option("--into-existing", is_flag=True, help=INTO_EXISTING_HELP)
def job_rerun(ref: str, overrides: tuple[str, ...], new_code: bool, dry_run: bool, wait: bool, as_json: bool,
              into_existing: bool) -> None:
    """Run version NAME[:V] again as a new version whose parent is V.

    Every setting of V is kept (spec, inputs, image, code bundle) except what --set changes."""
    _start(submit.rerun(ref, overrides, new_code=new_code, dry_run=dry_run, into_existing=into_existing),
           dry_run, wait, as_json)


@job.command("resume")
@click.argument("ref", metavar="NAME:V")
@click.option("--wait/--detach", default=True, show_default=True, help="Follow the log until the job ends, or return at once.")
@click.option("--json", "as_json", is_flag=True, help="Print the version record as JSON.")
def job_resume(ref: str, wait: bool, as_json: bool) -> None:
    """Continue a stopped or failed version from its last checkpoint, as a new version with the
    same settings and code (parent V). rerun starts over from step 1 instead."""
    _start(submit.resume(ref), False, wait, as_json)


@job.command("list")
@click.option("--name", help="Only versions of this job.")
@click.option("--status", type=click.Choice(STATUSES))
@click.option("--user", help="Only versions this user submitted (a shared store holds everyone's).")
@click.option("--host", help="Only versions submitted from this machine (its host name).")
@click.option("--limit", default=LIST_LIMIT, show_default=True, help="Show at most this many, newest first.")
@click.option("--all", "show_all", is_flag=True, help="Show every version (no --limit).")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of version records.")
def job_list(name: str | None, status: str | None, user: str | None, host: str | None, limit: int,
             show_all: bool, as_json: bool) -> None:
    """List job versions, newest first: who submitted each from where, its status and metrics."""
    # A live version's status may change on refresh, so only a terminal one is filtered (and
    # limited) by the store; a live status is filtered after the refresh.
    final = status is None or status in TERMINAL
    records = Store().list(name=name, user=user, host=host, status=status if final else None,
                           limit=None if show_all or not final else limit)
    records = [submit.refreshed(r, within=LIST_CHECK_SECONDS) for r in records]
    records = [r for r in records if not status or r["status"] == status]
    if as_json or records:
        click.echo(json.dumps([report.public(r) for r in records], default=str) if as_json
                   else report.list_table(records))
    elif name or status or user or host:
        asked = " and ".join(part for part in (f"of job {name}" if name else "", f"with status {status}" if status else "",
                                               f"by {user}" if user else "", f"from {host}" if host else "") if part)
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
    record = with_summary(submit.refreshed(artifacts.localized(Store().resolve(ref))))
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
    records = [with_summary(submit.refreshed(artifacts.localized(r))) for r in Store().versions(name)]
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
    store = Store()
    a, b = (with_summary(artifacts.localized(store.resolve(ref))) for ref in (ref_a, ref_b))
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
    if as_json and as_csv:
        raise click.UsageError("--json and --csv exclude each other")
    table = metrics.select(metrics.rows(submit.refreshed(artifacts.localized(Store().resolve(ref)))), list(wanted))
    if as_json:
        click.echo(json.dumps(table))
    elif as_csv:
        click.echo(metrics.to_csv(table), nl=False)
    else:
        columns = list(dict.fromkeys([k for k in metrics.AXES if any(k in row for row in table)]
                                     + [k for row in table for k in row]))
        click.echo(report.table(columns, ([report.clock(row[k]) if k == "time" and k in row else row.get(k) for k in columns]
                                          for row in table)) if table else "no metrics rows yet")


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
    records = [submit.refreshed(artifacts.localized(r)) for r in metrics.expand_refs(refs)]
    path, _ = plot_versions(records, out, list(wanted), x=x_axis, smooth=smooth, log_y=log_y)
    click.echo(str(path))


@job.command("export")
@click.argument("refs", nargs=-1, required=True, metavar="NAME[:V|:A..B] ...")
@click.option("--mlflow", "mlflow_uri", metavar="URI", help="MLflow tracking URI (default: tracking.mlflow_uri / FACEOPS_MLFLOW_URI).")
def job_export(refs: tuple[str, ...], mlflow_uri: str | None) -> None:
    """Log versions that already ran (or whatever a supervisor could not deliver) to MLflow as
    runs: parameters, every metrics row with its step, faceops tags and output links. Exporting
    again sends only what is missing."""
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
    try:
        for line in submit.follow_logs(artifacts.localized(Store().resolve(ref)), follow):
            click.echo(line)
    except KeyboardInterrupt:
        pass


@job.command("stop")
@click.argument("ref", metavar="NAME[:V]")
@click.option("--grace", default=DEFAULT_GRACE, show_default=True, help="Seconds between SIGTERM and SIGKILL.")
@click.option("--no-wait", is_flag=True, help="Return after sending the stop request.")
def job_stop(ref: str, grace: float, no_wait: bool) -> None:
    """Stop a running version: SIGTERM (the job may checkpoint), SIGKILL after --grace seconds."""
    store = Store()
    record = submit.stop(store.resolve(ref), grace)
    ref = f"{record['name']}:{record['version']}"
    if record.get("killed_leftovers"):
        click.echo(f"{ref} was already {record['status']}; killed its leftover processes "
                   f"(process groups {', '.join(map(str, record['killed_leftovers']))})")
    deadline = time.time() + grace + 15
    while not no_wait and record["status"] not in TERMINAL and time.time() < deadline:
        time.sleep(0.2)
        record = submit.refreshed(store.get(record["name"], record["version"]))
    click.echo(f"{ref} {record['status']}")


@job.command("publish")
@click.argument("ref", metavar="NAME[:V]")
@click.option("--into-existing", is_flag=True, help=INTO_EXISTING_HELP)
@click.option("--force", is_flag=True, help="Publish a failed or stopped version's (possibly partial) outputs; "
              "the manifest records the version's state.")
def job_publish(ref: str, into_existing: bool, force: bool) -> None:
    """Upload a finished local version's outputs again (say after an S3 outage failed the upload),
    without training again. The version's record is not changed."""
    for uri in submit.publish(Store().resolve(ref), into_existing=into_existing, force=force):
        click.echo(f"published {uri}")


@click.group(cls=FaceopsGroup)
def storage() -> None:
    """Look after object storage and local output folders."""


@storage.command("gc")
@click.argument("uri")
@click.option("--older-than", default=3600.0, show_default=True, help="Only leftovers at least this many seconds old.")
def storage_gc(uri: str, older_than: float) -> None:
    """Remove what interrupted uploads left at URI: unfinished multipart uploads (which storage
    keeps billing), staging prefixes, and local .part folders."""
    removed = store.gc(uri, older_than)
    for item in removed:
        click.echo(f"removed {item}")
    click.echo(f"{len(removed)} leftovers removed")


@click.group(cls=FaceopsGroup)
def task() -> None:
    """What each job task does and takes: inputs, outputs, hyperparameters and metrics."""


@task.command("list")
def task_list() -> None:
    """Every task a spec's `task:` may name, with its kind and what it does."""
    for name, found in sorted(registry().items()):
        click.echo(f"{name:<12} {found.kind:<11} {found.help}")


@task.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="The reference as JSON.")
def task_show(name: str, as_json: bool) -> None:
    """One task's inputs and outputs, each hyperparameter (type, default, range, help) and the
    metrics it writes: what a spec may set."""
    try:
        found = get_task(name)
    except KeyError as exc:
        raise NotFoundError(exc.args[0]) from None
    click.echo(json.dumps(describe(found), indent=2) if as_json else "\n".join([f"task {found.name}", "", *reference(found)]))


@click.command()
def doctor() -> None:
    """Check the state folder and the version store in full. That is the shared database too,
    when store.url names one: a schema upgrade that is due, the store's integrity, every version
    record and its folder, and version folders that no record owns; remove temporary bundles that
    killed submits left (over an hour old). Exit code 1 when something is wrong."""
    for leftover in remove_stale_temporaries():
        click.echo(f"removed {leftover} (a temporary bundle a killed submit left)")
    store = Store()
    problems = store.check()
    for problem in problems:
        click.echo(problem)
    click.echo(f"{store.where}: {len(problems)} problems" if problems else f"{store.where}: OK")
    if problems:
        sys.exit(1)


@click.group("store", cls=FaceopsGroup)
def store_group() -> None:
    """Look after the version store: the embedded SQLite file (default) or a team's PostgreSQL
    database (store.url / FACEOPS_STORE_URL)."""


@store_group.command("upgrade")
def store_upgrade() -> None:
    """Bring the store's schema up to this faceops (a SQLite file is copied to
    store.sqlite.bak-vN first). No other command changes the schema; they say when to run this."""
    store = Store()
    done = store.upgrade()
    for step in done:
        click.echo(f"applied {step}")
    click.echo(f"{store.where}: schema {store.schema_version()}" + ("" if done else " (up to date)"))


@store_group.command("migrate")
@click.option("--to", "url", required=True, metavar="URL", help="The team store: postgresql://USER@HOST:PORT/DB.")
@click.option("--json", "as_json", is_flag=True, help="Print what was copied as one JSON object.")
def store_migrate(url: str, as_json: bool) -> None:
    """Copy this machine's history (every finished version, and its log, metrics, small outputs
    and code bundle to store.artifacts) into the store at URL. Versions are appended after the
    ones there (renumbered where needed, parents with them); running it again copies nothing twice.
    The store at URL must be upgraded first (FACEOPS_STORE_URL=URL faceops store upgrade)."""
    done = migrate(Store(), url, say=(lambda line: None) if as_json else click.echo)
    if as_json:
        click.echo(json.dumps({"copied": dict(done.copied), "present": dict(done.present), "skipped": done.skipped}))
    else:
        click.echo(f"{len(done.copied)} versions copied, {len(done.present)} already there"
                   + (f", {len(done.skipped)} still running (skipped)" if done.skipped else ""))


@click.command()
@click.argument("source", metavar="GALLERY|NAME:V")
@click.option("--backend", type=click.Choice(deployment.BACKENDS), required=True, help="Where the endpoint runs.")
@click.option("--image", required=True, help="The faceops image to serve with (in ECR for SageMaker, SWR for ModelArts).")
@click.option("--instance-type", required=True, help="SageMaker instance type (ml.c5.xlarge) or ModelArts flavor.")
@click.option("--instance-count", default=1, show_default=True, help="Instances behind the endpoint.")
@_model_options
@click.option("--dry-run", is_flag=True, help="Build and check the requests and show them; upload and create nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the deployment (or the plan) as JSON.")
def deploy(source: str, backend: str, image: str, instance_type: str, instance_count: int, models_dir: str | None,
           det_model: str | None, rec_model: str | None, dry_run: bool, as_json: bool) -> None:
    """Deploy a gallery as a real-time endpoint on SageMaker or ModelArts. SOURCE is a gallery
    (folder or s3:// prefix) or the job version NAME:V that built one; `faceops serve` in IMAGE
    answers: SageMaker CreateModel,
    CreateEndpointConfig and CreateEndpoint (GET /ping, POST /invocations on 8080, the model
    under /opt/ml/model), or a ModelArts real-time service with its health check on 8080."""
    result = deployment.deploy(source, backend, image, instance_type, instance_count, models_dir, det_model, rec_model,
                               dry_run)
    if as_json or dry_run:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    click.echo(f"deployed gallery revision {result['gallery_revision']} as {result['name']} on {backend} "
               f"(model folder {result['artifact']})")
    for answer in result["answers"]:
        click.echo("  " + ", ".join(f"{k}={v}" for k, v in answer.items()))
