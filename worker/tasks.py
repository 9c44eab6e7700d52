"""Celery tasks: start -> score batches -> route once -> completion batches; and a periodic reconcile.

Each task only reads its work from the database and writes results back, so a task delivered twice, or
re-run after its worker died, changes nothing that is already done.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from functools import cache, lru_cache

from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import OperationalError as DatabaseError
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.models import JobStatus, utcnow
from db.session import open_database
from routers.base import RouterRuntime
from routers.registry import DEFAULT_ROUTER, LoadedRouter, load_router
from routeyard.redact import install_log_redaction
from routeyard.settings import Settings
from worker import pipeline
from worker.celery_app import app

log = logging.getLogger(__name__)
RETRY = {"autoretry_for": (DatabaseError, BrokerError, ConnectionError), "retry_backoff": True,
         "retry_backoff_max": 60, "max_retries": None}


@cache
def _settings() -> Settings:
    settings = Settings()
    install_log_redaction(settings.secrets())
    return settings


_DB_LOCK = threading.Lock()


@cache
def _db() -> sessionmaker[Session]:
    with _DB_LOCK:  # task threads of one worker start together; migrate and connect once
        return _open_db()


@cache
def _open_db() -> sessionmaker[Session]:
    return open_database(_settings().resolved_database_url)


@lru_cache(maxsize=4)
def _router(spec: str) -> LoadedRouter:
    """Loaded once per worker process and kept: a job's batches all reuse it."""
    s = _settings()
    return load_router(spec, RouterRuntime(device=s.device, cache_dir=s.cache_dir, batch_size=s.embedding_batch_size))


def _chunks(ids: Sequence[int], size: int) -> list[list[int]]:
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


@app.task(name="routeyard.start_job", **RETRY)
def start_job(job_id: str) -> None:
    sf = _db()
    with sf() as session:
        job = queries.get_job(session, job_id)
        if job.status in (JobStatus.CANCELLED, JobStatus.COMPLETED):
            return
        if job.threshold is None:
            queries.set_job_status(session, job_id, JobStatus.SCORING)
        job.started_at = job.started_at or utcnow()
        job.heartbeat_at = utcnow()
        ids = queries.unscored_ids(session, job_id)
        session.commit()
    for chunk in _chunks(ids, _settings().score_batch_size):
        score_batch.delay(job_id, chunk)
    if not ids:
        route_job(job_id)


@app.task(name="routeyard.score_batch", **RETRY)
def score_batch(job_id: str, item_ids: list[int]) -> None:
    sf = _db()
    with sf() as session:
        spec = queries.get_job(session, job_id).router
    pipeline.score_items(sf, job_id, _router(spec), _settings().score_batch_size, item_ids=item_ids)
    route_job(job_id)


@app.task(name="routeyard.route_job", **RETRY)
def route_job(job_id: str) -> None:
    """Route once every item is scored (the last scoring batch gets here first), then fan out the calls."""
    if pipeline.assign_routes(_db(), job_id, _settings()) is not None:
        enqueue_completion(job_id)


def enqueue_completion(job_id: str) -> int:
    settings = _settings()
    with _db()() as session:
        ids = queries.claimable_ids(session, job_id, settings.effective_lease_s)
    for chunk in _chunks(ids, settings.complete_batch_size):
        complete_batch.delay(job_id, chunk)
    if not ids:
        pipeline.finish_if_done(_db(), job_id)
    return len(ids)


@app.task(name="routeyard.complete_batch", **RETRY)
def complete_batch(job_id: str, item_ids: list[int]) -> None:
    settings = _settings()
    asyncio.run(_complete(settings, job_id, item_ids))
    pipeline.finish_if_done(_db(), job_id)


async def _complete(settings: Settings, job_id: str, item_ids: list[int]) -> None:
    clients = pipeline.make_clients(settings)
    try:
        await pipeline.complete_items(_db(), job_id, item_ids, clients, settings, settings.concurrency,
                                      lease_s=settings.effective_lease_s)
    finally:
        await clients.aclose()


@app.task(name="routeyard.reconcile", **RETRY)
def reconcile() -> int:
    """Beat runs this: jobs with no progress for `stall_s` (their tasks lost with a broker that restarted
    without persistence, say) get their remaining work enqueued again."""
    settings = _settings()
    with _db()() as session:
        stalled = [(j.id, j.threshold is not None) for j in queries.stalled_jobs(session, settings.stall_s)]
    for job_id, routed in stalled:
        log.warning("job %s stalled; re-enqueueing its remaining work", job_id)
        if routed:
            enqueue_completion(job_id)
        else:
            start_job.delay(job_id)
    return len(stalled)


@app.task(name="routeyard.run_schedules", **RETRY)
def run_schedules() -> int:
    """Beat runs this often: every stored schedule that is due is claimed once and its task enqueued."""
    from jobs.schedule import claim_due

    due = claim_due(_db())
    for row in due:
        scheduled_retrain.delay(row.id, row.args)
    return len(due)


@app.task(name="routeyard.scheduled_retrain", acks_late=False)  # a retrain is not worth running twice
def scheduled_retrain(schedule_id: int, args: dict) -> str:
    from pathlib import Path

    from jobs.retrain import retrain
    from jobs.schedule import record_result
    from routers.data import ROUTELLM_STRONG, ROUTELLM_WEAK, read_data

    columns = {"strong_column": args.get("strong_column", ROUTELLM_STRONG),
               "weak_column": args.get("weak_column", ROUTELLM_WEAK)}
    try:
        heldout = read_data([Path(p) for p in args.get("heldout", [])], outcomes_only=True, **columns).outcomes
        result = retrain(_db(), _settings(), args.get("router", DEFAULT_ROUTER),
                         [Path(p) for p in args.get("data", [])], heldout, float(args.get("margin", 0.0)), **columns)
        message = f"{result.version}: {result.decision}"
    except (ValueError, OSError) as exc:
        message = f"failed: {exc}"
    record_result(_db(), schedule_id, message)
    return message
