"""Every query the jobs and workers run. State changes are conditional UPDATEs, so they are safe to repeat."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.models import Item, ItemStatus, Job, JobStatus, RejectedLine, utcnow

UNFINISHED = (ItemStatus.PENDING, ItemStatus.ROUTED, ItemStatus.IN_FLIGHT)


class JobNotFound(LookupError):
    pass


class CallOutcome(Protocol):
    ok: bool
    status_code: int | None
    response: dict[str, Any] | None
    answer: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    error: str | None


@dataclass(frozen=True)
class Claim:
    tier: str
    body: dict[str, Any]


def get_job(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(f"no job {job_id!r}")
    return job


def job_by_key(session: Session, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.idempotency_key == key))


def list_jobs(session: Session, limit: int = 50) -> list[Job]:
    return list(session.scalars(select(Job).order_by(Job.created_at.desc()).limit(limit)))


def add_items(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        session.execute(Item.__table__.insert(), [{"status": ItemStatus.PENDING, "attempts": 0, **r} for r in rows])


def add_rejected(session: Session, job_id: str, rejected: Sequence[tuple[int, str]]) -> None:
    if rejected:
        session.execute(RejectedLine.__table__.insert(),
                        [{"job_id": job_id, "line_no": n, "reason": reason} for n, reason in rejected])


def rejected_lines(session: Session, job_id: str) -> list[RejectedLine]:
    return list(session.scalars(select(RejectedLine).where(RejectedLine.job_id == job_id)
                                .order_by(RejectedLine.line_no)))


def unscored_items(session: Session, job_id: str, limit: int) -> list[tuple[int, str]]:
    rows = session.execute(select(Item.id, Item.prompt)
                           .where(Item.job_id == job_id, Item.status == ItemStatus.PENDING, Item.score.is_(None))
                           .order_by(Item.id).limit(limit))
    return [(r.id, r.prompt) for r in rows]


def store_scores(session: Session, scores: Sequence[tuple[int, float]], router_version: str) -> None:
    session.execute(update(Item), [{"id": i, "score": s, "router_version": router_version} for i, s in scores])


def item_scores(session: Session, job_id: str) -> tuple[list[int], list[float]]:
    rows = session.execute(select(Item.id, Item.score).where(Item.job_id == job_id).order_by(Item.id)).all()
    missing = [r.id for r in rows if r.score is None]
    if missing:
        raise RuntimeError(f"job {job_id}: {len(missing)} items are not scored yet")
    return [r.id for r in rows], [r.score for r in rows]


def store_routes(session: Session, job: Job, ids: Sequence[int], strong: Sequence[bool], threshold: float) -> None:
    session.execute(update(Item), [
        {"id": i, "tier": "strong" if s else "weak", "model": job.strong_model if s else job.weak_model,
         "threshold": threshold, "status": ItemStatus.ROUTED}
        for i, s in zip(ids, strong, strict=True)
    ])
    job.threshold = threshold


def item_ids(session: Session, job_id: str, status: str) -> list[int]:
    return list(session.scalars(select(Item.id).where(Item.job_id == job_id, Item.status == status)
                                .order_by(Item.id)))


def claim_item(session: Session, item_id: int) -> Claim | None:
    """Mark a routed item in flight; None if it is not routed any more (done, or claimed by someone else)."""
    row = session.execute(
        update(Item).where(Item.id == item_id, Item.status == ItemStatus.ROUTED)
        .values(status=ItemStatus.IN_FLIGHT, attempts=Item.attempts + 1, started_at=utcnow())
        .returning(Item.tier, Item.body)
    ).first()
    return Claim(row.tier, row.body) if row else None


def record_result(session: Session, item_id: int, result: CallOutcome, cost: float) -> bool:
    """Store a call's result unless the item already succeeded (a duplicate delivery); True if stored."""
    values: dict[str, Any] = {
        "status": ItemStatus.SUCCEEDED if result.ok else ItemStatus.FAILED,
        "status_code": result.status_code, "response": result.response, "answer": result.answer,
        "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
        "cost_usd": cost, "latency_ms": result.latency_ms, "error": result.error, "finished_at": utcnow(),
    }
    res = session.execute(update(Item).where(Item.id == item_id, Item.status != ItemStatus.SUCCEEDED).values(**values))
    return res.rowcount == 1


def requeue(session: Session, job_id: str, statuses: Sequence[str]) -> int:
    """Put interrupted (in flight) or failed items back to routed, so they are called again."""
    res = session.execute(update(Item).where(Item.job_id == job_id, Item.status.in_(statuses))
                          .values(status=ItemStatus.ROUTED, error=None))
    job = get_job(session, job_id)
    if res.rowcount and job.status == JobStatus.COMPLETED:
        job.status, job.finished_at = JobStatus.RUNNING, None
    return res.rowcount


def router_versions(session: Session, job_id: str) -> list[str]:
    return sorted(session.scalars(select(Item.router_version).where(Item.job_id == job_id,
                                                                    Item.router_version.is_not(None)).distinct()))


def status_counts(session: Session, job_id: str) -> dict[str, int]:
    rows = session.execute(select(Item.status, func.count()).where(Item.job_id == job_id).group_by(Item.status))
    return {status: n for status, n in rows}


def finish_job_if_done(session: Session, job_id: str) -> bool:
    job = get_job(session, job_id)
    if job.status in (JobStatus.COMPLETED, JobStatus.CANCELLED):
        return True
    left = session.scalar(select(func.count()).where(Item.job_id == job_id, Item.status.in_(UNFINISHED)))
    if left == 0 and job.threshold is not None:
        job.status, job.finished_at = JobStatus.COMPLETED, utcnow()
        return True
    return False


def iter_items(session: Session, job_id: str, chunk: int = 1000) -> Iterator[Item]:
    """All items of a job in input order, a chunk at a time (jobs can be large)."""
    last = -1
    while True:
        rows = list(session.scalars(select(Item).where(Item.job_id == job_id, Item.line_no > last)
                                    .order_by(Item.line_no).limit(chunk)))
        if not rows:
            return
        yield from rows
        last = rows[-1].line_no


@dataclass(frozen=True)
class SpendRow:
    tier: str
    model: str
    strong_model: str  # the job's strong model: what an all-strong run would have called
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


def spend_rows(session: Session, job_id: str | None = None, since: datetime | None = None) -> list[SpendRow]:
    """Per tier and model: succeeded calls, tokens and dollars (failed calls are not billed by the providers)."""
    query = (select(Item.tier, Item.model, Job.strong_model, func.count(),
                    func.coalesce(func.sum(Item.prompt_tokens), 0), func.coalesce(func.sum(Item.completion_tokens), 0),
                    func.coalesce(func.sum(Item.cost_usd), 0.0))
             .join(Job, Job.id == Item.job_id).where(Item.status == ItemStatus.SUCCEEDED)
             .group_by(Item.tier, Item.model, Job.strong_model).order_by(Item.tier, Item.model))
    if job_id is not None:
        query = query.where(Item.job_id == job_id)
    if since is not None:
        query = query.where(Item.finished_at >= since)
    return [SpendRow(t, m, sm, int(c), int(p), int(o), float(d)) for t, m, sm, c, p, o, d in session.execute(query)]
