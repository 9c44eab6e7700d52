"""Writing a job's routing decisions onto its items: tier, model and threshold, and the shadow sample."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Integer, any_, bindparam, case, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from db.models import Item, Job
from routeyard.states import ItemStatus


def store_routes(session: Session, job: Job, ids: Sequence[int], strong: Sequence[bool], threshold: float) -> None:
    """Route the items still pending (a cancel that got there first wins), each pending item rewritten once on
    PostgreSQL: every rewrite of a row adds an entry to each of its indexes, and a million-item job's routing
    took 140 s of one core when its strong half was written twice (benchmarks/routing_writes.py)."""
    chosen = [i for i, s in zip(ids, strong, strict=True) if s]
    if session.get_bind().dialect.name == "postgresql":
        routes_in_one_statement(session, job, chosen, threshold)
    else:
        routes_in_two_passes(session, job, chosen, threshold)
    job.threshold = threshold


def routes_in_one_statement(session: Session, job: Job, chosen: Sequence[int], threshold: float) -> None:
    """PostgreSQL: one UPDATE, the strong ids one array parameter (SQLite has no arrays)."""
    is_strong = Item.id == any_(bindparam("strong_ids", list(chosen), type_=ARRAY(Integer)))
    session.execute(update(Item).where(Item.job_id == job.id, Item.status == ItemStatus.PENDING)
                    .values(tier=case((is_strong, "strong"), else_="weak"),
                            model=case((is_strong, job.strong_model), else_=job.weak_model),
                            threshold=threshold, status=ItemStatus.ROUTED)
                    .execution_options(synchronize_session=False))


def routes_in_two_passes(session: Session, job: Job, chosen: Sequence[int], threshold: float) -> None:
    """Every pending item made weak, then the strong share written by id, a thousand ids per statement."""
    session.execute(update(Item).where(Item.job_id == job.id, Item.status == ItemStatus.PENDING)
                    .values(tier="weak", model=job.weak_model, threshold=threshold, status=ItemStatus.ROUTED)
                    .execution_options(synchronize_session=False))
    for start in range(0, len(chosen), 1000):
        session.execute(update(Item).where(Item.id.in_(chosen[start : start + 1000]),
                                           Item.job_id == job.id, Item.status == ItemStatus.ROUTED)
                        .values(tier="strong", model=job.strong_model).execution_options(synchronize_session=False))


def mark_shadow(session: Session, ids: Sequence[int]) -> None:
    if ids:
        session.execute(update(Item).where(Item.id.in_(ids)).values(shadow=True))
