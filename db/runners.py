"""Runners: the processes that run jobs (Celery worker processes, embedded runners in the CLI or the API), each
with a heartbeat. A runner that stops beating (killed, crashed, its machine gone) is dead after `dead_after_s`:

- its items in flight go back to routed at once (worker/cut_off.py, counted as unanswered), instead of
  sitting out their lease;
- the embedded job it held (jobs.runner_id) may be taken by another process (acquire_job). Until then a second
  `routeyard resume` of that job is refused with who holds it, so two processes never reset each other's items.

Locks follow db/jobs.py's order: the job row, then its items by id.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, delete, func, or_, select, true, update
from sqlalchemy.orm import Session

from db.jobs import get_job, lock_job_for_items, rowcount
from db.models import LOCAL_TENANT, Item, Job, Runner, aware, utcnow
from routeyard.states import JOB_ACTIVE, ItemStatus, JobStatus


def beat(session: Session, runner_id: str, kind: str) -> None:
    """This runner is alive (its row is made on the first beat)."""
    res = session.execute(update(Runner).where(Runner.id == runner_id).values(heartbeat_at=utcnow()))
    if rowcount(res) == 0:
        session.add(Runner(id=runner_id, kind=kind, host=socket.gethostname(), pid=os.getpid()))


def forget(session: Session, runner_id: str) -> None:
    """A runner that stops cleanly says so: what it held is free at once."""
    session.execute(update(Job).where(Job.runner_id == runner_id).values(runner_id=None))
    session.execute(delete(Runner).where(Runner.id == runner_id))


@dataclass(frozen=True)
class Holder:
    """Who runs a job now."""

    runner_id: str
    kind: str
    host: str
    pid: int
    seen: datetime

    def describe(self, job_id: str, dead_after_s: float) -> str:
        ago = max(0.0, (utcnow() - aware(self.seen)).total_seconds())
        return (f"job {job_id} is being run by another process ({self.kind} runner, pid {self.pid} on {self.host}, "
                f"last heartbeat {ago:.0f} s ago); it is not run twice at once. Wait for it to finish, or stop that "
                f"process: the job is free {dead_after_s:.0f} s after its last heartbeat")


def runner_alive(runner: Runner | None, dead_after_s: float, me: str) -> bool:
    """Beat within `dead_after_s`, and, on this host, its process still exists (a killed CLI is known dead at
    once; a restarted container has the same pid as its previous life, but not the same runner id)."""
    if runner is None or aware(runner.heartbeat_at) < utcnow() - timedelta(seconds=dead_after_s):
        return False
    if runner.host == socket.gethostname():
        if runner.pid == os.getpid():
            return runner.id == me
        try:
            os.kill(runner.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, another user's
            return True
    return True


def dead_among(session: Session, runner_ids: Sequence[str], dead_after_s: float, me: str) -> list[str]:
    """Those of these runners known dead: no row (a clean exit forgets it), no beat within `dead_after_s`, or,
    on this host, no such process."""
    return [r for r in runner_ids if r != me and not runner_alive(session.get(Runner, r), dead_after_s, me)]


def holder(session: Session, runner_id: str) -> Holder | None:
    found = session.get(Runner, runner_id)
    return None if found is None else Holder(found.id, found.kind, found.host, found.pid, found.heartbeat_at)


def acquire_job(session: Session, job_id: str, me: str, dead_after_s: float) -> Holder | None:
    """Hold the job for runner `me` (the job row is locked until the caller commits); None if it is ours now,
    else the live runner that holds it."""
    job = get_job(session, job_id, lock=True)
    if job.runner_id is not None and job.runner_id != me:
        holder = session.get(Runner, job.runner_id)
        if holder is not None and runner_alive(holder, dead_after_s, me):
            return Holder(holder.id, holder.kind, holder.host, holder.pid, holder.heartbeat_at)
    job.runner_id = me
    return None


def release_job(session: Session, job_id: str, me: str) -> None:
    session.execute(update(Job).where(Job.id == job_id, Job.runner_id == me).values(runner_id=None))


def dead_runners(session: Session, dead_after_s: float) -> list[str]:
    cutoff = utcnow() - timedelta(seconds=dead_after_s)
    return list(session.scalars(select(Runner.id).where(Runner.heartbeat_at < cutoff)))


def jobs_held_by(session: Session, runner_ids: Sequence[str]) -> list[str]:
    """Jobs with items in flight under these runners."""
    return sorted(set(session.scalars(select(Item.job_id).where(Item.claimed_by.in_(runner_ids),
                                                                Item.status == ItemStatus.IN_FLIGHT))))


def forget_runners(session: Session, runner_ids: Sequence[str]) -> None:
    """Dead runners' rows go, and so does their hold on embedded jobs (once their items are put back)."""
    session.execute(update(Job).where(Job.runner_id.in_(runner_ids)).values(runner_id=None))
    session.execute(delete(Runner).where(Runner.id.in_(runner_ids)))


def running_jobs(session: Session) -> list[str]:
    """Routed jobs still running: where lost completion tasks may have left items."""
    return list(session.scalars(select(Job.id).where(Job.status == JobStatus.RUNNING)))


def interrupted_jobs(session: Session) -> list[str]:
    """Jobs to take up when an embedded API starts, oldest first: every tenant job left queued, scoring or
    running, and CLI jobs that were started and left scoring or running (one stored with `--detach` waits for
    its `routeyard run`). A job a live process still runs is refused to the taker by acquire_job."""
    started = Job.status.in_(JOB_ACTIVE - {JobStatus.QUEUED})
    return list(session.scalars(select(Job.id).where(Job.status.in_(JOB_ACTIVE),
                                                     (Job.tenant_id != LOCAL_TENANT) | started)
                                .order_by(Job.created_at)))


# Jobs handed to the workers (Dispatcher.run marks them, even when the broker was down: asked to run, they run
# once it is back). A job only stored (`submit --detach`) is queued with no heartbeat and waits for
# `routeyard run`; the reconciler must not start it on its own.
_HANDED = Job.status.in_(JOB_ACTIVE) & ((Job.status != JobStatus.QUEUED) | Job.heartbeat_at.is_not(None))


def active_jobs(session: Session) -> list[Job]:
    """Jobs handed to the workers: queued, scoring or running."""
    return list(session.scalars(select(Job).where(_HANDED).order_by(Job.created_at)))


def stalled_jobs(session: Session, stall_s: float) -> list[Job]:
    """Jobs handed to the workers with no sign of life (handed, scoring, a claim or a result: sign_of_life) for
    `stall_s`. One row per job: beat asks often, and a million-item job's items are not read for it."""
    cutoff = utcnow() - timedelta(seconds=stall_s)
    return list(session.scalars(select(Job).where(_HANDED, func.coalesce(Job.heartbeat_at, Job.created_at) < cutoff)
                                .order_by(Job.created_at)))


def sign_of_life(session: Session, job_id: str, every_s: float) -> None:
    """The job's calls progress: its heartbeat moves, at most once every `every_s` whichever runner comes
    first. Call it in a transaction of its own, after the claim or the results it reports have committed: the
    job row's update after item writes would invert the lock order (db/jobs.py)."""
    now = utcnow()
    session.execute(update(Job).where(Job.id == job_id, or_(Job.heartbeat_at.is_(None),
                                                            Job.heartbeat_at < now - timedelta(seconds=every_s)))
                    .values(heartbeat_at=now).execution_options(synchronize_session=False))


@dataclass(frozen=True)
class HeldItem:
    """An item a runner had in flight when it stopped: what its request may have cost is bounded from these."""

    id: int
    body: dict
    model: str | None
    shadow: bool


def _held_by(holders: Sequence[str] | None) -> ColumnElement[bool]:
    return Item.claimed_by.in_(holders) if holders is not None else true()


def items_held(session: Session, job_id: str, holders: Sequence[str] | None) -> list[HeldItem]:
    """The job's items in flight under these runners (None: under any)."""
    return [HeldItem(i, b, m, s) for i, b, m, s in session.execute(
        select(Item.id, Item.body, Item.model, Item.shadow).where(
            Item.job_id == job_id, _held_by(holders), Item.status == ItemStatus.IN_FLIGHT))]


def put_back_unanswered(session: Session, job_id: str, holders: Sequence[str] | None,
                        cost_bounds: dict[int, tuple[int, float]]) -> int:
    """Put items these runners (None: any) had in flight back to routed (they are called again), counting their
    requests as unanswered ({item id: (requests, their cost bound)}): they may have reached the provider and be
    billed although no answer was kept. Returns how many went back."""
    lock_job_for_items(session, job_id)
    back = 0
    for item_id, (requests, bound) in sorted(cost_bounds.items()):  # items by id, after the job row
        res = session.execute(
            update(Item).where(Item.id == item_id, Item.job_id == job_id, _held_by(holders),
                               Item.status == ItemStatus.IN_FLIGHT)
            .values(status=ItemStatus.ROUTED, claimed_by=None,
                    unanswered_attempts=func.coalesce(Item.unanswered_attempts, 0) + requests,
                    unanswered_cost_usd=func.coalesce(Item.unanswered_cost_usd, 0.0) + bound))
        back += rowcount(res)
    return back


def interrupted(session: Session, job: Job, dead_after_s: float) -> bool:
    """An embedded job that was started (scoring or running) and that no live process holds: it stopped (Ctrl-C,
    a kill, a crash) and waits for a resume. Not for distributed jobs: workers never hold them."""
    if job.status not in (JobStatus.SCORING, JobStatus.RUNNING):
        return False
    return job.runner_id is None or not runner_alive(session.get(Runner, job.runner_id), dead_after_s, "")
