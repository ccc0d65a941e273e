"""The errors a user can act on. The CLI prints their message (never a traceback) and exits with
``exit_code``: 2 for usage, spec and input problems (click's convention), 1 for a failed job.
Messages must already be safe to print: no keys, passwords or tokens."""
from __future__ import annotations


class FaceopsError(Exception):
    """Base class: a problem the user can fix, explained in the message."""

    exit_code = 2


class SpecError(FaceopsError):
    """A job spec or a ``--set`` value is invalid; the message names file, line and key path."""


class StorageError(FaceopsError):
    """An object-storage or file location cannot be read or written."""


class NotFoundError(FaceopsError):
    """A job, version, file or object that was asked for does not exist."""


class DataError(FaceopsError):
    """Input data (RecordIO, images, label files, galleries) is malformed."""


class JobFailed(FaceopsError):
    """A job ended in the failed or stopped state."""

    exit_code = 1
