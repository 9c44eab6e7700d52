"""`InlineExecutor`: a `concurrent.futures.Executor` that runs each call at once, in the caller's thread.

Give it to `jobs.api.create_app(settings, executor=InlineExecutor())` and an embedded-mode submit answers only
after its job has run, so a test reads the finished job without polling.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class InlineExecutor(Executor):
    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to whoever reads the future, as a pool would
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        return None


__all__ = ["InlineExecutor"]
