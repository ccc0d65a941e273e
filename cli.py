"""The ``faceops`` command line. Thin on purpose: it parses arguments, calls the packages and
prints. Heavy libraries (mxnet, boto3, docker, onnxruntime, faiss) are imported inside the
commands that need them so ``faceops --help`` stays fast."""
from __future__ import annotations

import sys

import click

from jobs.errors import FaceopsError

__version__ = "0.1.0"


class FaceopsGroup(click.Group):
    """A click group that turns :class:`FaceopsError` into a one-line message and its exit code,
    so users see what to fix instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FaceopsError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=FaceopsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="faceops")
def main() -> None:
    """faceops: build training images, run versioned face detection and recognition training
    jobs, compare versions, and build galleries and identify faces - locally or in the cloud.

    State (job versions, logs, code bundles, config.yaml) lives in $FACEOPS_HOME (~/.faceops)."""


@main.group(cls=FaceopsGroup)
def job() -> None:
    """Submit, inspect, compare, rerun and stop versioned jobs."""


@main.group(cls=FaceopsGroup)
def data() -> None:
    """Pack, inspect and stream RecordIO face datasets."""


@main.group(cls=FaceopsGroup)
def image() -> None:
    """Build, push and list training images."""


@main.group(cls=FaceopsGroup)
def gallery() -> None:
    """Build and update gallery databases of known people."""


if __name__ == "__main__":
    main()
