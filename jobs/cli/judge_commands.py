"""`routeyard judge JOB`: the judge labels a job's shadow pairs (later, or again for errors)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from jobs.cli import render
from jobs.cli.context import ExitCode, cli_context, console
from jobs.services.judge import judge_job_pairs, judging_view

app = typer.Typer()


@app.command()
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
    a verdict (each reason is listed; --retry-errors judges them again)."""
    state = cli_context(ctx)
    done = judge_job_pairs(state.db, state.settings, job_id, mode=mode, retry_errors=retry_errors)
    counts = {str(k): v for k, v in done.counts.items()}
    with state.db() as session:
        view = judging_view(session, job_id)
    if as_json:
        console.print_json(json.dumps({"job_id": job_id, "judged_now": done.judged_now,
                                       "errors_now": done.errors_now, "counts": counts,
                                       "error_reasons": view.to_dict()["error_reasons"]}))
    else:
        console.print(f"job {job_id}: {done.judged_now} pairs judged now, {done.errors_now} without a verdict "
                      f"(stored as errors); in all {counts.get('judged', 0)} judged, {counts.get('error', 0)} errors")
        render.judge_errors(view)
    # pairs with no verdict are requests that got no answer a script can use: exit 3, as for a job's failed items
    raise typer.Exit(ExitCode.FAILED_ITEMS if view.errors else ExitCode.OK)
