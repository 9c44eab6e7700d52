"""The embedded runner: a whole job in this process (no broker, no workers), from wherever it stopped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from db import jobs as store
from db import provider_batches as provider_rows
from db import runners
from db.failures import common_errors
from db.models import ProviderBatch, utcnow
from routers.registry import LoadedRouter
from routeyard.errors import Conflict, JobInterrupted
from routeyard.settings import Settings
from routeyard.states import JOB_FINAL, ItemStatus, JobStatus
from worker import pipeline, provider_batches
from worker.cut_off import put_back_cut_off
from worker.heartbeat import beating
from worker.judge import judge_if_asked
from worker.llm_client import CallResult
from worker.runtime import load_or_fail
from worker.slots import Slots


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
    common_errors: list[tuple[str, int]]  # the failed items' most common errors: (error, items)


def summary(sf: sessionmaker[Session], job_id: str) -> RunSummary:
    with sf() as session:
        counts = store.status_counts(session, job_id)
        return RunSummary(job_id, store.get_job(session, job_id).status, counts,
                          common_errors(session, job_id) if counts.get(ItemStatus.FAILED) else [])


def run_embedded(sf: sessionmaker[Session], settings: Settings, job_id: str, *, retry_failed: bool = False,
                 progress: Progress | None = None, loaded: LoadedRouter | None = None,
                 wait_s: float = 0.0) -> RunSummary:
    """Take the job from wherever it stopped to the end, in this process. Another live process running it is
    a Conflict that names it (after waiting up to `wait_s` for it to be found dead)."""
    progress = progress or NoProgress()
    slots = Slots(settings.concurrency)  # its asyncio primitives bind to the loop of the first call that uses them
    with beating(sf, settings, "embedded") as heartbeat:
        _hold(sf, settings, job_id, heartbeat.id, wait_s)
        try:
            return _run(sf, settings, job_id, retry_failed, progress, loaded, heartbeat.id, slots)
        except KeyboardInterrupt:
            try:
                stopped = _interrupted(sf, settings, job_id, heartbeat.id, slots.never_sent)
            except Exception:  # the database went too: resume puts the items in flight back all the same
                stopped = JobInterrupted(job_id, f"interrupted: job {job_id} keeps what finished; "
                                                 f"`routeyard resume {job_id}` continues")
            raise stopped from None
        finally:
            with sf() as session:
                runners.release_job(session, job_id, heartbeat.id)
                session.commit()


def _interrupted(sf: sessionmaker[Session], settings: Settings, job_id: str, me: str,
                 never_sent: set[int]) -> JobInterrupted:
    """Ctrl-C: what this run had in flight goes back to routed now, so the job does not claim calls no process
    makes; each request of a call that had started counts as unanswered (with its cost bound), since it may have
    reached the provider and be billed, and will be sent again on resume (`routeyard spend` shows it). Claimed
    items still waiting for a call slot (`never_sent`) sent nothing: they go back uncounted."""
    with sf() as session:
        back = put_back_cut_off(session, settings, job_id, [me], never_sent)
        session.commit()
        done = store.status_counts(session, job_id)
    finished = sum(n for status, n in done.items() if status.finished)
    calls = (f"; {back} call{'s' if back != 1 else ''} cut off will be made again (counted as unanswered in "
             "`routeyard spend`: they may be billed)") if back else ""
    return JobInterrupted(job_id, f"interrupted: job {job_id} keeps its {finished} finished item"
                                  f"{'s' if finished != 1 else ''}{calls}; `routeyard resume {job_id}` continues")


def _hold(sf: sessionmaker[Session], settings: Settings, job_id: str, me: str, wait_s: float) -> None:
    """Hold the job for this process (one runner at a time), waiting up to `wait_s` for a holder that may be
    dead; Conflict naming the holder otherwise."""
    deadline = time.monotonic() + wait_s
    while True:
        with sf() as session:
            holder = runners.acquire_job(session, job_id, me, settings.dead_after_s)
            session.commit()
        if holder is None:
            return
        if time.monotonic() >= deadline:
            raise Conflict(holder.describe(job_id, settings.dead_after_s))
        time.sleep(min(settings.heartbeat_s, max(0.1, deadline - time.monotonic())))


def _run(sf: sessionmaker[Session], settings: Settings, job_id: str, retry_failed: bool, progress: Progress,
         loaded: LoadedRouter | None, me: str, slots: Slots) -> RunSummary:
    with sf() as session:
        # This process holds the job: anything in flight was cut off when a previous run died (a kill -9 leaves
        # no Ctrl-C handler to count those calls): count them as unanswered as Ctrl-C does, then call them again.
        put_back_cut_off(session, settings, job_id, None)
        statuses = [ItemStatus.IN_FLIGHT] + ([ItemStatus.FAILED] if retry_failed else [])
        store.requeue(session, job_id, statuses)
        job = store.start_job(session, job_id)
        router_spec, ended = job.router, job.status in JOB_FINAL
        session.commit()
    if ended:
        return summary(sf, job_id)
    pipeline.check_models(sf, job_id, settings, before_routing=True)  # refuse before any work, not after scoring

    with sf() as session:
        unscored = store.count_unscored(session, job_id)
    if unscored:
        loaded = loaded or load_or_fail(sf, job_id, router_spec, settings)
        if loaded is None:  # the job has failed, with the reason on its items
            return summary(sf, job_id)
        pipeline.score_items(sf, job_id, loaded, settings.score_batch_size, progress.stage("scoring", unscored))
    pipeline.assign_routes(sf, job_id, settings)

    asyncio.run(_calls(sf, settings, job_id, progress, me, slots))
    pipeline.finish_if_done(sf, job_id)
    judge_if_asked(sf, settings, job_id, me)  # a job submitted with --judge: its shadow pairs, now
    return summary(sf, job_id)


async def _calls(sf: sessionmaker[Session], settings: Settings, job_id: str, progress: Progress, me: str,
                 slots: Slots) -> None:
    """Direct calls for direct-mode tiers; provider batches for batch-mode tiers, polled until they are merged
    (a merged batch may hand items back to direct calls or to a new batch: the loop goes round again)."""
    clients = pipeline.make_clients(settings)
    try:
        while True:
            if settings.batch_tiers:
                await provider_batches.submit_share(sf, settings, job_id, clients)
            with sf() as session:
                todo = provider_rows.direct_ids(session, job_id, settings.batch_tiers)
            if todo:
                pipeline.check_models(sf, job_id, settings)
                await pipeline.complete_items(sf, job_id, todo, clients, settings, settings.concurrency,
                                              _counting(progress.stage("calling models", len(todo))), runner_id=me,
                                              slots=slots)
            with sf() as session:
                waiting = provider_rows.open_batches(session, job_id)
            if not waiting:
                return
            progress.stage(f"waiting for {len(waiting)} provider batch(es)", sum(b.n_requests for b in waiting))
            await asyncio.sleep(_until_due(waiting, settings))
            await provider_batches.poll_batches(sf, settings, job_id, clients)
    finally:
        await clients.aclose()


def _counting(advance: Callable[[int], None]) -> Callable[[CallResult], None]:
    return lambda _result: advance(1)


def _until_due(waiting: list[ProviderBatch], settings: Settings) -> float:
    """Seconds until the first of these provider batches is due for a poll."""
    now = utcnow()
    due = [(b.next_poll_at if b.next_poll_at.tzinfo else b.next_poll_at.replace(tzinfo=UTC)) - now
           for b in waiting if b.next_poll_at is not None]
    wait = min((d.total_seconds() for d in due), default=0.0)
    return max(0.05, min(wait, settings.batch_poll_max_s))
