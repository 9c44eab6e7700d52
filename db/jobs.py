"""The job and item state machine. Every change of state is a conditional UPDATE, so it is safe to repeat and
safe against a second worker doing the same: an ended job never moves, a succeeded item is never overwritten,
and an item is in flight for one worker at a time (until its lease runs out).

Lock order, everywhere: the job row first, then its item rows in id order. Writers that change the job
(cancel, routing, requeue, start, fail) lock its row FOR UPDATE (get_job(lock=True)); scoring updates the row
(its heartbeat) before storing scores; claims and result writes, which touch only items, first take the row
FOR KEY SHARE (lock_job_for_items), which many of them hold at once and which a cancel waits for (and they for
it). Claims lock their items in id order and skip those another claim holds. So no two transactions ever wait
on each other in opposite orders (a cancel during scoring or completion never deadlocks), and a claim that
waited for a cancel sees the job ended and calls nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol, cast

from sqlalchemy import CursorResult, Table, bindparam, func, insert, select, tuple_, update
from sqlalchemy.orm import Session

from db.models import LOCAL_TENANT, Item, Job, utcnow
from routeyard.errors import NotFound
from routeyard.states import ITEM_UNFINISHED, JOB_ENDED, JOB_FINAL, ItemStatus, JobStatus
from routeyard.text import shown, unstorable


class CallOutcome(Protocol):
    """What a model call left behind (worker.llm_client.CallResult has these fields)."""

    @property
    def ok(self) -> bool: ...
    @property
    def status_code(self) -> int | None: ...
    @property
    def response(self) -> dict[str, Any] | None: ...
    @property
    def answer(self) -> str | None: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def latency_ms(self) -> float: ...
    @property
    def error(self) -> str | None: ...


def rowcount(result: Any) -> int:
    """Rows an UPDATE matched (execute() is typed as returning a plain Result; DML gives a CursorResult)."""
    return cast(CursorResult[Any], result).rowcount


@dataclass(frozen=True)
class Claim:
    tier: str
    body: dict[str, Any]
    shadow: bool = False
    attempts: int = 0  # the item's attempt count once claimed: names this claim, for renew_claims


def get_job(session: Session, job_id: str, tenant_id: str | None = None, *, lock: bool = False) -> Job:
    """The job; another tenant's job is reported as not found, exactly like a missing one."""
    if unstorable(job_id):  # no job has such an id, and the database would refuse the query (a CLI argument)
        raise NotFound(f"no job '{shown(job_id)}'")
    query = select(Job).where(Job.id == job_id)
    if lock:  # serialise concurrent workers on this job's row (PostgreSQL; SQLite has one writer anyway)
        # and read it afresh: a copy this session loaded earlier may predate a cancel
        query = query.with_for_update().execution_options(populate_existing=True)
    job = session.scalar(query)
    if job is None or (tenant_id is not None and job.tenant_id != tenant_id):
        raise NotFound(f"no job {job_id!r}")
    return job


def job_by_key(session: Session, key: str, tenant_id: str = LOCAL_TENANT) -> Job | None:
    return session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))


def list_jobs(session: Session, limit: int = 50, tenant_id: str | None = None) -> list[Job]:
    query = select(Job).order_by(Job.created_at.desc()).limit(limit)
    if tenant_id is not None:
        query = query.where(Job.tenant_id == tenant_id)
    return list(session.scalars(query))


def set_job_status(session: Session, job_id: str, status: JobStatus, **values: Any) -> bool:
    """Move a job to `status` unless it has already ended (cancelled or completed): a runner that read the job
    before a cancel must not undo it. True if the job moved."""
    res = session.execute(update(Job).where(Job.id == job_id, Job.status.not_in(JOB_ENDED))
                          .values(status=status, **values).execution_options(synchronize_session="fetch"))
    return rowcount(res) == 1


def touch_job(session: Session, job_id: str) -> None:
    """A sign of life for stall detection (scoring makes no calls for a while)."""
    session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow())
                    .execution_options(synchronize_session=False))


def start_job(session: Session, job_id: str) -> Job:
    """Mark a job started (scoring, unless it was routed already); idempotent."""
    job = get_job(session, job_id, lock=True)
    if job.status in JOB_ENDED:
        return job
    if job.threshold is None:
        set_job_status(session, job_id, JobStatus.SCORING)
    job.started_at = job.started_at or utcnow()
    job.heartbeat_at = utcnow()
    return job


def cancel_job(session: Session, job: Job) -> int:
    """Stop a job: items not yet called are cancelled; calls already in flight finish and are kept, and so do
    items in a provider batch (the poller cancels the batch and merges what the provider ran: it bills that).
    Lock the job row first (get_job(..., lock=True)), as every other writer does."""
    if job.status in JOB_ENDED:
        return 0
    res = session.execute(update(Item).where(Item.job_id == job.id,
                                             Item.status.in_((ItemStatus.PENDING, ItemStatus.ROUTED)))
                          .values(status=ItemStatus.CANCELLED))
    job.status, job.finished_at = JobStatus.CANCELLED, utcnow()
    return rowcount(res)


def fail_job(session: Session, job_id: str, reason: str) -> bool:
    """End a job that cannot run at all (its router does not load): its unfinished items fail with the reason,
    once; an ended job is left as it is. True if this call failed it."""
    job = get_job(session, job_id, lock=True)
    if job.status in JOB_ENDED:
        return False
    session.execute(update(Item).where(Item.job_id == job_id, Item.status.in_(ITEM_UNFINISHED))
                    .values(status=ItemStatus.FAILED, error=reason, finished_at=utcnow()))
    job.status, job.finished_at = JobStatus.FAILED, utcnow()
    return True


def finish_job_if_done(session: Session, job_id: str) -> bool:
    """Complete the job when no item is left to call; True if it has ended (now or before)."""
    job = get_job(session, job_id)
    if job.status in JOB_ENDED:
        return True
    # Whether any item is left, not how many: every completion task asks, and counting a million-item job's
    # unfinished items each time made the job's cost grow with its square.
    left = session.scalar(select(Item.id).where(Item.job_id == job_id, Item.status.in_(ITEM_UNFINISHED)).limit(1))
    if left is None and job.threshold is not None:
        set_job_status(session, job_id, JobStatus.COMPLETED, finished_at=utcnow())
        return True
    return False


def add_items(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        session.execute(insert(Item), [{"status": ItemStatus.PENDING, "attempts": 0, **r} for r in rows])


def unscored_items(session: Session, job_id: str, limit: int, after_id: int = 0,
                   last_first: bool = False) -> list[tuple[int, str]]:
    """The next `limit` unscored items after `after_id`: a scorer walking the job passes its last id, so each
    batch starts where the last one ended instead of skipping every scored item again (quadratic at 1M).
    `last_first`: "any left?" asked from the end, which scoring reaches last: no scored item is stepped over."""
    rows = session.execute(select(Item.id, Item.prompt)
                           .where(Item.job_id == job_id, Item.status == ItemStatus.PENDING, Item.score.is_(None),
                                  Item.id > after_id)
                           .order_by(Item.id.desc() if last_first else Item.id).limit(limit))
    return [(r.id, r.prompt) for r in rows]


def count_unscored(session: Session, job_id: str) -> int:
    return session.scalar(select(func.count()).where(Item.job_id == job_id, Item.status == ItemStatus.PENDING,
                                                     Item.score.is_(None))) or 0


def unscored_in(session: Session, item_ids: Sequence[int]) -> list[tuple[int, str]]:
    rows = session.execute(select(Item.id, Item.prompt).where(Item.id.in_(item_ids), Item.score.is_(None),
                                                              Item.status == ItemStatus.PENDING).order_by(Item.id))
    return [(r.id, r.prompt) for r in rows]


def unscored_ids(session: Session, job_id: str) -> list[int]:
    return list(session.scalars(select(Item.id).where(Item.job_id == job_id, Item.status == ItemStatus.PENDING,
                                                      Item.score.is_(None)).order_by(Item.id)))


def item_scores(session: Session, job_id: str) -> tuple[list[int], list[float]]:
    """The job's item ids and scores in id order, read a slice at a time (no row objects for a whole
    million-item job at once)."""
    ids: list[int] = []
    scores: list[float] = []
    for item_id, score in session.execute(select(Item.id, Item.score).where(Item.job_id == job_id)
                                          .order_by(Item.id).execution_options(yield_per=10_000)):
        if score is None:
            raise RuntimeError(f"job {job_id}: item {item_id} is not scored yet")
        ids.append(item_id)
        scores.append(score)
    return ids, scores


def item_bodies(session: Session, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for start in range(0, len(ids), 1000):
        out.update(session.execute(select(Item.id, Item.body).where(Item.id.in_(ids[start : start + 1000]))).all())
    return out


def item_ids(session: Session, job_id: str, status: ItemStatus) -> list[int]:
    return list(session.scalars(select(Item.id).where(Item.job_id == job_id, Item.status == status)
                                .order_by(Item.id)))


def claimable_ids(session: Session, job_id: str, lease_s: float, batch_tiers: Sequence[str] = ()) -> list[int]:
    """Items waiting for a direct call: routed, or in flight past their lease. The routed items of a tier in
    batch mode wait for a provider batch instead (but shadow items, and items a provider batch handed back to
    direct calls, are called directly)."""
    stale = utcnow() - timedelta(seconds=lease_s)
    routed = Item.status == ItemStatus.ROUTED
    if batch_tiers:
        routed = routed & (Item.tier.not_in(batch_tiers) | Item.shadow.is_(True) | Item.provider_batch_id.is_not(None))
    return list(session.scalars(select(Item.id).where(
        Item.job_id == job_id, routed | ((Item.status == ItemStatus.IN_FLIGHT) & (Item.started_at < stale)),
    ).order_by(Item.id)))


def lock_job_for_items(session: Session, job_id: str) -> JobStatus | None:
    """Take the job row's shared lock before writing its items (see the module's lock order); the job's status
    (None: no such job). Many claimers and writers share it; a cancel, which locks the row FOR UPDATE, waits for
    them and they for it."""
    return session.scalar(select(Job.status).where(Job.id == job_id).with_for_update(read=True, key_share=True))


def claim_item(session: Session, item_id: int, lease_s: float | None = None) -> Claim | None:
    """Mark a routed item in flight; None if it is finished or in flight elsewhere. With `lease_s`, an item in
    flight for longer than that counts as abandoned (its worker died) and may be claimed again."""
    job_id = session.scalar(select(Item.job_id).where(Item.id == item_id))
    if job_id is None:
        return None
    return claim_items(session, job_id, [item_id], lease_s).get(item_id)


def claim_items(session: Session, job_id: str, item_ids: Sequence[int], lease_s: float | None = None,
                runner_id: str | None = None) -> dict[int, Claim]:
    """claim_item for many items of one job in one conditional UPDATE: those claimed, by id (the others are
    finished or in flight elsewhere). Nothing is claimed once the job has ended: an item abandoned in flight
    by a dead worker is not called again after a cancel. `runner_id` (db/runners.py) is recorded, so a dead
    runner's items are released at once."""
    if not item_ids:
        return {}
    if lock_job_for_items(session, job_id) in (None, *JOB_ENDED):
        return {}
    claimable = Item.status == ItemStatus.ROUTED
    if lease_s is not None:
        stale = utcnow() - timedelta(seconds=lease_s)
        claimable = claimable | ((Item.status == ItemStatus.IN_FLIGHT) & (Item.started_at < stale))
    # Items locked in id order; one another claim holds is skipped (that claim takes it), never waited for.
    mine = (select(Item.id).where(Item.id.in_(item_ids), Item.job_id == job_id, claimable).order_by(Item.id)
            .with_for_update(skip_locked=True))
    rows = session.execute(
        update(Item).where(Item.id.in_(mine.scalar_subquery()), claimable)
        .values(status=ItemStatus.IN_FLIGHT, attempts=Item.attempts + 1, started_at=utcnow(), claimed_by=runner_id)
        .returning(Item.id, Item.tier, Item.body, Item.shadow, Item.attempts)
        .execution_options(synchronize_session=False)
    ).all()
    return {row.id: Claim(row.tier, row.body, bool(row.shadow), row.attempts) for row in rows}


def renew_claims(session: Session, job_id: str, claims: Sequence[tuple[int, int]]) -> set[int]:
    """Restart the lease of claims (item id, the claim's attempts) still the runner's own: in flight under that
    same claim (no other worker took it over once its lease ran out), the job not ended. Returns the ids renewed;
    an item missing from it must not be called. A job cancelled while they waited: they are cancelled, as the
    cancel did to every item not yet called (it leaves calls in flight to finish; these had not started)."""
    if not claims:
        return set()
    job_status = lock_job_for_items(session, job_id)
    if job_status is None:
        return set()
    mine = (tuple_(Item.id, Item.attempts).in_(list(claims)), Item.job_id == job_id,
            Item.status == ItemStatus.IN_FLIGHT)
    if job_status in JOB_ENDED:
        session.execute(update(Item).where(*mine).values(status=ItemStatus.CANCELLED, finished_at=utcnow())
                        .execution_options(synchronize_session=False))
        return set()
    rows = session.execute(update(Item).where(*mine).values(started_at=utcnow()).returning(Item.id)
                           .execution_options(synchronize_session=False)).all()
    return {row.id for row in rows}


def result_values(item_id: int, result: CallOutcome, cost: float, shadow: CallOutcome | None = None,
                  shadow_cost: float = 0.0, *, attempts: int = 1, unanswered: int = 0,
                  unanswered_cost: float = 0.0) -> dict[str, Any]:
    """One item's result as the row values record_results writes (every key present, so rows batch), with the
    HTTP requests its calls took, those never answered, and what those may have cost at most."""
    return {
        "call_attempts": attempts, "unanswered_attempts": unanswered, "unanswered_cost_usd": unanswered_cost,
        "id": item_id, "status": ItemStatus.SUCCEEDED if result.ok else ItemStatus.FAILED,
        "status_code": result.status_code, "response": result.response, "answer": result.answer,
        "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
        "cost_usd": cost, "latency_ms": result.latency_ms, "error": result.error, "finished_at": utcnow(),
        "shadow_answer": shadow.answer if shadow else None,
        "shadow_prompt_tokens": shadow.prompt_tokens if shadow else None,
        "shadow_completion_tokens": shadow.completion_tokens if shadow else None,
        "shadow_cost_usd": shadow_cost if shadow else None, "shadow_error": shadow.error if shadow else None,
    }


_ACCUMULATED = ("unanswered_attempts", "unanswered_cost_usd")


def record_results(session: Session, job_id: str, rows: Sequence[dict[str, Any]]) -> None:
    """Store many results of one job in one statement (result_values rows); an item that already succeeded (a
    duplicate delivery) is left as it is. The job row's shared lock first, then the items in id order."""
    if not rows:
        return
    lock_job_for_items(session, job_id)
    table = cast(Table, Item.__table__)
    # Requests cut off in an earlier run (Ctrl-C, a kill, a dead worker: worker/cut_off.py) were counted on the
    # item when it went back to routed; this call's own are added to them, never written over them.
    values = {key: func.coalesce(table.c[key], 0) + bindparam(f"new_{key}") if key in _ACCUMULATED
              else bindparam(f"new_{key}") for key in rows[0] if key != "id"}
    session.execute(update(table).where(table.c.id == bindparam("new_id"), table.c.status != ItemStatus.SUCCEEDED)
                    .values(values), [{f"new_{k}": v for k, v in row.items()}
                                      for row in sorted(rows, key=lambda r: r["id"])])


def record_result(session: Session, item_id: int, result: CallOutcome, cost: float,
                  shadow: CallOutcome | None = None, shadow_cost: float = 0.0) -> bool:
    """Store a call's result (and its shadow call's) unless the item already succeeded (a duplicate delivery);
    True if stored."""
    values: dict[str, Any] = {
        "status": ItemStatus.SUCCEEDED if result.ok else ItemStatus.FAILED,
        "status_code": result.status_code, "response": result.response, "answer": result.answer,
        "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
        "cost_usd": cost, "latency_ms": result.latency_ms, "error": result.error, "finished_at": utcnow(),
    }
    if shadow is not None:
        values.update(shadow_answer=shadow.answer, shadow_prompt_tokens=shadow.prompt_tokens,
                      shadow_completion_tokens=shadow.completion_tokens, shadow_cost_usd=shadow_cost,
                      shadow_error=shadow.error)
    job_id = session.scalar(select(Item.job_id).where(Item.id == item_id))
    if job_id is not None:
        lock_job_for_items(session, job_id)
    res = session.execute(update(Item).where(Item.id == item_id, Item.status != ItemStatus.SUCCEEDED).values(**values))
    return rowcount(res) == 1


def requeue(session: Session, job_id: str, statuses: Sequence[ItemStatus]) -> int:
    """Put interrupted (in flight) or failed items back to routed, so they are called again; a completed job
    with items put back runs again (a cancelled one stays cancelled)."""
    job = get_job(session, job_id, lock=True)
    if job.status in JOB_FINAL:
        return 0
    res = session.execute(update(Item).where(Item.job_id == job_id, Item.status.in_(statuses))
                          .values(status=ItemStatus.ROUTED, error=None))
    if rowcount(res) and job.status == JobStatus.COMPLETED:
        job.status, job.finished_at = JobStatus.RUNNING, None
    return rowcount(res)


def item_by_custom_id(session: Session, job_id: str, custom_id: str) -> Item | None:
    return session.scalar(select(Item).where(Item.job_id == job_id, Item.custom_id == custom_id))


def tier_counts(session: Session, job_id: str) -> dict[str, int]:
    """Items routed to each tier (strong, weak)."""
    rows = session.execute(select(Item.tier, func.count()).where(Item.job_id == job_id, Item.tier.is_not(None))
                           .group_by(Item.tier))
    return {str(tier): n for tier, n in rows}


def tiers_of(session: Session, item_ids: Sequence[int]) -> set[str]:
    """The tiers these items were routed to."""
    return {str(t) for t in session.scalars(select(Item.tier).where(Item.id.in_(item_ids)).distinct()) if t}


def router_versions(session: Session, job_id: str) -> list[str]:
    return sorted(session.scalars(select(Item.router_version).where(Item.job_id == job_id,
                                                                    Item.router_version.is_not(None)).distinct()))


def status_counts(session: Session, job_id: str) -> dict[ItemStatus, int]:
    rows = session.execute(select(Item.status, func.count()).where(Item.job_id == job_id).group_by(Item.status))
    return {ItemStatus(status): n for status, n in rows}


def iter_items(session: Session, job_id: str, chunk: int = 1000) -> Iterator[Item]:
    """All items of a job in input order, a chunk at a time (jobs can be large)."""
    last = -1
    while True:
        rows = list(session.scalars(select(Item).where(Item.job_id == job_id, Item.line_no > last)
                                    .order_by(Item.line_no).limit(chunk)))
        if not rows:
            return
        yield from rows
        last = rows[-1].line_no


def items_page(session: Session, job_id: str, offset: int, limit: int) -> list[Item]:
    return list(session.scalars(select(Item).where(Item.job_id == job_id).order_by(Item.line_no)
                                .offset(offset).limit(limit)))
