"""The command line: command groups sharing one context (context.py); rendering apart (render.py)."""

from jobs.cli.app import app, main

__all__ = ["app", "main"]
