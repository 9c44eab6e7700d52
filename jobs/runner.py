"""Run a stored job: in this process (the embedded default) or on Celery workers (a broker is configured)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.models import ItemStatus, JobStatus, utcnow
from routers.base import RouterRuntime
from routers.registry import LoadedRouter, load_router
from routeyard.settings import Settings
from worker import pipeline

log = logging.getLogger(__name__)


class Progress(Protocol):
    """What a runner reports; the CLI draws it with rich, tests ignore it."""

    def stage(self, name: str, total: int) -> Callable[[int], None]: ...


class NoProgress:
    def stage(self, name: str, total: int) -> Callable[[int], None]:
        return lambda n: None


@dataclass(frozen=True)
class RunSummary:
    job_id: str
    status: str
    counts: dict[str, int]


def router_runtime(settings: Settings) -> RouterRuntime:
    return RouterRuntime(device=settings.device, cache_dir=settings.cache_dir,
                         batch_size=settings.embedding_batch_size)


def run_embedded(sf: sessionmaker[Session], settings: Settings, job_id: str, *, retry_failed: bool = False,
                 progress: Progress | None = None, loaded: LoadedRouter | None = None) -> RunSummary:
    """Take the job from wherever it stopped to the end, in this process."""
    progress = progress or NoProgress()
    with sf() as session:
        job = queries.get_job(session, job_id)
        if job.status == JobStatus.CANCELLED:
            return RunSummary(job_id, job.status, queries.status_counts(session, job_id))
        # Nobody else runs an embedded job: anything in flight was cut off when a previous run died.
        statuses = [ItemStatus.IN_FLIGHT] + ([ItemStatus.FAILED] if retry_failed else [])
        queries.requeue(session, job_id, statuses)
        if job.started_at is None:
            job.started_at = utcnow()
        if job.threshold is None:
            queries.set_job_status(session, job_id, JobStatus.SCORING)
        router_spec, n_items = job.router, job.n_items
        session.commit()

    with sf() as session:
        unscored = len(queries.unscored_items(session, job_id, n_items))
    if unscored:
        loaded = loaded or load_router(router_spec, router_runtime(settings))
        pipeline.score_items(sf, job_id, loaded, settings.score_batch_size, progress.stage("scoring", unscored))
    pipeline.assign_routes(sf, job_id, settings)

    with sf() as session:
        todo = queries.item_ids(session, job_id, ItemStatus.ROUTED)
    if todo:
        advance = progress.stage("calling models", len(todo))
        asyncio.run(_complete(sf, settings, job_id, todo, lambda _result: advance(1)))
    pipeline.finish_if_done(sf, job_id)
    with sf() as session:
        return RunSummary(job_id, queries.get_job(session, job_id).status, queries.status_counts(session, job_id))


async def _complete(sf: sessionmaker[Session], settings: Settings, job_id: str, todo: list[int],
                    on_done: Callable) -> None:
    clients = pipeline.make_clients(settings)
    try:
        await pipeline.complete_items(sf, job_id, todo, clients, settings, settings.concurrency, on_done)
    finally:
        await clients.aclose()


def enqueue(job_id: str) -> None:
    """Hand the job to the Celery workers (distributed mode)."""
    from worker.tasks import start_job

    start_job.delay(job_id)


def start(sf: sessionmaker[Session], settings: Settings, job_id: str) -> RunSummary | None:
    """Run the job here (embedded default) or enqueue it (a broker is configured; returns None)."""
    if settings.embedded:
        return run_embedded(sf, settings, job_id)
    enqueue(job_id)
    return None
