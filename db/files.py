"""Files of the OpenAI-compatible Files API: stored in the database, tenant-scoped. Another tenant's file, a
deleted one and one past its expiry are all reported as not found, exactly like a missing one."""

from __future__ import annotations

from sqlalchemy import ColumnElement, delete, or_, select, tuple_
from sqlalchemy.orm import Session, undefer

from db.jobs import rowcount
from db.models import File, utcnow
from routeyard.errors import NotFound


def _live(tenant_id: str) -> ColumnElement[bool]:
    """The tenant's files that have not expired."""
    return (File.tenant_id == tenant_id) & or_(File.expires_at.is_(None), File.expires_at > utcnow())


def add_file(session: Session, row: File) -> File:
    session.add(row)
    return row


def get_file(session: Session, file_id: str, tenant_id: str, *, with_content: bool = False) -> File:
    query = select(File).where(File.id == file_id, _live(tenant_id))
    if with_content:
        query = query.options(undefer(File.content))
    row = session.scalar(query)
    if row is None:
        raise NotFound(f"No such File object: {file_id}")
    return row


def list_files(session: Session, tenant_id: str, *, purpose: str | None, after: str | None, limit: int,
               newest_first: bool) -> tuple[list[File], bool]:
    """A page of the tenant's files in creation order (ties by id) after the file `after`; and whether more
    follow."""
    query = select(File).where(_live(tenant_id))
    if purpose:
        query = query.where(File.purpose == purpose)
    key = tuple_(File.created_at, File.id)
    if after:
        cursor = session.scalar(select(File).where(File.id == after, File.tenant_id == tenant_id))
        if cursor is None:
            raise NotFound(f"No such File object: {after} (the 'after' cursor)")
        at = tuple_(cursor.created_at, cursor.id)
        query = query.where(key < at if newest_first else key > at)
    order = (File.created_at.desc(), File.id.desc()) if newest_first else (File.created_at, File.id)
    rows = list(session.scalars(query.order_by(*order).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def delete_file(session: Session, file_id: str, tenant_id: str) -> None:
    get_file(session, file_id, tenant_id)
    session.execute(delete(File).where(File.id == file_id))


def purge_expired(session: Session, tenant_id: str) -> int:
    """Delete the tenant's files past their expiry (they already read as not found); how many."""
    res = session.execute(delete(File).where(File.tenant_id == tenant_id, File.expires_at.is_not(None),
                                             File.expires_at <= utcnow()))
    return rowcount(res)
