"""How this process loads routers: the device, cache and batch size come from settings."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from db import jobs as store
from routers.base import RouterRuntime
from routers.registry import LoadedRouter, load_router
from routeyard.settings import Settings

log = logging.getLogger(__name__)


def router_runtime(settings: Settings) -> RouterRuntime:
    return RouterRuntime(device=settings.device, cache_dir=settings.cache_dir,
                         batch_size=settings.embedding_batch_size, encoder_backend=settings.encoder_backend)


def load_job_router(spec: str, settings: Settings) -> LoadedRouter:
    return load_router(spec, router_runtime(settings))


def load_or_fail(sf: sessionmaker[Session], job_id: str, spec: str, settings: Settings,
                 load: Callable[[str], LoadedRouter] | None = None) -> LoadedRouter | None:
    """The job's router; None when it does not load, and then the job has failed with the reason, once. A job
    whose router cannot load would otherwise sit `scoring`, re-enqueued by the reconciler forever."""
    try:
        return load(spec) if load is not None else load_job_router(spec, settings)
    except Exception as exc:  # whatever stops the router loading (missing files, a hub error, a bad config)
        reason = (f"the job's router {spec!r} could not be loaded ({type(exc).__name__}: {exc}); nothing was "
                  "called: submit the batch again with a router that loads")
        with sf() as session:
            failed = store.fail_job(session, job_id, reason)
            session.commit()
        if failed:
            log.error("job %s failed: %s", job_id, reason)
        return None
