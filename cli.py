"""The ``faceops`` command line: the root group and its command groups, each of which lives in a
``commands`` module beside the package it drives (README, Layout)."""
from __future__ import annotations

import importlib

import click

from jobs.core.commandline import FaceopsGroup

__version__ = "0.1.0"

# name -> (module, attribute, the line `faceops --help` shows). The root help lists the groups from
# here and a group's module is imported only when that group runs (click's lazy-loading pattern):
# importing every command module costs `faceops --help` about 100 ms. tests/test_cli.py checks each
# line against the group's own docstring.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "data": ("train.commands", "data", "Pack, inspect and stream RecordIO face datasets."),
    "demo": ("jobs.commands", "demo", "Run the whole local pipeline offline, one printed faceops command per step: "
             "a custom job in two versions and their diff, then (with the pretrained models extra) demo photos -> "
             "RecordIO -> two versions of a trained recognizer -> diff -> gallery -> identification report."),
    "deploy": ("jobs.commands", "deploy", "Deploy a gallery as a real-time endpoint on SageMaker or ModelArts."),
    "doctor": ("jobs.commands", "doctor", "Check the state folder and the version store in full."),
    "eval": ("train.commands", "eval", "Measure models with the published protocols."),
    "gallery": ("inference.commands", "gallery", "Build and update gallery databases of known people."),
    "identify": ("inference.commands", "identify", "Identify every face in IMAGES (a folder, s3:// prefix, .txt "
                 "list of paths or .csv) against a gallery: box, landmarks, detection score and the top-k people "
                 "with cosine similarity, or 'unknown' below the threshold."),
    "image": ("images.commands", "image", "Build, push and list training images."),
    "job": ("jobs.commands", "job", "Submit, inspect, compare, rerun and stop versioned jobs."),
    "model": ("train.commands", "model", "Bring published insightface models into faceops."),
    "serve": ("inference.commands", "serve", "Identify faces online, over HTTP."),
    "storage": ("jobs.commands", "storage", "Look after object storage and local output folders."),
    "store": ("jobs.commands", "store_group", "Look after the version store: the embedded SQLite file (default) or "
              "a team's PostgreSQL database (store.url / FACEOPS_STORE_URL)."),
    "task": ("jobs.commands", "task", "What each job task does and takes: inputs, outputs, hyperparameters and "
             "metrics."),
}


class LazyRoot(FaceopsGroup):
    """The root group: lists its groups from :data:`COMMANDS` and imports one only to run it."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attribute, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][2]) for name in self.list_commands(ctx)])


@click.group(cls=LazyRoot, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="faceops")
def main() -> None:
    """faceops: build training images, run versioned face detection and recognition training
    jobs, compare versions, and build galleries and identify faces - locally or in the cloud.

    State (job versions, logs, code bundles, config.yaml) lives in $FACEOPS_HOME (~/.faceops)."""


if __name__ == "__main__":
    main()
