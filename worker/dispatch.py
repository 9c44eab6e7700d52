"""Where a job runs, decided in one place (as rq decides sync or queued): no broker configured, in this
process (the embedded default); a broker configured, on the Celery workers.

The CLI runs an embedded job to the end in the foreground. The API hands it to an executor that its
lifespan owns, so a request returns at once; tests pass a synchronous executor to run it inline.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy.orm import Session, sessionmaker

from db import jobs as store
from routeyard.errors import JobInterrupted, Unavailable, UserError
from routeyard.redact import safe_url
from routeyard.settings import Settings
from routeyard.states import ItemStatus
from worker.embedded import Progress, RunSummary, run_embedded, summary

log = logging.getLogger(__name__)

# A job an executor runs in the background (the API's threads) has no one waiting to see it stop: an unexpected
# error is tried again this many times in all, after 2 s, 4 s..., and then fails the job with the reason, so
# `status` and the Batch API show it ended (an SDK poller must never wait forever on a job nothing runs).
BACKGROUND_TRIES = 3
BACKGROUND_BACKOFF_S = 2.0


class Mode(StrEnum):
    EMBEDDED = "embedded"  # every step in this process, on the configured database (SQLite by default)
    DISTRIBUTED = "distributed"  # Celery workers take the steps from the broker


def mode(settings: Settings) -> Mode:
    return Mode.EMBEDDED if settings.embedded else Mode.DISTRIBUTED


@dataclass(frozen=True)
class Dispatched:
    job_id: str
    mode: Mode
    summary: RunSummary | None = None  # the job's end state, when it ran to the end here
    future: Future[RunSummary] | None = None  # when an executor runs it in the background


class Dispatcher:
    """Starts or resumes jobs where the settings say they run."""

    def __init__(self, sf: sessionmaker[Session], settings: Settings, executor: Executor | None = None, *,
                 tries: int = BACKGROUND_TRIES, backoff_s: float = BACKGROUND_BACKOFF_S) -> None:
        self.sf, self.settings, self.executor = sf, settings, executor
        self.tries, self.backoff_s = tries, backoff_s

    @property
    def mode(self) -> Mode:
        return mode(self.settings)

    def ready(self) -> None:
        """Raise Unavailable when jobs could not be handed on now (the broker, in distributed mode): checked before
        a job is stored, so an outage leaves no orphan job behind."""
        if self.mode is Mode.EMBEDDED:
            return
        from kombu import Connection  # the broker client: only in distributed mode

        # The Celery app and its tasks (seconds of imports on a busy machine), loaded now, before the job is stored,
        # not in enqueue(): a job's clock starts when it is stored, and its workers could be calling by then.
        import worker.tasks  # noqa: F401

        url = self.settings.broker_url
        try:
            with Connection(url, connect_timeout=3) as conn:
                conn.ensure_connection(max_retries=1, timeout=3)
        except Exception as exc:  # kombu raises the transport's own errors
            raise Unavailable(f"cannot reach the broker at {safe_url(url)} (ROUTEYARD_BROKER_URL): {exc}; nothing "
                              "was stored") from None

    def run(self, job_id: str, *, retry_failed: bool = False, progress: Progress | None = None,
            take_over: bool = False) -> Dispatched:
        """Take the job to its end from wherever it stopped: here (and wait, unless an executor was given),
        or by enqueueing it for the workers. Finished items are never called again. Embedded, a job another
        live process runs is a Conflict; with `take_over`, a holder that may have died (a previous API process)
        is waited for until it counts as dead."""
        if self.mode is Mode.EMBEDDED:
            wait_s = self.settings.dead_after_s + 2 * self.settings.heartbeat_s if take_over else 0.0
            if self.executor is None:
                summary = run_embedded(self.sf, self.settings, job_id, retry_failed=retry_failed, progress=progress,
                                       wait_s=wait_s)
                return Dispatched(job_id, Mode.EMBEDDED, summary=summary)
            future = self.executor.submit(self._run_in_background, job_id, retry_failed, wait_s)
            return Dispatched(job_id, Mode.EMBEDDED, future=future)
        with self.sf() as session:
            if retry_failed:
                store.requeue(session, job_id, [ItemStatus.FAILED])
            # Handed to the workers: from now on beat's reconciler looks after it (a job only stored, with
            # `submit --detach`, waits for `routeyard run` and is left alone).
            store.touch_job(session, job_id)
            session.commit()
        enqueue(job_id)
        return Dispatched(job_id, Mode.DISTRIBUTED)


    def _run_in_background(self, job_id: str, retry_failed: bool, wait_s: float) -> RunSummary:
        """run_embedded, for an executor: an unexpected error (a race in a library's import, a driver's hiccup) is
        tried again with backoff; one that persists fails the job with the reason. A user's error (a job another
        process runs, a cancelled one, endpoints serving other models) is raised as it is: the job is not at
        fault. The runner put back what was in flight before it let go, so a try starts where the last stopped."""
        for attempt in range(1, self.tries + 1):
            try:
                return run_embedded(self.sf, self.settings, job_id, retry_failed=retry_failed, wait_s=wait_s)
            except (UserError, JobInterrupted):
                raise
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                if attempt < self.tries:
                    delay = self.backoff_s * 2 ** (attempt - 1)
                    log.warning("job %s stopped (%s); trying again in %.0f s (try %d of %d)", job_id, reason, delay,
                                attempt + 1, self.tries, exc_info=exc)
                    time.sleep(delay)
                    retry_failed = False  # the first try already put the failed items back
                    continue
                log.error("job %s stopped %d times, failing it: %s", job_id, self.tries, reason, exc_info=exc)
                with self.sf() as session:
                    store.fail_job(session, job_id, f"the job stopped on an unexpected error {self.tries} times "
                                                    f"(last: {reason[:500]}); items not finished were failed. "
                                                    "Finished ones are kept: submit the rest again")
                    session.commit()
                return summary(self.sf, job_id)
        raise AssertionError("unreachable")  # the loop returns or raises


def enqueue(job_id: str) -> None:
    """Hand a stored job to the Celery workers."""
    # Imported here, not at the top: the Celery app (and its broker settings) is only needed when a broker is
    # configured, and embedded runs should not pay for importing it.
    from kombu.exceptions import OperationalError

    from worker.tasks import start_job

    try:
        start_job.apply_async((job_id,), retry=True, retry_policy={"max_retries": 2, "interval_start": 0.5,
                                                                   "interval_step": 0.5})
    except OperationalError as exc:
        broker, reason = safe_url(start_job.app.conf.broker_url), str(exc).rstrip(".")
        raise Unavailable(f"cannot reach the broker at {broker} (ROUTEYARD_BROKER_URL): {reason}. Job {job_id} is "
                          f"stored; `routeyard run {job_id}` queues it once the broker is back") from None
