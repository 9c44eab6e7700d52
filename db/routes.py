"""Writing what routing decided onto a job's items: the router's scores, then tier, model and threshold, and the
shadow sample. On PostgreSQL each is one statement, its ids (and scores) array parameters: a statement per row
costs a round trip and a plan each, which a million-item job pays a million times."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Float, Integer, any_, bindparam, case, func, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from db.models import Item, Job
from routeyard.states import ItemStatus


def store_scores(session: Session, scores: Sequence[tuple[int, float]], router_version: str) -> None:
    """A scoring batch's (item id, score) pairs and the router version that gave them."""
    if not scores:
        return
    if session.get_bind().dialect.name == "postgresql":
        scores_in_one_statement(session, scores, router_version)
    else:  # SQLite: no arrays, and no round trips to save
        scores_row_by_row(session, scores, router_version)


def scores_in_one_statement(session: Session, scores: Sequence[tuple[int, float]], router_version: str) -> None:
    """PostgreSQL: one UPDATE joined to the unnested id and score arrays."""
    ids, values = zip(*scores, strict=True)
    given = (func.unnest(bindparam("ids", list(ids), type_=ARRAY(Integer)),
                         bindparam("scores", list(values), type_=ARRAY(Float)))
             .table_valued("id", "score").render_derived("given"))
    session.execute(update(Item).where(Item.id == given.c.id).values(score=given.c.score,
                                                                      router_version=router_version)
                    .execution_options(synchronize_session=False))


def scores_row_by_row(session: Session, scores: Sequence[tuple[int, float]], router_version: str) -> None:
    """An UPDATE by primary key per row, sent as one executemany."""
    session.execute(update(Item), [{"id": i, "score": s, "router_version": router_version} for i, s in scores])


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
