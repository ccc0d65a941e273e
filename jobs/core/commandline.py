"""The click group class every faceops command group uses, so each command module (beside the
package it drives) builds its group the same way and ``cli.py`` only assembles them."""
from __future__ import annotations

import inspect
import sys

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


def _first_sentence(text: str) -> str:
    """The first sentence of a docstring's first paragraph, on one line."""
    paragraph = " ".join(inspect.cleandoc(text).split("\n\n")[0].split())
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[:end + 1]
