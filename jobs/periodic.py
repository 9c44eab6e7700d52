"""Periodic work that runs front-door services, registered with the Celery app by name.

This module is the Celery entry point of every Routeyard process (`celery -A jobs.periodic worker|beat`,
`routeyard worker`): it loads the app with the pipeline's tasks (worker/tasks.py) and adds these, so
`worker/` never imports `jobs/`. Beat's schedule names them ("routeyard.run_schedules").
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from jobs.services.retrain import retrain
from jobs.services.schedules import claim_due, record_result
from routers.data import ROUTELLM_STRONG, ROUTELLM_WEAK, read_data
from routers.registry import DEFAULT_ROUTER
from routeyard.errors import UserError
from routeyard.settings import Settings
from worker.celery_app import app
from worker.tasks import RETRY, worker_db, worker_settings

__all__ = ["app", "run_due_schedules", "run_schedules", "scheduled_retrain"]
log = logging.getLogger(__name__)


def run_scheduled_retrain(sf: sessionmaker[Session], settings: Settings, schedule_id: int, args: dict) -> str:
    """One firing of a stored retrain schedule; what it did (or why it failed) is recorded on the schedule."""
    columns = {"strong_column": args.get("strong_column", ROUTELLM_STRONG),
               "weak_column": args.get("weak_column", ROUTELLM_WEAK)}
    try:
        heldout = read_data([Path(p) for p in args.get("heldout", [])], outcomes_only=True, **columns).outcomes
        result = retrain(sf, settings, args.get("router", DEFAULT_ROUTER),
                         [Path(p) for p in args.get("data", [])], heldout, float(args.get("margin", 0.0)), **columns)
        message = f"{result.version}: {result.decision}"
    except (UserError, OSError) as exc:  # a moved data file, a gate that refuses: recorded, not raised
        message = f"failed: {exc}"
    record_result(sf, schedule_id, message)
    return message


def run_due_schedules(sf: sessionmaker[Session], settings: Settings) -> list[tuple[int, str]]:
    """Run the due schedules in this process (the embedded default has no beat: cron calls this)."""
    return [(row.id, run_scheduled_retrain(sf, settings, row.id, row.args)) for row in claim_due(sf)]


@app.task(name="routeyard.run_schedules", **RETRY)
def run_schedules() -> int:
    """Beat runs this often: every stored schedule that is due is claimed once and its task enqueued."""
    due = claim_due(worker_db())
    for row in due:
        scheduled_retrain.delay(row.id, row.args)
    return len(due)


@app.task(name="routeyard.scheduled_retrain", acks_late=False)  # a retrain is not worth running twice
def scheduled_retrain(schedule_id: int, args: dict) -> str:
    return run_scheduled_retrain(worker_db(), worker_settings(), schedule_id, args)
