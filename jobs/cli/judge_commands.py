"""`routeyard judge JOB`: the judge labels a job's shadow pairs (later, or again for errors)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from jobs.cli import render
from jobs.cli.context import ExitCode, cli_context, console
from jobs.services.judge import judge_job_pairs, judging_view

app = typer.Typer()


@app.command(short_help="Judge a job's shadow pairs with the judge model: each verdict is a feedback row.")
def judge(
    ctx: typer.Context,
    job_id: str,
    mode: Annotated[str | None, typer.Option(help="pair (MT-Bench pairwise, both orders) or grade (each answer "
                                                  "1-10); default: the job's, else pair.")] = None,
    retry_errors: Annotated[bool, typer.Option("--retry-errors", help="Also judge again the pairs whose reply had "
                                                                      "no verdict or whose call failed.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Judge a job's shadow pairs with the judge model (ROUTEYARD_JUDGE_*): each verdict is a feedback row
    (source judge). Pairs already judged are not judged again. Exits 3 while pairs of the job are left without
    a verdict: errors (each reason is listed; --retry-errors judges them again), or pairs another process holds
    in flight (who holds them, and when they can be taken back, is listed)."""
    state = cli_context(ctx)
    done = judge_job_pairs(state.db, state.settings, job_id, mode=mode, retry_errors=retry_errors)
    counts = {str(k): v for k, v in done.counts.items()}
    with state.db() as session:
        view = judging_view(session, job_id, settings=state.settings)
    if as_json:
        shown = view.to_dict()
        console.print_json(json.dumps({"job_id": job_id, "judged_now": done.judged_now,
                                       "errors_now": done.errors_now, "counts": counts, "pairs": view.pairs,
                                       "unjudged": view.unjudged, "in_flight": view.in_flight,
                                       "in_flight_notes": view.in_flight_notes,
                                       "error_reasons": shown["error_reasons"]}))
    else:
        console.print(f"job {job_id}: {done.judged_now} pairs judged now, {done.errors_now} without a verdict "
                      f"(stored as errors); in all {view.judged} of {view.pairs} judged, {view.errors} errors"
                      + (f", {view.in_flight} in flight elsewhere" if view.in_flight else ""))
        render.judge_errors(view)
    # pairs with no verdict are requests that got no answer a script can use: exit 3, as for a job's failed items
    raise typer.Exit(ExitCode.FAILED_ITEMS if view.unjudged else ExitCode.OK)
