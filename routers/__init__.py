"""The learning: embeddings, routers, training, calibration, evaluation. No Celery and no SQL here."""

from routers.base import Router, RouterRuntime
from routers.registry import ROUTERS, load_router, train_router

__all__ = ["ROUTERS", "Router", "RouterRuntime", "load_router", "train_router"]
