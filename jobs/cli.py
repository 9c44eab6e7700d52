"""`routeyard`: submit batches, follow them, read results and spend; train routers; run the demo."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from pydantic import SecretStr, ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from db import queries
from db.session import open_database
from jobs.input_formats import detect_format
from jobs.query import export_results, job_status
from jobs.runner import RunSummary, enqueue, run_embedded
from jobs.spend import SpendReport, spend_report
from jobs.submit import JobOptions, SubmitError, SubmitResult, submit_job
from routers.data import ROUTELLM_STRONG, ROUTELLM_WEAK, DataRead, Outcome, pgr_caveats, read_data
from routers.registry import DEFAULT_ROUTER
from routeyard.redact import install_log_redaction, safe_url
from routeyard.settings import Settings
from worker.pricing import UnknownPriceError

app = typer.Typer(help="Route batches of LLM prompts between a strong and a weak model (RouteLLM).",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
router_app = typer.Typer(help="Train, score with and list routers.", no_args_is_help=True)
app.add_typer(router_app, name="router")
console = Console()
err = Console(stderr=True)


def _settings() -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        err.print(f"[red]configuration error:[/] ROUTEYARD_{str(first['loc'][0]).upper()}: {first['msg']}")
        raise typer.Exit(2) from None
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    install_log_redaction(settings.secrets())
    return settings


@contextmanager
def _user_errors() -> Iterator[None]:
    """Errors a user can fix are printed as one clear line, not a traceback."""
    try:
        yield
    except (SubmitError, UnknownPriceError, queries.JobNotFound, FileNotFoundError, ValueError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None


class RichProgress:
    """One bar per stage of a run."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def stage(self, name: str, total: int) -> Callable[[int], None]:
        task = self.progress.add_task(name, total=total)
        return lambda n: self.progress.advance(task, n)


def _bars() -> Progress:
    return Progress(TextColumn("{task.description:<15}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=False, disable=not err.is_terminal)


def _run(settings: Settings, job_id: str, retry_failed: bool = False) -> RunSummary:
    sf = open_database(settings.resolved_database_url)
    with _bars() as bars:
        return run_embedded(sf, settings, job_id, retry_failed=retry_failed, progress=RichProgress(bars))


def _print_submit(result: SubmitResult) -> None:
    verb = "submitted" if result.created else "already submitted (same idempotency key)"
    console.print(f"job [bold]{result.job_id}[/] {verb}: {result.n_items} items, {len(result.rejected)} rejected")
    for line_no, reason in result.rejected[:20]:
        err.print(f"  [yellow]line {line_no}:[/] {reason}")
    if len(result.rejected) > 20:
        err.print(f"  ... and {len(result.rejected) - 20} more (routeyard status {result.job_id})")


def _print_summary(summary: RunSummary) -> None:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary.counts.items()))
    console.print(f"job [bold]{summary.job_id}[/] {summary.status}: {counts}")


def _print_spend(report: SpendReport) -> None:
    table = Table(title=f"Spend{' for ' + report.job_id if report.job_id else ' (all jobs)'}")
    for col in ("tier", "model", "calls", "prompt tokens", "completion tokens", "cost $"):
        table.add_column(col, justify="right" if col not in ("tier", "model") else "left")
    for m in report.models:
        table.add_row(m.tier, m.model, str(m.calls), f"{m.prompt_tokens:,}", f"{m.completion_tokens:,}",
                      f"{m.cost_usd:.4f}")
    table.add_row("total", "", str(report.calls), "", "", f"{report.cost_usd:.4f}", style="bold")
    console.print(table)
    console.print(f"all-strong estimate ${report.all_strong_cost_usd:.4f}; saving ${report.saving_usd:.4f} "
                  f"({report.saving_pct:.1f}%) with {100 * report.strong_share:.1f}% of calls strong")


StrongFraction = Annotated[float, typer.Option("--strong-fraction", "-s", min=0.0, max=1.0,
                                               help="Share of this batch's items sent to the strong model.")]
StrongColumn = Annotated[str, typer.Option("--strong-column", help="The strong model's quality column in outcome "
                                           "files (a column named `strong` is taken when this one is absent).")]
WeakColumn = Annotated[str, typer.Option("--weak-column", help="The weak model's quality column in outcome files "
                                         "(a column named `weak` is taken when this one is absent).")]
DATA_HELP = ("Files or directories (any layout, read recursively) of outcome CSV/TSV/JSONL/JSON, arena battles; "
             "contaminated_prompts.jsonl files found there are dropped.")


def _read_data(paths: list[Path], strong_column: str, weak_column: str, outcomes_only: bool = False,
               contaminated: list[Path] | None = None) -> DataRead:
    """One reader for every command that takes outcome data; notes on what it left out go to stderr."""
    found = read_data(paths, strong_column, weak_column, contaminated or [], outcomes_only)
    for note in found.notes():
        err.print(f"[yellow]note:[/] {escape(note)}")
    return found


def _warn_pgr(outcomes: list[Outcome], what: str) -> None:
    for caveat in pgr_caveats(outcomes):
        err.print(f"[yellow]warning ({escape(what)}):[/] {caveat}")


@app.command()
def submit(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSONL (OpenAI Batch or plain) or CSV.")],
    strong_fraction: StrongFraction = 0.3,
    router: Annotated[str | None, typer.Option(help="Registry name, directory or hub id.")] = None,
    key: Annotated[str | None, typer.Option("--key", help="Idempotency key: resubmitting is a no-op.")] = None,
    tag: Annotated[str | None, typer.Option(help="A label for spend reports.")] = None,
    budget_usd: Annotated[float | None, typer.Option("--budget-usd", min=0.0,
                                                     help="Spend at most this: strong calls go to the highest-"
                                                          "scoring items that fit (instead of --strong-fraction).")
                          ] = None,
    target_pgr: Annotated[float | None, typer.Option("--target-pgr", help="Reach this share of the strong "
                                                     "model's quality gain (from the router's held-out curve).")
                          ] = None,
    shadow: Annotated[float | None, typer.Option("--shadow", min=0.0, max=1.0,
                                                 help="Also send this share of weak items to the strong model "
                                                      "(both answers kept, for feedback).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="auto, jsonl or csv.")] = "auto",
    detach: Annotated[bool, typer.Option(help="Store the job and return; run it later with `routeyard run`.")] = False,
    wait: Annotated[bool, typer.Option(help="Distributed mode: follow the job until it ends.")] = False,
) -> None:
    """Submit a batch: the embedded default runs it here to the end; with a broker, workers run it."""
    settings = _settings()
    with _user_errors():
        sf = open_database(settings.resolved_database_url)
        options = JobOptions(router=router or settings.default_router, strong_fraction=strong_fraction,
                             idempotency_key=key, tag=tag, budget_usd=budget_usd, target_pgr=target_pgr,
                             shadow_fraction=shadow)
        with file.open("rb") as source:
            result = submit_job(sf, settings, source, detect_format(file, fmt), options, source_name=file.name)
        _print_submit(result)
        if detach:
            return
        if settings.embedded:
            _print_summary(_run(settings, result.job_id))
        elif result.created:
            enqueue(result.job_id)
            console.print(f"queued on the workers ({settings.broker_url and safe_url(settings.broker_url)})")
            if wait:
                _print_summary(_follow(sf, result.job_id))


def _follow(sf, job_id: str) -> RunSummary:  # noqa: ANN001
    """Poll a job run by workers, with a progress bar, until it ends."""
    import time

    with _bars() as bars:
        task = None
        while True:
            with sf() as session:
                job = queries.get_job(session, job_id)
                counts = queries.status_counts(session, job_id)
            done = sum(counts.get(k, 0) for k in ("succeeded", "failed", "cancelled"))
            if task is None:
                task = bars.add_task("calling models", total=job.n_items)
            bars.update(task, completed=done)
            if job.status in ("completed", "cancelled"):
                return RunSummary(job_id, job.status, counts)
            time.sleep(0.5)


@app.command()
def run(job_id: str, retry_failed: Annotated[bool, typer.Option(help="Call failed items again.")] = False) -> None:
    """Run a stored job from wherever it stopped (embedded), or enqueue it again (distributed)."""
    settings = _settings()
    with _user_errors():
        if settings.embedded:
            _print_summary(_run(settings, job_id, retry_failed))
            return
        sf = open_database(settings.resolved_database_url)
        if retry_failed:
            with sf() as session:
                queries.requeue(session, job_id, ["failed"])
                session.commit()
        enqueue(job_id)
        console.print(f"job {job_id} queued on the workers")


@app.command()
def cancel(job_id: str) -> None:
    """Cancel a job: items not yet called are not called."""
    settings = _settings()
    with _user_errors():
        sf = open_database(settings.resolved_database_url)
        with sf() as session:
            n = queries.cancel_job(session, queries.get_job(session, job_id, lock=True))
            session.commit()
    console.print(f"job {job_id} cancelled; {n} items will not be called")


@app.command()
def resume(job_id: str, retry_failed: Annotated[bool, typer.Option(help="Call failed items again.")] = False) -> None:
    """Resume an interrupted job: finished items are not called again, spend is not counted twice."""
    run(job_id, retry_failed)


@app.command()
def status(job_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """A job's state, item counts and rejected lines."""
    settings = _settings()
    with _user_errors():
        sf = open_database(settings.resolved_database_url)
        with sf() as session:
            view = job_status(session, job_id)
    if as_json:
        console.print_json(json.dumps(view.to_dict()))
        return
    console.print(f"job [bold]{view.id}[/] {view.status} ({view.source or ''})")
    console.print(f"  router {view.router} version {view.router_version or '-'}; strong fraction "
                  f"{view.strong_fraction:.2f}, threshold {view.threshold if view.threshold is not None else '-'}")
    console.print(f"  models: strong {view.strong_model}, weak {view.weak_model}")
    console.print("  items: " + ", ".join(f"{k} {v}" for k, v in sorted(view.counts.items()))
                  + f"; rejected lines {view.n_rejected}")
    for line_no, reason in view.rejected[:20]:
        console.print(f"  [yellow]line {line_no}:[/] {reason}")


@app.command("jobs")
def list_jobs(limit: int = 20) -> None:
    """The most recent jobs."""
    settings = _settings()
    sf = open_database(settings.resolved_database_url)
    table = Table()
    for col in ("job", "status", "items", "rejected", "strong fraction", "tag", "created"):
        table.add_column(col)
    with sf() as session:
        for job in queries.list_jobs(session, limit):
            table.add_row(job.id, job.status, str(job.n_items), str(job.n_rejected), f"{job.strong_fraction:.2f}",
                          job.tag or "", job.created_at.strftime("%Y-%m-%d %H:%M"))
    console.print(table)


@app.command()
def results(
    job_id: str,
    fmt: Annotated[str, typer.Option("--format", help="jsonl, csv, or openai (Batch API output).")] = "jsonl",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write (default stdout).")] = None,
) -> None:
    """Export a job's results in input order."""
    if fmt not in ("jsonl", "csv", "openai"):
        err.print(f"[red]error:[/] --format must be jsonl, csv or openai, got {fmt!r}")
        raise typer.Exit(2)
    settings = _settings()
    with _user_errors():
        sf = open_database(settings.resolved_database_url)
        with sf() as session:
            out = output.open("w", encoding="utf-8", newline="") if output else sys.stdout
            try:
                for line in export_results(session, job_id, fmt):  # type: ignore[arg-type]
                    out.write(line)
            finally:
                if output:
                    out.close()


@app.command()
def spend(
    job_id: Annotated[str | None, typer.Argument(help="One job; all jobs when left out.")] = None,
    by: Annotated[str | None, typer.Option(help="day or week: spend over time instead of one total.")] = None,
    tag: Annotated[str | None, typer.Option(help="Only jobs with this tag (with --by).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="With --by: one CSV row per period.")] = False,
    plot: Annotated[Path | None, typer.Option(help="With --by: a PNG of cost and router quality over time.")] = None,
) -> None:
    """Calls, tokens and dollars per model, and the saving against an all-strong run; or the same over time."""
    settings = _settings()
    with _user_errors():
        sf = open_database(settings.resolved_database_url)
        with sf() as session:
            if by is None:
                report = spend_report(session, settings, job_id)
            else:
                from jobs.retrain import list_versions
                from jobs.spend import spend_over_time

                periods = spend_over_time(session, settings, by, tag)
                versions = list_versions(session)
    if by is None:
        if as_json:
            console.print_json(json.dumps(report.to_dict()))
        else:
            _print_spend(report)
        return
    if plot:
        from jobs.report_plot import plot_cost_and_quality

        plot_cost_and_quality(periods, versions, plot)
        err.print(f"wrote {plot}")
    if as_json:
        console.print_json(json.dumps([p.__dict__ for p in periods]))
    elif as_csv:
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(["period", "calls", "strong_calls", "cost_usd", "strong_cost_usd", "weak_cost_usd",
                         "all_strong_cost_usd", "saving_usd"])
        for p in periods:
            writer.writerow([p.period, p.calls, p.strong_calls, f"{p.cost_usd:.6f}", f"{p.strong_cost_usd:.6f}",
                             f"{p.weak_cost_usd:.6f}", f"{p.all_strong_cost_usd:.6f}", f"{p.saving_usd:.6f}"])
    else:
        table = Table(title=f"Spend per {by}" + (f" (tag {tag})" if tag else ""))
        for col in ("period", "calls", "strong %", "cost $", "all-strong $", "saving $", "by tag"):
            table.add_column(col)
        for p in periods:
            table.add_row(p.period, str(p.calls), f"{100 * p.strong_calls / p.calls:.0f}", f"{p.cost_usd:.4f}",
                          f"{p.all_strong_cost_usd:.4f}", f"{p.saving_usd:.4f}",
                          ", ".join(f"{t or '-'} {c:.4f}" for t, c in p.by_tag.items()))
        console.print(table)


@app.command()
def demo(
    n: Annotated[int, typer.Option(help="Prompts in the demo batch.", min=1)] = 200,
    strong_fraction: StrongFraction = 0.3,
    router: Annotated[str | None, typer.Option(help="Registry name or directory.")] = None,
    latency_scale: Annotated[float, typer.Option(help="Scale the loopback server's latency.")] = 1.0,
) -> None:
    """A whole routed job: a made-up batch, the shipped MF router, and a loopback OpenAI-compatible server
    (or your real endpoints, when ROUTEYARD_STRONG_BASE_URL / ROUTEYARD_WEAK_BASE_URL are set)."""
    from jobs.demo_data import write_demo_batch
    from jobs.loopback_llm import DEMO_MODELS, LoopbackConfig, LoopbackServer

    settings = _settings()
    server = None
    if not (settings.strong_base_url or settings.weak_base_url):
        server = LoopbackServer(LoopbackConfig(models=DEMO_MODELS, latency_scale=latency_scale)).start()
        console.print(f"no endpoints configured: serving both models from the loopback server at {server.base_url}")
        settings = settings.model_copy(update={
            "strong_base_url": server.base_url, "weak_base_url": server.base_url,
            "strong_api_key": SecretStr("loopback"), "weak_api_key": SecretStr("loopback"),
            "strong_model": "gpt-4-1106-preview", "weak_model": "mixtral-8x7b-instruct"})
    try:
        with _user_errors():
            batch = write_demo_batch(settings.home / "demo" / "batch.jsonl", n)
            console.print(f"database {settings.resolved_database_url}; batch {batch}")
            sf = open_database(settings.resolved_database_url)
            options = JobOptions(router=router or settings.default_router, strong_fraction=strong_fraction,
                                 tag="demo")
            with batch.open("rb") as source:
                result = submit_job(sf, settings, source, "jsonl", options, source_name=batch.name)
            _print_submit(result)
            _print_summary(_run(settings, result.job_id))
            with sf() as session:
                _print_spend(spend_report(session, settings, result.job_id))
                _print_examples(session, result.job_id)
            console.print(f"next: routeyard results {result.job_id} --format openai")
    finally:
        if server:
            server.stop()


def _print_examples(session, job_id: str) -> None:  # noqa: ANN001
    items = sorted(queries.iter_items(session, job_id), key=lambda i: -(i.score or 0))
    table = Table(title="Highest and lowest router scores")
    for col in ("score", "model", "prompt"):
        table.add_column(col)
    for item in items[:3] + items[-3:]:
        table.add_row(f"{item.score:.3f}", item.model or "", item.prompt[:90])
    console.print(table)


@app.command()
def feedback(
    job_id: str,
    custom_id: Annotated[str, typer.Argument(help="The item's id (custom_id) in the job.")],
    prefer: Annotated[str | None, typer.Option(help="strong, weak or tie: which answer was better.")] = None,
    rating: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Quality of the answer, 0..1.")] = None,
    thumbs: Annotated[str | None, typer.Option(help="up or down.")] = None,
) -> None:
    """Judge a stored answer; judgements become preference rows for retraining."""
    from jobs.feedback import PREFER, FeedbackIn, record_feedback

    given = [(k, v) for k, v in (("prefer", prefer), ("rating", rating), ("thumbs", thumbs)) if v is not None]
    if len(given) != 1:
        err.print("[red]error:[/] give exactly one of --prefer, --rating, --thumbs")
        raise typer.Exit(2)
    kind, raw = given[0]
    settings = _settings()
    with _user_errors():
        if kind == "prefer" and raw not in PREFER:
            raise ValueError(f"--prefer must be strong, weak or tie, got {raw!r}")
        if kind == "thumbs" and raw not in ("up", "down"):
            raise ValueError(f"--thumbs must be up or down, got {raw!r}")
        value = PREFER[raw] if kind == "prefer" else (1.0 if raw == "up" else 0.0) if kind == "thumbs" else raw
        record_feedback(open_database(settings.resolved_database_url), FeedbackIn(job_id, custom_id, kind, value))
    console.print(f"recorded {kind} feedback on {job_id}/{custom_id}")


@app.command()
def retrain(
    router: Annotated[str, typer.Option(help="Registry name of the router to train.")] = DEFAULT_ROUTER,
    data: Annotated[list[Path] | None, typer.Option(exists=True, help="Base preference data (with the feedback). "
                                                    + DATA_HELP)] = None,
    heldout: Annotated[list[Path] | None, typer.Option(exists=True, help="Fixed held-out outcomes to judge on, as "
                                                       "`router eval --outcomes` takes them.")] = None,
    margin: Annotated[float, typer.Option(help="APGR the candidate must gain to be promoted.")] = 0.0,
    strong_column: StrongColumn = ROUTELLM_STRONG,
    weak_column: WeakColumn = ROUTELLM_WEAK,
) -> None:
    """Train a candidate on base data + feedback; promote it only if it beats the serving router on held-out
    prompts that neither router trained on."""
    from jobs.retrain import retrain as run_retrain

    settings = _settings()
    with _user_errors():
        if not heldout:
            raise ValueError("--heldout is required: a promotion is decided on a fixed held-out set")
        rows = _read_data(heldout, strong_column, weak_column, outcomes_only=True).outcomes
        result = run_retrain(open_database(settings.resolved_database_url), settings, router, data or [], rows,
                             margin, strong_column=strong_column, weak_column=weak_column)
    console.print(f"{router} {result.version}: {result.decision}")


@app.command()
def api(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the HTTP API (OpenAPI at /docs)."""
    import uvicorn

    from jobs.api import create_app

    _settings()
    uvicorn.run(create_app(), host=host, port=port, log_level="info")


ALL_QUEUES = "routeyard.score,routeyard.complete"


@app.command()
def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated: routeyard.score (routers; GPU hosts), "
                                             "routeyard.complete (model calls).")] = ALL_QUEUES,
    concurrency: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    pool: Annotated[str, typer.Option(help="Celery pool: prefork, threads, solo.")] = "prefork",
) -> None:
    """Start a Celery worker (distributed mode)."""
    from worker.celery_app import app as celery_app

    if _settings().embedded:
        err.print("[red]error:[/] set ROUTEYARD_BROKER_URL (e.g. redis://localhost:6379/0) to run workers")
        raise typer.Exit(2)
    celery_app.worker_main(["worker", "-Q", queues, "-c", str(concurrency), "-P", pool, "-l", "INFO"])


schedule_app = typer.Typer(help="Periodic jobs kept in the database (beat fires them).", no_args_is_help=True)
app.add_typer(schedule_app, name="schedule")


@schedule_app.command("retrain")
def schedule_retrain(
    cron: Annotated[str | None, typer.Option(help='Cron, UTC, e.g. "0 2 * * *" for 02:00 nightly.')] = None,
    every: Annotated[float | None, typer.Option(help="Or a fixed interval in seconds.")] = None,
    router: str = DEFAULT_ROUTER,
    data: Annotated[list[Path] | None, typer.Option(exists=True, help="Base preference data. " + DATA_HELP)
                    ] = None,
    heldout: Annotated[list[Path] | None, typer.Option(exists=True, help="Fixed held-out outcomes, as `router eval "
                                                       "--outcomes` takes them.")] = None,
    margin: float = 0.0,
    strong_column: StrongColumn = ROUTELLM_STRONG,
    weak_column: WeakColumn = ROUTELLM_WEAK,
) -> None:
    """Retrain on a schedule (with the same promotion gate as `routeyard retrain`)."""
    from jobs.schedule import add_schedule

    settings = _settings()
    with _user_errors():
        if not heldout:
            raise ValueError("--heldout is required: a promotion is decided on a fixed held-out set")
        _read_data(heldout, strong_column, weak_column, outcomes_only=True)  # a bad file fails now, not at 02:00
        args = {"router": router, "data": [str(p.resolve()) for p in data or []],
                "heldout": [str(p.resolve()) for p in heldout], "margin": margin,
                "strong_column": strong_column, "weak_column": weak_column}
        schedule_id = add_schedule(open_database(settings.resolved_database_url), "retrain", args, cron, every)
    console.print(f"schedule {schedule_id}: retrain {router} {cron or f'every {every:g}s'}")
    if settings.embedded:
        console.print("no broker configured: run `routeyard schedule run-due` from cron, or start beat + a worker")


@schedule_app.command("list")
def schedule_list() -> None:
    """Stored schedules, when they run next and what they did last."""
    from jobs.schedule import list_schedules, next_run

    settings = _settings()
    table = Table()
    for col in ("id", "task", "when", "next run (UTC)", "last run", "last result"):
        table.add_column(col)
    with open_database(settings.resolved_database_url)() as session:
        for row in list_schedules(session):
            table.add_row(str(row.id), row.task, row.cron or f"every {row.every_s:g}s",
                          next_run(row).strftime("%Y-%m-%d %H:%M:%S"),
                          row.last_run_at.strftime("%Y-%m-%d %H:%M:%S") if row.last_run_at else "-",
                          row.last_result or "")
    console.print(table)


@schedule_app.command("remove")
def schedule_remove(schedule_id: int) -> None:
    from jobs.schedule import remove_schedule

    settings = _settings()
    with _user_errors():
        remove_schedule(open_database(settings.resolved_database_url), schedule_id)
    console.print(f"schedule {schedule_id} removed")


@schedule_app.command("run-due")
def schedule_run_due() -> None:
    """Run the schedules that are due, here (the embedded default has no beat: call this from cron)."""
    from jobs.schedule import claim_due
    from worker.tasks import scheduled_retrain

    settings = _settings()
    for row in claim_due(open_database(settings.resolved_database_url)):
        console.print(f"schedule {row.id}: {scheduled_retrain.run(row.id, row.args)}")


tenant_app = typer.Typer(help="Tenants of the HTTP API and their keys.", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")


@tenant_app.command("create")
def tenant_create(name: str) -> None:
    """Create a tenant and print its API key (shown once; only its hash is stored)."""
    from jobs.tenants import create_tenant

    settings = _settings()
    tenant_id, key = create_tenant(open_database(settings.resolved_database_url), name)
    console.print(f"tenant {tenant_id} ({name}); API key, shown once:")
    print(key)


def main() -> None:
    app()



@router_app.command("list")
def router_list() -> None:
    """The registry: router names, and which ship a pretrained checkpoint."""
    from routers.registry import PRETRAINED_DIR, ROUTERS

    for name in ROUTERS:
        shipped = (PRETRAINED_DIR / name).is_dir()
        console.print(f"{name:<12} {'pretrained checkpoint shipped' if shipped else 'no checkpoint'}")


@router_app.command("train")
def router_train(
    data: Annotated[list[Path], typer.Option("--data", exists=True, help=DATA_HELP)],
    out: Annotated[Path, typer.Option("--out", help="Directory to write config.json + model.safetensors.")],
    router: Annotated[str, typer.Option("--router", help="Registry name.")] = DEFAULT_ROUTER,
    epochs: Annotated[int | None, typer.Option(help="Training epochs (router default when left out).")] = None,
    param: Annotated[list[str] | None, typer.Option(
        "--param", help="A router setting as key=value (JSON values), e.g. gamma=100, l2=0.01, "
                        "finetune_rows=2000, train_layers=2; repeat for more.")] = None,
    seed: int = 0,
    strong_column: StrongColumn = ROUTELLM_STRONG,
    weak_column: WeakColumn = ROUTELLM_WEAK,
) -> None:
    """Train a router on preference data and save it, with a record of the prompts it trained on."""
    from jobs.runner import router_runtime
    from routers.base import TrainOptions
    from routers.data import save_training_prompts
    from routers.registry import train_router

    settings = _settings()
    with _user_errors():
        params = _parse_params(param or [])
        found = _read_data(data, strong_column, weak_column)
        rows = found.preferences()
        console.print(f"{len(rows)} preference rows from {len(found.files)} files")
        with _bars() as bars:
            tasks: dict[str, int] = {}

            def report(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bars.add_task(stage, total=total)
                bars.update(tasks[stage], completed=done)

            trained = train_router(router, rows, router_runtime(settings),
                                   TrainOptions(seed=seed, epochs=epochs, params=params, progress=report))
        version = trained.save(out)
        save_training_prompts(out, [r.prompt for r in rows], version)
    console.print(f"saved {router} router version {version} to {out}")


def _parse_params(items: list[str]) -> dict[str, object]:
    """`key=value` pairs; a value is read as JSON (numbers, true/false, null) and otherwise kept as text."""
    params: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--param {item!r}: expected key=value, e.g. gamma=100")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params


@router_app.command("eval")
def router_eval(
    routers: Annotated[list[str], typer.Option("--router", help="Registry name or directory; repeat to compare.")],
    outcomes: Annotated[list[Path], typer.Option("--outcomes", exists=True,
                                                 help="Outcome files or directories of them, any layout: CSV/TSV "
                                                      "with a prompt column and the two models' columns, JSONL "
                                                      "{prompt, strong, weak}, a routellm-evals directory.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for metrics.json and curves.png.")] = Path("eval"),
    contaminated: Annotated[list[Path] | None, typer.Option(help="JSONL of prompts to leave out.")] = None,
    seeds: Annotated[int, typer.Option(help="Seeds the random baseline is averaged over.")] = 10,
    save_curve: Annotated[bool, typer.Option(help="Save each router directory's PGR curve on these outcomes "
                                                  "(quality.json), for --target-pgr.")] = False,
    strong_column: StrongColumn = ROUTELLM_STRONG,
    weak_column: WeakColumn = ROUTELLM_WEAK,
) -> None:
    """PGR at 10%..90% strong calls, APGR, CPT(50%), CPT(80%) for each router, random and the oracle."""
    from jobs.runner import router_runtime
    from routers.evaluate import evaluate
    from routers.plot import plot_curves
    from routers.registry import load_router

    settings = _settings()
    with _user_errors():
        rows = _read_data(outcomes, strong_column, weak_column, outcomes_only=True, contaminated=contaminated).outcomes
        if not rows:
            raise ValueError("no outcome rows to evaluate on (all were contaminated)")
        _warn_pgr(rows, ", ".join(p.name for p in outcomes))
        scores = {}
        with _bars() as bars:
            for spec in routers:
                loaded = load_router(spec, router_runtime(settings))
                advance = RichProgress(bars).stage(f"scoring {loaded.name}", len(rows))
                scores[f"{loaded.name}@{loaded.version}"] = loaded.router.win_rate([r.prompt for r in rows],
                                                                                  progress=advance)
        found, curves = evaluate(scores, rows, seeds)
        if save_curve:
            from routers.calibration import save_quality_curve

            for spec, name in zip(routers, scores, strict=True):
                if Path(spec).is_dir():
                    save_quality_curve(Path(spec), curves[name].fraction, curves[name].pgr,
                                       ", ".join(p.name for p in outcomes))
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps({k: m.to_dict() for k, m in found.items()}, indent=2) + "\n")
        first = next(iter(found.values()))
        plot_curves(curves, first.quality_strong, first.quality_weak, out / "curves.png",
                    f"{len(rows)} prompts: {', '.join(p.name for p in outcomes)}")
    table = Table(title=f"{len(rows)} prompts")
    for col in ("router", "APGR", "CPT(50%)", "CPT(80%)", *(f"PGR@{k}" for k in ("0.2", "0.5", "0.8"))):
        table.add_column(col)
    for name, m in found.items():
        table.add_row(name, f"{m.apgr:.3f}", f"{m.cpt50:.1%}", f"{m.cpt80:.1%}",
                      *(f"{m.pgr_at[k]:.3f}" for k in ("0.2", "0.5", "0.8")))
    console.print(table)
    console.print(f"wrote {out / 'metrics.json'} and {out / 'curves.png'}")


@router_app.command("versions")
def router_versions() -> None:
    """Trained router versions, then the shipped one: metrics, data, the promotion decision, which one serves."""
    from jobs.retrain import version_rows

    settings = _settings()
    table = Table()
    for col in ("serving", "router", "version", "APGR", "serving APGR then", "rows", "created", "decision"):
        table.add_column(col, no_wrap=col != "decision")
    with open_database(settings.resolved_database_url)() as session:
        for v in version_rows(session, settings):
            table.add_row("*" if v.serving else "", v.router, v.version,
                          f"{v.apgr:.4f}" if v.apgr is not None else "-",
                          f"{v.baseline_apgr:.4f}" if v.baseline_apgr is not None else "-",
                          "" if v.rows is None else str(v.rows),
                          v.created_at.strftime("%Y-%m-%d %H:%M") if v.created_at else "shipped", v.decision)
    console.print(table)


@router_app.command("rollback")
def router_rollback(version: Annotated[str, typer.Argument(help="A version from `router versions`, or `shipped`.")]
                    ) -> None:
    """Serve an earlier router version again (the shipped one too)."""
    from jobs.retrain import rollback

    settings = _settings()
    with _user_errors():
        v = rollback(open_database(settings.resolved_database_url), version, settings)
    console.print(f"now serving {v.router} {v.version} ({v.path})")


@router_app.command("calibrate")
def router_calibrate(
    router: Annotated[str, typer.Option("--router", help="A router directory (the table is written into it).")],
    sample: Annotated[Path, typer.Option("--sample", exists=True, help="Prompts like those to come: JSONL or CSV.")],
) -> None:
    """Thresholds for 5%..95% strong calls from a calibration sample, saved as calibration.json."""
    from jobs.input_formats import ParsedItem, parse_stream
    from jobs.runner import router_runtime
    from routers.calibration import calibration_table
    from routers.registry import load_router

    settings = _settings()
    with _user_errors():
        if not Path(router).is_dir():
            raise ValueError(f"--router must be a router directory to write calibration.json into, got {router!r}")
        with sample.open("rb") as f:
            prompts = [e.prompt for e in parse_stream(f, detect_format(sample)) if isinstance(e, ParsedItem)]
        if len(prompts) < 20:
            raise ValueError(f"{sample}: {len(prompts)} prompts; a calibration sample needs at least 20")
        loaded = load_router(router, router_runtime(settings))
        with _bars() as bars:
            scores = loaded.router.win_rate(prompts, progress=RichProgress(bars).stage("scoring", len(prompts)))
        table = calibration_table(scores)
        (Path(router) / "calibration.json").write_text(json.dumps(
            {"router_version": loaded.version, "sample": sample.name, "n": len(prompts), "thresholds": table},
            indent=2) + "\n")
    for fraction, threshold in table.items():
        console.print(f"{float(fraction):>5.0%} strong: score >= {threshold:.4f}")


@router_app.command("score")
def router_score(
    router: Annotated[str, typer.Option("--router", help="Registry name, directory or hub id.")],
    input_path: Annotated[Path, typer.Option("--input", exists=True, help="Prompts: JSONL or CSV, as for submit.")],
    output: Annotated[Path, typer.Option("--output", help="JSONL: one {id, prompt, score} per line.")],
) -> None:
    """Score prompts (probability that the strong model is needed), batched."""
    from jobs.input_formats import ParsedItem, parse_stream
    from jobs.runner import router_runtime
    from routers.registry import load_router

    settings = _settings()
    with _user_errors():
        with input_path.open("rb") as f:
            entries = list(parse_stream(f, detect_format(input_path)))  # type: ignore[arg-type]
        items = [e for e in entries if isinstance(e, ParsedItem)]
        for e in entries:
            if not isinstance(e, ParsedItem):
                err.print(f"  [yellow]line {e.line_no}:[/] {e.reason}")
        loaded = load_router(router, router_runtime(settings))
        with _bars() as bars:
            advance = RichProgress(bars).stage("scoring", len(items))
            scores = loaded.router.win_rate([i.prompt for i in items], progress=advance)
        with output.open("w", encoding="utf-8") as out:
            for item, score in zip(items, scores, strict=True):
                out.write(json.dumps({"id": item.custom_id, "prompt": item.prompt, "score": float(score)}) + "\n")
    console.print(f"scored {len(items)} prompts with {loaded.name} {loaded.version} -> {output}")


if __name__ == "__main__":
    main()
