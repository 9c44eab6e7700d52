"""Stored schedules (`routeyard schedule ...`): cron expressions or fixed intervals, kept in the database so
they survive restarts; beat's `run_schedules` fires the due ones (worker/tasks.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from celery.schedules import crontab
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from db.models import Schedule, utcnow

TASKS = ("retrain",)


def parse_cron(expr: str) -> crontab:
    """Five fields: minute hour day-of-month month day-of-week (UTC)."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"cron {expr!r} must have 5 fields: minute hour day-of-month month day-of-week")
    minute, hour, dom, month, dow = fields
    try:
        return crontab(minute=minute, hour=hour, day_of_month=dom, month_of_year=month, day_of_week=dow)
    except ValueError as exc:
        raise ValueError(f"cron {expr!r}: {exc}") from None


def add_schedule(sf: sessionmaker[Session], task: str, args: dict[str, Any], cron: str | None = None,
                 every_s: float | None = None) -> int:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if (cron is None) == (every_s is None):
        raise ValueError("give exactly one of --cron and --every")
    if cron is not None:
        parse_cron(cron)
    if every_s is not None and every_s <= 0:
        raise ValueError(f"--every must be a positive number of seconds, got {every_s}")
    with sf() as session:
        row = Schedule(task=task, cron=cron, every_s=every_s, args=args)
        session.add(row)
        session.commit()
        return row.id


def list_schedules(session: Session) -> list[Schedule]:
    return list(session.scalars(select(Schedule).order_by(Schedule.id)))


def remove_schedule(sf: sessionmaker[Session], schedule_id: int) -> None:
    with sf() as session:
        row = session.get(Schedule, schedule_id)
        if row is None:
            raise ValueError(f"no schedule {schedule_id}")
        session.delete(row)
        session.commit()


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def next_cron_time(spec: crontab, after: datetime) -> datetime:
    """The first whole minute after `after` that the cron expression matches (UTC). Days and hours that cannot
    match are skipped whole, so even a yearly expression takes a few thousand steps."""
    t = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    limit = t + timedelta(days=366 * 5)
    while t < limit:
        if (t.month not in spec.month_of_year or t.day not in spec.day_of_month
                or (t.weekday() + 1) % 7 not in spec.day_of_week):  # celery counts Sunday as 0
            t = (t + timedelta(days=1)).replace(hour=0, minute=0)
        elif t.hour not in spec.hour:
            t = (t + timedelta(hours=1)).replace(minute=0)
        elif t.minute not in spec.minute:
            t += timedelta(minutes=1)
        else:
            return t
    raise ValueError("the cron expression never matches")


def next_run(row: Schedule) -> datetime:
    last = _aware(row.last_run_at or row.created_at)
    if row.every_s is not None:
        return last + timedelta(seconds=row.every_s)
    return next_cron_time(parse_cron(row.cron), last)


def claim_due(sf: sessionmaker[Session], now: datetime | None = None) -> list[Schedule]:
    """Schedules due now, each claimed by moving its last_run_at: with two beats, only one fires it."""
    now = now or utcnow()
    due = []
    with sf() as session:
        for row in session.scalars(select(Schedule).where(Schedule.enabled.is_(True))):
            if next_run(row) > now:
                continue
            same = (Schedule.last_run_at.is_(None) if row.last_run_at is None
                    else Schedule.last_run_at == row.last_run_at)
            claimed = session.execute(update(Schedule).where(Schedule.id == row.id, same).values(last_run_at=now)
                                      .execution_options(synchronize_session=False))
            if claimed.rowcount == 1:
                due.append(row)
        session.commit()
    return due


def record_result(sf: sessionmaker[Session], schedule_id: int, result: str) -> None:
    with sf() as session:
        session.execute(update(Schedule).where(Schedule.id == schedule_id).values(last_result=result[:2000]))
        session.commit()
