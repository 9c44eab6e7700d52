"""The HTTP API: the app factory (app.py) and its request and response models (schemas.py)."""

from jobs.api.app import create_app

__all__ = ["create_app"]
