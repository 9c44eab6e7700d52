"""`routeyard`: submit batches, follow them, read results and spend; train routers; run the services."""

from __future__ import annotations

from typing import Annotated

import typer

from jobs.cli import job_commands, judge_commands, ops_commands, report_commands, router_commands, tenant_commands
from jobs.cli.context import CliContext, load_settings, run_app
from routeyard import __version__

app = typer.Typer(help="Route batches of LLM prompts between a strong and a weak model (RouteLLM).",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)


def _print_version(value: bool) -> None:
    if value:
        print(f"routeyard {__version__}")
        raise typer.Exit()


@app.callback()
def _context(ctx: typer.Context,
             debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of internal errors.")] = False,
             version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                                   help="Print the version and exit.")] = False,
             ) -> None:
    ctx.obj = CliContext(load_settings(), debug=debug)


for group in (job_commands.app, judge_commands.app, router_commands.top, ops_commands.app):
    for command in group.registered_commands:
        app.registered_commands.append(command)
app.add_typer(router_commands.app, name="router")
app.add_typer(ops_commands.schedule_app, name="schedule")
app.add_typer(tenant_commands.app, name="tenant")
app.add_typer(report_commands.app, name="report")


def main() -> None:
    run_app(app)
