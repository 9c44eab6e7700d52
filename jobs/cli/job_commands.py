"""Commands on jobs: submit, run/resume, cancel, status, jobs, results, spend, feedback, and the demo."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Annotated, cast

import typer
from pydantic import SecretStr
from rich.table import Table
from sqlalchemy.orm import Session, sessionmaker

from db import jobs as store
from db import runners
from db.catalog import list_versions
from jobs.cli import render
from jobs.cli.context import ExitCode, Stages, atomic_output, atomic_path, cli_context, console, err
from jobs.cli.options import StrongFraction
from jobs.services import control
from jobs.services.feedback import FeedbackIn, feedback_value, record_feedback
from jobs.services.input_formats import Format as InputFormat
from jobs.services.input_formats import detect_format
from jobs.services.judge import JudgingView, judging_view
from jobs.services.results import ResultFormat, export_results, job_status, rejection_dict
from jobs.services.spend import spend_over_time, spend_report
from jobs.services.submit import JobOptions, submit_job
from routeyard.errors import Conflict, InvalidInput
from routeyard.redact import safe_url
from routeyard.settings import Settings
from routeyard.states import ITEM_FINISHED, JOB_FINAL, ItemStatus, JobStatus
from routeyard.testing.demo_data import write_demo_batch
from routeyard.testing.loopback import DEMO_MODELS, LoopbackConfig, LoopbackServer
from worker.dispatch import Mode
from worker.embedded import RunSummary
from worker.embedded import summary as summary_of

app = typer.Typer()


def _run(ctx: typer.Context, job_id: str, retry_failed: bool = False, settings: Settings | None = None,
         wait: bool = False, as_json: dict[str, object] | None = None) -> None:
    """Run here to the end (embedded), or enqueue for the workers (and follow the job with `wait`). With
    `as_json`, one JSON document at the end: those fields with the job's status and counts."""
    state = cli_context(ctx)
    with state.db() as session:
        job = store.get_job(session, job_id)
        n_rejected = job.n_rejected
        if job.status in JOB_FINAL:  # cancelled, or failed: its router did not load (its items say why)
            raise Conflict(f"job {job_id} {'was cancelled' if job.status == JobStatus.CANCELLED else 'failed'}; "
                           f"a {job.status} job does not run again (submit it again)")
    dispatcher = state.dispatcher(settings)
    with Stages() as stages:
        done = dispatcher.run(job_id, retry_failed=retry_failed, progress=stages)
    if done.summary is not None:
        _finish(done.summary, n_rejected, as_json, _judging(ctx, job_id))
    if wait:
        _finish(_follow(ctx, job_id), n_rejected, as_json, _judging(ctx, job_id))
    if as_json is not None:
        console.print_json(json.dumps({**as_json, "job_id": job_id, "status": JobStatus.QUEUED}))
    else:
        console.print(f"job {job_id} queued on the workers ({safe_url(state.settings.broker_url)})")
    render.rejected_summary(job_id, n_rejected)


def _judging(ctx: typer.Context, job_id: str) -> JudgingView | None:
    """How a --judge job's shadow pairs fared (None: it asked for no judge)."""
    state = cli_context(ctx)
    with state.db() as session:
        view = judging_view(session, job_id, settings=state.settings)
    return view if view.mode is not None else None


def _finish(summary: RunSummary, n_rejected: int, as_json: dict[str, object] | None = None,
            judged: JudgingView | None = None) -> None:
    """Print how the job ended and exit with its code: 3 when a request of its file got no answer: an item
    failed or was cancelled, or a line was rejected at submit (its error file is not empty)."""
    if as_json is not None:
        extra = {"judge": judged.to_dict()} if judged is not None else {}
        console.print_json(json.dumps({**as_json, "job_id": summary.job_id, "status": summary.status,
                                       "counts": dict(summary.counts), "n_rejected": n_rejected,
                                       "common_errors": [{"error": e, "items": n} for e, n in summary.common_errors],
                                       **extra}))
    else:
        render.run_summary(summary)
        if judged is not None:
            render.judging(judged)
    render.rejected_summary(summary.job_id, n_rejected)  # last, on stderr: after the progress lines, seen
    unfinished = summary.counts.get(ItemStatus.FAILED) or summary.counts.get(ItemStatus.CANCELLED)
    raise typer.Exit(ExitCode.FAILED_ITEMS if unfinished or n_rejected else ExitCode.OK)


def _follow(ctx: typer.Context, job_id: str) -> RunSummary:
    """Poll a job run by workers, with a progress bar, until it ends."""
    with Stages() as stages:
        return follow(cli_context(ctx).db, job_id, stages)


def follow(sf: sessionmaker[Session], job_id: str, stages: Stages, every_s: float = 0.5) -> RunSummary:
    """Draw a job's calls until it ends. The calls stage starts once the job is routed: a job that fails before
    (its router did not load) made no call, and a bar filling with its failed items would say it had."""
    while True:
        with sf() as session:
            job = store.get_job(session, job_id)
            counts = store.status_counts(session, job_id)
        if job.status in (JobStatus.RUNNING, JobStatus.COMPLETED) or "calling models" in stages.tasks:
            stages.set("calling models", sum(n for s, n in counts.items() if s in ITEM_FINISHED), job.n_items)
        if job.status.ended:
            return summary_of(sf, job_id)
        time.sleep(every_s)


@app.command()
def submit(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSONL (OpenAI Batch or plain) or CSV.")],
    strong_fraction: Annotated[float | None, typer.Option(
        "--strong-fraction", "-s",
        help="Share of this batch's items sent to the strong model, 0 to 1 (default 0.3; or use --budget-usd or "
             "--target-pgr, not together).")] = None,
    router: Annotated[str | None, typer.Option(help="Registry name, directory or hub id.")] = None,
    key: Annotated[str | None, typer.Option("--key", help="Idempotency key: resubmitting is a no-op.")] = None,
    tag: Annotated[str | None, typer.Option(help="A label for spend reports.")] = None,
    budget_usd: Annotated[float | None, typer.Option("--budget-usd",
                                                     help="Spend at most this: strong calls go to the highest-"
                                                          "scoring items that fit (instead of --strong-fraction).")
                          ] = None,
    target_pgr: Annotated[float | None, typer.Option("--target-pgr", help="Reach this share of the strong "
                                                     "model's quality gain (from the router's held-out curve).")
                          ] = None,
    shadow: Annotated[float | None, typer.Option("--shadow",
                                                 help="Also send this share (0 to 1) of weak items to the strong model "
                                                      "(both answers kept, for feedback).")] = None,
    judge: Annotated[bool, typer.Option("--judge", help="When the job completes, the judge model "
                                                        "(ROUTEYARD_JUDGE_*) labels its shadow pairs: feedback.")
                     ] = False,
    judge_mode: Annotated[str, typer.Option("--judge-mode", help="pair (MT-Bench pairwise, both orders) or grade "
                                                                 "(each answer 1-10).")] = "pair",
    fmt: Annotated[str, typer.Option("--format", help="auto (by suffix), jsonl, csv or tsv.")] = "auto",
    detach: Annotated[bool, typer.Option(help="Store the job and return; run it later with `routeyard run`.")] = False,
    wait: Annotated[bool, typer.Option(help="Distributed mode: follow the job until it ends.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the stored job as JSON (with --detach, or when "
                                                         "the job is queued) or its end state.")] = False,
) -> None:
    """Submit a batch: the embedded default runs it here to the end; with a broker, workers run it."""
    state = cli_context(ctx)
    options = JobOptions(router=router or None, strong_fraction=strong_fraction,
                         idempotency_key=key, tag=tag, budget_usd=budget_usd, target_pgr=target_pgr,
                         shadow_fraction=shadow, judge=judge_mode if judge else None)
    if fmt not in ("auto", "jsonl", "csv", "tsv"):
        raise InvalidInput(f"--format must be auto, jsonl, csv or tsv, got {fmt!r}")
    input_format = detect_format(file, cast(InputFormat, fmt))
    if not detach:
        state.dispatcher().ready()
    with file.open("rb") as source:
        result = submit_job(state.db, state.settings, source, input_format, options, source_name=file.name)
    stored = {"job_id": result.job_id, "created": result.created, "n_items": result.n_items,
              "rejected": [rejection_dict(r) for r in result.rejections]}
    if not as_json:
        render.submitted(result)
        if judge:  # which pairs exist is known once the job is routed: the end of the run says how many
            console.print(f"judge ({judge_mode}, {state.settings.judge_model or 'ROUTEYARD_JUDGE_MODEL unset'}): "
                          f"the shadow pairs (--shadow {shadow or 0:g} of the weak items) are judged once the job "
                          f"completes; `routeyard judge {result.job_id}` says how many were and why any were not")
    if detach or (not result.created and state.dispatcher().mode is Mode.DISTRIBUTED):
        if as_json:
            console.print_json(json.dumps({**stored, "status": JobStatus.QUEUED}))
        render.rejected_summary(result.job_id, len(result.rejections))
        return
    _run(ctx, result.job_id, wait=wait, as_json=stored if as_json else None)


RetryFailed = Annotated[bool, typer.Option(help="Call failed items again.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="One JSON document with the job's end state.")]


@app.command()
def run(ctx: typer.Context, job_id: str, retry_failed: RetryFailed = False, as_json: JsonFlag = False) -> None:
    """Run a stored job from wherever it stopped (embedded), or enqueue it again (distributed)."""
    _run(ctx, job_id, retry_failed, as_json={} if as_json else None)


@app.command()
def resume(ctx: typer.Context, job_id: str, retry_failed: RetryFailed = False, as_json: JsonFlag = False) -> None:
    """Resume an interrupted job: finished items are not called again, spend is not counted twice."""
    _run(ctx, job_id, retry_failed, as_json={} if as_json else None)


@app.command()
def cancel(ctx: typer.Context, job_id: str) -> None:
    """Cancel a job: items not yet called are not called."""
    sf = cli_context(ctx).db
    with sf() as session:
        before = store.get_job(session, job_id).status
    n = control.cancel(sf, job_id)
    with sf() as session:
        status = store.get_job(session, job_id).status
    if before == JobStatus.CANCELLED:  # a second cancel: saying "cancelled; 0 items" again would hide that
        console.print(f"job {job_id} was already cancelled; nothing to cancel")
    elif status in (JobStatus.COMPLETED, JobStatus.FAILED):
        console.print(f"job {job_id} had already {status}; nothing to cancel")
    else:
        with sf() as session:
            held = store.status_counts(session, job_id).get(ItemStatus.BATCHED, 0)
        console.print(f"job {job_id} cancelled; {n} items will not be called"
                      + (f"; {held} in a provider batch are being cancelled there (what it already ran is kept "
                         "and counted)" if held else ""))


@app.command()
def status(ctx: typer.Context, job_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """A job's state, item counts and rejected lines."""
    state = cli_context(ctx)
    with state.db() as session:  # embedded, the process that runs a job holds it: one that stopped is told apart
        view = job_status(session, job_id, dead_after_s=state.settings.dead_after_s if state.settings.embedded
                          else None)
    if as_json:
        console.print_json(json.dumps(view.to_dict()))
    else:
        render.job_status(view)


@app.command("jobs")
def list_jobs(ctx: typer.Context, limit: int = 20, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The most recent jobs."""
    state = cli_context(ctx)
    with state.db() as session:
        rows = store.list_jobs(session, limit)
        # Embedded jobs are held by the process that runs them: one left scoring or running with no live
        # holder stopped (Ctrl-C, a kill) and waits for `routeyard resume`, as `routeyard status` says.
        stopped = {j.id for j in rows if state.settings.embedded
                   and runners.interrupted(session, j, state.settings.dead_after_s)}
    if as_json:
        console.print_json(json.dumps([{"id": j.id, "status": j.status, "interrupted": j.id in stopped,
                                        "n_items": j.n_items, "n_rejected": j.n_rejected,
                                        "strong_fraction": j.strong_fraction, "budget_usd": j.budget_usd,
                                        "tag": j.tag, "created_at": j.created_at.isoformat()} for j in rows]))
        return
    table = Table()
    for col in ("job", "status", "items", "rejected", "routing", "tag", "created"):
        table.add_column(col)
    for job in rows:
        routing = f"budget ${job.budget_usd:g}" if job.budget_usd is not None else f"{job.strong_fraction:.2f}"
        status = f"[yellow]interrupted[/] ({job.status}; resume)" if job.id in stopped else str(job.status)
        table.add_row(job.id, status, str(job.n_items), str(job.n_rejected), routing, job.tag or "",
                      job.created_at.strftime("%Y-%m-%d %H:%M"))
    console.print(table)


@app.command()
def results(
    ctx: typer.Context,
    job_id: str,
    fmt: Annotated[str | None, typer.Option(
        "--format", help="jsonl, csv, openai (Batch API output file) or openai-errors (its error file); default: "
                         "csv for an --output file named *.csv, else jsonl.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write (default stdout).")] = None,
) -> None:
    """Export a job's results in input order."""
    if fmt is None:
        fmt = "csv" if output is not None and output.suffix.lower() == ".csv" else "jsonl"
    if fmt not in ("jsonl", "csv", "openai", "openai-errors"):
        raise InvalidInput(f"--format must be jsonl, csv, openai or openai-errors, got {fmt!r}")
    result_format: ResultFormat = fmt  # type: ignore[assignment]  # checked just above
    with cli_context(ctx).db() as session:
        lines = export_results(session, job_id, result_format)
        first = next(lines, None)  # an unknown job fails here, before anything is written
        if output is None:
            sys.stdout.writelines([first or "", *lines])
            return
        with atomic_output(output) as out:  # an existing file is replaced only once the export is whole
            out.write(first or "")
            out.writelines(lines)


@app.command()
def spend(
    ctx: typer.Context,
    job_id: Annotated[str | None, typer.Argument(help="One job; all jobs when left out.")] = None,
    by: Annotated[str | None, typer.Option(help="day or week: spend over time instead of one total.")] = None,
    tag: Annotated[str | None, typer.Option(help="Only jobs with this tag.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="With --by: one CSV row per period.")] = False,
    plot: Annotated[Path | None, typer.Option(help="With --by: a PNG of cost and router quality over time.")] = None,
) -> None:
    """Calls, tokens and dollars per model, and the saving against an all-strong run; or the same over time."""
    state = cli_context(ctx)
    if as_json and as_csv:
        raise InvalidInput("give --json or --csv, not both")
    if by is None and (as_csv or plot):
        raise InvalidInput("--csv and --plot report spend over time: add --by day or --by week")
    if by is not None and job_id is not None:
        raise InvalidInput("--by reports all jobs over time; leave out the job id, or --by for one job's total")
    if by is None:
        with state.db() as session:
            report = spend_report(session, state.settings, job_id, tag=tag)
        if as_json:
            console.print_json(json.dumps(report.to_dict()))
        else:
            render.spend(report, tag)
        return
    with state.db() as session:
        periods = spend_over_time(session, state.settings, by, tag)  # type: ignore[arg-type]  # checked inside
        versions = list_versions(session)
    if plot:
        from jobs.cli.plots import plot_cost_and_quality  # matplotlib: only when a plot is asked for

        with atomic_path(plot) as tmp:
            plot_cost_and_quality(periods, versions, tmp)
        err.print(f"wrote {plot}")
    if as_json:
        console.print_json(json.dumps([p.__dict__ for p in periods]))
    elif as_csv:
        render.spend_periods_csv(periods)
    else:
        render.spend_periods(periods, by, tag)


@app.command()
def feedback(
    ctx: typer.Context,
    job_id: str,
    custom_id: Annotated[str, typer.Argument(help="The item's id (custom_id) in the job.")],
    prefer: Annotated[str | None, typer.Option(help="strong, weak or tie: which answer was better.")] = None,
    rating: Annotated[float | None, typer.Option(help="Quality of the answer, 0 to 1.")] = None,
    thumbs: Annotated[str | None, typer.Option(help="up or down.")] = None,
) -> None:
    """Judge a stored answer; judgements become preference rows for retraining."""
    given = [(k, v) for k, v in (("prefer", prefer), ("rating", rating), ("thumbs", thumbs)) if v is not None]
    if len(given) != 1:
        raise InvalidInput("give exactly one of --prefer, --rating, --thumbs")
    kind, raw = given[0]
    value = feedback_value(kind, raw)
    record_feedback(cli_context(ctx).db, FeedbackIn(job_id, custom_id, kind, value))  # type: ignore[arg-type]
    console.print(f"recorded {kind} feedback on {job_id}/{custom_id}")


@app.command(short_help="A whole routed job on a made-up batch, the shipped router and a loopback model server.")
def demo(
    ctx: typer.Context,
    n: Annotated[int, typer.Option(help="Prompts in the demo batch.", min=1)] = 200,
    strong_fraction: StrongFraction = 0.3,
    router: Annotated[str | None, typer.Option(help="Registry name or directory.")] = None,
    latency_scale: Annotated[float, typer.Option(help="Scale the loopback server's latency.")] = 1.0,
) -> None:
    """A whole routed job: a made-up batch, the shipped default router, and a loopback OpenAI-compatible server
    (or your real endpoints, when ROUTEYARD_STRONG_BASE_URL / ROUTEYARD_WEAK_BASE_URL are set)."""
    if not 0.0 <= latency_scale < math.inf:  # NaN fails too
        raise typer.BadParameter(f"a number from 0 up, got {latency_scale}", param_hint="'--latency-scale'")
    state = cli_context(ctx)
    settings = state.settings
    server = None
    if not (settings.strong_base_url or settings.weak_base_url):
        server = LoopbackServer(LoopbackConfig(models=DEMO_MODELS, latency_scale=latency_scale)).start()
        console.print(f"no endpoints configured: serving both models from the loopback server at {server.base_url}")
        settings = settings.model_copy(update={
            "strong_base_url": server.base_url, "weak_base_url": server.base_url,
            "strong_api_key": SecretStr("loopback"), "weak_api_key": SecretStr("loopback"),
            "strong_model": "gpt-4-1106-preview", "weak_model": "mixtral-8x7b-instruct"})
    try:
        batch = write_demo_batch(settings.home / "demo" / "batch.jsonl", n)
        console.print(f"database {safe_url(settings.resolved_database_url)}; batch {batch}")
        options = JobOptions(router=router or None, strong_fraction=strong_fraction, tag="demo")
        with batch.open("rb") as source:
            result = submit_job(state.db, settings, source, "jsonl", options, source_name=batch.name)
        render.submitted(result)
        here = state.dispatcher(settings.model_copy(update={"broker_url": None}))  # the demo always runs here
        with Stages() as stages:
            done = here.run(result.job_id, progress=stages)
        assert done.summary is not None  # an embedded run ends here
        render.run_summary(done.summary)
        render.rejected_summary(result.job_id, len(result.rejections))
        with state.db() as session:
            render.spend(spend_report(session, settings, result.job_id))
            render.score_examples(list(store.iter_items(session, result.job_id)))
        console.print(f"next: routeyard results {result.job_id} --format openai")
        console.print("the learning loop: submit with --shadow 0.05 --judge and a judge model (ROUTEYARD_JUDGE_*) "
                      "labels the shadow pairs as your feedback; `routeyard schedule retrain --tenant all --cron "
                      "'0 2 * * *' --data BASE_OUTCOMES/` retrains each tenant's router nightly, promoted only if "
                      "it beats the serving one on that tenant's held-out judged pairs; `routeyard report quality "
                      "--plot q.png` shows what it gained")
    finally:
        if server:
            server.stop()
