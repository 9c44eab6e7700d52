"""Why a job's items failed, most common reason first: what a user needs to see before reading every result."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Item
from routeyard.states import ItemStatus


def common_errors(session: Session, job_id: str, limit: int = 3) -> list[tuple[str, int]]:
    """(error, items) of the job's failed items, the most frequent first (ties: the error text), at most
    `limit`. The (job_id, status) index finds the failed items; a job whose calls all failed the same way
    (an endpoint down, a refused key) shows one line."""
    n = func.count().label("n")
    rows = session.execute(select(Item.error, n).where(Item.job_id == job_id, Item.status == ItemStatus.FAILED)
                           .group_by(Item.error).order_by(n.desc(), Item.error).limit(limit))
    return [(error or "no error recorded", count) for error, count in rows]
