"""The judge's rows: claiming shadow pairs to judge, recording verdicts (with their feedback row, in one
transaction), and reading them back as a tenant's held-out outcomes.

A pair is claimed by inserting its judgment row (one per item, a unique key) under the claiming runner's id,
so two runners never judge it both; a row left in flight by a runner known dead is put back at once (cut off,
its calls counted as unanswered: worker/judge_cut_off.py), one whose holder is unknown after its lease. A
judged pair, or one whose reply had no verdict, is never claimed again unless errors are retried on purpose.
Every attempt's calls, tokens and cost are added to the row, never overwritten: all of them may be billed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, false, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, aliased

from db.jobs import rowcount
from db.models import Feedback, Item, Job, Judgment, utcnow
from routeyard.states import ItemStatus, JobStatus, JudgmentStatus


@dataclass(frozen=True)
class JudgeSpec:
    mode: str  # pair or grade
    judge_model: str
    prompt_version: str
    heldout_share: float


@dataclass(frozen=True)
class Pair:
    item_id: int
    prompt: str
    weak_answer: str  # the routed (weak) answer
    strong_answer: str  # the shadow call's answer


def is_heldout(tenant_id: str, prompt: str, share: float) -> bool:
    """Whether a tenant's prompt belongs to its held-out gate: fixed by the prompt's text (the same prompt is
    always on the same side, in every job), so a held-out prompt is never trained on."""
    digest = hashlib.blake2b(f"{tenant_id}\x00{prompt.strip()}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def _pairs_query(job_id: str) -> Any:
    return (select(Item.id).outerjoin(Judgment, Judgment.item_id == Item.id)
            .where(Item.job_id == job_id, Item.shadow.is_(True), Item.status == ItemStatus.SUCCEEDED,
                   Item.answer.is_not(None), Item.shadow_answer.is_not(None)))


def judgeable_ids(session: Session, job_id: str, lease_s: float, retry_errors: bool = False) -> list[int]:
    """Shadow pairs (both answers) not judged yet: no judgment, one in flight past its lease, or (asked) one
    whose reply could not be read."""
    stale = utcnow() - timedelta(seconds=lease_s)
    return list(session.scalars(_pairs_query(job_id).where(or_(
        Judgment.id.is_(None), Judgment.status == JudgmentStatus.CUT_OFF,
        and_(Judgment.status == JudgmentStatus.IN_FLIGHT, Judgment.started_at < stale),
        and_(Judgment.status == JudgmentStatus.ERROR) if retry_errors else false(),
    )).order_by(Item.id)))


def stalled_judging(session: Session, stall_s: float, lease_s: float) -> list[str]:
    """Completed jobs submitted with `--judge` that have a shadow pair to judge now (no judgment, or one in
    flight past its lease) and no sign of judging (the job's end, its heartbeat, a judgment started or finished)
    within `stall_s`."""
    now = utcnow()
    cutoff, stale = now - timedelta(seconds=stall_s), now - timedelta(seconds=lease_s)
    judged = aliased(Judgment)
    pending = (select(Item.id).outerjoin(judged, judged.item_id == Item.id)
               .where(Item.job_id == Job.id, Item.shadow.is_(True), Item.status == ItemStatus.SUCCEEDED,
                      Item.answer.is_not(None), Item.shadow_answer.is_not(None),
                      or_(judged.id.is_(None), judged.status == JudgmentStatus.CUT_OFF,
                          and_(judged.status == JudgmentStatus.IN_FLIGHT, judged.started_at < stale))))
    recent = select(Judgment.id).where(Judgment.job_id == Job.id, or_(Judgment.started_at >= cutoff,
                                                                      Judgment.finished_at >= cutoff))
    quiet = or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff)
    return list(session.scalars(select(Job.id).where(
        Job.judge.is_not(None), Job.status == JobStatus.COMPLETED, Job.finished_at < cutoff, quiet,
        pending.exists(), ~recent.exists())))


def pair_count(session: Session, job_id: str) -> int:
    return session.scalar(select(func.count()).select_from(_pairs_query(job_id).subquery())) or 0


def claim_pairs(session: Session, job: Job, item_ids: Sequence[int], spec: JudgeSpec, lease_s: float,
                retry_errors: bool = False, me: str | None = None) -> list[Pair]:
    """Claim these pairs for runner `me` (one INSERT, then one UPDATE for abandoned, cut-off or retried rows);
    those this runner got, in order."""
    if not item_ids:
        return []
    rows = session.execute(select(Item.id, Item.prompt, Item.answer, Item.shadow_answer)
                           .where(Item.id.in_(item_ids)).order_by(Item.id)).all()
    now = utcnow()
    values = [{"item_id": r.id, "job_id": job.id, "tenant_id": job.tenant_id, "status": JudgmentStatus.IN_FLIGHT,
               "mode": spec.mode, "judge_model": spec.judge_model, "prompt_version": spec.prompt_version,
               "heldout": is_heldout(job.tenant_id, r.prompt, spec.heldout_share), "attempts": 1,
               "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "started_at": now, "claimed_by": me}
              for r in rows]
    dialect_insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    got = set(session.scalars(dialect_insert(Judgment).values(values)
                              .on_conflict_do_nothing(index_elements=["item_id"]).returning(Judgment.item_id)))
    stale = now - timedelta(seconds=lease_s)
    again = or_(and_(Judgment.status == JudgmentStatus.IN_FLIGHT, Judgment.started_at < stale),
                Judgment.status == JudgmentStatus.CUT_OFF,
                Judgment.status == JudgmentStatus.ERROR if retry_errors else false())
    got |= set(session.scalars(
        update(Judgment).where(Judgment.item_id.in_([r.id for r in rows if r.id not in got]), again)
        .values(status=JudgmentStatus.IN_FLIGHT, attempts=Judgment.attempts + 1, started_at=now, error=None,
                claimed_by=me,
                mode=spec.mode, judge_model=spec.judge_model, prompt_version=spec.prompt_version)
        .returning(Judgment.item_id).execution_options(synchronize_session=False)))
    return [Pair(r.id, r.prompt, r.answer, r.shadow_answer) for r in rows if r.id in got]


@dataclass(frozen=True)
class JudgeSpend:
    """One attempt's judge calls: those answered (billed) with their tokens and cost, and those sent that got
    no answer (timed out) with what they may cost at most."""

    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    unanswered: int = 0
    unanswered_cost_bound_usd: float = 0.0


def add_spend(session: Session, item_id: int, spend: JudgeSpend) -> None:
    """Add an attempt's calls to the pair's row, whoever holds it now: money spent is never erased."""
    session.execute(update(Judgment).where(Judgment.item_id == item_id).values(
        calls=Judgment.calls + spend.calls, prompt_tokens=Judgment.prompt_tokens + spend.prompt_tokens,
        completion_tokens=Judgment.completion_tokens + spend.completion_tokens,
        cost_usd=Judgment.cost_usd + spend.cost_usd,
        unanswered_attempts=Judgment.unanswered_attempts + spend.unanswered,
        unanswered_cost_usd=Judgment.unanswered_cost_usd + spend.unanswered_cost_bound_usd)
        .execution_options(synchronize_session=False))


def record_judgment(session: Session, item_id: int, values: dict[str, Any], feedback: dict[str, Any] | None,
                    spend: JudgeSpend, me: str | None = None) -> bool:
    """Add the attempt's spend, then store the pair's verdict (or error) and, for a verdict, its feedback row,
    unless this runner no longer holds the pair (its lease ran out, or it was found dead and the pair put
    back); True if stored."""
    add_spend(session, item_id, spend)
    mine = Judgment.claimed_by.is_(None) if me is None else Judgment.claimed_by == me
    res = session.execute(update(Judgment).where(Judgment.item_id == item_id,
                                                 Judgment.status == JudgmentStatus.IN_FLIGHT, mine)
                          .values(**values, claimed_by=None, finished_at=utcnow())
                          .execution_options(synchronize_session=False))
    if rowcount(res) != 1:
        return False
    if feedback is not None:
        tenant = session.scalar(select(Judgment.tenant_id).where(Judgment.item_id == item_id))
        session.add(Feedback(item_id=item_id, tenant_id=tenant, kind="prefer", source="judge", **feedback))
    return True


def judgment_counts(session: Session, job_id: str) -> dict[JudgmentStatus, int]:
    rows = session.execute(select(Judgment.status, func.count()).where(Judgment.job_id == job_id)
                           .group_by(Judgment.status))
    return {JudgmentStatus(s): n for s, n in rows}


@dataclass(frozen=True)
class JudgeErrors:
    """The pairs of a job left without a verdict that share one reason, with one of them to look at."""

    reason: str
    count: int
    sample_custom_id: str
    sample_reply: str | None  # the judge's first reply to that pair, cut short (None: the call itself failed)


def judgment_errors(session: Session, job_id: str, limit: int = 10) -> list[JudgeErrors]:
    """A job's judge errors grouped by reason, the commonest first."""
    rows = session.execute(select(Judgment.error, func.count(), func.min(Judgment.item_id))
                           .where(Judgment.job_id == job_id, Judgment.status == JudgmentStatus.ERROR)
                           .group_by(Judgment.error).order_by(func.count().desc(), Judgment.error).limit(limit))
    out = []
    for reason, count, item_id in rows.all():
        custom_id, verdicts = session.execute(select(Item.custom_id, Judgment.verdicts).join(
            Judgment, Judgment.item_id == Item.id).where(Item.id == item_id)).one()
        replies = (verdicts or {}).get("replies") or [None]
        out.append(JudgeErrors(reason or "unknown", int(count), custom_id,
                               replies[0][:200] if isinstance(replies[0], str) else None))
    return out


@dataclass(frozen=True)
class JudgedPair:
    prompt: str
    strong: float
    weak: float
    label: float
    heldout: bool


def judged_pairs(session: Session, tenant_id: str, heldout: bool | None = None) -> list[JudgedPair]:
    """A tenant's judged pairs as outcomes (each model's quality as the judge saw it), oldest first."""
    query = (select(Item.prompt, Judgment.strong_quality, Judgment.weak_quality, Judgment.label, Judgment.heldout)
             .join(Item, Item.id == Judgment.item_id)
             .where(Judgment.tenant_id == tenant_id, Judgment.status == JudgmentStatus.JUDGED)
             .order_by(Judgment.finished_at, Judgment.id))
    if heldout is not None:
        query = query.where(Judgment.heldout.is_(heldout))
    return [JudgedPair(p, float(s or 0.0), float(w or 0.0), float(lab or 0.0), bool(h))  # set when judged
            for p, s, w, lab, h in session.execute(query)]


def tenants_with_judgments(session: Session) -> list[str]:
    return list(session.scalars(select(Judgment.tenant_id).where(Judgment.status == JudgmentStatus.JUDGED)
                                .distinct().order_by(Judgment.tenant_id)))


def judge_holders(session: Session, job_id: str | None = None) -> list[str]:
    """The runners holding pairs in flight (of one job, or of any)."""
    query = select(Judgment.claimed_by).where(Judgment.status == JudgmentStatus.IN_FLIGHT,
                                              Judgment.claimed_by.is_not(None))
    if job_id is not None:
        query = query.where(Judgment.job_id == job_id)
    return sorted({h for h in session.scalars(query.distinct()) if h})


def jobs_judged_by(session: Session, runner_ids: Sequence[str]) -> list[str]:
    """Jobs with pairs in flight under these runners."""
    return sorted(set(session.scalars(select(Judgment.job_id).where(Judgment.claimed_by.in_(runner_ids),
                                                                    Judgment.status == JudgmentStatus.IN_FLIGHT))))


@dataclass(frozen=True)
class HeldPair:
    pair: Pair
    mode: str
    judge_model: str


def pairs_held(session: Session, job_id: str, holders: Sequence[str]) -> list[HeldPair]:
    """The job's pairs in flight under these runners: what their calls sent is rebuilt from these."""
    return [HeldPair(Pair(i, p, a or "", s or ""), m, jm) for i, p, a, s, m, jm in session.execute(
        select(Item.id, Item.prompt, Item.answer, Item.shadow_answer, Judgment.mode, Judgment.judge_model)
        .join(Judgment, Judgment.item_id == Item.id)
        .where(Judgment.job_id == job_id, Judgment.claimed_by.in_(holders),
               Judgment.status == JudgmentStatus.IN_FLIGHT).order_by(Item.id))]


def put_back_pairs(session: Session, job_id: str, holders: Sequence[str], bounds: dict[int, tuple[int, float]]
                   ) -> int:
    """Pairs these (dead) runners had in flight become claimable again (cut off), their calls counted as
    unanswered ({item id: (requests, their cost bound)}): the judge may have answered and billed them."""
    back = 0
    for item_id, (requests, bound) in sorted(bounds.items()):
        res = session.execute(update(Judgment).where(
            Judgment.item_id == item_id, Judgment.job_id == job_id, Judgment.claimed_by.in_(holders),
            Judgment.status == JudgmentStatus.IN_FLIGHT).values(
            status=JudgmentStatus.CUT_OFF, claimed_by=None, error="cut off: its runner stopped with its calls out",
            unanswered_attempts=Judgment.unanswered_attempts + requests,
            unanswered_cost_usd=Judgment.unanswered_cost_usd + bound).execution_options(synchronize_session=False))
        back += rowcount(res)
    return back


def pairs_in_flight(session: Session, job_id: str) -> list[tuple[str | None, datetime]]:
    """(holder, started) of each of the job's pairs in flight."""
    return [(h, s) for h, s in session.execute(select(Judgment.claimed_by, Judgment.started_at).where(
        Judgment.job_id == job_id, Judgment.status == JudgmentStatus.IN_FLIGHT))]
