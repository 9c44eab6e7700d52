"""Provider batches: the rows that make a tier's share in batch mode crash-safe (worker/provider_batches.py).

An item moves ROUTED -> BATCHED when it is put in a provider batch (in the transaction that stores the batch's
row), and BATCHED -> SUCCEEDED / FAILED, or back to ROUTED, when the provider's batch is merged. Items a merged
batch left unanswered keep its id: with the direct fallback, such items are called directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.jobs import lock_job_for_items
from db.models import Item, ProviderBatch, utcnow
from routeyard.states import ItemStatus, ProviderBatchStatus


def unbatched(session: Session, job_id: str, tier: str) -> list[tuple[int, dict[str, Any]]]:
    """(id, body) of the tier's routed items never put in a provider batch, in id order. Shadow items are
    called directly (both answers are wanted together)."""
    rows = session.execute(select(Item.id, Item.body).where(
        Item.job_id == job_id, Item.tier == tier, Item.status == ItemStatus.ROUTED, Item.shadow.is_(False),
        Item.provider_batch_id.is_(None)).order_by(Item.id))
    return [(row.id, row.body) for row in rows]


def direct_ids(session: Session, job_id: str, batch_tiers: Sequence[str]) -> list[int]:
    """The routed items to call directly: every tier not in batch mode, shadow items, and items a merged
    provider batch handed back to direct calls (they keep its id)."""
    query = select(Item.id).where(Item.job_id == job_id, Item.status == ItemStatus.ROUTED)
    if batch_tiers:
        query = query.where(Item.tier.not_in(batch_tiers) | Item.shadow.is_(True) | Item.provider_batch_id.is_not(None))
    return list(session.scalars(query.order_by(Item.id)))


def store_batch(session: Session, job_id: str, tier: str, model: str, item_ids: Sequence[int]) -> ProviderBatch:
    """A new provider batch of these items (still ROUTED; those no longer are, say cancelled, are left out)."""
    lock_job_for_items(session, job_id)
    batch = ProviderBatch(job_id=job_id, tier=tier, model=model, n_requests=len(item_ids), polls=0)
    session.add(batch)
    session.flush()
    for start in range(0, len(item_ids), 1000):
        session.execute(update(Item).where(Item.id.in_(item_ids[start:start + 1000]),
                                           Item.status == ItemStatus.ROUTED)
                        .values(status=ItemStatus.BATCHED, provider_batch_id=batch.id, started_at=utcnow())
                        .execution_options(synchronize_session=False))
    return batch


def open_batches(session: Session, job_id: str) -> list[ProviderBatch]:
    return list(session.scalars(select(ProviderBatch).where(
        ProviderBatch.job_id == job_id, ProviderBatch.status != ProviderBatchStatus.MERGED).order_by(ProviderBatch.id)))


def jobs_with_open_batches(session: Session) -> list[str]:
    return list(session.scalars(select(ProviderBatch.job_id).where(
        ProviderBatch.status != ProviderBatchStatus.MERGED).distinct()))


def get_batch(session: Session, batch_id: int) -> ProviderBatch:
    return session.get_one(ProviderBatch, batch_id, populate_existing=True)


def batch_items(session: Session, batch_id: int) -> dict[int, tuple[dict[str, Any], int]]:
    """The batch's items still waiting for it: id -> (body, attempts)."""
    rows = session.execute(select(Item.id, Item.body, Item.attempts).where(
        Item.provider_batch_id == batch_id, Item.status == ItemStatus.BATCHED))
    return {row.id: (row.body, row.attempts) for row in rows}


def record_polled(session: Session, batch_id: int, provider_status: str, next_poll_at: datetime) -> None:
    session.execute(update(ProviderBatch).where(ProviderBatch.id == batch_id).values(
        provider_status=provider_status, polls=ProviderBatch.polls + 1, next_poll_at=next_poll_at))


def hand_back(session: Session, job_id: str, batch_id: int, item_ids: Sequence[int], keep_batch: bool) -> None:
    """Items the batch left unanswered go back to ROUTED, one attempt more: to the next provider batch, or (with
    `keep_batch`, the direct fallback) to direct calls."""
    lock_job_for_items(session, job_id)
    values: dict[str, Any] = {"status": ItemStatus.ROUTED, "attempts": Item.attempts + 1}
    if not keep_batch:
        values["provider_batch_id"] = None
    for start in range(0, len(item_ids), 1000):
        session.execute(update(Item).where(Item.id.in_(item_ids[start:start + 1000]),
                                           Item.status == ItemStatus.BATCHED)
                        .values(**values).execution_options(synchronize_session=False))


def cancel_waiting(session: Session, job_id: str, batch_id: int) -> None:
    """The items of a cancelled job's provider batch that the provider did not answer."""
    lock_job_for_items(session, job_id)
    session.execute(update(Item).where(Item.provider_batch_id == batch_id, Item.status == ItemStatus.BATCHED)
                    .values(status=ItemStatus.CANCELLED, finished_at=utcnow(),
                            error="the batch was cancelled while this request was in a provider batch, which had "
                                  "not answered it")
                    .execution_options(synchronize_session=False))


def mark_merged(session: Session, batch_id: int, error: str | None = None) -> None:
    session.execute(update(ProviderBatch).where(ProviderBatch.id == batch_id).values(
        status=ProviderBatchStatus.MERGED, merged_at=utcnow(), error=error))
