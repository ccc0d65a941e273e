"""The ``faceops`` command line: the root group and its command groups, each of which lives in a
``commands`` module beside the package it drives (README, Layout)."""
from __future__ import annotations

import click

from images.commands import image
from inference.commands import gallery, identify, serve
from jobs.commands import demo, deploy, doctor, job, storage, store_group, task
from jobs.core.commandline import FaceopsGroup
from train.commands import data, eval, model  # noqa: A004 - eval is the command group's name

__version__ = "0.1.0"


@click.group(cls=FaceopsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="faceops")
def main() -> None:
    """faceops: build training images, run versioned face detection and recognition training
    jobs, compare versions, and build galleries and identify faces - locally or in the cloud.

    State (job versions, logs, code bundles, config.yaml) lives in $FACEOPS_HOME (~/.faceops)."""


for command in (data, demo, deploy, doctor, eval, gallery, identify, image, job, model, serve, storage, store_group,
                task):
    main.add_command(command)

if __name__ == "__main__":
    main()
