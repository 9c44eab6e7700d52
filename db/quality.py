"""What the learning loop gained, read from the items and judgments themselves: per tenant, per router version
(the one that scored each item) and per day, the items routed and their cost, and the shadow pairs the judge
read, with how many it found the weak answer as good."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import Session

from db.models import Item, Job, Judgment
from routeyard.states import ItemStatus, JudgmentStatus


def _day(dialect: str, column: Any) -> ColumnElement[Any]:
    if dialect == "postgresql":
        return func.to_char(func.date_trunc("day", func.timezone("UTC", column)), "YYYY-MM-DD")
    return func.strftime("%Y-%m-%d", column)


@dataclass(frozen=True)
class UsageRow:
    tenant_id: str
    router_version: str  # name@version, as items record it
    day: str
    tier: str  # strong or weak
    strong_model: str
    items: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float  # the routed calls
    shadow_cost_usd: float  # and the shadow calls made for feedback


def usage_rows(session: Session, tenant_id: str | None = None) -> list[UsageRow]:
    day = _day(session.get_bind().dialect.name, Item.finished_at).label("day")
    keys = (Job.tenant_id, Item.router_version, day, Item.tier, Job.strong_model)
    query = (select(*keys, func.count(), func.coalesce(func.sum(Item.prompt_tokens), 0),
                    func.coalesce(func.sum(Item.completion_tokens), 0), func.coalesce(func.sum(Item.cost_usd), 0.0),
                    func.coalesce(func.sum(Item.shadow_cost_usd), 0.0))
             .join(Job, Job.id == Item.job_id)
             .where(Item.status == ItemStatus.SUCCEEDED, Item.router_version.is_not(None))
             .group_by(*keys).order_by(day))
    if tenant_id is not None:
        query = query.where(Job.tenant_id == tenant_id)
    return [UsageRow(t, v, str(d), str(tier), m, int(n), int(p), int(c), float(cost), float(shadow))
            for t, v, d, tier, m, n, p, c, cost, shadow in session.execute(query)]


@dataclass(frozen=True)
class JudgedRow:
    tenant_id: str
    router_version: str
    day: str
    judged: int
    weak_as_good: int  # the judge said the weak answer was as good (a tie) or better
    errors: int
    cost_usd: float


def judged_rows(session: Session, tenant_id: str | None = None) -> list[JudgedRow]:
    day = _day(session.get_bind().dialect.name, Judgment.finished_at).label("day")
    keys = (Judgment.tenant_id, Item.router_version, day)
    judged = Judgment.status == JudgmentStatus.JUDGED
    query = (select(*keys, func.sum(case((judged, 1), else_=0)),
                    func.sum(case((judged & (Judgment.label <= 0.5), 1), else_=0)),
                    func.sum(case((Judgment.status == JudgmentStatus.ERROR, 1), else_=0)),
                    func.coalesce(func.sum(Judgment.cost_usd), 0.0))
             .join(Item, Item.id == Judgment.item_id)
             .where(Judgment.finished_at.is_not(None)).group_by(*keys).order_by(day))  # a retry keeps its cost
    if tenant_id is not None:
        query = query.where(Judgment.tenant_id == tenant_id)
    return [JudgedRow(t, v or "-", str(d), int(j or 0), int(w or 0), int(e or 0), float(c))
            for t, v, d, j, w, e, c in session.execute(query)]
