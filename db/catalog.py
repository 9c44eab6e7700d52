"""What the product keeps besides jobs: tenants, router versions, schedules and feedback rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.jobs import rowcount
from db.models import LOCAL_TENANT, Feedback, Item, Job, RouterVersion, Schedule, Tenant, utcnow
from routeyard.errors import NotFound
from routeyard.states import JOB_ACTIVE

# --- tenants ----------------------------------------------------------------------------------------------


def add_tenant(session: Session, tenant_id: str, name: str, key_hash: str) -> Tenant:
    tenant = Tenant(id=tenant_id, name=name, key_hash=key_hash, key_issued_at=utcnow())
    session.add(tenant)
    return tenant


def tenant_by_key_hash(session: Session, key_hash: str) -> Tenant | None:
    """The tenant holding this key now; a revoked or rotated-away key matches none."""
    return session.scalar(select(Tenant).where(Tenant.key_hash == key_hash, Tenant.revoked_at.is_(None)))


def tenant_by_name(session: Session, name: str) -> Tenant | None:
    return session.scalar(select(Tenant).where(Tenant.name == name))


def find_tenant(session: Session, name_or_id: str, *, lock: bool = False) -> Tenant | None:
    """By id, else by name; with `lock`, the row is locked (two rotations at once cannot both hand out a key)."""
    query = select(Tenant).execution_options(populate_existing=True)
    if lock:
        query = query.with_for_update()
    return (session.scalar(query.where(Tenant.id == name_or_id))
            or session.scalar(query.where(Tenant.name == name_or_id)))


def list_tenants(session: Session) -> list[tuple[Tenant, int]]:
    """Every tenant, oldest first, with how many jobs it owns."""
    jobs = select(Job.tenant_id, func.count().label("n")).group_by(Job.tenant_id).subquery()
    rows = session.execute(select(Tenant, func.coalesce(jobs.c.n, 0))
                           .join(jobs, jobs.c.tenant_id == Tenant.id, isouter=True)
                           .order_by(Tenant.created_at, Tenant.id))
    return [(tenant, int(n)) for tenant, n in rows]


def tenant_job_count(session: Session, tenant_id: str) -> int:
    return session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id)) or 0


def set_tenant_key(session: Session, tenant: Tenant, key_hash: str | None) -> None:
    """A new key (the old one stops matching, and a revoked tenant is active again), or None: revoked."""
    tenant.key_hash = key_hash
    if key_hash is None:
        tenant.revoked_at = tenant.revoked_at or utcnow()
    else:
        tenant.key_issued_at, tenant.revoked_at = utcnow(), None


def unfinished_tenant_jobs(session: Session) -> list[str]:
    """Jobs submitted by tenants (over the API) that have not ended, oldest first. The local tenant's jobs
    (the CLI's, run in the CLI's own process) are not included: `routeyard resume` is theirs."""
    return list(session.scalars(select(Job.id).where(Job.tenant_id != LOCAL_TENANT, Job.status.in_(JOB_ACTIVE))
                                .order_by(Job.created_at, Job.id)))


# --- router versions --------------------------------------------------------------------------------------
# A version belongs to a tenant (trained on its feedback, serving only its jobs) or, with tenant_id None, is the
# global default: what serves a tenant with no promoted version of its own. One version serves per owner.

ANY_TENANT = "*"  # list_versions: every owner's versions


def _owned_by(tenant_id: str | None) -> Any:
    return RouterVersion.tenant_id.is_(None) if tenant_id is None else RouterVersion.tenant_id == tenant_id


def serving_version(session: Session, tenant_id: str | None = None) -> RouterVersion | None:
    """The version serving this owner's jobs (None: the global default's)."""
    return session.scalar(select(RouterVersion).where(RouterVersion.serving.is_(True), _owned_by(tenant_id))
                          .order_by(RouterVersion.promoted_at.desc()))


def list_versions(session: Session, tenant_id: str | None = ANY_TENANT) -> list[RouterVersion]:
    query = select(RouterVersion).order_by(RouterVersion.created_at.desc(), RouterVersion.id.desc())
    if tenant_id != ANY_TENANT:
        query = query.where(_owned_by(tenant_id))
    return list(session.scalars(query))


def version_named(session: Session, version: str, tenant_id: str | None = ANY_TENANT) -> RouterVersion | None:
    query = select(RouterVersion).where(RouterVersion.version == version)
    if tenant_id != ANY_TENANT:
        query = query.where(_owned_by(tenant_id))
    return session.scalar(query.order_by(RouterVersion.created_at.desc()))


def add_version(session: Session, row: RouterVersion, *, serve: bool) -> RouterVersion:
    """Store a trained version; with `serve`, it becomes the one serving its owner's jobs (and no other of that
    owner's does; other tenants' are untouched). A version its owner already has (the same weights trained
    again) is not stored twice: the stored row is returned, its decision extended, and served if `serve`."""
    existing = version_named(session, row.version, row.tenant_id)
    if existing is not None:
        if serve:
            serve_version(session, existing, f"trained again at {utcnow().isoformat(timespec='seconds')}, "
                                             f"the same weights: {row.decision}")
        else:
            existing.decision += f"; trained again at {utcnow().isoformat(timespec='seconds')}, the same weights"
        return existing
    if serve:
        session.execute(update(RouterVersion).where(_owned_by(row.tenant_id)).values(serving=False))
        row.serving, row.promoted_at = True, utcnow()
    session.add(row)
    return row


def serve_version(session: Session, row: RouterVersion | None, note: str, tenant_id: str | None = None) -> None:
    """Make `row` the serving version of its owner (None: no trained version of `tenant_id`'s serves, so the
    global default or the shipped one does), noting why on the rows that change."""
    owner = row.tenant_id if row is not None else tenant_id
    for current in session.scalars(select(RouterVersion).where(RouterVersion.serving.is_(True), _owned_by(owner))):
        if current is not row:
            current.serving = False
            current.decision += f"; {note}" if row is None else ""
    if row is not None:
        row.serving, row.promoted_at = True, utcnow()
        row.decision += f"; {note}"


# --- schedules --------------------------------------------------------------------------------------------


def add_schedule(session: Session, task: str, args: dict[str, Any], cron: str | None,
                 every_s: float | None) -> Schedule:
    row = Schedule(task=task, cron=cron, every_s=every_s, args=args)
    session.add(row)
    return row


def list_schedules(session: Session, enabled_only: bool = False) -> list[Schedule]:
    query = select(Schedule).order_by(Schedule.id)
    if enabled_only:
        query = query.where(Schedule.enabled.is_(True))
    return list(session.scalars(query))


def remove_schedule(session: Session, schedule_id: int) -> None:
    row = session.get(Schedule, schedule_id)
    if row is None:
        raise NotFound(f"no schedule {schedule_id}")
    session.delete(row)


def claim_schedule_run(session: Session, row: Schedule, now: datetime) -> bool:
    """Claim one firing of a due schedule by moving its last run time: of two beats, only one wins."""
    same = Schedule.last_run_at.is_(None) if row.last_run_at is None else Schedule.last_run_at == row.last_run_at
    claimed = session.execute(update(Schedule).where(Schedule.id == row.id, same).values(last_run_at=now)
                              .execution_options(synchronize_session=False))
    return rowcount(claimed) == 1


def record_schedule_result(session: Session, schedule_id: int, result: str) -> None:
    session.execute(update(Schedule).where(Schedule.id == schedule_id).values(last_result=result[:20000]))


# --- feedback ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedbackRow:
    item_id: int
    kind: str
    value: float
    prompt: str
    tier: str | None  # the tier that answered the item


def tenants_with_feedback(session: Session) -> list[str]:
    """Tenants with feedback (a user's or the judge's), oldest tenant first."""
    return list(session.scalars(select(Tenant.id).where(Tenant.id.in_(select(Feedback.tenant_id).distinct()))
                                .order_by(Tenant.created_at, Tenant.id)))


def add_feedback(session: Session, item_id: int, kind: str, value: float, tenant_id: str = LOCAL_TENANT) -> Feedback:
    row = Feedback(item_id=item_id, kind=kind, value=value, tenant_id=tenant_id)
    session.add(row)
    return row


def feedback_rows(session: Session, since: datetime | None = None, tenant_id: str | None = ANY_TENANT
                  ) -> Sequence[FeedbackRow]:
    """A tenant's judgements (every tenant's with ANY_TENANT) with their items' prompts and tiers, oldest first."""
    query = (select(Feedback.item_id, Feedback.kind, Feedback.value, Item.prompt, Item.tier)
             .join(Item, Item.id == Feedback.item_id).order_by(Feedback.created_at, Feedback.id))
    if tenant_id != ANY_TENANT:
        query = query.where(Feedback.tenant_id == tenant_id)
    if since is not None:
        query = query.where(Feedback.created_at >= since)
    return [FeedbackRow(*row) for row in session.execute(query)]
