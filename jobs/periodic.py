"""Periodic work that runs front-door services, registered with the Celery app by name.

This module is the Celery entry point of every Routeyard process (`celery -A jobs.periodic worker|beat`,
`routeyard worker`): it loads the app with the pipeline's tasks (worker/tasks.py) and adds these, so
`worker/` never imports `jobs/`. Beat's schedule names them ("routeyard.run_schedules").
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from db.models import LOCAL_TENANT
from jobs.services.retrain import RetrainRunning, retrain, tenants_to_retrain
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
    """One firing of a stored retrain schedule, for each tenant it names (`all`: every tenant with feedback);
    what it did for each (or why it failed) is recorded on the schedule. One tenant's failure (too few judged
    held-out pairs, say) does not stop the others."""
    columns = {"strong_column": args.get("strong_column", ROUTELLM_STRONG),
               "weak_column": args.get("weak_column", ROUTELLM_WEAK)}
    try:
        files = [Path(p) for p in args.get("heldout", [])]  # none: each tenant's judged held-out pairs alone
        heldout = read_data(files, outcomes_only=True, **columns).outcomes if files else []
        tenants = tenants_to_retrain(sf, args.get("tenant", LOCAL_TENANT))
    except (UserError, OSError) as exc:  # a moved data file, a tenant since removed: recorded, not raised
        message = f"failed: {exc}"
        record_result(sf, schedule_id, message)
        return message
    parts, failed = [], 0
    for tenant in tenants:
        whose = "global" if tenant is None else tenant
        try:
            result = retrain(sf, settings, args.get("router", DEFAULT_ROUTER), [Path(p) for p in args.get("data", [])],
                             heldout, float(args.get("margin", 0.0)), tenant_id=tenant, **columns)
            parts.append(f"{whose}: {result.version}: {result.decision}")
        except RetrainRunning as exc:  # a firing that came round while the last one still runs: not a failure
            log.warning("schedule %s: retrain of %s skipped: %s", schedule_id, whose, exc)
            parts.append(f"{whose}: skipped: {exc}")
        except (UserError, OSError) as exc:  # a gate that refuses: recorded, not raised
            failed += 1
            parts.append(f"{whose}: failed: {exc}")
    if not tenants:
        parts.append("no tenant has feedback yet")
    message = ("failed: " if failed and failed == len(tenants) else "") + "; ".join(parts)
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
