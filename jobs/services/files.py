"""Files of the OpenAI-compatible Files API: a batch's input, and the output and error files a batch writes.

Stored in the database (db/files.py), so every API process and worker sees them, tenant-scoped, and sized:
an upload over ROUTEYARD_MAX_UPLOAD_BYTES (MAX_FILE_BYTES by default) is refused (413) before anything is
stored. Only purpose `batch` is taken on upload; Routeyard writes `batch_output` files itself. A file past its
`expires_at` reads as missing and is deleted by its tenant's next upload.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, BinaryIO, Literal

from sqlalchemy.orm import Session, sessionmaker

from db import files as store
from db.models import File, utcnow
from routeyard.errors import InvalidInput

MAX_FILE_BYTES = 200 * 1024 * 1024  # OpenAI's limit for a batch input file
UPLOAD_PURPOSES = ("batch",)
OUTPUT_PURPOSE = "batch_output"
MIN_EXPIRY_S, MAX_EXPIRY_S = 3600, 30 * 24 * 3600  # what OpenAI takes for expires_after.seconds
MAX_LIST = 10_000


class TooLarge(Exception):
    """An upload over the size limit (the API answers 413)."""


def unix(t: datetime | None) -> int | None:
    """Unix seconds; SQLite hands datetimes back naive (they were stored in UTC)."""
    if t is None:
        return None
    return int((t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp())


def file_object(row: File) -> dict[str, Any]:
    """The OpenAI FileObject."""
    return {"id": row.id, "object": "file", "bytes": row.size, "created_at": unix(row.created_at),
            "filename": row.filename, "purpose": row.purpose, "status": "processed",
            "expires_at": unix(row.expires_at), "status_details": None}


def read_upload(stream: BinaryIO, limit: int | None = None) -> bytes:
    """The whole upload, refusing one over `limit` bytes (MAX_FILE_BYTES) without reading past it."""
    limit = MAX_FILE_BYTES if limit is None else limit
    chunks, size = [], 0
    while block := stream.read(1 << 20):
        size += len(block)
        if size > limit:
            raise TooLarge(f"the file is larger than {limit:,} bytes, the most a file may have")
        chunks.append(block)
    return b"".join(chunks)


def expiry_seconds(anchor: str | None, seconds: int | None, what: str = "expires_after") -> int | None:
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidInput(f"{what}.anchor must be 'created_at', got {anchor!r}")
    if seconds is None or not MIN_EXPIRY_S <= seconds <= MAX_EXPIRY_S:
        raise InvalidInput(f"{what}.seconds must be between {MIN_EXPIRY_S} and {MAX_EXPIRY_S}, got {seconds}")
    return seconds


def _clean_name(filename: str | None) -> str:
    name = PureWindowsPath(PurePosixPath(filename or "").name).name.strip()  # no directories from the client
    return (name or "upload.jsonl")[:500]


def store_file(session: Session, tenant_id: str, filename: str, purpose: str, content: bytes,
               expires_s: int | None = None) -> File:
    """Add a file in the caller's transaction."""
    now = utcnow()
    row = File(id=f"file-{uuid.uuid4().hex}", tenant_id=tenant_id, filename=_clean_name(filename), purpose=purpose,
               size=len(content), content=content, created_at=now,
               expires_at=now + timedelta(seconds=expires_s) if expires_s else None)
    return store.add_file(session, row)


@dataclass(frozen=True)
class Upload:
    filename: str | None
    purpose: str
    content: bytes
    expires_s: int | None = None


def check_purpose(purpose: str) -> None:
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidInput(f"purpose must be 'batch' (Routeyard keeps batch input files only), got {purpose!r}")


def create_file(sf: sessionmaker[Session], tenant_id: str, upload: Upload) -> dict[str, Any]:
    check_purpose(upload.purpose)
    with sf() as session:
        store.purge_expired(session, tenant_id)
        row = store_file(session, tenant_id, upload.filename or "upload.jsonl", upload.purpose, upload.content,
                         upload.expires_s)
        session.commit()
        return file_object(row)


def retrieve_file(sf: sessionmaker[Session], tenant_id: str, file_id: str) -> dict[str, Any]:
    with sf() as session:
        return file_object(store.get_file(session, file_id, tenant_id))


def file_content(sf: sessionmaker[Session], tenant_id: str, file_id: str) -> tuple[str, bytes]:
    """(filename, the bytes stored)."""
    with sf() as session:
        row = store.get_file(session, file_id, tenant_id, with_content=True)
        return row.filename, row.content


def list_files(sf: sessionmaker[Session], tenant_id: str, *, purpose: str | None = None, after: str | None = None,
               limit: int = MAX_LIST, order: Literal["asc", "desc"] = "desc") -> dict[str, Any]:
    with sf() as session:
        rows, more = store.list_files(session, tenant_id, purpose=purpose, after=after, limit=limit,
                                      newest_first=order == "desc")
        data = [file_object(r) for r in rows]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": more}


def delete_file(sf: sessionmaker[Session], tenant_id: str, file_id: str) -> dict[str, Any]:
    with sf() as session:
        store.delete_file(session, file_id, tenant_id)
        session.commit()
    return {"id": file_id, "object": "file", "deleted": True}
