"""How this process loads routers: the device, cache and batch size come from settings."""

from __future__ import annotations

from routers.base import RouterRuntime
from routers.registry import LoadedRouter, load_router
from routeyard.settings import Settings


def router_runtime(settings: Settings) -> RouterRuntime:
    return RouterRuntime(device=settings.device, cache_dir=settings.cache_dir,
                         batch_size=settings.embedding_batch_size)


def load_job_router(spec: str, settings: Settings) -> LoadedRouter:
    return load_router(spec, router_runtime(settings))
