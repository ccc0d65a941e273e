"""Messages in the user's terms: a job's entry point only sees its staged copies of the inputs
(``<version folder>/input/data/<channel>``, or ``/opt/ml/input/data/<channel>`` in a container),
so its errors name those; before a reason reaches the record, each staged path becomes the URI
the spec gave for that input."""
from __future__ import annotations

from pathlib import Path

from jobs.core.contract import CONTAINER_ROOT, Contract


def as_given(text: str, root: Path, inputs: dict[str, str]) -> str:
    """``text`` with the staged input paths under ``root`` (and under the container root)
    replaced by the input URIs. A file input is staged as ``<channel>/<its name>``, so that longer
    path is replaced first."""
    for contract in (Contract(root), Contract(CONTAINER_ROOT)):
        for channel, uri in inputs.items():
            staged = contract.channel_dir(channel)
            given = uri.rstrip("/")
            text = text.replace(str(staged / given.rsplit("/", 1)[-1]), given).replace(str(staged), given)
    return text
