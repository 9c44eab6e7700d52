"""One place maps errors to what a CLI user sees: a mistake is one line (exit 2), a bug says it is one (exit 1)
and shows its traceback only with --debug."""

from __future__ import annotations

from typing import Annotated

import pytest
import typer

from jobs.cli.context import run_app
from routeyard.errors import Conflict, InvalidInput, NotFound


def make_app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _main(debug: Annotated[bool, typer.Option("--debug")] = False) -> None:
        pass

    @app.command()
    def fail(kind: str) -> None:
        raise {"invalid": InvalidInput("line 3: field 'prompt' is empty"), "missing": NotFound("no job 'x'"),
               "conflict": Conflict("key reused"), "bug": KeyError("oops")}[kind]

    return app


@pytest.mark.parametrize(("kind", "message"), [("invalid", "line 3: field 'prompt' is empty"),
                                               ("missing", "no job 'x'"), ("conflict", "key reused")])
def test_a_user_error_is_one_line_and_exit_2(kind, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_app(make_app(), ["fail", kind])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.strip() == f"error: {message}" and "Traceback" not in err


def test_a_bug_says_so_without_a_traceback_and_shows_it_with_debug(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_app(make_app(), ["fail", "bug"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert "internal error: KeyError" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(KeyError, match="oops"):
        run_app(make_app(), ["--debug", "fail", "bug"])


def test_a_value_error_from_a_bug_is_not_passed_off_as_a_user_error(capsys):
    app = make_app()

    @app.command()
    def divide() -> None:
        raise ValueError("math domain error")

    with pytest.raises(SystemExit) as exit_info:
        run_app(app, ["divide"])
    assert exit_info.value.code == 1 and "internal error" in capsys.readouterr().err
