"""`routeyard report quality`: what the learning loop gained, per tenant and router version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from db.catalog import find_tenant
from jobs.cli.context import atomic_path, cli_context, console
from jobs.cli.quality_plot import plot_quality
from jobs.services.quality import quality_report
from jobs.services.versions import shipped_router
from routeyard.errors import NotFound

app = typer.Typer(help="Reports over time.", no_args_is_help=True)


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


@app.command("quality")
def quality(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option(help="One tenant (name or id); default: every tenant.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    plot: Annotated[Path | None, typer.Option(help="Also draw it as a PNG.")] = None,
) -> None:
    """Per tenant and router version: held-out APGR when trained (vs the router serving then), the share of
    shadow pairs the judge found the weak answer as good, and realised cost against all-strong."""
    state = cli_context(ctx)
    with state.db() as session:
        tenant_id = None
        if tenant is not None:
            found = find_tenant(session, tenant)
            if found is None:
                raise NotFound(f"no tenant {tenant!r}; see `routeyard tenant list`")
            tenant_id = found.id
        report = quality_report(session, state.settings, tenant_id)
    if plot is not None:
        with atomic_path(plot) as tmp:
            plot_quality(report, tmp)
    if as_json:
        console.print_json(json.dumps(report.to_dict()))
        return
    table = Table(title="Router quality and cost per tenant and version")
    for col in ("tenant", "router", "trained", "serving", "held-out APGR", "vs serving then", "items", "judged",
                "weak as good", "cost $", "loop $", "all-strong $", "saving"):
        table.add_column(col, justify="left" if col in ("tenant", "router", "trained") else "right")
    shipped = shipped_router(state.settings).label
    for v in report.versions:
        t = v.totals.view()
        # not trained here: the shipped router, or one a job named by its directory or hub id
        trained = v.trained_at or ("shipped" if v.router == shipped else "elsewhere")
        table.add_row(escape(v.tenant), v.router, trained[:16], "*" if v.serving else "",
                      _num(v.heldout_apgr, ".4f"), _num(v.serving_apgr_then, ".4f"), str(t["items"]), str(t["judged"]),
                      _num(t["weak_as_good_share"], ".0%"), f"{t['cost_usd']:.4f}", f"{t['loop_cost_usd']:.4f}",
                      f"{t['all_strong_cost_usd']:.4f}", _num(t["saving_pct"], ".1f") + ("%" if t["saving_pct"]
                                                                                         is not None else ""))
    console.print(table)
    if plot is not None:
        console.print(f"wrote {plot}")
