"""Options several commands share, and the one reader of outcome data for the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from jobs.cli.context import err
from routers.data import DataRead, Outcome, pgr_caveats, read_data
from routeyard.errors import InvalidInput

StrongFraction = Annotated[float, typer.Option("--strong-fraction", "-s", min=0.0, max=1.0,
                                               help="Share of this batch's items sent to the strong model.")]
StrongColumn = Annotated[str, typer.Option("--strong-column", help="The strong model's quality column in outcome "
                                           "files (a column named `strong` is taken when this one is absent).")]
WeakColumn = Annotated[str, typer.Option("--weak-column", help="The weak model's quality column in outcome files "
                                         "(a column named `weak` is taken when this one is absent).")]
TenantOption = Annotated[str, typer.Option("--tenant", help="Whose router: a tenant's name or id (default: local, "
                                                          "the CLI's own), `all` (retrain: every tenant with "
                                                          "feedback) or `global` (the default for the others).")]
DATA_HELP = ("Files or directories (any layout, read recursively) of outcome CSV/TSV/JSONL/JSON, arena battles; "
             "contaminated_prompts.jsonl files found there are dropped.")


def read_outcome_data(paths: list[Path], strong_column: str, weak_column: str, outcomes_only: bool = False,
                      contaminated: list[Path] | None = None) -> DataRead:
    """One reader for every command that takes outcome data; notes on what it left out go to stderr."""
    found = read_data(paths, strong_column, weak_column, contaminated or [], outcomes_only)
    for note in found.notes():
        err.print(f"[yellow]note:[/] {escape(note)}")
    return found


def warn_pgr(outcomes: list[Outcome], what: str) -> None:
    for caveat in pgr_caveats(outcomes):
        err.print(f"[yellow]warning ({escape(what)}):[/] {caveat}")


def parse_params(items: list[str]) -> dict[str, object]:
    """`key=value` pairs; a value is read as JSON (numbers, true/false, null) and otherwise kept as text."""
    params: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"--param {item!r}: expected key=value, e.g. gamma=100")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params
