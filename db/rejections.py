"""Rejected input lines: each line a job could not take, with its reason, error code and custom_id, stored with
the job so every front door's error file and status read the same record."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from db.models import RejectedLine


class Rejected(Protocol):
    """A rejected input line as the parser reports it (jobs.services.input_lines.Rejection)."""

    @property
    def line_no(self) -> int: ...
    @property
    def reason(self) -> str: ...
    @property
    def code(self) -> str: ...
    @property
    def custom_id(self) -> str | None: ...


def add_rejected(session: Session, job_id: str, rejected: Sequence[Rejected]) -> None:
    if rejected:
        session.execute(insert(RejectedLine), [
            {"job_id": job_id, "line_no": r.line_no, "reason": r.reason, "code": r.code, "custom_id": r.custom_id}
            for r in rejected])


def rejected_lines(session: Session, job_id: str) -> list[RejectedLine]:
    return list(session.scalars(select(RejectedLine).where(RejectedLine.job_id == job_id)
                                .order_by(RejectedLine.line_no)))
