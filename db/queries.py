"""Every query the jobs and workers run. State changes are conditional UPDATEs, so they are safe to repeat."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.models import LOCAL_TENANT, Item, ItemStatus, Job, JobStatus, RejectedLine, Tenant, utcnow

UNFINISHED = (ItemStatus.PENDING, ItemStatus.ROUTED, ItemStatus.IN_FLIGHT)
ENDED = (JobStatus.COMPLETED, JobStatus.CANCELLED)


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
    shadow: bool = False


def get_job(session: Session, job_id: str, tenant_id: str | None = None, *, lock: bool = False) -> Job:
    """The job; another tenant's job is reported as not found, exactly like a missing one."""
    query = select(Job).where(Job.id == job_id)
    if lock:  # serialise concurrent workers on this job's row (PostgreSQL; SQLite has one writer anyway)
        query = query.with_for_update()
    job = session.scalar(query)
    if job is None or (tenant_id is not None and job.tenant_id != tenant_id):
        raise JobNotFound(f"no job {job_id!r}")
    return job


def job_by_key(session: Session, key: str, tenant_id: str = LOCAL_TENANT) -> Job | None:
    return session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))


def list_jobs(session: Session, limit: int = 50, tenant_id: str | None = None) -> list[Job]:
    query = select(Job).order_by(Job.created_at.desc()).limit(limit)
    if tenant_id is not None:
        query = query.where(Job.tenant_id == tenant_id)
    return list(session.scalars(query))


def add_tenant(session: Session, tenant_id: str, name: str, key_hash: str) -> Tenant:
    tenant = Tenant(id=tenant_id, name=name, key_hash=key_hash)
    session.add(tenant)
    return tenant


def tenant_by_key_hash(session: Session, key_hash: str) -> Tenant | None:
    return session.scalar(select(Tenant).where(Tenant.key_hash == key_hash))


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
    """Route the items still pending (a cancel that got there first wins)."""
    session.execute(update(Item).where(Item.status == ItemStatus.PENDING)
                    .execution_options(synchronize_session=None), [
        {"id": i, "tier": "strong" if s else "weak", "model": job.strong_model if s else job.weak_model,
         "threshold": threshold, "status": ItemStatus.ROUTED}
        for i, s in zip(ids, strong, strict=True)
    ])
    job.threshold = threshold


def item_bodies(session: Session, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for start in range(0, len(ids), 1000):
        out.update(session.execute(select(Item.id, Item.body).where(Item.id.in_(ids[start : start + 1000]))).all())
    return out


def item_ids(session: Session, job_id: str, status: str) -> list[int]:
    return list(session.scalars(select(Item.id).where(Item.job_id == job_id, Item.status == status)
                                .order_by(Item.id)))


def unscored_ids(session: Session, job_id: str) -> list[int]:
    return list(session.scalars(select(Item.id).where(Item.job_id == job_id, Item.status == ItemStatus.PENDING,
                                                      Item.score.is_(None)).order_by(Item.id)))


def unscored_in(session: Session, item_ids: Sequence[int]) -> list[tuple[int, str]]:
    rows = session.execute(select(Item.id, Item.prompt).where(Item.id.in_(item_ids), Item.score.is_(None),
                                                              Item.status == ItemStatus.PENDING).order_by(Item.id))
    return [(r.id, r.prompt) for r in rows]


def claimable_ids(session: Session, job_id: str, lease_s: float) -> list[int]:
    """Items waiting for a call: routed, or in flight past their lease."""
    stale = utcnow() - timedelta(seconds=lease_s)
    return list(session.scalars(select(Item.id).where(
        Item.job_id == job_id,
        (Item.status == ItemStatus.ROUTED) | ((Item.status == ItemStatus.IN_FLIGHT) & (Item.started_at < stale)),
    ).order_by(Item.id)))


def cancel_job(session: Session, job: Job) -> int:
    """Stop a job: items not yet called are cancelled; calls already in flight finish and are kept."""
    if job.status in (JobStatus.COMPLETED, JobStatus.CANCELLED):
        return 0
    res = session.execute(update(Item).where(Item.job_id == job.id,
                                             Item.status.in_((ItemStatus.PENDING, ItemStatus.ROUTED)))
                          .values(status=ItemStatus.CANCELLED))
    job.status, job.finished_at = JobStatus.CANCELLED, utcnow()
    return res.rowcount


def stalled_jobs(session: Session, stall_s: float) -> list[Job]:
    """Unfinished jobs with no sign of life (scoring heartbeat, a call started or finished) for `stall_s`."""
    cutoff = utcnow() - timedelta(seconds=stall_s)
    last_call = (select(Item.job_id, func.max(Item.started_at).label("started"),
                        func.max(Item.finished_at).label("finished")).group_by(Item.job_id).subquery())
    rows = session.execute(select(Job, last_call.c.started, last_call.c.finished)
                           .join(last_call, last_call.c.job_id == Job.id, isouter=True)
                           .where(Job.status.in_((JobStatus.QUEUED, JobStatus.SCORING, JobStatus.RUNNING))))
    out = []
    for job, started, finished in rows:
        signs = [t for t in (job.created_at, job.heartbeat_at, started, finished) if t is not None]
        if max(_aware(t) for t in signs) < cutoff:
            out.append(job)
    return out


def _aware(t: datetime) -> datetime:
    """SQLite hands datetimes back naive; they were stored in UTC."""
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def claim_item(session: Session, item_id: int, lease_s: float | None = None) -> Claim | None:
    """Mark a routed item in flight; None if it is finished or in flight elsewhere. With `lease_s`, an item in
    flight for longer than that counts as abandoned (its worker died) and may be claimed again."""
    claimable = Item.status == ItemStatus.ROUTED
    if lease_s is not None:
        stale = utcnow() - timedelta(seconds=lease_s)
        claimable = claimable | ((Item.status == ItemStatus.IN_FLIGHT) & (Item.started_at < stale))
    row = session.execute(
        update(Item).where(Item.id == item_id, claimable)
        .values(status=ItemStatus.IN_FLIGHT, attempts=Item.attempts + 1, started_at=utcnow())
        .returning(Item.tier, Item.body, Item.shadow)
    ).first()
    return Claim(row.tier, row.body, bool(row.shadow)) if row else None


def mark_shadow(session: Session, ids: Sequence[int]) -> None:
    if ids:
        session.execute(update(Item).where(Item.id.in_(ids)).values(shadow=True))


def record_result(session: Session, item_id: int, result: CallOutcome, cost: float,
                  shadow: CallOutcome | None = None, shadow_cost: float = 0.0) -> bool:
    """Store a call's result (and its shadow call's) unless the item already succeeded (a duplicate delivery);
    True if stored."""
    values: dict[str, Any] = {
        "status": ItemStatus.SUCCEEDED if result.ok else ItemStatus.FAILED,
        "status_code": result.status_code, "response": result.response, "answer": result.answer,
        "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
        "cost_usd": cost, "latency_ms": result.latency_ms, "error": result.error, "finished_at": utcnow(),
    }
    if shadow is not None:
        values.update(shadow_answer=shadow.answer, shadow_prompt_tokens=shadow.prompt_tokens,
                      shadow_completion_tokens=shadow.completion_tokens, shadow_cost_usd=shadow_cost,
                      shadow_error=shadow.error)
    res = session.execute(update(Item).where(Item.id == item_id, Item.status != ItemStatus.SUCCEEDED).values(**values))
    return res.rowcount == 1


def set_job_status(session: Session, job_id: str, status: str, **values: Any) -> bool:
    """Move a job to `status` unless it has already ended (cancelled or completed): a runner that read the job
    before a cancel must not undo it. True if the job moved."""
    res = session.execute(update(Job).where(Job.id == job_id, Job.status.not_in(ENDED))
                          .values(status=status, **values).execution_options(synchronize_session="fetch"))
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
        set_job_status(session, job_id, JobStatus.COMPLETED, finished_at=utcnow())
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


def shadow_spend(session: Session, job_id: str | None = None, since: datetime | None = None,
                 tenant_id: str | None = None) -> list[SpendRow]:
    """Shadow calls (weak items also sent to the strong model) per strong model."""
    query = (select(Job.strong_model, func.count(), func.coalesce(func.sum(Item.shadow_prompt_tokens), 0),
                    func.coalesce(func.sum(Item.shadow_completion_tokens), 0),
                    func.coalesce(func.sum(Item.shadow_cost_usd), 0.0))
             .join(Job, Job.id == Item.job_id)
             .where(Item.shadow.is_(True), Item.shadow_answer.is_not(None), Item.status == ItemStatus.SUCCEEDED)
             .group_by(Job.strong_model))
    query = _spend_filters(query, job_id, since, tenant_id)
    return [SpendRow("shadow", m, m, int(c), int(p), int(o), float(d)) for m, c, p, o, d in session.execute(query)]


def items_page(session: Session, job_id: str, offset: int, limit: int) -> list[Item]:
    return list(session.scalars(select(Item).where(Item.job_id == job_id).order_by(Item.line_no)
                                .offset(offset).limit(limit)))


@dataclass(frozen=True)
class SpendRow:
    tier: str
    model: str
    strong_model: str  # the job's strong model: what an all-strong run would have called
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


def spend_rows(session: Session, job_id: str | None = None, since: datetime | None = None,
               tenant_id: str | None = None) -> list[SpendRow]:
    """Per tier and model: succeeded calls, tokens and dollars (failed calls are not billed by the providers)."""
    query = (select(Item.tier, Item.model, Job.strong_model, func.count(),
                    func.coalesce(func.sum(Item.prompt_tokens), 0), func.coalesce(func.sum(Item.completion_tokens), 0),
                    func.coalesce(func.sum(Item.cost_usd), 0.0))
             .join(Job, Job.id == Item.job_id).where(Item.status == ItemStatus.SUCCEEDED)
             .group_by(Item.tier, Item.model, Job.strong_model).order_by(Item.tier, Item.model))
    query = _spend_filters(query, job_id, since, tenant_id)
    return [SpendRow(t, m, sm, int(c), int(p), int(o), float(d)) for t, m, sm, c, p, o, d in session.execute(query)]


def _spend_filters(query: Any, job_id: str | None, since: datetime | None, tenant_id: str | None) -> Any:
    if job_id is not None:
        query = query.where(Item.job_id == job_id)
    if since is not None:
        query = query.where(Item.finished_at >= since)
    if tenant_id is not None:
        query = query.where(Job.tenant_id == tenant_id)
    return query


@dataclass(frozen=True)
class PeriodRow:
    period: str  # ISO date of the period's first day (UTC)
    tag: str | None
    tier: str
    model: str
    strong_model: str
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


def _period_start(dialect: str, period: str) -> Any:
    """The first day of an item's day or ISO week (Monday), as text, in the database's own SQL."""
    if dialect == "postgresql":
        return func.to_char(func.date_trunc(period, func.timezone("UTC", Item.finished_at)), "YYYY-MM-DD")
    if period == "day":
        return func.strftime("%Y-%m-%d", Item.finished_at)
    return func.date(Item.finished_at, "-6 days", "weekday 1")  # the Monday on or before


def spend_by_period(session: Session, period: str, tag: str | None = None, tenant_id: str | None = None,
                    since: datetime | None = None) -> list[PeriodRow]:
    if period not in ("day", "week"):
        raise ValueError(f"period must be day or week, got {period!r}")
    start = _period_start(session.get_bind().dialect.name, period).label("period")
    query = (select(start, Job.tag, Item.tier, Item.model, Job.strong_model, func.count(),
                    func.coalesce(func.sum(Item.prompt_tokens), 0), func.coalesce(func.sum(Item.completion_tokens), 0),
                    func.coalesce(func.sum(Item.cost_usd), 0.0))
             .join(Job, Job.id == Item.job_id).where(Item.status == ItemStatus.SUCCEEDED)
             .group_by(start, Job.tag, Item.tier, Item.model, Job.strong_model).order_by(start))
    if tag is not None:
        query = query.where(Job.tag == tag)
    if tenant_id is not None:
        query = query.where(Job.tenant_id == tenant_id)
    if since is not None:
        query = query.where(Item.finished_at >= since)
    return [PeriodRow(str(p), t, tier, m, sm, int(c), int(pt), int(ct), float(d))
            for p, t, tier, m, sm, c, pt, ct, d in session.execute(query)]
