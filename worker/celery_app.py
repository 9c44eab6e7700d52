"""The Celery app. Processes start it through jobs/periodic.py, which adds the periodic tasks that run
front-door services: `routeyard worker` (or `celery -A jobs.periodic worker`), `celery -A jobs.periodic beat`.

Tasks are acknowledged late and re-queued if their worker dies, so a `kill -9` loses nothing; the steps they
run are idempotent, so the redelivery does no harm.
"""

from __future__ import annotations

from celery import Celery

from routeyard.settings import Settings

SCORE_QUEUE = "routeyard.score"  # GPU workers take these when there are any
COMPLETE_QUEUE = "routeyard.complete"  # I/O bound: model calls


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or Settings()
    app = Celery("routeyard", broker=settings.broker_url or "redis://127.0.0.1:6379/0", include=["worker.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=COMPLETE_QUEUE,
        task_routes={"routeyard.score_batch": {"queue": SCORE_QUEUE}, "routeyard.start_job": {"queue": SCORE_QUEUE}},
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_hijack_root_logger=False,
        beat_schedule={
            "reconcile": {"task": "routeyard.reconcile", "schedule": settings.reconcile_every_s},
            "schedules": {"task": "routeyard.run_schedules", "schedule": settings.schedule_poll_s},
            # provider batches are polled at their own backoff; beat only looks for the ones due
            "provider_batches": {"task": "routeyard.poll_provider_batches",
                                 "schedule": min(settings.batch_poll_s, settings.reconcile_every_s)},
        },
    )
    return app


app = make_celery()
