"""How results look on a terminal: tables and one-line summaries. No decisions are made here."""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence

from rich.markup import escape
from rich.table import Table

from db.models import Item
from jobs.cli.context import console, err
from jobs.services.input_formats import Rejection
from jobs.services.judge import JudgingView
from jobs.services.results import JobStatusView
from jobs.services.spend import PeriodSpend, SpendReport
from jobs.services.submit import SubmitResult
from jobs.services.versions import public_router
from worker.embedded import RunSummary


def submitted(result: SubmitResult) -> None:
    verb = "submitted" if result.created else "already submitted (same idempotency key)"
    console.print(f"job [bold]{result.job_id}[/] {verb}: {result.n_items} items, {len(result.rejected)} rejected")
    for r in result.rejections[:20]:
        err.print(f"  [yellow]{_where(r)}:[/] {escape(r.reason)}")
    if len(result.rejections) > 20:
        err.print(f"  ... and {len(result.rejections) - 20} more (routeyard status {result.job_id})")


def _where(r: Rejection) -> str:
    return f"line {r.line_no}" + (f" ({escape(r.custom_id[:80])})" if r.custom_id else "")


def rejected_summary(job_id: str, n_rejected: int) -> None:
    """One line on stderr when input lines were rejected: how many, and where their errors are."""
    if n_rejected:
        err.print(f"[yellow]rejected:[/] {n_rejected} input line{'s' if n_rejected > 1 else ''} of job {job_id} "
                  f"not taken (not run, no answer); their error file: routeyard results {job_id} --format "
                  "openai-errors -o errors.jsonl")


def run_summary(summary: RunSummary) -> None:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary.counts.items()))
    console.print(f"job [bold]{summary.job_id}[/] {summary.status}: {counts}")
    _common_errors(summary.job_id, summary.common_errors)


def _common_errors(job_id: str, errors: Sequence[tuple[str, int]]) -> None:
    """Why items failed, most common first, so a failed run says why without reading every result."""
    for error, n in errors:
        err.print(f"  [yellow]{n} failed:[/] {escape(error[:300])}")
    if errors:
        err.print(f"  each item's error: `routeyard results {job_id}`")


def spend(report: SpendReport, tag: str | None = None) -> None:
    scope = f" for {report.job_id}" if report.job_id else f" (jobs tagged {tag})" if tag else " (all jobs)"
    table = Table(title=f"Spend{scope}")
    for col in ("tier", "model", "calls", "prompt tokens", "completion tokens", "cost $"):
        table.add_column(col, justify="right" if col not in ("tier", "model") else "left")
    for m in report.models:
        table.add_row(m.tier, m.model, str(m.calls), f"{m.prompt_tokens:,}", f"{m.completion_tokens:,}",
                      f"{m.cost_usd:.4f}")
    # the total row adds up its column: every call, shadow and judge ones too, as its cost does
    table.add_row("total", "", str(report.all_calls), f"{sum(m.prompt_tokens for m in report.models):,}",
                  f"{sum(m.completion_tokens for m in report.models):,}", f"{report.cost_usd:.4f}", style="bold")
    console.print(table)
    shadow = sum(m.calls for m in report.models if m.tier == "shadow")
    judge = sum(m.calls for m in report.models if m.tier == "judge")
    extra = f", plus {shadow} shadow calls to the strong model" if shadow else ""
    extra += f", plus {judge} judge calls" if judge else ""
    if extra:
        console.print(f"{report.calls} routed calls{extra}: {report.all_calls} calls in all")
    console.print(f"all-strong estimate ${report.all_strong_cost_usd:.4f}; saving ${report.saving_usd:.4f} "
                  f"({report.saving_pct:.1f}%) with {100 * report.strong_share:.1f}% of routed calls strong")
    if report.unanswered_requests:
        console.print(f"unanswered requests (timed out; a provider may have billed them, not in the total): "
                      f"{report.unanswered_requests}, at most ${report.unanswered_cost_bound_usd:.4f}")
    if report.all_strong_batch_cost_usd is not None and report.saving_vs_batch_pct is not None:
        console.print(f"all-strong through the provider's Batch API ${report.all_strong_batch_cost_usd:.4f}; saving "
                      f"against that {report.saving_vs_batch_pct:.1f}%")


def spend_periods_csv(periods: Sequence[PeriodSpend]) -> None:
    writer = csv.writer(sys.stdout)
    models = sorted({m for p in periods for m in p.by_model})
    tags = sorted({t for p in periods for t in p.by_tag})
    writer.writerow(["period", "calls", "strong_calls", "cost_usd", "strong_cost_usd", "weak_cost_usd",
                     "all_strong_cost_usd", "saving_usd", *(f"cost_usd[model={m}]" for m in models),
                     *(f"cost_usd[tag={t}]" for t in tags)])
    for p in periods:
        writer.writerow([p.period, p.calls, p.strong_calls, f"{p.cost_usd:.6f}", f"{p.strong_cost_usd:.6f}",
                         f"{p.weak_cost_usd:.6f}", f"{p.all_strong_cost_usd:.6f}", f"{p.saving_usd:.6f}",
                         *(f"{p.by_model.get(m, 0.0):.6f}" for m in models),
                         *(f"{p.by_tag.get(t, 0.0):.6f}" for t in tags)])


def spend_periods(periods: Sequence[PeriodSpend], by: str, tag: str | None) -> None:
    table = Table(title=f"Spend per {by}" + (f" (tag {tag})" if tag else ""))
    for col in ("period", "calls", "strong %", "cost $", "all-strong $", "saving $", "by tag"):
        table.add_column(col)
    for p in periods:
        share = f"{100 * p.strong_calls / p.calls:.0f}" if p.calls else "-"
        table.add_row(p.period, str(p.calls), share, f"{p.cost_usd:.4f}", f"{p.all_strong_cost_usd:.4f}",
                      f"{p.saving_usd:.4f}", ", ".join(f"{t or '-'} {c:.4f}" for t, c in p.by_tag.items()))
    console.print(table)


def job_status(view: JobStatusView) -> None:
    console.print(f"job [bold]{view.id}[/] {view.status} ({escape(view.source or '')})")
    if view.interrupted:  # stored as scoring/running, but no process runs it: it stopped there
        console.print(f"  [yellow]interrupted[/] while {view.status}: no process runs it now; `routeyard resume "
                      f"{view.id}` continues where it stopped")
    if view.budget_usd is not None:
        asked = f"budget ${view.budget_usd:g}"
    elif view.target_pgr is not None:
        asked = f"target PGR {view.target_pgr:g} (strong fraction {view.strong_fraction:.2f})"
    else:
        asked = f"strong fraction {view.strong_fraction:.2f}"
    routed = (f"{view.strong_items} of {view.routed_items} items strong ({view.strong_items / view.routed_items:.0%})"
              if view.routed_items else "not routed yet")
    shown = public_router(view.router)  # a stored version as linear@<version>, not its directory (--json has it)
    version = f" version {view.router_version}" if view.router_version and view.router_version != shown else ""
    console.print(f"  router {escape(shown)}{escape(version)}; {asked}; {routed}; "
                  f"threshold {view.threshold if view.threshold is not None else '-'}")
    console.print(f"  models: strong {view.strong_model}, weak {view.weak_model}")
    console.print("  items: " + ", ".join(f"{k} {v}" for k, v in sorted(view.counts.items()))
                  + f"; rejected lines {view.n_rejected}")
    if view.shadow_fraction or view.judging:
        pairs = view.judging
        line = f"  shadow {view.shadow_fraction or 0:g}: {pairs.pairs if pairs else 0} pairs"
        if view.judge:
            line += f"; judge ({view.judge})"
        if pairs and (view.judge or pairs.judged or pairs.errors or pairs.in_flight):
            line += (f": {pairs.judged} judged, {pairs.errors} without a verdict, {pairs.in_flight} in flight, "
                     f"{pairs.unjudged - pairs.errors - pairs.in_flight} not judged yet")
            if pairs.unjudged and view.status in ("completed", "failed", "cancelled"):
                line += (f" (`routeyard judge {view.id}` says why; with --retry-errors it asks again)" if pairs.errors
                         else f" (`routeyard judge {view.id}` judges them)")
        console.print(line)
    for error, n in view.common_errors:
        console.print(f"  [yellow]{n} failed:[/] {escape(error[:300])}")
    for r in view.rejected[:20]:
        console.print(f"  [yellow]{_where(r)}:[/] {escape(r.reason)}")


def score_examples(items: Sequence[Item]) -> None:
    ranked = sorted(items, key=lambda i: -(i.score or 0))
    table = Table(title="Highest and lowest router scores")
    for col in ("score", "model", "prompt"):
        table.add_column(col)
    for item in ranked[:3] + ranked[-3:]:
        table.add_row(f"{item.score or 0:.3f}", item.model or "", escape(item.prompt[:90]))
    console.print(table)


def judging(view: JudgingView) -> None:
    """A --judge job's end: how many shadow pairs the judge labelled, and why the others got no verdict."""
    if view.mode is None:
        return
    console.print(f"judge ({view.mode}): {view.pairs} shadow pair{'s' if view.pairs != 1 else ''}, {view.judged} "
                  f"judged, {view.errors} without a verdict")
    judge_errors(view)


def judge_errors(view: JudgingView) -> None:
    for group in view.error_reasons:
        sample = f"; e.g. {escape(group.sample_custom_id[:80])}" + (
            f", reply {escape(repr(group.sample_reply[:120]))}" if group.sample_reply is not None else "")
        err.print(f"  [yellow]{group.count} without a verdict:[/] {escape(group.reason[:300])}{sample}")
    for note in view.in_flight_notes:
        err.print(f"  [yellow]{escape(note)}[/]")
    if view.errors:
        err.print(f"  the judge must answer [[A]], [[B]] or [[C]] (grade mode: [[1]]..[[10]]); after fixing it: "
                  f"routeyard judge {view.job_id} --retry-errors")
