"""A job the API runs in the background is never left stuck when its thread dies of an unexpected error (trial
finding 2): a transient error is tried again, with backoff; one that persists fails the job with the reason, so
`status` and the Batch API show it ended. The error comes from a real router that raises while scoring."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from jobs_helpers import server_stats, submit, write_batch
from sqlalchemy import select

from db import jobs as store
from db.models import Item, Job
from routers import registry
from routers.random_router import RandomRouter
from routeyard.states import ItemStatus, JobStatus
from worker.dispatch import Dispatcher


class FlakyRouter(RandomRouter):
    """The random router, whose scoring raises the first `failures_left` times."""

    name = "flaky"
    failures_left = 0

    def win_rate(self, prompts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        if type(self).failures_left > 0:
            type(self).failures_left -= 1
            raise RuntimeError("the scorer's thread met something unexpected")
        return super().win_rate(prompts, progress)


@pytest.fixture
def flaky(monkeypatch, tmp_path) -> Iterator[type[FlakyRouter]]:
    monkeypatch.setitem(registry.ROUTERS, "flaky", f"{__name__}:FlakyRouter")
    cls = registry.router_class("flaky")  # the class the runner loads (this module, as imported by name)
    assert issubclass(cls, RandomRouter)
    folder = tmp_path / "flaky-router"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"router": "flaky"}))
    cls.router_dir = str(folder)  # type: ignore[attr-defined]
    yield cls  # type: ignore[misc]
    cls.failures_left = 0


def run_in_background(sf, settings, job_id):
    """As the API runs a job: on an executor's thread, no one waiting on it."""
    with ThreadPoolExecutor(1) as pool:
        future = Dispatcher(sf, settings, pool, tries=3, backoff_s=0.01).run(job_id).future
        assert future is not None
        return future.result(timeout=120)


def test_a_transient_error_in_a_background_run_is_tried_again(settings, tmp_path, flaky, loopback):
    flaky.failures_left = 2  # two tries die; the third of three runs the job to the end
    sf, result = submit(settings, write_batch(tmp_path / "b.jsonl", ["one", "two", "three"]),
                        router=flaky.router_dir)
    summary = run_in_background(sf, settings, result.job_id)
    assert summary.status == JobStatus.COMPLETED and summary.counts == {ItemStatus.SUCCEEDED: 3}
    assert flaky.failures_left == 0
    assert len(server_stats(loopback.base_url)["calls"]) == 3


def test_an_error_that_persists_fails_the_job_with_the_reason(settings, tmp_path, flaky, loopback):
    flaky.failures_left = 100
    sf, result = submit(settings, write_batch(tmp_path / "b.jsonl", ["one", "two"]), router=flaky.router_dir)
    summary = run_in_background(sf, settings, result.job_id)
    assert summary.status == JobStatus.FAILED and summary.counts == {ItemStatus.FAILED: 2}
    assert flaky.failures_left == 100 - 3  # three tries in all, then it stops
    with sf() as session:
        job = session.get(Job, result.job_id)
        assert job is not None and job.finished_at is not None and job.runner_id is None  # no one holds it
        errors = set(session.scalars(select(Item.error).where(Item.job_id == result.job_id)))
        assert len(errors) == 1
        assert "unexpected error 3 times (last: RuntimeError: the scorer's thread met" in errors.pop()
        assert store.requeue(session, result.job_id, [ItemStatus.FAILED]) == 0  # failed for good: not re-run
    assert server_stats(loopback.base_url)["calls"] == []
