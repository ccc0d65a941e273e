"""The click group class every faceops command group uses, so each command module (beside the
package it drives) builds its group the same way and ``cli.py`` only assembles them."""
from __future__ import annotations

import errno
import inspect
import shutil
import sys
from pathlib import Path

import click

from jobs.core.errors import FaceopsError


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
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            click.echo(f"Error: {_disk_full(exc)}", err=True)
            sys.exit(2)
        except RecursionError:
            click.echo("Error: the input is nested too deeply to read (a spec, config or data file of "
                       "thousands of nested brackets); flatten it", err=True)
            sys.exit(2)


def _disk_full(exc: OSError) -> str:
    """One line for a write that found its disk full: the file and the free space of its disk."""
    if not exc.filename:
        return "no space left on device (ENOSPC); free space and run the command again"
    existing = Path(exc.filename)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    return f"no space left on device (ENOSPC) writing {exc.filename} ({free} bytes free on its disk); free space and rerun"


def _first_sentence(text: str) -> str:
    """The first sentence of a docstring's first paragraph, on one line."""
    paragraph = " ".join(inspect.cleandoc(text).split("\n\n")[0].split())
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[:end + 1]
