"""Batches of the OpenAI-compatible Batch API. A valid batch is a job (the same id); this table keeps what the
Batch API adds: its input file, metadata, validation errors, output files and timestamps. Writing the output
files is claimed with a conditional UPDATE (a lease), so two readers never write them twice."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, tuple_, update
from sqlalchemy.orm import Session

from db.jobs import rowcount
from db.models import Batch, Item, Job, utcnow
from routeyard.errors import NotFound
from routeyard.states import ItemStatus


def add_batch(session: Session, row: Batch) -> Batch:
    session.add(row)
    return row


def get_batch(session: Session, batch_id: str, tenant_id: str) -> Batch:
    """The batch; another tenant's is reported as not found, exactly like a missing one."""
    row = session.scalar(select(Batch).where(Batch.id == batch_id, Batch.tenant_id == tenant_id)
                         .execution_options(populate_existing=True))
    if row is None:
        raise NotFound(f"No such Batch object: {batch_id}")
    return row


def batch_for_job(session: Session, job_id: str) -> Batch | None:
    return session.scalar(select(Batch).where(Batch.job_id == job_id))


def list_batches(session: Session, tenant_id: str, after: str | None, limit: int) -> tuple[list[Batch], bool]:
    """A page of the tenant's batches, newest first, after the batch `after`; and whether more follow."""
    query = select(Batch).where(Batch.tenant_id == tenant_id)
    if after:
        cursor = session.scalar(select(Batch).where(Batch.id == after, Batch.tenant_id == tenant_id))
        if cursor is None:
            raise NotFound(f"No such Batch object: {after} (the 'after' cursor)")
        query = query.where(tuple_(Batch.created_at, Batch.id) < tuple_(cursor.created_at, cursor.id))
    rows = list(session.scalars(query.order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def jobs_by_id(session: Session, job_ids: list[str]) -> dict[str, Job]:
    if not job_ids:
        return {}
    return {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(job_ids))
                                                   .execution_options(populate_existing=True))}


def in_flight(session: Session, job_id: str, since: datetime) -> int:
    """Items of the job in flight since `since` (older claims are abandoned: their worker died), and items a
    provider batch still holds (the poller cancels it and merges what it ran)."""
    return session.scalar(select(func.count()).where(
        Item.job_id == job_id, ((Item.status == ItemStatus.IN_FLIGHT) & (Item.started_at >= since))
        | (Item.status == ItemStatus.BATCHED))) or 0


def mark_cancelling(session: Session, batch_id: str) -> None:
    session.execute(update(Batch).where(Batch.id == batch_id, Batch.cancelling_at.is_(None))
                    .values(cancelling_at=utcnow()).execution_options(synchronize_session=False))


def claim_finalize(session: Session, batch_id: str, job_finished_at: datetime, lease_s: float) -> datetime | None:
    """Claim the writing of the batch's output files for the job's end at `job_finished_at`: unless they were
    written for it already, or another writer's claim is younger than `lease_s`. Returns the claim's time."""
    now = utcnow()
    claimed = session.execute(update(Batch).where(
        Batch.id == batch_id,
        or_(Batch.finalized_at.is_(None), Batch.finalized_at < job_finished_at),
        or_(Batch.finalizing_at.is_(None), Batch.finalizing_at <= Batch.finalized_at,
            Batch.finalizing_at < now - timedelta(seconds=lease_s)),
    ).values(finalizing_at=now).execution_options(synchronize_session=False))
    return now if rowcount(claimed) == 1 else None


def record_finalized(session: Session, batch_id: str, claim: datetime, values: dict[str, Any]) -> bool:
    """Store the written files under the claim taken at `claim`; False if another writer took it over (then
    roll back: the files this one added go with it)."""
    done = session.execute(update(Batch).where(and_(Batch.id == batch_id, Batch.finalizing_at == claim))
                           .values(finalized_at=utcnow(), **values).execution_options(synchronize_session=False))
    return rowcount(done) == 1
