"""The jobs this API process runs (embedded mode), so that one job is never run twice here at once: a resume
of a job that is already queued or running on this process's executor is a no-op.

At start-up the app resumes the jobs that tenants submitted and that a previous API process left unfinished
(`resume_left_unfinished`). Only in embedded mode: with a broker, the workers run jobs and beat's reconciler
re-enqueues stalled ones.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from functools import partial

from sqlalchemy.orm import Session, sessionmaker

from db import runners
from worker.dispatch import Dispatcher, Mode
from worker.embedded import RunSummary

log = logging.getLogger(__name__)


class Runs:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self._lock = threading.Lock()
        self._futures: dict[str, Future[RunSummary]] = {}

    def running(self, job_id: str) -> bool:
        with self._lock:
            future = self._futures.get(job_id)
            return future is not None and not future.done()

    def start(self, job_id: str, *, retry_failed: bool = False, take_over: bool = False) -> bool:
        """Run the job from wherever it stopped, unless this process already runs it; True if started."""
        if self.dispatcher.mode is Mode.DISTRIBUTED:  # the workers run it; claims keep a re-enqueue harmless
            self.dispatcher.run(job_id, retry_failed=retry_failed)
            return True
        with self._lock:
            current = self._futures.get(job_id)
            if current is not None and not current.done():
                return False
            future = self.dispatcher.run(job_id, retry_failed=retry_failed, take_over=take_over).future
            if future is not None:
                self._futures[job_id] = future
        if future is not None:  # outside the lock: an inline executor's future is done already
            future.add_done_callback(partial(self._done, job_id))
        return True

    def _done(self, job_id: str, future: Future[RunSummary]) -> None:
        with self._lock:
            if self._futures.get(job_id) is future:
                del self._futures[job_id]
        error = None if future.cancelled() else future.exception()
        if error is not None:
            log.error("job %s stopped: %s: %s (`POST /v1/jobs/%s/resume` takes it up again)",
                      job_id, type(error).__name__, error, job_id, exc_info=error)

    def resume_left_unfinished(self, sf: sessionmaker[Session]) -> list[str]:
        """Start every job left interrupted (db/runners.py:interrupted_jobs); returns their ids. One that a
        previous process held is taken over once that process counts as dead; one a live process (a CLI
        still running it) holds is left to it, and the log says so."""
        with sf() as session:
            job_ids = runners.interrupted_jobs(session)
        if job_ids:
            log.warning("resuming %d job(s) left unfinished when the API last stopped: %s", len(job_ids),
                        ", ".join(job_ids))
        for job_id in job_ids:
            self.start(job_id, take_over=True)
        return job_ids
