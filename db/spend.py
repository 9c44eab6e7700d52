"""Spend, read from the items themselves (never a running total): one query, grouped as a report needs it.

`spend_rows` groups by tier and model, optionally by period (day or ISO week) and job tag; shadow calls (weak
items also sent to the strong model) come back as their own tier, "shadow", and the judge's calls on shadow
pairs (`--judge`) as "judge". Failed calls are not billed by
the providers, so only succeeded items count. A judge row counts its HTTP calls answered (two per pair, in
either mode) over every attempt, with their tokens and cost added up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar

from sqlalchemy import ColumnElement, Select, func, literal, select
from sqlalchemy.orm import Session

from db.models import Item, Job, Judgment
from routeyard.states import ItemStatus

Q = TypeVar("Q", bound=Select[*tuple[Any, ...]])  # a select over items joined to their jobs, of any columns

Period = Literal["day", "week"]


@dataclass(frozen=True)
class SpendRow:
    tier: str  # strong, weak, shadow or judge
    model: str
    strong_model: str  # the job's strong model: what an all-strong run would have called
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    period: str | None = None  # ISO date of the period's first day (UTC), when grouped by period
    tag: str | None = None  # the job's tag, when grouped by period


@dataclass(frozen=True)
class SpendFilter:
    job_id: str | None = None
    tenant_id: str | None = None
    tag: str | None = None
    since: datetime | None = None


def _period_start(dialect: str, period: Period) -> ColumnElement[Any]:
    """The first day of an item's day or ISO week (Monday), as text, in the database's own SQL."""
    if dialect == "postgresql":
        return func.to_char(func.date_trunc(period, func.timezone("UTC", Item.finished_at)), "YYYY-MM-DD")
    if period == "day":
        return func.strftime("%Y-%m-%d", Item.finished_at)
    return func.date(Item.finished_at, "-6 days", "weekday 1")  # the Monday on or before


def _filtered(query: Q, where: SpendFilter) -> Q:
    """`query` (over items joined to their jobs) narrowed to the filter's job, tenant, tag and start."""
    if where.job_id is not None:
        query = query.where(Item.job_id == where.job_id)
    if where.tenant_id is not None:
        query = query.where(Job.tenant_id == where.tenant_id)
    if where.tag is not None:
        query = query.where(Job.tag == where.tag)
    if where.since is not None:
        query = query.where(Item.finished_at >= where.since)
    return query


def spend_rows(session: Session, where: SpendFilter = SpendFilter(), period: Period | None = None
               ) -> list[SpendRow]:
    """Calls, tokens and dollars per tier and model (and per period and tag, when `period` is given)."""
    if period not in (None, "day", "week"):
        raise ValueError(f"period must be day or week, got {period!r}")
    start = (_period_start(session.get_bind().dialect.name, period) if period else literal(None)).label("period")
    tag = (Job.tag if period else literal(None)).label("tag")
    one = literal(1).label("n")
    routed = select(Item.tier.label("tier"), Item.model.label("model"), Job.strong_model, start, tag, one,
                    Item.prompt_tokens.label("p"), Item.completion_tokens.label("c"), Item.cost_usd.label("d"))
    shadow = (select(literal("shadow").label("tier"), Job.strong_model.label("model"), Job.strong_model, start, tag,
                     one, Item.shadow_prompt_tokens.label("p"), Item.shadow_completion_tokens.label("c"),
                     Item.shadow_cost_usd.label("d"))
              .where(Item.shadow.is_(True), Item.shadow_answer.is_not(None)))
    # a judge's calls are billed even when its reply had no verdict, and a pair judged again (in flight again
    # now, say) keeps what its earlier attempts cost
    judge = (select(literal("judge").label("tier"), Judgment.judge_model.label("model"), Job.strong_model, start,
                    tag, Judgment.calls.label("n"), Judgment.prompt_tokens.label("p"),
                    Judgment.completion_tokens.label("c"), Judgment.cost_usd.label("d"))
             .select_from(Judgment).join(Item, Item.id == Judgment.item_id).where(Judgment.calls > 0))
    parts = []
    for part in (routed, shadow, judge):
        parts.append(_filtered(part.join(Job, Job.id == Item.job_id).where(Item.status == ItemStatus.SUCCEEDED), where))
    u = parts[0].union_all(*parts[1:]).subquery()
    keys = (u.c.period, u.c.tag, u.c.tier, u.c.model, u.c.strong_model)
    query = (select(*keys, func.coalesce(func.sum(u.c.n), 0), func.coalesce(func.sum(u.c.p), 0),
                    func.coalesce(func.sum(u.c.c), 0), func.coalesce(func.sum(u.c.d), 0.0))
             .group_by(*keys).order_by(u.c.period, u.c.tier, u.c.model))
    return [SpendRow(tier, model, strong, int(n), int(p), int(c), float(d), None if per is None else str(per), t)
            for per, t, tier, model, strong, n, p, c, d in session.execute(query)]


@dataclass(frozen=True)
class UnansweredSpend:
    """Requests sent to a provider that never got an answer (timed out, cut off): not in any item's cost, but a
    provider may have processed and billed each one. `cost_bound_usd` is at most what they cost (each priced
    by routeyard.pricing.cost_bound, as if answered in full)."""

    requests: int
    cost_bound_usd: float


def unanswered_spend(session: Session, where: SpendFilter = SpendFilter()) -> UnansweredSpend:
    """Unanswered requests of the items `where` selects, succeeded or failed (a call that succeeded on a retry
    may have timed out before), and of the judge's calls on their shadow pairs (cut off or timed out)."""
    items = (select(func.coalesce(func.sum(Item.unanswered_attempts), 0),
                    func.coalesce(func.sum(Item.unanswered_cost_usd), 0.0))
             .join(Job, Job.id == Item.job_id).where(Item.unanswered_attempts > 0))
    judge = (select(func.coalesce(func.sum(Judgment.unanswered_attempts), 0),
                    func.coalesce(func.sum(Judgment.unanswered_cost_usd), 0.0))
             .select_from(Judgment).join(Item, Item.id == Judgment.item_id).join(Job, Job.id == Item.job_id)
             .where(Judgment.unanswered_attempts > 0))
    requests, bound = 0, 0.0
    for query in (items, judge):
        n, d = session.execute(_filtered(query, where)).one()
        requests, bound = requests + int(n or 0), bound + float(d or 0.0)
    return UnansweredSpend(requests, bound)
