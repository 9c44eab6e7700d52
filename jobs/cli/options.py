"""Options several commands share, and the one reader of outcome data for the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from jobs.cli.context import err
from routers.data import DataRead, Outcome, pgr_caveats, read_data
from routers.rows import Preference
from routeyard.errors import InvalidInput

StrongFraction = Annotated[float, typer.Option("--strong-fraction", "-s",
                                               help="Share of this batch's items sent to the strong model, 0 to 1.")]
StrongColumn = Annotated[str, typer.Option("--strong-column", help="The strong model's quality column in outcome "
                                           "files (a column named `strong` is taken when this one is absent).")]
WeakColumn = Annotated[str, typer.Option("--weak-column", help="The weak model's quality column in outcome files "
                                         "(a column named `weak` is taken when this one is absent).")]
TenantOption = Annotated[str, typer.Option("--tenant", help="Whose router: a tenant's name or id (default: local, "
                                                          "the CLI's own), `all` (retrain: every tenant with "
                                                          "feedback) or `global` (the default for the others).")]
NO_BASE_DATA = ("no --data: each candidate learns from the tenant's feedback alone, with no base rows for it to "
                "correct; give the base outcome data (what the serving router was trained on) with --data")
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


# Below these a trained router's ranking is mostly noise: the learning-curve benchmark starts at 100 rows of a
# domain, and a router needs examples of both outcomes to learn which prompts need the strong model.
MIN_TRAIN_ROWS = 50
MIN_ROWS_OF_EACH = 10


def warn_small_training(rows: list[Preference]) -> None:
    """A warning on stderr (training goes on) when the data is too small to learn a reliable router."""
    strong = sum(1 for r in rows if r.label > 0.5)
    weak = sum(1 for r in rows if r.label < 0.5)
    problems = []
    if len(rows) < MIN_TRAIN_ROWS:
        problems.append(f"only {len(rows)} preference rows (at least {MIN_TRAIN_ROWS} advised)")
    if min(strong, weak) < MIN_ROWS_OF_EACH:
        problems.append(f"{strong} rows where the strong model wins and {weak} where the weak one does (at least "
                        f"{MIN_ROWS_OF_EACH} of each advised)")
    if problems:
        err.print(f"[yellow]warning:[/] {'; '.join(problems)}: the router will be unreliable (its scores are "
                  "close to noise); train on more outcome data")


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
