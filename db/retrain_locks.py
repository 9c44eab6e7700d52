"""One retrain at a time per owner (a tenant, or GLOBAL_OWNER for the global default).

A claim is a row naming a token (one per retrain call: threads of one process share a runner id) and the
runner whose heartbeat keeps it (db/runners.py). A later retrain of the same owner finds the row and is refused
while that runner is alive; once its heartbeat is old (the process died mid-retrain), the claim is taken over.
Claims change by compare-and-set on the token, so two takers of a dead claim cannot both win (SQLite has no row
locks to lean on).
"""

from __future__ import annotations

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from db.jobs import rowcount
from db.models import RetrainLock, Runner, utcnow
from db.runners import Holder, runner_alive

GLOBAL_OWNER = ""  # the global default's retrains (its versions have no tenant)


def claim(session: Session, owner: str, token: str, me: str, dead_after_s: float) -> Holder | None:
    """Take the owner's retrain claim for `token`, held by runner `me`: None when it is ours now, else the live
    runner holding it. A concurrent first claim raises IntegrityError on commit: the caller claims again."""
    row = session.scalar(select(RetrainLock).where(RetrainLock.owner == owner).with_for_update()
                         .execution_options(populate_existing=True))
    if row is None:
        session.add(RetrainLock(owner=owner, token=token, runner_id=me))
        session.flush()
        return None
    runner = session.get(Runner, row.runner_id)
    if runner is not None and runner_alive(runner, dead_after_s, me):
        return Holder(runner.id, runner.kind, runner.host, runner.pid, row.started_at)
    taken = session.execute(update(RetrainLock).where(RetrainLock.owner == owner, RetrainLock.token == row.token)
                            .values(token=token, runner_id=me, started_at=utcnow())
                            .execution_options(synchronize_session=False))
    if rowcount(taken) == 1:
        return None
    return Holder(row.runner_id, "retrain", "?", 0, row.started_at)  # another taker won the dead claim


def release(session: Session, owner: str, token: str) -> None:
    session.execute(delete(RetrainLock).where(RetrainLock.owner == owner, RetrainLock.token == token))
