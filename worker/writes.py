"""A completion batch's database writes, made to outlive a database restart or outage.

An answer that came back is worth money: it was billed. So a claim or a result write that fails because the
database cannot be reached is retried with backoff (for `Settings.db_retry_s`), off the event loop, while the
batch's other calls keep running; only then is a result dropped (its item stays in flight and is called again
once its lease runs out). Writes run in a thread, so a slow or hung database never stalls the calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db import jobs as store

log = logging.getLogger(__name__)
T = TypeVar("T")
TRANSIENT = (OperationalError, InterfaceError)  # a connection lost or refused, a server restarting, a deadlock
FIRST_BACKOFF_S, MAX_BACKOFF_S = 0.25, 5.0


async def retrying(fn: Callable[[], T], what: str, give_up_s: float) -> T:
    """fn() in a thread; again, with exponential backoff, while it fails for want of the database, for at most
    `give_up_s` (then its last error is raised)."""
    started, backoff = time.monotonic(), FIRST_BACKOFF_S
    while True:
        try:
            return await asyncio.to_thread(fn)
        except TRANSIENT as exc:
            if time.monotonic() - started + backoff > give_up_s:
                raise
            log.warning("%s failed (%s); retrying in %.1f s", what, type(exc).__name__, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)


class ResultWriter:
    """Buffers a batch's results and writes them in groups: when `rows` are waiting, or `every_s` after the
    first of them. A group whose write fails stays buffered and is written again with backoff; callers only
    append, so they never wait on the database."""

    def __init__(self, sf: sessionmaker[Session], job_id: str, give_up_s: float, rows: int = 64,
                 every_s: float = 1.0, after_write: Callable[[Session], None] | None = None) -> None:
        self.sf, self.job_id, self.give_up_s, self.rows, self.every_s = sf, job_id, give_up_s, rows, every_s
        self.after_write = after_write  # given the session once a group has committed; must not raise
        self.buffer: list[dict[str, Any]] = []
        self.dropped = 0  # results given up on after give_up_s of failed writes
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def add(self, row: dict[str, Any]) -> None:
        if self._closing:  # a result after the last flush would never be written: its item would stay in flight
            raise RuntimeError(f"job {self.job_id}: a result was added after its writer closed")
        self.buffer.append(row)
        if len(self.buffer) >= self.rows:
            self._wake.set()

    async def close(self) -> None:
        """Write what is left (retrying as above), then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    def _write(self, rows: list[dict[str, Any]]) -> None:
        with self.sf() as session:
            store.record_results(session, self.job_id, rows)
            session.commit()
            if self.after_write:
                self.after_write(session)

    async def _run(self) -> None:
        failing_since: float | None = None
        backoff = FIRST_BACKOFF_S
        while True:
            if not (self._closing or len(self.buffer) >= self.rows):
                try:
                    await asyncio.wait_for(self._wake.wait(), self.every_s)
                except TimeoutError:
                    pass
            self._wake.clear()
            if not self.buffer:
                if self._closing:
                    return
                continue
            rows = self.buffer[: max(self.rows, 1) * 4]  # a long backlog after an outage goes in a few statements
            try:
                await asyncio.to_thread(self._write, rows)
            except TRANSIENT as exc:
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since + backoff <= self.give_up_s:
                    log.warning("job %s: writing %d results failed (%s); kept, retrying in %.1f s", self.job_id,
                                len(rows), type(exc).__name__, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
                    continue
                log.error("job %s: %d results could not be written for %.0f s and are dropped; their items stay "
                          "in flight and are called again when their lease runs out", self.job_id, len(rows),
                          now - failing_since)
                self.dropped += len(rows)
            del self.buffer[: len(rows)]  # only appended to meanwhile: these are the rows just handled
            failing_since, backoff = None, FIRST_BACKOFF_S
