"""The learning: embeddings, routers, training, calibration, evaluation. No Celery and no SQL here.

Importing this package (or routers.registry, data, calibration, evaluate, base) does not import torch:
the front doors read names and data without the ML stack; a router's module loads when it is used.
"""

from routers.base import Router, RouterRuntime
from routers.registry import ROUTERS, load_router, train_router

__all__ = ["ROUTERS", "Router", "RouterRuntime", "load_router", "train_router"]
