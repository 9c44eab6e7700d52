"""The embedded runner: a whole job in this process (no broker, no workers), from wherever it stopped."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from db import jobs as store
from routers.registry import LoadedRouter
from routeyard.settings import Settings
from routeyard.states import JOB_FINAL, ItemStatus, JobStatus
from worker import pipeline
from worker.judge import judge_if_asked
from worker.llm_client import CallResult
from worker.runtime import load_or_fail


class Progress(Protocol):
    """What a runner reports; the CLI draws it with rich, tests ignore it."""

    def stage(self, name: str, total: int) -> Callable[[int], None]: ...


class NoProgress:
    def stage(self, name: str, total: int) -> Callable[[int], None]:
        return lambda n: None


@dataclass(frozen=True)
class RunSummary:
    job_id: str
    status: JobStatus
    counts: dict[ItemStatus, int]


def summary(sf: sessionmaker[Session], job_id: str) -> RunSummary:
    with sf() as session:
        return RunSummary(job_id, store.get_job(session, job_id).status, store.status_counts(session, job_id))


def run_embedded(sf: sessionmaker[Session], settings: Settings, job_id: str, *, retry_failed: bool = False,
                 progress: Progress | None = None, loaded: LoadedRouter | None = None) -> RunSummary:
    """Take the job from wherever it stopped to the end, in this process."""
    progress = progress or NoProgress()
    with sf() as session:
        # Nobody else runs an embedded job: anything in flight was cut off when a previous run died.
        statuses = [ItemStatus.IN_FLIGHT] + ([ItemStatus.FAILED] if retry_failed else [])
        store.requeue(session, job_id, statuses)
        job = store.start_job(session, job_id)
        router_spec, n_items, ended = job.router, job.n_items, job.status in JOB_FINAL
        session.commit()
    if ended:
        return summary(sf, job_id)
    pipeline.check_models(sf, job_id, settings, before_routing=True)  # refuse before any work, not after scoring

    with sf() as session:
        unscored = len(store.unscored_items(session, job_id, n_items))
    if unscored:
        loaded = loaded or load_or_fail(sf, job_id, router_spec, settings)
        if loaded is None:  # the job has failed, with the reason on its items
            return summary(sf, job_id)
        pipeline.score_items(sf, job_id, loaded, settings.score_batch_size, progress.stage("scoring", unscored))
    pipeline.assign_routes(sf, job_id, settings)

    with sf() as session:
        todo = store.item_ids(session, job_id, ItemStatus.ROUTED)
    if todo:
        pipeline.check_models(sf, job_id, settings)
        advance = progress.stage("calling models", len(todo))
        asyncio.run(_complete(sf, settings, job_id, todo, lambda _result: advance(1)))
    pipeline.finish_if_done(sf, job_id)
    judge_if_asked(sf, settings, job_id)  # a job submitted with --judge: its shadow pairs, now
    return summary(sf, job_id)


async def _complete(sf: sessionmaker[Session], settings: Settings, job_id: str, todo: list[int],
                    on_done: Callable[[CallResult], None]) -> None:
    clients = pipeline.make_clients(settings)
    try:
        await pipeline.complete_items(sf, job_id, todo, clients, settings, settings.concurrency, on_done)
    finally:
        await clients.aclose()
