"""Stored schedules (`routeyard schedule ...`): cron expressions (UTC) or fixed intervals, kept in the database
so they survive restarts. Beat fires the due ones through jobs/periodic.py; without a broker,
`routeyard schedule run-due` does, from the system's cron."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from croniter import CroniterBadCronError, croniter
from sqlalchemy.orm import Session, sessionmaker

from db import catalog
from db.models import Schedule, aware, utcnow
from routeyard.errors import InvalidInput

TASKS = ("retrain",)


def parse_cron(expr: str) -> croniter:
    """Five fields: minute hour day-of-month month day-of-week (UTC)."""
    if len(expr.split()) != 5:
        raise InvalidInput(f"cron {expr!r} must have 5 fields: minute hour day-of-month month day-of-week")
    try:
        return croniter(expr, datetime(2000, 1, 1, tzinfo=UTC))
    except (CroniterBadCronError, ValueError, KeyError) as exc:
        raise InvalidInput(f"cron {expr!r}: {exc}") from None


def add_schedule(sf: sessionmaker[Session], task: str, args: dict[str, Any], cron: str | None = None,
                 every_s: float | None = None) -> int:
    if task not in TASKS:
        raise InvalidInput(f"task must be one of {TASKS}, got {task!r}")
    if (cron is None) == (every_s is None):
        raise InvalidInput("give exactly one of --cron and --every")
    if cron is not None:
        parse_cron(cron)
    if every_s is not None and not 0 < every_s < math.inf:  # NaN fails too
        raise InvalidInput(f"--every must be a positive number of seconds, got {every_s}")
    with sf() as session:
        row = catalog.add_schedule(session, task, args, cron, every_s)
        session.commit()
        return row.id


def remove_schedule(sf: sessionmaker[Session], schedule_id: int) -> None:
    with sf() as session:
        catalog.remove_schedule(session, schedule_id)
        session.commit()



def next_run(row: Schedule) -> datetime:
    last = aware(row.last_run_at or row.created_at)
    if row.every_s is not None:
        return last + timedelta(seconds=row.every_s)
    assert row.cron is not None  # a schedule has a cron or an interval (add_schedule)
    return croniter(row.cron, last).get_next(datetime)


def claim_due(sf: sessionmaker[Session], now: datetime | None = None) -> list[Schedule]:
    """Schedules due now, each claimed by moving its last run time: with two beats, only one fires it."""
    now = now or utcnow()
    with sf() as session:
        due = [row for row in catalog.list_schedules(session, enabled_only=True)
               if next_run(row) <= now and catalog.claim_schedule_run(session, row, now)]
        session.commit()
    return due


def record_result(sf: sessionmaker[Session], schedule_id: int, result: str) -> None:
    with sf() as session:
        catalog.record_schedule_result(session, schedule_id, result)
        session.commit()
