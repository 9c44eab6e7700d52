"""What every command shares: the settings and database (built once per invocation), the consoles,
progress reporting, safe file output, and the one place where errors become messages and exit codes.

Exit codes (README, "Scripting"): 0 done and every item succeeded; 1 an error (a service unreachable, a
failed scheduled retrain, or a bug: one line that says so, the traceback with `routeyard --debug`); 2 a
usage error or bad input (`UserError`, routeyard/errors.py: one line naming the field, line or setting);
3 a job finished with failed items.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property
from pathlib import Path
from typing import IO

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db.session import open_database
from routeyard.errors import InvalidInput, JobInterrupted, Unavailable, UserError
from routeyard.redact import install_log_redaction, safe_url
from routeyard.settings import Settings
from worker.dispatch import Dispatcher


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    FAILED_ITEMS = 3
    INTERRUPTED = 130  # Ctrl-C, as a shell reports a process SIGINT ended (128 + 2)


# Off a terminal (a pipe, a file, CI) nothing is cut to 80 columns: ids, models and paths come out whole.
console = Console(width=None if sys.stdout.isatty() else 100_000)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 100_000)


@dataclass
class CliContext:
    """Built once per command line by the app's callback; commands get it with `cli_context(ctx)`."""

    settings: Settings
    debug: bool = False

    @cached_property
    def db(self) -> sessionmaker[Session]:
        try:
            return open_database(self.settings.resolved_database_url)
        except ArgumentError:
            shown_url = safe_url(self.settings.resolved_database_url)
            raise InvalidInput(f"ROUTEYARD_DATABASE_URL {shown_url!r} is not a database URL; e.g. "
                               "postgresql+psycopg://user@host/db or sqlite:////path/routeyard.db") from None
        except OperationalError as exc:
            raise Unavailable(f"cannot reach the database at {safe_url(self.settings.resolved_database_url)} "
                              f"(ROUTEYARD_DATABASE_URL): {str(exc.orig).strip().splitlines()[0]}") from None

    def dispatcher(self, settings: Settings | None = None) -> Dispatcher:
        return Dispatcher(self.db, settings or self.settings)


def load_settings() -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = f"ROUTEYARD_{str(first['loc'][0]).upper()}" + "".join(f"[{part!r}]" for part in first["loc"][1:])
        err.print(f"[red]configuration error:[/] {escape(where)}: {escape(first['msg'].removeprefix('Value error, '))}")
        raise typer.Exit(ExitCode.USAGE) from None
    except SettingsError as exc:  # a setting that must be JSON is not
        field = re.search(r'field "(\w+)"', str(exc))
        name = f"ROUTEYARD_{field.group(1).upper()}" if field else "a ROUTEYARD_ setting"
        err.print(f"[red]configuration error:[/] {name} is not valid JSON; e.g. ROUTEYARD_PRICING="
                  """'{"my-model": {"input": 0.5, "output": 1.5}}' (dollars per 1M tokens)""")
        raise typer.Exit(ExitCode.USAGE) from None
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
    # Libraries' own progress bars and load reports ("Loading weights ...") are not ours to print.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        code = app(args=args, prog_name="routeyard", standalone_mode=False)
    except UserError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        sys.exit(ExitCode.USAGE)
    except JobInterrupted as exc:  # Ctrl-C on a job: one line, what is kept and how to resume
        err.print(escape(str(exc)))
        sys.exit(ExitCode.INTERRUPTED)
    except Unavailable as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        sys.exit(ExitCode.ERROR)
    except Exception as exc:
        if _is_usage_error(exc):  # typer's own: a bad option value, a missing argument, a file that is not there
            message = exc.format_message()  # type: ignore[attr-defined]  # checked by _is_usage_error
            err.print(f"[red]error:[/] {escape(message)} (see `routeyard {_command(args, app)}--help`)")
            sys.exit(ExitCode.USAGE)
        if "--debug" in args:
            raise
        err.print(f"[red]internal error:[/] {type(exc).__name__}: {escape(str(exc))}\n"
                  "This is a bug in Routeyard, not your input; rerun with `routeyard --debug ...` for the traceback "
                  "and report it.")
        sys.exit(ExitCode.ERROR)
    if code == ExitCode.INTERRUPTED:  # typer's answer to a KeyboardInterrupt elsewhere: it prints nothing
        err.print("interrupted")
    sys.exit(code if isinstance(code, int) else ExitCode.OK)


def _is_usage_error(exc: Exception) -> bool:
    """Typer (its vendored click) raises these for bad command lines; they carry their own message and code."""
    return hasattr(exc, "format_message") and getattr(exc, "exit_code", None) == ExitCode.USAGE


def _command(args: list[str], app: typer.Typer) -> str:
    """The command a bad command line named, for its --help; none (the app's own help) if it names no command."""
    words = [a for a in args if not a.startswith("-")][:1]
    known = getattr(typer.main.get_command(app), "commands", {})
    return "".join(f"{w} " for w in words if w in known)


class Stages:
    """Progress of long work: bars on a terminal; elsewhere a line to stderr every few seconds per stage (and
    when it ends), so a log shows the work is alive."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.every_s = every_s
        self.terminal = err.is_terminal
        self.bars = Progress(TextColumn("{task.description:<15}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), console=err, transient=False, disable=not self.terminal)
        self.tasks: dict[str, TaskID] = {}
        self.state: dict[str, tuple[int, int, float]] = {}  # stage -> (done, total, last logged)

    def __enter__(self) -> Stages:
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.__exit__(None, None, None)

    def set(self, name: str, done: int, total: int) -> None:
        """Stage `name` is at `done` of `total`."""
        if name not in self.tasks:
            self.tasks[name] = self.bars.add_task(name, total=total)
        self.bars.update(self.tasks[name], completed=done, total=total)
        if self.terminal:
            return
        now = time.monotonic()
        _, _, logged = self.state.get(name, (0, total, 0.0))
        self.state[name] = (done, total, logged)
        if done >= total or now - logged >= self.every_s:
            err.print(f"{name}: {done}/{total}")
            self.state[name] = (done, total, now)

    def stage(self, name: str, total: int) -> Callable[[int], None]:
        """A counter for a stage: call it with how many more are done (what runners and routers report to)."""
        done = [0]

        def advance(n: int) -> None:
            done[0] += n
            self.set(name, done[0], total)

        self.set(name, 0, total)
        return advance


@contextmanager
def atomic_output(path: Path, mode: str = "w") -> Iterator[IO[str]]:
    """Write to a temporary file beside `path` and rename it over `path` only on success: a failed command
    never truncates or half-writes a file that was there."""
    if path.is_dir():
        raise InvalidInput(f"cannot write {path}: it is a directory; name a file in it")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = tmp.open(mode, encoding="utf-8", newline="")
    except OSError as exc:
        raise InvalidInput(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with f:
            yield f
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise InvalidInput(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """For writers that take a path (matplotlib): they write the temporary path, renamed on success."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.touch()
    except OSError as exc:
        raise InvalidInput(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
