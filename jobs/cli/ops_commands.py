"""Running the services (`api`, `worker`) and stored schedules. Tenants: jobs/cli/tenant_commands.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from db.catalog import list_schedules
from db.models import LOCAL_TENANT
from jobs.cli.context import ExitCode, cli_context, console, err
from jobs.cli.options import DATA_HELP, NO_BASE_DATA, StrongColumn, TenantOption, WeakColumn, read_outcome_data
from jobs.services.doctor import run_checks
from jobs.services.retrain import ALL_TENANTS, check_margin, tenants_to_retrain
from jobs.services.schedules import add_schedule, next_run, remove_schedule
from jobs.services.versions import SERVING
from routers.data import ROUTELLM_STRONG, ROUTELLM_WEAK
from routers.registry import DEFAULT_ROUTER
from routeyard.errors import InvalidInput

app = typer.Typer()
schedule_app = typer.Typer(help="Periodic jobs kept in the database (beat fires them).", no_args_is_help=True)
ALL_QUEUES = "routeyard.score,routeyard.complete"


@app.command()
def api(ctx: typer.Context, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the HTTP API (OpenAPI at /docs)."""
    import uvicorn  # the server, only for this command

    from jobs.api.app import create_app

    uvicorn.run(create_app(cli_context(ctx).settings), host=host, port=port, log_level="info")


@app.command()
def worker(
    ctx: typer.Context,
    queues: Annotated[str, typer.Option(help="Comma-separated: routeyard.score (routers; GPU hosts), "
                                             "routeyard.complete (model calls).")] = ALL_QUEUES,
    concurrency: Annotated[int, typer.Option(help="Tasks held at once: threads (or prefork processes).")] = 4,
    pool: Annotated[str, typer.Option(help="Celery pool: threads, prefork, solo.")] = "threads",
) -> None:
    """Start a Celery worker (distributed mode).

    Threads by default: the completion tasks a process holds share its ROUTEYARD_CONCURRENCY call slots
    (worker/slots.py), so one task's slow tail never leaves slots idle; a prefork child holds one task."""
    if cli_context(ctx).settings.embedded:
        raise InvalidInput("set ROUTEYARD_BROKER_URL (e.g. redis://localhost:6379/0) to run workers")
    from jobs.periodic import app as celery_app  # the pipeline's tasks and the periodic ones

    for handler in logging.getLogger().handlers:  # a long-running process: each line says when it happened
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    celery_app.worker_main(["worker", "-Q", queues, "-c", str(concurrency), "-P", pool, "-l", "INFO"])


@app.command(short_help="Check the database, broker, model endpoints, keys, prices and router; buys nothing.")
def check(
    ctx: typer.Context,
    router: Annotated[str, typer.Option(help="The router jobs will use (loaded to check it).")] = SERVING,
    skip_router: Annotated[bool, typer.Option("--skip-router", help="Do not load the router.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check the database, the broker, both models' endpoints, keys, models and prices (the judge's too when
    ROUTEYARD_JUDGE_* is set), and the router; exit 1 if anything is wrong. Nothing is stored and no completion
    is bought."""
    checks = run_checks(cli_context(ctx).settings, None if skip_router else router)
    if as_json:
        console.print_json(json.dumps([c.__dict__ for c in checks]))
    else:
        table = Table()
        for col in ("check", "", "detail"):
            table.add_column(col)
        for c in checks:
            table.add_row(c.name, "[green]ok[/]" if c.ok else "[red]FAIL[/]", escape(c.detail))
        console.print(table)
    if not all(c.ok for c in checks):
        raise typer.Exit(ExitCode.ERROR)


@schedule_app.command("retrain")
def schedule_retrain(
    ctx: typer.Context,
    cron: Annotated[str | None, typer.Option(help='Cron, UTC, e.g. "0 2 * * *" for 02:00 nightly.')] = None,
    every: Annotated[float | None, typer.Option(help="Or a fixed interval in seconds.")] = None,
    router: Annotated[str, typer.Option(help="Registry name of the router to train.")] = DEFAULT_ROUTER,
    data: Annotated[list[Path] | None, typer.Option(exists=True, help="Base preference data. " + DATA_HELP)
                    ] = None,
    heldout: Annotated[list[Path] | None, typer.Option(exists=True, help="Fixed held-out outcomes, as `router eval "
                                                       "--outcomes` takes them.")] = None,
    margin: Annotated[float, typer.Option(help="APGR the candidate must gain over the serving router to be "
                                            "promoted (negative: it may serve while a little worse).")] = 0.0,
    strong_column: StrongColumn = ROUTELLM_STRONG,
    weak_column: WeakColumn = ROUTELLM_WEAK,
    tenant: TenantOption = LOCAL_TENANT,
) -> None:
    """Retrain on a schedule, per tenant (with the same promotion gate as `routeyard retrain`); `--tenant all`
    retrains every tenant with feedback, each gated on its own held-out judged pairs."""
    state = cli_context(ctx)
    if heldout:
        read_outcome_data(heldout, strong_column, weak_column, outcomes_only=True)  # a bad file fails now, not at 02:00
    if tenant != ALL_TENANTS:
        tenants_to_retrain(state.db, tenant)  # an unknown tenant fails now
    check_margin(margin)
    if not data:
        err.print(f"[yellow]note:[/] {NO_BASE_DATA}")
    args = {"router": router, "data": [str(p.resolve()) for p in data or []],
            "heldout": [str(p.resolve()) for p in heldout or []], "margin": margin,
            "strong_column": strong_column, "weak_column": weak_column, "tenant": tenant}
    schedule_id = add_schedule(state.db, "retrain", args, cron, every)
    console.print(f"schedule {schedule_id}: retrain {router} for {tenant} {cron or f'every {every:g}s'}")
    if state.settings.embedded:
        console.print("no broker configured: run `routeyard schedule run-due` from cron, or start beat + a worker")


@schedule_app.command("list")
def schedule_list(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Stored schedules, when they run next and what they did last."""
    with cli_context(ctx).db() as session:
        rows = list_schedules(session)
    if as_json:
        console.print_json(json.dumps([{"id": r.id, "task": r.task, "cron": r.cron, "every_s": r.every_s,
                                        "args": r.args, "enabled": r.enabled, "next_run": next_run(r).isoformat(),
                                        "last_run": r.last_run_at.isoformat() if r.last_run_at else None,
                                        "last_result": r.last_result} for r in rows]))
        return
    table = Table()
    for col in ("id", "task", "tenant", "base data", "when", "next run (UTC)", "last run", "last result"):
        table.add_column(col)
    for row in rows:
        args = row.args or {}
        table.add_row(str(row.id), row.task, str(args.get("tenant", "-")),
                      ", ".join(args.get("data") or []) or "none (feedback alone)",
                      row.cron or f"every {row.every_s:g}s",
                      next_run(row).strftime("%Y-%m-%d %H:%M:%S"),
                      row.last_run_at.strftime("%Y-%m-%d %H:%M:%S") if row.last_run_at else "-", row.last_result or "")
    console.print(table)


@schedule_app.command("remove")
def schedule_remove(ctx: typer.Context, schedule_id: int) -> None:
    """Remove a stored schedule (its past results go with it)."""
    remove_schedule(cli_context(ctx).db, schedule_id)
    console.print(f"schedule {schedule_id} removed")


@schedule_app.command("run-due")
def schedule_run_due(ctx: typer.Context) -> None:
    """Run the schedules that are due, here (the embedded default has no beat: call this from cron)."""
    from jobs.periodic import run_due_schedules  # loads the Celery app; only this command needs it

    state = cli_context(ctx)
    ran = run_due_schedules(state.db, state.settings)
    for schedule_id, message in ran:
        console.print(f"schedule {schedule_id}: {message}")
    if not ran:  # cron's log should say the call happened
        with state.db() as session:
            upcoming = sorted(next_run(r) for r in list_schedules(session) if r.enabled)
        console.print("nothing due" + (f"; next run at {upcoming[0]:%Y-%m-%d %H:%M:%S} UTC" if upcoming
                                       else ": no schedules (`routeyard schedule retrain`)"))
    if any(message.startswith("failed") for _, message in ran):
        raise typer.Exit(ExitCode.ERROR)  # cron and CI see that a scheduled retrain failed
