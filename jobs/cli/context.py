"""What every command shares: the settings and database (built once per invocation), the consoles, progress
bars, and the one place where errors become messages.

A `UserError` (routeyard/errors.py) is printed as one line and exits 2. Anything else is a bug: one line
that says so and exits 1, or the full traceback with `routeyard --debug ...`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy.orm import Session, sessionmaker

from db.session import open_database
from routeyard.errors import UserError
from routeyard.redact import install_log_redaction
from routeyard.settings import Settings
from worker.dispatch import Dispatcher

console = Console()
err = Console(stderr=True)


@dataclass
class CliContext:
    """Built once per command line by the app's callback; commands get it with `cli_context()`."""

    settings: Settings
    debug: bool = False

    @cached_property
    def db(self) -> sessionmaker[Session]:
        return open_database(self.settings.resolved_database_url)

    def dispatcher(self, settings: Settings | None = None) -> Dispatcher:
        return Dispatcher(self.db, settings or self.settings)


def load_settings() -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        err.print(f"[red]configuration error:[/] ROUTEYARD_{str(first['loc'][0]).upper()}: {escape(first['msg'])}")
        raise typer.Exit(2) from None
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    install_log_redaction(settings.secrets())
    return settings


def cli_context(ctx: typer.Context) -> CliContext:
    """The invocation's context, built once by the app's callback (or here, for a command invoked alone)."""
    found = ctx.find_object(CliContext)
    if found is None:
        found = CliContext(load_settings())
        ctx.obj = found
    return found


def run_app(app: typer.Typer, argv: list[str] | None = None) -> None:
    """Run the CLI, turning errors into messages: a user's mistake is one line, a bug says it is one."""
    args = sys.argv[1:] if argv is None else argv
    try:
        app(args=args, prog_name="routeyard")
    except UserError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        sys.exit(2)
    except Exception as exc:
        if "--debug" in args:
            raise
        err.print(f"[red]internal error:[/] {type(exc).__name__}: {escape(str(exc))}\n"
                  "This is a bug in Routeyard, not your input; rerun with `routeyard --debug ...` for the traceback "
                  "and report it.")
        sys.exit(1)


class RichProgress:
    """One bar per stage of a run."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def stage(self, name: str, total: int) -> Callable[[int], None]:
        task = self.progress.add_task(name, total=total)
        return lambda n: self.progress.advance(task, n)


def bars() -> Progress:
    return Progress(TextColumn("{task.description:<15}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=False, disable=not err.is_terminal)
