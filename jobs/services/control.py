"""Stopping a job, for the CLI and the API alike."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from db import jobs as store


def cancel(sf: sessionmaker[Session], job_id: str, tenant_id: str | None = None) -> int:
    """Cancel a job: items not yet called are never called; calls already in flight finish and are kept.
    Returns how many items were cancelled (0 for a job that had already ended)."""
    with sf() as session:
        job = store.get_job(session, job_id, tenant_id, lock=True)
        n = store.cancel_job(session, job)
        session.commit()
        return n
